package e2e

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egressd/egressd/e2e/fakenet"
)

// Issue #11 item 7: report mode (network.mode = "report") learns an allow
// list. It lets through what no allow rule admits, recording it as
// would-deny, and refuses everything else filtered mode refuses: the
// address guard above all. Scored on what the world's servers (and a
// server on the sandbox's own loopback) saw.

// reportTest runs fn as a top-level test of launcher runs, checking the
// machine for leftovers before and after as TestLauncher does.
func reportTest(t *testing.T, fn func(t *testing.T)) {
	fakenet.RequireRoot(t)
	launcherBinary(t)
	if left := launcherLeftovers(t); len(left) > 0 {
		t.Fatalf("leftovers before the test ran (not ours; refusing to judge): %v", left)
	}
	fn(t)
	if left := launcherLeftovers(t); len(left) > 0 {
		t.Errorf("the test left behind: %v", left)
	}
}

// THREATS C1, C2 in report mode: a name that resolves to the metadata
// address or to loopback, and those addresses asked for directly, are
// refused guarded-address — through the proxy, transparently and in DNS —
// never let through as would-deny, while a name no rule allows is. The
// fake metadata server and an HTTP server on the sandbox's own loopback
// saw nothing.
func TestReportModeStillRefusesGuardedAddresses(t *testing.T) {
	reportTest(t, func(t *testing.T) {
		lw := newLauncherWorld(t)
		meta := netip.MustParseAddr("169.254.169.254")
		if err := lw.w.AddHost(meta); err != nil {
			t.Fatal(err)
		}
		lw.w.SetRecords("meta.test", fakenet.A(meta.String()))
		lw.w.SetRecords("loop.test", fakenet.A("127.0.0.1"))
		script := sandboxPython + ` -m http.server 8080 --bind 127.0.0.1 >/sandbox/loopback.log 2>&1 &
server=$!
sleep 1
for u in http://meta.test/latest/meta-data/ https://meta.test/ http://loop.test:8080/secret http://169.254.169.254/latest/meta-data/; do
  echo "proxied $u=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' $u 2>/dev/null)"
  echo "direct $u=$(curl -sS --max-time 5 --noproxy '*' -o /dev/null -w '%{http_code}' $u 2>/dev/null)"
done
echo "learned=$(curl -sS --max-time 5 --cacert /sandbox/ca.pem -o /dev/null -w '%{http_code}' https://other.test/)"
echo "dns=$(getent hosts meta.test loop.test | wc -l)"
kill $server; true`
		r := lw.run("--net", "report", "--", "sh", "-c", script)
		if r.code != 0 {
			t.Fatalf("want exit 0\n%s", r)
		}
		if marker(r.stdout, "learned") != "200" {
			t.Errorf("a name no rule allows was not let through in report mode\n%s", r)
		}
		if n := worldHTTPTo(lw.w, meta); n != 0 {
			t.Errorf("the fake metadata server served %d requests in report mode", n)
		}
		if log, err := os.ReadFile(filepath.Join(lw.ws, "loopback.log")); err != nil || strings.Contains(string(log), "/secret") {
			t.Errorf("the sandbox's loopback server saw a request (or its log is missing: %v):\n%s", err, log)
		}
		for _, line := range strings.Split(r.stdout, "\n") {
			if (strings.HasPrefix(line, "proxied ") || strings.HasPrefix(line, "direct ")) && strings.HasSuffix(line, "=200") {
				t.Errorf("guarded destination served: %s", line)
			}
		}
		if marker(r.stdout, "dns") != "0" {
			t.Errorf("meta.test or loop.test resolved in the sandbox\n%s", r)
		}
		guarded := 0
		for _, a := range r.audit {
			switch a.Target {
			case "meta.test", "loop.test", meta.String():
				if a.Kind == "dns" && a.QType != "A" && len(a.Addrs) == 0 && a.Decision == "would-deny" {
					continue // an AAAA lookup: the names have no IPv6 address to guard
				}
				if a.Decision != "deny" || a.Reason != "guarded-address" {
					t.Errorf("audit record %+v: want deny guarded-address", a)
				}
				guarded++
			case "other.test":
				if a.Decision != "would-deny" || a.Reason != "no-allow-rule" {
					t.Errorf("audit record %+v: want would-deny no-allow-rule", a)
				}
			}
		}
		if guarded == 0 {
			t.Errorf("no guarded-address record\n%s", r.auditRaw)
		}
		if !strings.Contains(r.stderr, "launcher: would deny other.test:443 (no-allow-rule") ||
			!strings.Contains(r.stderr, "launcher: denied meta.test:80 (guarded-address)") {
			t.Errorf("stderr does not tell the would-deny from the denial\n%s", r)
		}
	})
}

// The learn loop of docs/migrating.md: a script run in report mode fetches
// two names no rule allows (one through the proxy, one transparently);
// `egressd policy suggest` over the run's audit log prints a policy; the
// same script run in filtered mode with that policy fetches both, and a
// third name, not in the suggestion, is denied and never reaches its
// server.
func TestReportModeLearnsAPolicyThatLetsTheSameRunPass(t *testing.T) {
	reportTest(t, func(t *testing.T) {
		lw := newLauncherWorld(t)
		fetch := curlArgs + " https://allowed.test/one; echo; " + curlArgs + " --noproxy '*' https://other.test/two; echo"
		r := lw.run("--net", "report", "--", "sh", "-c", fetch)
		if r.code != 0 || len(replies(r.stdout)) != 2 {
			t.Fatalf("report mode: want exit 0 and two replies\n%s", r)
		}
		for _, want := range []string{
			"launcher: would deny allowed.test:443 (no-allow-rule",
			"launcher: would deny other.test:443 (no-allow-rule",
			"report mode would deny (let through) during the run",
		} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("stderr lacks %q\n%s", want, r)
			}
		}
		if strings.Contains(r.stderr, "launcher: denied") {
			t.Errorf("report mode printed a denial for what it let through\n%s", r)
		}
		log := filepath.Join(lw.ws, "report.jsonl")
		if err := os.WriteFile(log, []byte(r.auditRaw), 0o644); err != nil {
			t.Fatal(err)
		}
		suggest := exec.Command(egressdBin, "policy", "suggest", log)
		var errOut strings.Builder
		suggest.Stderr = &errOut
		learned, err := suggest.Output()
		if err != nil {
			t.Fatalf("egressd policy suggest: %v\n%s\n%s", err, learned, errOut.String())
		}
		for _, want := range []string{`"allowed.test"`, `"other.test"`} {
			if !strings.Contains(string(learned), want) {
				t.Errorf("the suggestion lacks %s:\n%s", want, learned)
			}
		}
		learnedPath := filepath.Join(lw.ws, "learned.toml")
		if err := os.WriteFile(learnedPath, learned, 0o644); err != nil {
			t.Fatal(err)
		}

		before := lw.w.HTTPRequests("echo.test")
		r = lw.run("--policy", learnedPath, "--", "sh", "-c",
			fetch+"; echo \"third=$("+curlArgs+" -o /dev/null -w '%{http_code}' https://echo.test/three 2>/dev/null)\"")
		if r.code != 0 {
			t.Fatalf("filtered mode with the learned policy: want exit 0\n%s", r)
		}
		got := map[string]bool{}
		for _, rep := range replies(r.stdout) {
			got[rep.Host+rep.URI] = true
		}
		if !got["allowed.test/one"] || !got["other.test/two"] {
			t.Errorf("the learned policy did not let the same run pass: replies %v\n%s", got, r)
		}
		if n := lw.w.HTTPRequests("echo.test"); n != before {
			t.Errorf("the server for echo.test, not in the suggestion, served %d requests", n-before)
		}
		denied := false
		for _, a := range r.audit {
			if a.Decision == "would-deny" {
				t.Errorf("filtered mode wrote a would-deny record: %+v", a)
			}
			if a.Target == "echo.test" && a.Kind != "dns" && a.Decision == "deny" && a.Reason == "no-allow-rule" {
				denied = true
			}
		}
		if !denied || !strings.Contains(r.stderr, "launcher: denied echo.test:443 (no-allow-rule)") {
			t.Errorf("echo.test was not denied no-allow-rule\n%s", r)
		}
	})
}
