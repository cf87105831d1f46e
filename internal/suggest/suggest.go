// Package suggest learns an allow list from egressd's audit log (`egressd
// policy suggest AUDIT-LOG...`): the smallest policy that would have allowed
// what was denied for want of an allow rule.
//
//	audit log lines ─► Read: one record per line; bad lines are Problems (file:line), never fatal
//	                     │ deny / would-deny with reason no-allow-rule
//	                     ▼
//	            (host, port) seen, with counts and kinds
//	                     │ Policy: exact names; with Collapse N, *.suffix where N names share
//	                     ▼ a suffix that is not a public suffix
//	            draft.Policy: network.allow, each entry commented with what was seen
//
// Denials a rule made on purpose (blocked-by), or that no name rule can lift
// (guarded-address, invalid-name), are never turned into allow rules: they
// are counted and reported.
package suggest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/net/publicsuffix"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/draft"
	"github.com/egressd/egressd/policy"
)

// MaxLine is the longest audit line read; a longer one is a Problem.
const MaxLine = 1 << 20

// Options tune a suggestion.
type Options struct {
	// Collapse, when 2 or more, writes *.suffix instead of the names below
	// suffix when at least Collapse of the names seen lie below it. A
	// public suffix (com, co.uk, github.io) is never collapsed over: the
	// names below one belong to different owners. 0 keeps exact names.
	Collapse int
	// Profile is written as the policy's base profile; "" leaves the key
	// out, so the file layers on the profile the launch names.
	Profile string
	// DefaultPorts are the ports a rule without a port allows; nil is
	// egressd's default, 80 and 443. A name seen on other ports gets a
	// "name:port" rule.
	DefaultPorts []uint16
}

// Problem is an audit line that could not be used.
type Problem struct {
	File string
	Line int
	Msg  string
}

func (p Problem) String() string { return p.File + ":" + strconv.Itoa(p.Line) + ": " + p.Msg }

// Suggester collects denials from audit logs.
type Suggester struct {
	opts      Options
	files     []string
	seen      map[key]*entry
	problems  []Problem
	records   int            // records read
	allowed   int            // allow records (no rule needed)
	failed    int            // error records: allowed, then the resolver or the upstream failed (no rule needed)
	left      map[string]int // denials left out, by reason
	wouldDeny int
}

// key is one destination: a host (name or IP text) and a port; port 0 is
// "the default ports" (also every DNS denial: its name's port is unknown).
type key struct {
	host string
	port uint16
}

type entry struct {
	count int
	kinds []string
	first string // time of the first record
	ip    netip.Addr
}

// New returns an empty Suggester.
func New(opts Options) *Suggester {
	if opts.DefaultPorts == nil {
		opts.DefaultPorts = []uint16{80, 443}
	}
	return &Suggester{opts: opts, seen: map[key]*entry{}, left: map[string]int{}}
}

// record is the part of an audit record suggest reads (docs/audit.md).
type record struct {
	Time     string           `json:"time"`
	Kind     *string          `json:"kind"`
	Target   *string          `json:"target"`
	Name     *string          `json:"name"`
	Port     *json.RawMessage `json:"port"`
	Decision *string          `json:"decision"`
	Reason   *string          `json:"reason"`
}

// Read reads one audit log. Lines that are not usable records are Problems;
// the error is for reading itself failing.
func (s *Suggester) Read(name string, r io.Reader) error {
	s.files = append(s.files, name)
	br := bufio.NewReaderSize(r, 64<<10)
	for line := 1; ; line++ {
		text, tooLong, err := readLine(br)
		if tooLong {
			s.problem(name, line, fmt.Sprintf("longer than %d bytes", MaxLine))
		} else if len(bytes.TrimSpace(text)) > 0 {
			if msg := s.use(text); msg != "" {
				s.problem(name, line, msg)
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", name, err)
		}
	}
}

// readLine reads up to the next newline, discarding the rest of a line
// longer than MaxLine.
func readLine(br *bufio.Reader) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		if !tooLong {
			line = append(line, chunk...)
			if len(line) > MaxLine {
				tooLong, line = true, nil
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		return line, tooLong, err
	}
}

func (s *Suggester) problem(file string, line int, msg string) {
	s.problems = append(s.problems, Problem{File: file, Line: line, Msg: msg})
}

// use takes one record; it returns why the line is unusable, or "".
func (s *Suggester) use(text []byte) string {
	if t := bytes.TrimSpace(text); t[0] != '{' {
		return "not a JSON object: not an egressd audit record"
	}
	var r record
	if err := json.Unmarshal(text, &r); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			return fmt.Sprintf("field %s is %s, not %s", ute.Field, ute.Value, ute.Type)
		}
		return "not a JSON audit record: " + err.Error()
	}
	if r.Decision == nil {
		return "no \"decision\" field: not an egressd audit record"
	}
	s.records++
	reason := ""
	if r.Reason != nil {
		reason = *r.Reason
	}
	would := *r.Decision == string(audit.OutcomeWouldDeny) || reason == string(audit.OutcomeWouldDeny)
	switch {
	case would:
		s.wouldDeny++
	case *r.Decision == string(audit.OutcomeAllow):
		s.allowed++
		return ""
	case *r.Decision == string(audit.OutcomeError):
		s.failed++
		return ""
	case *r.Decision != string(audit.OutcomeDeny):
		return "unknown decision " + draft.Quote(clip(*r.Decision))
	}
	switch reason {
	case string(policy.ReasonNoAllowRule), "would-deny", "":
	default:
		s.left[reason]++
		return ""
	}
	if r.Target == nil || r.Kind == nil {
		return "a denial without \"target\" or \"kind\""
	}
	port := uint16(0)
	if *r.Kind != "dns" {
		if r.Port == nil {
			return "a denial without \"port\""
		}
		n, err := strconv.ParseUint(string(*r.Port), 10, 16)
		if err != nil || n == 0 {
			return "port " + draft.Quote(clip(string(*r.Port))) + " is not 1-65535"
		}
		if !slices.Contains(s.opts.DefaultPorts, uint16(n)) {
			port = uint16(n)
		}
	}
	k := key{port: port}
	var ip netip.Addr
	if r.Name != nil && *r.Kind == string(audit.KindTCP) {
		// A stream to an address decided on the name learned for it
		// (report mode's would-deny of raw TCP): allow the name, whose
		// addresses may change, rather than the address.
		if n, ok := policy.NormalizeName(*r.Name); ok {
			r.Target = &n
		}
	}
	if a, ok := policy.ParseIP(*r.Target); ok {
		ip, k.host = a, a.String()
	} else if n, ok := policy.NormalizeName(*r.Target); ok {
		k.host = n
	} else {
		return "target " + draft.Quote(clip(*r.Target)) + " is not a valid host name or IP address"
	}
	e := s.seen[k]
	if e == nil {
		e = &entry{first: r.Time, ip: ip}
		s.seen[k] = e
	}
	e.count++
	if kind := clip(*r.Kind); !slices.Contains(e.kinds, kind) && len(e.kinds) < 8 && validKind(kind) {
		e.kinds = append(e.kinds, kind)
	}
	return ""
}

// validKind keeps what is printed of a kind to plain words.
func validKind(k string) bool {
	return k != "" && strings.Trim(k, "abcdefghijklmnopqrstuvwxyz-") == ""
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// Problems returns the unusable lines, in the order read.
func (s *Suggester) Problems() []Problem { return s.problems }

// rule is one suggested allow entry.
type rule struct {
	text    string
	sortKey string
	count   int
	kinds   []string
	names   int // names it stands for (collapsed rules)
	first   string
}

// Policy returns the suggested policy and notes for the person reading it
// (what was left out, what was not collapsed and why).
func (s *Suggester) Policy() (*draft.Policy, []string) {
	var notes []string
	groups := map[uint16][]key{}
	for k := range s.seen {
		groups[k.port] = append(groups[k.port], k)
	}
	var rules []rule
	for port, keys := range groups {
		r, n := s.group(port, keys)
		rules = append(rules, r...)
		notes = append(notes, n...)
	}
	sort.Slice(rules, func(i, j int) bool { return rules[i].sortKey < rules[j].sortKey })

	p := &draft.Policy{Profile: s.opts.Profile}
	denials := 0
	for _, e := range s.seen {
		denials += e.count
	}
	failed := ""
	if s.failed > 0 {
		failed = fmt.Sprintf(", %d allowed but failed upstream", s.failed)
	}
	p.Header = []string{
		"Suggested by `egressd policy suggest` from " + quoteFiles(s.files) + ".",
		fmt.Sprintf("%d records: %d allowed%s, %d denied for want of an allow rule (%d of them would-deny), %d other denials left out.",
			s.records, s.allowed, failed, denials, s.wouldDeny, sum(s.left)),
		"Every entry below was seen denied; review it before use.",
	}
	p.EnsureList("network.allow", "")
	if len(rules) == 0 {
		p.Lists[0].Comment = "no denial for want of an allow rule was seen"
	}
	for _, r := range rules {
		c := fmt.Sprintf("%d denied (%s)", r.count, strings.Join(r.kinds, ", "))
		if r.names > 1 {
			c = fmt.Sprintf("%d names, %s", r.names, c)
		}
		if r.first != "" && validTime(r.first) {
			c += ", first " + r.first
		}
		p.Append("network.allow", r.text, c)
	}
	for _, reason := range sortedKeys(s.left) {
		notes = append(notes, fmt.Sprintf("%d denials with reason %s left out: %s", s.left[reason], draft.Quote(clip(reason)), leftOutWhy(reason)))
	}
	sort.Strings(notes)
	return p, notes
}

func leftOutWhy(reason string) string {
	switch policy.Reason(reason) {
	case policy.ReasonBlockedBy:
		return "a block rule denied them on purpose"
	case policy.ReasonGuardedAddress:
		return "the address guard refused them; only an allow IP rule can lift it (docs/policy.md)"
	case policy.ReasonInvalidName:
		return "no rule can allow an invalid name"
	}
	return "not a policy decision"
}

func validTime(t string) bool {
	return len(t) <= 40 && strings.Trim(t, "0123456789-:.TZ+") == ""
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func quoteFiles(files []string) string {
	q := make([]string, len(files))
	for i, f := range files {
		q[i] = draft.Quote(f)
	}
	return strings.Join(q, ", ")
}

// group turns the destinations seen on one port (0: the default ports)
// into rules, collapsing names when asked.
func (s *Suggester) group(port uint16, keys []key) ([]rule, []string) {
	var notes []string
	suffix := ""
	if port != 0 {
		suffix = ":" + strconv.Itoa(int(port))
	}
	var names []string
	var out []rule
	for _, k := range keys {
		e := s.seen[k]
		if e.ip.IsValid() {
			text := k.host + suffix
			if e.ip.Is6() && suffix != "" {
				text = "[" + k.host + "]" + suffix
			}
			out = append(out, rule{text: text, sortKey: "~" + k.host + suffix, count: e.count, kinds: e.kinds, first: e.first, names: 1})
			continue
		}
		names = append(names, k.host)
	}
	// name → the suffix it collapses into ("" = stays exact).
	into := map[string]string{}
	if s.opts.Collapse >= 2 {
		into, notes = collapse(names, s.opts.Collapse)
	}
	isName, isSuffix := map[string]bool{}, map[string]bool{}
	for _, n := range names {
		isName[n] = true
		if into[n] != "" {
			isSuffix[into[n]] = true
		}
	}
	byPattern := map[string]*rule{}
	for _, n := range names {
		text, sortName := n, n
		switch sfx := into[n]; {
		case sfx != "" && isName[sfx]:
			text, sortName = "."+sfx, sfx // sfx itself was seen too
		case sfx != "":
			text, sortName = "*."+sfx, sfx
		case isSuffix[n]:
			text = "." + n // n itself, and the names collapsed below it
		}
		text += suffix
		e := s.seen[key{host: n, port: port}]
		r := byPattern[text]
		if r == nil {
			r = &rule{text: text, sortKey: reverseLabels(sortName) + suffix, first: e.first}
			byPattern[text] = r
		}
		r.count += e.count
		r.names++
		for _, k := range e.kinds {
			if !slices.Contains(r.kinds, k) {
				r.kinds = append(r.kinds, k)
			}
		}
		if e.first != "" && (r.first == "" || e.first < r.first) {
			r.first = e.first
		}
	}
	for _, r := range byPattern {
		slices.Sort(r.kinds)
		out = append(out, *r)
	}
	if suffix != "" {
		for i := range notes {
			notes[i] += " (port " + suffix[1:] + ")"
		}
	}
	return out, notes
}

// reverseLabels sorts names of one domain together: api.github.com →
// com.github.api.
func reverseLabels(n string) string {
	l := strings.Split(n, ".")
	slices.Reverse(l)
	return strings.Join(l, ".")
}

// collapse maps each name to the suffix it collapses into ("": it stays
// exact). A name's suffix is the deepest one with at least threshold of
// the names strictly below it — unless a shallower suffix chosen for
// another name covers it anyway. A public suffix, and what is above one,
// is never chosen. It also returns a note per public suffix that threshold
// names share but cannot be collapsed over.
func collapse(names []string, threshold int) (map[string]string, []string) {
	below := map[string]int{} // suffix → names strictly below it
	for _, n := range names {
		for s := parent(n); s != ""; s = parent(s) {
			below[s]++
		}
	}
	into := map[string]string{}
	chosen := map[string]bool{}
	psShared := map[string]int{}
	for _, n := range names {
		for s := parent(n); s != "" && collapsible(s); s = parent(s) {
			if below[s] >= threshold {
				into[n], chosen[s] = s, true
				break
			}
		}
		if into[n] == "" {
			if ps, _ := publicsuffix.PublicSuffix(n); ps != n && parent(n) == ps && below[ps] >= threshold {
				psShared[ps]++
			}
		}
	}
	// A name under a shallower chosen suffix goes there: *.example.com
	// already covers *.x.example.com.
	for _, n := range names {
		for s := parent(n); s != ""; s = parent(s) {
			if chosen[s] {
				into[n] = s
			}
		}
	}
	var notes []string
	for ps, n := range psShared {
		if n >= threshold {
			notes = append(notes, fmt.Sprintf("%d names below %s kept exact: %s is a public suffix (the names below it have different owners)", n, ps, ps))
		}
	}
	return into, notes
}

// collapsible reports whether *.s may be suggested: s is a registrable
// domain or below one, never a public suffix itself.
func collapsible(s string) bool {
	_, err := publicsuffix.EffectiveTLDPlusOne(s)
	return err == nil
}

func parent(n string) string {
	if i := strings.IndexByte(n, '.'); i >= 0 {
		return n[i+1:]
	}
	return ""
}
