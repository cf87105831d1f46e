package proxy

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/inspectca"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/metrics/metricstest"
	"github.com/egressd/egressd/policy"
)

// The secret and placeholder of the tests' credential.
const (
	testSecret      = "sk-real-SECRET-0123456789"
	testPlaceholder = "egressd-placeholder-MODEL_KEY"
)

// inspectLive compiles a policy file text into a live policy.
func inspectLive(t testing.TB, text string) *policy.Live {
	t.Helper()
	f, err := policy.ParseFile("policy.toml", []byte(text))
	if err != nil {
		t.Fatalf("policy:\n%v", err)
	}
	p, _, err := policy.ResolveFiles("strict", []*policy.File{f}, nil, "")
	if err != nil {
		t.Fatalf("policy:\n%v", err)
	}
	m, err := policy.NewMatcher(p.NetworkPolicy())
	if err != nil {
		t.Fatal(err)
	}
	var live policy.Live
	live.Store(m)
	return &live
}

const inspectTestPolicy = `version = 1
[network]
allow = ["api.test:*", "other.test:*", "spliced.test:*", "127.0.0.1:*"]

[[network.inspect]]
host = "api.test"
methods = ["GET", "POST"]
paths = ["/v1/messages", "/v1/sse", "/v1/echo", "/v1/ws", "/v1/gzip", "/v1/files/**", "/v1/big", "/v1/reflect", "/v1/malformed"]
block_paths = ["/v1/files/**"]

[[network.inspect]]
host = "other.test"

[[network.credentials]]
host = "api.test"
header = "x-api-key"
secret = "MODEL_KEY"
`

// inspectUpstream is an HTTPS server on 127.0.0.1 with a certificate for
// any name, signed by its own CA (the "public" CA egressd verifies
// upstreams against), recording what it was sent.
type inspectUpstream struct {
	srv   *httptest.Server
	roots *x509.CertPool
	port  uint16
	mu    sync.Mutex
	reqs  []*http.Request
	conns int
}

func newInspectUpstream(t *testing.T) *inspectUpstream {
	t.Helper()
	certPEM, keyPEM, err := inspectca.Generate("upstream", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := inspectca.Load(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	u := &inspectUpstream{roots: x509.NewCertPool()}
	u.roots.AppendCertsFromPEM(certPEM)
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(u.serve))
	u.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	u.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			u.mu.Lock()
			u.conns++
			u.mu.Unlock()
		}
	}
	u.srv.TLS = &tls.Config{GetCertificate: func(chi *tls.ClientHelloInfo) (*tls.Certificate, error) {
		return ca.Certificate(chi.ServerName)
	}}
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	u.port = netip.MustParseAddrPort(u.srv.Listener.Addr().String()).Port()
	return u
}

func (u *inspectUpstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc := r.Clone(context.Background())
	rc.Body = io.NopCloser(strings.NewReader(string(body)))
	u.mu.Lock()
	u.reqs = append(u.reqs, rc)
	u.mu.Unlock()
	switch r.URL.Path {
	case "/v1/sse":
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: event %d\n\n", i)
			http.NewResponseController(w).Flush()
			time.Sleep(400 * time.Millisecond)
		}
	case "/v1/echo": // an API that reflects the key it was given
		w.Header().Set("X-Seen-Key", r.Header.Get("X-Api-Key"))
		fmt.Fprintf(w, `{"key":%q}`, r.Header.Get("X-Api-Key"))
	case "/v1/gzip":
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		fmt.Fprintf(zw, "gzipped key %s", r.Header.Get("X-Api-Key"))
		zw.Close()
	case "/v1/ws":
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want an upgrade", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		buf := make([]byte, 64)
		n, _ := brw.Read(buf)
		fmt.Fprintf(c, "echo %s key %s", buf[:n], r.Header.Get("X-Api-Key"))
	case "/v1/reflect", "/v1/malformed":
		reflectKey(w, r)
	default:
		fmt.Fprintf(w, "upstream %s %s %s", r.Method, r.Host, r.URL.RequestURI())
	}
}

func (u *inspectUpstream) requests() []*http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*http.Request(nil), u.reqs...)
}

// inspectHarness is an explicit proxy whose policy inspects api.test and
// other.test, with an upstream serving both (and spliced.test).
type inspectHarness struct {
	*harness
	up *inspectUpstream
	ca *inspectca.CA
}

func newInspectHarness(t *testing.T, opts ...func(*Config)) *inspectHarness {
	t.Helper()
	return newInspectHarnessWith(t, inspectTestPolicy, opts...)
}

// newInspectHarnessWith is newInspectHarness under another policy.
func newInspectHarnessWith(t *testing.T, policyText string, opts ...func(*Config)) *inspectHarness {
	t.Helper()
	up := newInspectUpstream(t)
	certPEM, keyPEM, err := inspectca.Generate("sandbox", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := inspectca.Load(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, inspectLive(t, policyText), append([]func(*Config){func(c *Config) {
		c.Inspect = &Inspect{CA: ca, UpstreamRoots: up.roots, Secrets: map[string]string{"MODEL_KEY": testSecret}}
	}}, opts...)...)
	for _, n := range []string{"api.test", "other.test", "spliced.test"} {
		h.res.set(n, "127.0.0.1")
	}
	return &inspectHarness{harness: h, up: up, ca: ca}
}

// client returns an HTTP client using the explicit proxy and trusting the
// inspection CA (h2 when http2 is set).
func (ih *inspectHarness) client(http2 bool) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ih.ca.CertPEM())
	pu, _ := url.Parse("http://" + ih.addr)
	tr := &http.Transport{
		Proxy:             http.ProxyURL(pu),
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: http2,
	}
	if !http2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	ih.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func (ih *inspectHarness) url(host, path string) string {
	return fmt.Sprintf("https://%s:%d%s", host, ih.up.port, path)
}

func doReq(t *testing.T, c *http.Client, method, u string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// THREATS A2/A7: inside a TLS session for an allowed name, a request for
// another Host — first on the connection or after an allowed one, over
// HTTP/1.1 or HTTP/2 — is refused, and the upstream never sees it.
func TestInspectedSessionRefusesHostOtherThanTLSName(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("http2=%v", h2), func(t *testing.T) {
			ih := newInspectHarness(t)
			c := ih.client(h2)
			resp, body := doReq(t, c, "GET", ih.url("api.test", "/v1/messages"), nil)
			if resp.StatusCode != 200 || !strings.HasPrefix(body, "upstream GET api.test") {
				t.Fatalf("allowed request: %d %q", resp.StatusCode, body)
			}
			if h2 && resp.ProtoMajor != 2 {
				t.Errorf("client spoke %s to egressd, want HTTP/2", resp.Proto)
			}
			resp, _ = doReq(t, c, "CONNECT", ih.url("api.test", "/"), map[string]string{"Host": fmt.Sprintf("api.test:%d", ih.up.port)})
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("CONNECT inside the session: %d, want 405", resp.StatusCode)
			}
			resp, body = doReq(t, c, "GET", ih.url("api.test", "/v1/messages"), map[string]string{"Host": "evil.test"})
			if resp.StatusCode != http.StatusMisdirectedRequest || !strings.Contains(resp.Header.Get("X-Egressd-Denied"), "host-mismatch") {
				t.Fatalf("fronted request: %d %q %v", resp.StatusCode, body, resp.Header)
			}
			for _, r := range ih.up.requests() {
				if !strings.HasPrefix(r.Host, "api.test") {
					t.Errorf("upstream saw Host %q", r.Host)
				}
			}
			// The records of one connection may come in any order (a
			// session's connect record is written when it ends): wait for
			// the one this test is about.
			var found bool
			for deadline := time.Now().Add(5 * time.Second); !found && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				for _, r := range byKind(ih.audit.records(t), audit.KindHTTPS) {
					if r.Decision == "deny" && r.Reason == audit.ReasonHostMismatch && r.Method == "GET" && r.Path == "/v1/messages" {
						found = true
					}
				}
			}
			if !found {
				t.Errorf("no https deny record for the fronted request: %+v", ih.audit.records(t))
			}
		})
	}
}

// Method and path rules decide each request, on the canonical path; the
// upstream never sees a refused one, whatever its spelling.
func TestInspectedPathAndMethodRulesDecideEveryRequest(t *testing.T) {
	ih := newInspectHarness(t)
	c := ih.client(false)
	for _, tc := range []struct {
		method, path string
		status       int
		reason       string
	}{
		{"POST", "/v1/messages", 200, ""},
		{"GET", "/v1/models", 403, "no-allow-rule paths"},
		{"DELETE", "/v1/messages", 403, "no-allow-rule methods"},
		{"GET", "/v1/files/1", 403, `blocked-by block_paths "/v1/files/**"`},
		{"GET", "/v1/%66iles/1", 403, `blocked-by block_paths "/v1/files/**"`},
		{"GET", "/v1/messages/../files/1", 400, "bad-request"},
		{"GET", "/v1/messages;/../files/1", 400, "bad-request"},
		{"GET", "//v1/files/1", 400, "bad-request"},
	} {
		req, _ := http.NewRequest(tc.method, ih.url("api.test", "/"), nil)
		req.URL.Opaque = "//api.test:" + fmt.Sprint(ih.up.port) + tc.path // sent as written
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(resp.Header.Get("X-Egressd-Denied"), tc.reason) {
			t.Errorf("%s %s: %d %q (denied %q), want %d %q", tc.method, tc.path, resp.StatusCode, body, resp.Header.Get("X-Egressd-Denied"), tc.status, tc.reason)
		}
	}
	for _, r := range ih.up.requests() {
		if r.Method != "POST" || r.URL.Path != "/v1/messages" {
			t.Errorf("upstream saw %s %s", r.Method, r.RequestURI)
		}
	}
	if got := len(ih.up.requests()); got != 1 {
		t.Errorf("upstream saw %d requests, want 1", got)
	}
	if ih.up.conns != 1 {
		t.Logf("upstream connections: %d", ih.up.conns)
	}
}

// Server-sent events arrive as they are sent, not when the stream ends.
func TestInspectedServerSentEventsArriveIncrementally(t *testing.T) {
	ih := newInspectHarness(t)
	req, _ := http.NewRequest("GET", ih.url("api.test", "/v1/sse"), nil)
	start := time.Now()
	resp, err := ih.client(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	var at []time.Duration
	for {
		line, err := br.ReadString('\n')
		if strings.HasPrefix(line, "data: ") {
			at = append(at, time.Since(start))
		}
		if err != nil {
			break
		}
	}
	if len(at) != 3 {
		t.Fatalf("got %d events, want 3", len(at))
	}
	t.Logf("events at %v", at)
	if at[0] > 350*time.Millisecond || at[2]-at[0] < 600*time.Millisecond {
		t.Errorf("events at %v: the first must arrive before the upstream sent the rest (~400ms apart)", at)
	}
}

// The credential's header reaches its host with the secret; the sandbox
// sends and sees only the placeholder, and the secret the upstream
// reflects (header, body, gzip body, upgraded stream) comes back masked.
func TestCredentialInjectedAndNeverReturnedToTheSandbox(t *testing.T) {
	ih := newInspectHarness(t)
	c := ih.client(false)
	resp, body := doReq(t, c, "POST", ih.url("api.test", "/v1/echo"), map[string]string{"X-Api-Key": testPlaceholder})
	if resp.StatusCode != 200 {
		t.Fatalf("echo: %d %q", resp.StatusCode, body)
	}
	stars := strings.Repeat("*", len(testSecret))
	if body != `{"key":"`+stars+`"}` || resp.Header.Get("X-Seen-Key") != stars {
		t.Errorf("the sandbox got body %q, header %q; want the secret masked", body, resp.Header.Get("X-Seen-Key"))
	}
	if got := ih.up.requests()[0].Header.Get("X-Api-Key"); got != testSecret {
		t.Errorf("upstream got x-api-key %q, want the secret", got)
	}
	if got := ih.up.requests()[0].Header.Get("Accept-Encoding"); got != "identity" {
		t.Errorf("upstream got Accept-Encoding %q, want identity", got)
	}
	_, body = doReq(t, c, "GET", ih.url("api.test", "/v1/gzip"), nil)
	if body != "gzipped key "+stars {
		t.Errorf("gzip body %q", body)
	}
	// A WebSocket upgrade: the stream back is masked too.
	conn, _, _ := ih.connect(fmt.Sprintf("api.test:%d", ih.up.port))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ih.ca.CertPEM())
	tc := tls.Client(conn, &tls.Config{ServerName: "api.test", RootCAs: pool, NextProtos: []string{"http/1.1"}})
	fmt.Fprintf(tc, "GET /v1/ws HTTP/1.1\r\nHost: api.test:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n", ih.up.port)
	br := bufio.NewReader(tc)
	wr, err := http.ReadResponse(br, nil)
	if err != nil || wr.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", wr, err)
	}
	fmt.Fprint(tc, "ping")
	got, _ := io.ReadAll(br)
	if string(got) != "echo ping key "+stars {
		t.Errorf("upgraded stream: %q", got)
	}
	for _, r := range ih.audit.waitRecords(t, 3) {
		if strings.Contains(fmt.Sprint(r), testSecret) {
			t.Errorf("the secret is in an audit record: %+v", r)
		}
		if r.Kind == audit.KindHTTPS && r.Decision == "allow" && r.Credential != "MODEL_KEY" {
			t.Errorf("record %+v does not name the credential", r)
		}
	}
}

// THREATS H1: a placeholder sent anywhere but its credential's host is
// refused — inside another inspected session, and in plain HTTP.
func TestPlaceholderSentToAnotherHostIsRefused(t *testing.T) {
	ih := newInspectHarness(t)
	c := ih.client(false)
	resp, _ := doReq(t, c, "GET", ih.url("other.test", "/upload"), map[string]string{"Authorization": "Bearer " + testPlaceholder})
	if resp.StatusCode != 403 || !strings.HasPrefix(resp.Header.Get("X-Egressd-Denied"), string(audit.ReasonPlaceholder)) {
		t.Errorf("placeholder to other.test: %d %q", resp.StatusCode, resp.Header.Get("X-Egressd-Denied"))
	}
	resp, _ = doReq(t, c, "GET", ih.url("other.test", "/upload?key="+testPlaceholder), nil)
	if resp.StatusCode != 403 {
		t.Errorf("placeholder in the query to other.test: %d", resp.StatusCode)
	}
	plain := newUpstreamHTTP(t)
	resp2, _ := ih.request(fmt.Sprintf("GET http://other.test:%d/ HTTP/1.1\r\nHost: other.test:%d\r\nX-Key: %s\r\n\r\n", plain.port, plain.port, testPlaceholder))
	if resp2.StatusCode != 403 || !strings.HasPrefix(resp2.Header.Get("X-Egressd-Denied"), string(audit.ReasonPlaceholder)) {
		t.Errorf("plain HTTP with the placeholder: %d %q", resp2.StatusCode, resp2.Header.Get("X-Egressd-Denied"))
	}
	if n := len(ih.up.requests()) + len(plain.requests()); n != 0 {
		t.Errorf("upstreams saw %d requests", n)
	}
}

// An inspected host's certificate that does not verify is refused, and
// the client is told why.
func TestUpstreamCertificateThatDoesNotVerifyIsRefusedAndExplained(t *testing.T) {
	ih := newInspectHarness(t, func(c *Config) { c.Inspect.UpstreamRoots = x509.NewCertPool() })
	resp, body := doReq(t, ih.client(false), "GET", ih.url("api.test", "/v1/messages"), nil)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, string(audit.ReasonUpstreamCert)) || !strings.Contains(body, "certificate") {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
	if len(ih.up.requests()) != 0 {
		t.Errorf("the upstream answered a request")
	}
}

// A request head larger than the bound is refused, not buffered (the
// goproxy MITM loop read 256 MiB of one header line into memory).
func TestInspectedHugeRequestHeadIsRefusedNotBuffered(t *testing.T) {
	ih := newInspectHarness(t)
	conn, _, _ := ih.connect(fmt.Sprintf("api.test:%d", ih.up.port))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ih.ca.CertPEM())
	tc := tls.Client(conn, &tls.Config{ServerName: "api.test", RootCAs: pool, NextProtos: []string{"http/1.1"}})
	go func() {
		fmt.Fprintf(tc, "GET /v1/messages HTTP/1.1\r\nHost: api.test\r\nX-Big: ")
		chunk := strings.Repeat("a", 64<<10)
		for range 64 {
			if _, err := io.WriteString(tc, chunk); err != nil {
				return
			}
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("status %d, want 431", resp.StatusCode)
	}
}

// A client that does not trust the inspection CA fails its handshake: the
// upstream is never reached, and the record says why.
func TestClientNotTrustingTheCAFailsClosed(t *testing.T) {
	ih := newInspectHarness(t)
	conn, resp, _ := ih.connect(fmt.Sprintf("api.test:%d", ih.up.port))
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	tc := tls.Client(conn, &tls.Config{ServerName: "api.test"}) // the system roots only
	if err := tc.Handshake(); err == nil {
		t.Fatal("handshake succeeded without trusting the inspection CA")
	}
	tc.Close()
	var rec audit.Record
	for _, r := range ih.audit.waitRecords(t, 1) {
		if r.Kind == audit.KindConnect {
			rec = r
		}
	}
	if !rec.Inspected || !strings.Contains(rec.Error, "inspection CA") {
		t.Errorf("connect record %+v: want inspected and an error naming the CA", rec)
	}
	if len(ih.up.requests()) != 0 {
		t.Error("the upstream was reached")
	}
}

// Plain HTTP to an inspected host obeys its method and path rules too.
func TestPlainHTTPToInspectedHostObeysItsRules(t *testing.T) {
	ih := newInspectHarness(t)
	plain := newUpstreamHTTP(t)
	ih.res.set("api.test", "127.0.0.1")
	resp, _ := ih.request(fmt.Sprintf("GET http://api.test:%d/v1/files/x HTTP/1.1\r\nHost: api.test:%d\r\n\r\n", plain.port, plain.port))
	if resp.StatusCode != 403 || !strings.HasPrefix(resp.Header.Get("X-Egressd-Denied"), "blocked-by") {
		t.Errorf("plain HTTP to a blocked path: %d %q", resp.StatusCode, resp.Header.Get("X-Egressd-Denied"))
	}
	resp, body := ih.request(fmt.Sprintf("GET http://api.test:%d/v1/%%6dessages HTTP/1.1\r\nHost: api.test:%d\r\n\r\n", plain.port, plain.port))
	if resp.StatusCode != 200 || !strings.Contains(body, "/v1/messages") {
		t.Errorf("plain HTTP to an allowed path: %d %q", resp.StatusCode, body)
	}
	if got := plain.requests(); len(got) != 1 || got[0].RequestURI != "/v1/messages" {
		t.Errorf("plain upstream saw %v, want the canonical /v1/messages once", got)
	}
}

// Keep-alive: many requests, one client connection, one upstream
// connection; the transparent listener enters the same mode.
func TestInspectedKeepAliveAndTransparentPath(t *testing.T) {
	ih := newInspectHarness(t)
	c := ih.client(false)
	for range 5 {
		if resp, body := doReq(t, c, "GET", ih.url("api.test", "/v1/messages"), nil); resp.StatusCode != 200 {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	}
	ih.up.mu.Lock()
	conns := ih.up.conns
	ih.up.mu.Unlock()
	if conns != 1 {
		t.Errorf("5 keep-alive requests took %d upstream connections", conns)
	}
	connects := byKind(ih.audit.records(t), audit.KindConnect)
	if len(connects) != 0 {
		t.Errorf("%d connect records while the connection is open", len(connects))
	}

	th := &transparentHarness{harness: ih.harness}
	th.p.origDst = func(net.Conn) (netip.AddrPort, error) { return th.orig.Load().(netip.AddrPort), nil }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	th.taddr = ln.Addr().String()
	go th.p.ServeTransparent(ln)
	conn := th.dialTo(fmt.Sprintf("127.0.0.1:%d", ih.up.port))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ih.ca.CertPEM())
	tc := tls.Client(conn, &tls.Config{ServerName: "api.test", RootCAs: pool, NextProtos: []string{"http/1.1"}})
	fmt.Fprintf(tc, "GET /v1/files/x HTTP/1.1\r\nHost: api.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil || resp.StatusCode != 403 {
		t.Fatalf("transparent, blocked path: %v %v", resp, err)
	}
}

// A reload that starts inspecting a host closes its spliced tunnels, so
// nothing keeps flowing uninspected under a policy that inspects it.
func TestReloadThatInspectsASplicedHostClosesItsTunnel(t *testing.T) {
	ih := newInspectHarness(t)
	conn, resp, _ := ih.connect(fmt.Sprintf("spliced.test:%d", ih.up.port))
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	tc := tls.Client(conn, &tls.Config{ServerName: "spliced.test", RootCAs: ih.up.roots, NextProtos: []string{"http/1.1"}})
	fmt.Fprintf(tc, "GET /first HTTP/1.1\r\nHost: spliced.test\r\n\r\n")
	br := bufio.NewReader(tc)
	if r, err := http.ReadResponse(br, nil); err != nil || r.StatusCode != 200 {
		t.Fatalf("spliced request: %v %v", r, err)
	}
	live := inspectLive(t, strings.Replace(inspectTestPolicy, `host = "other.test"`, `host = "spliced.test"`, 1))
	ih.live.Store(live.Current())
	ih.p.Reevaluate()
	if !tunnelClosed(conn) {
		t.Error("the spliced tunnel stayed open after its host became inspected")
	}
}

// Metrics count inspected requests by the inspect entry's host pattern
// (a label set the policy bounds), result and reason, and failed client
// handshakes.
func TestInspectionMetricsCountByHostAndResult(t *testing.T) {
	reg := metrics.NewRegistry()
	ih := newInspectHarness(t, func(c *Config) { c.Metrics = reg })
	c := ih.client(false)
	doReq(t, c, "GET", ih.url("api.test", "/v1/messages"), nil)
	doReq(t, c, "GET", ih.url("api.test", "/v1/files/x"), nil)
	conn, _, _ := ih.connect(fmt.Sprintf("api.test:%d", ih.up.port))
	_ = tls.Client(conn, &tls.Config{ServerName: "api.test"}).Handshake()
	conn.Close()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("the handshake failure to be counted", func() bool {
		n, _ := metricstest.Value(t, reg, "egressd_proxy_inspect_handshake_failures_total", map[string]string{"host": "api.test"})
		return n == 1
	})
	for _, result := range []struct{ result, reason string }{{"allow", "allowed-by"}, {"deny", "blocked-by"}} {
		labels := map[string]string{"host": "api.test", "result": result.result, "reason": result.reason}
		if n, _ := metricstest.Value(t, reg, "egressd_proxy_inspected_requests_total", labels); n != 1 {
			t.Errorf("%v requests counted %v, want 1", labels, n)
		}
	}
}

// THREATS A1 holds for inspected names too: a ClientHello for another
// name than the CONNECT host closes the tunnel before any TLS is served.
func TestInspectedConnectWithOtherSNIIsClosed(t *testing.T) {
	ih := newInspectHarness(t)
	conn, resp, _ := ih.connect(fmt.Sprintf("api.test:%d", ih.up.port))
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	if body, err := tlsGet(conn, "other.test"); err == nil {
		t.Fatalf("a ClientHello for other.test in a tunnel to api.test was served: %q", body)
	}
	var found bool
	for _, r := range ih.audit.waitRecords(t, 1) {
		found = found || r.Kind == audit.KindConnect && r.Decision == "deny" && r.Reason == audit.ReasonSNIMismatch
	}
	if !found || len(ih.up.requests()) != 0 {
		t.Errorf("want an sni-mismatch denial and no upstream request: %+v", ih.audit.records(t))
	}
}
