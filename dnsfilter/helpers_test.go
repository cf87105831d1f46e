package dnsfilter

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/metrics/metricstest"
	"github.com/egressd/egressd/internal/syncbuf"
	"github.com/egressd/egressd/policy"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// upQuery is one query a test upstream received.
type upQuery struct {
	msg *dns.Msg
	tcp bool
}

// testUpstream is a real miekg/dns server on 127.0.0.1 (UDP and TCP, same
// port) answering from an in-memory zone the way a recursive resolver would:
// following CNAMEs, NXDOMAIN with a SOA for unknown names.
type testUpstream struct {
	addr string

	mu   sync.Mutex
	got  []upQuery
	zone []dns.RR
	// override, when set, answers instead of the zone; return nil to fall
	// back to the zone.
	override func(r *dns.Msg, tcp bool) *dns.Msg
}

const testSOA = "test. 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 30"

func startUpstream(t *testing.T, records ...string) *testUpstream {
	t.Helper()
	u := &testUpstream{}
	for _, r := range records {
		u.zone = append(u.zone, mustRR(t, r))
	}
	pc, ln := listenPair(t)
	u.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: u.handler(false)},
		{Listener: ln, Handler: u.handler(true)},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return u
}

// listenPair binds UDP and TCP on the same free loopback port.
func listenPair(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			t.Fatal(err)
		}
		return pc, ln
	}
	t.Fatal("no free port pair")
	return nil, nil
}

func mustRR(t testing.TB, s string) dns.RR {
	t.Helper()
	rr, err := dns.NewRR(s)
	if err != nil {
		t.Fatalf("bad test record %q: %v", s, err)
	}
	return rr
}

func (u *testUpstream) handler(tcp bool) dns.HandlerFunc {
	return func(w dns.ResponseWriter, r *dns.Msg) {
		u.mu.Lock()
		u.got = append(u.got, upQuery{msg: r.Copy(), tcp: tcp})
		override := u.override
		u.mu.Unlock()
		var resp *dns.Msg
		if override != nil {
			resp = override(r, tcp)
		}
		if resp == nil {
			resp = u.resolve(r)
		}
		_ = w.WriteMsg(resp)
	}
}

func (u *testUpstream) resolve(r *dns.Msg) *dns.Msg {
	u.mu.Lock()
	defer u.mu.Unlock()
	resp := new(dns.Msg)
	resp.SetReply(r)
	resp.RecursionAvailable = true
	if len(r.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		return resp
	}
	q := r.Question[0]
	cur := strings.ToLower(q.Name)
	exists := false
	for range 10 {
		var cname *dns.CNAME
		for _, rr := range u.zone {
			if strings.EqualFold(rr.Header().Name, cur) {
				exists = true
				if c, ok := rr.(*dns.CNAME); ok && q.Qtype != dns.TypeCNAME {
					cname = c
				}
			}
		}
		if cname == nil {
			break
		}
		resp.Answer = append(resp.Answer, cname)
		cur = strings.ToLower(cname.Target)
		exists = false
	}
	for _, rr := range u.zone {
		if strings.EqualFold(rr.Header().Name, cur) {
			exists = true
			if rr.Header().Rrtype == q.Qtype {
				resp.Answer = append(resp.Answer, rr)
			}
		}
	}
	if !exists {
		resp.Rcode = dns.RcodeNameError
	}
	if len(resp.Answer) == 0 || !exists {
		soa, _ := dns.NewRR(testSOA)
		resp.Ns = []dns.RR{soa}
	}
	return resp
}

func (u *testUpstream) queries() []upQuery {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]upQuery(nil), u.got...)
}

// names returns the question names the upstream saw, in order.
func (u *testUpstream) names() []string {
	var out []string
	for _, q := range u.queries() {
		for _, qq := range q.msg.Question {
			out = append(out, qq.Name)
		}
	}
	return out
}

func (u *testUpstream) count() int { return len(u.queries()) }

func (u *testUpstream) setOverride(f func(r *dns.Msg, tcp bool) *dns.Msg) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.override = f
}

// syncBuffer is the audit logger's sink, read as records.
type syncBuffer struct{ syncbuf.Buffer }

// reset drops the records written so far (the tests' audit Logger writes
// each record as it is logged).
func (s *syncBuffer) reset() { s.Reset() }

func (s *syncBuffer) records(t *testing.T) []audit.Record {
	t.Helper()
	var out []audit.Record
	for _, line := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		if line == "" {
			continue
		}
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// matcher compiles a filtered-mode policy from pattern texts.
func matcher(t testing.TB, allow, block []string) *policy.Matcher {
	t.Helper()
	return matcherWith(t, allow, block, nil)
}

// matcherWith is matcher with the rest of the network policy set by mod.
func matcherWith(t testing.TB, allow, block []string, mod func(*policy.NetworkPolicy)) *policy.Matcher {
	t.Helper()
	var np policy.NetworkPolicy
	np.Mode = policy.ModeFiltered
	for i, text := range allow {
		r, err := policy.ParseRule(text, policy.Source{Kind: policy.SourceFile, File: "policy.toml", Line: 10 + i})
		if err != nil {
			t.Fatalf("allow %q: %v", text, err)
		}
		np.Allow = append(np.Allow, r)
	}
	for i, text := range block {
		r, err := policy.ParseRule(text, policy.Source{Kind: policy.SourceFile, File: "policy.toml", Line: 20 + i})
		if err != nil {
			t.Fatalf("block %q: %v", text, err)
		}
		np.Block = append(np.Block, r)
	}
	if mod != nil {
		mod(&np)
	}
	m, err := policy.NewMatcher(np)
	if err != nil {
		t.Fatalf("NewMatcher: %v", err)
	}
	return m
}

// testEnv is a dnsfilter.Server serving on 127.0.0.1 in front of a test
// upstream.
type testEnv struct {
	t     *testing.T
	srv   *Server
	addr  string
	up    *testUpstream
	live  *policy.Live
	clock *fakeClock
	audit *syncBuffer
	reg   *metrics.Registry
}

// newEnv starts a Server allowing allow and blocking block, with an
// unlimited query rate and a fake clock unless mod changes them.
func newEnv(t *testing.T, up *testUpstream, allow, block []string, mod func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, up: up, live: &policy.Live{}, clock: newFakeClock(), audit: &syncBuffer{}, reg: metrics.NewRegistry()}
	e.live.Store(matcher(t, allow, block))
	cfg := Config{
		Policy:    e.live,
		Upstreams: []string{up.addr},
		QueryRate: -1,
		Audit:     audit.New(e.audit, "sb-test"),
		Metrics:   e.reg,
		Now:       e.clock.Now,
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.srv = srv
	e.serve()
	return e
}

func (e *testEnv) serve() {
	t := e.t
	t.Helper()
	if err := e.srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	e.addr = e.srv.Addrs()[0].String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
	})
}

// ask sends one query over UDP (no EDNS) and returns the reply.
func (e *testEnv) ask(name string, qtype uint16) *dns.Msg {
	e.t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return exchange(e.t, e.addr, m, "udp")
}

func exchange(t testing.TB, addr string, m *dns.Msg, network string) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %v over %s: %v", m.Question, network, err)
	}
	return r
}

// answerAddrs lists the A/AAAA addresses of a reply, in order.
func answerAddrs(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		}
	}
	return out
}

func rcode(m *dns.Msg) string { return dns.RcodeToString[m.Rcode] }

// metricValue reads an unlabelled series of the resolver's registry.
func (e *testEnv) metricValue(name string) float64 {
	e.t.Helper()
	v, ok := metricstest.Value(e.t, e.reg, name, nil)
	if !ok {
		e.t.Fatalf("no series %s", name)
	}
	return v
}
