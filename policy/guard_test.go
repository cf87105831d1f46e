package policy

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type rangeResult struct {
	Label   string
	Guarded bool
}

func TestGuardedRangeRefusesEveryNonGlobalAddress(t *testing.T) {
	tests := []struct {
		addr string
		want rangeResult
	}{
		// Public, including the fake internet's TEST-NET addresses.
		{"1.1.1.1", rangeResult{}},
		{"8.8.8.8", rangeResult{}},
		{"203.0.113.7", rangeResult{}},
		{"198.51.100.1", rangeResult{}},
		{"192.0.2.1", rangeResult{}},
		{"2001:db8::1", rangeResult{}},
		{"2606:4700::1111", rangeResult{}},
		{"::ffff:8.8.8.8", rangeResult{}},
		{"64:ff9c::1", rangeResult{}}, // look-alike of NAT64, not an embedding
		{"2003::1", rangeResult{}},    // just past 6to4
		{"2001:1::1", rangeResult{}},  // just past Teredo
		{"168.63.129.15", rangeResult{}},
		{"168.63.129.17", rangeResult{}},
		// Loopback.
		{"127.0.0.1", rangeResult{"loopback 127.0.0.0/8", true}},
		{"127.255.255.255", rangeResult{"loopback 127.0.0.0/8", true}},
		{"127.255.255.254", rangeResult{"loopback 127.0.0.0/8", true}},
		{"::1", rangeResult{"loopback ::1/128", true}},
		{"::ffff:127.0.0.1", rangeResult{"loopback 127.0.0.0/8", true}},
		// Unspecified.
		{"0.0.0.0", rangeResult{"unspecified 0.0.0.0/8", true}},
		{"0.1.2.3", rangeResult{"unspecified 0.0.0.0/8", true}},
		{"::", rangeResult{"unspecified ::/128", true}},
		// Private.
		{"10.0.0.1", rangeResult{"private 10.0.0.0/8", true}},
		{"172.16.0.1", rangeResult{"private 172.16.0.0/12", true}},
		{"172.31.255.255", rangeResult{"private 172.16.0.0/12", true}},
		{"172.32.0.0", rangeResult{}},
		{"172.15.255.255", rangeResult{}},
		{"192.168.1.1", rangeResult{"private 192.168.0.0/16", true}},
		{"fc00::1", rangeResult{"ula fc00::/7", true}},
		{"fd12:3456::1", rangeResult{"ula fc00::/7", true}},
		// Link-local and metadata (C1).
		{"169.254.169.254", rangeResult{"metadata 169.254.169.254/32", true}},
		{"::ffff:169.254.169.254", rangeResult{"metadata 169.254.169.254/32", true}},
		{"169.254.170.2", rangeResult{"metadata 169.254.170.2/32", true}},
		{"169.254.1.1", rangeResult{"link-local 169.254.0.0/16", true}},
		{"fe80::1", rangeResult{"link-local fe80::/10", true}},
		{"fd00:ec2::254", rangeResult{"metadata fd00:ec2::254/128", true}},
		{"fd00:ec2::253", rangeResult{"ula fc00::/7", true}},
		{"100.100.100.200", rangeResult{"metadata 100.100.100.200/32", true}},
		{"168.63.129.16", rangeResult{"metadata 168.63.129.16/32", true}},
		// CGNAT and its boundaries (smokescreen #265).
		{"100.64.0.0", rangeResult{"cgnat 100.64.0.0/10", true}},
		{"100.64.0.1", rangeResult{"cgnat 100.64.0.0/10", true}},
		{"100.127.255.255", rangeResult{"cgnat 100.64.0.0/10", true}},
		{"100.63.255.254", rangeResult{}},
		{"100.63.255.255", rangeResult{}},
		{"100.128.0.0", rangeResult{}},
		{"100.128.0.1", rangeResult{}},
		// Multicast, broadcast, reserved, special purpose.
		{"224.0.0.251", rangeResult{"multicast 224.0.0.0/4", true}},
		{"239.255.255.250", rangeResult{"multicast 224.0.0.0/4", true}},
		{"ff02::2", rangeResult{"multicast ff00::/8", true}},
		{"255.255.255.255", rangeResult{"broadcast 255.255.255.255/32", true}},
		{"240.0.0.1", rangeResult{"reserved 240.0.0.0/4", true}},
		{"192.0.0.8", rangeResult{"ietf-protocol 192.0.0.0/24", true}},
		{"198.18.0.1", rangeResult{"benchmarking 198.18.0.0/15", true}},
		{"198.19.255.255", rangeResult{"benchmarking 198.18.0.0/15", true}},
		{"198.20.0.0", rangeResult{}},
		{"fec0::1", rangeResult{"site-local fec0::/10", true}},
		// IPv6 embeddings of IPv4 (C3): denied even for public IPv4.
		{"::169.254.169.254", rangeResult{"ipv4-compatible ::/96", true}},
		{"::8.8.8.8", rangeResult{"ipv4-compatible ::/96", true}},
		{"::ffff:0:127.0.0.1", rangeResult{"ipv4-translated ::ffff:0:0:0/96", true}},
		{"64:ff9b::a9fe:a9fe", rangeResult{"nat64 64:ff9b::/96", true}},
		{"64:ff9b::8.8.8.8", rangeResult{"nat64 64:ff9b::/96", true}},
		{"64:ff9b:1::1", rangeResult{"nat64 64:ff9b:1::/48", true}},
		{"2002:a9fe:a9fe::1", rangeResult{"6to4 2002::/16", true}},
		{"2002:808:808::1", rangeResult{"6to4 2002::/16", true}},
		{"2001:0::5ef5:79fd:3f57:bffe", rangeResult{"teredo 2001::/32", true}},
		{"2001::1", rangeResult{"teredo 2001::/32", true}},
	}
	for _, tc := range tests {
		label, g := GuardedRange(netip.MustParseAddr(tc.addr))
		if diff := cmp.Diff(tc.want, rangeResult{label, g}); diff != "" {
			t.Errorf("GuardedRange(%s) (-want +got):\n%s", tc.addr, diff)
		}
	}
	if label, g := GuardedRange(netip.Addr{}); !g || label != "invalid" {
		t.Errorf("GuardedRange(zero) = %q, %v; want refused", label, g)
	}
}

// TestClassifyAddr mirrors smokescreen's table in spirit: (address, port)
// through GuardAddr under a policy with user allow/block IP rules and
// unlocked private sub-ranges.
func TestGuardAddrClassifiesResolvedAddresses(t *testing.T) {
	self := netip.MustParseAddr("10.200.0.2")
	m, err := NewMatcher(NetworkPolicy{
		Allow: parseRules(t, []string{
			"10.1.2.0/24",            // lifts 10.1.2.x on default ports
			"192.168.7.7:5432",       // lifts one address on one port
			"0.0.0.0/0:*",            // never lifts anything
			"::/0",                   // never lifts anything
			"169.254.0.0/16",         // lifts link-local, but not the metadata /32s
			"[fd00::/8]:*",           // inside ULA: lifts it
			"64:ff9b::/96",           // the whole NAT64 range, so it lifts it
			"127.0.0.53",             // one loopback address
			"10.0.0.0/7",             // wider than 10.0.0.0/8: lifts nothing
			"100.64.0.0/10:8080",     // all of CGNAT on port 8080, not the Alibaba metadata /32
			"10.200.0.0/16",          // does not name self
			"[2001:db8:ffff::/48]:*", // a public range, irrelevant to the guard
		}, Source{}),
		Block: parseRules(t, []string{
			"203.0.113.66",
			"198.51.100.0/24:25",
			"10.1.2.99",
		}, Source{}),
		Self: []netip.Addr{self, netip.MustParseAddr("::ffff:10.200.0.3")},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr string
		port uint16
		want dec
	}{
		{"203.0.113.7", 443, wantGuardPass()},
		{"2001:db8::1", 443, wantGuardPass()},
		{"64:ff9c::1", 443, wantGuardPass()},
		{"100.63.255.254", 443, wantGuardPass()},
		{"100.128.0.1", 443, wantGuardPass()},
		// Block IP rules always apply.
		{"203.0.113.66", 443, wantBlocked("203.0.113.66")},
		{"::ffff:203.0.113.66", 443, wantBlocked("203.0.113.66")},
		{"203.0.113.66", 0, wantBlocked("203.0.113.66")},
		{"198.51.100.9", 25, wantBlocked("198.51.100.0/24:25")},
		{"198.51.100.9", 443, wantGuardPass()},
		{"198.51.100.9", 0, wantGuardPass()}, // a port-limited block does not remove the address from DNS
		{"10.1.2.99", 443, wantBlocked("10.1.2.99")},
		// Lifting: the rule lies inside the refusing range and covers the port.
		{"10.1.2.7", 443, wantAllowed("10.1.2.0/24")},
		{"10.1.2.7", 80, wantAllowed("10.1.2.0/24")},
		{"10.1.2.7", 0, wantAllowed("10.1.2.0/24")},
		{"10.1.2.7", 22, wantGuarded()}, // 0.0.0.0/0:* covers 22 but lifts nothing
		{"10.1.3.7", 443, wantGuarded()},
		{"192.168.7.7", 5432, wantAllowed("192.168.7.7:5432")},
		{"192.168.7.7", 443, wantGuarded()},
		{"192.168.7.8", 5432, wantGuarded()},
		{"::ffff:192.168.7.7", 5432, wantAllowed("192.168.7.7:5432")},
		{"10.9.9.9", 443, wantGuarded()}, // 10.0.0.0/7 is wider than 10.0.0.0/8
		{"127.0.0.1", 443, wantGuarded()},
		{"127.0.0.53", 443, wantAllowed("127.0.0.53")},
		{"::1", 443, wantGuarded()},
		{"169.254.1.1", 443, wantAllowed("169.254.0.0/16")},
		{"169.254.169.254", 80, wantGuarded()},
		{"169.254.169.254", 0, wantGuarded()},
		{"::ffff:169.254.169.254", 80, wantGuarded()},
		{"169.254.170.2", 80, wantGuarded()},
		{"fd00:ec2::254", 80, wantGuarded()}, // the metadata /128 is narrower than fd00::/8
		{"fd12::1", 443, wantAllowed("[fd00::/8]:*")},
		{"fc00::1", 443, wantGuarded()},
		{"fe80::1", 443, wantGuarded()},
		{"100.64.0.1", 8080, wantAllowed("100.64.0.0/10:8080")},
		{"100.64.0.1", 443, wantGuarded()},
		{"100.100.100.200", 8080, wantGuarded()},
		{"168.63.129.16", 80, wantGuarded()},
		{"64:ff9b::8.8.8.8", 443, wantAllowed("64:ff9b::/96")},
		{"64:ff9b:1::1", 443, wantGuarded()},
		{"2002:808:808::1", 443, wantGuarded()},
		{"2001::1", 443, wantGuarded()},
		{"::8.8.8.8", 443, wantGuarded()},
		{"0.0.0.0", 80, wantGuarded()},
		{"::", 80, wantGuarded()},
		{"255.255.255.255", 80, wantGuarded()},
		{"ff02::2", 80, wantGuarded()},
		{"224.0.0.251", 5353, wantGuarded()},
		// Self addresses are guarded; 10.200.0.0/16 lies outside the /32 range.
		{"10.200.0.2", 443, wantGuarded()},
		{"10.200.0.3", 443, wantGuarded()},
		{"10.200.0.4", 443, wantAllowed("10.200.0.0/16")},
	}
	for _, tc := range tests {
		got := m.GuardAddr(netip.MustParseAddr(tc.addr), tc.port)
		if diff := cmp.Diff(tc.want, summarize(got)); diff != "" {
			t.Errorf("GuardAddr(%s, %d) (-want +got):\n%s", tc.addr, tc.port, diff)
		}
	}
}

func TestAllowRuleNamingSelfLiftsTheGuard(t *testing.T) {
	self := netip.MustParseAddr("203.0.113.1") // a public self address
	m, err := NewMatcher(NetworkPolicy{
		Allow: parseRules(t, []string{"203.0.113.0/24", "2001:db8::1/128"}, Source{}),
		Self:  []netip.Addr{self, netip.MustParseAddr("2001:db8::1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wantGuarded(), summarize(m.GuardAddr(self, 443))); diff != "" {
		t.Errorf("self via /24 (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantGuarded(), summarize(m.DecideAddr(self, 443))); diff != "" {
		t.Errorf("DecideAddr self via /24 (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantAllowed("2001:db8::1/128"), summarize(m.GuardAddr(netip.MustParseAddr("2001:db8::1"), 443))); diff != "" {
		t.Errorf("self named by /128 (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantGuardPass(), summarize(m.GuardAddr(netip.MustParseAddr("203.0.113.2"), 443))); diff != "" {
		t.Errorf("not self (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		addr string
		want rangeResult
	}{
		{"203.0.113.1", rangeResult{"self 203.0.113.1/32", true}},
		{"::ffff:203.0.113.1", rangeResult{"self 203.0.113.1/32", true}},
		{"2001:db8::1", rangeResult{"self 2001:db8::1/128", true}},
		{"203.0.113.2", rangeResult{}},
		{"10.0.0.1", rangeResult{"private 10.0.0.0/8", true}},
	} {
		label, g := m.GuardedRange(netip.MustParseAddr(tc.addr))
		if diff := cmp.Diff(tc.want, rangeResult{label, g}); diff != "" {
			t.Errorf("Matcher.GuardedRange(%s) (-want +got):\n%s", tc.addr, diff)
		}
	}
	var nilM *Matcher
	if label, g := nilM.GuardedRange(netip.MustParseAddr("10.0.0.1")); !g || label != "private 10.0.0.0/8" {
		t.Errorf("nil Matcher.GuardedRange = %q, %v", label, g)
	}
}

func TestDecideAddrAppliesTheGuardToIPLiterals(t *testing.T) {
	m := newTestMatcher(t,
		[]string{"0.0.0.0/0", "::/0", "10.1.2.0/24:5432", "203.0.113.0/24"},
		[]string{"203.0.113.66"})
	for _, p := range []probe{
		{"203.0.113.7", 443, wantAllowed("203.0.113.0/24")},
		{"8.8.8.8", 443, wantAllowed("0.0.0.0/0")},
		{"203.0.113.66", 443, wantBlocked("203.0.113.66")},
		{"127.0.0.1", 443, wantGuarded()},
		{"::ffff:127.0.0.1", 443, wantGuarded()},
		{"169.254.169.254", 80, wantGuarded()},
		{"::169.254.169.254", 80, wantGuarded()},
		{"64:ff9b::a9fe:a9fe", 80, wantGuarded()},
		{"2002:a9fe:a9fe::1", 80, wantGuarded()},
		{"10.1.2.7", 5432, wantAllowed("10.1.2.0/24:5432")},
		{"10.1.2.7", 443, wantGuarded()},
		{"10.1.2.7", 22, wantNoRule()},
		{"2001:db8::1", 443, wantAllowed("::/0")},
		{"fe80::1", 443, wantGuarded()},
	} {
		decideProbe(t, m, p)
	}
}
