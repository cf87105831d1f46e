package policy

import (
	"net/netip"
	"slices"
)

// The address guard refuses every destination that is not plain global
// unicast, whatever name led to it, so an allowed name whose DNS answer
// points at 127.0.0.1, 10.0.0.5 or 169.254.169.254 (DNS rebinding, or just a
// hostile zone) cannot reach the sandbox host, the private network or a cloud
// metadata service.
//
// The IPv6 forms that carry an IPv4 address — IPv4-compatible ::a.b.c.d,
// IPv4-translated ::ffff:0:a.b.c.d, NAT64 64:ff9b::/96 and 64:ff9b:1::/48,
// 6to4 2002::/16 and Teredo 2001::/32 — are refused wholesale, even when the
// embedded IPv4 address is public (smokescreen's behaviour): unwrapping them
// would make the guard depend on a translator we cannot see. IPv4-mapped
// ::ffff:a.b.c.d is not an embedding but another spelling: it is unmapped
// first and the IPv4 address is classified.
//
// Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
// 2001:db8::/32) are deliberately NOT guarded: the end-to-end tests' fake
// internet uses them as its public addresses.
//
// Lifting the guard. An allow IP rule lifts the guard for an address only if
// the rule's range lies entirely inside the guarded range that refused the
// address (the most specific one: 169.254.169.254/32 for the AWS metadata
// address, not 169.254.0.0/16), and the rule's ports cover the port (port 0,
// "for some port", is covered by any port the rule allows). So
// `allow 10.1.2.0/24` lifts 10.1.2.7 (inside 10.0.0.0/8), while
// `allow 0.0.0.0/0`, `allow ::/0` or `allow 10.0.0.0/7` lift nothing: a rule
// written to open the public internet never opens the private one by
// accident, and `allow 169.254.0.0/16` does not open the metadata address.
// Block IP rules always apply, before the guard.

// guardRange is one refused range; label is what GuardedRange returns.
type guardRange struct {
	prefix netip.Prefix
	label  string
}

// guardTable is sorted by prefix length, longest first, so the first hit is
// the most specific range; guard4 and guard6 are its IPv4 and IPv6 parts.
var (
	guardTable     = buildGuardTable(guardRanges)
	guard4, guard6 = splitGuardTable(guardTable)
)

var guardRanges = []struct{ kind, prefix string }{
	// IPv4.
	{"unspecified", "0.0.0.0/8"},
	{"private", "10.0.0.0/8"},
	{"cgnat", "100.64.0.0/10"},
	{"loopback", "127.0.0.0/8"},
	{"link-local", "169.254.0.0/16"},
	{"private", "172.16.0.0/12"},
	{"ietf-protocol", "192.0.0.0/24"},
	{"private", "192.168.0.0/16"},
	{"benchmarking", "198.18.0.0/15"},
	{"multicast", "224.0.0.0/4"},
	{"reserved", "240.0.0.0/4"},
	{"broadcast", "255.255.255.255/32"},
	{"metadata", "169.254.169.254/32"}, // AWS, GCP, Azure, OpenStack IMDS
	{"metadata", "169.254.170.2/32"},   // AWS ECS task metadata
	{"metadata", "100.100.100.200/32"}, // Alibaba Cloud
	{"metadata", "168.63.129.16/32"},   // Azure wire server (a public address)
	// IPv6.
	{"unspecified", "::/128"},
	{"loopback", "::1/128"},
	{"ipv4-compatible", "::/96"},
	{"ipv4-translated", "::ffff:0:0:0/96"},
	{"nat64", "64:ff9b::/96"},
	{"nat64", "64:ff9b:1::/48"},
	{"teredo", "2001::/32"},
	{"6to4", "2002::/16"},
	{"ula", "fc00::/7"},
	{"metadata", "fd00:ec2::254/128"}, // AWS IMDS over IPv6 (inside the ULA range)
	{"link-local", "fe80::/10"},
	{"site-local", "fec0::/10"},
	{"multicast", "ff00::/8"},
}

func splitGuardTable(t []guardRange) (v4, v6 []guardRange) {
	for _, g := range t {
		if g.prefix.Addr().Is4() {
			v4 = append(v4, g)
		} else {
			v6 = append(v6, g)
		}
	}
	return v4, v6
}

func buildGuardTable(in []struct{ kind, prefix string }) []guardRange {
	out := make([]guardRange, 0, len(in))
	for _, e := range in {
		p := netip.MustParsePrefix(e.prefix)
		if p.Masked() != p {
			panic("policy: guard range not canonical: " + e.prefix)
		}
		out = append(out, guardRange{prefix: p, label: e.kind + " " + p.String()})
	}
	slices.SortStableFunc(out, func(a, b guardRange) int { return b.prefix.Bits() - a.prefix.Bits() })
	return out
}

// GuardedRange classifies an address for the address guard: the label of
// the most specific refused range that holds it ("private 10.0.0.0/8",
// "metadata 169.254.169.254/32", "nat64 64:ff9b::/96") and true, or ("",
// false) for a global unicast address the guard lets through. IPv4-mapped
// addresses are classified as their IPv4 address; the zero Addr and
// addresses with a zone are refused as "invalid". It does not know the
// policy's Self addresses (see Matcher.GuardAddr).
func GuardedRange(addr netip.Addr) (label string, guarded bool) {
	a, ok := canonAddr(addr)
	if !ok {
		return "invalid", true
	}
	g, ok := lookupGuard(a)
	if !ok {
		return "", false
	}
	return g.label, true
}

// lookupGuard finds the most specific guarded range holding a canonical
// address.
func lookupGuard(a netip.Addr) (guardRange, bool) {
	table := guard6
	if a.Is4() {
		table = guard4
	}
	for _, g := range table {
		if g.prefix.Contains(a) {
			return g, true
		}
	}
	return guardRange{}, false
}

// GuardedRange is the package GuardedRange plus the policy's Self
// addresses, labelled "self 10.200.0.2/32": the label to append to a
// guarded-address denial from this Matcher. A nil Matcher knows no Self
// addresses.
func (m *Matcher) GuardedRange(addr netip.Addr) (label string, guarded bool) {
	a, ok := canonAddr(addr)
	if !ok {
		return "invalid", true
	}
	if m == nil {
		return GuardedRange(a)
	}
	g, ok := m.guardFor(a)
	if !ok {
		return "", false
	}
	return g.label, true
}

// guardFor is lookupGuard plus the policy's own addresses, which are guarded
// as single-address ranges (more specific than any table range).
func (m *Matcher) guardFor(a netip.Addr) (guardRange, bool) {
	if len(m.self) > 0 {
		if label, ok := m.self[a]; ok {
			return guardRange{prefix: netip.PrefixFrom(a, a.BitLen()), label: label}, true
		}
	}
	return lookupGuard(a)
}

// GuardAddr is step 4 of a decision: may egressd connect to addr, a resolved
// address of a name already allowed, on port? Port 0 means "for some port"
// (filtering DNS answers). In order: a block IP rule matching the address and
// port denies (blocked-by; for port 0 only a rule blocking every port); an
// address in a guarded range (GuardedRange, or one of the policy's Self
// addresses) is denied (guarded-address, Rule nil) unless an allow IP rule
// lifts the guard as described above (allowed-by that rule); anything else
// is allowed (allowed-by, Rule nil). A nil Matcher or mode none denies; an
// invalid or zoned address is invalid-name. GuardAddr does not allocate.
func (m *Matcher) GuardAddr(addr netip.Addr, port uint16) Decision {
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
	g, guarded := m.guardFor(a)
	if !guarded {
		return Decision{Allow: true, Reason: ReasonAllowedBy}
	}
	if r := m.allow.ips.lookup(a, port, m.defaultPorts, false, g.prefix.Bits()); r != nil {
		return Decision{Allow: true, Reason: ReasonAllowedBy, Rule: r}
	}
	return Decision{Reason: ReasonGuardedAddress}
}
