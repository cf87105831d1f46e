package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// basePolicy allows allowed.test on any port and lifts the address guard
// for 127.0.0.1, where the test upstreams live.
func basePolicy(t testing.TB, extra ...string) []string {
	return append([]string{"allow allowed.test:*", "allow 127.0.0.1:*"}, extra...)
}

func TestConnectAllowedTunnelWorks(t *testing.T) {
	up := newUpstreamTLS(t)
	h := newHarness(t, policyOf(t, basePolicy(t)...))
	h.res.set("allowed.test", "127.0.0.1")
	c, resp, _ := h.connect(fmt.Sprintf("allowed.test:%d", up.port))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT status %d, want 200", resp.StatusCode)
	}
	body, err := tlsGet(c, "allowed.test")
	if err != nil || body != "tls hello allowed.test" {
		t.Fatalf("through the tunnel: %q, %v", body, err)
	}
	c.Close()
	rs := byKind(h.audit.waitRecords(t, 1), audit.KindConnect)
	if len(rs) != 1 || rs[0].Decision != "allow" || rs[0].BytesUp == 0 || rs[0].BytesDown == 0 {
		t.Fatalf("audit = %+v, want one allow record with bytes", rs)
	}
}

// THREATS A1: CONNECT names an allowed host, the ClientHello another.
func TestConnectSNIMismatchIsClosed(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	h := newHarness(t, policyOf(t, basePolicy(t, "allow evil.test:*")...))
	h.res.set("allowed.test", "127.0.0.1")
	for _, sni := range []string{"evil.test", "other.test", "allowed.test.evil.test"} {
		c, resp, _ := h.connect(fmt.Sprintf("allowed.test:%d", rec.port))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT status %d, want 200", resp.StatusCode)
		}
		if _, err := tlsGet(c, sni); err == nil {
			t.Fatalf("TLS with SNI %s through a tunnel to allowed.test succeeded", sni)
		}
	}
	if _, n := rec.stats(); n != 0 {
		t.Fatalf("upstream received %d bytes of a fronted ClientHello, want 0", n)
	}
	rs := h.audit.waitRecords(t, 3)
	for _, r := range rs {
		if r.Decision != "deny" || r.Reason != audit.ReasonSNIMismatch {
			t.Errorf("audit %+v, want deny %s", r, audit.ReasonSNIMismatch)
		}
	}
}

// THREATS E1: no SNI in a tunnel to a name; fine for an IP an IP rule allows.
func TestConnectNoSNIIsClosed(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	up := newUpstreamTLS(t)
	h := newHarness(t, policyOf(t, basePolicy(t)...))
	h.res.set("allowed.test", "127.0.0.1")
	c, resp, _ := h.connect(fmt.Sprintf("allowed.test:%d", rec.port))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT status %d", resp.StatusCode)
	}
	if _, err := tlsGet(c, ""); err == nil {
		t.Fatal("TLS without SNI through a tunnel to a name succeeded")
	}
	if _, n := rec.stats(); n != 0 {
		t.Fatalf("upstream received %d bytes, want 0", n)
	}
	if rs := h.audit.waitRecords(t, 1); len(rs) != 1 || rs[0].Reason != audit.ReasonNoSNI {
		t.Fatalf("audit %+v, want one %s denial", rs, audit.ReasonNoSNI)
	}

	t.Run("IP target allowed by an IP rule needs no SNI", func(t *testing.T) {
		c, resp, _ := h.connect(fmt.Sprintf("127.0.0.1:%d", up.port))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT status %d", resp.StatusCode)
		}
		if body, err := tlsGet(c, ""); err != nil || !strings.HasPrefix(body, "tls hello") {
			t.Fatalf("TLS without SNI to an allowed IP: %q, %v", body, err)
		}
	})
}

// THREATS E2.
func TestConnectECHIsClosed(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	h := newHarness(t, policyOf(t, basePolicy(t)...))
	h.res.set("allowed.test", "127.0.0.1")
	c, resp, _ := h.connect(fmt.Sprintf("allowed.test:%d", rec.port))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT status %d", resp.StatusCode)
	}
	if _, err := c.Write(buildHello(helloSpec{names: []string{"allowed.test"}, ech: true})); err != nil {
		t.Fatal(err)
	}
	if !tunnelClosed(c) {
		t.Fatal("tunnel with an ECH ClientHello stayed open")
	}
	if _, n := rec.stats(); n != 0 {
		t.Fatalf("upstream received %d bytes, want 0", n)
	}
	if rs := h.audit.waitRecords(t, 1); len(rs) != 1 || rs[0].Reason != audit.ReasonECH {
		t.Fatalf("audit %+v, want one %s denial", rs, audit.ReasonECH)
	}
}

// splitConn rewrites the client's first write (its ClientHello record):
// byte by byte in separate segments, or re-fragmented into two TLS
// records split at recordSplit bytes of the handshake message.
type splitConn struct {
	net.Conn
	recordSplit int
	byteByByte  bool
	done        bool
}

func (s *splitConn) Write(b []byte) (int, error) {
	if s.done {
		return s.Conn.Write(b)
	}
	s.done = true
	out := b
	if s.recordSplit > 0 {
		out = records(b[recordHeaderLen:], s.recordSplit)
	}
	if !s.byteByByte {
		if _, err := s.Conn.Write(out); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	for i := range out {
		if _, err := s.Conn.Write(out[i : i+1]); err != nil {
			return 0, err
		}
		if i%64 == 0 {
			time.Sleep(time.Millisecond) // let segments leave one by one
		}
	}
	return len(b), nil
}

// THREATS E3: a ClientHello split across segments and across records is
// reassembled and judged on the name it really carries.
func TestConnectSplitClientHelloHandled(t *testing.T) {
	up := newUpstreamTLS(t)
	h := newHarness(t, policyOf(t, basePolicy(t)...), func(c *Config) { c.HeaderTimeout = 5 * time.Second })
	h.res.set("allowed.test", "127.0.0.1")
	cases := []struct {
		name     string
		sni      string
		split    splitConn
		wantPass bool
	}{
		{"one byte per segment", "allowed.test", splitConn{byteByByte: true}, true},
		{"two records, name in the second", "allowed.test", splitConn{recordSplit: 60}, true},
		{"two records and one byte per segment", "allowed.test", splitConn{recordSplit: 60, byteByByte: true}, true},
		{"two records, other name in the second", "evil.test", splitConn{recordSplit: 60}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, resp, _ := h.connect(fmt.Sprintf("allowed.test:%d", up.port))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("CONNECT status %d", resp.StatusCode)
			}
			if tc.split.byteByByte {
				_ = c.(*net.TCPConn).SetNoDelay(true)
			}
			sc := tc.split
			sc.Conn = c
			body, err := tlsGet(&sc, tc.sni)
			if tc.wantPass != (err == nil) {
				t.Fatalf("TLS through the tunnel: body %q, err %v; want pass=%v", body, err, tc.wantPass)
			}
		})
	}
	for _, sni := range up.handshakes() {
		if sni != "allowed.test" {
			t.Errorf("upstream saw a handshake for %q", sni)
		}
	}

	t.Run("hello that never completes is closed", func(t *testing.T) {
		h := newHarness(t, policyOf(t, basePolicy(t)...), func(c *Config) { c.HeaderTimeout = 300 * time.Millisecond })
		h.res.set("allowed.test", "127.0.0.1")
		c, _, _ := h.connect(fmt.Sprintf("allowed.test:%d", up.port))
		hello := goClientHello(t, "allowed.test")
		_, _ = c.Write(hello[:len(hello)/2])
		if !tunnelClosed(c) {
			t.Fatal("tunnel with half a ClientHello stayed open")
		}
		if rs := h.audit.waitRecords(t, 1); len(rs) != 1 || rs[0].Reason != audit.ReasonHeaderTimeout {
			t.Fatalf("audit %+v, want one %s denial", rs, audit.ReasonHeaderTimeout)
		}
	})
}

// THREATS A5: rules are host:port pairs; a portless rule allows 80 and 443.
func TestConnectDisallowedPortDenied(t *testing.T) {
	h := newHarness(t, policyOf(t, "allow allowed.test", "allow 127.0.0.1:*"))
	h.res.set("allowed.test", "127.0.0.1")
	for _, port := range []int{22, 25, 8443} {
		_, resp, body := h.connect(fmt.Sprintf("allowed.test:%d", port))
		if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Egressd-Denied") != "no-allow-rule" {
			t.Errorf("CONNECT allowed.test:%d: %d %q %q, want 403 no-allow-rule", port, resp.StatusCode, resp.Header.Get("X-Egressd-Denied"), body)
		}
	}
	if n := h.res.callsFor("allowed.test"); n != 0 {
		t.Errorf("resolver asked %d times for a denied target, want 0 (decide before resolving)", n)
	}
}

// A denial a person can read: the rule and where it was written.
func TestConnectBlockedHost403WithRule(t *testing.T) {
	h := newHarness(t, policyFile(t, map[int]string{3: "allow *", 12: "block *.evil.test"}))
	const reason = "blocked-by *.evil.test (policy.toml:12)"
	_, resp, body := h.connect("github.evil.test:443")
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d, want 403", resp.StatusCode)
	}
	if diff := cmp.Diff("egressd: denied github.evil.test:443: "+reason+"\n", body); diff != "" {
		t.Errorf("body (-want +got):\n%s", diff)
	}
	if got := resp.Header.Get("X-Egressd-Denied"); got != reason {
		t.Errorf("X-Egressd-Denied = %q, want %q", got, reason)
	}
	resp, body = h.request("GET http://github.evil.test/x HTTP/1.1\r\nHost: github.evil.test\r\n\r\n")
	if resp.StatusCode != http.StatusForbidden || body != "egressd: denied github.evil.test:80: "+reason+"\n" {
		t.Errorf("plain HTTP: %d %q", resp.StatusCode, body)
	}
	rs := h.audit.waitRecords(t, 2)
	want := audit.Record{Kind: audit.KindConnect, Target: "github.evil.test", Port: 443, Decision: "deny",
		Reason: "blocked-by", Rule: "*.evil.test", Source: "policy.toml:12"}
	if diff := cmp.Diff(want, rs[0], cmpopts.IgnoreFields(audit.Record{}, "Time", "SandboxID", "Client")); diff != "" {
		t.Errorf("audit (-want +got):\n%s", diff)
	}
}

// THREATS A4, C2: name rules never match IP literals, in any spelling.
func TestConnectIPLiteralNeedsIPRule(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	h := newHarness(t, policyOf(t, "allow *", "allow allowed.test:*"))
	h.res.set("allowed.test", "127.0.0.1")
	for _, auth := range []string{fmt.Sprintf("127.0.0.1:%d", rec.port), fmt.Sprintf("[::1]:%d", rec.port), "[2001:db8::1]:443", "203.0.113.7:443"} {
		_, resp, _ := h.connect(auth)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("CONNECT %s with only name rules: %d, want 403", auth, resp.StatusCode)
		}
	}
	for _, auth := range []string{"2130706433:443", "0x7f000001:443", "127.1:443", "0177.0.0.1:443"} {
		_, resp, _ := h.connect(auth)
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("X-Egressd-Denied") == "" {
			t.Errorf("CONNECT %s: %d, want 400 with a reason", auth, resp.StatusCode)
		}
	}
	if n, _ := rec.stats(); n != 0 {
		t.Fatalf("upstream got %d connections", n)
	}
	t.Run("with an IP rule", func(t *testing.T) {
		h := newHarness(t, policyOf(t, "allow 127.0.0.1:*"))
		c, resp, _ := h.connect(fmt.Sprintf("127.0.0.1:%d", rec.port))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT with an IP rule: %d", resp.StatusCode)
		}
		echo(t, c, "SSH-2.0-ish bytes, not TLS\r\n")
	})
}

// THREATS B7: NUL and control bytes, raw or percent-encoded.
func TestConnectNULInAuthorityRejected(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	h := newHarness(t, policyOf(t, basePolicy(t, "allow *.allowed.test:*")...))
	h.res.set("allowed.test", "127.0.0.1")
	h.res.set("evil.example", "127.0.0.1")
	for _, auth := range []string{
		"evil.example\x00.allowed.test:%d",
		"evil.example%%00.allowed.test:%d",
		"allowed.test\x00:%d",
		"evil.example\x01.allowed.test:%d",
		"evil.example%%2e.allowed.test:%d",
		"evil.example\x7f.allowed.test:%d",
	} {
		c := h.dial()
		fmt.Fprintf(c, "CONNECT "+auth+" HTTP/1.1\r\n\r\n", rec.port)
		resp, _ := readResponse(t, c, "CONNECT")
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("CONNECT %q: %d, want 400", auth, resp.StatusCode)
		}
	}
	if n, _ := rec.stats(); n != 0 || h.res.callsFor("evil.example") != 0 {
		t.Fatalf("upstream connections %d, resolver calls %d; want none", n, h.res.callsFor("evil.example"))
	}
}

// THREATS A6: the absolute-URI host decides; a different Host is refused.
func TestAbsoluteURIHostMismatchRejected(t *testing.T) {
	up := newUpstreamHTTP(t)
	h := newHarness(t, policyOf(t, basePolicy(t, "allow evil.test:*")...))
	h.res.set("allowed.test", "127.0.0.1")
	h.res.set("evil.test", "127.0.0.1")
	for _, host := range []string{"evil.test", fmt.Sprintf("evil.test:%d", up.port), "allowed.test:1", "allowed.test"} {
		resp, body := h.request(fmt.Sprintf("GET http://allowed.test:%d/ HTTP/1.1\r\nHost: %s\r\n\r\n", up.port, host))
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("X-Egressd-Denied") == "" || !strings.Contains(body, string(audit.ReasonHostMismatch)) {
			t.Errorf("Host %s: %d %q, want 400 host-mismatch", host, resp.StatusCode, body)
		}
	}
	if n := len(up.requests()); n != 0 {
		t.Fatalf("upstream got %d requests, want 0", n)
	}
	resp, body := h.request(fmt.Sprintf("GET http://allowed.test:%d/ok HTTP/1.1\r\nHost: ALLOWED.test.:%d\r\n\r\n", up.port, up.port))
	if resp.StatusCode != http.StatusOK || body != fmt.Sprintf("hello allowed.test:%d /ok body=0", up.port) {
		t.Fatalf("matching Host: %d %q", resp.StatusCode, body)
	}
}

// THREATS B8: userinfo, percent-encoding and backslashes in the target.
func TestUserinfoInRequestTargetRejected(t *testing.T) {
	up := newUpstreamHTTP(t)
	h := newHarness(t, policyOf(t, basePolicy(t)...))
	h.res.set("allowed.test", "127.0.0.1")
	for _, target := range []string{
		"http://allowed.test@evil.example:%d/",
		"http://allowed.test:x@evil.example:%d/",
		"http://allowed.test%%40evil.example:%d/",
		"http://%%65vil.example:%d/",
		"http://allowed.test\\@evil.example:%d/",
		"http://allowed.test%%00:%d/",
	} {
		target = fmt.Sprintf(target, up.port)
		resp, _ := h.request("GET " + target + " HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", target, resp.StatusCode)
		}
	}
	if n := len(up.requests()); n != 0 || h.res.callsFor("evil.example") != 0 {
		t.Fatalf("upstream got %d requests; want none", n)
	}
}

// THREATS A7: every request on a kept-alive connection is decided again.
func TestKeepAliveHostSwitchDenied(t *testing.T) {
	up := newUpstreamHTTP(t)
	h := newHarness(t, policyOf(t, basePolicy(t)...))
	h.res.set("allowed.test", "127.0.0.1")
	h.res.set("evil.test", "127.0.0.1")
	good := fmt.Sprintf("GET http://allowed.test:%d/1 HTTP/1.1\r\nHost: allowed.test:%d\r\n\r\n", up.port, up.port)
	evil := fmt.Sprintf("GET http://evil.test:%d/2 HTTP/1.1\r\nHost: evil.test:%d\r\n\r\n", up.port, up.port)

	t.Run("sequential", func(t *testing.T) {
		c := h.dial()
		io.WriteString(c, good)
		if resp, _ := readResponse(t, c, "GET"); resp.StatusCode != http.StatusOK {
			t.Fatalf("first request: %d", resp.StatusCode)
		}
		io.WriteString(c, good)
		if resp, _ := readResponse(t, c, "GET"); resp.StatusCode != http.StatusOK {
			t.Fatalf("second request, same host: %d", resp.StatusCode)
		}
		io.WriteString(c, evil)
		if resp, _ := readResponse(t, c, "GET"); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("third request, other host: %d, want 403", resp.StatusCode)
		}
	})
	t.Run("pipelined", func(t *testing.T) {
		c := h.dial()
		io.WriteString(c, good+evil)
		if resp, _ := readResponse(t, c, "GET"); resp.StatusCode != http.StatusOK {
			t.Fatalf("first request: %d", resp.StatusCode)
		}
		if resp, _ := readResponse(t, c, "GET"); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("pipelined request for another host: %d, want 403", resp.StatusCode)
		}
	})
	for _, r := range up.requests() {
		if r.URL.Path != "/1" {
			t.Errorf("upstream got %s %s", r.Host, r.URL.Path)
		}
	}
	if got := len(up.requests()); got != 3 {
		t.Errorf("upstream got %d requests, want 3", got)
	}
}

// THREATS A9: a plain-HTTP request does not become an opaque stream, and
// Proxy-* and connection-scoped headers stop here.
func TestH2CUpgradeStripped(t *testing.T) {
	up := newUpstreamHTTP(t)
	h := newHarness(t, policyOf(t, basePolicy(t)...))
	h.res.set("allowed.test", "127.0.0.1")
	for _, extra := range []string{
		"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
		"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
		"Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nConnection: X-Hop\r\nX-Hop: 1\r\n",
	} {
		resp, body := h.request(fmt.Sprintf("GET http://allowed.test:%d/u HTTP/1.1\r\nHost: allowed.test:%d\r\n%s\r\n", up.port, up.port, extra))
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(body, "hello") {
			t.Fatalf("request with %q: %d %q", extra, resp.StatusCode, body)
		}
	}
	reqs := up.requests()
	if len(reqs) != 3 {
		t.Fatalf("upstream got %d requests, want 3", len(reqs))
	}
	for _, r := range reqs {
		for _, k := range []string{"Upgrade", "Http2-Settings", "Connection", "Proxy-Authorization", "Proxy-Connection", "X-Hop"} {
			if v, ok := r.Header[k]; ok {
				t.Errorf("upstream received %s: %q", k, v)
			}
		}
	}
}

// THREATS A9: ambiguous framing is refused, not guessed.
func TestCLAndTERejected(t *testing.T) {
	up := newUpstreamHTTP(t)
	h := newHarness(t, policyOf(t, basePolicy(t, "allow evil.test:*")...))
	h.res.set("allowed.test", "127.0.0.1")
	h.res.set("evil.test", "127.0.0.1")
	u := fmt.Sprintf("http://allowed.test:%d/", up.port)
	hostHdr := fmt.Sprintf("Host: allowed.test:%d\r\n", up.port)
	for _, raw := range []string{
		"POST " + u + " HTTP/1.1\r\n" + hostHdr + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
		"POST " + u + " HTTP/1.1\r\n" + hostHdr + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
		"POST " + u + " HTTP/1.1\r\n" + hostHdr + "Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
		"POST " + u + " HTTP/1.1\r\n" + hostHdr + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
		"POST " + u + " HTTP/1.1\r\n" + hostHdr + "Content-Length : 4\r\n\r\nabcd",
		"POST " + u + " HTTP/1.1\r\n" + hostHdr + "X: a\r\n b\r\nContent-Length: 4\r\n\r\nabcd",
		"POST " + u + " HTTP/1.1\n" + hostHdr + "Content-Length: 4\r\n\r\nabcd",
	} {
		resp, _ := h.request(raw)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%q: %d, want 400", raw, resp.StatusCode)
		}
	}
	if n := len(up.requests()); n != 0 {
		t.Fatalf("upstream got %d requests, want 0", n)
	}
	// Well-framed bodies pass, re-framed.
	resp, body := h.request("POST " + u + "c HTTP/1.1\r\n" + hostHdr + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
	if resp.StatusCode != http.StatusOK || !strings.HasSuffix(body, "body=5") {
		t.Fatalf("chunked POST: %d %q", resp.StatusCode, body)
	}
	resp, body = h.request("POST " + u + "l HTTP/1.1\r\n" + hostHdr + "Content-Length: 4\r\nExpect: 100-continue\r\n\r\nabcd")
	if resp.StatusCode != http.StatusOK || !strings.HasSuffix(body, "body=4") {
		t.Fatalf("POST with Content-Length: %d %q", resp.StatusCode, body)
	}
}

// THREATS C5: resolve once, guard every answer, dial exactly what passed.
func TestDialsVettedAddressNotName(t *testing.T) {
	good := newTCPRecorder(t, "127.0.0.1:0")
	decoy := newTCPRecorder(t, fmt.Sprintf("127.0.0.9:%d", good.port))
	// Only 127.0.0.1 is lifted from the loopback guard; 127.0.0.9 is not.
	h := newHarness(t, policyOf(t, "allow rebind.test:*", "allow 127.0.0.1:*"))
	t.Run("only guarded answers", func(t *testing.T) {
		h.res.set("rebind.test", "127.0.0.9")
		_, resp, body := h.connect(fmt.Sprintf("rebind.test:%d", good.port))
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "guarded-address 127.0.0.9 (loopback") {
			t.Fatalf("CONNECT to a name resolving to a guarded address: %d %q", resp.StatusCode, body)
		}
	})
	t.Run("guarded answer dropped, vetted one dialled", func(t *testing.T) {
		h.res.set("rebind.test", "127.0.0.9", "127.0.0.1")
		c, resp, _ := h.connect(fmt.Sprintf("rebind.test:%d", good.port))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT: %d", resp.StatusCode)
		}
		echo(t, c, "payload\n")
	})
	t.Run("answer flips between check and use", func(t *testing.T) {
		h.res.mu.Lock()
		h.res.fn = func(name string, call int) []netip.Addr {
			if call%2 == 1 {
				return []netip.Addr{netip.MustParseAddr("127.0.0.1")}
			}
			return []netip.Addr{netip.MustParseAddr("127.0.0.9")}
		}
		h.res.calls = map[string]int{}
		h.res.mu.Unlock()
		for i := range 4 {
			before := h.res.callsFor("rebind.test")
			c, resp, _ := h.connect(fmt.Sprintf("rebind.test:%d", good.port))
			if got := h.res.callsFor("rebind.test") - before; got != 1 {
				t.Fatalf("tunnel %d resolved %d times, want once", i, got)
			}
			if resp.StatusCode == http.StatusOK {
				echo(t, c, "x\n")
			}
		}
		// Plain HTTP through the pooled transport too.
		h.request(fmt.Sprintf("GET http://rebind.test:%d/ HTTP/1.1\r\nHost: rebind.test:%d\r\n\r\n", good.port, good.port))
	})
	if n, _ := decoy.stats(); n != 0 {
		t.Fatalf("the guarded address got %d connections", n)
	}
}

// THREATS C6: never dial egressd's own listeners, whatever the policy says.
func TestSelfConnectionRefused(t *testing.T) {
	dnsLike := newTCPRecorder(t, "127.0.0.1:0")
	self := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dnsLike.port)
	h := newHarness(t, policyOf(t, "allow 127.0.0.0/8:*", "allow *:*"), func(c *Config) { c.SelfAddrs = []netip.AddrPort{self} })
	h.res.set("loop.test", "127.0.0.1")
	proxyPort := netip.MustParseAddrPort(h.addr).Port()
	for _, auth := range []string{h.addr, self.String(), fmt.Sprintf("loop.test:%d", proxyPort)} {
		_, resp, body := h.connect(auth)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, string(audit.ReasonSelf)) {
			t.Errorf("CONNECT %s: %d %q, want 403 %s", auth, resp.StatusCode, body, audit.ReasonSelf)
		}
	}
	resp, body := h.request(fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", h.addr, h.addr))
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, string(audit.ReasonSelf)) {
		t.Errorf("GET to the proxy itself: %d %q", resp.StatusCode, body)
	}
	// Origin-form requests to the explicit listener are not served (G3).
	resp, _ = h.request("GET /metrics HTTP/1.1\r\nHost: " + h.addr + "\r\n\r\n")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("origin-form request: %d, want 400", resp.StatusCode)
	}
	if n, _ := dnsLike.stats(); n != 0 {
		t.Fatalf("a self address got %d connections", n)
	}
}

// THREATS G5: past a cap, new work is refused, never let through.
func TestTunnelLimitRefusesNotBypasses(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	h := newHarness(t, policyOf(t, basePolicy(t)...), func(c *Config) { c.MaxTunnels = 2; c.MaxTunnelsPerDest = 1 })
	h.res.set("allowed.test", "127.0.0.1")
	h.res.set("other.allowed.test", "127.0.0.1")
	auth := fmt.Sprintf("allowed.test:%d", rec.port)
	c1, resp, _ := h.connect(auth)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("first tunnel: %d", resp.StatusCode)
	}
	echo(t, c1, "one\n")
	refused, resp, body := h.connect(auth)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Egressd-Denied") == "" || !strings.Contains(body, string(audit.ReasonMaxTunnelsPerDest)) {
		t.Fatalf("second tunnel to the same destination: %d %q, want 503 %s", resp.StatusCode, body, audit.ReasonMaxTunnelsPerDest)
	}
	refused.Close()
	waitOpen(t, h.p, 1)
	c2, resp, _ := h.connect(fmt.Sprintf("127.0.0.1:%d", rec.port))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("second tunnel, other destination: %d", resp.StatusCode)
	}
	echo(t, c2, "two\n")
	c3 := h.dial()
	fmt.Fprintf(c3, "CONNECT %s HTTP/1.1\r\n\r\n", auth)
	resp, body = readResponse(t, c3, "CONNECT")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, string(audit.ReasonMaxTunnels)) {
		t.Fatalf("third connection: %d %q, want 503 %s", resp.StatusCode, body, audit.ReasonMaxTunnels)
	}
	if n, _ := rec.stats(); n != 2 {
		t.Fatalf("upstream got %d connections, want 2", n)
	}
	c3.Close()
	c1.Close()
	waitOpen(t, h.p, 1)
	c4, resp, _ := h.connect(auth)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("tunnel after one closed: %d", resp.StatusCode)
	}
	echo(t, c4, "four\n")
}

// waitOpen waits until at most n connections are open.
func waitOpen(t *testing.T, p *Proxy, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for p.OpenTunnels() > n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open, want at most %d", p.OpenTunnels(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Hot reload: a tunnel the new policy denies is closed; others stay.
func TestReevaluateClosesNowDeniedTunnel(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	h := newHarness(t, policyOf(t, "allow allowed.test:*", "allow kept.test:*", "allow 127.0.0.1:*"))
	h.res.set("allowed.test", "127.0.0.1")
	h.res.set("kept.test", "127.0.0.1")
	doomed, _, _ := h.connect(fmt.Sprintf("allowed.test:%d", rec.port))
	echo(t, doomed, "before\n")
	kept, _, _ := h.connect(fmt.Sprintf("kept.test:%d", rec.port))
	echo(t, kept, "before\n")

	h.live.Store(policyFile(t, map[int]string{1: "allow *:*", 2: "allow 127.0.0.1:*", 7: "block allowed.test"}).Current())
	h.p.Reevaluate()
	if !tunnelClosed(doomed) {
		t.Fatal("tunnel to a now-blocked host stayed open")
	}
	_ = kept.SetReadDeadline(time.Time{})
	echo(t, kept, "after\n")
	rs := byKind(h.audit.waitRecords(t, 1), audit.KindConnect)
	if len(rs) != 1 || rs[0].Target != "allowed.test" || !strings.Contains(rs[0].Error, "closed on policy reload: blocked-by allowed.test (policy.toml:7)") {
		t.Fatalf("audit %+v, want the closed tunnel's record saying why", rs)
	}

	t.Run("nil matcher closes everything", func(t *testing.T) {
		h.live.Store(nil)
		h.p.Reevaluate()
		if !tunnelClosed(kept) {
			t.Fatal("tunnel survived a nil policy")
		}
	})
}

// Hijacked tunnels are tracked: Shutdown waits for them, then closes them.
func TestShutdownClosesTunnelsAfterGrace(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	live := policyOf(t, basePolicy(t)...)
	p, err := New(Config{Policy: live, Resolver: newFakeResolver()})
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan error, 1)
	go func() { done <- p.ServeExplicit(ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", rec.port)
	if resp, _ := readResponse(t, c, "CONNECT"); resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	echo(t, c, "x\n")
	idle, err := net.Dial("tcp", ln.Addr().String()) // connected, no request yet
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	time.Sleep(50 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = p.Shutdown(ctx)
	if took := time.Since(start); err != context.DeadlineExceeded || took < 250*time.Millisecond || took > 2*time.Second {
		t.Fatalf("Shutdown = %v after %s, want DeadlineExceeded after the 300ms grace", err, took)
	}
	if !tunnelClosed(c) {
		t.Fatal("tunnel open after Shutdown")
	}
	if !tunnelClosed(idle) {
		t.Fatal("idle connection open after Shutdown")
	}
	if err := <-done; err != ErrClosed {
		t.Fatalf("ServeExplicit = %v, want ErrClosed", err)
	}
	if n := p.OpenTunnels(); n != 0 {
		t.Fatalf("OpenTunnels = %d after Shutdown", n)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Fatal("listener still accepting after Shutdown")
	}
}

func TestShutdownWaitsForTunnelsThatEnd(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	p, err := New(Config{Policy: policyOf(t, "allow 127.0.0.1:*")})
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go p.ServeExplicit(ln)
	c, _ := net.Dial("tcp", ln.Addr().String())
	fmt.Fprintf(c, "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n", rec.port)
	readResponse(t, c, "CONNECT")
	echo(t, c, "x\n")
	go func() { time.Sleep(100 * time.Millisecond); c.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v, want nil once the tunnel ended", err)
	}
}

// THREATS G5: idle tunnels end.
func TestIdleTunnelClosed(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	h := newHarness(t, policyOf(t, basePolicy(t)...), func(c *Config) { c.IdleTimeout = 400 * time.Millisecond })
	c, _, _ := h.connect(fmt.Sprintf("127.0.0.1:%d", rec.port))
	echo(t, c, "x\n")
	start := time.Now()
	if !tunnelClosed(c) {
		t.Fatal("idle tunnel stayed open")
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("closed after %s, before the idle timeout", took)
	}
	rs := h.audit.waitRecords(t, 1)
	if len(rs) != 1 || !strings.Contains(rs[0].Error, "idle") {
		t.Fatalf("audit %+v", rs)
	}
}

// THREATS G6: no policy, no traffic.
func TestNilPolicyDeniesEverything(t *testing.T) {
	h := newHarness(t, &policy.Live{})
	h.res.set("allowed.test", "127.0.0.1")
	_, resp, _ := h.connect("allowed.test:443")
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("CONNECT under a nil policy: %d", resp.StatusCode)
	}
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without a Policy succeeded")
	}
}

// Resolver errors as dnsfilter's carry them: a policy refusal with its
// decision, a failure with its reason.
type (
	fakeRefusal struct {
		d    policy.Decision
		addr netip.Addr
	}
	fakeReasoned struct{ r audit.Reason }
	fakeTimeout  struct{}
)

func (e fakeRefusal) Error() string { return "resolving denied: " + e.d.String() }
func (e fakeRefusal) PolicyDecision() (policy.Decision, netip.Addr) {
	return e.d, e.addr
}
func (e fakeReasoned) Error() string             { return "upstream 192.0.2.53:53: " + string(e.r) }
func (e fakeReasoned) AuditReason() audit.Reason { return e.r }
func (fakeTimeout) Error() string                { return "upstream 192.0.2.53:53: reading over udp: i/o timeout" }
func (fakeTimeout) Timeout() bool                { return true }
func (fakeTimeout) Temporary() bool              { return true }

// TestEveryFailureHasItsOutcome: a refusal found after the name was allowed
// is a deny with the policy's reason; a failure of the resolver or the
// upstream is an error with its own reason, never a deny and never an
// allow with the failure hidden in "error"; and what the client reads
// (status line, header, body) never names the upstream resolver.
func TestEveryFailureHasItsOutcome(t *testing.T) {
	closed := func() string { // a port nothing listens on
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	_, closedPort, _ := net.SplitHostPort(closed)
	guarded := policy.Decision{Reason: policy.ReasonGuardedAddress}
	for _, tc := range []struct {
		name    string
		setup   func(r *fakeResolver)
		port    string
		status  int
		outcome audit.Outcome
		reason  audit.Reason
	}{
		{"resolver does not answer", func(r *fakeResolver) { r.fail("allowed.test", fmt.Errorf("resolving allowed.test: %w", fakeTimeout{})) }, "443",
			http.StatusGatewayTimeout, audit.OutcomeError, audit.ReasonResolverTimeout},
		{"resolver fails", func(r *fakeResolver) {
			r.fail("allowed.test", errors.New("upstream 192.0.2.53:53: upstream answered SERVFAIL"))
		}, "443",
			http.StatusBadGateway, audit.OutcomeError, audit.ReasonResolverError},
		{"no addresses", func(r *fakeResolver) { r.fail("allowed.test", fakeReasoned{audit.ReasonNoAddresses}) }, "443",
			http.StatusBadGateway, audit.OutcomeError, audit.ReasonNoAddresses},
		{"name over the resolver's limit", func(r *fakeResolver) { r.fail("allowed.test", fakeReasoned{audit.ReasonDNSMaxNameLen}) }, "443",
			http.StatusForbidden, audit.OutcomeDeny, audit.ReasonDNSMaxNameLen},
		{"every address guarded by the resolver", func(r *fakeResolver) {
			r.fail("allowed.test", fakeRefusal{guarded, netip.MustParseAddr("10.1.2.3")})
		}, "443", http.StatusForbidden, audit.OutcomeDeny, audit.ReasonGuardedAddress},
		{"every address guarded by the dialer", func(r *fakeResolver) { r.set("allowed.test", "10.1.2.3") }, "443",
			http.StatusForbidden, audit.OutcomeDeny, audit.ReasonGuardedAddress},
		{"a blocked CNAME target", func(r *fakeResolver) {
			r.fail("allowed.test", fakeRefusal{policy.Decision{Reason: policy.ReasonBlockedBy}, netip.Addr{}})
		}, "443", http.StatusForbidden, audit.OutcomeDeny, audit.ReasonBlockedBy},
		{"upstream refuses the connection", func(r *fakeResolver) { r.set("allowed.test", "127.0.0.1") }, closedPort,
			http.StatusBadGateway, audit.OutcomeError, audit.ReasonUpstreamError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, via := range []string{"CONNECT", "GET"} {
				h := newHarness(t, policyOf(t, basePolicy(t)...))
				tc.setup(h.res)
				var (
					resp *http.Response
					body string
				)
				if via == "CONNECT" {
					_, resp, body = h.connect("allowed.test:" + tc.port)
				} else {
					resp, body = h.request("GET http://allowed.test:" + tc.port + "/ HTTP/1.1\r\nHost: allowed.test:" + tc.port + "\r\n\r\n")
				}
				if resp.StatusCode != tc.status {
					t.Errorf("%s: status %d, want %d (%q)", via, resp.StatusCode, tc.status, body)
				}
				answer := resp.Status + "\n" + resp.Header.Get("X-Egressd-Denied") + "\n" + body
				if !strings.Contains(resp.Header.Get("X-Egressd-Denied"), string(tc.reason)) || !strings.Contains(resp.Status, "egressd") {
					t.Errorf("%s: answer does not say who refused and why:\n%s", via, answer)
				}
				if strings.Contains(answer, "192.0.2.53") {
					t.Errorf("%s: the sandbox is told the upstream resolver's address:\n%s", via, answer)
				}
				rs := h.audit.waitRecords(t, 1)
				if len(rs) != 1 || rs[0].Decision != tc.outcome || rs[0].Reason != tc.reason {
					t.Fatalf("%s: audit %+v, want one %s %s", via, rs, tc.outcome, tc.reason)
				}
				if tc.outcome == audit.OutcomeError && (rs[0].Rule != "allowed.test:*" || rs[0].Error == "") {
					t.Errorf("%s: an error record names the rule that allowed it and what failed: %+v", via, rs[0])
				}
			}
		})
	}
}

// A5 and the deadline rule: in a tunnel that admits raw TCP, first bytes
// that cannot start a request line pass at once, even a single byte; a
// token byte that could still start one is held until the line shows what
// it is, and refused, never relayed, if it is still unclassified at the
// header timeout.
func TestConnectFirstBytesHeldOnlyWhileTheyCouldBeARequest(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	h := newHarness(t, policyOf(t, basePolicy(t)...), func(c *Config) { c.HeaderTimeout = 300 * time.Millisecond })
	c, resp, _ := h.connect(fmt.Sprintf("127.0.0.1:%d", rec.port))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	_ = c.SetDeadline(time.Now().Add(time.Second))
	echo(t, c, "\x05")

	c, resp, _ = h.connect(fmt.Sprintf("127.0.0.1:%d", rec.port))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	io.WriteString(c, "G")
	if !tunnelClosed(c) {
		t.Fatal("a tunnel whose first byte stayed unclassified past the header timeout was not closed")
	}
	h.audit.waitRecords(t, 2)
	if _, n := rec.stats(); n != 1 {
		t.Fatalf("upstream got %d bytes, want only the first tunnel's 1 (the held byte must not reach it)", n)
	}
	var timeouts int
	for _, r := range h.audit.records(t) {
		if r.Decision == "deny" && r.Reason == audit.ReasonHeaderTimeout {
			timeouts++
		}
	}
	if timeouts != 1 {
		t.Fatalf("audit %+v, want one timeout denial", h.audit.records(t))
	}
}

// Pooled reuse: Reset closes every tunnel of the last tenant but keeps
// serving.
func TestResetClosesAllTunnels(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.1:0")
	h := newHarness(t, policyOf(t, basePolicy(t)...))
	var tunnels []net.Conn
	for range 3 {
		c, resp, _ := h.connect(fmt.Sprintf("127.0.0.1:%d", rec.port))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT: %d", resp.StatusCode)
		}
		echo(t, c, "x\n")
		tunnels = append(tunnels, c)
	}
	if err := h.p.Reset(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i, c := range tunnels {
		if !tunnelClosed(c) {
			t.Fatalf("tunnel %d open after Reset", i)
		}
	}
	waitOpen(t, h.p, 0)
	c, resp, _ := h.connect(fmt.Sprintf("127.0.0.1:%d", rec.port))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT after Reset: %d", resp.StatusCode)
	}
	echo(t, c, "still serving\n")
}
