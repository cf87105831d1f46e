package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/privtest"
	"github.com/egressd/egressd/policy"
)

// transparentHarness runs a transparent listener on 127.0.0.1 whose
// connections get an injected original destination (what REDIRECT and
// SO_ORIGINAL_DST would give); the netns tests below use the real thing.
type transparentHarness struct {
	*harness
	taddr string
	orig  atomic.Value // netip.AddrPort
}

func newTransparentHarness(t *testing.T, live *policy.Live, opts ...func(*Config)) *transparentHarness {
	t.Helper()
	th := &transparentHarness{harness: newHarness(t, live, opts...)}
	th.p.origDst = func(net.Conn) (netip.AddrPort, error) {
		ap, _ := th.orig.Load().(netip.AddrPort)
		if !ap.IsValid() {
			return ap, errors.New("no original destination injected")
		}
		return ap, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	th.taddr = ln.Addr().String()
	go th.p.ServeTransparent(ln)
	return th
}

// dialTo opens a "redirected" connection whose original destination is orig.
func (th *transparentHarness) dialTo(orig string) net.Conn {
	th.t.Helper()
	th.orig.Store(netip.MustParseAddrPort(orig))
	c, err := net.DialTimeout("tcp", th.taddr, 2*time.Second)
	if err != nil {
		th.t.Fatal(err)
	}
	th.t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// isReset reports whether reading c ends in a reset or close without data.
func isReset(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return len(b) == 0
}

// THREATS A3: SNI is a claim, not a route. The connection goes to the
// SNI's own vetted resolution, never to the original IP on its strength.
func TestTransparentTLSDialsSNIResolutionNotOriginalIP(t *testing.T) {
	t.Run("injected", func(t *testing.T) {
		up := newUpstreamTLS(t)
		decoy := newTCPRecorder(t, fmt.Sprintf("127.0.0.2:%d", up.port))
		th := newTransparentHarness(t, policyOf(t, basePolicy(t)...))
		th.res.set("allowed.test", "127.0.0.1")
		c := th.dialTo(fmt.Sprintf("127.0.0.2:%d", up.port))
		body, err := tlsGet(c, "allowed.test")
		if err != nil || body != "tls hello allowed.test" {
			t.Fatalf("TLS via the transparent listener: %q, %v", body, err)
		}
		if n, _ := decoy.stats(); n != 0 {
			t.Fatalf("the original destination got %d connections; want the SNI's resolution dialled", n)
		}
		c.Close()
		rs := byKind(th.audit.waitRecords(t, 1), audit.KindTLS)
		want := fmt.Sprintf("127.0.0.1:%d", up.port)
		if len(rs) != 1 || rs[0].Decision != "allow" || len(rs[0].Addrs) != 1 || rs[0].Addrs[0] != want {
			t.Fatalf("audit %+v, want one tls allow dialling %s", rs, want)
		}
		// A name that is not allowed is reset, not sent to the original IP.
		c = th.dialTo(fmt.Sprintf("127.0.0.2:%d", up.port))
		if _, err := tlsGet(c, "evil.test"); err == nil {
			t.Fatal("TLS for an unlisted name succeeded")
		}
		if n, _ := decoy.stats(); n != 0 {
			t.Fatalf("the original destination got %d connections", n)
		}
	})
	t.Run("redirect", func(t *testing.T) { runNetnsScenario(t, "tls-sni-not-orig") })
}

func TestTransparentRawTCPToLearnedAddressAllowed(t *testing.T) {
	// Loopback is guarded, so only a namespace with a public-looking
	// address can show the learned table alone letting a connection through.
	runNetnsScenario(t, "raw-learned")
}

func TestTransparentRawTCPToUnknownAddressReset(t *testing.T) {
	t.Run("injected", func(t *testing.T) {
		rec := newTCPRecorder(t, "127.0.0.4:0")
		th := newTransparentHarness(t, policyOf(t, basePolicy(t)...), func(c *Config) {
			c.Learned = fakeLearned{netip.MustParseAddr("127.0.0.4"): {"db.test"}} // learned, but db.test is not allowed
		})
		orig := fmt.Sprintf("127.0.0.4:%d", rec.port)
		c := th.dialTo(orig)
		io.WriteString(c, "hello, raw protocol")
		if !isReset(c) {
			t.Fatal("raw TCP to an unknown address was not reset")
		}
		c = th.dialTo(orig) // silent client (server-first protocol)
		if !isReset(c) {
			t.Fatal("silent raw TCP to an unknown address was not reset")
		}
		if n, _ := rec.stats(); n != 0 {
			t.Fatalf("the address got %d connections", n)
		}
		rs := th.audit.waitRecords(t, 2)
		for _, r := range rs {
			if r.Kind != audit.KindTCP || r.Decision != "deny" {
				t.Errorf("audit %+v, want tcp deny", r)
			}
		}
	})
	t.Run("redirect", func(t *testing.T) { runNetnsScenario(t, "raw-unknown") })
}

// THREATS A6/A7 on the transparent path: Host decides, per request, and the
// Host's own resolution is dialled.
func TestTransparentHTTPDecidesHostPerRequest(t *testing.T) {
	up := newUpstreamHTTP(t)
	decoy := newTCPRecorder(t, fmt.Sprintf("127.0.0.2:%d", up.port))
	th := newTransparentHarness(t, policyOf(t, basePolicy(t, "allow 127.0.0.3:*", "block blocked.test")...))
	th.res.set("allowed.test", "127.0.0.1")
	c := th.dialTo(fmt.Sprintf("127.0.0.2:%d", up.port))
	fmt.Fprintf(c, "GET /a HTTP/1.1\r\nHost: allowed.test:%d\r\n\r\n", up.port)
	resp, body := readResponse(t, c, "GET")
	if resp.StatusCode != http.StatusOK || body != fmt.Sprintf("hello allowed.test:%d /a body=0", up.port) {
		t.Fatalf("first request: %d %q", resp.StatusCode, body)
	}
	fmt.Fprintf(c, "GET /b HTTP/1.1\r\nHost: evil.test:%d\r\n\r\n", up.port)
	if resp, _ := readResponse(t, c, "GET"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("second request for another host: %d, want 403", resp.StatusCode)
	}
	c = th.dialTo(fmt.Sprintf("127.0.0.2:%d", up.port))
	fmt.Fprintf(c, "GET /c HTTP/1.1\r\nHost: allowed.test:1\r\n\r\n")
	if resp, _ := readResponse(t, c, "GET"); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("Host port different from the connection's: %d, want 400", resp.StatusCode)
	}
	if n, _ := decoy.stats(); n != 0 {
		t.Fatalf("the original destination got %d connections", n)
	}
	if n := len(up.requests()); n != 1 {
		t.Fatalf("upstream got %d requests, want 1", n)
	}
	t.Run("IP rule allows the address whatever Host says, unless blocked", func(t *testing.T) {
		c := th.dialTo("127.0.0.3:80")
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
		if resp, _ := readResponse(t, c, "GET"); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("blocked Host to an IP-rule address: %d, want 403", resp.StatusCode)
		}
	})
}

func TestTransparentTLSRefusals(t *testing.T) {
	// The original destination is guarded loopback no rule lifts, so only
	// a name could let a connection through.
	rec := newTCPRecorder(t, "127.0.0.6:0")
	th := newTransparentHarness(t, policyOf(t, basePolicy(t, "block blocked.test")...), func(c *Config) {
		c.HeaderTimeout = 500 * time.Millisecond
	})
	th.res.set("allowed.test", "127.0.0.6")
	orig := fmt.Sprintf("127.0.0.6:%d", rec.port)
	for name, hello := range map[string][]byte{
		"ECH":             buildHello(helloSpec{names: []string{"allowed.test"}, ech: true}),
		"two names":       buildHello(helloSpec{names: []string{"allowed.test", "evil.test"}}),
		"two extensions":  buildHello(helloSpec{names: []string{"allowed.test"}, sniExts: 2}),
		"half a hello":    goClientHello(t, "allowed.test")[:100],
		"blocked name":    buildHello(helloSpec{names: []string{"blocked.test"}}),
		"unlisted name":   buildHello(helloSpec{names: []string{"other.test"}}),
		"name type 1":     buildHello(helloSpec{names: []string{"allowed.test"}, nameType: 1}),
		"invalid name":    buildHello(helloSpec{names: []string{"a..test"}}),
		"no SNI, no rule": buildHello(helloSpec{}),
	} {
		c := th.dialTo(orig)
		c.Write(hello)
		if !isReset(c) {
			t.Errorf("%s: not reset", name)
		}
	}
	if _, n := rec.stats(); n != 0 {
		t.Fatalf("upstream got %d bytes", n)
	}
}

// A connection let through on its address after serverFirstWait still has
// its first bytes judged: waiting does not skip the name check.
func TestTransparentLateClientHelloStillChecked(t *testing.T) {
	rec := newTCPRecorder(t, "127.0.0.5:0")
	rec.mu.Lock()
	rec.banner = "220 smtp ready\r\n"
	rec.mu.Unlock()
	th := newTransparentHarness(t, policyOf(t, "allow 127.0.0.5:*", "allow allowed.test:*", "block blocked.test"))
	orig := fmt.Sprintf("127.0.0.5:%d", rec.port)

	c := th.dialTo(orig)
	const want = "220 smtp ready\r\n"
	banner := make([]byte, len(want))
	if _, err := io.ReadFull(c, banner); err != nil || string(banner) != want {
		t.Fatalf("server-first banner: %q, %v", banner, err)
	}
	echo(t, c, "EHLO x\r\n")

	c = th.dialTo(orig)
	io.ReadFull(c, banner)
	c.Write(buildHello(helloSpec{names: []string{"blocked.test"}}))
	if !isReset(c) {
		t.Fatal("a late ClientHello for a blocked name went through")
	}
	_, before := rec.stats()
	c = th.dialTo(orig)
	io.ReadFull(c, banner)
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
	if !isReset(c) {
		t.Fatal("a late HTTP request for a blocked Host went through")
	}
	if _, after := rec.stats(); after != before {
		t.Fatalf("upstream got %d bytes of refused first bytes", after-before)
	}
}

func TestTransparentSelfDestinationReset(t *testing.T) {
	th := newTransparentHarness(t, policyOf(t, "allow 127.0.0.0/8:*"))
	// A connection that was not redirected reports the listener itself.
	th.orig.Store(netip.MustParseAddrPort(th.taddr))
	c, err := net.DialTimeout("tcp", th.taddr, 2*time.Second)
	if err == nil { // the reset may beat connect(2) to the client
		defer c.Close()
		io.WriteString(c, "x")
		if !isReset(c) {
			t.Fatal("connection to the transparent listener itself was served")
		}
	}
	rs := th.audit.waitRecords(t, 1)
	if len(rs) != 1 || rs[0].Reason != audit.ReasonSelf {
		t.Fatalf("audit %+v", rs)
	}
}

// ---- real network namespace + iptables REDIRECT ----

const (
	netnsEnv       = "EGT_PX_NETNS_SCENARIO"
	netnsProxyPort = 15001
	netnsMark      = 0x1e5
)

// runNetnsScenario creates a throwaway network namespace with a dummy
// interface holding documentation addresses, installs REDIRECT rules for
// all TCP (IPv4 and IPv6) to the transparent port, exempting egressd's
// marked sockets, and runs this test binary inside it as the child
// TestNetnsChild with the scenario. Everything the child does stays inside
// the namespace, which has no route anywhere else.
func runNetnsScenario(t *testing.T, scenario string) {
	t.Helper()
	privtest.Require(t, "creates a network namespace and iptables REDIRECT rules")
	for _, tool := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	ns := "egt-px-" + hex.EncodeToString(rnd[:])
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	in := func(args ...string) { run(append([]string{"ip", "netns", "exec", ns}, args...)...) }
	in("ip", "link", "set", "lo", "up")
	// The test "internet" lives on the namespace's loopback: local
	// addresses to listen on, and routes for the rest (REDIRECT rewrites
	// those before they would go anywhere).
	in("ip", "addr", "add", "198.51.100.1/24", "dev", "lo")
	for _, a := range []string{"198.51.100.10/32", "198.51.100.20/32", "198.51.100.30/32", "198.51.100.31/32"} {
		in("ip", "addr", "add", a, "dev", "lo")
	}
	in("ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "lo", "nodad")
	for _, a := range []string{"2001:db8::10/128", "2001:db8::30/128"} {
		in("ip", "-6", "addr", "add", a, "dev", "lo", "nodad")
	}
	for _, ipt := range []struct{ bin, lo string }{{"iptables", "127.0.0.0/8"}, {"ip6tables", "::1/128"}} {
		in(ipt.bin, "-t", "nat", "-A", "OUTPUT", "-m", "mark", "--mark", fmt.Sprint(netnsMark), "-j", "RETURN")
		in(ipt.bin, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", ipt.lo, "-j", "RETURN")
		in(ipt.bin, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", fmt.Sprint(netnsProxyPort))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0], "-test.run", "^TestNetnsChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsEnv+"="+scenario)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil || !strings.Contains(out.String(), "--- PASS: TestNetnsChild") {
		t.Fatalf("scenario %s in netns %s: %v\n%s", scenario, ns, err, out.String())
	}
	t.Logf("scenario %s:\n%s", scenario, out.String())
}

// TestNetnsChild runs inside runNetnsScenario's namespace; it is skipped
// otherwise.
func TestNetnsChild(t *testing.T) {
	scenario := os.Getenv(netnsEnv)
	if scenario == "" {
		t.Skip("runs only inside runNetnsScenario")
	}
	tlsUp := newTLSOn(t, "198.51.100.10:443")
	decoy := newTCPRecorder(t, "198.51.100.20:443")
	learned4 := newTCPRecorder(t, "198.51.100.30:7000")
	learned6 := newTCPRecorder(t, "[2001:db8::30]:7000")
	unknown := newTCPRecorder(t, "198.51.100.31:7000")
	res := newFakeResolver()
	res.set("allowed.test", "198.51.100.10")
	sink := &auditSink{}
	p, err := New(Config{
		Policy:   policyOf(t, "allow allowed.test:443", "allow db.test:7000"),
		Resolver: res,
		Learned: fakeLearned{
			netip.MustParseAddr("198.51.100.30"): {"db.test"},
			netip.MustParseAddr("2001:db8::30"):  {"db.test"},
			netip.MustParseAddr("198.51.100.31"): {"other.test"},
		},
		Mark:          netnsMark,
		Audit:         audit.New(sink, "netns"),
		HeaderTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", netnsProxyPort), fmt.Sprintf("[::1]:%d", netnsProxyPort)} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		go p.ServeTransparent(ln)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	}()
	dial := func(addr string) net.Conn {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	switch scenario {
	case "tls-sni-not-orig":
		for _, orig := range []string{"198.51.100.20:443", "[2001:db8::20]:443"} {
			c := dial(orig)
			body, err := tlsGet(c, "allowed.test")
			c.Close()
			if err != nil || body != "tls hello allowed.test" {
				t.Fatalf("TLS to %s with SNI allowed.test: %q, %v", orig, body, err)
			}
		}
		if n, _ := decoy.stats(); n != 0 {
			t.Fatalf("original destination got %d connections", n)
		}
		c := dial("198.51.100.10:443")
		if _, err := tlsGet(c, "evil.test"); err == nil {
			t.Fatal("TLS with an unlisted SNI to the allowed host's own address succeeded")
		}
		t.Logf("handshakes at the real server: %v", tlsUp.handshakes())
	case "raw-learned":
		for _, orig := range []string{"198.51.100.30:7000", "[2001:db8::30]:7000"} {
			c := dial(orig)
			echo(t, c, "raw bytes to a learned address\n")
			c.Close()
		}
		if n4, _ := learned4.stats(); n4 != 1 {
			t.Fatalf("198.51.100.30 got %d connections, want 1", n4)
		}
		if n6, _ := learned6.stats(); n6 != 1 {
			t.Fatalf("2001:db8::30 got %d connections, want 1", n6)
		}
		rs := byKind(sink.waitRecords(t, 2), audit.KindTCP)
		for _, r := range rs {
			if r.Decision != "allow" || r.Rule != "db.test:7000" {
				t.Errorf("audit %+v, want allow by db.test:7000", r)
			}
		}
	case "raw-unknown":
		for _, orig := range []string{"198.51.100.31:7000", "198.51.100.99:7000", "[2001:db8::99]:7000"} {
			c := dial(orig)
			io.WriteString(c, "raw bytes")
			if !isReset(c) {
				t.Fatalf("raw TCP to %s was not reset", orig)
			}
		}
		if n, _ := unknown.stats(); n != 0 {
			t.Fatalf("unknown address got %d connections", n)
		}
		rs := sink.waitRecords(t, 3)
		for _, r := range rs {
			if r.Decision != "deny" || r.Kind != audit.KindTCP {
				t.Errorf("audit %+v, want tcp deny", r)
			}
		}
	default:
		t.Fatalf("unknown scenario %q", scenario)
	}
}

// newTLSOn starts an upstreamTLS on a fixed address.
func newTLSOn(t *testing.T, addr string) *upstreamTLS {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	u := &upstreamTLS{}
	u.srv = newTLSServerOn(ln, u)
	t.Cleanup(u.srv.Close)
	return u
}

// A server skips empty lines before a request line (RFC 9112 §2.2), so a
// request behind CR/LF, or with bare-LF line ends, must still go through
// the HTTP path and be decided on its Host — not be relayed raw because
// the address is allowed.
func TestTransparentEmptyLinesBeforeRequestDoNotHideHost(t *testing.T) {
	// A raw recorder stands in for a lenient server (nginx skips the empty
	// lines): any byte reaching it is a request relayed undecided.
	rec := newTCPRecorder(t, "127.0.0.1:0")
	th := newTransparentHarness(t, policyOf(t, basePolicy(t, "block blocked.test")...))
	orig := fmt.Sprintf("127.0.0.1:%d", rec.port)
	for name, raw := range map[string]string{
		"CRLF first":  "\r\nGET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		"many CRLF":   strings.Repeat("\r\n", 40) + "GET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		"LF first":    "\nGET / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
		"bare LF":     "GET / HTTP/1.1\nHost: blocked.test\n\n",
		"CRLF+bareLF": "\r\nGET / HTTP/1.1\nHost: blocked.test\n\n",
	} {
		t.Run(name, func(t *testing.T) {
			c := th.dialTo(orig)
			fmt.Fprint(c, raw)
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, _ = io.ReadAll(c)
			if _, n := rec.stats(); n != 0 {
				t.Fatalf("%d bytes of a request for a blocked Host reached the server", n)
			}
		})
	}
	// The same setup serves an allowed request (the test can fail).
	up := newUpstreamHTTP(t)
	th.res.set("allowed.test", "127.0.0.1")
	c := th.dialTo(fmt.Sprintf("127.0.0.1:%d", up.port))
	fmt.Fprintf(c, "\r\nGET /ok HTTP/1.1\r\nHost: allowed.test:%d\r\n\r\n", up.port)
	resp, _ := readResponse(t, c, "GET")
	if resp.StatusCode == http.StatusForbidden {
		t.Fatalf("allowed request behind an empty line: %d", resp.StatusCode)
	}
}

// A client that waits out serverFirstWait before its first request is let
// through on its address; its HTTP must still be decided per request, or a
// second keep-alive request would reach a blocked Host undecided.
func TestTransparentLateHTTPStillDecidedPerRequest(t *testing.T) {
	up := newUpstreamHTTP(t)
	th := newTransparentHarness(t, policyOf(t, basePolicy(t, "block blocked.test")...))
	th.res.set("allowed.test", "127.0.0.1")
	c := th.dialTo(fmt.Sprintf("127.0.0.1:%d", up.port))
	time.Sleep(3 * serverFirstWait)
	fmt.Fprintf(c, "GET /a HTTP/1.1\r\nHost: allowed.test:%d\r\n\r\n", up.port)
	if resp, _ := readResponse(t, c, "GET"); resp.StatusCode != http.StatusOK {
		t.Fatalf("late first request: %d, want 200", resp.StatusCode)
	}
	fmt.Fprintf(c, "GET /b HTTP/1.1\r\nHost: blocked.test:%d\r\n\r\n", up.port)
	if resp, _ := readResponse(t, c, "GET"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("second request for a blocked Host: %d, want 403", resp.StatusCode)
	}
	if n := len(up.requests()); n != 1 {
		t.Fatalf("upstream got %d requests, want 1", n)
	}
}
