package proxy

import (
	"bufio"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// THREATS B7-B9: every authority a CONNECT can carry.
func TestParseAuthority(t *testing.T) {
	name := func(n string, port uint16) policy.Target { return policy.Target{Name: n, Port: port} }
	addr := func(a string, port uint16) policy.Target {
		return policy.Target{Addr: netip.MustParseAddr(a), Port: port}
	}
	tests := []struct {
		in   string
		want policy.Target
		bad  bool
	}{
		{in: "github.com:443", want: name("github.com", 443)},
		{in: "GitHub.COM.:443", want: name("github.com", 443)},
		{in: "xn--nxasmq6b.test:443", want: name("xn--nxasmq6b.test", 443)},
		{in: "_dmarc.example.com:443", want: name("_dmarc.example.com", 443)},
		{in: "203.0.113.7:443", want: addr("203.0.113.7", 443)},
		{in: "[2001:db8::1]:443", want: addr("2001:db8::1", 443)},
		{in: "[::ffff:127.0.0.1]:443", want: addr("127.0.0.1", 443)},
		// B7: NUL and control bytes, raw or encoded.
		{in: "evil.example\x00.github.com:443", bad: true},
		{in: "evil.example%00.github.com:443", bad: true},
		{in: "evil.example\t.github.com:443", bad: true},
		{in: "evil.example\x7f.github.com:443", bad: true},
		{in: "github.com :443", bad: true},
		// B8: userinfo, percent-encoding, backslash.
		{in: "github.com@evil.example:443", bad: true},
		{in: "github.com%40evil.example:443", bad: true},
		{in: "%65vil.example:443", bad: true},
		{in: "github.com\\@evil.example:443", bad: true},
		{in: "github.com/evil:443", bad: true},
		{in: "ｇithub.com:443", bad: true},
		// B9: shapes and lengths.
		{in: "a..github.com:443", bad: true},
		{in: ".github.com:443", bad: true},
		{in: strings.Repeat("a", 64) + ".com:443", bad: true},
		{in: strings.Repeat("abcdefghi.", 30) + "com:443", bad: true},
		{in: "[github.com]:443", bad: true},
		{in: "[[github.com]]:443", bad: true},
		{in: "[::1:443", bad: true},
		{in: "github.com:0443", bad: true},
		{in: "github.com:443 extra", bad: true},
		{in: "github.com:+443", bad: true},
		{in: "github.com:-12", bad: true},
		{in: "github.com:65536", bad: true},
		{in: "github.com:0", bad: true},
		{in: "github.com:https", bad: true},
		{in: "github.com:", bad: true},
		{in: "github.com", bad: true}, // CONNECT needs a port
		{in: "::1:443", bad: true},    // a bare IPv6 literal has no port
		{in: "", bad: true},
		// C2: alternative IPv4 spellings are neither names nor addresses.
		{in: "16843009:443", bad: true},
		{in: "127.1:443", bad: true},
		{in: "0x7f000001:443", bad: true},
		{in: "0177.0.0.1:443", bad: true},
		{in: "[fe80::1%25eth0]:443", bad: true},
	}
	for _, tc := range tests {
		got, err := parseAuthority(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parseAuthority(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseAuthority(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("parseAuthority(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestParseAbsoluteTarget(t *testing.T) {
	tests := []struct {
		in       string
		want     string // target
		wantPath string
		bad      bool
	}{
		{in: "http://github.com/x?y=1", want: "github.com:80", wantPath: "/x?y=1"},
		{in: "HTTP://GitHub.com:8080", want: "github.com:8080", wantPath: "/"},
		{in: "http://github.com?q", want: "github.com:80", wantPath: "/?q"},
		{in: "http://[2001:db8::1]:81/", want: "[2001:db8::1]:81", wantPath: "/"},
		{in: "http://github.com@evil.example/", bad: true},
		{in: "http://github.com%40evil.example/", bad: true},
		{in: "http://%65vil.example/", bad: true},
		{in: "http://github.com\\@evil.example/", bad: true},
		{in: "http://github.com/#frag", bad: true},
		{in: "http:///path", bad: true},
		{in: "https://github.com/", bad: true},
		{in: "ftp://github.com/", bad: true},
		{in: "/relative", bad: true},
		{in: "http://github.com:99999/", bad: true},
	}
	for _, tc := range tests {
		got, path, err := parseAbsoluteTarget(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parseAbsoluteTarget(%q) = %v %q, want an error", tc.in, got, path)
			}
			continue
		}
		if err != nil || got.String() != tc.want || path != tc.wantPath {
			t.Errorf("parseAbsoluteTarget(%q) = %v %q, %v; want %s %q", tc.in, got, path, err, tc.want, tc.wantPath)
		}
	}
}

func TestParseRequestHead(t *testing.T) {
	type summary struct {
		Method, Target, Proto string
		Major                 int
		Host                  string
		ContentLength         int64
		Chunked, KeepAlive    bool
		Expect                bool
	}
	tests := []struct {
		name string
		in   string
		want *summary // nil: must be refused
	}{
		{name: "plain GET", in: "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
			want: &summary{Method: "GET", Target: "http://a.test/", Proto: "HTTP/1.1", Major: 1, Host: "a.test", ContentLength: -1, KeepAlive: true}},
		{name: "POST with length, close", in: "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nConnection: close\r\n\r\n",
			want: &summary{Method: "POST", Target: "/x", Proto: "HTTP/1.1", Major: 1, Host: "a", ContentLength: 12}},
		{name: "chunked, expect", in: "PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
			want: &summary{Method: "PUT", Target: "/x", Proto: "HTTP/1.1", Major: 1, Host: "a", ContentLength: -1, Chunked: true, KeepAlive: true, Expect: true}},
		{name: "HTTP/1.0 keep-alive", in: "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
			want: &summary{Method: "GET", Target: "/", Proto: "HTTP/1.0", Major: 1, ContentLength: -1, KeepAlive: true}},
		{name: "CONNECT", in: "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
			want: &summary{Method: "CONNECT", Target: "a.test:443", Proto: "HTTP/1.1", Major: 1, Host: "a.test:443", ContentLength: -1, KeepAlive: true}},
		// A9: framing ambiguity.
		{name: "CL and TE", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{name: "two CL", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n"},
		{name: "CL with sign", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n"},
		{name: "CL hex", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\n"},
		{name: "CL list", in: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\n"},
		{name: "TE not chunked", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"},
		{name: "TE in 1.0", in: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{name: "two TE", in: "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{name: "obs-fold", in: "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n"},
		{name: "space before colon", in: "GET / HTTP/1.1\r\nHost : a\r\n\r\n"},
		{name: "bare CR in value", in: "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"},
		{name: "NUL in value", in: "GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n"},
		{name: "two Host", in: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"},
		{name: "CONNECT with body", in: "CONNECT a:443 HTTP/1.1\r\nContent-Length: 1\r\n\r\n"},
		// Any HTTP/x.y a server parses is parsed, so its Host is decided:
		// a later HTTP/1 minor version is served as HTTP/1.1 (RFC 9110
		// §2.5), any other major version is refused by the caller (505).
		{name: "HTTP/1.9", in: "GET / HTTP/1.9\r\nHost: a\r\n\r\n",
			want: &summary{Method: "GET", Target: "/", Proto: "HTTP/1.1", Major: 1, Host: "a", ContentLength: -1, KeepAlive: true}},
		{name: "lower-case and odd token methods", in: "m-SEARCH_x1 * HTTP/1.1\r\nHost: a\r\n\r\n",
			want: &summary{Method: "m-SEARCH_x1", Target: "*", Proto: "HTTP/1.1", Major: 1, Host: "a", ContentLength: -1, KeepAlive: true}},
		{name: "HTTP/2 preface", in: "PRI * HTTP/2.0\r\n\r\n",
			want: &summary{Method: "PRI", Target: "*", Proto: "HTTP/2.0", Major: 2, ContentLength: -1}},
		{name: "HTTP/0.9 version", in: "GET / HTTP/0.9\r\nHost: a\r\n\r\n",
			want: &summary{Method: "GET", Target: "/", Proto: "HTTP/0.9", Major: 0, Host: "a", ContentLength: -1}},
		{name: "two-digit minor", in: "GET / HTTP/1.10\r\n\r\n"},
		{name: "no version", in: "GET /\r\n\r\n"},
		{name: "double space", in: "GET  / HTTP/1.1\r\n\r\n"},
		{name: "lower-case version", in: "GET / http/1.1\r\n\r\n"},
		{name: "control byte in target", in: "GET /\x01 HTTP/1.1\r\n\r\n"},
		{name: "empty request line", in: "\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReader(strings.NewReader(tc.in))
			raw, err := readRequestHead(br, maxHeadBytes)
			var h requestHead
			if err == nil {
				err = h.parse(raw)
			}
			if tc.want == nil {
				if err == nil {
					t.Fatalf("accepted %q, want it refused", tc.in)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			got := &summary{Method: h.method, Target: h.target, Proto: h.proto, Major: h.major, Host: h.host,
				ContentLength: h.contentLength, Chunked: h.chunked, KeepAlive: h.keepAlive, Expect: h.expectContinue}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadRequestHeadRefusesBareLFAndHugeHeads(t *testing.T) {
	for _, in := range []string{
		"GET / HTTP/1.1\nHost: a\n\n",
		"GET / HTTP/1.1\r\nHost: a\n\r\n",
		"GET / HTTP/1.1\r\nX: " + strings.Repeat("a", maxHeadBytes) + "\r\n\r\n",
	} {
		br := bufio.NewReaderSize(strings.NewReader(in), headReadBuffer)
		if _, err := readRequestHead(br, maxHeadBytes); err == nil {
			t.Errorf("readRequestHead(%.40q...) accepted", in)
		}
	}
}

func TestStripHopHeaders(t *testing.T) {
	h := http.Header{
		"Connection":          {"Upgrade, HTTP2-Settings, X-Secret"},
		"Upgrade":             {"h2c"},
		"Http2-Settings":      {"AAMAAABkAARAAAAAAAIAAAAA"},
		"X-Secret":            {"1"},
		"Proxy-Authorization": {"Basic Zm9v"},
		"Proxy-Connection":    {"keep-alive"},
		"Proxy-Whatever":      {"x"},
		"Keep-Alive":          {"timeout=5"},
		"Te":                  {"trailers"},
		"Accept":              {"*/*"},
	}
	stripHopHeaders(h)
	if diff := cmp.Diff(http.Header{"Accept": {"*/*"}}, h); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// The classifier routes everything a lenient server could read as an HTTP
// request line to the HTTP path (where the strict parser decides or
// refuses it), the h2c preface to its own kind, and only what cannot be a
// request line to "other"; it says "unknown" while more bytes could still
// make a request line.
func TestClassify(t *testing.T) {
	tests := []struct {
		in   string
		want streamKind
	}{
		{"", streamUnknown},
		{"\x16\x03\x01", streamTLS},
		{"GET / HTTP/1.1\r\n", streamHTTP},
		{"PROPFIND / HTTP/1.0\r\nHost: x\r\n", streamHTTP},
		// Any token method, any case, any version, odd whitespace.
		{"get / HTTP/1.1\r\n", streamHTTP},
		{"M-SEARCH * HTTP/1.1\r\n", streamHTTP},
		{"X_FOO1 / HTTP/1.1\r\n", streamHTTP},
		{"GET / HTTP/1.9\r\n", streamHTTP},
		{"GET / HTTP/2.0\r\n", streamHTTP},
		{"GET / http/1.1\r\n", streamHTTP},
		{"GET  /  HTTP/1.1  \r\n", streamHTTP},
		{"GET\t/\tHTTP/1.1\r\n", streamHTTP},
		{"GET / HTTP/1.1\n", streamHTTP},
		{"\r\n\nGET / HTTP/1.1\r\n", streamHTTP},
		{strings.Repeat("\r\n", 9), streamHTTP},
		{"PRI * HTTP/2.0\r\n", streamH2C},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", streamH2C},
		// Not yet known: could still become a request line.
		{"GET / HTTP/1.1", streamUnknown},
		{"GET / HTTP/1.1\r", streamUnknown},
		{"GE", streamUnknown},
		{"E", streamUnknown},
		{"AB ", streamUnknown},
		{"SSH-2.0-OpenSSH", streamUnknown},
		{"\r\n", streamUnknown},
		{strings.Repeat("A", 20), streamUnknown},
		// Cannot be a request line.
		{"EHLO mail.test\r\n", streamOther},
		{"SSH-2.0-OpenSSH_9.6 Ubuntu-3\r\n", streamOther},
		{"SSH-2.0-OpenSSH_9.6\r\n", streamOther},
		{"GET /\r\n", streamOther}, // HTTP/0.9: names no host
		{"0032git-upload-pack /x.git\x00host=git.test\x00", streamOther},
		{"GET /\x01", streamOther},
		{"*1\r\n$4\r\nPING\r\n", streamOther},
		{"\x00\x00\x00\x08\x04\xd2\x16\x2f", streamOther},
		{" GET / HTTP/1.1\r\n", streamOther},
		{"GET /" + strings.Repeat("a", maxRequestLine), streamOther},
		{strings.Repeat("A", maxRequestLine), streamOther},
		{"\x05\x01\x00", streamOther},
	}
	for _, tc := range tests {
		if got := classify([]byte(tc.in)); got != tc.want {
			t.Errorf("classify(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// goHelloSeed is a ClientHello as crypto/tls sends it (X25519MLKEM768 key
// share, ~1.8 KB), captured once.
var goHelloSeed = func() []byte {
	var tb testing.T
	return goClientHello(&tb, "allowed.test")
}()

func FuzzParseClientHello(f *testing.F) {
	f.Add(goHelloSeed)
	f.Add(records(helloMessage(helloSpec{names: []string{"allowed.test"}}), 7, 30))
	f.Add(buildHello(helloSpec{names: []string{"a.test", "b.test"}}))
	f.Add(buildHello(helloSpec{names: []string{"a.test"}, ech: true}))
	f.Add(buildHello(helloSpec{noExts: true}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseClientHello(b)
		if err != nil {
			if h != (clientHello{}) {
				t.Fatalf("error %v with a result %+v", err, h)
			}
			return
		}
		if h.hasSNI {
			if h.serverName == "" {
				t.Fatal("hasSNI with an empty name")
			}
			for i := 0; i < len(h.serverName); i++ {
				if c := h.serverName[i]; c < 0x21 || c > 0x7e {
					t.Fatalf("name %q has byte %#x", h.serverName, c)
				}
			}
		}
		// A prefix never yields a different name (fail closed on truncation).
		for _, cut := range []int{len(b) / 2, len(b) - 1} {
			if cut < 0 {
				continue
			}
			hp, errp := parseClientHello(b[:cut])
			if errp == nil && hp != h {
				t.Fatalf("prefix %d gives %+v, full input %+v", cut, hp, h)
			}
		}
	})
}

func FuzzParseRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n",
		// Each refusal of a header field or of the framing.
		"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.0\r\nConnection: keep-alive, close\r\nExpect: 100-continue\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\nConnection: a b\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\n X: folded\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\nX : y\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\nX: \x01\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\nX\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\nX: a\rb\r\n\r\n",
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\ncontent-length: 4\r\n\r\n",
		"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
		"POST / HTTP/1.1\r\nexpect: 100-Continue\r\nconnection: CLOSE\r\ncontent-length: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nConnection: close\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReaderSize(strings.NewReader(string(b)), headReadBuffer)
		raw, err := readRequestHead(br, maxHeadBytes)
		if err != nil {
			return
		}
		sameAsMapParser(t, raw) // headoracle_test.go
		var h requestHead
		if err := h.parse(raw); err != nil {
			return
		}
		if h.contentLength >= 0 && h.chunked {
			t.Fatal("accepted both Content-Length and chunked")
		}
		if !isToken(h.method) || strings.ContainsAny(h.target, " \r\n\x00") {
			t.Fatalf("bad request line accepted: %q %q", h.method, h.target)
		}
		for k, vs := range h.header {
			if k == "Host" && len(vs) != 1 {
				t.Fatal("several Host headers accepted")
			}
			for _, v := range vs {
				if strings.ContainsAny(v, "\r\n\x00") {
					t.Fatalf("header %s value %q has CR/LF/NUL", k, v)
				}
			}
		}
	})
}

func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{"github.com:443", "[2001:db8::1]:443", "1.2.3.4:80", "a..b:1", "x\x00y:443", "[[a]]:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseAuthority(s)
		if err != nil {
			if !errors.Is(err, errBadAuthority) && !errors.Is(err, policy.ErrInvalidName) {
				t.Fatalf("parseAuthority(%q) error %v wraps neither errBadAuthority nor ErrInvalidName", s, err)
			}
			return
		}
		if got.Port == 0 || (got.Name != "") == got.Addr.IsValid() {
			t.Fatalf("parseAuthority(%q) = %+v: want exactly one of name/address and a port", s, got)
		}
		if strings.ContainsAny(s, "@%\\/\x00 ") {
			t.Fatalf("parseAuthority(%q) accepted a delimiter", s)
		}
		// What is decided is what is dialled: the rendering parses back to the same target.
		again, err := parseAuthority(got.String())
		if err != nil || again != got {
			t.Fatalf("round trip of %q: %v -> %q -> %v, %v", s, got, got.String(), again, err)
		}
	})
}

// TestDenialStatusLineSaysWhy: the reason phrase of every answer egressd
// writes says who refused and why in words, for the clients that print
// nothing but the status line (pip, urllib, Go, wget); it is ASCII with no
// CR or LF however the target was spelt, and capped.
func TestDenialStatusLineSaysWhy(t *testing.T) {
	blocked := &policy.Rule{Text: "*.evil.test", Source: policy.Flag("--block")}
	long := strings.Repeat("a", 300) + ".test:443"
	for _, tc := range []struct {
		name, target string
		d            *denial
		want         string
	}{
		{"no allow rule", "evil.example:443", denyDecision(policy.Decision{Reason: policy.ReasonNoAllowRule}, ""),
			"Forbidden by egressd: evil.example:443 not in the allow list"},
		{"block rule", "x.evil.test:443", denyDecision(policy.Decision{Reason: policy.ReasonBlockedBy, Rule: blocked}, ""),
			"Forbidden by egressd: x.evil.test:443 blocked by the rule *.evil.test"},
		{"guard", "10.0.0.1:80", denyDecision(policy.Decision{Reason: policy.ReasonGuardedAddress}, "10.0.0.1 (private 10.0.0.0/8)"),
			"Forbidden by egressd: 10.0.0.1:80 refused by the address guard: 10.0.0.1 (private 10.0.0.0/8)"},
		{"resolver", "pypi.org:443", denyf(http.StatusGatewayTimeout, audit.ReasonResolverTimeout, "no answer"),
			"Gateway Timeout (egressd): pypi.org:443 could not be resolved: the upstream resolver did not answer"},
		{"control bytes and non-ASCII", "ev\r\nil\x1b[31m\u202e.test", denyDecision(policy.Decision{Reason: policy.ReasonInvalidName}, ""),
			`Forbidden by egressd: ev\x0d\x0ail\x1b[31m\xe2\x80\xae.test is not a valid host name`},
		{"long target", long, denyDecision(policy.Decision{Reason: policy.ReasonNoAllowRule}, ""),
			"Forbidden by egressd: " + strings.Repeat("a", 128) + "... not in the allow list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status := tc.d.status
			if status == 0 {
				status = http.StatusForbidden
			}
			got := tc.d.phrase(status, tc.target)
			if got != tc.want {
				t.Errorf("phrase:\n got %q\nwant %q", got, tc.want)
			}
			if len(got) > maxPhrase {
				t.Errorf("phrase of %d bytes, cap %d", len(got), maxPhrase)
			}
			for i := 0; i < len(got); i++ {
				if got[i] < 0x20 || got[i] > 0x7e {
					t.Fatalf("byte %#x at %d in the phrase %q", got[i], i, got)
				}
			}
		})
	}
}
