package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// The stream decision table (doc.go) tested end to end in one process: the
// real listeners and connection-serving code, a fake original destination
// and a fake dialer that sends every vetted address to one stand-in server.
// The stand-in plays the real servers behind those addresses and reads what
// reaches it the way they would (net/http's request reader, crypto/tls's
// handshake), so a test scores what arrived, not what the proxy claims.

// The lab's policy. web.test is served by a shared front end (203.0.113.10)
// that also serves other.test and blocked.test; only a rule naming the port
// (ssh.test:22) or an allow IP rule (203.0.113.30) admits raw TCP.
var labRules = []string{
	"allow web.test",
	"allow ssh.test:22",
	"allow 203.0.113.30:*",
	"block blocked.test",
}

var (
	labFront = netip.MustParseAddr("203.0.113.10") // web.test, other.test, blocked.test
	labSSH   = netip.MustParseAddr("203.0.113.20") // ssh.test
	labIP    = netip.MustParseAddr("203.0.113.30") // named by an allow IP rule
)

// labRawAdmitted is the oracle's own statement of where raw TCP may go
// under labRules, written out rather than asked of the code under test.
func labRawAdmitted(ap netip.AddrPort) bool {
	return ap == netip.AddrPortFrom(labSSH, 22) || ap.Addr() == labIP
}

// upstreamEvent is one thing the stand-in received.
type upstreamEvent struct {
	Dialed  netip.AddrPort // the vetted address egressd dialled
	Kind    string         // "http" (a request), "tls" (a ClientHello), "raw" (bytes that are neither)
	Host    string         // the Host of a request, the SNI of a hello
	Upgrade bool           // the request asked to switch protocols
	Bytes   int64          // bytes the connection carried (raw)
}

// standIn is the server behind every address of the lab.
type standIn struct {
	ln     net.Listener
	mu     sync.Mutex
	dialed map[string]netip.AddrPort // the proxy's upstream local address → vetted address
	events []upstreamEvent
	// serving counts the connections being served. Not a WaitGroup: one
	// case's wait and the next case's connections are ordered only
	// through the network, which the race detector does not see.
	serving atomic.Int64
}

// waitIdle waits up to d until no connection is being served.
func (s *standIn) waitIdle(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for s.serving.Load() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

func newStandIn(t testing.TB) *standIn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &standIn{ln: ln, dialed: map[string]netip.AddrPort{}}
	var accepting sync.WaitGroup
	accepting.Add(1)
	go func() {
		defer accepting.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.serving.Add(1)
			go s.serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		accepting.Wait()
		if !s.waitIdle(10 * time.Second) {
			t.Errorf("the stand-in server still serves %d connections 10s after the test", s.serving.Load())
		}
	})
	return s
}

// dial is the proxy's dialer in the lab: every vetted address reaches the
// stand-in, which learns which address was meant.
func (s *standIn) dial(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", s.ln.Addr().String())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.dialed[c.LocalAddr().String()] = ap
	s.mu.Unlock()
	return c, nil
}

func (s *standIn) record(e upstreamEvent) {
	s.mu.Lock()
	s.events = append(s.events, e)
	s.mu.Unlock()
}

// serve reads one upstream connection as the real server would.
func (s *standIn) serve(c net.Conn) {
	defer s.serving.Add(-1)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	cr := &countingReader{r: c}
	br := bufio.NewReader(cr)
	first, err := br.Peek(1)
	if err != nil {
		return // connected, nothing sent: nothing reached the server
	}
	s.mu.Lock()
	dialed := s.dialed[c.RemoteAddr().String()]
	s.mu.Unlock()
	if first[0] == recordTypeHandshake {
		var sni string
		var saw bool
		tc := tls.Server(&peekedConn{Conn: c, r: br}, &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			sni, saw = chi.ServerName, true
			return nil, errors.New("stand-in: hello seen")
		}})
		_ = tc.Handshake()
		if saw {
			s.record(upstreamEvent{Dialed: dialed, Kind: "tls", Host: sni})
		}
		_, _ = io.Copy(io.Discard, br)
		return
	}
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return // closed between requests
			}
			_, _ = io.Copy(io.Discard, br)
			s.record(upstreamEvent{Dialed: dialed, Kind: "raw", Bytes: cr.n})
			return
		}
		s.record(upstreamEvent{Dialed: dialed, Kind: "http", Host: req.Host, Upgrade: req.Header.Get("Upgrade") != ""})
		_, _ = io.Copy(io.Discard, req.Body)
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
			return
		}
	}
}

// take returns the events so far and forgets them.
func (s *standIn) take() []upstreamEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev := s.events
	s.events = nil
	return ev
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// peekedConn reads through r (bytes already peeked) and writes to Conn.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// labViolation judges one event: anything reaching an address that only a
// name rule admitted must be a request or hello for a name allowed on that
// port, carrying no upgrade.
func labViolation(m *policy.Matcher, e upstreamEvent) string {
	if labRawAdmitted(e.Dialed) {
		return ""
	}
	switch e.Kind {
	case "http", "tls":
		host := e.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if d := m.DecideName(host, e.Dialed.Port()); !d.Allow {
			return fmt.Sprintf("%s for %q reached %s, where only a name rule admits the address (%s)", e.Kind, e.Host, e.Dialed, d)
		}
		if e.Upgrade {
			return fmt.Sprintf("a request asking to switch protocols reached %s", e.Dialed)
		}
		return ""
	}
	return fmt.Sprintf("a connection carrying %d bytes that are no request or hello reached %s, where only a name rule admits the address", e.Bytes, e.Dialed)
}

// lab is a Proxy with both listeners on loopback, a fake original
// destination, the stand-in behind every vetted address, and short
// timeouts.
type lab struct {
	p       *Proxy
	m       *policy.Matcher
	srv     *standIn
	sink    *auditSink
	explAt  string
	transAt string
	idle    time.Duration
	mu      sync.Mutex
	orig    netip.AddrPort
}

// labTimes are the lab's timeouts: the server-first wait, the header
// timeout and the idle timeout.
type labTimes struct{ firstWait, header, idle time.Duration }

func newLab(t testing.TB, times labTimes) *lab {
	t.Helper()
	live := policyOf(t, labRules...)
	res := newFakeResolver()
	res.set("web.test", labFront.String())
	res.set("other.test", labFront.String())
	res.set("blocked.test", labFront.String())
	res.set("ssh.test", labSSH.String())
	l := &lab{m: live.Current(), srv: newStandIn(t), sink: &auditSink{}, idle: times.idle}
	p, err := New(Config{
		Policy:   live,
		Resolver: res,
		Learned: fakeLearned{
			labFront: {"web.test", "other.test", "blocked.test"},
			labSSH:   {"ssh.test"},
		},
		Audit:         audit.New(l.sink, "lab"),
		HeaderTimeout: times.header,
		IdleTimeout:   times.idle,
		DialTimeout:   time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	p.dial, p.firstWait = l.srv.dial, times.firstWait
	p.origDst = func(net.Conn) (netip.AddrPort, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.orig, nil
	}
	l.p = p
	done := make(chan struct{}, 2)
	for _, explicit := range []bool{true, false} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if explicit {
			l.explAt = ln.Addr().String()
			go func() { _ = p.ServeExplicit(ln); done <- struct{}{} }()
		} else {
			l.transAt = ln.Addr().String()
			go func() { _ = p.ServeTransparent(ln); done <- struct{}{} }()
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
		<-done
		<-done
	})
	return l
}

// labPath is where a lab client sends its bytes: to a transparent
// original destination, or through a CONNECT tunnel to an authority.
type labPath struct {
	orig    netip.AddrPort // transparent when valid
	connect string         // explicit CONNECT authority otherwise
}

func (lp labPath) String() string {
	if lp.orig.IsValid() {
		return "transparent " + lp.orig.String()
	}
	return "CONNECT " + lp.connect
}

// labChunk is some bytes sent after a pause.
type labChunk struct {
	pause time.Duration
	data  []byte
}

// labOutcome is what one connection came to.
type labOutcome struct {
	events  []upstreamEvent
	records []audit.Record
	reply   []byte // what the client read back (after the CONNECT answer)
	connect int    // the CONNECT answer's status, 0 on the transparent path
}

// run sends chunks on one connection along lp, half-closes, reads until
// the end, then waits for the proxy and the stand-in to finish and returns
// what happened. It fails t if the proxy does not finish (a hang).
func (l *lab) run(t testing.TB, lp labPath, chunks []labChunk) labOutcome {
	t.Helper()
	var out labOutcome
	at := l.explAt
	if lp.orig.IsValid() {
		l.mu.Lock()
		l.orig = lp.orig
		l.mu.Unlock()
		at = l.transAt
	}
	// Thousands of loopback connections a second reuse client ports that
	// are still in TIME_WAIT where egressd closed first; the kernel can then
	// reset a connect(2) before anything was sent. That is the harness, not
	// egressd: dial again.
	var c net.Conn
	var err error
	for try := 0; try < 5; try++ {
		if c, err = net.DialTimeout("tcp", at, 2*time.Second); !errors.Is(err, syscall.ECONNRESET) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if !lp.orig.IsValid() {
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", lp.connect, lp.connect)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatalf("CONNECT %s: %v", lp.connect, err)
		}
		out.connect = resp.StatusCode
		if resp.StatusCode != http.StatusOK {
			_, _ = io.Copy(io.Discard, resp.Body)
			chunks = nil
		}
	}
	read := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(br)
		read <- b
	}()
	for _, ch := range chunks {
		time.Sleep(ch.pause)
		if _, err := c.Write(ch.data); err != nil {
			break // refused meanwhile
		}
	}
	_ = c.(*net.TCPConn).CloseWrite()
	select {
	case out.reply = <-read:
	case <-time.After(l.idle + 5*time.Second):
		t.Fatalf("%s: no end of stream from egressd", lp)
	}
	deadline := time.Now().Add(5 * time.Second)
	for l.p.OpenTunnels() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d connections still open 5s after the client finished", lp, l.p.OpenTunnels())
		}
		time.Sleep(2 * time.Millisecond)
	}
	l.p.transport.CloseIdleConnections()
	if !l.srv.waitIdle(5 * time.Second) {
		t.Fatalf("%s: the stand-in server is still reading 5s after egressd finished", lp)
	}
	out.events = l.srv.take()
	out.records = l.sink.records(t)
	l.sink.Reset()
	return out
}

// check fails t for every event that breaks the rule, and for a raw allow
// on an address only a name admitted.
func (l *lab) check(t testing.TB, lp labPath, o labOutcome) {
	t.Helper()
	for _, e := range o.events {
		if v := labViolation(l.m, e); v != "" {
			t.Errorf("%s: %s", lp, v)
		}
	}
	if lp.orig.IsValid() && !labRawAdmitted(lp.orig) {
		for _, r := range o.records {
			if r.Kind == audit.KindTCP && r.Decision == "allow" {
				t.Errorf("%s: relayed raw (audit %+v), where only a name rule admits the address", lp, r)
			}
		}
	}
}

func chunk(s string) labChunk { return labChunk{data: []byte(s)} }

func pauseThen(d time.Duration, s string) labChunk { return labChunk{pause: d, data: []byte(s)} }

// The decision table of doc.go, row by row: each stream kind on each kind
// of admission, what reached the server behind the address, and the
// audit's reason for what did not.
func TestStreamDecisionTable(t *testing.T) {
	times := labTimes{firstWait: 50 * time.Millisecond, header: 300 * time.Millisecond, idle: 2 * time.Second}
	l := newLab(t, times)
	late := times.header + 200*time.Millisecond // past the header timeout
	silent := times.firstWait + 50*time.Millisecond
	front80 := labPath{orig: netip.AddrPortFrom(labFront, 80)}
	front443 := labPath{orig: netip.AddrPortFrom(labFront, 443)}
	front7000 := labPath{orig: netip.AddrPortFrom(labFront, 7000)}
	ssh22 := labPath{orig: netip.AddrPortFrom(labSSH, 22)}
	ipRule := labPath{orig: netip.AddrPortFrom(labIP, 5000)}
	tunnel80 := labPath{connect: "web.test:80"}
	tunnel443 := labPath{connect: "web.test:443"}
	tunnelSSH := labPath{connect: "ssh.test:22"}
	get := func(method, version, host string) string {
		return method + " / " + version + "\r\nHost: " + host + "\r\n\r\n"
	}
	const (
		h2c = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
		ssh = "SSH-2.0-OpenSSH_9.6\r\n"
	)
	upgrade := "GET / HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + h2c
	type seen struct{ Kind, Host string }
	tests := []struct {
		name   string
		path   labPath
		chunks []labChunk
		want   []seen       // what reached the server, in order
		reason audit.Reason // the audit reason of the refusal, if one is expected
	}{
		// Name-admitted address, HTTP: decided per request, any method
		// token, any HTTP/1.x version.
		{"HTTP/1.1 allowed Host", front80, []labChunk{chunk(get("GET", "HTTP/1.1", "web.test"))}, []seen{{"http", "web.test"}}, ""},
		{"HTTP/1.9 allowed Host", front80, []labChunk{chunk(get("GET", "HTTP/1.9", "web.test"))}, []seen{{"http", "web.test"}}, ""},
		{"HTTP/1.9 other Host", front80, []labChunk{chunk(get("GET", "HTTP/1.9", "other.test"))}, nil, "no-allow-rule"},
		{"lower-case method, allowed Host", front80, []labChunk{chunk(get("get", "HTTP/1.1", "web.test"))}, []seen{{"http", "web.test"}}, ""},
		{"lower-case method, blocked Host", front80, []labChunk{chunk(get("get", "HTTP/1.1", "blocked.test"))}, nil, "blocked-by"},
		{"token method, other Host", front80, []labChunk{chunk(get("X_FOO1", "HTTP/1.1", "other.test"))}, nil, "no-allow-rule"},
		{"M-SEARCH, other Host", front80, []labChunk{chunk("M-SEARCH * HTTP/1.1\r\nHost: other.test\r\n\r\n")}, nil, "bad-request"},
		{"HTTP/2.0 request line", front80, []labChunk{chunk(get("GET", "HTTP/2.0", "web.test"))}, nil, "bad-request"},
		{"bare LF request", front80, []labChunk{chunk("GET / HTTP/1.1\nHost: other.test\n\n")}, nil, "bad-request"},
		{"keep-alive switch", front80, []labChunk{chunk(get("GET", "HTTP/1.1", "web.test") + get("GET", "HTTP/1.1", "other.test"))}, []seen{{"http", "web.test"}}, "no-allow-rule"},
		{"h2c upgrade, then preface", front80, []labChunk{chunk(upgrade)}, []seen{{"http", "web.test"}}, "bad-request"},
		// Name-admitted address, no name in the stream: refused.
		{"h2c prior knowledge", front80, []labChunk{chunk(h2c)}, nil, audit.ReasonUnidentified},
		{"SSH-like bytes on 443", front443, []labChunk{chunk(ssh)}, nil, audit.ReasonUnidentified},
		{"slow request line", front80, []labChunk{chunk("GET / HT"), pauseThen(late, "TP/1.1\r\nHost: other.test\r\n\r\n")}, nil, audit.ReasonHeaderTimeout},
		{"slow first byte", front80, []labChunk{chunk("G"), pauseThen(late, "ET / HTTP/1.1\r\nHost: other.test\r\n\r\n")}, nil, audit.ReasonHeaderTimeout},
		{"silent, then other Host", front80, []labChunk{pauseThen(silent, get("GET", "HTTP/1.1", "other.test"))}, nil, "no-allow-rule"},
		{"silent, then allowed Host", front80, []labChunk{pauseThen(silent, get("GET", "HTTP/1.1", "web.test"))}, []seen{{"http", "web.test"}}, ""},
		{"TLS allowed SNI", front443, []labChunk{chunk(string(goClientHello(t, "web.test")))}, []seen{{"tls", "web.test"}}, ""},
		{"TLS other SNI", front443, []labChunk{chunk(string(goClientHello(t, "other.test")))}, nil, "no-allow-rule"},
		{"TLS without SNI", front443, []labChunk{chunk(string(goClientHello(t, "")))}, nil, audit.ReasonNoSNI},
		{"port no rule allows", front7000, []labChunk{chunk(ssh)}, nil, "no-allow-rule"},
		// A rule naming the port admits raw TCP; HTTP is still decided.
		{"SSH on ssh.test:22", ssh22, []labChunk{chunk(ssh)}, []seen{{"raw", ""}}, ""},
		{"server-first on ssh.test:22", ssh22, []labChunk{pauseThen(silent, ssh)}, []seen{{"raw", ""}}, ""},
		{"h2c on ssh.test:22", ssh22, []labChunk{chunk(h2c)}, []seen{{"http", ""}, {"raw", ""}}, ""},
		{"HTTP other Host on ssh.test:22", ssh22, []labChunk{chunk(get("GET", "HTTP/1.1", "other.test"))}, nil, "no-allow-rule"},
		{"slow request on ssh.test:22", ssh22, []labChunk{chunk("GET / HT"), pauseThen(late, "TP/1.1\r\n\r\n")}, nil, audit.ReasonHeaderTimeout},
		{"raw to an allow IP rule", ipRule, []labChunk{chunk("hello\n")}, []seen{{"raw", ""}}, ""},
		// CONNECT tunnels: the same rule.
		{"tunnel HTTP allowed Host", tunnel80, []labChunk{chunk(get("GET", "HTTP/1.1", "web.test"))}, []seen{{"http", "web.test"}}, ""},
		{"tunnel HTTP other Host", tunnel80, []labChunk{chunk(get("GET", "HTTP/1.1", "other.test"))}, nil, audit.ReasonHostMismatch},
		{"tunnel keep-alive switch", tunnel80, []labChunk{chunk(get("GET", "HTTP/1.1", "web.test") + get("get", "HTTP/1.9", "blocked.test"))}, []seen{{"http", "web.test"}}, audit.ReasonHostMismatch},
		{"tunnel absolute-form", tunnel80, []labChunk{chunk("GET http://other.test/ HTTP/1.1\r\nHost: web.test\r\n\r\n")}, nil, "bad-request"},
		{"tunnel nested CONNECT", tunnel80, []labChunk{chunk("CONNECT other.test:80 HTTP/1.1\r\nHost: other.test:80\r\n\r\n")}, nil, "bad-request"},
		{"tunnel h2c", tunnel80, []labChunk{chunk(h2c)}, nil, audit.ReasonUnidentified},
		{"tunnel SSH-like bytes", tunnel443, []labChunk{chunk(ssh)}, nil, audit.ReasonUnidentified},
		{"tunnel slow request", tunnel80, []labChunk{chunk("GET / HT"), pauseThen(late, "TP/1.1\r\nHost: other.test\r\n\r\n")}, nil, audit.ReasonHeaderTimeout},
		{"tunnel TLS", tunnel443, []labChunk{chunk(string(goClientHello(t, "web.test")))}, []seen{{"tls", "web.test"}}, ""},
		{"tunnel SSH on ssh.test:22", tunnelSSH, []labChunk{chunk(ssh)}, []seen{{"raw", ""}}, ""},
		{"tunnel h2c on ssh.test:22", tunnelSSH, []labChunk{chunk(h2c)}, []seen{{"http", ""}, {"raw", ""}}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := l.run(t, tc.path, tc.chunks)
			l.check(t, tc.path, o)
			var got []seen
			for _, e := range o.events {
				got = append(got, seen{e.Kind, e.Host})
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("what reached the server (-want +got):\n%s", diff)
			}
			var reasons []audit.Reason
			for _, r := range o.records {
				if r.Decision == "deny" {
					reasons = append(reasons, r.Reason)
				}
			}
			if tc.reason == "" && len(reasons) > 0 || tc.reason != "" && (len(reasons) != 1 || reasons[0] != tc.reason) {
				t.Errorf("denials %q, want %q\naudit: %+v", reasons, tc.reason, o.records)
			}
		})
	}
}

// The refusal of a stream that names no host says what would admit it.
func TestUnidentifiedStreamRefusalNamesTheFix(t *testing.T) {
	l := newLab(t, labTimes{firstWait: 50 * time.Millisecond, header: 300 * time.Millisecond, idle: 2 * time.Second})
	for _, tc := range []struct {
		path labPath
		data string
		want []string
	}{
		{labPath{orig: netip.AddrPortFrom(labFront, 80)}, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
			[]string{"h2c", "203.0.113.10 was learned for web.test", "web.test, policy.toml:1", "web.test:80"}},
		{labPath{connect: "web.test:443"}, "SSH-2.0-x\r\n",
			[]string{"a CONNECT tunnel to web.test", "web.test:443"}},
	} {
		o := l.run(t, tc.path, []labChunk{chunk(tc.data)})
		if len(o.records) == 0 {
			t.Fatalf("%s: no audit record", tc.path)
		}
		r := o.records[len(o.records)-1]
		for _, w := range tc.want {
			if r.Reason != audit.ReasonUnidentified || !strings.Contains(r.Error, w) {
				t.Errorf("%s: audit %+v, want reason %s and %q in the explanation", tc.path, r, audit.ReasonUnidentified, w)
			}
		}
	}
}

// labPaths are the fuzz target's destinations: every kind of admission on
// the transparent listener, and CONNECT tunnels.
var labPaths = []labPath{
	{orig: netip.AddrPortFrom(labFront, 80)},
	{orig: netip.AddrPortFrom(labFront, 443)},
	{orig: netip.AddrPortFrom(labFront, 7000)},
	{orig: netip.AddrPortFrom(labSSH, 22)},
	{orig: netip.AddrPortFrom(labIP, 5000)},
	{connect: "web.test:80"},
	{connect: "web.test:443"},
	{connect: "ssh.test:22"},
}

// fuzzPauses are the pauses a schedule byte picks from (its top two bits),
// against the fuzz lab's timeouts: none, short, past the server-first
// wait, past the header timeout.
var fuzzPauses = [4]time.Duration{0, 2 * time.Millisecond, 15 * time.Millisecond, 100 * time.Millisecond}

// fuzzChunks splits data by schedule: each byte sends 1-64 bytes (its low
// six bits) after one of fuzzPauses; what is left goes at once. At most
// four pauses past the header timeout, to keep an execution short.
func fuzzChunks(data, schedule []byte) []labChunk {
	var out []labChunk
	long := 0
	for _, s := range schedule {
		if len(data) == 0 {
			break
		}
		n := min(int(s&0x3f)+1, len(data))
		pause := fuzzPauses[s>>6]
		if pause == fuzzPauses[3] {
			if long++; long > 4 {
				pause = 0
			}
		}
		out = append(out, labChunk{pause: pause, data: data[:n]})
		data = data[n:]
	}
	if len(data) > 0 {
		out = append(out, labChunk{data: data})
	}
	return out
}

// FuzzStreamDecideOrRefuse drives the real connection-serving code (both
// listeners, the classifier, the head parser, the hello parser, the relay)
// with arbitrary first bytes, split into chunks with arbitrary pauses that
// hit the server-first wait and the header timeout, along every path of
// the lab. Every stream must end decided on a name it carries (an HTTP
// request or a ClientHello for a name allowed on the port) or refused:
// nothing reaches a name-admitted address raw, and egressd never hangs.
func FuzzStreamDecideOrRefuse(f *testing.F) {
	get := func(method, version, host string) string {
		return method + " / " + version + "\r\nHost: " + host + "\r\n\r\n"
	}
	for _, s := range []struct {
		path     uint8
		data     string
		schedule []byte
	}{
		{0, get("GET", "HTTP/1.1", "web.test"), nil},
		{0, get("GET", "HTTP/1.9", "other.test"), nil},
		{0, get("get", "HTTP/1.1", "other.test"), nil},
		{0, get("M-SEARCH", "HTTP/1.1", "other.test"), nil},
		{0, get("X_FOO1", "HTTP/1.0", "blocked.test"), nil},
		{0, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", nil},
		{0, get("GET", "HTTP/1.1", "other.test"), []byte{0x07, 0xc0 | 20}},
		{0, get("GET", "HTTP/1.1", "other.test"), []byte{0x80}},
		{0, "\r\n\r\n" + get("GET", "HTTP/1.1", "other.test"), []byte{0x01, 0x41, 0xc3}},
		{0, "GET / HTTP/1.1\nHost: other.test\n\n", nil},
		{0, get("GET", "HTTP/1.1", "web.test") + get("GET", "HTTP/1.1", "other.test"), []byte{0x3f, 0xbf}},
		{0, "GET / HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", nil},
		{1, string(goClientHello(f, "web.test")), []byte{0x05, 0x85, 0x3f}},
		{1, string(goClientHello(f, "other.test")), nil},
		{1, "SSH-2.0-OpenSSH_9.6\r\n", nil},
		{2, "SSH-2.0-OpenSSH_9.6\r\n", nil},
		{3, "SSH-2.0-OpenSSH_9.6\r\n", []byte{0x80}},
		{3, get("GET", "HTTP/1.1", "other.test"), []byte{0xc2}},
		{4, "\x00\x01binary", nil},
		{5, get("GET", "HTTP/1.1", "web.test") + get("GET", "HTTP/1.1", "other.test"), nil},
		{5, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", nil},
		{5, "GET / HT" + "TP/1.1\r\nHost: other.test\r\n\r\n", []byte{0x07, 0xc0}},
		{6, "SSH-2.0-x\r\n", nil},
		{7, "SSH-2.0-x\r\n", []byte{0x80 | 3}},
	} {
		f.Add(s.path, []byte(s.data), s.schedule)
	}
	l := newLab(f, labTimes{firstWait: 10 * time.Millisecond, header: 40 * time.Millisecond, idle: 300 * time.Millisecond})
	f.Fuzz(func(t *testing.T, path uint8, data, schedule []byte) {
		if len(data) > 4096 || len(schedule) > 64 {
			return
		}
		lp := labPaths[int(path)%len(labPaths)]
		o := l.run(t, lp, fuzzChunks(data, schedule))
		l.check(t, lp, o)
	})
}
