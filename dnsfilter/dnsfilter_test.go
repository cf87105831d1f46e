package dnsfilter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/privtest"
	"github.com/egressd/egressd/policy"
)

var cmpAddr = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

var (
	testAllow = []string{"*.example.test", "example.test", "*.cdn.test"}
	testBlock = []string{"*.evil.test", "blocked.example.test"}
)

func TestBlockedNameGetsNXDOMAINAndNeverReachesUpstream(t *testing.T) {
	up := startUpstream(t,
		"www.example.test. 300 IN A 203.0.113.7",
		"x.evil.test. 300 IN A 203.0.113.66",
		"blocked.example.test. 300 IN A 203.0.113.67",
		"other.test. 300 IN A 203.0.113.68",
	)
	e := newEnv(t, up, testAllow, testBlock, nil)
	for _, tc := range []struct {
		name  string
		qname string
		qtype uint16
	}{
		{"no allow rule", "other.test.", dns.TypeA},
		{"exfil label under unlisted zone", "mfrggzdfmztwq2lknnwg23tpobyxe43u.exfil.invalid-zone.", dns.TypeA},
		{"block rule wildcard", "x.evil.test.", dns.TypeA},
		{"block rule beats allow wildcard", "blocked.example.test.", dns.TypeA},
		{"block rule, TXT", "data.evil.test.", dns.TypeTXT},
		{"block rule, AAAA", "x.evil.test.", dns.TypeAAAA},
		{"block rule, upper case", "X.EVIL.TEST.", dns.TypeA},
		{"suffix without label boundary", "notexample.test.", dns.TypeA},
		{"invalid: all-numeric last label", "1.2.3.4.", dns.TypeA},
		{"invalid: NUL byte in label", "www\\000.example.test.", dns.TypeA},
		{"invalid: escaped dot", "www\\.x.example.test.", dns.TypeA},
		{"invalid: non-ASCII byte", "w\\195\\164.example.test.", dns.TypeA},
		{"root", ".", dns.TypeA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.ask(tc.qname, tc.qtype)
			if diff := cmp.Diff("NXDOMAIN", rcode(r)); diff != "" {
				t.Errorf("rcode (-want +got):\n%s", diff)
			}
			if len(r.Answer) != 0 {
				t.Errorf("answer %v, want none", r.Answer)
			}
		})
	}
	if got := up.names(); len(got) != 0 {
		t.Fatalf("upstream saw %v; denied names must never leave", got)
	}
	// Resolve (the proxy's path) must not leak them either.
	for _, n := range []string{"x.evil.test", "other.test", "blocked.example.test", "1.2.3.4"} {
		_, err := e.srv.Resolve(context.Background(), n)
		var de *DeniedError
		if !errors.As(err, &de) {
			t.Errorf("Resolve(%q) error %v, want *DeniedError", n, err)
		}
	}
	if got := up.names(); len(got) != 0 {
		t.Fatalf("upstream saw %v after Resolve; denied names must never leave", got)
	}
	// And an allowed name does reach it.
	if r := e.ask("www.example.test.", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("allowed name: %v", r)
	}
	if diff := cmp.Diff([]string{"www.example.test."}, up.names()); diff != "" {
		t.Errorf("upstream names (-want +got):\n%s", diff)
	}
}

func TestRefusedResponseConfigurable(t *testing.T) {
	up := startUpstream(t)
	e := newEnv(t, up, testAllow, testBlock, func(c *Config) { c.BlockResponse = "refused" })
	for _, n := range []string{"x.evil.test.", "other.test.", "1.2.3.4."} {
		if got := rcode(e.ask(n, dns.TypeA)); got != "REFUSED" {
			t.Errorf("%s: rcode %s, want REFUSED", n, got)
		}
	}
	if n := up.count(); n != 0 {
		t.Errorf("upstream got %d queries, want 0", n)
	}
	if _, err := New(Config{Upstreams: []string{up.addr}, BlockResponse: "drop"}); err == nil {
		t.Error(`New accepted BlockResponse "drop"`)
	}
}

// TestReloadAppliesBlockResponseAndUpstreams: the resolver settings travel
// with the matcher, so storing a new one changes the answer to a denied
// name and the resolvers asked at once — and answers cached from the old
// resolvers are not served after the change.
func TestReloadAppliesBlockResponseAndUpstreams(t *testing.T) {
	up1 := startUpstream(t, "www.example.test. 300 IN A 203.0.113.7")
	up2 := startUpstream(t, "www.example.test. 300 IN A 203.0.113.8")
	e := newEnv(t, up1, testAllow, testBlock, nil)
	old := e.live.Current()
	if got := answerAddrs(e.ask("www.example.test.", dns.TypeA)); !slices.Equal(got, []string{"203.0.113.7"}) {
		t.Fatalf("before the reload: %v, want up1's 203.0.113.7", got)
	}
	if got := rcode(e.ask("x.evil.test.", dns.TypeA)); got != "NXDOMAIN" {
		t.Fatalf("denied name before the reload: %s, want NXDOMAIN", got)
	}

	e.live.Store(matcherWith(t, testAllow, testBlock, func(np *policy.NetworkPolicy) {
		np.DNSBlockResponse = policy.DNSRefused
		np.UpstreamDNS = []netip.AddrPort{netip.MustParseAddrPort(up2.addr)}
	}))
	if got := rcode(e.ask("x.evil.test.", dns.TypeA)); got != "REFUSED" {
		t.Errorf("denied name after the reload: %s, want REFUSED", got)
	}
	before := up1.count()
	if got := answerAddrs(e.ask("www.example.test.", dns.TypeA)); !slices.Equal(got, []string{"203.0.113.8"}) {
		t.Errorf("after the reload: %v, want up2's 203.0.113.8 (not up1's cached answer)", got)
	}
	addrs, err := e.srv.Resolve(context.Background(), "www.example.test")
	if err != nil || len(addrs) != 1 || addrs[0] != netip.MustParseAddr("203.0.113.8") {
		t.Errorf("Resolve after the reload: %v %v, want up2's 203.0.113.8", addrs, err)
	}
	if n := up1.count(); n != before {
		t.Errorf("the old upstream got %d queries after the reload", n-before)
	}
	// A query decided with the matcher of before the reload does not switch
	// the resolvers back.
	e.srv.useUpstreamsOf(old)
	if got := e.srv.pool.Load().addrs; !slices.Equal(got, []netip.AddrPort{netip.MustParseAddrPort(up2.addr)}) {
		t.Errorf("a stale matcher switched the upstreams to %v", got)
	}

	// A policy naming no resolvers falls back to Config.Upstreams.
	e.live.Store(matcher(t, testAllow, testBlock))
	if got := answerAddrs(e.ask("www.example.test.", dns.TypeA)); !slices.Equal(got, []string{"203.0.113.7"}) {
		t.Errorf("after reloading a policy without upstreams: %v, want up1's 203.0.113.7", got)
	}
	if got := rcode(e.ask("x.evil.test.", dns.TypeA)); got != "NXDOMAIN" {
		t.Errorf("denied name with no dns_block_response: %s, want Config.BlockResponse's NXDOMAIN", got)
	}
}

func TestAnyAXFRIXFRRefused(t *testing.T) {
	up := startUpstream(t, "www.example.test. 300 IN A 203.0.113.7")
	e := newEnv(t, up, testAllow, testBlock, nil)
	for _, tc := range []struct {
		name   string
		qtype  uint16
		class  uint16
		net    string
		rcode  string
		answer bool
	}{
		{"ANY", dns.TypeANY, dns.ClassINET, "udp", "REFUSED", false},
		{"AXFR over TCP", dns.TypeAXFR, dns.ClassINET, "tcp", "REFUSED", false},
		{"IXFR", dns.TypeIXFR, dns.ClassINET, "udp", "REFUSED", false},
		{"MAILA", dns.TypeMAILA, dns.ClassINET, "udp", "REFUSED", false},
		{"OPT as qtype", dns.TypeOPT, dns.ClassINET, "udp", "REFUSED", false},
		{"CHAOS class", dns.TypeTXT, dns.ClassCHAOS, "udp", "REFUSED", false},
		{"class ANY", dns.TypeA, dns.ClassANY, "udp", "REFUSED", false},
		// Allowed name, type never forwarded: empty NOERROR, so the
		// client falls back to A/AAAA (THREATS D6, E2).
		{"HTTPS (ECH configs)", dns.TypeHTTPS, dns.ClassINET, "udp", "NOERROR", false},
		{"SVCB", dns.TypeSVCB, dns.ClassINET, "udp", "NOERROR", false},
		{"NULL", dns.TypeNULL, dns.ClassINET, "udp", "NOERROR", false},
		{"NS", dns.TypeNS, dns.ClassINET, "udp", "NOERROR", false},
		{"PTR", dns.TypePTR, dns.ClassINET, "udp", "NOERROR", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := new(dns.Msg)
			m.SetQuestion("www.example.test.", tc.qtype)
			m.Question[0].Qclass = tc.class
			r := exchange(t, e.addr, m, tc.net)
			if diff := cmp.Diff(tc.rcode, rcode(r)); diff != "" {
				t.Errorf("rcode (-want +got):\n%s", diff)
			}
			if len(r.Answer) != 0 {
				t.Errorf("answer %v, want none", r.Answer)
			}
		})
	}
	if n := up.count(); n != 0 {
		t.Errorf("upstream got %d queries (%v), want 0", n, up.names())
	}
}

func TestMultiQuestionRefused(t *testing.T) {
	up := startUpstream(t, "www.example.test. 300 IN A 203.0.113.7", "api.example.test. 300 IN A 203.0.113.8")
	e := newEnv(t, up, testAllow, testBlock, nil)
	for _, tc := range []struct {
		name string
		qs   []string
	}{
		{"two allowed questions", []string{"www.example.test.", "api.example.test."}},
		{"allowed then denied", []string{"www.example.test.", "secret.evil.test."}},
		{"no question", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := new(dns.Msg)
			m.Id = dns.Id()
			m.RecursionDesired = true
			for _, q := range tc.qs {
				m.Question = append(m.Question, dns.Question{Name: q, Qtype: dns.TypeA, Qclass: dns.ClassINET})
			}
			for _, network := range []string{"udp", "tcp"} {
				r := exchange(t, e.addr, m, network)
				if diff := cmp.Diff("FORMERR", rcode(r)); diff != "" {
					t.Errorf("%s rcode (-want +got):\n%s", network, diff)
				}
				if len(r.Answer) != 0 {
					t.Errorf("%s answer %v, want none", network, r.Answer)
				}
			}
		})
	}
	if n := up.count(); n != 0 {
		t.Errorf("upstream got %d queries (%v), want 0", n, up.names())
	}
}

func TestAnswersPointingAtPrivateAddressesAreStripped(t *testing.T) {
	up := startUpstream(t,
		"mixed.example.test. 300 IN A 127.0.0.1",
		"mixed.example.test. 300 IN A 10.1.2.3",
		"mixed.example.test. 300 IN A 169.254.169.254",
		"mixed.example.test. 300 IN A 192.168.1.1",
		"mixed.example.test. 300 IN A 203.0.113.7",
		"mixed.example.test. 300 IN AAAA ::ffff:10.0.0.1",
		"mixed.example.test. 300 IN AAAA 64:ff9b::a00:1",
		"mixed.example.test. 300 IN AAAA ::1",
		"mixed.example.test. 300 IN AAAA fd00:ec2::254",
		"mixed.example.test. 300 IN AAAA 2001:db8::7",
		"private.example.test. 300 IN A 10.0.0.1",
		"private.example.test. 300 IN A 169.254.169.254",
		"private.example.test. 300 IN AAAA ::ffff:10.0.0.1",
		"private.example.test. 300 IN AAAA 64:ff9b::a00:1",
		"rebind.example.test. 300 IN CNAME internal.cdn.test.",
		"internal.cdn.test. 300 IN A 127.0.0.1",
	)
	e := newEnv(t, up, testAllow, testBlock, nil)
	for _, tc := range []struct {
		name  string
		qname string
		qtype uint16
		rcode string
		addrs []string
	}{
		{"A: only the public address survives", "mixed.example.test.", dns.TypeA, "NOERROR", []string{"203.0.113.7"}},
		{"AAAA: mapped, NAT64, loopback, ULA stripped", "mixed.example.test.", dns.TypeAAAA, "NOERROR", []string{"2001:db8::7"}},
		{"A: all private → no data", "private.example.test.", dns.TypeA, "NOERROR", nil},
		{"AAAA: all embedded private → no data", "private.example.test.", dns.TypeAAAA, "NOERROR", nil},
		{"CNAME to loopback → no data", "rebind.example.test.", dns.TypeA, "NOERROR", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.ask(tc.qname, tc.qtype)
			if diff := cmp.Diff(tc.rcode, rcode(r)); diff != "" {
				t.Errorf("rcode (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.addrs, answerAddrs(r)); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
		})
	}
	// Nothing guarded is learned; the public address is.
	for _, a := range []string{"127.0.0.1", "10.1.2.3", "169.254.169.254", "10.0.0.1"} {
		if names := e.srv.LearnedNames(netip.MustParseAddr(a)); len(names) != 0 {
			t.Errorf("LearnedNames(%s) = %v, want none", a, names)
		}
	}
	if diff := cmp.Diff([]string{"mixed.example.test"}, e.srv.LearnedNames(netip.MustParseAddr("203.0.113.7"))); diff != "" {
		t.Errorf("learned names (-want +got):\n%s", diff)
	}
	// Resolve gives the proxy the same filtered set.
	got, err := e.srv.Resolve(context.Background(), "mixed.example.test")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]netip.Addr{netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8::7")}, got, cmpAddr); diff != "" {
		t.Errorf("Resolve (-want +got):\n%s", diff)
	}
	_, err = e.srv.Resolve(context.Background(), "private.example.test")
	var de *DeniedError
	if !errors.As(err, &de) || de.Decision.Reason != policy.ReasonGuardedAddress {
		t.Errorf("Resolve of an all-private name: %v, want guarded-address denial", err)
	}
	if got := e.srv.m.stripped.Value(); got < 12 {
		t.Errorf("stripped records metric = %v, want at least 12", got)
	}
}

func TestCNAMEChainIntoBlockedNameIsDenied(t *testing.T) {
	up := startUpstream(t,
		"www.example.test. 300 IN CNAME edge.cdn.test.",
		"edge.cdn.test. 300 IN CNAME data.evil.test.",
		"data.evil.test. 300 IN A 203.0.113.66",
		"direct.example.test. 300 IN CNAME x.evil.test.",
		"x.evil.test. 300 IN A 203.0.113.67",
		"pypi.example.test. 300 IN CNAME dualstack.unlisted-cdn.test.",
		"dualstack.unlisted-cdn.test. 300 IN A 203.0.113.80",
		"api.example.test. 300 IN CNAME api.cdn.test.",
		"api.cdn.test. 300 IN A 203.0.113.90",
	)
	e := newEnv(t, up, testAllow, testBlock, nil)
	for _, tc := range []struct {
		name  string
		qname string
		rcode string
		addrs []string
	}{
		{"chain of two into a blocked zone", "www.example.test.", "NXDOMAIN", nil},
		{"one CNAME into a blocked zone", "direct.example.test.", "NXDOMAIN", nil},
		// A target that is merely not allowed is answered (CDNs do this
		// all the time); it learns nothing under the unlisted name.
		{"CNAME into an unlisted zone", "pypi.example.test.", "NOERROR", []string{"203.0.113.80"}},
		{"CNAME into an allowed zone", "api.example.test.", "NOERROR", []string{"203.0.113.90"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.ask(tc.qname, dns.TypeA)
			if diff := cmp.Diff(tc.rcode, rcode(r)); diff != "" {
				t.Errorf("rcode (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.addrs, answerAddrs(r)); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
		})
	}
	for _, tc := range []struct {
		addr  string
		names []string
	}{
		{"203.0.113.66", nil},
		{"203.0.113.67", nil},
		{"203.0.113.80", []string{"pypi.example.test"}},
		{"203.0.113.90", []string{"api.example.test", "api.cdn.test"}},
	} {
		if diff := cmp.Diff(tc.names, e.srv.LearnedNames(netip.MustParseAddr(tc.addr))); diff != "" {
			t.Errorf("LearnedNames(%s) (-want +got):\n%s", tc.addr, diff)
		}
	}
	_, err := e.srv.Resolve(context.Background(), "www.example.test")
	var de *DeniedError
	if !errors.As(err, &de) || de.CNAME != "data.evil.test" || de.Decision.Reason != policy.ReasonBlockedBy {
		t.Errorf("Resolve through a blocked CNAME: %v, want blocked-by via data.evil.test", err)
	}
	recs := e.audit.records(t)
	if len(recs) == 0 || recs[0].Rule != "*.evil.test" || recs[0].Decision != "deny" {
		t.Errorf("audit of the CNAME denial: %+v", recs)
	}
}

func TestMixedCaseQueryIsForwardedLowerCase(t *testing.T) {
	up := startUpstream(t,
		"www.example.test. 300 IN A 203.0.113.7",
		"api.example.test. 300 IN A 203.0.113.8",
		"git.example.test. 300 IN A 203.0.113.9",
	)
	e := newEnv(t, up, testAllow, testBlock, nil)
	const clientID = 4242
	for _, qname := range []string{"WwW.ExAmPlE.TeSt.", "API.EXAMPLE.TEST.", "gIt.eXaMpLe.tEsT."} {
		m := new(dns.Msg)
		m.SetQuestion(qname, dns.TypeA)
		m.Id = clientID
		// Client extras that must not travel: an EDNS client-subnet
		// option, a cookie, an extra record in the additional section.
		m.SetEdns0(4096, true)
		opt := m.IsEdns0()
		opt.Option = append(opt.Option,
			&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.ParseIP("198.51.100.0").To4()},
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef"},
		)
		m.Extra = append([]dns.RR{mustRR(t, "smuggled.evil.test. 60 IN TXT \"secret\"")}, m.Extra...)
		r := exchange(t, e.addr, m, "udp")
		if r.Id != clientID {
			t.Errorf("reply id %d, want the client's %d", r.Id, clientID)
		}
		if diff := cmp.Diff(qname, r.Question[0].Name); diff != "" {
			t.Errorf("reply question must be as asked (-want +got):\n%s", diff)
		}
		if len(r.Answer) != 1 || r.Answer[0].Header().Name != strings.ToLower(qname) {
			t.Errorf("answer %v, want one record for the canonical name", r.Answer)
		}
		if o := r.IsEdns0(); o == nil || len(o.Option) != 0 || o.Do() {
			t.Errorf("reply OPT %v: want ours, with no options and no DO", o)
		}
	}
	qs := up.queries()
	if len(qs) != 3 {
		t.Fatalf("upstream got %d queries, want 3", len(qs))
	}
	sameID := 0
	for i, q := range qs {
		m := q.msg
		if diff := cmp.Diff([]dns.Question{{Name: []string{"www.example.test.", "api.example.test.", "git.example.test."}[i], Qtype: dns.TypeA, Qclass: dns.ClassINET}}, m.Question); diff != "" {
			t.Errorf("upstream question (-want +got):\n%s", diff)
		}
		if len(m.Answer) != 0 || len(m.Ns) != 0 || len(m.Extra) != 1 {
			t.Errorf("upstream query carries extra records: an=%v ns=%v extra=%v", m.Answer, m.Ns, m.Extra)
		}
		o := m.IsEdns0()
		if o == nil || o.UDPSize() != upstreamEDNSSize || len(o.Option) != 0 || o.Do() {
			t.Errorf("upstream OPT %v: want size %d, no options, no DO", o, upstreamEDNSSize)
		}
		if m.Id == clientID {
			sameID++
		}
	}
	if sameID == len(qs) {
		t.Errorf("every upstream query reused the client's ID %d", clientID)
	}
}

func TestTruncatedAnswerRetriedOverTCP(t *testing.T) {
	up := startUpstream(t,
		"big.example.test. 300 IN A 203.0.113.1",
		"big.example.test. 300 IN A 203.0.113.2",
		"big.example.test. 300 IN A 203.0.113.3",
	)
	up.setOverride(func(r *dns.Msg, tcp bool) *dns.Msg {
		if tcp {
			return nil
		}
		resp := new(dns.Msg)
		resp.SetReply(r)
		resp.Truncated = true
		return resp
	})
	e := newEnv(t, up, testAllow, testBlock, nil)
	r := e.ask("big.example.test.", dns.TypeA)
	if diff := cmp.Diff([]string{"203.0.113.1", "203.0.113.2", "203.0.113.3"}, answerAddrs(r)); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	if r.Truncated {
		t.Error("client reply has TC set")
	}
	var nets []bool
	for _, q := range up.queries() {
		nets = append(nets, q.tcp)
	}
	if diff := cmp.Diff([]bool{false, true}, nets); diff != "" {
		t.Errorf("upstream transports (false=udp, true=tcp) (-want +got):\n%s", diff)
	}
}

func TestLargeAnswerTruncatedForSmallClientBuffer(t *testing.T) {
	var recs []string
	var want []string
	for i := 1; i <= 60; i++ {
		a := netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}).String()
		recs = append(recs, "big.example.test. 300 IN A "+a)
		want = append(want, a)
	}
	up := startUpstream(t, recs...)
	e := newEnv(t, up, testAllow, testBlock, nil)

	// No EDNS: 512 bytes. The reply is cut, TC set.
	r := e.ask("big.example.test.", dns.TypeA)
	if !r.Truncated {
		t.Error("512-byte client: TC not set")
	}
	if n := len(r.Answer); n == 0 || n >= 60 {
		t.Errorf("512-byte client got %d records, want some but not all", n)
	}
	r.Compress = true
	if l := r.Len(); l > 512 {
		t.Errorf("512-byte client got a %d-byte reply", l)
	}
	// The client retries over TCP and gets everything.
	m := new(dns.Msg)
	m.SetQuestion("big.example.test.", dns.TypeA)
	r = exchange(t, e.addr, m, "tcp")
	if r.Truncated {
		t.Error("TCP reply has TC set")
	}
	if diff := cmp.Diff(want, answerAddrs(r)); diff != "" {
		t.Errorf("TCP addresses (-want +got):\n%s", diff)
	}
	// EDNS 1232: everything fits.
	m = new(dns.Msg)
	m.SetQuestion("big.example.test.", dns.TypeA)
	m.SetEdns0(1232, false)
	r = exchange(t, e.addr, m, "udp")
	if r.Truncated || len(r.Answer) != 60 {
		t.Errorf("1232-byte client: TC=%v, %d records; want all 60", r.Truncated, len(r.Answer))
	}
	if up.count() != 1 {
		t.Errorf("upstream got %d queries, want 1 (the rest from cache)", up.count())
	}
}

func TestCacheHonoursTTL(t *testing.T) {
	up := startUpstream(t, "www.example.test. 60 IN A 203.0.113.7")
	e := newEnv(t, up, testAllow, testBlock, nil)
	ttl := func(r *dns.Msg) uint32 {
		t.Helper()
		if len(r.Answer) != 1 {
			t.Fatalf("answer %v", r.Answer)
		}
		return r.Answer[0].Header().Ttl
	}
	if got := ttl(e.ask("www.example.test.", dns.TypeA)); got != 60 {
		t.Errorf("first answer TTL %d, want 60", got)
	}
	e.clock.Advance(25 * time.Second)
	if got := ttl(e.ask("WWW.example.test.", dns.TypeA)); got != 35 {
		t.Errorf("cached answer TTL %d, want 35", got)
	}
	if n := up.count(); n != 1 {
		t.Fatalf("upstream got %d queries within the TTL, want 1", n)
	}
	e.clock.Advance(35 * time.Second)
	if got := ttl(e.ask("www.example.test.", dns.TypeA)); got != 60 {
		t.Errorf("refetched answer TTL %d, want 60", got)
	}
	if n := up.count(); n != 2 {
		t.Fatalf("upstream got %d queries after expiry, want 2", n)
	}
	// Negative answers are cached for the SOA minimum (30s here).
	for i := range 2 {
		if got := rcode(e.ask("missing.example.test.", dns.TypeA)); got != "NXDOMAIN" {
			t.Fatalf("missing name try %d: %s", i, got)
		}
	}
	if n := up.count(); n != 3 {
		t.Fatalf("upstream got %d queries, want 3 (NXDOMAIN cached)", n)
	}
	e.clock.Advance(31 * time.Second)
	e.ask("missing.example.test.", dns.TypeA)
	if n := up.count(); n != 4 {
		t.Fatalf("upstream got %d queries, want 4 (negative entry expired)", n)
	}
	// A negative answer without a SOA cannot be cached (no TTL to honour).
	up.setOverride(func(r *dns.Msg, tcp bool) *dns.Msg {
		if r.Question[0].Name != "nosoa.example.test." {
			return nil
		}
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNameError)
		return m
	})
	before := up.count()
	for range 2 {
		if got := rcode(e.ask("nosoa.example.test.", dns.TypeA)); got != "NXDOMAIN" {
			t.Fatalf("no-SOA name: %s", got)
		}
	}
	if n := up.count() - before; n != 2 {
		t.Errorf("upstream got %d queries for a SOA-less NXDOMAIN, want 2 (not cached)", n)
	}
	// The cap: a day-long TTL is cached and given out for at most MaxCacheTTL.
	up2 := startUpstream(t, "long.example.test. 86400 IN A 203.0.113.8")
	e2 := newEnv(t, up2, testAllow, testBlock, func(c *Config) { c.MaxCacheTTL = 10 * time.Minute })
	if got := ttl(e2.ask("long.example.test.", dns.TypeA)); got != 600 {
		t.Errorf("capped TTL %d, want 600", got)
	}
	e2.clock.Advance(601 * time.Second)
	e2.ask("long.example.test.", dns.TypeA)
	if n := up2.count(); n != 2 {
		t.Errorf("upstream got %d queries, want 2 (capped entry expired)", n)
	}
}

func TestCacheIsBounded(t *testing.T) {
	var recs []string
	for i := range 50 {
		recs = append(recs, "n"+itoa(i)+".example.test. 300 IN A 203.0.113.7")
	}
	up := startUpstream(t, recs...)
	e := newEnv(t, up, testAllow, testBlock, func(c *Config) { c.CacheSize = 8 })
	for i := range 50 {
		e.ask("n"+itoa(i)+".example.test.", dns.TypeA)
		if n := e.srv.cache.len(); n > 8 {
			t.Fatalf("cache holds %d entries after %d names, bound is 8", n, i+1)
		}
	}
	if got := e.metricValue("egressd_dns_cache_entries"); got != 8 {
		t.Errorf("cache entries gauge %v, want 8", got)
	}
	// The most recent names are cached; the oldest were evicted.
	before := up.count()
	e.ask("n49.example.test.", dns.TypeA)
	if up.count() != before {
		t.Error("most recent name was not cached")
	}
	e.ask("n0.example.test.", dns.TypeA)
	if up.count() != before+1 {
		t.Error("oldest name was not evicted")
	}
}

func TestReloadBlocksCachedName(t *testing.T) {
	up := startUpstream(t,
		"www.example.test. 300 IN A 203.0.113.7",
		"api.example.test. 300 IN CNAME edge.cdn.test.",
		"edge.cdn.test. 300 IN A 203.0.113.8",
	)
	e := newEnv(t, up, testAllow, testBlock, nil)
	for _, n := range []string{"www.example.test.", "api.example.test."} {
		if r := e.ask(n, dns.TypeA); len(r.Answer) == 0 {
			t.Fatalf("%s not answered before the reload: %v", n, r)
		}
	}
	// Reload: block the name itself, and the CDN the other one points at.
	e.live.Store(matcher(t, testAllow, append([]string{"www.example.test", "*.cdn.test"}, testBlock...)))
	for _, n := range []string{"www.example.test.", "api.example.test."} {
		if got := rcode(e.ask(n, dns.TypeA)); got != "NXDOMAIN" {
			t.Errorf("%s after the reload: %s, want NXDOMAIN", n, got)
		}
	}
	if n := up.count(); n != 2 {
		t.Errorf("upstream got %d queries, want 2 (both from the first round)", n)
	}
	// The proxy's path sees the same: the cached A answer now leads into a
	// blocked CNAME target.
	_, err := e.srv.Resolve(context.Background(), "api.example.test")
	var de *DeniedError
	if !errors.As(err, &de) || de.CNAME != "edge.cdn.test" {
		t.Errorf("Resolve after reload: %v, want a denial via edge.cdn.test", err)
	}
	for _, n := range up.names()[2:] {
		if n == "www.example.test." {
			t.Errorf("upstream saw %s after it was blocked", n)
		}
	}
	// An empty policy (everything denied) also applies at once.
	e.live.Store(nil)
	if got := rcode(e.ask("www.example.test.", dns.TypeA)); got != "NXDOMAIN" {
		t.Errorf("after storing nil: %s", got)
	}
}

func TestLearnedAddressesExpireWithTTL(t *testing.T) {
	up := startUpstream(t,
		"www.example.test. 120 IN A 203.0.113.7",
		"www.example.test. 120 IN AAAA 2001:db8::7",
		"zero.example.test. 0 IN A 203.0.113.9",
	)
	e := newEnv(t, up, testAllow, testBlock, nil)
	a4, a6 := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8::7")
	e.ask("www.example.test.", dns.TypeA)
	if _, err := e.srv.Resolve(context.Background(), "www.example.test"); err != nil {
		t.Fatal(err)
	}
	want := []string{"www.example.test"}
	for _, a := range []netip.Addr{a4, a6, netip.MustParseAddr("::ffff:203.0.113.7")} {
		if diff := cmp.Diff(want, e.srv.LearnedNames(a)); diff != "" {
			t.Errorf("LearnedNames(%s) (-want +got):\n%s", a, diff)
		}
	}
	e.clock.Advance(119 * time.Second)
	if diff := cmp.Diff(want, e.srv.LearnedNames(a4)); diff != "" {
		t.Errorf("LearnedNames just before expiry (-want +got):\n%s", diff)
	}
	e.clock.Advance(2 * time.Second)
	if got := e.srv.LearnedNames(a4); len(got) != 0 {
		t.Errorf("LearnedNames after the TTL = %v, want none", got)
	}
	// A TTL-0 answer is learned for the floor (30s), so a client that
	// connects at once is not refused.
	e.ask("zero.example.test.", dns.TypeA)
	e.clock.Advance(29 * time.Second)
	if got := e.srv.LearnedNames(netip.MustParseAddr("203.0.113.9")); len(got) != 1 {
		t.Errorf("TTL-0 answer after 29s: %v, want learned", got)
	}
	e.clock.Advance(2 * time.Second)
	if got := e.srv.LearnedNames(netip.MustParseAddr("203.0.113.9")); len(got) != 0 {
		t.Errorf("TTL-0 answer after 31s: %v, want expired", got)
	}
	// Reset forgets everything.
	e.ask("www.example.test.", dns.TypeA)
	e.srv.Reset()
	if got := e.srv.LearnedNames(a4); len(got) != 0 {
		t.Errorf("LearnedNames after Reset = %v", got)
	}
	if n := e.srv.cache.len(); n != 0 {
		t.Errorf("cache holds %d entries after Reset", n)
	}
}

func TestRateLimitPerClient(t *testing.T) {
	up := startUpstream(t, "www.example.test. 300 IN A 203.0.113.7")
	e := newEnv(t, up, testAllow, testBlock, func(c *Config) { c.QueryRate = 5; c.QueryBurst = 10 })
	askFrom := func(local string) string {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion("www.example.test.", dns.TypeA)
		c := &dns.Client{Net: "udp", Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(local)}}}
		r, _, err := c.Exchange(m, e.addr)
		if err != nil {
			t.Fatal(err)
		}
		return rcode(r)
	}
	var got []string
	for range 12 {
		got = append(got, askFrom("127.0.0.1"))
	}
	want := []string{"NOERROR", "NOERROR", "NOERROR", "NOERROR", "NOERROR", "NOERROR", "NOERROR", "NOERROR", "NOERROR", "NOERROR", "REFUSED", "REFUSED"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("burst of 12 from one client (-want +got):\n%s", diff)
	}
	// Another client has its own bucket.
	if got := askFrom("127.0.0.2"); got != "NOERROR" {
		t.Errorf("second client: %s, want NOERROR", got)
	}
	// One second later, five more.
	e.clock.Advance(time.Second)
	got = got[:0]
	for range 6 {
		got = append(got, askFrom("127.0.0.1"))
	}
	if diff := cmp.Diff([]string{"NOERROR", "NOERROR", "NOERROR", "NOERROR", "NOERROR", "REFUSED"}, got); diff != "" {
		t.Errorf("after 1s (-want +got):\n%s", diff)
	}
	if got := e.srv.m.queries[audit.ReasonDNSRate].Value(); got != 3 {
		t.Errorf("rate-limited metric %v, want 3", got)
	}
	// Audit: at most one rate-limited record per client per second.
	n := 0
	for _, r := range e.audit.records(t) {
		if r.Reason == audit.ReasonDNSRate && r.Decision == audit.OutcomeDeny {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d rate-limited audit records, want 2 (one per second)", n)
	}
}

func TestOverLongQueryNameRefused(t *testing.T) {
	up := startUpstream(t, "www.example.test. 300 IN A 203.0.113.7")
	e := newEnv(t, up, testAllow, testBlock, func(c *Config) { c.MaxNameLen = 40 })
	long := strings.Repeat("a", 30) + ".example.test." // 43 bytes
	if got := rcode(e.ask(long, dns.TypeA)); got != "REFUSED" {
		t.Errorf("43-byte name: %s, want REFUSED", got)
	}
	if got := rcode(e.ask("www.example.test.", dns.TypeA)); got != "NOERROR" {
		t.Errorf("short name: %s", got)
	}
	if diff := cmp.Diff([]string{"www.example.test."}, up.names()); diff != "" {
		t.Errorf("upstream names (-want +got):\n%s", diff)
	}
	if _, err := e.srv.Resolve(context.Background(), strings.TrimSuffix(long, ".")); !errors.Is(err, ErrNameTooLong) {
		t.Errorf("Resolve of a long name: %v", err)
	}
	// Over 253 is never configurable.
	if _, err := New(Config{Upstreams: []string{up.addr}, MaxNameLen: 300}); err == nil {
		t.Error("New accepted MaxNameLen 300")
	}
	// With the default, a 253-byte name passes the length check (and is
	// then decided by the policy).
	e2 := newEnv(t, up, []string{"*.example.test"}, nil, nil)
	name := strings.Repeat(strings.Repeat("b", 62)+".", 3) + strings.Repeat("c", 51) + ".example.test."
	if l := len(name) - 1; l != 253 {
		t.Fatalf("test name is %d bytes", l)
	}
	if got := rcode(e2.ask(name, dns.TypeA)); got != "NXDOMAIN" {
		t.Errorf("253-byte allowed name: %s, want the upstream's NXDOMAIN", got)
	}
}

func TestUpstreamDownGivesSERVFAIL(t *testing.T) {
	// A port with nothing on it: ICMP port unreachable.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := pc.LocalAddr().String()
	pc.Close()
	// A port that swallows queries: timeout.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	servfailing := startUpstream(t)
	servfailing.setOverride(func(r *dns.Msg, tcp bool) *dns.Msg {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeServerFailure)
		return m
	})
	for _, tc := range []struct {
		name     string
		upstream string
		reason   audit.Reason
	}{
		{"closed port", closed, audit.ReasonResolverError},
		{"silent upstream", silent.LocalAddr().String(), audit.ReasonResolverTimeout},
		{"upstream SERVFAIL", servfailing.addr, audit.ReasonResolverError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := &testUpstream{addr: tc.upstream}
			e := newEnv(t, up, testAllow, testBlock, func(c *Config) { c.UpstreamTimeout = 300 * time.Millisecond })
			start := time.Now()
			if got := rcode(e.ask("www.example.test.", dns.TypeA)); got != "SERVFAIL" {
				t.Errorf("rcode %s, want SERVFAIL", got)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("SERVFAIL took %v", d)
			}
			var re *ResolveError
			if _, err := e.srv.Resolve(context.Background(), "www.example.test"); !errors.As(err, &re) || re.AuditReason() != tc.reason {
				t.Errorf("Resolve with the upstream down: %v, want a ResolveError with reason %s", err, tc.reason)
			}
			if n := e.srv.cache.len(); n != 0 {
				t.Errorf("a failure was cached (%d entries)", n)
			}
			recs := e.audit.records(t)
			// An upstream failure is an error, not a denial of the name; the
			// record (not the client) names the resolver.
			if len(recs) != 1 || recs[0].Decision != audit.OutcomeError || recs[0].Reason != tc.reason ||
				!strings.Contains(recs[0].Error, tc.upstream) || recs[0].Rule != "*.example.test" {
				t.Errorf("audit %+v, want one error record, reason %s, naming the upstream %s and the allow rule", recs, tc.reason, tc.upstream)
			}
		})
	}
	// Failover: a dead first upstream, a good second one.
	good := startUpstream(t, "www.example.test. 300 IN A 203.0.113.7")
	e := newEnv(t, good, testAllow, testBlock, func(c *Config) {
		c.Upstreams = []string{closed, good.addr}
		c.UpstreamTimeout = 300 * time.Millisecond
	})
	if got := answerAddrs(e.ask("www.example.test.", dns.TypeA)); len(got) != 1 {
		t.Errorf("failover answer %v", got)
	}
}

func TestNilPolicyDeniesEverything(t *testing.T) {
	up := startUpstream(t, "www.example.test. 300 IN A 203.0.113.7")
	var typedNil *policy.Live
	for _, tc := range []struct {
		name string
		src  PolicySource
	}{
		{"nil source", nil},
		{"nothing stored", &policy.Live{}},
		{"typed nil *Live", typedNil},
		{"mode none", func() PolicySource {
			l := &policy.Live{}
			m, err := policy.NewMatcher(policy.NetworkPolicy{Mode: policy.ModeNone})
			if err != nil {
				t.Fatal(err)
			}
			l.Store(m)
			return l
		}()},
		{"empty allow list", func() PolicySource {
			l := &policy.Live{}
			l.Store(matcher(t, nil, nil))
			return l
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, up, nil, nil, func(c *Config) { c.Policy = tc.src })
			for _, n := range []string{"www.example.test.", "example.test.", "localhost."} {
				if got := rcode(e.ask(n, dns.TypeA)); got != "NXDOMAIN" {
					t.Errorf("%s: %s, want NXDOMAIN", n, got)
				}
			}
			if _, err := e.srv.Resolve(context.Background(), "www.example.test"); err == nil {
				t.Error("Resolve succeeded")
			}
		})
	}
	if n := up.count(); n != 0 {
		t.Errorf("upstream got %d queries, want 0", n)
	}
}

func TestAuditLinePerQuery(t *testing.T) {
	up := startUpstream(t,
		"www.example.test. 300 IN A 203.0.113.7",
		"www.example.test. 300 IN A 10.0.0.7",
	)
	e := newEnv(t, up, testAllow, testBlock, nil)
	e.ask("www.example.test.", dns.TypeA)
	e.ask("WWW.example.test.", dns.TypeA) // cached: still one line
	e.ask("x.evil.test.", dns.TypeA)
	e.ask("other.test.", dns.TypeAAAA)
	e.ask("www.example.test.", dns.TypeANY)
	e.ask("www.example.test.", dns.TypeHTTPS)
	e.ask("1.2.3.4.", dns.TypeA)
	got := e.audit.records(t)
	for i := range got {
		if got[i].Time.IsZero() {
			t.Errorf("record %d has no time", i)
		}
		got[i].Time = time.Time{}
	}
	base := func(target, qtype, decision, reason string) auditRecord {
		return auditRecord{SandboxID: "sb-test", Kind: "dns", Target: target, Port: 53, QType: qtype, Decision: decision, Reason: reason, Client: "127.0.0.1"}
	}
	allowed := base("www.example.test", "A", "allow", "allowed-by")
	allowed.Addrs, allowed.Rule, allowed.Source = []string{"203.0.113.7"}, "*.example.test", "policy.toml:10"
	blocked := base("x.evil.test", "A", "deny", "blocked-by")
	blocked.Rule, blocked.Source = "*.evil.test", "policy.toml:20"
	https := base("www.example.test", "HTTPS", "allow", "qtype-not-forwarded") // the name is allowed; the type is answered empty
	https.Rule, https.Source = "*.example.test", "policy.toml:10"
	want := []auditRecord{
		allowed,
		allowed,
		blocked,
		base("other.test", "AAAA", "deny", "no-allow-rule"),
		base("www.example.test.", "ANY", "deny", "qtype-refused"),
		https,
		base("1.2.3.4.", "A", "deny", "invalid-name"),
	}
	if diff := cmp.Diff(want, toAuditRecords(got)); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
}

// auditRecord mirrors audit.Record without the time, for comparisons.
type auditRecord struct {
	SandboxID, Kind, Target string
	Port                    uint16
	QType                   string
	Addrs                   []string
	Decision, Reason, Rule  string
	Source, Client, Error   string
}

func toAuditRecords(in []audit.Record) []auditRecord {
	out := make([]auditRecord, len(in))
	for i, r := range in {
		out[i] = auditRecord{
			SandboxID: r.SandboxID, Kind: string(r.Kind), Target: r.Target, Port: r.Port, QType: r.QType,
			Addrs: r.Addrs, Decision: string(r.Decision), Reason: string(r.Reason), Rule: r.Rule, Source: r.Source,
			Client: r.Client, Error: r.Error,
		}
	}
	return out
}

func TestUpstreamSocketsCarryTheMark(t *testing.T) {
	privtest.Require(t, "setting SO_MARK needs CAP_NET_ADMIN")
	up := startUpstream(t, "www.example.test. 300 IN A 203.0.113.7")
	e := newEnv(t, up, testAllow, testBlock, func(c *Config) { c.Mark = 0x2a17 })
	if r := e.ask("www.example.test.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("marked upstream query failed: %v", r)
	}
	var uc *udpConn
	select {
	case uc = <-e.srv.pool.Load().up.(*upstreams).servers[0].idle:
	default:
		t.Fatal("no pooled upstream socket after a query")
	}
	defer uc.c.Close()
	raw, err := uc.c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var serr error
	if err := raw.Control(func(fd uintptr) { mark, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	if mark != 0x2a17 {
		t.Errorf("upstream socket mark %#x, want 0x2a17", mark)
	}
}

func TestUpstreamSocketsAreReused(t *testing.T) {
	var recs []string
	for i := range 20 {
		recs = append(recs, "n"+itoa(i)+".example.test. 300 IN A 203.0.113.7")
	}
	up := startUpstream(t, recs...)
	e := newEnv(t, up, testAllow, testBlock, nil)
	for i := range 20 {
		e.ask("n"+itoa(i)+".example.test.", dns.TypeA)
	}
	// Sequential queries go out through one pooled socket: the pool
	// holds exactly one idle socket afterwards.
	if n := len(e.srv.pool.Load().up.(*upstreams).servers[0].idle); n != 1 {
		t.Errorf("%d idle upstream sockets after 20 sequential queries, want 1", n)
	}
	if up.count() != 20 {
		t.Errorf("upstream got %d queries, want 20", up.count())
	}
}

func TestConfigRejectsBadValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no upstream", Config{}},
		{"upstream name", Config{Upstreams: []string{"dns.google:53"}}},
		{"upstream without port", Config{Upstreams: []string{"192.0.2.53"}}},
		{"upstream port 0", Config{Upstreams: []string{"192.0.2.53:0"}}},
		{"bad block response", Config{Upstreams: []string{"192.0.2.53:53"}, BlockResponse: "servfail"}},
		{"negative cache", Config{Upstreams: []string{"192.0.2.53:53"}, CacheSize: -1}},
		{"negative burst", Config{Upstreams: []string{"192.0.2.53:53"}, QueryBurst: -1}},
		{"sub-second TTL cap", Config{Upstreams: []string{"192.0.2.53:53"}, MaxCacheTTL: time.Millisecond}},
		{"negative timeout", Config{Upstreams: []string{"192.0.2.53:53"}, UpstreamTimeout: -time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Error("New accepted it")
			}
		})
	}
	s, err := New(Config{Upstreams: []string{"192.0.2.53:53"}})
	if err != nil {
		t.Fatal(err)
	}
	want := settings{
		upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}, blockRcode: dns.RcodeNameError,
		maxNameLen: 253, rate: 200, burst: 400, cacheSize: 4096, maxTTL: 3600, maxNegTTL: 300,
		learnedSize: 65536, learnFloor: 30 * time.Second, timeout: 2 * time.Second, maxUpstream: 256,
		maxTCPConns: 128, maxCachedBytes: 4096,
	}
	got := s.set
	got.now = nil
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(settings{}), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
}

func TestShutdownStopsServing(t *testing.T) {
	up := startUpstream(t, "www.example.test. 300 IN A 203.0.113.7")
	s, err := New(Config{Upstreams: []string{up.addr}, Policy: func() PolicySource {
		l := &policy.Live{}
		l.Store(matcher(t, testAllow, nil))
		return l
	}()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	addr := s.Addrs()[0].String()
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	m := new(dns.Msg)
	m.SetQuestion("www.example.test.", dns.TypeA)
	if r := exchange(t, addr, m, "udp"); len(r.Answer) != 1 {
		t.Fatalf("answer %v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve returned %v after Shutdown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("TCP listener still open after Shutdown")
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := s.Listen("127.0.0.1:0"); err == nil {
		t.Error("Listen after Shutdown succeeded")
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestFetchRechecksPolicyBeforeForwarding(t *testing.T) {
	// The handler and Resolve decide first; lookup must still refuse a
	// denied name on its own (a reload between decision and fetch).
	up := startUpstream(t, "x.evil.test. 300 IN A 203.0.113.66", "other.test. 300 IN A 203.0.113.67")
	e := newEnv(t, up, testAllow, testBlock, nil)
	for _, n := range []string{"x.evil.test", "other.test"} {
		_, err := e.srv.lookup(context.Background(), n, dns.TypeA, e.clock.Now())
		var de *DeniedError
		if !errors.As(err, &de) {
			t.Errorf("lookup(%s) = %v, want *DeniedError", n, err)
		}
	}
	if n := up.count(); n != 0 {
		t.Errorf("upstream got %d queries (%v), want 0", n, up.names())
	}
}

// TestAuditRecordsAreAllWrittenByShutdown: with egressd's buffered audit
// writer, every query answered before Shutdown is in the log once the
// writer is closed after it (the order egressd serve stops in), and a
// query answered later is written too.
func TestAuditRecordsAreAllWrittenByShutdown(t *testing.T) {
	up := startUpstream(t, "www.example.test. 300 IN A 203.0.113.7")
	buf := &syncBuffer{}
	live := &policy.Live{}
	live.Store(matcher(t, testAllow, testBlock))
	al := audit.NewBuffered(buf, "sb", audit.BufferOptions{FlushInterval: time.Hour})
	s, err := New(Config{Upstreams: []string{up.addr}, Policy: live, QueryRate: -1, Audit: al})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	const n = 200
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	for i := range n {
		m := new(dns.Msg)
		m.SetQuestion([]string{"www.example.test.", "x.evil.test."}[i%2], dns.TypeA)
		if _, _, err := c.Exchange(m, s.Addrs()[0].String()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	al.Close()
	if got := len(buf.records(t)); got != n || al.Dropped() != 0 {
		t.Errorf("%d audit records after Shutdown and Close (%d dropped), want %d", got, al.Dropped(), n)
	}
	// After Shutdown, a query handled directly is still audited.
	m := new(dns.Msg)
	m.SetQuestion("x.evil.test.", dns.TypeA)
	s.respond(m, netip.MustParseAddr("127.0.0.1"), false)
	if got := len(buf.records(t)); got != n+1 {
		t.Errorf("%d audit records after a late query, want %d", got, n+1)
	}
}

func TestLearnedTableIsBounded(t *testing.T) {
	clock := newFakeClock()
	lt := newLearnedTable(16)
	exp := clock.Now().Add(time.Minute)
	for i := range 100 {
		lt.add([]netip.Addr{netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})}, []string{"n" + itoa(i) + ".example.test"}, exp, clock.Now(), 0)
		if n := lt.len(); n > 16 {
			t.Fatalf("%d addresses after %d adds, bound is 16", n, i+1)
		}
	}
	// The newest address is always there.
	if got := lt.names(netip.MustParseAddr("203.0.113.99"), clock.Now()); len(got) != 1 {
		t.Errorf("newest address: %v", got)
	}
	// One shared address keeps at most maxNamesPerAddr names, the newest.
	shared := netip.MustParseAddr("198.51.100.1")
	for i := range 100 {
		lt.add([]netip.Addr{shared}, []string{"s" + itoa(i) + ".example.test"}, exp.Add(time.Duration(i)*time.Second), clock.Now(), 0)
	}
	got := lt.names(shared, clock.Now())
	if len(got) != maxNamesPerAddr || got[len(got)-1] != "s99.example.test" {
		t.Errorf("shared address has %d names (last %q), want %d ending with s99", len(got), got[len(got)-1], maxNamesPerAddr)
	}
	// Expired addresses make room before live ones are dropped.
	clock.Advance(2 * time.Minute)
	lt.add([]netip.Addr{netip.MustParseAddr("192.0.2.1")}, []string{"late.example.test"}, clock.Now().Add(time.Minute), clock.Now(), 0)
	if n := lt.len(); n > 16 {
		t.Errorf("%d addresses, bound is 16", n)
	}
}

// TestEveryQueryHasItsOutcome: each way a query can end has one outcome
// and one reason, the same in the audit record and the metric; an allowed
// name whose type is not forwarded is not a denial of the name; a query
// name the sandbox chose is escaped and capped in the record.
func TestEveryQueryHasItsOutcome(t *testing.T) {
	up := startUpstream(t,
		"www.example.test. 300 IN A 203.0.113.7",
		"inside.example.test. 300 IN A 10.0.0.7",
	)
	e := newEnv(t, up, testAllow, testBlock, func(c *Config) { c.MaxNameLen = 100 })
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + ".example.test."
	for _, tc := range []struct {
		name    string
		qtype   uint16
		rcode   string
		outcome audit.Outcome
		reason  audit.Reason
		target  string
		addrs   []string
	}{
		{"www.example.test.", dns.TypeA, "NOERROR", audit.OutcomeAllow, audit.ReasonAllowedBy, "www.example.test", []string{"203.0.113.7"}},
		{"www.example.test.", dns.TypeNULL, "NOERROR", audit.OutcomeAllow, audit.ReasonQTypeNotForwarded, "www.example.test", nil},
		{"x.evil.test.", dns.TypeA, "NXDOMAIN", audit.OutcomeDeny, audit.ReasonBlockedBy, "x.evil.test", nil},
		{"other.test.", dns.TypeA, "NXDOMAIN", audit.OutcomeDeny, audit.ReasonNoAllowRule, "other.test", nil},
		{"inside.example.test.", dns.TypeA, "NOERROR", audit.OutcomeDeny, audit.ReasonGuardedAddress, "inside.example.test", []string{"10.0.0.7"}},
		{"a\\007b\\027[2J.example.test.", dns.TypeA, "NXDOMAIN", audit.OutcomeDeny, audit.ReasonInvalidName, `a\007b\027[2J.example.test.`, nil},
		{long, dns.TypeA, "REFUSED", audit.OutcomeDeny, audit.ReasonDNSMaxNameLen, long, nil},
		{"www.example.test.", dns.TypeAXFR, "REFUSED", audit.OutcomeDeny, audit.ReasonQTypeRefused, "www.example.test.", nil},
	} {
		e.audit.reset()
		if got := rcode(e.ask(tc.name, tc.qtype)); got != tc.rcode {
			t.Errorf("%s %s: rcode %s, want %s", tc.name, dns.TypeToString[tc.qtype], got, tc.rcode)
		}
		recs := e.audit.records(t)
		if len(recs) != 1 {
			t.Fatalf("%s: %d records, want 1: %+v", tc.name, len(recs), recs)
		}
		r := recs[0]
		if r.Decision != tc.outcome || r.Reason != tc.reason || r.Target != tc.target || !slices.Equal(r.Addrs, tc.addrs) {
			t.Errorf("%s %s: record %s %s %q %v, want %s %s %q %v", tc.name, dns.TypeToString[tc.qtype],
				r.Decision, r.Reason, r.Target, r.Addrs, tc.outcome, tc.reason, tc.target, tc.addrs)
		}
		if tc.reason == audit.ReasonQTypeNotForwarded && r.Rule != "*.example.test" {
			t.Errorf("qtype-not-forwarded names the rule that allowed the name: %+v", r)
		}
		if got := e.srv.m.queriesVec.WithLabelValues(string(tc.outcome), string(tc.reason)).Value(); got < 1 {
			t.Errorf("%s: egressd_dns_queries_total{result=%q,reason=%q} = %v", tc.name, tc.outcome, tc.reason, got)
		}
	}
}

// TestReusedReplyBytesEqualAFreshlyPackedReply: the bytes respondWire reuses
// for a cached allowed answer are, for every query shape and in every
// second, exactly the bytes of the reply packed afresh (with the query's ID,
// its question as asked, its RD and CD bits, its EDNS and truncation).
func TestReusedReplyBytesEqualAFreshlyPackedReply(t *testing.T) {
	records := []string{
		"www.example.test. 300 IN A 203.0.113.7",
		"www.example.test. 300 IN A 203.0.113.8",
		"www.example.test. 120 IN AAAA 2001:db8::7",
		"alias.example.test. 60 IN CNAME www.example.test.",
		"txt.example.test. 300 IN TXT \"v=spf1 -all\"",
	}
	for i := range 40 { // a UDP answer over 512 bytes: truncated without EDNS
		records = append(records, fmt.Sprintf("big.example.test. 300 IN A 198.51.100.%d", i+1))
	}
	up := startUpstream(t, records...)
	e := newEnv(t, up, testAllow, testBlock, nil)
	client := netip.MustParseAddr("127.0.0.1")
	type shape struct {
		name   string
		qtype  uint16
		edns   int // 0: none
		rd, cd bool
		tcp    bool
	}
	var shapes []shape
	for _, name := range []string{"www.example.test.", "WwW.ExAmPlE.TeSt.", "alias.example.test.", "txt.example.test.", "big.example.test.", "nx.example.test."} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT} {
			for _, edns := range []int{0, 512, 1232, 4096} {
				for _, tcp := range []bool{false, true} {
					for flags := range 4 { // shapes that differ in RD or CD only, one after the other
						shapes = append(shapes, shape{name, qtype, edns, flags&1 != 0, flags&2 != 0, tcp})
					}
				}
			}
		}
	}
	query := func(s shape, id uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(s.name, s.qtype)
		m.Id, m.RecursionDesired, m.CheckingDisabled = id, s.rd, s.cd
		if s.edns > 0 {
			m.SetEdns0(uint16(s.edns), false)
		}
		return m
	}
	check := func(s shape, id uint16) {
		t.Helper()
		got, err := e.srv.respondWire(query(s, id), client, s.tcp, nil)
		if err != nil {
			t.Fatalf("%+v: %v", s, err)
		}
		want, err := e.srv.respond(query(s, id), client, s.tcp).Pack()
		if err != nil {
			t.Fatalf("%+v: %v", s, err)
		}
		if !bytes.Equal(got, want) {
			var g, w dns.Msg
			_ = g.Unpack(got)
			_ = w.Unpack(want)
			t.Fatalf("%+v id %d: reused bytes differ from a freshly packed reply\n got: %v\nwant: %v", s, id, &g, &w)
		}
	}
	for round := range 3 {
		for i, s := range shapes {
			check(s, uint16(1000*round+i))     // the first of its shape this second: packed
			check(s, uint16(1000*round+i+500)) // reused
		}
		e.clock.Advance(7 * time.Second) // every TTL counts down
	}
	// The second query of a shape did reuse the bytes: they are there.
	s := shapes[0]
	a := e.srv.cache.get(cacheKey{name: "www.example.test", qtype: dns.TypeA}, e.clock.Now())
	if a == nil {
		t.Fatal("www.example.test A is not cached")
	}
	if _, err := e.srv.respondWire(query(s, 1), client, s.tcp, nil); err != nil {
		t.Fatal(err)
	}
	f := a.memo.Load()
	if p := f.snap.Load().packed.Load(); p == nil || p.shape != replyShapeOf(query(s, 1), s.tcp) {
		t.Fatalf("no packed reply kept for %+v", s)
	}
}
