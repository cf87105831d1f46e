package fakenet

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
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/privtest"
)

// TestMain asserts that the package's tests left nothing behind.
func TestMain(m *testing.M) {
	code := m.Run()
	if privtest.Enabled() {
		if left := LeftOvers(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "fakenet: left behind after the tests: %v\n", left)
			code = 1
		}
	}
	os.Exit(code)
}

func TestStartAndSandboxAreQuick(t *testing.T) {
	RequireRoot(t)
	t0 := time.Now()
	w := Start(t)
	t1 := time.Now()
	s := w.NewSandbox(t)
	t2 := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	t3 := time.Now()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	t4 := time.Now()
	t.Logf("Start %v, NewSandbox %v, sandbox Close %v, world Close %v",
		t1.Sub(t0), t2.Sub(t1), t3.Sub(t2), t4.Sub(t3))
	// Generous bound for a loaded 2-core machine; typical is ~10 ms for both.
	if d := t2.Sub(t0); d > 2*time.Second {
		t.Errorf("Start+NewSandbox took %v, want well under a second", d)
	}
}

// TestDigFromSandboxAnswersFromTableAndCountsQuery runs the real dig inside a sandbox against
// both DNS addresses, over UDP and TCP, and checks the answer and that exactly one question for
// the name arrived, from the sandbox.
func TestDigFromSandboxAnswersFromTableAndCountsQuery(t *testing.T) {
	w := Start(t)
	s := w.NewSandbox(t)
	w.SetRecords("a.example.test", A("203.0.113.10"))
	w.SetRecords("v6.example.test", AAAA("2001:db8::10"))
	w.SetRecords("txt.example.test", TXT("hello", "world"))
	w.SetRecords("www.example.test", CNAME("cname-target.example.test"))
	w.SetRecords("cname-target.example.test", A("198.51.100.10"))

	tests := []struct {
		name      string
		qname     string
		args      []string
		want      string // dig +short output
		wantProto string
		wantFrom  netip.Addr
	}{
		{"A over UDP", "a.example.test", []string{"@203.0.113.53", "a.example.test", "A"}, "203.0.113.10\n", "udp", s.Addr()},
		{"A over TCP", "a.example.test", []string{"+tcp", "@203.0.113.53", "A.Example.Test.", "A"}, "203.0.113.10\n", "tcp", s.Addr()},
		{"AAAA over IPv6", "v6.example.test", []string{"@2001:db8::53", "v6.example.test", "AAAA"}, "2001:db8::10\n", "udp", s.Addr6()},
		{"TXT over IPv6 TCP", "txt.example.test", []string{"+tcp", "@2001:db8::53", "txt.example.test", "TXT"}, "\"hello\" \"world\"\n", "tcp", s.Addr6()},
		{"CNAME chain followed", "www.example.test", []string{"@203.0.113.53", "www.example.test", "A"}, "cname-target.example.test.\n198.51.100.10\n", "udp", s.Addr()},
		{"unknown name is empty", "nope.example.test", []string{"@203.0.113.53", "nope.example.test", "A"}, "", "udp", s.Addr()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w.ResetCounters()
			args := append([]string{"+short", "+time=2", "+tries=1"}, tc.args...)
			out, stderr, code := s.Run(t, "dig", args...)
			if code != 0 {
				t.Fatalf("dig %v: exit %d, stderr %q", args, code, stderr)
			}
			if diff := cmp.Diff(tc.want, out); diff != "" {
				t.Errorf("dig %v answer (-want +got):\n%s", args, diff)
			}
			if got := w.DNSQueries(tc.qname); got != 1 {
				t.Errorf("DNSQueries(%q) = %d, want 1", tc.qname, got)
			}
			log := w.DNSLog()
			if len(log) != 1 {
				t.Fatalf("DNSLog has %d entries, want 1: %v", len(log), log)
			}
			if log[0].Proto != tc.wantProto || log[0].From.Addr() != tc.wantFrom {
				t.Errorf("logged query %+v, want proto %s from %s", log[0], tc.wantProto, tc.wantFrom)
			}
		})
	}

	t.Run("NXDOMAIN status", func(t *testing.T) {
		out, _, code := s.Run(t, "dig", "+time=2", "+tries=1", "@203.0.113.53", "nope.example.test")
		if code != 0 || !strings.Contains(out, "status: NXDOMAIN") {
			t.Errorf("dig for an unknown name: exit %d, want status NXDOMAIN in:\n%s", code, out)
		}
	})
	t.Run("a name never asked counts zero", func(t *testing.T) {
		if got := w.DNSQueries("blocked.example.test"); got != 0 {
			t.Errorf("DNSQueries = %d, want 0", got)
		}
	})
}

// exchange sends one query from inside ns to the world's DNS server.
func exchange(t *testing.T, ns *NetNS, network string, server netip.Addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, network, netip.AddrPortFrom(server, PortDNS).String())
	if err != nil {
		t.Fatalf("dialing DNS from %s: %v", ns.Name(), err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	resp, _, err := (&dns.Client{Net: network, Timeout: 5 * time.Second}).ExchangeWithConn(m, &dns.Conn{Conn: c})
	if err != nil {
		t.Fatalf("DNS exchange for %s %s: %v", name, dns.Type(qtype), err)
	}
	return resp
}

func answerStrings(m *dns.Msg) []string {
	out := []string{}
	for _, rr := range m.Answer {
		out = append(out, strings.ReplaceAll(rr.String(), "\t", " "))
	}
	return out
}

// TestDNSTableSemantics pins what the server answers: case echo, wildcards, NODATA, CNAME
// chains to nowhere, loops, generic records, and changes at run time (rebinding).
func TestDNSTableSemantics(t *testing.T) {
	w := Start(t)
	s := w.NewSandbox(t)
	w.SetRecords("exact.example.test.", A("203.0.113.10"), AAAA("2001:db8::10"))
	w.SetRecords("*.wild.example.test", A("198.51.100.10"))
	w.SetRecords("dangling.example.test", CNAME("missing.example.test"))
	w.SetRecords("loop1.example.test", CNAME("loop2.example.test"))
	w.SetRecords("loop2.example.test", CNAME("loop1.example.test"))
	w.SetRecords("svc.example.test", RR("HTTPS", `1 . alpn="h2" ipv4hint=203.0.113.10`))
	w.SetRecords("ttl.example.test", A("203.0.113.10").WithTTL(0))

	tests := []struct {
		name      string
		qname     string
		qtype     uint16
		wantRcode int
		want      []string
		wantSOA   bool
	}{
		{"exact A", "exact.example.test.", dns.TypeA, dns.RcodeSuccess,
			[]string{"exact.example.test. 60 IN A 203.0.113.10"}, false},
		{"case of the question is echoed", "ExAcT.example.TEST.", dns.TypeAAAA, dns.RcodeSuccess,
			[]string{"ExAcT.example.TEST. 60 IN AAAA 2001:db8::10"}, false},
		{"ANY returns every record", "exact.example.test.", dns.TypeANY, dns.RcodeSuccess,
			[]string{"exact.example.test. 60 IN A 203.0.113.10", "exact.example.test. 60 IN AAAA 2001:db8::10"}, false},
		{"NODATA for a missing type", "exact.example.test.", dns.TypeTXT, dns.RcodeSuccess, []string{}, true},
		{"wildcard answers any depth", "x.y.wild.example.test.", dns.TypeA, dns.RcodeSuccess,
			[]string{"x.y.wild.example.test. 60 IN A 198.51.100.10"}, false},
		{"wildcard does not match its apex", "wild.example.test.", dns.TypeA, dns.RcodeNameError, []string{}, true},
		{"CNAME to a missing name is NXDOMAIN with the chain", "dangling.example.test.", dns.TypeA, dns.RcodeNameError,
			[]string{"dangling.example.test. 60 IN CNAME missing.example.test."}, true},
		{"CNAME loop ends", "loop1.example.test.", dns.TypeA, dns.RcodeSuccess,
			[]string{"loop1.example.test. 60 IN CNAME loop2.example.test.", "loop2.example.test. 60 IN CNAME loop1.example.test."}, false},
		{"CNAME asked for itself", "dangling.example.test.", dns.TypeCNAME, dns.RcodeSuccess,
			[]string{"dangling.example.test. 60 IN CNAME missing.example.test."}, false},
		{"generic RR", "svc.example.test.", dns.TypeHTTPS, dns.RcodeSuccess,
			[]string{`svc.example.test. 60 IN HTTPS 1 . alpn="h2" ipv4hint="203.0.113.10"`}, false},
		{"TTL 0", "ttl.example.test.", dns.TypeA, dns.RcodeSuccess,
			[]string{"ttl.example.test. 0 IN A 203.0.113.10"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := exchange(t, &s.NetNS, "udp", DNS4, tc.qname, tc.qtype)
			if resp.Rcode != tc.wantRcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.wantRcode])
			}
			if diff := cmp.Diff(tc.want, answerStrings(resp)); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
			if gotSOA := len(resp.Ns) == 1 && resp.Ns[0].Header().Rrtype == dns.TypeSOA; gotSOA != tc.wantSOA {
				t.Errorf("authority %v, want SOA: %v", resp.Ns, tc.wantSOA)
			}
			if !resp.Authoritative {
				t.Error("answer is not authoritative")
			}
		})
	}

	t.Run("rebinding: the answer changes at run time", func(t *testing.T) {
		steps := []struct {
			rec   []Record
			qtype uint16
			want  []string
		}{
			{[]Record{A("203.0.113.10").WithTTL(0)}, dns.TypeA, []string{"rebind.example.test. 0 IN A 203.0.113.10"}},
			{[]Record{A("127.0.0.1").WithTTL(0)}, dns.TypeA, []string{"rebind.example.test. 0 IN A 127.0.0.1"}},
			{[]Record{A("169.254.169.254").WithTTL(0)}, dns.TypeA, []string{"rebind.example.test. 0 IN A 169.254.169.254"}},
			{[]Record{A("::ffff:10.0.0.1")}, dns.TypeA, []string{"rebind.example.test. 60 IN A 10.0.0.1"}},
			{[]Record{AAAA("::ffff:10.0.0.1")}, dns.TypeAAAA, []string{"rebind.example.test. 60 IN AAAA ::ffff:10.0.0.1"}},
			{nil, dns.TypeA, []string{}},
		}
		for i, st := range steps {
			w.SetRecords("rebind.example.test", st.rec...)
			resp := exchange(t, &s.NetNS, "tcp", DNS6, "rebind.example.test.", st.qtype)
			if diff := cmp.Diff(st.want, answerStrings(resp)); diff != "" {
				t.Errorf("step %d (-want +got):\n%s", i, diff)
			}
		}
		if got := w.DNSQueries("REBIND.example.test"); got != len(steps) {
			t.Errorf("DNSQueries = %d, want %d", got, len(steps))
		}
	})

	t.Run("large answers truncate over UDP and come whole over TCP", func(t *testing.T) {
		var recs []Record
		for i := range 40 {
			recs = append(recs, A(fmt.Sprintf("203.0.113.%d", i+100)))
		}
		w.SetRecords("big.example.test", recs...)
		udp := exchange(t, &s.NetNS, "udp", DNS4, "big.example.test.", dns.TypeA)
		if !udp.Truncated || len(udp.Answer) >= 40 {
			t.Errorf("UDP answer: TC=%v with %d records, want TC and fewer than 40", udp.Truncated, len(udp.Answer))
		}
		tcp := exchange(t, &s.NetNS, "tcp", DNS4, "big.example.test.", dns.TypeA)
		if tcp.Truncated || len(tcp.Answer) != 40 {
			t.Errorf("TCP answer: TC=%v with %d records, want all 40", tcp.Truncated, len(tcp.Answer))
		}
	})
}

// TestHTTPSFromSandboxNamesHostAndSNI runs curl inside a sandbox and reads, from the body, the
// Host and SNI the real server saw — the application-layer evidence the e2e suites score on.
func TestHTTPSFromSandboxNamesHostAndSNI(t *testing.T) {
	w := Start(t)
	s := w.NewSandbox(t)
	curl := func(args ...string) []string {
		return append([]string{"-sS", "--max-time", "5", "--cacert", w.CAFile()}, args...)
	}
	tests := []struct {
		name string
		args []string
		want HTTPRequest // Server, Time, Remote port and ALPN are not compared
	}{
		{"HTTPS by name", curl("--resolve", "api.example.test:443:203.0.113.10", "https://api.example.test/x?y=1"),
			HTTPRequest{Scheme: "https", Host: "api.example.test", SNI: "api.example.test", Method: "GET", URI: "/x?y=1",
				Proto: "HTTP/2.0", Local: netip.MustParseAddrPort("203.0.113.10:443")}},
		{"HTTP/1.1 over TLS", curl("--http1.1", "--resolve", "api.example.test:443:198.51.100.10", "https://api.example.test/"),
			HTTPRequest{Scheme: "https", Host: "api.example.test", SNI: "api.example.test", Method: "GET", URI: "/",
				Proto: "HTTP/1.1", Local: netip.MustParseAddrPort("198.51.100.10:443")}},
		{"plain HTTP", curl("--resolve", "plain.example.test:80:203.0.113.10", "http://plain.example.test/p"),
			HTTPRequest{Scheme: "http", Host: "plain.example.test", Method: "GET", URI: "/p",
				Proto: "HTTP/1.1", Local: netip.MustParseAddrPort("203.0.113.10:80")}},
		{"h2c with prior knowledge", curl("--http2-prior-knowledge", "--resolve", "plain.example.test:80:203.0.113.10", "http://plain.example.test/h2c"),
			HTTPRequest{Scheme: "http", Host: "plain.example.test", Method: "GET", URI: "/h2c",
				Proto: "HTTP/2.0", Local: netip.MustParseAddrPort("203.0.113.10:80")}},
		{"Host differs from SNI (fronting is visible)", curl("--http1.1", "-H", "Host: other.example.test",
			"--resolve", "front.example.test:443:203.0.113.10", "https://front.example.test/"),
			HTTPRequest{Scheme: "https", Host: "other.example.test", SNI: "front.example.test", Method: "GET", URI: "/",
				Proto: "HTTP/1.1", Local: netip.MustParseAddrPort("203.0.113.10:443")}},
		{"HTTPS over IPv6", curl("--resolve", "v6.example.test:443:[2001:db8::10]", "https://v6.example.test/"),
			HTTPRequest{Scheme: "https", Host: "v6.example.test", SNI: "v6.example.test", Method: "GET", URI: "/",
				Proto: "HTTP/2.0", Local: netip.MustParseAddrPort("[2001:db8::10]:443")}},
		{"POST body is counted", curl("--resolve", "api.example.test:443:203.0.113.10", "--data-binary", "hello", "https://api.example.test/post"),
			HTTPRequest{Scheme: "https", Host: "api.example.test", SNI: "api.example.test", Method: "POST", URI: "/post",
				Proto: "HTTP/2.0", BodyBytes: 5, Local: netip.MustParseAddrPort("203.0.113.10:443")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w.ResetCounters()
			out, stderr, code := s.Run(t, "curl", tc.args...)
			if code != 0 {
				t.Fatalf("curl %v: exit %d: %s\nserver errors: %q", tc.args, code, stderr, w.ServerErrors())
			}
			got, err := ParseReply([]byte(out))
			if err != nil {
				t.Fatal(err)
			}
			wantRemote := s.Addr()
			if tc.want.Local.Addr().Is6() {
				wantRemote = s.Addr6()
			}
			if got.Remote.Addr() != wantRemote {
				t.Errorf("remote %s, want the sandbox %s", got.Remote, wantRemote)
			}
			if got.Header.Get("User-Agent") == "" {
				t.Errorf("reply lacks the request's headers: %v", got.Header)
			}
			got.Server, got.Remote, got.ALPN, got.Header = "", netip.AddrPort{}, "", nil
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
			if n := w.HTTPRequests(tc.want.Host); n != 1 {
				t.Errorf("HTTPRequests(%q) = %d, want 1", tc.want.Host, n)
			}
			if n := w.TCPAccepted(tc.want.Local); n != 1 {
				t.Errorf("TCPAccepted(%s) = %d, want 1", tc.want.Local, n)
			}
		})
	}

	t.Run("the CA is not trusted without --cacert", func(t *testing.T) {
		w.ResetCounters()
		_, stderr, code := s.Run(t, "curl", "-sS", "--max-time", "5", "--resolve", "api.example.test:443:203.0.113.10", "https://api.example.test/")
		if code != 60 { // CURLE_PEER_FAILED_VERIFICATION
			t.Errorf("curl without the CA: exit %d (%s), want 60", code, stderr)
		}
		if n := w.HTTPRequests("api.example.test"); n != 0 {
			t.Errorf("HTTPRequests = %d after a failed handshake, want 0", n)
		}
		if n := w.TCPAccepted(netip.MustParseAddrPort("203.0.113.10:443")); n != 1 {
			t.Errorf("TCPAccepted = %d, want 1 (connected, then refused the certificate)", n)
		}
	})

	t.Run("openssl verifies with CAFile", func(t *testing.T) {
		out, stderr, code := s.Run(t, "sh", "-c", `openssl s_client -connect 203.0.113.10:443 -servername ossl.example.test -verify_hostname ossl.example.test -CAfile "$0" -verify_return_error </dev/null`, w.CAFile())
		if code != 0 || !strings.Contains(out, "Verify return code: 0 (ok)") {
			t.Errorf("openssl s_client: exit %d\n%s\n%s", code, out, stderr)
		}
	})

	t.Run("redirect and bytes paths", func(t *testing.T) {
		out, stderr, code := s.Run(t, "curl", curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
			"--resolve", "r.example.test:443:203.0.113.10", "https://r.example.test/redirect?to=https://elsewhere.example.test/z")...)
		if code != 0 || out != "302 https://elsewhere.example.test/z" {
			t.Errorf("redirect: exit %d, %q, %s", code, out, stderr)
		}
		out, stderr, code = s.Run(t, "curl", curl("-o", "/dev/null", "-w", "%{size_download}",
			"--resolve", "r.example.test:443:203.0.113.10", "https://r.example.test/bytes/1000000")...)
		if code != 0 || out != "1000000" {
			t.Errorf("bytes: exit %d, %q, %s", code, out, stderr)
		}
	})
}

// TestGoClientInSandboxUsesCertPoolAndHTTP2 talks HTTPS from a sandbox in-process, with the
// world's CertPool, and sees HTTP/2 negotiated; also a ClientHello without SNI.
func TestGoClientInSandboxUsesCertPoolAndHTTP2(t *testing.T) {
	w := Start(t)
	s := w.NewSandbox(t)
	dialHost := func(ctx context.Context, network, _ string) (net.Conn, error) {
		return s.DialContext(ctx, network, "203.0.113.10:443")
	}
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext:       dialHost,
			TLSClientConfig:   &tls.Config{RootCAs: w.CertPool()},
			ForceAttemptHTTP2: true,
		},
	}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://go.example.test/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	got, err := ParseReply(body)
	if err != nil {
		t.Fatal(err)
	}
	if got.SNI != "go.example.test" || got.ALPN != "h2" || resp.Header.Get("X-Fakenet-SNI") != "go.example.test" {
		t.Errorf("reply %+v, header SNI %q: want SNI go.example.test over h2", got, resp.Header.Get("X-Fakenet-SNI"))
	}

	// No SNI: the certificate is minted for the address connected to.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	raw, err := s.DialContext(ctx, "tcp", "203.0.113.10:443")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	tc := tls.Client(raw, &tls.Config{RootCAs: w.CertPool(), ServerName: "203.0.113.10", NextProtos: []string{"http/1.1"}})
	if err := tc.HandshakeContext(ctx); err != nil {
		t.Fatalf("handshake without SNI (IP literal): %v", err)
	}
	fmt.Fprint(tc, "GET / HTTP/1.1\r\nHost: nosni.example.test\r\nConnection: close\r\n\r\n")
	r, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(r.Body)
	got, err = ParseReply(body)
	if err != nil {
		t.Fatal(err)
	}
	if got.SNI != "" || got.Host != "nosni.example.test" {
		t.Errorf("reply %+v: want no SNI and Host nosni.example.test", got)
	}
}

// TestEchoFromSandboxCountsWhatArrived proves the echo servers work and count: zero before,
// one connection / datagram after.
func TestEchoFromSandboxCountsWhatArrived(t *testing.T) {
	w := Start(t)
	s := w.NewSandbox(t)
	for _, host := range []netip.Addr{Host4, Host6} {
		ap := netip.AddrPortFrom(host, PortEcho)
		t.Run("tcp "+ap.String(), func(t *testing.T) {
			if n := w.TCPAccepted(ap); n != 0 {
				t.Fatalf("TCPAccepted before = %d", n)
			}
			c, err := s.DialContext(t.Context(), "tcp", ap.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("ping tcp")); err != nil {
				t.Fatal(err)
			}
			_ = c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "ping tcp" {
				t.Errorf("echo = %q, %v; want %q", got, err, "ping tcp")
			}
			if n := w.TCPAccepted(ap); n != 1 {
				t.Errorf("TCPAccepted = %d, want 1", n)
			}
		})
		t.Run("udp "+ap.String(), func(t *testing.T) {
			if n := w.UDPReceived(ap); n != 0 {
				t.Fatalf("UDPReceived before = %d", n)
			}
			c, err := s.DialContext(t.Context(), "udp", ap.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("ping udp")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != "ping udp" {
				t.Errorf("echo = %q, %v; want %q", buf[:n], err, "ping udp")
			}
			if n := w.UDPReceived(ap); n != 1 {
				t.Errorf("UDPReceived = %d, want 1", n)
			}
		})
	}
	t.Run("socat from the command line", func(t *testing.T) {
		out, stderr, code := s.Run(t, "sh", "-c", "printf hello | socat -t 0.5 - UDP:198.51.100.10:7")
		if code != 0 || out != "hello" {
			t.Errorf("socat udp echo: exit %d, %q, %s", code, out, stderr)
		}
	})
}

// TestWorldHasNoRouteToRealNetwork is the fake internet's safety property: no default route,
// no interface but lo and the sandbox veths, and a connect to any address the world does not
// hold fails at once with "network unreachable" (in the world) or an ICMP error (from a sandbox),
// every time, never a hang and never a packet out.
func TestWorldHasNoRouteToRealNetwork(t *testing.T) {
	w := Start(t)
	s := w.NewSandbox(t)

	for _, fam := range []string{"-4", "-6"} {
		out, stderr, code := w.Run(t, "ip", fam, "route", "show", "table", "all")
		if code != 0 {
			t.Fatalf("ip %s route: exit %d: %s", fam, code, stderr)
		}
		if strings.Contains(out, "default") {
			t.Errorf("world has a default route (%s):\n%s", fam, out)
		}
	}
	out, _, _ := w.Run(t, "ip", "-o", "link", "show")
	var links []string
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) > 1 {
			links = append(links, strings.Split(strings.TrimSuffix(f[1], ":"), "@")[0])
		}
	}
	if diff := cmp.Diff([]string{"lo", s.WorldLink()}, links); diff != "" {
		t.Errorf("world interfaces (-want +got):\n%s", diff)
	}

	// 240.0.0.1 (reserved) and 100::1 (discard-only, RFC 6666) stand for "the real internet".
	// attempts: for IPv4, past the burst of the ICMP error rate limit (5).
	targets := []struct {
		addr     string
		attempts int
	}{{"240.0.0.1:80", 7}, {"[100::1]:80", 2}}
	for _, tg := range targets {
		target := tg.addr
		t.Run("from the world to "+target, func(t *testing.T) {
			for _, network := range []string{"tcp", "udp"} {
				start := time.Now()
				_, err := w.DialContext(t.Context(), network, target)
				if !errors.Is(err, syscall.ENETUNREACH) {
					t.Errorf("%s dial %s from the world: %v, want network unreachable", network, target, err)
				}
				if d := time.Since(start); d > 100*time.Millisecond {
					t.Errorf("%s dial took %v, want immediate", network, d)
				}
			}
		})
		t.Run("from a sandbox to "+target, func(t *testing.T) {
			// The world answers with ICMP unreachable. That the error arrives at once is not
			// guaranteed: the kernel rate-limits ICMP errors for unroutable packets (global
			// net.ipv4.route.error_burst: 5, then 1/s per source), and an error that arrives
			// while connect(2) still holds the socket is dropped (TcpExtLockDroppedIcmps) and
			// the retransmitted SYN gets the next one a second later. Without the ICMP error a
			// connect would take minutes; 3s proves the world refused.
			for i := range tg.attempts {
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				start := time.Now()
				_, err := s.DialContext(ctx, "tcp", target)
				cancel()
				if !errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.ENETUNREACH) {
					t.Fatalf("attempt %d: dial %s from the sandbox: %v, want host/network unreachable", i, target, err)
				}
				if d := time.Since(start); d > 3*time.Second {
					t.Errorf("attempt %d took %v, want the world's ICMP error within 3s", i, d)
				}
			}
		})
	}
	t.Run("curl from a sandbox fails fast", func(t *testing.T) {
		start := time.Now()
		_, stderr, code := s.Run(t, "curl", "-sS", "--max-time", "10", "http://240.0.0.1/")
		if code != 7 || time.Since(start) > 3*time.Second {
			t.Errorf("curl to 240.0.0.1: exit %d after %v (%s), want exit 7 (could not connect) within 3s", code, time.Since(start), stderr)
		}
	})
	t.Run("sysctls land in the world only", func(t *testing.T) {
		out, _, _ := w.Run(t, "cat", "/proc/sys/net/ipv4/icmp_ratelimit")
		if strings.TrimSpace(out) != "0" {
			t.Errorf("world icmp_ratelimit = %q, want 0", out)
		}
		host, err := os.ReadFile("/proc/sys/net/ipv4/icmp_ratelimit")
		if err != nil || strings.TrimSpace(string(host)) == "0" {
			t.Errorf("this process's namespace icmp_ratelimit = %q (%v): the world's sysctl leaked out", host, err)
		}
	})
}

// TestSandboxesReachEachOtherThroughTheWorld: the world routes between its sandboxes, over
// IPv4 and IPv6.
func TestSandboxesReachEachOtherThroughTheWorld(t *testing.T) {
	w := Start(t)
	s1, s2 := w.NewSandbox(t), w.NewSandbox(t)
	for _, a := range []netip.Addr{s2.Addr(), s2.Addr6()} {
		var ln net.Listener
		if err := s2.Do(func() (err error) {
			ln, err = net.Listen("tcp", netip.AddrPortFrom(a, 0).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		c, err := s1.DialContext(t.Context(), "tcp", ln.Addr().String())
		if err != nil {
			t.Errorf("sandbox %s to sandbox %s: %v", s1.Name(), ln.Addr(), err)
		} else {
			c.Close()
		}
		ln.Close()
	}
}

func TestSandboxWithoutIPv6HasNoIPv6Path(t *testing.T) {
	w := Start(t)
	s := w.NewSandbox(t, NoIPv6())
	if s.Addr6().IsValid() || s.Gateway6().IsValid() {
		t.Errorf("Addr6 %v, Gateway6 %v: want none", s.Addr6(), s.Gateway6())
	}
	_, err := s.DialContext(t.Context(), "tcp", "[2001:db8::10]:80")
	if !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("IPv6 dial from a NoIPv6 sandbox: %v, want network unreachable", err)
	}
	c, err := s.DialContext(t.Context(), "tcp", "203.0.113.10:7")
	if err != nil {
		t.Fatalf("IPv4 still works: %v", err)
	}
	c.Close()
}

// TestAddHostAndListenersAtRunTime covers the ways a test adds to the world after Start.
func TestAddHostAndListenersAtRunTime(t *testing.T) {
	extra := netip.MustParseAddr("198.51.100.20")
	w := Start(t, WithHosts(extra))
	s := w.NewSandbox(t)

	late := netip.MustParseAddr("203.0.113.99")
	if err := w.AddHost(late); err != nil {
		t.Fatal(err)
	}
	if err := w.AddHost(late); err != nil {
		t.Errorf("adding a host twice: %v", err)
	}
	for _, h := range []netip.Addr{extra, late} {
		out, stderr, code := s.Run(t, "curl", "-sS", "--max-time", "5", "http://"+h.String()+"/")
		got, err := ParseReply([]byte(out))
		if code != 0 || err != nil || got.Local != netip.AddrPortFrom(h, 80) {
			t.Errorf("curl %s: exit %d (%s), reply %+v, %v", h, code, stderr, got, err)
		}
	}

	for _, bad := range []string{"192.0.2.9", "2001:db8:ffff:1::5", "127.0.0.2", "0.0.0.0", "224.0.0.1", "fe80::1"} {
		if err := w.AddHost(netip.MustParseAddr(bad)); err == nil {
			t.Errorf("AddHost(%s) = nil, want an error", bad)
		}
	}

	// A banner server of the test's own, on a new address and port.
	ln, err := w.ListenTCP(netip.MustParseAddrPort("198.51.100.22:22"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, "SSH-2.0-fakenet\r\n")
			c.Close()
		}
	}()
	out, stderr, code := s.Run(t, "socat", "-T", "2", "-", "TCP:198.51.100.22:22")
	if code != 0 || out != "SSH-2.0-fakenet\r\n" {
		t.Errorf("banner: exit %d, %q, %s", code, out, stderr)
	}
	if n := w.TCPAccepted(netip.MustParseAddrPort("198.51.100.22:22")); n != 1 {
		t.Errorf("TCPAccepted = %d, want 1", n)
	}

	pc, err := w.ListenUDP(netip.MustParseAddrPort("198.51.100.22:0"))
	if err != nil {
		t.Fatal(err)
	}
	lap := netip.MustParseAddrPort(pc.LocalAddr().String())
	c, err := s.DialContext(t.Context(), "udp", lap.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := pc.ReadFrom(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if n := w.UDPReceived(lap); n != 1 {
		t.Errorf("UDPReceived(%s) = %d, want 1", lap, n)
	}
}

func TestExecInWorldSeesTheFakeInternet(t *testing.T) {
	w := Start(t)
	out, stderr, code := w.Run(t, "ip", "-o", "addr", "show", "dev", "lo")
	if code != 0 {
		t.Fatalf("ip addr: exit %d: %s", code, stderr)
	}
	for _, a := range []netip.Addr{DNS4, DNS6, Host4, Host4b, Host6} {
		if !strings.Contains(out, " "+a.String()+"/") {
			t.Errorf("world lo lacks %s:\n%s", a, out)
		}
	}
	// A process in the world reaches the servers too (a launcher running there will).
	w.SetRecords("world.example.test", A("203.0.113.10"))
	out, _, code = w.Run(t, "dig", "+short", "+time=2", "+tries=1", "@203.0.113.53", "world.example.test")
	if code != 0 || out != "203.0.113.10\n" {
		t.Errorf("dig in the world: exit %d, %q", code, out)
	}

	// Exec's context kills the command's whole process group.
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := w.Exec(ctx, "sh", "-c", "sleep 30 & sleep 30").Run()
	if err == nil || time.Since(start) > 5*time.Second {
		t.Errorf("Exec with an expiring context: %v after %v, want killed at once", err, time.Since(start))
	}
}

// TestTeardownRemovesEverything checks that namespaces, links and CA files are gone after a
// test, and that a process left running in a sandbox is killed and reported.
func TestTeardownRemovesEverything(t *testing.T) {
	RequireRoot(t)
	var paths []string
	var caDir string
	t.Run("world", func(t *testing.T) {
		w := Start(t)
		s1 := w.NewSandbox(t)
		s2 := w.NewSandbox(t, NoIPv6())
		paths = []string{w.Path(), s1.Path(), s2.Path()}
		caDir = filepath.Dir(w.CAFile())
		for _, p := range paths {
			if _, err := os.Stat(p); err != nil {
				t.Fatalf("%s missing while the test runs: %v", p, err)
			}
		}
		// Open connections and a leaked process do not stop teardown.
		c, err := s1.DialContext(t.Context(), "tcp", "203.0.113.10:7")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()

		s3 := w.NewSandbox(t)
		cmd := s3.Exec(context.Background(), "sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		err = s3.Close()
		if err == nil || !strings.Contains(err.Error(), strconv.Itoa(cmd.Process.Pid)) {
			t.Errorf("Close with a process inside = %v, want an error naming pid %d", err, cmd.Process.Pid)
		}
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			t.Errorf("process %d still running after Close", cmd.Process.Pid)
		}
		if _, err := os.Stat(s3.Path()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Close: %v", s3.Path(), err)
		}
	})
	for _, p := range append(paths, caDir) {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after the test: %v, want gone", p, err)
		}
	}
	for _, l := range LeftOvers() {
		t.Errorf("left over: %s", l)
	}
}

// fakeTB records Fatalf and cleanups, so a test can watch Start fail and then run its cleanups.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	fatal    string
	errs     []string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}

// runFailing runs fn (which calls Start or NewSandbox with tb) on its own goroutine, as the
// testing package would, then the cleanups in reverse order.
func (f *fakeTB) runFailing(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

func TestPartialSetupFailureLeavesNothing(t *testing.T) {
	RequireRoot(t)
	t.Cleanup(func() { testHook = nil })
	injected := errors.New("injected failure")

	for _, stage := range []string{"netns", "links", "servers"} {
		t.Run("Start fails at "+stage, func(t *testing.T) {
			testHook = func(s string) error {
				if s == stage {
					return injected
				}
				return nil
			}
			defer func() { testHook = nil }()
			ftb := &fakeTB{TB: t}
			var w *World
			ftb.runFailing(func() { w = Start(ftb) })
			if !strings.Contains(ftb.fatal, injected.Error()) {
				t.Fatalf("Start fatal = %q, want the injected failure", ftb.fatal)
			}
			if len(ftb.errs) > 0 {
				t.Errorf("teardown errors: %v", ftb.errs)
			}
			if w != nil {
				t.Errorf("Start returned after failing")
			}
			for _, l := range LeftOvers() {
				t.Errorf("left over: %s", l)
			}
		})
	}

	for _, stage := range []string{"sandbox-netns", "veth"} {
		t.Run("NewSandbox fails at "+stage, func(t *testing.T) {
			w := Start(t)
			testHook = func(s string) error {
				if s == stage {
					return injected
				}
				return nil
			}
			ftb := &fakeTB{TB: t}
			ftb.runFailing(func() { w.NewSandbox(ftb) })
			testHook = nil
			if !strings.Contains(ftb.fatal, injected.Error()) {
				t.Fatalf("NewSandbox fatal = %q, want the injected failure", ftb.fatal)
			}
			if len(ftb.errs) > 0 {
				t.Errorf("teardown errors: %v", ftb.errs)
			}
			out, _, _ := w.Run(t, "ip", "-o", "link", "show")
			if strings.Contains(out, Prefix) {
				t.Errorf("veth left in the world:\n%s", out)
			}
			// The slot is free again: the next sandbox is slot 0 and works.
			s := w.NewSandbox(t)
			if s.WorldLink() != Prefix+"s0" {
				t.Errorf("next sandbox link %s, want %ss0", s.WorldLink(), Prefix)
			}
			c, err := s.DialContext(t.Context(), "tcp", "203.0.113.10:7")
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		})
	}
}

func TestLeftOversFindsStaleNamespaceOfDeadProcess(t *testing.T) {
	RequireRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("%sw-%d-%s", Prefix, dead.Process.Pid, randomHex(3))
	live := fmt.Sprintf("%sw-1-%s", Prefix, randomHex(3)) // pid 1 runs: someone else's
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{stale, live} {
		p := filepath.Join(NetnsDir, n)
		if err := os.WriteFile(p, nil, 0o444); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
	}
	left := LeftOvers()
	if !contains(left, "netns "+stale) || contains(left, "netns "+live) {
		t.Errorf("LeftOvers() = %v, want %s listed and %s (a live process's) not", left, stale, live)
	}
	if err := RemoveStale(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(NetnsDir, stale)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale namespace after RemoveStale: %v", err)
	}
	if _, err := os.Stat(filepath.Join(NetnsDir, live)); err != nil {
		t.Errorf("RemoveStale touched a live process's namespace: %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestRecordConstructorsRejectMalformedLiterals(t *testing.T) {
	tests := []struct {
		name string
		fn   func()
	}{
		{"A of IPv6", func() { A("2001:db8::1") }},
		{"A of garbage", func() { A("300.1.1.1") }},
		{"AAAA of plain IPv4", func() { AAAA("10.0.0.1") }},
		{"CNAME of a bad name", func() { CNAME("a..b") }},
		{"RR with bad rdata", func() { RR("MX", "not-a-number x.") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			tc.fn()
		})
	}
}

func TestParseReplyRejectsWhatIsNotTheServer(t *testing.T) {
	for _, body := range []string{"", "<html>403 blocked by proxy</html>", `{"server":"squid","host":"x"}`} {
		if _, err := ParseReply([]byte(body)); err == nil {
			t.Errorf("ParseReply(%q) = nil error", body)
		}
	}
}

func BenchmarkStartSandboxClose(b *testing.B) {
	RequireRoot(b)
	for b.Loop() {
		w := Start(b)
		w.NewSandbox(b)
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
