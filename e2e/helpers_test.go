package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/e2e/fakenet"
	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/internal/syncbuf"
	"github.com/egressd/egressd/policy"
)

// The fixed ports and mark every test's egressd uses. Each test has its own
// sandbox namespace, so they never collide.
const (
	dnsPort         = 15053
	proxyPort       = 3128
	transparentPort = 15001
	egressdMark     = 0x2a

	proxyURL = "http://127.0.0.1:3128"
)

// Addresses of the fake internet (fakenet's defaults).
var (
	host4   = netip.MustParseAddr("203.0.113.10")
	host4b  = netip.MustParseAddr("198.51.100.10")
	host6   = netip.MustParseAddr("2001:db8::10")
	dnsAddr = netip.MustParseAddr("203.0.113.53")
)

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// basePolicy is the policy most tests run under. Line numbers matter: tests
// find a rule's line with lineOf.
const basePolicy = `# egressd e2e policy
version = 1
profile = "strict"

[network]
allow = [
  "allowed.test",
  "dual.test",
  "v6only.test",
  "echo.test:7",
  ".rebind.test",
  "keep.test",
  "drop.test",
]
block = [
  "blocked.test",
]
`

// setRecords gives w the DNS table every test starts from.
func setRecords(w *fakenet.World) {
	w.SetRecords("allowed.test", fakenet.A("203.0.113.10"))
	// blocked.test is served by the same front end as allowed.test, so a
	// fronting or Host trick has a server that would answer it.
	w.SetRecords("blocked.test", fakenet.A("203.0.113.10"))
	w.SetRecords("other.test", fakenet.A("198.51.100.10"))
	w.SetRecords("echo.test", fakenet.A("203.0.113.10"))
	w.SetRecords("dual.test", fakenet.A("203.0.113.10"), fakenet.AAAA("2001:db8::10"))
	w.SetRecords("v6only.test", fakenet.AAAA("2001:db8::10"))
	w.SetRecords("keep.test", fakenet.A("203.0.113.10"))
	w.SetRecords("drop.test", fakenet.A("198.51.100.10"))
	// Were an exfiltration query ever forwarded, it would resolve.
	w.SetRecords("*.exfil.test", fakenet.A("198.51.100.10"))
}

// egressd is one running `egressd serve` inside a sandbox, with the
// firewall installed in front of it.
type egressd struct {
	t          *testing.T
	w          *fakenet.World
	s          *fakenet.Sandbox
	dir        string
	policyPath string
	auditPath  string
	adminAddr  string // "unix:PATH" or "host:port"
	fw         firewall.Config

	cmd    *exec.Cmd
	stderr *syncbuf.Buffer
	exited chan struct{}
}

// startOpts are the less common knobs of startEgressdWith.
type startOpts struct {
	policyTOML string
	flags      []string
	// adminTCP, when set, serves the admin endpoint on this loopback TCP
	// address instead of a unix socket, and protects its port in the firewall.
	adminTCP string
	// upstreamFromPolicy leaves out --upstream-dns, so the policy's
	// network.upstream_dns decides where allowed names go.
	upstreamFromPolicy bool
}

// newEnv starts a world with the standard records, a sandbox, and egressd
// under policyTOML in it.
func newEnv(t *testing.T, policyTOML string, extraFlags ...string) *egressd {
	t.Helper()
	w := fakenet.Start(t)
	setRecords(w)
	s := w.NewSandbox(t)
	return startEgressd(t, w, s, policyTOML, extraFlags...)
}

// startEgressd writes policyTOML to a temporary policy file, starts
// `egressd serve` inside sandbox s, waits for it to say ready, and installs
// the firewall in s. Everything is undone when the test ends.
func startEgressd(t *testing.T, w *fakenet.World, s *fakenet.Sandbox, policyTOML string, extraFlags ...string) *egressd {
	t.Helper()
	return startEgressdWith(t, w, s, startOpts{policyTOML: policyTOML, flags: extraFlags})
}

func startEgressdWith(t *testing.T, w *fakenet.World, s *fakenet.Sandbox, o startOpts) *egressd {
	t.Helper()
	// A short directory: the admin socket's path must fit in sun_path.
	dir, err := os.MkdirTemp("", "egt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &egressd{
		t: t, w: w, s: s, dir: dir,
		policyPath: filepath.Join(dir, "policy.toml"),
		auditPath:  filepath.Join(dir, "audit.jsonl"),
		adminAddr:  "unix:" + filepath.Join(dir, "admin.sock"),
		stderr:     &syncbuf.Buffer{},
		exited:     make(chan struct{}),
	}
	if o.adminTCP != "" {
		e.adminAddr = o.adminTCP
	}
	if err := os.WriteFile(e.policyPath, []byte(o.policyTOML), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"serve",
		"--policy", e.policyPath,
		"--dns-listen", fmt.Sprintf("127.0.0.1:%d,[::1]:%d", dnsPort, dnsPort),
		"--proxy-listen", fmt.Sprintf("127.0.0.1:%d", proxyPort),
		"--transparent-listen", fmt.Sprintf("127.0.0.1:%d,[::1]:%d", transparentPort, transparentPort),
		"--mark", strconv.Itoa(egressdMark),
		"--admin-listen", e.adminAddr,
		"--audit-log", e.auditPath,
		"--sandbox-id", "e2e-" + s.Name(),
		"--shutdown-grace", "1s",
		"--ready-fd", "3",
	}
	if !o.upstreamFromPolicy {
		args = append(args, "--upstream-dns", dnsAddr.String())
	}
	args = append(args, o.flags...)

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	e.cmd = s.Exec(context.Background(), egressdBin, args...)
	e.cmd.ExtraFiles = []*os.File{pw}
	e.cmd.Stdout, e.cmd.Stderr = e.stderr, e.stderr
	e.cmd.Env = cleanEnv()
	start := time.Now()
	if err := e.cmd.Start(); err != nil {
		pw.Close()
		t.Fatalf("starting egressd: %v", err)
	}
	pw.Close()
	go func() {
		_ = e.cmd.Wait()
		close(e.exited)
	}()
	t.Cleanup(e.stop)

	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(pr).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if line != "ready\n" {
			select {
			case <-e.exited:
			case <-time.After(5 * time.Second):
			}
			t.Fatalf("egressd did not become ready (ready-fd said %q):\n%s", line, e.stderr)
		}
	case <-e.exited:
		t.Fatalf("egressd exited before it was ready (%s):\n%s", e.cmd.ProcessState, e.stderr)
	case <-time.After(15 * time.Second):
		t.Fatalf("egressd not ready after 15s:\n%s", e.stderr)
	}
	t.Logf("egressd ready in %s (pid %d)", time.Since(start).Round(time.Millisecond), e.cmd.Process.Pid)

	e.fw = firewall.Config{
		Mode:              policy.ModeFiltered,
		DNSPort:           dnsPort,
		TransparentPort:   transparentPort,
		ExplicitProxyPort: proxyPort,
		Mark:              egressdMark,
	}
	if o.adminTCP != "" {
		p, err := netip.ParseAddrPort(o.adminTCP)
		if err != nil {
			t.Fatalf("admin address %q: %v", o.adminTCP, err)
		}
		e.fw.ProtectedPorts = []uint16{p.Port()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := firewall.Install(ctx, s.Path(), e.fw); err != nil {
		t.Fatalf("installing the firewall: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := firewall.Flush(ctx, s.Path()); err != nil {
			t.Errorf("flushing the firewall: %v", err)
		}
	})
	return e
}

// stop ends egressd: SIGTERM, then SIGKILL to its process group after 5s.
// It logs egressd's output when the test failed.
func (e *egressd) stop() {
	if e.cmd.Process != nil {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.exited:
		case <-time.After(5 * time.Second):
			e.t.Errorf("egressd (pid %d) still running 5s after SIGTERM; killing it", e.cmd.Process.Pid)
			_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
			<-e.exited
		}
	}
	if e.t.Failed() {
		e.t.Logf("egressd stderr:\n%s", e.stderr)
		if b, err := os.ReadFile(e.auditPath); err == nil {
			e.t.Logf("audit log:\n%s", b)
		}
	}
}

// in returns e reporting to t: a subtest must fail itself, not its parent.
func (e *egressd) in(t *testing.T) *egressd {
	c := *e
	c.t = t
	return &c
}

// kill ends egressd at once with SIGKILL, as a crash would.
func (e *egressd) kill() {
	e.t.Helper()
	if err := e.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		e.t.Fatalf("killing egressd: %v", err)
	}
	select {
	case <-e.exited:
	case <-time.After(5 * time.Second):
		e.t.Fatal("egressd survived SIGKILL for 5s")
	}
}

// running reports whether the egressd process is still alive.
func (e *egressd) running() bool {
	select {
	case <-e.exited:
		return false
	default:
		return true
	}
}

// writePolicy replaces the policy file the way editors and config
// management do: write a new file, rename it over the old one.
func (e *egressd) writePolicy(toml string) {
	e.t.Helper()
	tmp := e.policyPath + ".new"
	if err := os.WriteFile(tmp, []byte(toml), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, e.policyPath); err != nil {
		e.t.Fatal(err)
	}
}

// source is "policyfile:N", the provenance egressd reports for the rule on
// line N of the policy file.
func (e *egressd) source(line int) string { return e.policyPath + ":" + strconv.Itoa(line) }

// lineOf returns the 1-based line of text holding needle (which must occur
// exactly once).
func lineOf(t *testing.T, text, needle string) int {
	t.Helper()
	found := 0
	for i, l := range strings.Split(text, "\n") {
		if strings.Contains(l, needle) {
			if found != 0 {
				t.Fatalf("%q occurs on lines %d and %d of the policy", needle, found, i+1)
			}
			found = i + 1
		}
	}
	if found == 0 {
		t.Fatalf("%q is not in the policy", needle)
	}
	return found
}

// ---- clients ------------------------------------------------------------

// cleanEnv is the environment of every client: no proxy variables, so a
// client uses the explicit proxy only when told to on its command line.
func cleanEnv() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"}
}

type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("exit %d after %s\nstdout: %s\nstderr: %s", r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

// runner is a network namespace commands can run in (World or Sandbox).
type runner interface {
	Exec(ctx context.Context, name string, args ...string) *exec.Cmd
	Name() string
}

// clientTimeout bounds every client command; the commands have their own,
// shorter timeouts, so hitting it is a bug worth failing on.
const clientTimeout = 20 * time.Second

// run runs name with args inside ns with stdin, bounded by clientTimeout.
func run(t *testing.T, ns runner, stdin string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	cmd := ns.Exec(ctx, name, args...)
	cmd.Env = cleanEnv()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errOut.String(), took: time.Since(start)}
	if cmd.ProcessState == nil {
		t.Fatalf("running %s %s in %s: %v", name, strings.Join(args, " "), ns.Name(), err)
	}
	r.code = cmd.ProcessState.ExitCode()
	if ctx.Err() != nil {
		t.Fatalf("%s %s in %s: killed after %s\n%s", name, strings.Join(args, " "), ns.Name(), clientTimeout, r)
	}
	return r
}

// curl runs curl in the sandbox, trusting the world's CA.
func (e *egressd) curl(args ...string) result {
	e.t.Helper()
	return run(e.t, e.s, "", "curl", append([]string{"-sS", "--max-time", "5", "--cacert", e.w.CAFile()}, args...)...)
}

// fetch runs curl and parses the fake server's reply; ok is false when the
// reply did not come from a fakenet server.
func (e *egressd) fetch(args ...string) (fakenet.HTTPRequest, result, bool) {
	e.t.Helper()
	r := e.curl(args...)
	if r.code != 0 {
		return fakenet.HTTPRequest{}, r, false
	}
	reply, err := fakenet.ParseReply([]byte(r.stdout))
	return reply, r, err == nil
}

// mustFetch fetches with curl and requires a fakenet reply naming host.
func (e *egressd) mustFetch(host string, args ...string) fakenet.HTTPRequest {
	e.t.Helper()
	reply, r, ok := e.fetch(args...)
	if !ok {
		e.t.Fatalf("curl %s: want a reply from the fake server\n%s", strings.Join(args, " "), r)
	}
	if reply.Host != host {
		e.t.Fatalf("curl %s: the server saw Host %q, want %q", strings.Join(args, " "), reply.Host, host)
	}
	return reply
}

// python runs a python3 program in the sandbox.
func (e *egressd) python(script string, args ...string) result {
	e.t.Helper()
	return run(e.t, e.s, "", pythonBin, append([]string{"-c", script}, args...)...)
}

// digAnswer is what dig printed.
type digAnswer struct {
	status  string   // NOERROR, NXDOMAIN, REFUSED, ... ("" if no reply)
	answers []string // "TYPE RDATA" of each answer record
	raw     result
}

func (d digAnswer) String() string {
	return fmt.Sprintf("status %q answers %q (%s)", d.status, d.answers, d.raw)
}

// dig runs dig in ns (one try, 2s) and parses its reply.
func dig(t *testing.T, ns runner, args ...string) digAnswer {
	t.Helper()
	r := run(t, ns, "", "dig", append([]string{"+time=2", "+tries=1", "+noall", "+comments", "+answer"}, args...)...)
	d := digAnswer{raw: r}
	for _, line := range strings.Split(r.stdout, "\n") {
		if i := strings.Index(line, "status: "); i >= 0 && strings.Contains(line, "->>HEADER<<-") {
			d.status = strings.TrimRight(strings.Fields(line[i+len("status: "):])[0], ",")
			continue
		}
		if line == "" || strings.HasPrefix(line, ";") {
			continue
		}
		f := strings.Fields(line)
		if len(f) >= 5 {
			d.answers = append(d.answers, f[3]+" "+strings.Join(f[4:], " "))
		}
	}
	return d
}

func (e *egressd) dig(args ...string) digAnswer {
	e.t.Helper()
	return dig(e.t, e.s, args...)
}

// ---- raw HTTP through python --------------------------------------------

// httpRawScript connects to argv[1]:argv[2] and writes the requests of the
// JSON list argv[3] on that one connection. Mode "seq" (argv[4]) sends
// each request after the previous response; "pipe" sends them all at once.
// It prints a JSON list with one entry per response: {status, headers,
// body}, {closed: true} when the connection ended instead, or {error}.
const httpRawScript = `
import json, socket, sys
host, port, reqs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
mode = sys.argv[4] if len(sys.argv) > 4 else "seq"
out = []
def read_resp(f, connect):
    line = f.readline()
    if not line:
        return {"closed": True}
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    status = int(parts[1])
    headers = {}
    while True:
        h = f.readline()
        if not h:
            break
        h = h.decode("latin-1").rstrip("\r\n")
        if not h:
            break
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    body = b""
    if connect and 200 <= status < 300:
        pass
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(f.readline().strip().split(b";")[0], 16)
            if size == 0:
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            body += f.read(size)
            f.readline()
    elif status not in (204, 304) and status >= 200:
        body = f.read()
    return {"status": status, "headers": headers, "body": body.decode("utf-8", "replace")}
try:
    s = socket.create_connection((host, port), timeout=5)
    f = s.makefile("rb")
    if mode == "pipe":
        s.sendall("".join(reqs).encode("latin-1"))
        for r in reqs:
            resp = read_resp(f, r.startswith("CONNECT"))
            out.append(resp)
            if resp.get("closed"):
                break
    else:
        for r in reqs:
            s.sendall(r.encode("latin-1"))
            resp = read_resp(f, r.startswith("CONNECT"))
            out.append(resp)
            if resp.get("closed"):
                break
except Exception as e:
    out.append({"error": type(e).__name__ + ": " + str(e)})
print(json.dumps(out))
`

type rawResponse struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
	Closed  bool              `json:"closed"`
	Error   string            `json:"error"`
}

// rawHTTP sends requests on one connection from the sandbox to host:port,
// in mode "seq" or "pipe" (see httpRawScript), and returns what came back,
// one entry per response.
func (e *egressd) rawHTTP(host string, port uint16, mode string, reqs ...string) []rawResponse {
	e.t.Helper()
	js, err := json.Marshal(reqs)
	if err != nil {
		e.t.Fatal(err)
	}
	r := e.python(httpRawScript, host, strconv.Itoa(int(port)), string(js), mode)
	var out []rawResponse
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		e.t.Fatalf("raw HTTP client: %v\n%s", err, r)
	}
	return out
}

// tcpProbeScript connects to argv[1]:argv[2], sends argv[3] and prints a
// JSON object: {connected, reply, error}. The reply is what came back
// before the connection closed or 2s of silence.
const tcpProbeScript = `
import json, socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
res = {"connected": False, "reply": "", "error": ""}
try:
    s = socket.create_connection((host, port), timeout=3)
    res["connected"] = True
    s.sendall(payload)
    s.settimeout(2)
    data = b""
    while len(data) < len(payload):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    res["reply"] = data.decode("latin-1")
except Exception as e:
    res["error"] = type(e).__name__ + ": " + str(e)
print(json.dumps(res))
`

type tcpProbe struct {
	Connected bool   `json:"connected"`
	Reply     string `json:"reply"`
	Error     string `json:"error"`
}

// probeTCP sends payload over a raw TCP connection from the sandbox and
// reports what came back.
func (e *egressd) probeTCP(addr netip.AddrPort, payload string) tcpProbe {
	e.t.Helper()
	r := e.python(tcpProbeScript, addr.Addr().String(), strconv.Itoa(int(addr.Port())), payload)
	var p tcpProbe
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		e.t.Fatalf("TCP probe: %v\n%s", err, r)
	}
	return p
}

// udpSendScript sends argv[3] to argv[1]:argv[2] over UDP and waits 1s for
// a reply. It prints {sent, reply, error}.
const udpSendScript = `
import json, socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
res = {"sent": False, "reply": "", "error": ""}
try:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.sendto(payload, (host, port))
    res["sent"] = True
    data, _ = s.recvfrom(4096)
    res["reply"] = data.decode("latin-1")
except Exception as e:
    res["error"] = type(e).__name__ + ": " + str(e)
print(json.dumps(res))
`

type udpProbe struct {
	Sent  bool   `json:"sent"`
	Reply string `json:"reply"`
	Error string `json:"error"`
}

func probeUDP(t *testing.T, ns runner, addr netip.AddrPort, payload string) udpProbe {
	t.Helper()
	r := run(t, ns, "", pythonBin, "-c", udpSendScript, addr.Addr().String(), strconv.Itoa(int(addr.Port())), payload)
	var p udpProbe
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		t.Fatalf("UDP probe: %v\n%s", err, r)
	}
	return p
}

// ---- in-process clients (sockets made inside the sandbox) ---------------

// dialProxyTunnel opens a CONNECT tunnel to hostport through the explicit
// proxy from inside the sandbox and returns it once the proxy answered 200.
// The socket is an ordinary unmarked one in the sandbox's namespace, so the
// firewall treats it as any sandbox process.
func (e *egressd) dialProxyTunnel(ctx context.Context, hostport string) (net.Conn, error) {
	c, err := e.s.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", proxyPort))
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", hostport, hostport)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading the CONNECT response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %s: %s", hostport, resp.Status, body)
	}
	if br.Buffered() > 0 {
		c.Close()
		return nil, errors.New("bytes after the CONNECT response before the client spoke")
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// dialProxyTLS opens a CONNECT tunnel to host:port through the explicit
// proxy from inside the sandbox (dialProxyTunnel) and completes a TLS
// handshake with serverName over it.
func (e *egressd) dialProxyTLS(ctx context.Context, hostport, serverName string) (*tls.Conn, error) {
	c, err := e.dialProxyTunnel(ctx, hostport)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	tc := tls.Client(c, &tls.Config{ServerName: serverName, RootCAs: e.w.CertPool(), NextProtos: []string{"http/1.1"}})
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return tc, nil
}

// getOn sends one GET for host on an open HTTP/1.1 connection (keep-alive)
// and parses the fake server's reply.
func getOn(c net.Conn, br *bufio.Reader, host string, timeout time.Duration) (fakenet.HTTPRequest, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "GET /keepalive HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
		return fakenet.HTTPRequest{}, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fakenet.HTTPRequest{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fakenet.HTTPRequest{}, err
	}
	return fakenet.ParseReply(body)
}

// ---- audit log, admin endpoint ------------------------------------------

// auditRecord mirrors the audit log's documented JSON fields (audit.Record),
// spelled out here: the e2e tests read the log as its consumers do.
type auditRecord struct {
	Time       time.Time `json:"time"`
	SandboxID  string    `json:"sandbox_id"`
	Kind       string    `json:"kind"`
	Target     string    `json:"target"`
	Port       uint16    `json:"port"`
	QType      string    `json:"qtype"`
	Addrs      []string  `json:"addrs"`
	Decision   string    `json:"decision"`
	Reason     string    `json:"reason"`
	Rule       string    `json:"rule"`
	Source     string    `json:"rule_source"`
	Client     string    `json:"client"`
	Error      string    `json:"error"`
	BytesUp    int64     `json:"bytes_up"`
	BytesDown  int64     `json:"bytes_down"`
	DurationMS float64   `json:"duration_ms"`
}

// audit returns every record written so far. A line that is not a JSON
// object fails the test.
func (e *egressd) audit() []auditRecord {
	e.t.Helper()
	b, err := os.ReadFile(e.auditPath)
	if err != nil {
		e.t.Fatalf("reading the audit log: %v", err)
	}
	var out []auditRecord
	lines := bytes.Split(b, []byte("\n"))
	for i, line := range lines[:len(lines)-1] { // the last is "" or still being written
		if len(line) == 0 {
			continue
		}
		var r auditRecord
		if err := json.Unmarshal(line, &r); err != nil {
			e.t.Fatalf("audit log line %d is not a record: %v\n%s", i+1, err, line)
		}
		out = append(out, r)
	}
	return out
}

// waitAudit polls the audit log until match holds for some record, and
// returns that record. Connection records are written when the connection
// ends, so they may trail the client by a moment.
func (e *egressd) waitAudit(what string, match func(auditRecord) bool) auditRecord {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, r := range e.audit() {
			if match(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no audit record for %s after 5s; log:\n%s", what, e.auditText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *egressd) auditText() string {
	b, _ := os.ReadFile(e.auditPath)
	return string(b)
}

// adminClient talks to the admin endpoint from outside the sandbox (the
// launcher's side).
func (e *egressd) adminClient() *http.Client {
	tr := &http.Transport{DisableKeepAlives: true}
	if path, ok := strings.CutPrefix(e.adminAddr, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
	} else {
		// The admin port lives in the sandbox's namespace, protected by the
		// firewall: dial it the way egressd's own sockets go, with the mark.
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return e.dialMarked(ctx, network, addr)
		}
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// dialMarked dials addr from inside the sandbox with egressd's SO_MARK set.
func (e *egressd) dialMarked(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := e.s.Do(func() error {
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, egressdMark)
			}); err != nil {
				return err
			}
			return serr
		}}
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// admin sends one request to the admin endpoint.
func (e *egressd) admin(method, path string) (int, string) {
	e.t.Helper()
	url := "http://egressd-admin" + path
	if !strings.HasPrefix(e.adminAddr, "unix:") {
		url = "http://" + e.adminAddr + path
	}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.adminClient().Do(req)
	if err != nil {
		e.t.Fatalf("admin %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metric returns the sum of every sample of the named metric (any labels).
func (e *egressd) metric(name string) float64 {
	e.t.Helper()
	code, body := e.admin(http.MethodGet, "/metrics")
	if code != http.StatusOK {
		e.t.Fatalf("GET /metrics: %d %s", code, body)
	}
	var sum float64
	found := false
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			e.t.Fatalf("metrics line %q: %v", line, err)
		}
		sum += v
		found = true
	}
	if !found {
		e.t.Fatalf("metric %s not exposed; /metrics:\n%s", name, body)
	}
	return sum
}

// assertNothingLeavesWithEgressdDead is the fail-closed check, run after
// egressd was killed and the world's counters reset: through the proxy,
// transparently, to a pinned address, to IP literals of both families, and
// by DNS to the world's resolver, nothing reaches the world, and every
// client fails fast instead of hanging. fetch is curl in the sandbox as its
// user; ns runs dig there.
func assertNothingLeavesWithEgressdDead(t *testing.T, w *fakenet.World, ns runner, fetch func(args ...string) (fakenet.HTTPRequest, result, bool)) {
	t.Helper()
	for _, args := range [][]string{
		{"https://allowed.test/"},
		{"-x", proxyURL, "https://allowed.test/"},
		{"--resolve", "allowed.test:443:203.0.113.10", "https://allowed.test/"},
		{"http://203.0.113.10/"},
		{"-6", "http://[2001:db8::10]/"},
	} {
		start := time.Now()
		if reply, r, ok := fetch(args...); ok {
			t.Errorf("curl %s with egressd dead reached the server %+v\n%s", strings.Join(args, " "), reply, r)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("curl %s with egressd dead took %s to fail; want fast failure", strings.Join(args, " "), took.Round(time.Millisecond))
		}
	}
	if d := dig(t, ns, "allowed.test"); d.status != "" {
		t.Errorf("dig with egressd dead got a reply: %s", d)
	}
	if d := dig(t, ns, "@203.0.113.53", "allowed.test"); d.status != "" {
		t.Errorf("dig @203.0.113.53 with egressd dead got a reply: %s", d)
	}
	if n := len(w.HTTPLog()); n != 0 {
		t.Errorf("world served %d requests after egressd died", n)
	}
	if n := len(w.DNSLog()); n != 0 {
		t.Errorf("world's DNS saw %d queries after egressd died", n)
	}
	for _, a := range []netip.AddrPort{ap(host4, 443), ap(host4, 80), ap(host6, 80)} {
		if n := w.TCPAccepted(a); n != 0 {
			t.Errorf("world accepted %d connections on %s after egressd died", n, a)
		}
	}
}

// ---- small things --------------------------------------------------------

// syncbuf.Buffer is a bytes.Buffer safe for a process's output and readers.

// eventually polls cond every 50ms until it holds or timeout passes.
func eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// httpFrom lists the world's HTTP log entries matching f.
func httpFrom(w *fakenet.World, f func(fakenet.HTTPRequest) bool) []fakenet.HTTPRequest {
	var out []fakenet.HTTPRequest
	for _, r := range w.HTTPLog() {
		if f(r) {
			out = append(out, r)
		}
	}
	return out
}

// icmpEchoes returns how many ICMP and ICMPv6 echo requests the namespace
// has received, from its /proc/net/snmp and /proc/net/snmp6.
func icmpEchoes(t *testing.T, ns runner) (v4, v6 int) {
	t.Helper()
	r := run(t, ns, "", "cat", "/proc/net/snmp", "/proc/net/snmp6")
	if r.code != 0 {
		t.Fatalf("reading ICMP counters: %s", r)
	}
	lines := strings.Split(r.stdout, "\n")
	v4 = -1
	for i := 0; i+1 < len(lines); i++ {
		if strings.HasPrefix(lines[i], "Icmp: ") && strings.HasPrefix(lines[i+1], "Icmp: ") {
			names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			for j := range names {
				if names[j] == "InEchos" && j < len(vals) {
					v4, _ = strconv.Atoi(vals[j])
				}
			}
			break
		}
	}
	v6 = -1
	for _, l := range lines {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Icmp6InEchos" {
			v6, _ = strconv.Atoi(f[1])
		}
	}
	if v4 < 0 || v6 < 0 {
		t.Fatalf("ICMP echo counters not found:\n%s", r.stdout)
	}
	return v4, v6
}
