package policy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// NetworkPolicy is the network part of a resolved profile: what NewMatcher
// compiles. The compiled Matcher carries all of it, the resolver settings
// included, so that one atomic swap of the Matcher (Live.Store) changes
// everything a reload changes at once: no enforcement point ever pairs the
// rules of one policy with the resolver settings of another.
type NetworkPolicy struct {
	// Mode is the network mode. The zero value means ModeFiltered. In
	// ModeNone every decision denies. ModeHost is decided like ModeFiltered
	// (in host mode nothing enforces the decisions, but they stay meaningful
	// for "what would be allowed"). ModeReport is decided like ModeFiltered
	// except that a no-allow-rule denial becomes an allow with WouldDeny
	// set (see DecideName and DecideAddr).
	Mode Mode
	// Allow and Block are the rules, in the order written (the order picks
	// the reported rule among equally specific matches). Nil entries are an
	// error.
	Allow, Block []*Rule
	// DefaultPorts are the ports a portless allow rule allows; nil or empty
	// means [80, 443]. A portless block rule blocks every port.
	DefaultPorts []uint16
	// Self are egressd's own addresses: always guarded unless an allow IP
	// rule names them (a /32 or /128 rule for that address).
	Self []netip.Addr
	// DNSBlockResponse is what the resolver answers for a denied name.
	// "" leaves it to the resolver's own default.
	DNSBlockResponse DNSResponse
	// UpstreamDNS are the resolvers allowed names are forwarded to. Empty
	// leaves them to the resolver's own default.
	UpstreamDNS []netip.AddrPort
	// Inspect and Credentials are the HTTPS inspection entries
	// (inspect.go); nil entries are an error.
	Inspect     []*InspectRule
	Credentials []*Credential
}

var defaultPorts = []uint16{80, 443}

// NewMatcher compiles a network policy. Exact and suffix rules go into hash
// maps keyed by normalised name, IP rules into per-prefix-length maps, so
// the cost of a decision depends on the length of the name (and the number
// of globs and distinct prefix lengths), not on the number of rules.
func NewMatcher(n NetworkPolicy) (*Matcher, error) {
	m := &Matcher{mode: n.Mode}
	switch n.Mode {
	case ModeNone, ModeFiltered, ModeHost, ModeReport:
	case "":
		m.mode = ModeFiltered
	default:
		return nil, fmt.Errorf("compiling network policy: unknown mode %q (want none, filtered, report or host)", n.Mode)
	}
	m.defaultPorts = defaultPorts
	if len(n.DefaultPorts) > 0 {
		for _, p := range n.DefaultPorts {
			if p == 0 {
				return nil, errors.New("compiling network policy: default port 0 (ports are 1-65535)")
			}
		}
		m.defaultPorts = slices.Clone(n.DefaultPorts)
	}
	if err := m.allow.add(n.Allow, "allow"); err != nil {
		return nil, err
	}
	if err := m.block.add(n.Block, "block"); err != nil {
		return nil, err
	}
	switch n.DNSBlockResponse {
	case "", DNSNXDomain, DNSRefused:
		m.blockResponse = n.DNSBlockResponse
	default:
		return nil, fmt.Errorf("compiling network policy: DNS block response %q (want %q or %q)", n.DNSBlockResponse, DNSNXDomain, DNSRefused)
	}
	for i, u := range n.UpstreamDNS {
		a, ok := canonAddr(u.Addr())
		if !ok || u.Port() == 0 || a.IsUnspecified() || a.IsMulticast() {
			return nil, fmt.Errorf("compiling network policy: upstream resolver %d (%v) is not a unicast IP:port without a zone", i, u)
		}
		m.upstreams = append(m.upstreams, netip.AddrPortFrom(a, u.Port()))
	}
	for i, r := range n.Inspect {
		if r == nil || r.Host == nil || r.Host.kind == 0 || r.Host.IsIP() {
			return nil, fmt.Errorf("compiling network policy: inspect entry %d has no host name pattern", i)
		}
	}
	for i, c := range n.Credentials {
		if c == nil || c.Host == "" || c.Header == "" || c.Secret == "" || c.Placeholder == "" {
			return nil, fmt.Errorf("compiling network policy: credentials entry %d is incomplete", i)
		}
	}
	m.inspect, m.credentials = slices.Clone(n.Inspect), slices.Clone(n.Credentials)
	m.placeholders = placeholderForms(m.credentials)
	for i, a := range n.Self {
		c, ok := canonAddr(a)
		if !ok {
			return nil, fmt.Errorf("compiling network policy: self address %d (%v) is not a valid address without a zone", i, a)
		}
		if m.self == nil {
			m.self = make(map[netip.Addr]string, len(n.Self))
		}
		m.self[c] = "self " + netip.PrefixFrom(c, c.BitLen()).String()
	}
	return m, nil
}

// ruleSet is one list (allow or block), compiled.
type ruleSet struct {
	exact  map[string][]*Rule // kindExact by name
	suffix map[string][]*Rule // kindBelow and kindApex by suffix
	globs  []*Rule
	any    []*Rule
	ips    prefixTable
}

func (s *ruleSet) add(rules []*Rule, list string) error {
	for i, r := range rules {
		if r == nil {
			return fmt.Errorf("compiling network policy: %s rule %d is nil", list, i)
		}
		switch r.kind {
		case kindExact:
			if s.exact == nil {
				s.exact = make(map[string][]*Rule)
			}
			s.exact[r.name] = append(s.exact[r.name], r)
		case kindBelow, kindApex:
			if s.suffix == nil {
				s.suffix = make(map[string][]*Rule)
			}
			s.suffix[r.name] = append(s.suffix[r.name], r)
		case kindGlob:
			s.globs = append(s.globs, r)
		case kindAny:
			s.any = append(s.any, r)
		case kindPrefix:
			s.ips.add(r)
		default:
			return fmt.Errorf("compiling network policy: %s rule %d (%q) was not made by ParseRule", list, i, r.Text)
		}
	}
	return nil
}

// firstPort returns the first rule of rs (in written order) whose ports
// match.
func firstPort(rs []*Rule, port uint16, defaults []uint16, block bool) *Rule {
	for _, r := range rs {
		if r.portsMatch(port, defaults, block) {
			return r
		}
	}
	return nil
}

// lookupName returns the most specific rule matching the normalised name
// and port, or nil. Specificity: an exact rule; then suffix rules, longest
// suffix first (at equal suffix, `*.x` and `.x` rank alike, first written
// wins); then globs; then `*`. Among equals the first written rule wins.
//
// The suffix walk slices the name at each dot and looks the rest up in one
// map: no allocation, and at most one lookup per label.
func (s *ruleSet) lookupName(name string, port uint16, defaults []uint16, block bool) *Rule {
	if len(s.exact) > 0 {
		if r := firstPort(s.exact[name], port, defaults, block); r != nil {
			return r
		}
	}
	if len(s.suffix) > 0 {
		for _, r := range s.suffix[name] {
			if r.kind == kindApex && r.portsMatch(port, defaults, block) {
				return r
			}
		}
		for i := 0; i < len(name); i++ {
			if name[i] != '.' {
				continue
			}
			if r := firstPort(s.suffix[name[i+1:]], port, defaults, block); r != nil {
				return r
			}
		}
	}
	for _, r := range s.globs {
		if r.portsMatch(port, defaults, block) && r.glob.match(name) {
			return r
		}
	}
	return firstPort(s.any, port, defaults, block)
}

// prefixTable holds IP rules in hash maps keyed by (masked address, prefix
// length) — a single integer for IPv4 — plus the distinct prefix lengths in
// use per family, longest first. A lookup costs one map probe per distinct
// length (at most 33 for IPv4, 129 for IPv6), however many rules there are.
type prefixTable struct {
	v4           map[uint64][]*Rule
	v6           map[v6Key][]*Rule
	lens4, lens6 []int
}

type v6Key struct {
	hi, lo uint64
	bits   int
}

// v4Key packs an IPv4 address masked to bits, and bits, into one integer.
func v4Key(a netip.Addr, bits int) uint64 {
	b := a.As4()
	x := uint64(binary.BigEndian.Uint32(b[:]))
	if bits < 32 {
		x &^= 1<<(32-bits) - 1
	}
	return x<<8 | uint64(bits)
}

// key6 returns the map key of an IPv6 address masked to bits.
func key6(a netip.Addr, bits int) v6Key {
	b := a.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	switch {
	case bits == 0:
		hi, lo = 0, 0
	case bits < 64:
		hi &^= 1<<(64-bits) - 1
		lo = 0
	case bits < 128:
		lo &^= 1<<(128-bits) - 1
	}
	return v6Key{hi: hi, lo: lo, bits: bits}
}

func (t *prefixTable) add(r *Rule) {
	p := r.prefix
	addLen := func(lens *[]int) {
		if !slices.Contains(*lens, p.Bits()) {
			*lens = append(*lens, p.Bits())
			slices.SortFunc(*lens, func(a, b int) int { return b - a })
		}
	}
	if p.Addr().Is4() {
		if t.v4 == nil {
			t.v4 = make(map[uint64][]*Rule)
		}
		k := v4Key(p.Addr(), p.Bits())
		t.v4[k] = append(t.v4[k], r)
		addLen(&t.lens4)
		return
	}
	if t.v6 == nil {
		t.v6 = make(map[v6Key][]*Rule)
	}
	k := key6(p.Addr(), p.Bits())
	t.v6[k] = append(t.v6[k], r)
	addLen(&t.lens6)
}

// lookup returns the most specific (longest prefix, then first written) IP
// rule holding the canonical address a whose ports match, considering only
// prefixes of at least minBits bits.
func (t *prefixTable) lookup(a netip.Addr, port uint16, defaults []uint16, block bool, minBits int) *Rule {
	if a.Is4() {
		if len(t.v4) == 0 {
			return nil
		}
		for _, l := range t.lens4 {
			if l < minBits {
				break
			}
			if r := firstPort(t.v4[v4Key(a, l)], port, defaults, block); r != nil {
				return r
			}
		}
		return nil
	}
	if len(t.v6) == 0 {
		return nil
	}
	for _, l := range t.lens6 {
		if l < minBits {
			break
		}
		if r := firstPort(t.v6[key6(a, l)], port, defaults, block); r != nil {
			return r
		}
	}
	return nil
}

// DNSBlockResponse is the policy's answer to a denied name, "" when the
// policy leaves it to the resolver (and for a nil Matcher).
func (m *Matcher) DNSBlockResponse() DNSResponse {
	if m == nil {
		return ""
	}
	return m.blockResponse
}

// UpstreamDNS are the policy's upstream resolvers (IPv4-mapped addresses
// unmapped), empty when the policy leaves them to the resolver (and for a
// nil Matcher). The slice is the Matcher's own: do not modify it.
func (m *Matcher) UpstreamDNS() []netip.AddrPort {
	if m == nil {
		return nil
	}
	return m.upstreams
}

// Mode returns the network mode; a nil Matcher reports ModeNone.
func (m *Matcher) Mode() Mode {
	if m == nil {
		return ModeNone
	}
	return m.mode
}

// DecideName decides a connection to a host name (raw or already
// normalised) on port: steps 1-3 of the decision order.
//
//  1. the name does not normalise (NormalizeName) → deny, invalid-name
//  2. a block rule matches name and port → deny, blocked-by (block wins)
//  3. an allow rule matches name and port → allow, allowed-by
//  4. else deny, no-allow-rule
//
// Name rules never match IP literals: an IP-address-looking string is an
// invalid name here (use DecideAddr). Port 0 means "for some port" (see
// DecideNameAnyPort). A nil Matcher or mode none denies (no-allow-rule).
// For a canonical name without "xn--" labels DecideName does not allocate.
//
// In ModeReport step 4 lets the request through: Allow, Reason
// no-allow-rule, WouldDeny. Only no-allow-rule is relaxed: an invalid name
// matches no rule a learned list could hold, and a block rule is an
// owner's explicit refusal (one no later layer may lift), so both still
// deny; the address guard, applied after the name, is never relaxed.
func (m *Matcher) DecideName(name string, port uint16) Decision {
	return m.decideName(name, port, false)
}

// DecideNameRaw decides raw TCP to a host name on port: a stream that
// names no host itself (neither a TLS ClientHello with server_name nor an
// HTTP/1 request with Host), sent to an address learned for name or through
// a CONNECT tunnel to name. It is DecideName with only the allow rules that
// name their port counting (`ssh.example.com:22`, `*.example.com:8000-8100`,
// `git.example.com:*`): a portless rule's default_ports admit a name for
// the protocols that carry it, whose every stream or request the proxy
// decides on the name it carries, not for bytes that could be for any site
// served at the same address. So a raw stream is allowed only where a rule
// says so for that port, whatever the order or specificity of the portless
// rules that also match; block rules apply as in DecideName. Port 0 means
// "for some port". DecideNameRaw does not allocate where DecideName does
// not.
//
// In ModeReport a name no rule allows is a would-deny only on a port that
// is not a default port: what egressd policy suggest learns from it,
// `name:PORT`, admits raw TCP there in filtered mode. On a default port
// the learned rule would be portless, which admits TLS and HTTP only, so
// the raw stream is refused as in filtered mode (report mode lets through
// what the learned list would, no more: THREATS A5).
func (m *Matcher) DecideNameRaw(name string, port uint16) Decision {
	return m.decideName(name, port, true)
}

// decideName is DecideName, or DecideNameRaw when raw is set (then a
// portless allow rule allows no port: its default ports are not passed).
func (m *Matcher) decideName(name string, port uint16, raw bool) Decision {
	if m == nil || m.mode == ModeNone {
		return Decision{Reason: ReasonNoAllowRule}
	}
	n, ok := NormalizeName(name)
	if !ok {
		return Decision{Reason: ReasonInvalidName}
	}
	if r := m.block.lookupName(n, port, nil, true); r != nil {
		return Decision{Reason: ReasonBlockedBy, Rule: r}
	}
	defaults := m.defaultPorts
	if raw {
		defaults = nil
	}
	if r := m.allow.lookupName(n, port, defaults, false); r != nil {
		return Decision{Allow: true, Reason: ReasonAllowedBy, Rule: r}
	}
	if m.mode == ModeReport && (!raw || port == 0 || !slices.Contains(m.defaultPorts, port)) {
		return Decision{Allow: true, Reason: ReasonNoAllowRule, WouldDeny: true}
	}
	return Decision{Reason: ReasonNoAllowRule}
}

// DecideNameAnyPort is the DNS question: is name allowed for at least one
// port? It is DecideName with port 0: an allow rule counts if it allows any
// port, and a block rule counts only if it blocks every port (portless or
// `:*`). Several port-limited block rules that together cover every port an
// allow rule opens are not combined: the name is then answered in DNS, and
// every connection to it is still denied per port.
func (m *Matcher) DecideNameAnyPort(name string) Decision { return m.DecideName(name, 0) }

// DecideAddr decides a connection to an IP-literal destination: block IP
// rules (blocked-by), then allow IP rules only — name rules, `*` included,
// never match an address — (else no-allow-rule), then the address guard: an
// allowed address in a guarded range is still refused (guarded-address)
// unless an allow IP rule lies inside that range and covers the port (see
// the guard.go comment); the decision then reports that rule. IPv4-mapped
// addresses are decided as IPv4. Port 0 means "for some port". A nil Matcher
// or mode none denies. DecideAddr does not allocate.
//
// In ModeReport an address no allow IP rule names is a would-deny (Allow,
// no-allow-rule, WouldDeny) when the guard passes it, and guarded-address
// when it does not: the guard holds in every mode.
func (m *Matcher) DecideAddr(addr netip.Addr, port uint16) Decision {
	if m == nil || m.mode == ModeNone {
		return Decision{Reason: ReasonNoAllowRule}
	}
	a, ok := canonAddr(addr)
	if !ok {
		return Decision{Reason: ReasonInvalidName}
	}
	if r := m.block.ips.lookup(a, port, nil, true, 0); r != nil {
		return Decision{Reason: ReasonBlockedBy, Rule: r}
	}
	allow := m.allow.ips.lookup(a, port, m.defaultPorts, false, 0)
	if allow == nil {
		if m.mode == ModeReport {
			if _, guarded := m.guardFor(a); guarded {
				return Decision{Reason: ReasonGuardedAddress}
			}
			return Decision{Allow: true, Reason: ReasonNoAllowRule, WouldDeny: true}
		}
		return Decision{Reason: ReasonNoAllowRule}
	}
	// allow is the longest matching prefix, so if any rule lifts the guard
	// (a matching rule at least as long as the guarded range), allow does.
	if g, guarded := m.guardFor(a); guarded && allow.prefix.Bits() < g.prefix.Bits() {
		return Decision{Reason: ReasonGuardedAddress}
	}
	return Decision{Allow: true, Reason: ReasonAllowedBy, Rule: allow}
}

// Decide dispatches on the target: DecideName for a name, DecideAddr for an
// address. A target with both or neither set, or with port 0 (a connection
// always has a port), is invalid-name. A nil Matcher denies.
func (m *Matcher) Decide(t Target) Decision {
	if m == nil || m.mode == ModeNone {
		return Decision{Reason: ReasonNoAllowRule}
	}
	if t.Port == 0 || (t.Name != "") == t.Addr.IsValid() {
		return Decision{Reason: ReasonInvalidName}
	}
	if t.Name != "" {
		return m.DecideName(t.Name, t.Port)
	}
	return m.DecideAddr(t.Addr, t.Port)
}
