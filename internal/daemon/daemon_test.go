package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/metrics/metricstest"
	"github.com/egressd/egressd/policy"
)

// startUpstream runs a DNS server on loopback answering every A query with
// 203.0.113.10, and counts the queries it saw per name.
func startUpstream(t *testing.T) (addr string, seen func(name string) int) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	counts := make(chan map[string]int, 1)
	counts <- map[string]int{}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		c := <-counts
		c[strings.ToLower(q.Name)]++
		counts <- c
		if q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Name + " 60 IN A 203.0.113.10")
			m.Answer = append(m.Answer, rr)
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String(), func(name string) int {
		c := <-counts
		defer func() { counts <- c }()
		return c[name+"."]
	}
}

func query(t *testing.T, server, name string) int {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	in, err := dns.Exchange(m, server)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return in.Rcode
}

func writePolicy(t *testing.T, path, body string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil { // as editors do
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReloadKeepsLastGoodPolicyAndAppliesTheNext drives a whole daemon on
// loopback: a broken policy file is refused and the old policy keeps
// deciding; a good edit (write-and-rename) takes effect without a restart.
func TestReloadKeepsLastGoodPolicyAndAppliesTheNext(t *testing.T) {
	up, seen := startUpstream(t)
	pol := filepath.Join(t.TempDir(), "policy.toml")
	writePolicy(t, pol, "version = 1\nprofile = \"strict\"\n[network]\nallow = [\"a.test\"]\n")
	d, dnsAddr := startDaemon(t, Config{
		PolicyFiles: []string{pol},
		DNSListen:   []string{"127.0.0.1:0"},
		ProxyListen: []string{"127.0.0.1:0"},
		UpstreamDNS: []string{up},
	})

	if rc := query(t, dnsAddr, "a.test"); rc != dns.RcodeSuccess {
		t.Fatalf("a.test: rcode %s, want NOERROR", dns.RcodeToString[rc])
	}
	if rc := query(t, dnsAddr, "b.test"); rc != dns.RcodeNameError || seen("b.test") != 0 {
		t.Fatalf("b.test before reload: rcode %s, upstream saw %d queries; want NXDOMAIN and 0", dns.RcodeToString[rc], seen("b.test"))
	}

	// A broken file: refused, counted, the old policy stays.
	writePolicy(t, pol, "version = 1\n[network]\nallow = [\"b.test\"\n")
	waitFor(t, "the refused reload to be counted", func() bool { return counterValue(d.reloadsError) >= 1 })
	if err := d.Reload(); err == nil || !strings.Contains(err.Error(), "policy.toml:") {
		t.Fatalf("Reload of a broken file: err %v, want a file:line:col error", err)
	}
	if rc := query(t, dnsAddr, "a.test"); rc != dns.RcodeSuccess {
		t.Errorf("a.test after refused reload: rcode %s, want NOERROR (last good policy)", dns.RcodeToString[rc])
	}
	if rc := query(t, dnsAddr, "b.test"); rc != dns.RcodeNameError {
		t.Errorf("b.test after refused reload: rcode %s, want NXDOMAIN", dns.RcodeToString[rc])
	}

	// A good edit: b.test allowed, a.test no longer.
	writePolicy(t, pol, "version = 1\nprofile = \"strict\"\n[network]\nallow = [\"b.test\"]\n")
	waitFor(t, "the reload to take effect", func() bool { return counterValue(d.reloadsOK) >= 1 })
	if rc := query(t, dnsAddr, "b.test"); rc != dns.RcodeSuccess || seen("b.test") == 0 {
		t.Errorf("b.test after reload: rcode %s, upstream saw %d; want NOERROR and forwarded", dns.RcodeToString[rc], seen("b.test"))
	}
	if rc := query(t, dnsAddr, "a.test"); rc != dns.RcodeNameError {
		t.Errorf("a.test after reload: rcode %s, want NXDOMAIN (even though it is cached)", dns.RcodeToString[rc])
	}
}

// TestReloadAppliesResolverSettings: a reload that changes
// dns_block_response and upstream_dns is not only shown by /policy but
// answered by the resolver: denied names get the new rcode, allowed names
// go to the new upstream.
func TestReloadAppliesResolverSettings(t *testing.T) {
	up1, seen1 := startUpstream(t)
	up2, seen2 := startUpstream(t)
	pol := filepath.Join(t.TempDir(), "policy.toml")
	body := func(resp, up string) string {
		return fmt.Sprintf("version = 1\nprofile = \"strict\"\n[network]\nallow = [\"a.test\", \"b.test\"]\ndns_block_response = %q\nupstream_dns = [%q]\n", resp, up)
	}
	writePolicy(t, pol, body("nxdomain", up1))
	d, dnsAddr := startDaemon(t, Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}})
	if rc := query(t, dnsAddr, "a.test"); rc != dns.RcodeSuccess || seen1("a.test") != 1 {
		t.Fatalf("a.test: rcode %s, up1 saw %d; want NOERROR from up1", dns.RcodeToString[rc], seen1("a.test"))
	}
	if rc := query(t, dnsAddr, "c.test"); rc != dns.RcodeNameError {
		t.Fatalf("c.test: rcode %s, want NXDOMAIN", dns.RcodeToString[rc])
	}

	writePolicy(t, pol, body("refused", up2))
	waitFor(t, "the reload to take effect", func() bool { return counterValue(d.reloadsOK) >= 1 })
	if rc := query(t, dnsAddr, "c.test"); rc != dns.RcodeRefused {
		t.Errorf("c.test after the reload: rcode %s, want REFUSED", dns.RcodeToString[rc])
	}
	for _, name := range []string{"a.test", "b.test"} { // a.test was cached from up1
		if rc := query(t, dnsAddr, name); rc != dns.RcodeSuccess || seen2(name) != 1 {
			t.Errorf("%s after the reload: rcode %s, up2 saw %d; want NOERROR from up2", name, dns.RcodeToString[rc], seen2(name))
		}
	}
	if n := seen1("b.test"); n != 0 {
		t.Errorf("the old upstream saw %d queries for b.test after the reload", n)
	}
	got := d.live.p.Load().profile.Explain()
	if b, _ := json.Marshal(got); !strings.Contains(string(b), "refused") || !strings.Contains(string(b), up2) {
		t.Errorf("/policy after the reload does not show the new settings: %s", b)
	}
}

// TestUnwatchedPolicyReloadsOnlyWhenAsked: with NoWatch (the launcher's
// egressd) an edit of the policy file changes nothing until Reload (SIGHUP,
// POST /reload) reads it.
func TestUnwatchedPolicyReloadsOnlyWhenAsked(t *testing.T) {
	up, _ := startUpstream(t)
	pol := filepath.Join(t.TempDir(), "policy.toml")
	writePolicy(t, pol, "version = 1\nprofile = \"strict\"\n[network]\nallow = [\"a.test\"]\n")
	d, dnsAddr := startDaemon(t, Config{PolicyFiles: []string{pol}, NoWatch: true, DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{up}})
	writePolicy(t, pol, "version = 1\nprofile = \"strict\"\n[network]\nallow = [\"b.test\"]\n")
	// A watcher would have reloaded well within this (its debounce).
	time.Sleep(500 * time.Millisecond)
	if n := counterValue(d.reloadsOK); n != 0 {
		t.Fatalf("%v reloads without a request", n)
	}
	if rc := query(t, dnsAddr, "b.test"); rc != dns.RcodeNameError {
		t.Fatalf("b.test before the reload: rcode %s, want NXDOMAIN", dns.RcodeToString[rc])
	}
	if err := d.Reload(); err != nil {
		t.Fatal(err)
	}
	if rc := query(t, dnsAddr, "b.test"); rc != dns.RcodeSuccess {
		t.Errorf("b.test after the reload: rcode %s, want NOERROR", dns.RcodeToString[rc])
	}
}

// startDaemon runs a daemon from cfg until the test ends and returns it
// with its first DNS address.
func startDaemon(t *testing.T, cfg Config) (*Daemon, string) {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	d.cfg.Ready = func() { close(ready) }
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	<-ready
	return d, d.DNSAddrs()[0].String()
}

// TestModeIsTheKeyThatCannotReload: serve enforces filtered (or report)
// mode only; a policy naming another mode is refused at start and on
// reload, naming the value's file:line:col, and the last good policy stays.
func TestModeIsTheKeyThatCannotReload(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.toml")
	writePolicy(t, pol, "version = 1\n[network]\nmode = \"host\"\n")
	_, err := New(Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{"127.0.0.1:53"}})
	if want := pol + `:3:8: network.mode = "host": egressd serve enforces filtered (or report) mode only`; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("New with mode host: err %v, want %q...", err, want)
	}

	up, _ := startUpstream(t)
	writePolicy(t, pol, "version = 1\n[network]\nallow = [\"a.test\"]\n")
	d, dnsAddr := startDaemon(t, Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{up}})
	writePolicy(t, pol, "version = 1\n[network]\nallow = [\"a.test\"]\nmode = \"none\"\n")
	waitFor(t, "the refused reload to be counted", func() bool { return counterValue(d.reloadsError) >= 1 })
	if err := d.Reload(); err == nil || !strings.HasPrefix(err.Error(), pol+`:4:8: network.mode = "none"`) {
		t.Errorf("Reload to mode none: err %v, want a refusal naming %s:4:8", err, pol)
	}
	if rc := query(t, dnsAddr, "a.test"); rc != dns.RcodeSuccess {
		t.Errorf("a.test after the refused reload: rcode %s, want NOERROR", dns.RcodeToString[rc])
	}
}

// TestReportModeServesAndReloadsBothWays: serve accepts report mode (the
// same firewall as filtered); a reload may switch between filtered and
// report, and the floor refuses report under standard, keeping the last
// good policy.
func TestReportModeServesAndReloadsBothWays(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.toml")
	up, seen := startUpstream(t)
	writePolicy(t, pol, "version = 1\n[network]\nallow = [\"a.test\"]\nmode = \"report\"\n")
	d, dnsAddr := startDaemon(t, Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{up}})
	if rc := query(t, dnsAddr, "b.test"); rc != dns.RcodeSuccess || seen("b.test") != 1 {
		t.Fatalf("b.test in report mode: rcode %s, forwarded %d times; want NOERROR, forwarded", dns.RcodeToString[rc], seen("b.test"))
	}
	writePolicy(t, pol, "version = 1\n[network]\nallow = [\"a.test\"]\nmode = \"filtered\"\n")
	if err := d.Reload(); err != nil {
		t.Fatalf("reload to filtered: %v", err)
	}
	if rc := query(t, dnsAddr, "c.test"); rc != dns.RcodeNameError || seen("c.test") != 0 {
		t.Errorf("c.test after the reload to filtered: rcode %s, want NXDOMAIN, not forwarded", dns.RcodeToString[rc])
	}

	_, err := New(Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{up}, Floor: "standard",
		Overrides: []policy.Setting{{Key: "network.mode", Values: []string{"report"}, Source: policy.Flag("--net")}}})
	if err == nil || !strings.Contains(err.Error(), policy.ReportFloorRefusal) {
		t.Errorf("report mode under the floor standard: %v", err)
	}
}

// TestUpstreamFlagIsAPolicyOverride: --upstream-dns is network.upstream_dns
// from flag:--upstream-dns, checked like the key and shown with its source.
func TestUpstreamFlagIsAPolicyOverride(t *testing.T) {
	d, err := New(Config{DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{"192.0.2.1", "[2001:db8::2]:5353"}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.closeListeners()
	snap := d.live.p.Load()
	if got := fmt.Sprint(snap.matcher.UpstreamDNS()); got != "[192.0.2.1:53 [2001:db8::2]:5353]" {
		t.Errorf("upstreams %s", got)
	}
	if src := snap.profile.SourceOf("network.upstream_dns").String(); src != "flag:--upstream-dns" {
		t.Errorf("source of network.upstream_dns: %q", src)
	}
	for _, bad := range []string{"dns.google", "192.0.2.1:x", "fe80::1%eth0"} {
		_, err := New(Config{DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{bad}})
		if err == nil || !strings.Contains(err.Error(), "flag:--upstream-dns: network.upstream_dns") {
			t.Errorf("--upstream-dns %q: err %v", bad, err)
		}
	}
}

// TestResolvConfIsTheLastFallback: with no upstream in flags or policy,
// resolv.conf's nameservers are used (re-read on every load).
func TestResolvConfIsTheLastFallback(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(rc, []byte("# comment\nsearch example\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{DNSListen: []string{"127.0.0.1:0"}, ResolvConf: rc})
	if err != nil {
		t.Fatal(err)
	}
	defer d.closeListeners()
	if got := fmt.Sprint(d.live.p.Load().matcher.UpstreamDNS()); got != "[192.0.2.53:53 [2001:db8::53]:53]" {
		t.Errorf("upstreams from resolv.conf: %s", got)
	}
	for content, want := range map[string]string{
		"search example\n":              "lists no nameserver",
		"nameserver fe80::1%eth0\n":     rc + ":1: nameserver",
		"nameserver resolver.example\n": rc + ":1: nameserver",
	} {
		if err := os.WriteFile(rc, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := New(Config{DNSListen: []string{"127.0.0.1:0"}, ResolvConf: rc}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("resolv.conf %q: err %v, want %q", content, err, want)
		}
	}
}

func counterValue(c *metrics.Counter) float64 { return c.Value() }

// TestRuleSourcesNameTheOriginalRule: a policy another tool wrote for
// egressd (the launcher's snapshot) keeps each rule's original source
// through RuleSources: decisions — and so audit records and the answers
// the sandbox reads — name tenant.toml:7, not the snapshot's line, at
// start and after a reload.
func TestRuleSourcesNameTheOriginalRule(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "snapshot.toml")
	writePolicy(t, pol, "version = 1\nprofile = \"strict\"\n[network]\nallow = [\"a.test\"]\nblock = [\"b.test\"]\n")
	d, err := New(Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{"127.0.0.1:53"},
		RuleSources: map[string]policy.Source{pol + ":4": {Kind: policy.SourceFile, File: "tenant.toml", Line: 7}, pol + ":5": policy.Flag("--block")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.closeListeners)
	for i := range 2 {
		m := d.live.Current()
		for name, want := range map[string]string{"a.test": "tenant.toml:7", "b.test": "flag:--block"} {
			dec := m.DecideName(name, 443)
			if dec.Rule == nil || dec.Rule.Source.String() != want {
				t.Errorf("load %d: %s decided by %v, want a rule from %s", i, name, dec, want)
			}
		}
		if err := d.Reload(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReloadAndBuildSeries: the conventional series are there and say
// what happened: the build, the last load's success and its time, audit
// write failures.
func TestReloadAndBuildSeries(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.toml")
	writePolicy(t, pol, "version = 1\nprofile = \"strict\"\n[network]\nallow = [\"a.test\"]\n")
	d, err := New(Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{"127.0.0.1:53"}, Audit: failingWriter{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.closeListeners)
	value := func(name string) (float64, map[string]string) {
		if mf, ok := metricstest.Parse(t, d.reg)[name]; ok {
			m := mf.GetMetric()[0]
			labels := metricstest.Labels(m)
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), labels
			case m.Counter != nil:
				return m.GetCounter().GetValue(), labels
			}
		}
		t.Fatalf("no series %s", name)
		return 0, nil
	}
	if v, l := value("egressd_build_info"); v != 1 || l["goversion"] == "" || l["version"] == "" || l["commit"] == "" {
		t.Errorf("egressd_build_info = %v %v", v, l)
	}
	if v, _ := value("egressd_policy_last_reload_successful"); v != 1 {
		t.Errorf("last reload successful = %v after a good start", v)
	}
	if v, _ := value("egressd_policy_last_reload_success_timestamp_seconds"); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last reload success time = %v", v)
	}
	writePolicy(t, pol, "version = 1\n[network]\nallow = [\"a.test\"\n")
	if err := d.Reload(); err == nil {
		t.Fatal("a broken policy reloaded")
	}
	if v, _ := value("egressd_policy_last_reload_successful"); v != 0 {
		t.Errorf("last reload successful = %v after a refused reload", v)
	}
	d.audit.Log(audit.Record{Kind: audit.KindDNS})
	d.audit.Flush() // the batched writer writes it now
	if v, _ := value("egressd_audit_write_errors_total"); v != 1 {
		t.Errorf("audit write errors = %v after one failed write", v)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// TestMetricsMatchTheDocs: every egressd_* family egressd serve registers
// is in docs/metrics.md's table with its type, and every family the table
// lists is registered (a labelled family is registered before its first
// series, so this holds whatever traffic came).
func TestMetricsMatchTheDocs(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.toml")
	writePolicy(t, pol, "version = 1\nprofile = \"strict\"\n[network]\nallow = [\"a.test\"]\n")
	d, err := New(Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}, ProxyListen: []string{"127.0.0.1:0"},
		UpstreamDNS: []string{"127.0.0.1:53"}, Audit: failingWriter{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.closeListeners)
	metricstest.MatchesDocs(t, d.Registry(), "../../docs/metrics.md", "egressd_")
	if typ := d.Registry().Families()["process_resident_memory_bytes"]; typ != metrics.TypeGauge {
		t.Errorf("process_resident_memory_bytes is a %q, want a gauge", typ)
	}
}

// TestStateDigestIsComputedWhenAsked: the policy digest GET /state shows
// is the resolved policy's, though put no longer computes it up front.
func TestStateDigestIsComputedWhenAsked(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.toml")
	writePolicy(t, pol, "version = 1\nprofile = \"strict\"\n[network]\nallow = [\"a.test\"]\n")
	d, err := New(Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{"127.0.0.1:53"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.closeListeners)
	got := d.State().Policy.Digest
	if want := digest(d.live.p.Load().profile); got != want || !strings.HasPrefix(got, "sha256:") {
		t.Errorf("digest %q, want %q", got, want)
	}
}
