package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/publicsuffix"
)

//go:generate go run ./internal/pslgen -o psl_table.go

// Breadth: how much of the world an allow rule opens, judged from the
// compiled rule — what the matcher will match — never from its spelling.
// `*`, `**`, `**.` and `?**` all match every name; `*.*` every name of two
// labels; `*.com`, `.com`, `**.com` every name under a public suffix; and
// `foo*.com` names of arbitrary registrants (the attacker registers
// fooevil.com). The security floors standard and strict refuse such rules;
// validate and check warn about them, in the same words (breadth.String).
//
// The unit is the registrable domain of the Public Suffix List that
// golang.org/x/net/publicsuffix ships: a name rule is broad when it matches
// names of more than one registrable domain, or every name of some number of
// labels. The list's private section counts like its ICANN section:
// github.io, githubusercontent.com, s3.amazonaws.com, cloudfront.net and the
// other private entries are there because strangers register names under
// them, so `*.github.io` reaches any GitHub user's pages and `*.amazonaws.com`
// any S3 bucket — the DNS exfiltration channel of THREATS D5. A name that is
// itself a public suffix (`com`, `co.uk`) belongs to no registrant. A TLD
// missing from the list is a public suffix of its own (the list's implicit
// `*` rule), so `*.internal` is broad too; name the zone below it
// (`*.corp.internal`).
//
// How a rule is judged (breadth): an exact name is narrow. Otherwise the rule
// is seen as a glob (`*.x` and `.x` as `**.x`, `*` as `**`) split into a
// fixed tail F (the trailing labels without wildcards) and the labels before
// it. A glob of wildcards only whose every label matches every label is a
// label class (`*.*`, `**`). Then names the rule matches are built by
// instantiating its wildcards — each with letters, and, where F has public
// suffixes below it, with the labels of those suffixes — and every candidate
// is checked by the rule's own matcher before x/net names its registrable
// domain. Two registrable domains make the rule broad, and the two names are
// its witnesses. When F is neither a public suffix nor has any below it, all
// names ending in F share F's registrable domain: narrow, by construction.
// The differential tests and fuzz target check both directions against the
// matcher.

// breadthClass is what a rule matches.
type breadthClass uint8

const (
	// narrow: one registrable domain at most (or a single IP range no
	// wider than an IANA allocation).
	narrow breadthClass = iota
	// everyName: every valid name.
	everyName
	// everyNameOfLabels: every name of exactly labels labels.
	everyNameOfLabels
	// everyNameOfLabelsOrMore: every name of labels labels or more.
	everyNameOfLabelsOrMore
	// everyNameUnder: every name under the public suffix suffix.
	everyNameUnder
	// registrants: names of two registrable domains under the public
	// suffix suffix (witnesses), not every name under it.
	registrants
	// registrables: names of two registrable domains under different
	// public suffixes (witnesses).
	registrables
	// everyAddress: an IP rule /0.
	everyAddress
	// hugeRange: an IP range wider than an IANA allocation.
	hugeRange
)

// breadth is the judgment of one rule.
type breadth struct {
	class breadthClass
	// labels is the label count of the label classes.
	labels int
	// suffix is the public suffix of everyNameUnder and registrants.
	suffix string
	// witnesses are two names the rule matches with different registrable
	// domains (every broad name class has them; the label classes too).
	witnesses [2]string
	// prefix is the range of the IP classes.
	prefix netip.Prefix
	// single is, for a narrow name rule, the one registrable domain the
	// search found its names in ("" when it found none: every name it
	// matches is a public suffix, or none was built).
	single string
}

// broad reports whether the floors standard and strict refuse the rule.
func (b breadth) broad() bool { return b.class != narrow }

// ianaAllocation is the unit IANA hands out to the regional registries: an
// IPv4 /8, an IPv6 /12. An allow range wider than one spans networks of
// unrelated owners: the IP form of `*`.
func ianaAllocation(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 8
	}
	return 12
}

// String says what the rule matches, as the floor's refusal and the
// validator's warning put it: "matches every name under the public suffix
// co.uk".
func (b breadth) String() string {
	switch b.class {
	case everyName:
		return "matches every name"
	case everyNameOfLabels:
		if b.labels == 1 {
			return "matches every name of 1 label"
		}
		return fmt.Sprintf("matches every name of %d labels", b.labels)
	case everyNameOfLabelsOrMore:
		return fmt.Sprintf("matches every name of %d or more labels", b.labels)
	case everyNameUnder:
		return "matches every name under the public suffix " + b.suffix
	case registrants:
		return fmt.Sprintf("matches names of different registrants under the public suffix %s (%s, %s)", b.suffix, b.witnesses[0], b.witnesses[1])
	case registrables:
		return fmt.Sprintf("matches names of more than one registrable domain (%s, %s)", b.witnesses[0], b.witnesses[1])
	case everyAddress:
		if b.prefix.Addr().Is4() {
			return "matches every IPv4 address"
		}
		return "matches every IPv6 address"
	case hugeRange:
		return fmt.Sprintf("matches a range wider than an IANA allocation (/%d): hosts of unrelated networks", ianaAllocation(b.prefix))
	}
	return "is narrow"
}

// breadth judges the rule (its ports aside: `*:443` matches every name),
// once: the judgment is kept with the rule.
func (r *Rule) breadth() breadth {
	if b := r.breadthMemo.Load(); b != nil {
		return *b
	}
	b := r.judgeBreadth()
	r.breadthMemo.Store(&b)
	return b
}

func (r *Rule) judgeBreadth() breadth {
	switch r.kind {
	case kindExact:
		return breadth{}
	case kindPrefix:
		p := r.prefix
		switch {
		case p.Bits() == 0:
			return breadth{class: everyAddress, prefix: p}
		case p.Bits() < ianaAllocation(p):
			return breadth{class: hugeRange, prefix: p}
		}
		return breadth{}
	}
	g := r.asGlob()
	segs := strings.Split(g, ".")
	w := newWitnessSearch(r, segs)
	b := w.run()
	if lc, n, ok := labelClass(segs); ok {
		b.class, b.labels, b.suffix = lc, n, ""
	}
	return b
}

// asGlob is a name rule as a glob with the same matches among valid names.
func (r *Rule) asGlob() string {
	switch r.kind {
	case kindAny:
		return "**"
	case kindBelow, kindApex: // the apex itself adds one name, never a second registrant
		return "**." + r.name
	}
	return r.name
}

// labelClass recognises a glob of wildcards only whose every label matches
// any label (a `*` or `**`, at most one `?`): it matches every name of
// exactly len(segs) labels, or, with a `**` somewhere, every name of that
// many labels or more.
func labelClass(segs []string) (breadthClass, int, bool) {
	elastic := false
	for _, s := range segs {
		if strings.Trim(s, "*?") != "" || !strings.Contains(s, "*") || strings.Count(s, "?") > 1 {
			return narrow, 0, false
		}
		elastic = elastic || strings.Contains(s, "**")
	}
	switch {
	case !elastic:
		return everyNameOfLabels, len(segs), true
	case len(segs) == 1:
		return everyName, 0, true
	}
	return everyNameOfLabelsOrMore, len(segs), true
}

// Fills for the wildcards of a glob when building candidate names. Letters
// first, so that witnesses read naturally (fooa.com, foob.com); then labels
// no list holds (egressd-w, egressd-v), so that the list's own short names
// (za.com and za.net are public suffixes) cannot hide a registrant; a `?`
// tries every byte a label may hold, so that a list naming some
// one-character children of a suffix (a.se, b.se, ...) cannot hide the
// others.
var (
	starFills        = []string{"a", "b", "c", "x1", "egressd-w", "egressd-v"}
	tldFills         = []string{"com", "net", "org", "a", "b", "egressd-w", "egressd-v"}
	starStarFills    = []string{"a", "b", "a.a", "b.a", "egressd-w", "egressd-v", "egressd-w.a", "egressd-v.a"}
	starStarTLDFills = []string{"a", "b", "a.com", "b.com", "egressd-w.com", "egressd-v.com", "a.net", "egressd-w.net"}
	questionFills    = strings.Split("abcdefghijklmnopqrstuvwxyz0123456789-_", "")
)

// Bounds of the search below a fixed tail with public suffixes under it.
const (
	maxTailDepth = 4    // labels between the tail and the suffix found
	maxTails     = 4096 // suffixes below one tail tried
)

// witnessSearch builds names a glob matches and sorts them by registrable
// domain.
type witnessSearch struct {
	r     *Rule
	p     []string          // the labels with wildcards, and those before them
	f     string            // the fixed tail ("" when the last label has a wildcard)
	regs  map[string]string // registrable domain → first name found in it
	order []string          // registrable domains in the order found
	bySuf map[string][]string
	done  bool // two registrable domains under one suffix
	best  string
}

func newWitnessSearch(r *Rule, segs []string) *witnessSearch {
	k := len(segs)
	for k > 0 && !strings.ContainsAny(segs[k-1], "*?") {
		k--
	}
	return &witnessSearch{r: r, p: segs[:k], f: strings.Join(segs[k:], "."), regs: map[string]string{}, bySuf: map[string][]string{}}
}

// run searches and judges.
func (w *witnessSearch) run() breadth {
	if len(w.p) == 0 {
		return breadth{} // no wildcard: one name
	}
	w.plain()
	if !w.done && w.f != "" {
		w.descend()
	}
	switch {
	case w.done:
		regs := w.bySuf[w.best]
		b := breadth{class: registrants, suffix: w.best, witnesses: [2]string{w.regs[regs[0]], w.regs[regs[1]]}}
		if everyLabelSequence(w.p) && strings.HasSuffix("."+w.best, "."+w.f) {
			b.class = everyNameUnder
		}
		return b
	case len(w.order) >= 2:
		return breadth{class: registrables, witnesses: [2]string{w.regs[w.order[0]], w.regs[w.order[1]]}}
	case len(w.order) == 1:
		return breadth{single: w.order[0]}
	}
	return breadth{}
}

// everyLabelSequence reports whether the labels p, joined, match every
// sequence of one or more labels: one label class with a `**`.
func everyLabelSequence(p []string) bool {
	c, _, ok := labelClass(p)
	return ok && c == everyName
}

// try records the name x.f if the rule matches it.
func (w *witnessSearch) try(x string) {
	if w.done {
		return
	}
	name := x
	if w.f != "" {
		name += "." + w.f
	}
	n, ok := NormalizeName(name)
	if !ok || !w.r.matchName(n) {
		return
	}
	reg, suf, ok := registrableDomain(n)
	if !ok {
		return
	}
	if _, seen := w.regs[reg]; seen {
		return
	}
	w.regs[reg] = n
	w.order = append(w.order, reg)
	w.bySuf[suf] = append(w.bySuf[suf], reg)
	if len(w.bySuf[suf]) == 2 {
		w.done, w.best = true, suf
	}
}

// registrableDomain is the registrable domain of a normalised name and its
// public suffix; ok is false for a name that is itself a public suffix.
func registrableDomain(name string) (reg, suffix string, ok bool) {
	suffix = publicSuffix(name)
	if len(name) <= len(suffix) {
		return "", "", false
	}
	rest := name[:len(name)-len(suffix)-1]
	return rest[strings.LastIndexByte(rest, '.')+1:] + "." + suffix, suffix, true
}

// isPublicSuffix reports whether name is a public suffix, from either
// section of the list, the implicit `*` rule, or sharedZones.
func isPublicSuffix(name string) bool {
	return publicSuffix(name) == name
}

// pslSuffix is name's public suffix in the list x/net ships.
func pslSuffix(name string) string {
	s, _ := publicsuffix.PublicSuffix(name)
	return s
}

// token is one wildcard of p: its label and its byte offset there.
type token struct {
	seg, off int
	op       string // "*", "**" or "?"
}

func tokens(p []string) []token {
	var out []token
	for i, s := range p {
		for j := 0; j < len(s); j++ {
			switch {
			case strings.HasPrefix(s[j:], "**"):
				out = append(out, token{i, j, "**"})
				j++
			case s[j] == '*' || s[j] == '?':
				out = append(out, token{i, j, s[j : j+1]})
			}
		}
	}
	return out
}

// instantiate replaces every wildcard of p: token i by fills[i].
func instantiate(p []string, toks []token, fills []string) string {
	segs := slices.Clone(p)
	// Right to left, so earlier offsets in a label stay valid.
	for i := len(toks) - 1; i >= 0; i-- {
		t := toks[i]
		s := segs[t.seg]
		segs[t.seg] = s[:t.off] + fills[i] + s[t.off+len(t.op):]
	}
	return strings.Join(segs, ".")
}

// fillsFor are the fills tried for token t; the first is its baseline. A
// `*` in the last label of a name (tld) tries top-level domains first.
func fillsFor(t token, tld bool) []string {
	switch {
	case t.op == "?":
		return questionFills
	case t.op == "**" && tld:
		return starStarTLDFills
	case t.op == "**":
		return starStarFills
	case tld:
		return tldFills
	}
	return starFills
}

// variations calls fn with the baseline instantiation of p and then with
// each single-wildcard variation of it, at most limit fills per wildcard (0:
// all). When tld is set, p's last label is the name's last.
func variations(p []string, limit int, tld bool, fn func(string)) {
	toks := tokens(p)
	base := make([]string, len(toks))
	for i, t := range toks {
		base[i] = fillsFor(t, tld && t.seg == len(p)-1)[0]
	}
	fn(instantiate(p, toks, base))
	for i, t := range toks {
		alts := fillsFor(t, tld && t.seg == len(p)-1)[1:]
		if limit > 0 && len(alts) > limit {
			alts = alts[:limit]
		}
		for _, a := range alts {
			fills := slices.Clone(base)
			fills[i] = a
			fn(instantiate(p, toks, fills))
		}
	}
}

// baseline is the baseline instantiation of p (never a name's last label).
func baseline(p []string) string {
	toks := tokens(p)
	fills := make([]string, len(toks))
	for i, t := range toks {
		fills[i] = fillsFor(t, false)[0]
	}
	return instantiate(p, toks, fills)
}

// plain tries the instantiations of the glob as written: registrants
// directly under F (foo*.com), or across top-level domains (api.*).
func (w *witnessSearch) plain() {
	variations(w.p, 0, w.f == "", w.try)
}

// descend tries names under the public suffixes strictly below F — the
// labels x/net cannot list, from pslParents — built so that the glob's
// labels produce the suffix's labels and a registrant label before them.
func (w *witnessSearch) descend() {
	tails := pslTails(w.f)
	k := len(w.p)
	for _, tail := range tails {
		d := strings.Count(tail, ".") + 1 // labels of the tail
		for i := k - 1; i >= 0 && !w.done; i-- {
			left, right := w.p[:i], w.p[i:]
			// The labels from i on can produce right labels of a name:
			// one each, or any number more with a `**`.
			lo, elastic := len(right), strings.Contains(strings.Join(right, "."), "**")
			asTail := i > 0 && lo <= d && (elastic || d == lo)
			asBoth := lo <= d+1 && (elastic || d+1 == lo)
			if !asTail && !asBoth {
				continue
			}
			rg := compileGlob(strings.Join(right, "."))
			for _, t := range concrete(tail, right) {
				if w.done {
					return
				}
				// The labels from i on are the suffix's; the label before
				// them is the registrant's.
				if asTail && rg.match(t) {
					variations(left[len(left)-1:], 3, false, func(l string) {
						w.try(joinLeft(left[:len(left)-1], l+"."+t))
					})
				}
				// Or those labels also produce the registrant's label.
				if !asBoth {
					continue
				}
				variations(right[:1], 3, false, func(l string) {
					l = strings.SplitN(l, ".", 2)[0]
					if rg.match(l + "." + t) {
						w.try(joinLeft(left, l+"."+t))
					}
				})
			}
		}
		if w.done {
			return
		}
	}
}

// joinLeft is the baseline instantiation of the labels left, then rest.
func joinLeft(left []string, rest string) string {
	if len(left) == 0 {
		return rest
	}
	return baseline(left) + "." + rest
}

// concrete replaces the "*" labels of tail (wildcard rules: any label is a
// suffix there) by labels that the glob labels right produce.
func concrete(tail string, right []string) []string {
	if !strings.Contains(tail, "*") {
		return []string{tail}
	}
	var labels []string
	for i := len(right) - 1; i >= 0; i-- {
		variations(right[i:i+1], 2, false, func(l string) {
			for _, part := range strings.Split(l, ".") {
				if len(labels) < 32 && !slices.Contains(labels, part) {
					labels = append(labels, part)
				}
			}
		})
	}
	out := []string{tail}
	for strings.Contains(out[0], "*") {
		var next []string
		for _, t := range out {
			for _, l := range labels {
				next = append(next, strings.Replace(t, "*", l, 1))
			}
		}
		out = next
	}
	return out
}

// pslTails are the public suffixes strictly below f, relative to f
// ("s3" for s3.amazonaws.com under amazonaws.com; "*" where any label is
// one), shallowest first.
func pslTails(f string) []string {
	var out []string
	add := func(rel string) {
		if len(out) < maxTails && !slices.Contains(out, rel) {
			out = append(out, rel)
		}
	}
	// A wildcard rule (*.kawasaki.jp) lists no children: probe for it.
	probe := func(rel string) {
		under := f
		if rel != "" {
			under = rel + "." + f
		}
		if isPublicSuffix("egressd-probe." + under) {
			if rel == "" {
				add("*")
			} else {
				add("*." + rel)
			}
		}
	}
	probe("")
	queue := []string{""}
	for depth := 0; depth < maxTailDepth && len(queue) > 0; depth++ {
		var next []string
		for _, rel := range queue {
			parent := f
			if rel != "" {
				parent = rel + "." + f
			}
			for _, kid := range pslParents()[parent] {
				r := kid
				if rel != "" {
					r = kid + "." + rel
				}
				add(r)
				if kid != "*" {
					probe(r)
					if _, ok := pslParents()[kid+"."+parent]; ok {
						next = append(next, r)
					}
				}
			}
		}
		queue = next
	}
	for _, rel := range sharedZoneTails(f) {
		add(rel)
	}
	// Shallowest, then shortest first: s3.amazonaws.com before
	// s3-website-us-east-1.amazonaws.com in a refusal.
	slices.SortStableFunc(out, func(a, b string) int {
		if d := strings.Count(a, ".") - strings.Count(b, "."); d != 0 {
			return d
		}
		return len(a) - len(b)
	})
	return out
}

// Guard lifts. An allow IP rule lifts the address guard for the most
// specific guarded range it lies entirely within (guard.go); none when it
// lies in none. The floors standard and strict let a rule lift the guard
// only for one subnet of an internal network — a /24 (IPv4) or /64 (IPv6)
// of private, ULA or CGNAT space, say a package mirror at 10.1.2.3 — and
// never for loopback, link-local, the metadata services, egressd's own
// addresses, multicast, the reserved ranges or the IPv6 forms that embed an
// IPv4 address: no sandbox has business there, and they reach the host, the
// cloud's credential service or a translator the guard cannot see through.

// internalKinds are the guarded kinds a floor lets one subnet of be opened.
var internalKinds = []string{"private", "ula", "cgnat"}

// subnetBits is the widest range of an internal network a floor lets an
// allow rule open.
func subnetBits(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 24
	}
	return 64
}

// liftedGuard is the guarded range an allow IP rule lifts.
func liftedGuard(r *Rule) (guardRange, bool) {
	p, ok := r.Prefix()
	if !ok {
		return guardRange{}, false
	}
	table := guard6
	if p.Addr().Is4() {
		table = guard4
	}
	for _, g := range table { // most specific first
		if g.prefix.Bits() <= p.Bits() && g.prefix.Contains(p.Addr()) {
			return g, true
		}
	}
	return guardRange{}, false
}

// allowRisk says what an allow rule opens that a floor must judge, in the
// words of the floor's refusal and the validator's warning ("" when nothing),
// and whether the floors standard and strict refuse it.
func allowRisk(r *Rule) (what string, refused bool) {
	if b := r.breadth(); b.broad() {
		return b.String(), true
	}
	g, ok := liftedGuard(r)
	if !ok {
		return "", false
	}
	what = "lifts the address guard for " + g.label
	kind, _, _ := strings.Cut(g.label, " ")
	switch {
	case !slices.Contains(internalKinds, kind):
		return what, true
	case r.prefix.Bits() < subnetBits(r.prefix):
		return fmt.Sprintf("%s over more than one subnet (/%d)", what, subnetBits(r.prefix)), true
	}
	return what, false
}
