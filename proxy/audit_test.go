package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/metrics/metricstest"
)

// One audit line per decision: denials at once, allows when they end,
// with bytes and duration.
func TestAuditLinePerDecision(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	up := newUpstreamHTTP(t)
	h := newHarness(t, policyFile(t, map[int]string{1: "allow allowed.test:*", 2: "allow 127.0.0.1:*", 9: "block *.evil.test"}))
	h.res.set("allowed.test", "127.0.0.1")

	c, _, _ := h.connect(fmt.Sprintf("allowed.test:%d", rec.port))
	echo(t, c, "012345678\n")
	c.Close()
	h.audit.waitRecords(t, 1)
	h.connect("x.evil.test:443")
	h.audit.waitRecords(t, 2)
	h.request(fmt.Sprintf("POST http://allowed.test:%d/p HTTP/1.1\r\nHost: allowed.test:%d\r\nContent-Length: 5\r\n\r\nhello", up.port, up.port))
	h.audit.waitRecords(t, 3)
	h.request("GET http://nope.test/ HTTP/1.1\r\nHost: nope.test\r\n\r\n")
	h.audit.waitRecords(t, 4)
	// An IP-literal target: the record's target and addrs are written
	// from the addresses the proxy hands the audit writer as values.
	c, _, _ = h.connect(fmt.Sprintf("127.0.0.1:%d", rec.port))
	echo(t, c, "012345678\n")
	c.Close()

	rs := h.audit.waitRecords(t, 5)
	upstream := fmt.Sprintf("127.0.0.1:%d", rec.port)
	httpUp := fmt.Sprintf("127.0.0.1:%d", up.port)
	want := []audit.Record{
		{Kind: audit.KindConnect, Target: "allowed.test", Port: rec.port, Addrs: []string{upstream}, Decision: "allow",
			Reason: "allowed-by", Rule: "allowed.test:*", Source: "policy.toml:1", BytesUp: 10, BytesDown: 10},
		{Kind: audit.KindConnect, Target: "x.evil.test", Port: 443, Decision: "deny", Reason: "blocked-by",
			Rule: "*.evil.test", Source: "policy.toml:9"},
		{Kind: audit.KindHTTP, Target: "allowed.test", Port: up.port, Addrs: []string{httpUp}, Decision: "allow",
			Reason: "allowed-by", Rule: "allowed.test:*", Source: "policy.toml:1", BytesUp: 5, BytesDown: int64(len(fmt.Sprintf("hello allowed.test:%d /p body=5", up.port)))},
		{Kind: audit.KindHTTP, Target: "nope.test", Port: 80, Decision: "deny", Reason: "no-allow-rule"},
		{Kind: audit.KindConnect, Target: "127.0.0.1", Port: rec.port, Addrs: []string{upstream}, Decision: "allow",
			Reason: "allowed-by", Rule: "127.0.0.1:*", Source: "policy.toml:2", BytesUp: 10, BytesDown: 10},
	}
	if diff := cmp.Diff(want, rs, cmpopts.IgnoreFields(audit.Record{}, "Time", "SandboxID", "Client", "DurationMS"), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
	for _, r := range rs {
		if r.SandboxID != "test" || !strings.HasPrefix(r.Client, "127.0.0.1:") || r.Time.IsZero() {
			t.Errorf("record %+v lacks sandbox, client or time", r)
		}
		if r.Decision == "allow" && r.DurationMS <= 0 {
			t.Errorf("allow record %+v has no duration", r)
		}
	}
}

// docs/design.md, "Performance notes": the relay moves every byte after the
// peeked first ones with splice(2) between the bare *net.TCPConn of both
// sides (splice.go), none through a user-space buffer, and counts the
// bytes from what the copy returns.
func TestSpliceFastPathKept(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	th := newTransparentHarness(t, policyOf(t, basePolicy(t)...))
	th.res.set("allowed.test", "127.0.0.1")
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB

	c, _, _ := th.connect(fmt.Sprintf("allowed.test:%d", rec.port))
	go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("CONNECT echo: %d bytes, %v", len(got), err)
	}
	c = th.dialTo(fmt.Sprintf("127.0.0.1:%d", rec.port)) // raw TCP, allowed by the IP rule
	go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
	got, err = io.ReadAll(c)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("transparent echo: %d bytes, %v", len(got), err)
	}
	rs := th.audit.waitRecords(t, 2)

	var audited int64
	for _, r := range rs {
		audited += r.BytesUp + r.BytesDown
	}
	pipes := th.p.pipes
	spliced, copied := pipes.spliced.Load(), pipes.copied.Load()
	want := int64(4 * len(payload)) // up and back down, two tunnels
	if audited != want {
		t.Errorf("audited %d bytes, want %d (counted from the copy's results)", audited, want)
	}
	// The payload's first bytes are token bytes: they are peeked until the
	// first 8 KiB show no request line, and written upstream from the peek.
	if peeked := int64(2 * (maxRequestLine + peekBufSize)); copied != 0 || spliced < want-peeked || spliced > want {
		t.Errorf("spliced %d bytes and copied %d through a buffer; want all of %d but the peeked first bytes spliced, none copied", spliced, copied, want)
	}
	if inUse, _ := pipes.stats(); inUse != 0 {
		t.Errorf("%d pipes still in use after both tunnels ended", inUse)
	}
}

// THREATS A7: pooled upstream connections are keyed by the vetted origin:
// two names on the same address and port never share one.
func TestUpstreamPoolNotSharedAcrossHosts(t *testing.T) {
	var mu sync.Mutex
	remotes := map[string]map[string]bool{} // Host → upstream-side remote addresses
	srv := newUpstreamHTTP(t)
	srv.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if remotes[r.Host] == nil {
			remotes[r.Host] = map[string]bool{}
		}
		remotes[r.Host][r.RemoteAddr] = true
		mu.Unlock()
		io.WriteString(w, "ok")
	})
	h := newHarness(t, policyOf(t, "allow a.test:*", "allow b.test:*", "allow 127.0.0.1:*"))
	h.res.set("a.test", "127.0.0.1")
	h.res.set("b.test", "127.0.0.1")
	for i := range 6 {
		host := []string{"a.test", "b.test"}[i%2]
		resp, _ := h.request(fmt.Sprintf("GET http://%s:%d/ HTTP/1.1\r\nHost: %s:%d\r\n\r\n", host, srv.port, host, srv.port))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	a, b := remotes[fmt.Sprintf("a.test:%d", srv.port)], remotes[fmt.Sprintf("b.test:%d", srv.port)]
	if len(a) == 0 || len(b) == 0 {
		t.Fatalf("upstream saw %v", remotes)
	}
	for r := range a {
		if b[r] {
			t.Fatalf("upstream connection %s carried requests for both a.test and b.test", r)
		}
	}
	if len(a) > 1 || len(b) > 1 {
		t.Logf("note: pool did not reuse (%d, %d connections)", len(a), len(b))
	}
}

func TestMetricsRegistered(t *testing.T) {
	reg := metrics.NewRegistry()
	h := newHarness(t, policyOf(t, "allow 127.0.0.1:*"), func(c *Config) { c.Metrics = reg })
	h.connect("denied.test:443")
	h.audit.waitRecords(t, 1)
	var names []string
	for name := range metricstest.Parse(t, reg) {
		names = append(names, name)
	}
	if decisionCount(t, reg, "connect", "deny", "no-allow-rule") != 1 {
		t.Errorf("decisions{connect,deny,no-allow-rule} is not 1")
	}
	for _, want := range []string{"egressd_proxy_decisions_total", "egressd_proxy_open_tunnels"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("metric %s not registered (have %v)", want, names)
		}
	}
	if _, err := New(Config{Policy: h.live, Metrics: reg}); err == nil {
		t.Error("a second Proxy on the same registry registered silently")
	}
}

// TestEveryDenialIsInTheVocabulary reads the proxy's source: every
// denial it constructs (denyf and &denial literals) names a reason of
// audit.Reasons and an HTTP status that reason lists, so docs/audit.md's
// table (held to audit.Reasons by docs/vocab_test.go) says what a client
// can get.
func TestEveryDenialIsInTheVocabulary(t *testing.T) {
	vocab, err := os.ReadFile("../audit/vocab.go")
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]audit.Reason{}
	for _, m := range regexp.MustCompile(`(Reason\w+)\s+Reason = "([^"]+)"`).FindAllStringSubmatch(string(vocab), -1) {
		values[m[1]] = audit.Reason(m[2])
	}
	statuses := map[string]int{"0": 0}
	for code := 100; code < 600; code++ {
		if text := http.StatusText(code); text != "" {
			statuses["http.Status"+strings.NewReplacer(" ", "", "-", "", "'", "").Replace(text)] = code
		}
	}
	statuses["http.StatusRequestHeaderFieldsTooLarge"] = 431
	statuses["http.StatusHTTPVersionNotSupported"] = 505
	statuses["http.StatusRequestTimeout"] = 408
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	call := regexp.MustCompile(`(?:denyf\(|&denial\{status: )([\w.]+),\s*(?:reason:\s*)?audit\.(Reason\w+)`)
	seen := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range call.FindAllStringSubmatch(string(src), -1) {
			seen++
			reason, ok := values[m[2]]
			if !ok {
				t.Errorf("%s: audit.%s is no constant of audit/vocab.go", f, m[2])
				continue
			}
			info, ok := reason.Info()
			if !ok {
				t.Errorf("%s: reason %s is not in audit.Reasons", f, reason)
				continue
			}
			code, ok := statuses[m[1]]
			if !ok {
				t.Errorf("%s: status %s unknown to this test", f, m[1])
				continue
			}
			if code != 0 && !slices.Contains(info.Status, code) {
				t.Errorf("%s: %s answered %d; audit.Reasons (and docs/audit.md) list %v", f, reason, code, info.Status)
			}
		}
	}
	if seen < 30 {
		t.Fatalf("found %d denials in the proxy's source: the pattern no longer matches how they are written", seen)
	}
}
