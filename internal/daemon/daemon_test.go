package daemon

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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
	d, err := New(Config{
		PolicyFiles: []string{pol},
		DNSListen:   []string{"127.0.0.1:0"},
		ProxyListen: []string{"127.0.0.1:0"},
		UpstreamDNS: []string{up},
	})
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
	dnsAddr := d.DNSAddrs()[0].String()

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

func TestServeRefusesNonFilteredModes(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.toml")
	writePolicy(t, pol, "version = 1\n[network]\nmode = \"host\"\n")
	_, err := New(Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{"127.0.0.1:53"}})
	if err == nil || !strings.Contains(err.Error(), "filtered") {
		t.Fatalf("New with mode host: err %v, want a refusal naming filtered mode", err)
	}
}

func TestNormaliseUpstreams(t *testing.T) {
	got, err := normaliseUpstreams([]string{"192.0.2.1", "192.0.2.2:5353", "2001:db8::1", "[2001:db8::2]:53"})
	if err != nil {
		t.Fatal(err)
	}
	want := "192.0.2.1:53 192.0.2.2:5353 [2001:db8::1]:53 [2001:db8::2]:53"
	if strings.Join(got, " ") != want {
		t.Errorf("got %v, want %s", got, want)
	}
	for _, bad := range []string{"dns.google", "192.0.2.1:x", "fe80::1%eth0"} {
		if _, err := normaliseUpstreams([]string{bad}); err == nil {
			t.Errorf("normaliseUpstreams(%q) accepted", bad)
		}
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
