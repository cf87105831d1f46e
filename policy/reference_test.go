package policy

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/gobwas/glob"
)

// refMatcher is the naive reference the Matcher is checked against: a
// linear scan over every rule, written straight from docs/design.md with
// none of the Matcher's indexes. Globs are matched with gobwas/glob, the
// library docs/design.md defines glob semantics by, so the differential also checks the
// Matcher's own linear-time glob matcher.
type refMatcher struct {
	mode         Mode
	allow, block []*Rule
	defaults     []uint16
	self         []netip.Addr
	globs        map[*Rule]*glob.Pattern
}

func newRefMatcher(n NetworkPolicy) *refMatcher {
	r := &refMatcher{mode: n.Mode, allow: n.Allow, block: n.Block, defaults: n.DefaultPorts, globs: map[*Rule]*glob.Pattern{}}
	if r.mode == "" {
		r.mode = ModeFiltered
	}
	if len(r.defaults) == 0 {
		r.defaults = []uint16{80, 443}
	}
	for _, a := range n.Self {
		r.self = append(r.self, a.Unmap())
	}
	for _, rule := range slices.Concat(n.Allow, n.Block) {
		if rule.kind == kindGlob {
			r.globs[rule] = glob.MustCompile(rule.name, '.')
		}
	}
	return r
}

// globToRegexp translates the glob subset ParseRule accepts.
func globToRegexp(g string) string {
	var b strings.Builder
	b.WriteString(`^`)
	for i := 0; i < len(g); i++ {
		switch {
		case strings.HasPrefix(g[i:], "**"):
			b.WriteString(`.*`)
			i++
		case g[i] == '*':
			b.WriteString(`[^.]*`)
		case g[i] == '?':
			b.WriteString(`[^.]`)
		default:
			b.WriteString(regexp.QuoteMeta(g[i : i+1]))
		}
	}
	b.WriteString(`$`)
	return b.String()
}

func (ref *refMatcher) nameMatches(r *Rule, n string) bool {
	switch r.kind {
	case kindExact:
		return n == r.name
	case kindBelow:
		return strings.HasSuffix(n, "."+r.name)
	case kindApex:
		return n == r.name || strings.HasSuffix(n, "."+r.name)
	case kindGlob:
		return ref.globs[r].Match(n)
	case kindAny:
		return true
	}
	return false
}

func (ref *refMatcher) portMatches(r *Rule, port uint16, block bool) bool {
	switch {
	case port == 0 && block:
		return !r.hasPort || r.portLo == 1 && r.portHi == 65535
	case port == 0:
		return r.hasPort || len(ref.defaults) > 0
	case r.hasPort:
		return r.portLo <= port && port <= r.portHi
	case block:
		return true
	}
	return slices.Contains(ref.defaults, port)
}

// nameRank orders matching name rules, most specific first: exact, then
// suffixes by length, then globs, then `*`; ties by position.
func nameRank(r *Rule) [2]int {
	switch r.kind {
	case kindExact:
		return [2]int{0, 0}
	case kindBelow, kindApex:
		return [2]int{1, 1000 - len(r.name)}
	case kindGlob:
		return [2]int{2, 0}
	}
	return [2]int{3, 0}
}

func (ref *refMatcher) bestName(rules []*Rule, n string, port uint16, block bool) *Rule {
	var best *Rule
	for _, r := range rules {
		if r.kind == kindPrefix || !ref.nameMatches(r, n) || !ref.portMatches(r, port, block) {
			continue
		}
		if best == nil || rankLess(nameRank(r), nameRank(best)) {
			best = r
		}
	}
	return best
}

func rankLess(a, b [2]int) bool { return a[0] < b[0] || a[0] == b[0] && a[1] < b[1] }

// bestIP returns the longest matching prefix rule of at least minBits bits.
func (ref *refMatcher) bestIP(rules []*Rule, a netip.Addr, port uint16, block bool, minBits int) *Rule {
	var best *Rule
	for _, r := range rules {
		if r.kind != kindPrefix || !r.prefix.Contains(a) || r.prefix.Bits() < minBits || !ref.portMatches(r, port, block) {
			continue
		}
		if best == nil || r.prefix.Bits() > best.prefix.Bits() {
			best = r
		}
	}
	return best
}

func (ref *refMatcher) DecideName(name string, port uint16) Decision {
	if ref.mode == ModeNone {
		return Decision{Reason: ReasonNoAllowRule}
	}
	n, ok := NormalizeName(name)
	if !ok {
		return Decision{Reason: ReasonInvalidName}
	}
	if r := ref.bestName(ref.block, n, port, true); r != nil {
		return Decision{Reason: ReasonBlockedBy, Rule: r}
	}
	if r := ref.bestName(ref.allow, n, port, false); r != nil {
		return Decision{Allow: true, Reason: ReasonAllowedBy, Rule: r}
	}
	return Decision{Reason: ReasonNoAllowRule}
}

// DecideNameRaw is DecideName with no default ports: a portless allow rule
// allows no port.
func (ref *refMatcher) DecideNameRaw(name string, port uint16) Decision {
	raw := *ref
	raw.defaults = nil
	return raw.DecideName(name, port)
}

// guardBits returns the length of the most specific guarded range holding
// a, or -1, by scanning the self list and the guard table.
func (ref *refMatcher) guardBits(a netip.Addr) int {
	if slices.Contains(ref.self, a) {
		return a.BitLen()
	}
	best := -1
	for _, g := range guardTable {
		if g.prefix.Contains(a) && g.prefix.Bits() > best {
			best = g.prefix.Bits()
		}
	}
	return best
}

func (ref *refMatcher) GuardAddr(addr netip.Addr, port uint16) Decision {
	if ref.mode == ModeNone {
		return Decision{Reason: ReasonNoAllowRule}
	}
	if !addr.IsValid() || addr.Zone() != "" {
		return Decision{Reason: ReasonInvalidName}
	}
	a := addr.Unmap()
	if r := ref.bestIP(ref.block, a, port, true, 0); r != nil {
		return Decision{Reason: ReasonBlockedBy, Rule: r}
	}
	bits := ref.guardBits(a)
	if bits < 0 {
		return Decision{Allow: true, Reason: ReasonAllowedBy}
	}
	if r := ref.bestIP(ref.allow, a, port, false, bits); r != nil {
		return Decision{Allow: true, Reason: ReasonAllowedBy, Rule: r}
	}
	return Decision{Reason: ReasonGuardedAddress}
}

func (ref *refMatcher) DecideAddr(addr netip.Addr, port uint16) Decision {
	if ref.mode == ModeNone {
		return Decision{Reason: ReasonNoAllowRule}
	}
	if !addr.IsValid() || addr.Zone() != "" {
		return Decision{Reason: ReasonInvalidName}
	}
	a := addr.Unmap()
	if r := ref.bestIP(ref.block, a, port, true, 0); r != nil {
		return Decision{Reason: ReasonBlockedBy, Rule: r}
	}
	allow := ref.bestIP(ref.allow, a, port, false, 0)
	if allow == nil {
		return Decision{Reason: ReasonNoAllowRule}
	}
	bits := ref.guardBits(a)
	if bits < 0 {
		return Decision{Allow: true, Reason: ReasonAllowedBy, Rule: allow}
	}
	if r := ref.bestIP(ref.allow, a, port, false, bits); r != nil {
		return Decision{Allow: true, Reason: ReasonAllowedBy, Rule: r}
	}
	return Decision{Reason: ReasonGuardedAddress}
}
