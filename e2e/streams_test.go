package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/e2e/fakenet"
)

// Issue #7, item 1: the transparent path and CONNECT tunnels decide every
// stream on a name it carries, or refuse it. Each attack below is a client
// in the sandbox reaching blocked.test, which the same front end
// (203.0.113.10) serves as allowed.test, by a stream egressd used to relay
// undecided. Each is scored at the application layer (the world's server
// for blocked.test saw nothing), and each first shows, from a sandbox
// without egressd, that the world's server would have answered it.

// streamsPolicy is basePolicy plus a name admitted for raw TCP on one port
// (a server-first protocol).
var streamsPolicy = strings.Replace(basePolicy, `  "drop.test",`, `  "drop.test",
  "smtp.test:25",`, 1)

// splitSendScript connects to argv[1]:argv[2] and sends the parts of the
// JSON list argv[3], each [pause seconds, text] (text sent as latin-1), then
// reads until the server closes or 5s of silence. It prints {reply, error}.
const splitSendScript = `
import json, socket, sys, time
host, port, parts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
res = {"reply": "", "error": ""}
buf = b""
try:
    s = socket.create_connection((host, port), timeout=10)
    for pause, text in parts:
        time.sleep(pause)
        s.sendall(text.encode("latin-1"))
    s.settimeout(5)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
except Exception as e:
    res["error"] = type(e).__name__ + ": " + str(e)
res["reply"] = buf.decode("latin-1")
print(json.dumps(res))
`

type splitReply struct {
	Reply string `json:"reply"`
	Error string `json:"error"`
}

// splitPart is text sent after a pause.
type splitPart struct {
	pause time.Duration
	text  string
}

// sendSplit runs splitSendScript in ns: it connects to host:port (a name is
// resolved through the sandbox's DNS, which is egressd's) and sends parts.
func sendSplit(t *testing.T, ns runner, host string, port uint16, parts ...splitPart) splitReply {
	t.Helper()
	var list [][2]any
	for _, p := range parts {
		list = append(list, [2]any{p.pause.Seconds(), p.text})
	}
	js, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, ns, "", pythonBin, "-c", splitSendScript, host, strconv.Itoa(int(port)), string(js))
	var out splitReply
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("split-send client: %v\n%s", err, r)
	}
	return out
}

// served reports whether a reply came from the world's server (a fakenet
// JSON body naming the Host it saw).
func served(reply string) bool { return strings.Contains(reply, `"server":"fakenet"`) }

// request is a request line and Host, closing after the answer.
func request(method, version, host string) string {
	return method + " / " + version + "\r\nHost: " + host + "\r\nConnection: close\r\n\r\n"
}

// controlServes shows that, from a sandbox without egressd, the world's
// server answers parts sent to 203.0.113.10:80 for blocked.test: the
// attack would work were egressd not deciding it.
func controlServes(t *testing.T, w *fakenet.World, parts ...splitPart) {
	t.Helper()
	control := w.NewSandbox(t)
	w.ResetCounters()
	if r := sendSplit(t, control, host4.String(), 80, parts...); !served(r.Reply) || w.HTTPRequests("blocked.test") != 1 {
		t.Fatalf("control (no egressd): the world's server did not answer the request for blocked.test: %+v", r)
	}
	w.ResetCounters()
}

// noRequestsFor fails t if the world's server saw a request for host.
func noRequestsFor(t *testing.T, w *fakenet.World, host string) {
	t.Helper()
	if n := w.HTTPRequests(host); n != 0 {
		t.Errorf("the world's server answered %d requests for %s: %+v", n, host, w.HTTPLog())
	}
}

func TestOddHTTPVersionCannotReachAnotherSiteOnAnAllowedAddress(t *testing.T) {
	t.Parallel()
	e := newEnv(t, streamsPolicy)
	// Go's server (like nginx for 1.x) serves any HTTP/1.x as HTTP/1.
	controlServes(t, e.w, splitPart{text: request("GET", "HTTP/1.9", "blocked.test")})

	for _, version := range []string{"HTTP/1.9", "HTTP/1.2"} {
		// Resolving allowed.test through egressd makes its address known
		// for the allowed name, which is what the raw path used to check.
		r := sendSplit(t, e.s, "allowed.test", 80, splitPart{text: request("GET", version, "blocked.test")})
		if served(r.Reply) {
			t.Errorf("%s request for blocked.test to allowed.test's address was served: %+v", version, r)
		}
		// The same version for the allowed name is decided and served.
		if r := sendSplit(t, e.s, "allowed.test", 80, splitPart{text: request("GET", version, "allowed.test")}); !served(r.Reply) {
			t.Errorf("%s request for allowed.test was not served: %+v", version, r)
		}
	}
	noRequestsFor(t, e.w, "blocked.test")
	e.waitAudit("the refused HTTP/1.9 request", func(r auditRecord) bool {
		return r.Kind == "http" && r.Target == "blocked.test" && r.Decision == "deny" && r.Reason == "blocked-by"
	})
}

func TestTokenMethodCannotReachAnotherSiteOnAnAllowedAddress(t *testing.T) {
	t.Parallel()
	e := newEnv(t, streamsPolicy)
	controlServes(t, e.w, splitPart{text: request("get", "HTTP/1.1", "blocked.test")})

	for _, method := range []string{"get", "M-SEARCH", "X_FOO1", "propfind"} {
		r := sendSplit(t, e.s, "allowed.test", 80, splitPart{text: request(method, "HTTP/1.1", "blocked.test")})
		if served(r.Reply) {
			t.Errorf("%s request for blocked.test was served: %+v", method, r)
		}
	}
	noRequestsFor(t, e.w, "blocked.test")
	// Decided, not refused for its method: the allowed name is served.
	r := sendSplit(t, e.s, "allowed.test", 80, splitPart{text: request("get", "HTTP/1.1", "allowed.test")})
	_, body, _ := strings.Cut(r.Reply, "\r\n\r\n")
	reply, err := fakenet.ParseReply([]byte(body))
	if err != nil || reply.Method != "get" || reply.Host != "allowed.test" {
		t.Errorf("lower-case GET for allowed.test: %+v (%v)", r, err)
	}
}

func TestH2CPriorKnowledgeCannotReachAnotherSiteOnAnAllowedAddress(t *testing.T) {
	t.Parallel()
	e := newEnv(t, streamsPolicy)
	h2c := []string{"--http2-prior-knowledge", "--noproxy", "*", "--resolve", "blocked.test:80:203.0.113.10", "http://blocked.test/h2c"}
	// Control: the world's server speaks h2c and answers blocked.test.
	control := e.w.NewSandbox(t)
	cr := run(t, control, "", "curl", append([]string{"-sS", "--max-time", "5"}, h2c...)...)
	if reply, err := fakenet.ParseReply([]byte(cr.stdout)); err != nil || reply.Proto != "HTTP/2.0" || reply.Host != "blocked.test" {
		t.Fatalf("control (no egressd): curl --http2-prior-knowledge was not answered over h2c: %v\n%s", err, cr)
	}
	e.w.ResetCounters()

	if d := e.dig("allowed.test"); d.status != "NOERROR" {
		t.Fatalf("dig allowed.test: %s", d) // the address is now known for allowed.test
	}
	if reply, r, ok := e.fetch(h2c...); ok {
		t.Errorf("h2c with prior knowledge for blocked.test reached %+v\n%s", reply, r)
	}
	noRequestsFor(t, e.w, "blocked.test")
	// h2c is refused for the allowed name too (egressd does not decide
	// h2c stream by stream); the same client over HTTP/1.1 is served.
	if reply, r, ok := e.fetch("--http2-prior-knowledge", "--noproxy", "*", "http://allowed.test/h2c"); ok {
		t.Errorf("h2c for allowed.test was relayed: %+v\n%s", reply, r)
	}
	e.mustFetch("allowed.test", "--noproxy", "*", "http://allowed.test/h1")
	rec := e.waitAudit("the refused h2c stream", func(r auditRecord) bool {
		return r.Kind == "tcp" && r.Target == host4.String() && r.Port == 80 && r.Decision == "deny"
	})
	if rec.Reason != "unidentified-stream" || !strings.Contains(rec.Error, "h2c") || !strings.Contains(rec.Error, "allowed.test:80") {
		t.Errorf("audit %+v: want unidentified-stream explaining h2c and the rule that would admit it", rec)
	}
}

func TestSlowRequestCannotOutwaitTheHeaderTimeout(t *testing.T) {
	t.Parallel()
	// A short header timeout keeps the test quick; the wait past it is
	// what the attack needs.
	e := newEnv(t, streamsPolicy, "--header-timeout", "1s")
	pause := 2 * time.Second // past the 300 ms server-first wait and the header timeout after it
	controlServes(t, e.w, splitPart{text: "GET / HTTP/1.1"}, splitPart{pause: pause, text: "\r\nHost: blocked.test\r\nConnection: close\r\n\r\n"})

	for _, first := range []string{"GET / HTTP/1.1", "G"} {
		rest := strings.TrimPrefix("GET / HTTP/1.1", first) + "\r\nHost: blocked.test\r\nConnection: close\r\n\r\n"
		r := sendSplit(t, e.s, "allowed.test", 80, splitPart{text: first}, splitPart{pause: pause, text: rest})
		if served(r.Reply) {
			t.Errorf("first bytes %q, the rest after %s: served %+v", first, pause, r)
		}
	}
	noRequestsFor(t, e.w, "blocked.test")
	rec := e.waitAudit("the refused slow stream", func(r auditRecord) bool {
		return r.Kind == "tcp" && r.Decision == "deny" && r.Reason == "header-timeout"
	})
	if rec.Target != host4.String() || rec.Port != 80 {
		t.Errorf("audit %+v: want the timeout refusal for %s", rec, ap(host4, 80))
	}
	// A request that is merely slow within the timeout is served.
	r := sendSplit(t, e.s, "allowed.test", 80, splitPart{text: "GET / HT"}, splitPart{pause: 200 * time.Millisecond, text: "TP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"})
	if !served(r.Reply) {
		t.Errorf("a request split within the header timeout was not served: %+v", r)
	}
}

func TestPlainHTTPInAllowedConnectTunnelCannotReachAnotherSite(t *testing.T) {
	t.Parallel()
	e := newEnv(t, streamsPolicy)
	tunnel := "CONNECT allowed.test:80 HTTP/1.1\r\nHost: allowed.test:80\r\n\r\n"

	// Python: the tunnel to allowed.test:80, then a request for blocked.test.
	resp := e.rawHTTP("127.0.0.1", proxyPort, "seq", tunnel, request("GET", "HTTP/1.1", "blocked.test"))
	if len(resp) != 2 || resp[0].Status != 200 {
		t.Fatalf("CONNECT allowed.test:80 then a request: %+v", resp)
	}
	if served(resp[1].Body) || resp[1].Status != 403 || !strings.Contains(resp[1].Body, "host-mismatch") {
		t.Errorf("request for blocked.test in the tunnel: want 403 host-mismatch, got %+v", resp[1])
	}
	// curl: --proxytunnel for an http:// URL, Host switched.
	if reply, r, ok := e.fetch("-p", "-x", proxyURL, "-H", "Host: blocked.test", "http://allowed.test/"); ok {
		t.Errorf("curl -p with Host: blocked.test reached %+v\n%s", reply, r)
	}
	// h2c in the tunnel, :authority blocked.test.
	if reply, r, ok := e.fetch("-p", "-x", proxyURL, "--http2-prior-knowledge", "-H", "Host: blocked.test", "http://allowed.test/"); ok {
		t.Errorf("h2c in the tunnel reached %+v\n%s", reply, r)
	}
	// Bytes of no protocol: refused (the CONNECT named no port), so the
	// world's server never answers them.
	resp = e.rawHTTP("127.0.0.1", proxyPort, "seq", tunnel, "SSH-2.0-OpenSSH_9.6\r\n")
	if len(resp) == 2 && resp[1].Status != 0 {
		t.Errorf("SSH-like bytes in the tunnel were answered by the server: %+v", resp[1])
	}
	noRequestsFor(t, e.w, "blocked.test")

	// The tunnel still carries requests for its own name, decided one by one.
	e.mustFetch("allowed.test", "-p", "-x", proxyURL, "http://allowed.test/tunnelled")
	e.waitAudit("the request decided inside the tunnel", func(r auditRecord) bool {
		return r.Kind == "http" && r.Target == "allowed.test" && r.Decision == "allow"
	})
	rec := e.waitAudit("the tunnel's refused request", func(r auditRecord) bool {
		return r.Kind == "http" && r.Decision == "deny" && r.Reason == "host-mismatch"
	})
	if !strings.Contains(rec.Error, "blocked.test") {
		t.Errorf("audit %+v: want the Host it refused named", rec)
	}
}

// The rule refuses only what names no host where a name admitted the
// address: TLS and HTTP are decided as before, and raw TCP passes where a
// rule names the port, through the transparent listener and through CONNECT.
func TestIdentifiedAndExplicitlyAdmittedStreamsStillWork(t *testing.T) {
	t.Parallel()
	w := fakenet.Start(t)
	setRecords(w)
	w.SetRecords("smtp.test", fakenet.A("198.51.100.10"))
	smtp := ap(host4b, 25)
	listenSMTP(t, w, smtp)
	s := w.NewSandbox(t)
	e := startEgressd(t, w, s, streamsPolicy)

	e.mustFetch("allowed.test", "https://allowed.test/")
	e.mustFetch("allowed.test", "http://allowed.test/")
	e.mustFetch("allowed.test", "-x", proxyURL, "https://allowed.test/")
	e.mustFetch("allowed.test", "-x", proxyURL, "http://allowed.test/")

	// SSH-like client-first bytes to echo.test:7 (a rule naming the port),
	// transparently and through CONNECT.
	if d := e.dig("echo.test"); d.status != "NOERROR" {
		t.Fatalf("dig echo.test: %s", d)
	}
	const hello = "SSH-2.0-OpenSSH_9.6\r\n"
	if p := e.probeTCP(ap(host4, 7), hello); p.Reply != hello {
		t.Errorf("SSH-like bytes to echo.test:7: want the echo, got %+v", p)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := e.dialProxyTunnel(ctx, "echo.test:7")
	if err != nil {
		t.Fatal(err)
	}
	if got := echoOnce(c, hello); got != hello {
		t.Errorf("SSH-like bytes through CONNECT echo.test:7: echoed %q", got)
	}
	c.Close()

	// A server-first protocol on smtp.test:25: the client waits for the
	// banner before it says anything.
	r := run(t, e.s, "", pythonBin, "-c", smtpClientScript, "smtp.test", "25")
	if strings.TrimSpace(r.stdout) != "220 smtp.test ESMTP|250 smtp.test hello x" {
		t.Errorf("SMTP conversation with smtp.test:25: %s", r)
	}
	if n := w.TCPAccepted(smtp); n != 1 {
		t.Errorf("the SMTP server accepted %d connections, want 1", n)
	}
}

// smtpClientScript connects to argv[1]:argv[2], reads the banner line
// (saying nothing first), sends EHLO, reads the answer line, and prints
// "BANNER|ANSWER".
const smtpClientScript = `
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
f = s.makefile("rb")
banner = f.readline().decode().strip()
s.sendall(b"EHLO x\r\n")
print(banner + "|" + f.readline().decode().strip())
`

// listenSMTP runs a server-first responder on a: a banner, then one answer
// per line.
func listenSMTP(t *testing.T, w *fakenet.World, a netip.AddrPort) {
	t.Helper()
	listenWorld(t, w, a, func(c net.Conn) {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write([]byte("220 smtp.test ESMTP\r\n"))
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				_, _ = c.Write([]byte("250 smtp.test hello x\r\n"))
			}
			if err != nil {
				return
			}
		}
	})
}

// launcherOddRequestScript sends, from inside a launcher sandbox, requests
// for blocked.test with odd request lines to allowed.test's address on 80,
// and prints "odd=served" or "odd=refused" for each.
const launcherOddRequestScript = `
import socket
for line in ("GET / HTTP/1.9", "get / HTTP/1.1", "M-SEARCH / HTTP/1.1"):
    reply = b""
    try:
        s = socket.create_connection(("allowed.test", 80), timeout=5)
        s.sendall((line + "\r\nHost: blocked.test\r\nConnection: close\r\n\r\n").encode())
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    except OSError:
        pass
    print("odd=" + ("served" if b'"server":"fakenet"' in reply else "refused"))
`

// The attacks of issue #7 item 1 from inside a real sandbox (runc, the
// launcher's own namespace and firewall): h2c with prior knowledge, odd
// request lines, and plain HTTP for another name through an allowed
// CONNECT tunnel, each aimed at blocked.test on allowed.test's front end.
func testLauncherUndecidedStreamsRefused(t *testing.T) {
	lw := newLauncherWorld(t)
	if err := os.WriteFile(filepath.Join(lw.ws, "odd.py"), []byte(launcherOddRequestScript), 0o644); err != nil {
		t.Fatal(err)
	}
	r := lw.run("--allow", "allowed.test", "--block", "blocked.test", "--", "sh", "-c",
		curlArgs+" --noproxy '*' http://allowed.test/plain; c=$?; echo; echo plain=$c; "+
			curlArgs+" -f --noproxy '*' --http2-prior-knowledge --resolve blocked.test:80:203.0.113.10 http://blocked.test/h2c; c=$?; echo; echo h2c=$c; "+
			curlArgs+" -f -p -H 'Host: blocked.test' http://allowed.test/tunnel; c=$?; echo; echo tunnel=$c; "+
			sandboxPython+" /sandbox/odd.py")
	if r.code != 0 {
		t.Fatalf("want exit 0 (the script's)\n%s", r)
	}
	if v := marker(r.stdout, "plain"); v != "0" {
		t.Errorf("plain HTTP to allowed.test: curl exit %q, want 0\n%s", v, r)
	}
	for _, m := range []string{"h2c", "tunnel"} {
		if v := marker(r.stdout, m); v == "0" {
			t.Errorf("%s attack: curl exit 0, want a failure\n%s", m, r)
		}
	}
	if strings.Contains(r.stdout, "odd=served") || strings.Count(r.stdout, "odd=refused") != 3 {
		t.Errorf("odd request lines: want 3 refused\n%s", r)
	}
	if n := lw.w.HTTPRequests("blocked.test"); n != 0 {
		t.Errorf("the world's server answered %d requests for blocked.test: %+v", n, lw.w.HTTPLog())
	}
	if n := lw.w.HTTPRequests("allowed.test"); n != 1 {
		t.Errorf("the world's server answered %d requests for allowed.test, want 1", n)
	}
	reasons := map[string]bool{}
	for _, a := range r.audit {
		if a.Decision == "deny" {
			reasons[a.Reason] = true
		}
	}
	for _, want := range []string{"unidentified-stream", "host-mismatch", "blocked-by"} {
		if !reasons[want] {
			t.Errorf("no %s denial in the audit log: %+v", want, r.audit)
		}
	}
}
