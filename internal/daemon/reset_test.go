package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
)

// tenant is one daemon on loopback with a policy file, its admin socket, a
// miekg/dns upstream and a TCP echo server the policy may allow.
type tenant struct {
	t       *testing.T
	d       *Daemon
	dnsAddr string
	proxy   string
	pol     string
	seen    func(name string) int
	echo    *echoServer
	admin   *http.Client
}

func newTenant(t *testing.T) *tenant {
	t.Helper()
	up, seen := startUpstream(t)
	dir := t.TempDir()
	tn := &tenant{t: t, pol: filepath.Join(dir, "policy.toml"), seen: seen, echo: startEcho(t)}
	tn.setPolicy("a.test", tn.echo.addr.String())
	sock := filepath.Join(dir, "admin.sock")
	tn.d, tn.dnsAddr = startDaemon(t, Config{
		PolicyFiles: []string{tn.pol},
		DNSListen:   []string{"127.0.0.1:0"},
		ProxyListen: []string{"127.0.0.1:0"},
		AdminListen: "unix:" + sock,
		UpstreamDNS: []string{up},
	})
	tn.proxy = tn.d.ProxyAddrs()[0].String()
	tn.admin = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	return tn
}

// setPolicy writes the policy file: allow exactly these entries.
func (tn *tenant) setPolicy(allow ...string) {
	q := make([]string, len(allow))
	for i, a := range allow {
		q[i] = fmt.Sprintf("%q", a)
	}
	writePolicy(tn.t, tn.pol, "version = 1\nprofile = \"strict\"\n[network]\nallow = ["+strings.Join(q, ", ")+"]\n")
}

// call sends one admin request and decodes a JSON answer into out.
func (tn *tenant) call(method, path string, out any) int {
	tn.t.Helper()
	req, _ := http.NewRequest(method, "http://egressd-admin"+path, nil)
	resp, err := tn.admin.Do(req)
	if err != nil {
		tn.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			tn.t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

// reset is POST /reset; the test fails (and goes on) unless it answers
// 200. It returns the state the answer holds.
func (tn *tenant) reset() State {
	tn.t.Helper()
	var ans struct {
		State
		Error string `json:"error"`
		Held  *State `json:"state"`
	}
	if code := tn.call(http.MethodPost, "/reset", &ans); code != http.StatusOK {
		tn.t.Errorf("POST /reset: %d %s", code, ans.Error)
		return *ans.Held
	}
	return ans.State
}

func (tn *tenant) reload() {
	tn.t.Helper()
	if code := tn.call(http.MethodPost, "/reload", nil); code != http.StatusOK {
		tn.t.Fatalf("POST /reload: %d", code)
	}
}

func (tn *tenant) state() State {
	tn.t.Helper()
	var st State
	if code := tn.call(http.MethodGet, "/state", &st); code != http.StatusOK {
		tn.t.Fatalf("GET /state: %d", code)
	}
	return st
}

// connect opens a CONNECT tunnel through the explicit proxy and returns it
// with the status the proxy answered.
func (tn *tenant) connect(target string) (net.Conn, *bufio.Reader, int) {
	tn.t.Helper()
	c, err := net.Dial("tcp", tn.proxy)
	if err != nil {
		tn.t.Fatal(err)
	}
	tn.t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return c, br, 0
	}
	resp.Body.Close()
	return c, br, resp.StatusCode
}

// echoServer echoes lines and counts the connections open to it.
type echoServer struct {
	addr netip.AddrPort
	open atomic.Int64
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{addr: netip.MustParseAddrPort(ln.Addr().String())}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.open.Add(1)
			wg.Go(func() {
				defer e.open.Add(-1)
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	return e
}

func queryTCP(t *testing.T, c *dns.Conn, name string) int {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.WriteMsg(m); err != nil {
		t.Fatalf("query %s over TCP: %v", name, err)
	}
	in, err := c.ReadMsg()
	if err != nil {
		t.Fatalf("query %s over TCP: %v", name, err)
	}
	return in.Rcode
}

// closedWithin reports whether c's peer closed (EOF or reset) before d,
// without a byte of data coming first.
func closedWithin(c net.Conn, br *bufio.Reader, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := br.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// TestResetClosesTenantsConnectTunnel: tenant A's long-lived CONNECT tunnel
// to an allowed server ends at the reset (the client sees its end, the
// server sees its upstream connection closed), and the same CONNECT is
// then denied under the deny-everything policy.
func TestResetClosesTenantsConnectTunnel(t *testing.T) {
	tn := newTenant(t)
	target := tn.echo.addr.String()
	c, br, code := tn.connect(target)
	if code != http.StatusOK {
		t.Fatalf("CONNECT %s as tenant A: %d, want 200", target, code)
	}
	fmt.Fprintf(c, "ping\n")
	if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo through the tunnel: %q %v", line, err)
	}
	// A connection accepted but not decided yet when the reset comes.
	undecided, err := net.Dial("tcp", tn.proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer undecided.Close()
	waitFor(t, "the undecided connection to be registered", func() bool { return tn.d.proxy.OpenTunnels() == 2 })

	st := tn.reset()
	if !st.Empty || st.Policy.Source != sourceReset {
		t.Errorf("POST /reset answered %+v, want empty under the reset policy", st)
	}
	if !closedWithin(c, br, 2*time.Second) {
		t.Fatal("tenant A's tunnel is still open after the reset")
	}
	waitFor(t, "the echo server to see its connection closed", func() bool { return tn.echo.open.Load() == 0 })

	// The undecided connection is decided under the new policy, or refused.
	fmt.Fprintf(undecided, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	_ = undecided.SetReadDeadline(time.Now().Add(2 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(undecided), &http.Request{Method: http.MethodConnect}); err == nil && resp.StatusCode == http.StatusOK {
		t.Errorf("a connection accepted before the reset was allowed after it")
	}
	if _, _, code := tn.connect(target); code != http.StatusForbidden {
		t.Errorf("CONNECT %s after the reset: %d, want 403 (deny everything)", target, code)
	}
	if n := tn.echo.open.Load(); n != 0 {
		t.Errorf("the echo server has %d connections open", n)
	}
}

// TestResetForgetsTenantsCachedAnswer: an answer tenant A's query put in
// the cache is not served after the reset, neither under the reset policy
// (the name is refused, the upstream sees nothing) nor under a next policy
// that allows the same name (the upstream sees a new query).
func TestResetForgetsTenantsCachedAnswer(t *testing.T) {
	tn := newTenant(t)
	for range 2 {
		if rc := query(t, tn.dnsAddr, "a.test"); rc != dns.RcodeSuccess {
			t.Fatalf("a.test as tenant A: %s", dns.RcodeToString[rc])
		}
	}
	if n := tn.seen("a.test"); n != 1 {
		t.Fatalf("upstream saw %d queries for a.test, want 1 (the second was cached)", n)
	}
	tn.reset()
	if rc := query(t, tn.dnsAddr, "a.test"); rc != dns.RcodeNameError || tn.seen("a.test") != 1 {
		t.Errorf("a.test after the reset: %s, upstream saw %d; want NXDOMAIN, nothing forwarded", dns.RcodeToString[rc], tn.seen("a.test"))
	}
	// Tenant B allows the same name.
	tn.setPolicy("a.test")
	tn.reload()
	if rc := query(t, tn.dnsAddr, "a.test"); rc != dns.RcodeSuccess || tn.seen("a.test") != 2 {
		t.Errorf("a.test as tenant B: %s, upstream saw %d queries; want NOERROR from a new query (2)", dns.RcodeToString[rc], tn.seen("a.test"))
	}
}

// TestResetForgetsTenantsLearnedAddresses: the address tenant A's answer
// taught the learned-address table (what admits name-less TCP on the
// transparent listener) is forgotten, also under a next policy that allows
// the name: tenant B never asked for it.
func TestResetForgetsTenantsLearnedAddresses(t *testing.T) {
	tn := newTenant(t)
	learnedAddr := netip.MustParseAddr("203.0.113.10")
	if rc := query(t, tn.dnsAddr, "a.test"); rc != dns.RcodeSuccess {
		t.Fatalf("a.test as tenant A: %s", dns.RcodeToString[rc])
	}
	if diff := cmp.Diff([]string{"a.test"}, tn.d.dns.LearnedNames(learnedAddr)); diff != "" {
		t.Fatalf("learned names of %s as tenant A (-want +got):\n%s", learnedAddr, diff)
	}
	tn.reset()
	tn.setPolicy("a.test")
	tn.reload()
	if got := tn.d.dns.LearnedNames(learnedAddr); len(got) != 0 {
		t.Errorf("tenant B inherits %s learned for %v", learnedAddr, got)
	}
	if n := tn.state().DNS.LearnedAddresses; n != 0 {
		t.Errorf("GET /state: %d learned addresses, want 0", n)
	}
}

// TestStateCountsWhatTheTenantLeft: GET /state counts the real tables and
// connections (so an empty state means something), and the reset empties
// every one of them.
func TestStateCountsWhatTheTenantLeft(t *testing.T) {
	tn := newTenant(t)
	if rc := query(t, tn.dnsAddr, "a.test"); rc != dns.RcodeSuccess {
		t.Fatalf("a.test: %s", dns.RcodeToString[rc])
	}
	dc, err := dns.Dial("tcp", tn.dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if rc := queryTCP(t, dc, "a.test"); rc != dns.RcodeSuccess {
		t.Fatalf("a.test over TCP: %s", dns.RcodeToString[rc])
	}
	c, br, code := tn.connect(tn.echo.addr.String())
	if code != http.StatusOK {
		t.Fatalf("CONNECT: %d", code)
	}
	fmt.Fprintf(c, "x\n")
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	before := tn.state()
	if before.Empty || before.Policy.Source != sourcePolicy || before.HeldForReload {
		t.Errorf("state of tenant A: %+v, want not empty, source policy, not held", before)
	}
	want := struct{ cache, learned, buckets, tcp, explicit, tunnels int }{1, 1, 1, 1, 1, 1}
	got := struct{ cache, learned, buckets, tcp, explicit, tunnels int }{
		before.DNS.CacheEntries, before.DNS.LearnedAddresses, before.DNS.RateLimitClients,
		before.DNS.TCPConnections, before.Proxy.ExplicitConnections, before.Proxy.Tunnels,
	}
	if got != want {
		t.Errorf("state of tenant A: %+v, want %+v", got, want)
	}

	after := tn.reset()
	if got := tn.state(); got.Policy != after.Policy {
		t.Errorf("GET /state policy %+v, POST /reset said %+v", got.Policy, after.Policy)
	}
	wantAfter := State{Policy: after.Policy, HeldForReload: true, Empty: true}
	if diff := cmp.Diff(wantAfter, tn.state()); diff != "" {
		t.Errorf("GET /state after the reset (-want +got):\n%s", diff)
	}
	if after.Policy.Generation <= before.Policy.Generation || after.Policy.AllowRules != 0 || after.Policy.Digest == before.Policy.Digest {
		t.Errorf("policy after the reset %+v, before %+v: want a new generation, no allow rule, another digest", after.Policy, before.Policy)
	}
	// The TCP client was closed (not merely silent).
	_ = dc.SetDeadline(time.Now().Add(2 * time.Second))
	var ne net.Error
	if _, err := dc.ReadMsg(); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("the DNS TCP connection of tenant A is still open (read: %v)", err)
	}
	if v := counterValue(tn.d.reset.resets); v != 1 {
		t.Errorf("egressd_resets_total = %v, want 1", v)
	}
}

// TestResetHoldsTheWatcherUntilAnExplicitReload: after a reset, a change
// of the policy file (a late event of the last tenant's write) does not
// put the file back in force; POST /reload does.
func TestResetHoldsTheWatcherUntilAnExplicitReload(t *testing.T) {
	tn := newTenant(t)
	tn.reset()
	tn.setPolicy("b.test")
	// The watcher's reload runs within its debounce; give it ample time.
	time.Sleep(700 * time.Millisecond)
	if st := tn.state(); st.Policy.Source != sourceReset || !st.HeldForReload {
		t.Fatalf("a file change after the reset put %+v in force", st.Policy)
	}
	if rc := query(t, tn.dnsAddr, "b.test"); rc != dns.RcodeNameError {
		t.Errorf("b.test before the explicit reload: %s, want NXDOMAIN", dns.RcodeToString[rc])
	}
	tn.reload()
	if st := tn.state(); st.Policy.Source != sourcePolicy || st.HeldForReload || st.Policy.AllowRules != 1 {
		t.Errorf("after POST /reload: %+v", st)
	}
	if rc := query(t, tn.dnsAddr, "b.test"); rc != dns.RcodeSuccess {
		t.Errorf("b.test after the explicit reload: %s, want NOERROR", dns.RcodeToString[rc])
	}
}

// TestNoAnswerOfTheLastTenantAfterReset races resets against queries and
// tunnels (run it with -race): a query sent after a reset returned, before
// the next policy is loaded, is never answered from the last tenant's
// policy or cache, and when the clients stop, one reset leaves nothing.
func TestNoAnswerOfTheLastTenantAfterReset(t *testing.T) {
	tn := newTenant(t)
	// phase is odd while tenant A's policy is in force, even from the
	// moment a reset returned until the next reload starts.
	var phase atomic.Uint64
	phase.Store(1)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var violations, answered atomic.Int64
	for range 4 {
		wg.Go(func() {
			cl := &dns.Client{Timeout: 2 * time.Second}
			for ctx.Err() == nil {
				p := phase.Load()
				m := new(dns.Msg)
				m.SetQuestion("a.test.", dns.TypeA)
				in, _, err := cl.Exchange(m, tn.dnsAddr)
				if err != nil {
					continue
				}
				answered.Add(1)
				if p%2 == 0 && phase.Load() == p && in.Rcode == dns.RcodeSuccess {
					violations.Add(1)
				}
			}
		})
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			c, err := net.Dial("tcp", tn.proxy)
			if err != nil {
				continue
			}
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\n\r\nping\n", tn.echo.addr)
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	})
	for range 20 {
		time.Sleep(5 * time.Millisecond)
		if _, err := tn.d.Reset(context.Background()); err != nil {
			t.Errorf("Reset under load: %v", err)
		}
		phase.Add(1) // even: the reset returned
		time.Sleep(5 * time.Millisecond)
		phase.Add(1) // odd: the next reload starts
		if err := tn.d.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	if n := violations.Load(); n != 0 {
		t.Errorf("%d queries sent after a reset returned were answered from the last tenant's policy", n)
	}
	if answered.Load() == 0 {
		t.Error("no query was answered: the race did not run")
	}
	st := tn.reset()
	if !st.Empty {
		t.Errorf("final reset: state %+v", st)
	}
}

// TestQueryInFlightDuringResetIsDecidedAgain: a query of tenant A whose
// upstream lookup is still running when the reset comes gets no answer
// decided under A's policy: it is decided again under the policy in force
// when it is answered (NXDOMAIN under deny-everything).
func TestQueryInFlightDuringResetIsDecidedAgain(t *testing.T) {
	release := make(chan struct{})
	var asked atomic.Int64
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	slow := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		asked.Add(1)
		<-release
		m := new(dns.Msg)
		m.SetReply(r)
		rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A 203.0.113.10")
		m.Answer = append(m.Answer, rr)
		_ = w.WriteMsg(m)
	})}
	go func() { _ = slow.ActivateAndServe() }()
	t.Cleanup(func() { close(release); _ = slow.Shutdown() })

	pol := filepath.Join(t.TempDir(), "policy.toml")
	writePolicy(t, pol, "version = 1\nprofile = \"strict\"\n[network]\nallow = [\"a.test\"]\n")
	d, dnsAddr := startDaemon(t, Config{PolicyFiles: []string{pol}, DNSListen: []string{"127.0.0.1:0"}, UpstreamDNS: []string{pc.LocalAddr().String()}})
	rc := make(chan int, 1)
	go func() {
		m := new(dns.Msg)
		m.SetQuestion("a.test.", dns.TypeA)
		in, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, dnsAddr)
		if err != nil {
			rc <- -1
			return
		}
		rc <- in.Rcode
	}()
	waitFor(t, "the upstream to be asked", func() bool { return asked.Load() > 0 })
	start := time.Now()
	if _, err := d.Reset(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The reset cancels the lookup: it ends long before the upstream
	// timeout (2s) would end it.
	for d.State().DNS.LookupsInFlight != 0 {
		if time.Since(start) > time.Second {
			t.Fatal("the upstream lookup of the last tenant still runs 1s after the reset")
		}
		time.Sleep(time.Millisecond)
	}
	if st := d.State(); !st.Empty {
		t.Errorf("state after the reset: %+v", st)
	}
	if got := <-rc; got != dns.RcodeNameError {
		t.Errorf("the query in flight during the reset got rcode %d, want NXDOMAIN (decided again under deny-everything)", got)
	}
	if got := d.dns.LearnedNames(netip.MustParseAddr("203.0.113.10")); len(got) != 0 {
		t.Errorf("learned %v from a lookup of the last tenant", got)
	}
}
