package proxy

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/metrics/metricstest"
	"github.com/egressd/egressd/policy"
)

// reportPolicy is a report-mode policy of allow/block rules (numbered
// lines of policy.toml), with the given default ports (nil: 80, 443).
func reportPolicy(t *testing.T, defaults []uint16, rules ...string) *policy.Live {
	t.Helper()
	var np policy.NetworkPolicy
	np.Mode, np.DefaultPorts = policy.ModeReport, defaults
	for i, line := range rules {
		verb, text, _ := strings.Cut(line, " ")
		r, err := policy.ParseRule(text, policy.Source{Kind: policy.SourceFile, File: "policy.toml", Line: i + 1})
		if err != nil {
			t.Fatal(err)
		}
		if verb == "block" {
			np.Block = append(np.Block, r)
		} else {
			np.Allow = append(np.Allow, r)
		}
	}
	m, err := policy.NewMatcher(np)
	if err != nil {
		t.Fatal(err)
	}
	var live policy.Live
	live.Store(m)
	return &live
}

// TestReportModeRelaysWouldDenyAndAuditsIt: a name no rule allows is
// tunnelled (CONNECT) and forwarded (plain HTTP), each audited would-deny
// with reason no-allow-rule and counted so in the metrics; a blocked name
// is still refused.
func TestReportModeRelaysWouldDenyAndAuditsIt(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	up := newUpstreamHTTP(t)
	reg := metrics.NewRegistry()
	// 127.0.0.1:* lifts the guard for the test servers on loopback only.
	h := newHarness(t, reportPolicy(t, nil, "allow 127.0.0.1:*", "block *.evil.test"), func(c *Config) { c.Metrics = reg })
	h.res.set("new.test", "127.0.0.1")
	h.res.set("x.evil.test", "127.0.0.1")

	c, resp, _ := h.connect(fmt.Sprintf("new.test:%d", rec.port))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT to a name no rule allows, in report mode: %d, want 200", resp.StatusCode)
	}
	echo(t, c, "learn me\n") // raw TCP on a port that is not a default port: new.test:PORT would admit it
	c.Close()
	h.audit.waitRecords(t, 1)
	resp, _ = h.request(fmt.Sprintf("GET http://new.test:%d/p HTTP/1.1\r\nHost: new.test:%d\r\n\r\n", up.port, up.port))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("plain HTTP to a name no rule allows: %d, want 200", resp.StatusCode)
	}
	h.audit.waitRecords(t, 2)
	_, resp, _ = h.connect(fmt.Sprintf("x.evil.test:%d", rec.port))
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("CONNECT to a blocked name in report mode: %d, want 403", resp.StatusCode)
	}
	rs := h.audit.waitRecords(t, 3)
	want := []audit.Record{
		{Kind: audit.KindConnect, Target: "new.test", Port: rec.port, Addrs: []string{fmt.Sprintf("127.0.0.1:%d", rec.port)},
			Decision: audit.OutcomeWouldDeny, Reason: audit.ReasonNoAllowRule, BytesUp: 9, BytesDown: 9},
		{Kind: audit.KindHTTP, Target: "new.test", Port: up.port, Addrs: []string{fmt.Sprintf("127.0.0.1:%d", up.port)},
			Decision: audit.OutcomeWouldDeny, Reason: audit.ReasonNoAllowRule},
		{Kind: audit.KindConnect, Target: "x.evil.test", Port: rec.port, Decision: audit.OutcomeDeny, Reason: audit.ReasonBlockedBy,
			Rule: "*.evil.test", Source: "policy.toml:2"},
	}
	if diff := cmp.Diff(want, rs, cmpopts.IgnoreFields(audit.Record{}, "Time", "SandboxID", "Client", "DurationMS", "BytesUp", "BytesDown"), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
	if got := decisionCount(t, reg, "connect", "would-deny", "no-allow-rule"); got != 1 {
		t.Errorf("egressd_proxy_decisions_total{connect,would-deny,no-allow-rule} = %v, want 1", got)
	}
	if n, _ := rec.stats(); n != 1 {
		t.Errorf("the recorder got %d connections, want 1 (the would-deny tunnel; none for the blocked name)", n)
	}
}

// TestReportModeStillGuardsAddresses: a name that resolves only to
// guarded addresses (metadata, loopback without a lift) and an IP literal
// in a guarded range are refused guarded-address in report mode, never
// let through as would-deny; nothing reaches the server.
func TestReportModeStillGuardsAddresses(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.9:0")
	h := newHarness(t, reportPolicy(t, nil))
	h.res.set("meta.test", "169.254.169.254")
	h.res.set("loop.test", "127.0.0.9")
	for _, target := range []string{"meta.test:80", fmt.Sprintf("loop.test:%d", rec.port), "169.254.169.254:80", fmt.Sprintf("127.0.0.9:%d", rec.port)} {
		_, resp, _ := h.connect(target)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("CONNECT %s in report mode: %d, want 403", target, resp.StatusCode)
		}
		resp, _ = h.request(fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", target, target))
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("GET http://%s/ in report mode: %d, want 403", target, resp.StatusCode)
		}
	}
	for _, r := range h.audit.waitRecords(t, 8) {
		if r.Decision != audit.OutcomeDeny || r.Reason != audit.ReasonGuardedAddress {
			t.Errorf("record %s %s:%d: %s %s, want deny guarded-address", r.Kind, r.Target, r.Port, r.Decision, r.Reason)
		}
	}
	if n, _ := rec.stats(); n != 0 {
		t.Errorf("the guarded server got %d connections", n)
	}
}

// TestReportModeRefusesUnidentifiedStreams: bytes that name no host, on a
// default port of a name no rule allows, are refused unidentified-stream
// in report mode as in filtered mode: the rule learned from them would be
// portless, which admits TLS and HTTP only (THREATS A5). The test makes
// the recorder's port a default port.
func TestReportModeRefusesUnidentifiedStreams(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	h := newHarness(t, reportPolicy(t, []uint16{rec.port}, "allow 127.0.0.1:*"))
	h.res.set("new.test", "127.0.0.1")
	c, resp, _ := h.connect(fmt.Sprintf("new.test:%d", rec.port))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %d, want 200", resp.StatusCode)
	}
	_, _ = io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n")
	if !tunnelClosed(c) {
		t.Fatal("a raw stream on a default port of a would-deny name was relayed")
	}
	if _, n := rec.stats(); n != 0 {
		t.Errorf("the server got %d bytes", n)
	}
	rs := h.audit.waitRecords(t, 1)
	if len(rs) != 1 || rs[0].Decision != audit.OutcomeDeny || rs[0].Reason != audit.ReasonUnidentified {
		t.Fatalf("records %+v, want one deny unidentified-stream", rs)
	}

	// The transparent path: an address learned for a name no rule allows.
	// A would-deny by address does not undo the learned name's refusal.
	orig := netip.MustParseAddrPort("203.0.113.9:443")
	p := newHarness(t, reportPolicy(t, nil), func(c *Config) {
		c.Learned = fakeLearned{orig.Addr(): {"new.test"}}
	}).p
	if _, _, dn := p.decideRaw(p.cfg.Policy.Current(), orig); dn == nil || dn.reason != audit.ReasonUnidentified {
		t.Errorf("raw TCP to %s learned for new.test: %+v, want unidentified-stream", orig, dn)
	}
	// On another port, and with no learned name, it is a would-deny.
	for _, ap := range []string{"203.0.113.9:22", "203.0.113.10:443"} {
		d, _, dn := p.decideRaw(p.cfg.Policy.Current(), netip.MustParseAddrPort(ap))
		if dn != nil || !d.WouldDeny {
			t.Errorf("raw TCP to %s: %+v %+v, want a would-deny", ap, d, dn)
		}
	}
}

// decisionCount reads egressd_proxy_decisions_total{kind,result,reason}.
func decisionCount(t *testing.T, reg *metrics.Registry, kind, result, reason string) float64 {
	t.Helper()
	n, _ := metricstest.Value(t, reg, "egressd_proxy_decisions_total", map[string]string{"kind": kind, "result": result, "reason": reason})
	return n
}
