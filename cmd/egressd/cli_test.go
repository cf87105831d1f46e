package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/internal/admin"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestValidateExitCodesAndPositions(t *testing.T) {
	good := writeFile(t, "good.toml", "version = 1\n[network]\nallow = [\"example.com\", \"example.com\"]\n")
	bad := writeFile(t, "bad.toml", "version = 1\n[network]\nalow = [\"example.com\"]\n")
	code, out, errOut := runCLI(t, "validate", good)
	if code != exitOK || !strings.Contains(out, "good.toml: ok") {
		t.Errorf("validate good: code %d out %q err %q", code, out, errOut)
	}
	if !strings.Contains(errOut, "warning") {
		t.Errorf("validate good: duplicate entry gave no warning on stderr: %q", errOut)
	}
	code, _, errOut = runCLI(t, "validate", good, bad)
	if code != exitFail {
		t.Errorf("validate with a bad file: code %d, want %d", code, exitFail)
	}
	if !regexp.MustCompile(`bad\.toml:3:1: .*alow.*did you mean .*allow`).MatchString(errOut) {
		t.Errorf("validate bad: want file:line:col and a did-you-mean hint, got %q", errOut)
	}
	if code, _, _ := runCLI(t, "validate"); code != exitUsage {
		t.Errorf("validate without files: code %d, want %d", code, exitUsage)
	}
}

func TestCheckDecisions(t *testing.T) {
	pol := writeFile(t, "policy.toml", "version = 1\n[network]\nallow = [\"*.example.com\", \"10.1.2.0/24:8080\"]\nblock = [\"bad.example.com\"]\n")
	code, out, errOut := runCLI(t, "check", "--policy", pol, "--profile", "strict", "--json",
		"api.example.com", "bad.example.com:443", "example.com", "10.1.2.3:8080", "10.1.2.3:22",
		"evil-example.com", "exa mple.com", "[::ffff:10.1.2.3]:8080")
	if code != exitOK {
		t.Fatalf("check: code %d, stderr %q", code, errOut)
	}
	var got []checkResult
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var r checkResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		r.Error = ""
		if r.Source != "" {
			r.Source = filepath.Base(r.Source)
		}
		got = append(got, r)
	}
	want := []checkResult{
		{Target: "api.example.com:443", Host: "api.example.com", Port: 443, Decision: "allow", Reason: "allowed-by", Rule: "*.example.com", Source: "policy.toml:3"},
		{Target: "bad.example.com:443", Host: "bad.example.com", Port: 443, Decision: "deny", Reason: "blocked-by", Rule: "bad.example.com", Source: "policy.toml:4"},
		{Target: "example.com:443", Host: "example.com", Port: 443, Decision: "deny", Reason: "no-allow-rule"},
		{Target: "10.1.2.3:8080", Host: "10.1.2.3", Port: 8080, Decision: "allow", Reason: "allowed-by", Rule: "10.1.2.0/24:8080", Source: "policy.toml:3"},
		{Target: "10.1.2.3:22", Host: "10.1.2.3", Port: 22, Decision: "deny", Reason: "no-allow-rule"},
		{Target: "evil-example.com:443", Host: "evil-example.com", Port: 443, Decision: "deny", Reason: "no-allow-rule"},
		{Target: "exa mple.com", Decision: "deny", Reason: "invalid-name"},
		{Target: "10.1.2.3:8080", Host: "10.1.2.3", Port: 8080, Decision: "allow", Reason: "allowed-by", Rule: "10.1.2.0/24:8080", Source: "policy.toml:3"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("check decisions (-want +got):\n%s", diff)
	}
}

// TestCheckAndValidateSayWhatReportModeMeans: check answers would-deny for
// what report mode lets through and deny for what it still refuses;
// validate and check warn what the mode means; a filtering floor refuses it.
func TestCheckAndValidateSayWhatReportModeMeans(t *testing.T) {
	pol := writeFile(t, "report.toml", "version = 1\nprofile = \"open\"\n[network]\nmode = \"report\"\nblock = [\"bad.example.com\"]\n")
	code, out, errOut := runCLI(t, "check", "--policy", pol, "new.example.com", "bad.example.com", "169.254.169.254:80")
	if code != exitOK {
		t.Fatalf("check: code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"would-deny  new.example.com:443  no-allow-rule", "deny        bad.example.com:443  blocked-by", "deny        169.254.169.254:80   guarded-address"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "report.toml:4:8: warning: network.mode = report: a name (or address) no allow rule allows is let through and audited as would-deny") {
		t.Errorf("check gave no warning saying what report mode means: %q", errOut)
	}
	if code, _, errOut := runCLI(t, "validate", pol); code != exitOK || !strings.Contains(errOut, "network.mode = report") {
		t.Errorf("validate: code %d, stderr %q", code, errOut)
	}
	code, _, errOut = runCLI(t, "check", "--policy", pol, "--floor", "strict", "new.example.com")
	if code == exitOK || !strings.Contains(errOut, `network.mode "report" (`+pol+`:4:8) lets through every name no allow rule allows`) {
		t.Errorf("check under the floor strict: code %d, stderr %q", code, errOut)
	}
}

func TestCheckTextNamesRuleAndSource(t *testing.T) {
	code, out, _ := runCLI(t, "check", "--block", "*.github.com", "api.github.com")
	if code != exitOK || !strings.Contains(out, "deny") || !strings.Contains(out, "blocked-by *.github.com (flag:--block)") {
		t.Errorf("check text: code %d out %q", code, out)
	}
}

func TestCheckPolicyErrorsExitTwo(t *testing.T) {
	bad := writeFile(t, "bad.toml", "version = 2\n")
	if code, _, errOut := runCLI(t, "check", "--policy", bad, "github.com"); code != exitUsage || !strings.Contains(errOut, "bad.toml:1:") {
		t.Errorf("bad policy: code %d stderr %q", code, errOut)
	}
	if code, _, _ := runCLI(t, "check", "--allow", "*github.com", "github.com"); code != exitUsage {
		t.Errorf("bad --allow pattern: code %d, want %d", code, exitUsage)
	}
	if code, _, _ := runCLI(t, "check"); code != exitUsage {
		t.Errorf("no targets: code %d, want %d", code, exitUsage)
	}
	if code, _, _ := runCLI(t, "check", "--profile", "nope", "github.com"); code != exitUsage {
		t.Errorf("unknown profile: code %d, want %d", code, exitUsage)
	}
}

func TestProfilesAndProfileShowRoundTrip(t *testing.T) {
	code, out, _ := runCLI(t, "profiles")
	for _, name := range []string{"open", "standard", "strict", "offline", "permissive", "moderate", "restrictive"} {
		if !strings.Contains(out, name) {
			t.Errorf("profiles output lacks %q: %s", name, out)
		}
	}
	if code != exitOK {
		t.Errorf("profiles: code %d", code)
	}
	for _, name := range []string{"open", "standard", "strict", "offline", "moderate"} {
		code, toml, errOut := runCLI(t, "profile", "show", name)
		if code != exitOK {
			t.Fatalf("profile show %s: code %d %s", name, code, errOut)
		}
		p := writeFile(t, name+".toml", toml)
		if code, _, errOut := runCLI(t, "validate", p); code != exitOK {
			t.Errorf("profile show %s does not validate: %s", name, errOut)
		}
	}
	if code, _, _ := runCLI(t, "profile", "show", "nope"); code != exitUsage {
		t.Errorf("profile show nope: code %d", code)
	}
}

func TestVersionNamesVersionAndCommit(t *testing.T) {
	for _, arg := range []string{"--version", "version"} {
		code, out, _ := runCLI(t, arg)
		if code != exitOK || !regexp.MustCompile(`^egressd \S+ \(commit \S+, go\S+\)\n$`).MatchString(out) {
			t.Errorf("%s: code %d, output %q", arg, code, out)
		}
	}
}

func TestProfileListAndProfilesAliasAgree(t *testing.T) {
	_, list, _ := runCLI(t, "profile", "list")
	_, alias, _ := runCLI(t, "profiles")
	if list == "" || list != alias {
		t.Errorf("profile list %q, profiles %q: want the same table", list, alias)
	}
	if code, _, _ := runCLI(t, "profile", "list", "extra"); code != exitUsage {
		t.Errorf("profile list extra: code %d, want %d", code, exitUsage)
	}
}

func TestHelpListsEveryCommandWithExamples(t *testing.T) {
	code, out, _ := runCLI(t, "--help")
	if code != exitOK || !strings.Contains(out, "examples:") {
		t.Fatalf("--help: code %d\n%s", code, out)
	}
	for _, c := range commands() {
		if c.alias == "" && !strings.Contains(out, "\n  "+c.name) {
			t.Errorf("--help does not list %s", c.name)
		}
	}
	for _, args := range [][]string{{"serve", "-h"}, {"check", "-h"}, {"firewall", "--help"}, {"profile", "--help"}, {"completion", "--help"}} {
		code, out, errOut := runCLI(t, args...)
		if code != exitOK || !strings.Contains(out+errOut, "xample") {
			t.Errorf("%s: code %d, no examples:\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
	}
}

// TestCompletionScriptsParseAndOfferEveryCommand checks each shell's script
// with that shell, and runs the bash one for the command list and a
// firewall flag.
func TestCompletionScriptsParseAndOfferEveryCommand(t *testing.T) {
	for _, tc := range []struct{ shell, check string }{{"bash", "-n"}, {"zsh", "-n"}, {"fish", "--no-execute"}} {
		t.Run(tc.shell, func(t *testing.T) {
			sh, err := exec.LookPath(tc.shell)
			if err != nil {
				t.Skipf("%s is not installed (scripts/deps.sh installs it)", tc.shell)
			}
			code, script, errOut := runCLI(t, "completion", tc.shell)
			if code != exitOK {
				t.Fatalf("completion %s: code %d %s", tc.shell, code, errOut)
			}
			p := writeFile(t, "egressd."+tc.shell, script)
			if out, err := exec.Command(sh, tc.check, p).CombinedOutput(); err != nil {
				t.Fatalf("%s %s: %v\n%s", tc.shell, tc.check, err, out)
			}
			if tc.shell != "bash" {
				return
			}
			for line, want := range map[string]string{
				"egressd ''":                      "check completion firewall health policy profile serve validate version",
				"egressd policy ''":               "import suggest",
				"egressd policy import --from ''": "agentkernel isol8 sandbox-runtime smokescreen",
				"egressd firewall install --mo":   "--mode",
				"egressd firewall ''":             "install remove verify",
				"egressd serve --log-format ''":   "json text",
				"egressd profile show st":         "standard strict",
				"egressd check --floor off":       "offline",
				"egressd completion ''":           "bash fish zsh",
				"egressd firewall remove --":      "--netns",
				"egressd firewall verify --dry-":  "",
			} {
				prog := `source "$1"; eval "COMP_WORDS=($2)"; COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _egressd; printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' '`
				out, err := exec.Command(sh, "-c", prog, "bash", p, line).CombinedOutput()
				if err != nil {
					t.Fatalf("%s: %v\n%s", line, err, out)
				}
				if got := strings.TrimSpace(string(out)); got != want {
					t.Errorf("%s: offered %q, want %q", line, got, want)
				}
			}
		})
	}
	if code, _, _ := runCLI(t, "completion", "tcsh"); code != exitUsage {
		t.Errorf("completion tcsh: code %d, want %d", code, exitUsage)
	}
}

// TestHealthAsksTheAdminEndpoint serves the real admin handler on a unix
// socket and probes it as a HEALTHCHECK would.
func TestHealthAsksTheAdminEndpoint(t *testing.T) {
	dir, err := os.MkdirTemp("", "egh-") // short: sun_path holds 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "admin.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var ready atomic.Bool
	srv := &http.Server{Handler: admin.Handler(admin.Handlers{Ready: ready.Load})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	if code, out, errOut := runCLI(t, "health", "--admin", "unix:"+sock); code != exitOK || out != "ok\n" {
		t.Errorf("health: code %d out %q err %q", code, out, errOut)
	}
	if code, _, errOut := runCLI(t, "health", "--admin", "unix:"+sock, "--ready"); code != exitFail || !strings.Contains(errOut, "503") {
		t.Errorf("health --ready before ready: code %d err %q; want %d and the 503", code, errOut, exitFail)
	}
	ready.Store(true)
	if code, _, errOut := runCLI(t, "health", "--admin", "unix:"+sock, "--ready"); code != exitOK {
		t.Errorf("health --ready when ready: code %d err %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "health", "--admin", "unix:"+filepath.Join(dir, "none.sock")); code != exitFail || errOut == "" {
		t.Errorf("health without egressd: code %d err %q; want %d and why", code, errOut, exitFail)
	}
	if code, _, _ := runCLI(t, "health"); code != exitUsage {
		t.Errorf("health without --admin: code %d, want %d", code, exitUsage)
	}
}

// breadthRules are allow rules of every breadth class (policy/breadth.go),
// the list first, with what the floor and the warnings say they
// match.
var breadthRules = []struct{ rule, matches string }{
	{"**.", "matches every name"},
	{"?**", "matches every name"},
	{"*.*", "matches every name of 2 labels"},
	{"*.*.*", "matches every name of 3 labels"},
	{"*.com", "matches every name under the public suffix com"},
	{".com", "matches every name under the public suffix com"},
	{"**.com", "matches every name under the public suffix com"},
	{"*.co.uk", "matches every name under the public suffix co.uk"},
	{"foo*.com", "matches names of different registrants under the public suffix com (fooa.com, foob.com)"},
	{"*.github.io", "matches every name under the public suffix github.io"},
	{"*.s3.amazonaws.com", "matches every name under the public suffix s3.amazonaws.com"},
	{"api.*", "matches names of more than one registrable domain (api.com, api.net)"},
	{"0.0.0.0/0", "matches every IPv4 address"},
	{"169.254.169.254", "lifts the address guard for metadata 169.254.169.254/32"},
}

// TestValidateAndCheckWarnAboutEveryBreadthClass: validate and check warn
// about each broad allow rule with its position and what it matches, and
// still accept the file (exit 0) when no floor is asked for.
func TestValidateAndCheckWarnAboutEveryBreadthClass(t *testing.T) {
	var b strings.Builder
	b.WriteString("version = 1\nprofile = \"strict\"\n[network]\nallow = [\n")
	for _, r := range breadthRules {
		fmt.Fprintf(&b, "  %q,\n", r.rule)
	}
	b.WriteString("  \"pypi.org\",\n]\n")
	pol := writeFile(t, "policy.toml", b.String())
	code, out, errOut := runCLI(t, "validate", pol)
	if code != exitOK || !strings.Contains(out, "ok") {
		t.Fatalf("validate: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, checkErr := runCLI(t, "check", "--policy", pol, "pypi.org")
	if code != exitOK {
		t.Fatalf("check: code %d, stderr %q", code, checkErr)
	}
	for i, r := range breadthRules {
		want := fmt.Sprintf("%s:%d:3: warning: network.allow %q %s", pol, 5+i, r.rule, r.matches)
		for cmd, stderr := range map[string]string{"validate": errOut, "check": checkErr} {
			if !strings.Contains(stderr, want) {
				t.Errorf("%s does not warn %q:\n%s", cmd, want, stderr)
			}
		}
	}
	if strings.Contains(errOut, "pypi.org") {
		t.Errorf("validate warns about the narrow rule pypi.org:\n%s", errOut)
	}
}

// TestFloorRefusesEveryBreadthClass: under --floor standard or strict,
// check refuses (exit 2) a broad --allow, naming the rule, its source and
// what it matches; --floor open accepts it; a narrow rule passes.
func TestFloorRefusesEveryBreadthClass(t *testing.T) {
	for _, floor := range []string{"standard", "strict"} {
		for _, r := range breadthRules {
			code, _, errOut := runCLI(t, "check", "--profile", "strict", "--floor", floor, "--allow", r.rule, "pypi.org")
			want := fmt.Sprintf("network.allow %q (flag:--allow) %s", r.rule, r.matches)
			if code != exitUsage || !strings.Contains(errOut, "less restrictive than the security floor "+floor) || !strings.Contains(errOut, want) {
				t.Errorf("--floor %s --allow %s: code %d, want %d and %q\n%s", floor, r.rule, code, exitUsage, want, errOut)
			}
		}
		if code, _, errOut := runCLI(t, "check", "--profile", "strict", "--floor", floor, "--allow", "*.pythonhosted.org", "files.pythonhosted.org"); code != exitOK {
			t.Errorf("--floor %s refused a narrow rule: code %d\n%s", floor, code, errOut)
		}
	}
	for _, r := range breadthRules {
		if code, _, errOut := runCLI(t, "check", "--profile", "strict", "--floor", "open", "--allow", r.rule, "pypi.org"); code != exitOK {
			t.Errorf("--floor open --allow %s: code %d\n%s", r.rule, code, errOut)
		}
	}
}

// TestCheckEscapesWhatItEchoes: a target that does not parse is shown
// escaped and capped, never as the raw bytes (a terminal escape in an audit
// log's target pasted into check must not reach the terminal).
func TestCheckEscapesWhatItEchoes(t *testing.T) {
	raw := "evil\x1b]0;pwned\x07" + strings.Repeat("a", 600) + ".test"
	code, out, stderr := runCLI(t, "check", "--profile", "strict", raw)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if strings.ContainsAny(out, "\x1b\x07") || !strings.Contains(out, `evil\x1b]0;pwned\x07`) || len(out) > 1500 {
		t.Errorf("check echoed %q", out)
	}
}

// TestServeRefusesBadLogLevelAndRuleSources: both are checked before
// anything is bound, with a message saying what is wanted.
func TestServeRefusesBadLogLevelAndRuleSources(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--log-level", "loud"}, `--log-level "loud": want debug, info, warn or error`},
		{[]string{"--log-level", "debug+2"}, `want debug, info, warn or error`},
		{[]string{"--rule-sources", filepath.Join(t.TempDir(), "missing.json")}, "--rule-sources: open"},
		{[]string{"--rule-sources", writeFile(t, "s.json", `["not", "a map"]`)}, `want a JSON object of "file:line": "source"`},
	} {
		code, _, stderr := runCLI(t, append([]string{"serve", "--dns-listen", "127.0.0.1:0"}, tc.args...)...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("serve %v: exit %d, %q; want %d and %q", tc.args, code, stderr, exitUsage, tc.want)
		}
	}
}
