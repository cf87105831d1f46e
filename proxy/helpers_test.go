package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/syncbuf"
	"github.com/egressd/egressd/policy"
)

// policyFile builds a live policy from "allow X" / "block X" lines keyed by
// their line number in a notional policy.toml.
func policyFile(t testing.TB, lines map[int]string) *policy.Live {
	t.Helper()
	var np policy.NetworkPolicy
	nums := make([]int, 0, len(lines))
	for n := range lines {
		nums = append(nums, n)
	}
	sort.Ints(nums)
	for _, n := range nums {
		verb, text, ok := strings.Cut(lines[n], " ")
		if !ok {
			t.Fatalf("policy line %q: want \"allow X\" or \"block X\"", lines[n])
		}
		r, err := policy.ParseRule(text, policy.Source{Kind: policy.SourceFile, File: "policy.toml", Line: n})
		if err != nil {
			t.Fatalf("policy line %d: %v", n, err)
		}
		switch verb {
		case "allow":
			np.Allow = append(np.Allow, r)
		case "block":
			np.Block = append(np.Block, r)
		default:
			t.Fatalf("policy line %q: unknown verb", lines[n])
		}
	}
	m, err := policy.NewMatcher(np)
	if err != nil {
		t.Fatalf("NewMatcher: %v", err)
	}
	var live policy.Live
	live.Store(m)
	return &live
}

// policyOf numbers rules 1, 2, 3...
func policyOf(t testing.TB, rules ...string) *policy.Live {
	lines := make(map[int]string, len(rules))
	for i, r := range rules {
		lines[i+1] = r
	}
	return policyFile(t, lines)
}

// fakeResolver maps test names to addresses and counts lookups.
type fakeResolver struct {
	mu    sync.Mutex
	addrs map[string][]netip.Addr
	fn    func(name string, call int) []netip.Addr // overrides addrs when set
	errs  map[string]error                         // the error Resolve returns for a name
	calls map[string]int
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{addrs: map[string][]netip.Addr{}, errs: map[string]error{}, calls: map[string]int{}}
}

// fail makes Resolve(name) return err.
func (r *fakeResolver) fail(name string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs[name] = err
}

func (r *fakeResolver) set(name string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	r.addrs[name] = as
}

func (r *fakeResolver) Resolve(_ context.Context, name string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[name]++
	if err := r.errs[name]; err != nil {
		return nil, err
	}
	if r.fn != nil {
		return r.fn(name, r.calls[name]), nil
	}
	as, ok := r.addrs[name]
	if !ok {
		return nil, fmt.Errorf("NXDOMAIN %s", name)
	}
	return as, nil
}

func (r *fakeResolver) callsFor(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[name]
}

// fakeLearned is a learned-address table.
type fakeLearned map[netip.Addr][]string

func (l fakeLearned) LearnedNames(a netip.Addr) []string { return l[a] }

// auditSink collects audit lines.
type auditSink struct{ syncbuf.Buffer }

func (s *auditSink) records(t testing.TB) []audit.Record {
	t.Helper()
	var out []audit.Record
	for line := range strings.SplitSeq(strings.TrimSpace(s.String()), "\n") {
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

// waitRecords waits until at least n audit records were written.
func (s *auditSink) waitRecords(t testing.TB, n int) []audit.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rs := s.records(t)
		if len(rs) >= n || time.Now().After(deadline) {
			return rs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// harness runs a Proxy with an explicit listener on 127.0.0.1.
type harness struct {
	t     *testing.T
	p     *Proxy
	live  *policy.Live
	res   *fakeResolver
	audit *auditSink
	addr  string
	done  chan error
}

func newHarness(t *testing.T, live *policy.Live, opts ...func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, live: live, res: newFakeResolver(), audit: &auditSink{}, done: make(chan error, 1)}
	cfg := Config{
		Policy:        live,
		Resolver:      h.res,
		Audit:         audit.New(h.audit, "test"),
		HeaderTimeout: 2 * time.Second,
		IdleTimeout:   10 * time.Second,
		DialTimeout:   2 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.p = p
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	go func() { h.done <- p.ServeExplicit(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
		if err := <-h.done; !errors.Is(err, ErrClosed) {
			t.Errorf("ServeExplicit returned %v, want ErrClosed", err)
		}
		if n := p.OpenTunnels(); n != 0 {
			t.Errorf("%d tunnels open after Shutdown", n)
		}
	})
	return h
}

// dial opens a client connection to the explicit listener.
func (h *harness) dial() net.Conn {
	h.t.Helper()
	c, err := net.DialTimeout("tcp", h.addr, 2*time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// connect sends CONNECT authority on a new connection and reads the
// answer; on 200 the connection is the tunnel.
func (h *harness) connect(authority string) (net.Conn, *http.Response, string) {
	h.t.Helper()
	c := h.dial()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", authority, authority)
	resp, body := readResponse(h.t, c, "CONNECT")
	return c, resp, body
}

// readResponse reads one response from c without reading past it.
func readResponse(t testing.TB, c net.Conn, method string) (*http.Response, string) {
	t.Helper()
	br := bufio.NewReaderSize(&oneByteReader{c}, 1)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	for err == nil && resp.StatusCode/100 == 1 {
		resp, err = http.ReadResponse(br, &http.Request{Method: method})
	}
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	if method == "CONNECT" && resp.StatusCode == http.StatusOK {
		return resp, ""
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading response body: %v", err)
	}
	return resp, string(b)
}

// oneByteReader reads one byte at a time so nothing after a response head
// is consumed.
type oneByteReader struct{ c net.Conn }

func (r *oneByteReader) Read(p []byte) (int, error) { return r.c.Read(p[:min(len(p), 1)]) }

// request sends raw on a new connection and reads one response.
func (h *harness) request(raw string) (*http.Response, string) {
	h.t.Helper()
	c := h.dial()
	if _, err := io.WriteString(c, raw); err != nil {
		h.t.Fatal(err)
	}
	method, _, _ := strings.Cut(raw, " ")
	return readResponse(h.t, c, method)
}

// tunnelClosed reports whether the far end closed or reset c (within 3s).
func tunnelClosed(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := io.ReadAll(c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// upstreamHTTP is a plain-HTTP upstream on 127.0.0.1 that records requests.
type upstreamHTTP struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []*http.Request
	port uint16
}

func newUpstreamHTTP(t *testing.T) *upstreamHTTP {
	u := &upstreamHTTP{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r2 := r.Clone(context.Background())
		r2.Body = io.NopCloser(bytes.NewReader(body))
		u.mu.Lock()
		u.reqs = append(u.reqs, r2)
		u.mu.Unlock()
		fmt.Fprintf(w, "hello %s %s body=%d", r.Host, r.URL.Path, len(body))
	}))
	t.Cleanup(u.srv.Close)
	u.port = netip.MustParseAddrPort(u.srv.Listener.Addr().String()).Port()
	return u
}

func (u *upstreamHTTP) requests() []*http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*http.Request(nil), u.reqs...)
}

// upstreamTLS is an HTTPS upstream on 127.0.0.1 that records the SNI of
// every handshake.
type upstreamTLS struct {
	srv  *httptest.Server
	mu   sync.Mutex
	snis []string
	port uint16
}

func newUpstreamTLS(t *testing.T) *upstreamTLS {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstreamTLS{}
	u.srv = newTLSServerOn(ln, u)
	t.Cleanup(u.srv.Close)
	return u
}

// newTLSServerOn serves HTTPS on ln, recording SNIs into u.
func newTLSServerOn(ln net.Listener, u *upstreamTLS) *httptest.Server {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls hello %s", r.Host)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		u.mu.Lock()
		u.snis = append(u.snis, chi.ServerName)
		u.mu.Unlock()
		return nil, nil
	}}
	srv.StartTLS()
	u.port = netip.MustParseAddrPort(ln.Addr().String()).Port()
	return srv
}

func (u *upstreamTLS) handshakes() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.snis...)
}

// tcpRecorder is a TCP upstream that counts connections and bytes, and
// echoes (or, with banner set, greets first).
type tcpRecorder struct {
	ln     net.Listener
	mu     sync.Mutex
	conns  int
	bytes  int
	banner string
	port   uint16
}

func newTCPRecorder(t *testing.T, addr string) *tcpRecorder {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	r := &tcpRecorder{ln: ln, port: netip.MustParseAddrPort(ln.Addr().String()).Port()}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.conns++
			banner := r.banner
			r.mu.Unlock()
			go func() {
				defer c.Close()
				if banner != "" {
					_, _ = io.WriteString(c, banner)
				}
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					r.mu.Lock()
					r.bytes += n
					r.mu.Unlock()
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return r
}

func (r *tcpRecorder) stats() (conns, bytes int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns, r.bytes
}

// echo writes msg on c and expects it back.
func echo(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("echo read: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

// tlsGet runs a TLS handshake with serverName over c and one GET; it
// returns the body or the error.
func tlsGet(c net.Conn, serverName string) (string, error) {
	tc := tls.Client(c, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		return "", err
	}
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", serverName)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// byKind filters audit records.
func byKind(rs []audit.Record, kind audit.Kind) []audit.Record {
	var out []audit.Record
	for _, r := range rs {
		if r.Kind == kind {
			out = append(out, r)
		}
	}
	return out
}
