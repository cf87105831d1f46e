package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
)

// ruleKind is the shape of a parsed pattern.
type ruleKind uint8

const (
	kindExact  ruleKind = iota + 1 // example.com
	kindBelow                      // *.example.com: strictly below, any depth
	kindApex                       // .example.com: the apex and everything below
	kindGlob                       // api-*.example.com, **.example.com
	kindAny                        // *: every name (never an IP)
	kindPrefix                     // 203.0.113.7, 203.0.113.0/24, 2001:db8::/32
)

// maxGlobWildcards bounds the wildcards of one glob. Matching is linear in
// the pattern times the name whatever the count (see globPattern); the bound
// keeps patterns readable.
const maxGlobWildcards = 8

// Rule is one allow or block pattern, parsed and compiled by ParseRule.
// The pattern language is docs/design.md's table:
//
//	example.com        exactly example.com
//	*.example.com      any name strictly below example.com, at any depth
//	.example.com       example.com and every name below it
//	api-*.example.com  a glob: * and ? stay inside one label, ** crosses labels
//	*                  every name (never an IP address)
//	203.0.113.7        an IP address; 203.0.113.0/24, 2001:db8::/32 a range
//	any of these + :443, :8000-8100 or :*   a port constraint
//
// A Rule is immutable once parsed.
type Rule struct {
	// Text is the pattern as written, e.g. "*.github.com:443".
	Text string
	// Source is where the rule was written.
	Source Source

	kind ruleKind
	// name is the normalised name (kindExact) or suffix (kindBelow,
	// kindApex), or the lower-case glob text (kindGlob).
	name   string
	glob   globPattern
	prefix netip.Prefix // kindPrefix: masked, IPv4-mapped ranges as IPv4
	// hasPort says whether the pattern had a port constraint. Without one,
	// an allow rule allows the policy's default ports and a block rule
	// blocks every port. ":*" is a constraint covering 1-65535.
	hasPort        bool
	portLo, portHi uint16

	// breadthMemo keeps the rule's breadth judgment (breadth.go), made
	// when first asked for.
	breadthMemo atomic.Pointer[breadth]
	// sourceMemo keeps Source.String(), which every audit record of a
	// decision by this rule carries (SourceText).
	sourceMemo atomic.Pointer[string]
}

// SourceText is r.Source.String(), rendered once per rule: the audit record
// of every decision the rule makes carries it, and the hot paths must not
// build it again each time.
func (r *Rule) SourceText() string {
	if s := r.sourceMemo.Load(); s != nil {
		return *s
	}
	s := r.Source.String()
	r.sourceMemo.Store(&s)
	return s
}

// PatternError is a pattern that ParseRule refused, with what is wrong and,
// where one can be guessed, how to write it instead.
type PatternError struct {
	Text string // the pattern as written
	Msg  string // what is wrong
	Hint string // a suggestion, e.g. "did you mean `*.github.com`?"; may be empty
}

func (e *PatternError) Error() string {
	s := "`" + e.Text + "` is not a pattern: " + e.Msg
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

// IsIP reports whether r is an IP address or range rule.
func (r *Rule) IsIP() bool { return r != nil && r.kind == kindPrefix }

// Prefix returns the range of an IP rule (a single address is a /32 or
// /128), and ok=false for a name rule.
func (r *Rule) Prefix() (p netip.Prefix, ok bool) {
	if !r.IsIP() {
		return netip.Prefix{}, false
	}
	return r.prefix, true
}

// String returns the pattern as written.
func (r *Rule) String() string { return r.Text }

// portsMatch reports whether the rule's port set contains port, where a rule
// without a port constraint stands for defaults (the default ports of an
// allow rule, nil = every port for a block rule). Port 0 means "for some
// port": an allow rule matches it if its port set is not empty, while a
// block rule matches it only if it blocks every port.
func (r *Rule) portsMatch(port uint16, defaults []uint16, block bool) bool {
	if port == 0 {
		if block {
			return !r.hasPort || r.portLo == 1 && r.portHi == 65535
		}
		return r.hasPort || len(defaults) > 0
	}
	if r.hasPort {
		return r.portLo <= port && port <= r.portHi
	}
	if block {
		return true
	}
	for _, p := range defaults {
		if p == port {
			return true
		}
	}
	return false
}

// matchName reports whether the name rule r matches the normalised name.
// It is the reference semantics; the Matcher reaches the same answers with
// maps instead of calling it on every rule.
func (r *Rule) matchName(name string) bool {
	switch r.kind {
	case kindExact:
		return name == r.name
	case kindBelow:
		return len(name) > len(r.name) && strings.HasSuffix(name, r.name) && name[len(name)-len(r.name)-1] == '.'
	case kindApex:
		return name == r.name || len(name) > len(r.name) && strings.HasSuffix(name, r.name) && name[len(name)-len(r.name)-1] == '.'
	case kindGlob:
		return r.glob.match(name)
	case kindAny:
		return true
	}
	return false
}

// Covers reports whether r matches every (target, port) that o matches. A
// rule without a port constraint is taken to cover every port (true for a
// block rule; for an allow rule it covers at least its default ports, so the
// answer stays safe for "is this allow rule shadowed by that block rule").
// Covers is conservative: it may answer false when unsure (e.g. for most
// glob pairs), never true wrongly.
func (r *Rule) Covers(o *Rule) bool {
	if r == nil || o == nil {
		return false
	}
	rlo, rhi := r.portRange()
	olo, ohi := o.portRange()
	if rlo > olo || rhi < ohi {
		return false
	}
	if r.kind == kindPrefix || o.kind == kindPrefix {
		return r.kind == kindPrefix && o.kind == kindPrefix &&
			r.prefix.Bits() <= o.prefix.Bits() && r.prefix.Contains(o.prefix.Addr())
	}
	switch r.kind {
	case kindAny:
		return true
	case kindExact:
		return o.kind == kindExact && o.name == r.name
	case kindApex:
		switch o.kind {
		case kindExact, kindApex, kindBelow:
			return o.name == r.name || under(o.name, r.name)
		}
	case kindBelow:
		switch o.kind {
		case kindExact, kindApex:
			return under(o.name, r.name)
		case kindBelow:
			return o.name == r.name || under(o.name, r.name)
		}
	case kindGlob:
		switch o.kind {
		case kindExact:
			return r.glob.match(o.name)
		case kindGlob:
			return o.name == r.name
		}
	}
	return false
}

// under reports whether name is strictly below suffix on a label boundary.
func under(name, suffix string) bool {
	return len(name) > len(suffix) && strings.HasSuffix(name, suffix) && name[len(name)-len(suffix)-1] == '.'
}

func (r *Rule) portRange() (lo, hi uint16) {
	if !r.hasPort {
		return 1, 65535
	}
	return r.portLo, r.portHi
}

// ParseRule parses one allow or block pattern (see Rule). Errors are
// *PatternError and say what is wrong and how to write it instead.
func ParseRule(text string, src Source) (*Rule, error) {
	r, perr := parseRule(text)
	if perr != nil {
		perr.Text = text
		return nil, perr
	}
	r.Text = text
	r.Source = src
	return r, nil
}

func bad(msg, hint string) *PatternError { return &PatternError{Msg: msg, Hint: hint} }

func parseRule(text string) (*Rule, *PatternError) {
	if text == "" {
		return nil, bad("empty pattern", "")
	}
	if strings.TrimSpace(text) != text {
		return nil, bad("leading or trailing space", "did you mean `"+strings.TrimSpace(text)+"`?")
	}
	for i := 0; i < len(text); i++ {
		if c := text[i]; c < 0x21 || c == 0x7f {
			return nil, bad("contains a space or control character", "")
		}
	}
	if i := strings.Index(text, "://"); i >= 0 {
		host := text[i+3:]
		if j := strings.IndexAny(host, "/?#"); j >= 0 {
			host = host[:j]
		}
		return nil, bad("a rule names hosts, not URLs", hintFor(host))
	}
	if strings.Contains(text, "%") && strings.Count(text, ":") >= 2 {
		return nil, bad("zones are not allowed in IPv6 addresses", "drop the `%zone` part")
	}
	if strings.ContainsAny(text, "@\\%#") {
		return nil, bad("a host may not contain '@', '\\', '%' or '#'", "write the host name alone")
	}

	host, portText, hasPort, perr := splitHostPort(text)
	if perr != nil {
		return nil, perr
	}
	r := &Rule{}
	if hasPort {
		lo, hi, perr := parsePortSpec(portText)
		if perr != nil {
			return nil, perr
		}
		r.hasPort, r.portLo, r.portHi = true, lo, hi
	}
	if perr := r.parseHost(host); perr != nil {
		return nil, perr
	}
	return r, nil
}

// hintFor suggests a pattern for a host found inside a URL or similar.
func hintFor(host string) string {
	if host == "" {
		return "write the host name alone, e.g. `example.com`"
	}
	return "did you mean `" + host + "`?"
}

// splitHostPort separates the host part from an optional port constraint.
// IPv6 with a port needs brackets: "[2001:db8::1]:443", "[2001:db8::/32]:443".
func splitHostPort(text string) (host, port string, hasPort bool, perr *PatternError) {
	if strings.HasPrefix(text, "[") {
		end := strings.IndexByte(text, ']')
		if end < 0 {
			return "", "", false, bad("unclosed '['", "an IPv6 address with a port is written `[2001:db8::1]:443`")
		}
		host = text[1:end]
		rest := text[end+1:]
		if strings.ContainsAny(host, "[]") {
			return "", "", false, bad("nested brackets", "")
		}
		if !strings.Contains(host, ":") {
			return "", "", false, bad("brackets are only for IPv6 addresses", "did you mean `"+host+rest+"`?")
		}
		switch {
		case rest == "":
			return host, "", false, nil
		case rest[0] == ':':
			return host, rest[1:], true, nil
		}
		return "", "", false, bad("unexpected text after ']'", "an IPv6 address with a port is written `[2001:db8::1]:443`")
	}
	if strings.ContainsAny(text, "[]") {
		return "", "", false, bad("brackets are only for IPv6 addresses", "an IPv6 address with a port is written `[2001:db8::1]:443`")
	}
	switch strings.Count(text, ":") {
	case 0:
		return text, "", false, nil
	case 1:
		i := strings.IndexByte(text, ':')
		return text[:i], text[i+1:], true, nil
	}
	// Two or more colons: an IPv6 address or range, without a port.
	return text, "", false, nil
}

// parsePortSpec parses "443", "8000-8100" or "*".
func parsePortSpec(s string) (lo, hi uint16, perr *PatternError) {
	const hint = "a port is 1-65535, a range `8000-8100` or `*` for every port"
	if s == "*" {
		return 1, 65535, nil
	}
	if s == "" {
		return 0, 0, bad("empty port after ':'", hint)
	}
	a, b, isRange := strings.Cut(s, "-")
	lo, ok := parsePort(a)
	if !ok {
		return 0, 0, bad("bad port `"+a+"`", hint)
	}
	if !isRange {
		return lo, lo, nil
	}
	hi, ok = parsePort(b)
	if !ok {
		return 0, 0, bad("bad port `"+b+"`", hint)
	}
	if lo > hi {
		return 0, 0, bad("bad port range `"+s+"`: the first port is above the last", "did you mean `"+b+"-"+a+"`?")
	}
	return lo, hi, nil
}

// parsePort parses a strict decimal port 1-65535: digits only, no sign, no
// leading zero.
func parsePort(s string) (uint16, bool) {
	if s == "" || len(s) > 5 || s[0] == '0' {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// parseHost fills in the kind and compiled form of r from the host part.
func (r *Rule) parseHost(host string) *PatternError {
	switch {
	case host == "":
		return bad("empty host", "")
	case host == "*":
		r.kind = kindAny
		return nil
	case strings.Contains(host, "/"):
		return r.parsePrefix(host)
	case strings.Contains(host, ":"):
		a, ok := ParseIP(host)
		if !ok {
			return bad("not a valid IPv6 address", "an IPv6 address with a port is written `[2001:db8::1]:443`; zones are not allowed")
		}
		r.kind, r.prefix = kindPrefix, netip.PrefixFrom(a, a.BitLen())
		return nil
	}
	if a, ok := ParseIP(host); ok {
		r.kind, r.prefix = kindPrefix, netip.PrefixFrom(a, a.BitLen())
		return nil
	}
	if strings.ContainsAny(host, "*?") {
		return r.parseWildcard(host)
	}
	if strings.HasPrefix(host, ".") {
		if strings.HasPrefix(host, "..") {
			return bad("empty label", "did you mean `"+strings.TrimLeft(host, ".")+"`?")
		}
		n, perr := patternName(host[1:])
		if perr != nil {
			return perr
		}
		r.kind, r.name = kindApex, n
		return nil
	}
	n, perr := patternName(host)
	if perr != nil {
		return perr
	}
	r.kind, r.name = kindExact, n
	return nil
}

// parsePrefix parses an IP range; it must be canonical (no host bits set).
func (r *Rule) parsePrefix(host string) *PatternError {
	addrText, _, _ := strings.Cut(host, "/")
	p, err := netip.ParsePrefix(host)
	if err != nil {
		if _, ok := ParseIP(addrText); !ok && !strings.Contains(addrText, ":") {
			if _, ok := NormalizeName(addrText); ok || strings.ContainsAny(addrText, "*?") {
				return bad("a name rule cannot have a path", "did you mean `"+addrText+"`?")
			}
		}
		if strings.Contains(host, ":") {
			return bad("not a valid IP range", "write a canonical range such as `2001:db8::/32`; with a port, in brackets: `[2001:db8::/32]:443`")
		}
		return bad("not a valid IP range", "write a canonical range such as `203.0.113.0/24` or `2001:db8::/32`")
	}
	if p.Addr().Zone() != "" {
		return bad("zones are not allowed", "")
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return bad("range mixes IPv4-mapped and other IPv6 addresses", "write the IPv4 range directly")
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	if m := p.Masked(); m != p {
		return bad("range `"+host+"` has host bits set", "did you mean `"+m.String()+"`?")
	}
	r.kind, r.prefix = kindPrefix, p
	return nil
}

// parseWildcard parses "*.suffix" or a glob.
func (r *Rule) parseWildcard(host string) *PatternError {
	if rest, ok := strings.CutPrefix(host, "*."); ok && !strings.ContainsAny(rest, "*?") {
		n, perr := patternName(rest)
		if perr != nil {
			return perr
		}
		r.kind, r.name = kindBelow, n
		return nil
	}
	if strings.HasPrefix(host, ".") {
		return bad("a leading '.' cannot be combined with a wildcard", "write `*.example.com` for names below example.com, or `.example.com` for it and its sub-domains")
	}
	// "*github.com" is almost always a typo for "*.github.com", and as a glob
	// it would also match evilgithub.com: refuse it.
	if host[0] == '*' && len(host) > 1 && isAlnum(host[1]) {
		if n, ok := NormalizeName(host[1:]); ok && strings.Contains(n, ".") {
			return bad("`*` directly before a name also matches names that merely end in it (evil"+n+")",
				"did you mean `*."+n+"` (names below it) or `."+n+"` (it and names below it)?")
		}
	}
	host = strings.TrimSuffix(host, ".")
	lower := make([]byte, 0, len(host))
	wild := 0
	labels := strings.Split(host, ".")
	for i, l := range labels {
		if l == "" {
			return bad("empty label", "")
		}
		if len(l) > maxLabelLen {
			return bad("label longer than 63 bytes", "")
		}
		for j := 0; j < len(l); j++ {
			c := l[j]
			switch {
			case c == '*' || c == '?':
				wild++
			case 'A' <= c && c <= 'Z':
				c += 'a' - 'A'
			case c >= 0x80:
				return bad("a glob must be written in ASCII", "write Unicode labels as their A-label (`xn--…`)")
			case !nameByte(c):
				return bad(fmt.Sprintf("character %q is not allowed in a glob", c), "globs support `*` (inside one label), `**` (across labels) and `?`")
			}
			lower = append(lower, c)
		}
		if i == len(labels)-1 && !strings.ContainsAny(l, "*?") && numericLabel(l) {
			return bad("the last label is a number", "IP addresses are matched by IP rules such as `203.0.113.0/24`")
		}
		if i < len(labels)-1 {
			lower = append(lower, '.')
		}
	}
	if len(lower) > maxNameLen {
		return bad("longer than 253 bytes", "")
	}
	if wild > maxGlobWildcards {
		return bad("too many wildcards", "use at most "+strconv.Itoa(maxGlobWildcards))
	}
	if strings.Contains(string(lower), "***") {
		return bad("`***` is not a wildcard", "use `*` inside one label or `**` across labels")
	}
	r.kind, r.name, r.glob = kindGlob, string(lower), compileGlob(string(lower))
	return nil
}

// globPattern is a compiled glob with gobwas/glob's semantics for the
// subset ParseRule accepts, with '.' as the separator (for names; request
// path patterns use '/', see PathPattern): `*` matches any run of
// non-separator bytes (possibly empty), `**` any run of bytes, `?` one
// non-separator byte, anything else itself.
//
// It does not use gobwas/glob's matcher: that one backtracks, and a glob
// such as `*a*a*a*a*a*a*b*c` took 26 s against a 63-byte label of a's — an
// attacker choosing the name could stall every decision. match runs a
// dynamic programme over (pattern position, name position) instead:
// O(len(pattern)·len(name)) ≤ 253·253 steps in the worst case, no
// allocation. The fuzz tests check it against gobwas/glob.
type globPattern struct {
	prefix, suffix string // literal text before the first / after the last wildcard
	prog           string // the rest: '*', '?', globStarStar for "**", or literal bytes
	minLen         int    // bytes every match needs
}

// globStarStar stands for "**" in globPattern.prog.
const globStarStar = '\x01'

func compileGlob(g string) globPattern {
	first := strings.IndexAny(g, "*?")
	last := strings.LastIndexAny(g, "*?")
	p := globPattern{prefix: g[:first], suffix: g[last+1:]}
	mid := g[first : last+1]
	var b strings.Builder
	for i := 0; i < len(mid); i++ {
		switch {
		case strings.HasPrefix(mid[i:], "**"):
			b.WriteByte(globStarStar)
			i++
		case mid[i] == '*':
			b.WriteByte('*')
		default:
			b.WriteByte(mid[i])
			p.minLen++
		}
	}
	p.prog = b.String()
	p.minLen += len(p.prefix) + len(p.suffix)
	return p
}

// match reports whether the normalised name matches the glob.
func (p *globPattern) match(name string) bool {
	if len(name) > maxNameLen {
		return false
	}
	var a, b [maxNameLen + 1]bool
	return p.matchSep(name, '.', a[:], b[:])
}

// matchSep reports whether s matches the glob when sep is the separator
// that `*` and `?` do not cross ('.' for names, '/' for paths). a and b are
// scratch of at least len(s)+1 entries each.
func (p *globPattern) matchSep(s string, sep byte, a, b []bool) bool {
	if len(s) < p.minLen || !strings.HasPrefix(s, p.prefix) || !strings.HasSuffix(s, p.suffix) {
		return false
	}
	mid := s[len(p.prefix) : len(s)-len(p.suffix)]
	n := len(mid)
	// cur[j]: the pattern so far matches mid[:j].
	cur, next := a[:n+1], b[:n+1]
	clear(cur)
	cur[0] = true
	for i := 0; i < len(p.prog); i++ {
		op := p.prog[i]
		alive := false
		switch op {
		case '*', globStarStar:
			next[0] = cur[0]
			for j := 1; j <= n; j++ {
				next[j] = cur[j] || next[j-1] && (op == globStarStar || mid[j-1] != sep)
			}
		case '?':
			next[0] = false
			for j := 1; j <= n; j++ {
				next[j] = cur[j-1] && mid[j-1] != sep
			}
		default:
			next[0] = false
			for j := 1; j <= n; j++ {
				next[j] = cur[j-1] && mid[j-1] == op
			}
		}
		for j := 0; j <= n; j++ {
			if next[j] {
				alive = true
				break
			}
		}
		if !alive {
			return false
		}
		cur, next = next, cur
	}
	return cur[n]
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// patternName normalises the name part of an exact or suffix pattern, with
// a precise message when it is not a valid name.
func patternName(s string) (string, *PatternError) {
	if n, ok := NormalizeName(s); ok {
		return n, nil
	}
	return "", nameProblem(s)
}

// nameProblem explains why s is not a valid name.
func nameProblem(s string) *PatternError {
	s = strings.NewReplacer("\u3002", ".", "\uff0e", ".", "\uff61", ".").Replace(s)
	t := strings.TrimSuffix(s, ".")
	switch {
	case t == "":
		return bad("empty name", "")
	case strings.HasSuffix(t, "."):
		return bad("more than one trailing dot", "did you mean `"+strings.TrimRight(s, ".")+"`?")
	case strings.Contains(t, ".."), strings.HasPrefix(t, "."):
		return bad("empty label", "")
	case strings.Contains(s, "/"):
		return bad("a rule names hosts, not paths", "")
	}
	if len(t) > maxNameLen && isASCII(t) {
		return bad("longer than 253 bytes", "")
	}
	last := t
	if i := strings.LastIndexByte(t, '.'); i >= 0 {
		last = t[i+1:]
	}
	for _, l := range strings.Split(t, ".") {
		if len(l) > maxLabelLen && isASCII(l) {
			return bad("label longer than 63 bytes", "")
		}
	}
	if numericLabel(last) {
		if looksNumericHost(t) {
			return bad("not a canonical IP address", "write IP addresses as canonical dotted quads without leading zeros, e.g. `127.0.0.1`, or a range `10.0.0.0/8`")
		}
		return bad("the last label is a number", "names never end in a number; IP addresses are matched by IP rules such as `203.0.113.0/24`")
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if c < 0x80 && !nameByte(c) && !('A' <= c && c <= 'Z') {
			return bad(fmt.Sprintf("character %q is not allowed in a host name", c), "")
		}
	}
	if !isASCII(t) {
		return bad("not a valid internationalised name", "check the spelling, or write the A-label (`xn--…`)")
	}
	if strings.Contains(strings.ToLower(t), "xn--") {
		return bad("an `xn--` label is not a valid A-label", "")
	}
	return bad("not a valid host name", "")
}

// looksNumericHost reports whether every label is an inet_aton number.
func looksNumericHost(s string) bool {
	for _, l := range strings.Split(s, ".") {
		if !numericLabel(l) {
			return false
		}
	}
	return true
}

// Matcher is a compiled network policy. It is immutable and safe for
// concurrent use; its methods do no I/O and do not allocate.
type Matcher struct {
	mode         Mode
	allow, block ruleSet
	defaultPorts []uint16
	self         map[netip.Addr]string // egressd's own addresses → guard label
	// The resolver settings of the same policy (see NetworkPolicy).
	blockResponse DNSResponse
	upstreams     []netip.AddrPort
	inspect       []*InspectRule
	credentials   []*Credential
	placeholders  []placeholderForm // per credential: the forms its placeholder is recognised in
}
