package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
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
