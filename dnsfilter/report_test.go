package dnsfilter

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/miekg/dns"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// TestReportModeAnswersWouldDenyAndStillGuards: in report mode a name no
// rule allows is forwarded and answered, its addresses learned (so the
// transparent path can relay it), audited would-deny with reason
// no-allow-rule and counted so; a blocked name is still NXDOMAIN and
// never forwarded; a name that resolves only to loopback or the metadata
// address is answered empty and audited guarded-address, not would-deny.
func TestReportModeAnswersWouldDenyAndStillGuards(t *testing.T) {
	up := startUpstream(t,
		"new.test. 300 IN A 203.0.113.7",
		"loop.test. 300 IN A 127.0.0.1",
		"meta.test. 300 IN A 169.254.169.254",
		"x.evil.test. 300 IN A 203.0.113.66",
	)
	e := newEnv(t, up, testAllow, testBlock, nil)
	e.live.Store(matcherWith(t, testAllow, testBlock, func(np *policy.NetworkPolicy) { np.Mode = policy.ModeReport }))

	for _, tc := range []struct {
		name, rcode string
		addrs       []string
	}{
		{"new.test.", "NOERROR", []string{"203.0.113.7"}},
		{"loop.test.", "NOERROR", nil},
		{"meta.test.", "NOERROR", nil},
		{"x.evil.test.", "NXDOMAIN", nil},
	} {
		r := e.ask(tc.name, dns.TypeA)
		if rcode(r) != tc.rcode || !cmp.Equal(tc.addrs, answerAddrs(r)) {
			t.Errorf("%s in report mode: %s %v, want %s %v", tc.name, rcode(r), answerAddrs(r), tc.rcode, tc.addrs)
		}
	}
	if r := e.ask("new.test.", dns.TypeHTTPS); rcode(r) != "NOERROR" || len(r.Answer) != 0 {
		t.Errorf("HTTPS for a would-deny name: %s %v, want an empty NOERROR", rcode(r), r.Answer)
	}
	want := []audit.Record{
		{Kind: audit.KindDNS, Target: "new.test", Port: 53, QType: "A", Addrs: []string{"203.0.113.7"}, Decision: audit.OutcomeWouldDeny, Reason: audit.ReasonNoAllowRule},
		{Kind: audit.KindDNS, Target: "loop.test", Port: 53, QType: "A", Addrs: []string{"127.0.0.1"}, Decision: audit.OutcomeDeny, Reason: audit.ReasonGuardedAddress},
		{Kind: audit.KindDNS, Target: "meta.test", Port: 53, QType: "A", Addrs: []string{"169.254.169.254"}, Decision: audit.OutcomeDeny, Reason: audit.ReasonGuardedAddress},
		{Kind: audit.KindDNS, Target: "x.evil.test", Port: 53, QType: "A", Decision: audit.OutcomeDeny, Reason: audit.ReasonBlockedBy, Rule: "*.evil.test", Source: "policy.toml:20"},
		{Kind: audit.KindDNS, Target: "new.test", Port: 53, QType: "HTTPS", Decision: audit.OutcomeWouldDeny, Reason: audit.ReasonNoAllowRule, Error: "type HTTPS answered empty (qtype-not-forwarded)"},
	}
	if diff := cmp.Diff(want, e.audit.records(t), cmpopts.IgnoreFields(audit.Record{}, "Time", "SandboxID", "Client")); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
	for _, n := range up.names() {
		if n == "x.evil.test." {
			t.Error("a blocked name was forwarded in report mode")
		}
	}
	if diff := cmp.Diff([]string{"new.test"}, e.srv.LearnedNames(netip.MustParseAddr("203.0.113.7"))); diff != "" {
		t.Errorf("learned names of a would-deny answer (-want +got):\n%s", diff)
	}
	if got := e.srv.m.queriesVec.WithLabelValues("would-deny", "no-allow-rule").Value(); got != 2 {
		t.Errorf("egressd_dns_queries_total{would-deny,no-allow-rule} = %v, want 2", got)
	}
	// The proxy's lookups: a would-deny name resolves; the guard holds.
	if got, err := e.srv.Resolve(context.Background(), "new.test"); err != nil || len(got) != 1 {
		t.Errorf("Resolve(new.test) in report mode: %v, %v", got, err)
	}
	var de *DeniedError
	if _, err := e.srv.Resolve(context.Background(), "meta.test"); !errors.As(err, &de) || de.Decision.Reason != policy.ReasonGuardedAddress {
		t.Errorf("Resolve(meta.test) in report mode: %v, want guarded-address", err)
	}
}
