package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egressd/egressd/policy"
)

// TestExamplesValidate: every policy in examples/ passes `egressd
// validate` without a warning, and allows what it says it is for and
// nothing else.
func TestExamplesValidate(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct{ allow, deny []string }{
		"python.toml":   {allow: []string{"pypi.org", "files.pythonhosted.org:443"}, deny: []string{"registry.npmjs.org", "github.com", "169.254.169.254:80"}},
		"node.toml":     {allow: []string{"registry.npmjs.org", "registry.yarnpkg.com"}, deny: []string{"pypi.org", "evil.example"}},
		"go.toml":       {allow: []string{"proxy.golang.org", "sum.golang.org"}, deny: []string{"github.com", "pypi.org"}},
		"rust.toml":     {allow: []string{"index.crates.io", "static.crates.io", "static.rust-lang.org"}, deny: []string{"github.com", "pypi.org"}},
		"ai-agent.toml": {allow: []string{"api.anthropic.com", "api.openai.com", "api.github.com"}, deny: []string{"github.com:22", "pypi.org", "169.254.169.254:80", "10.0.0.1"}},
		"offline.toml":  {deny: []string{"pypi.org", "api.anthropic.com", "1.1.1.1"}},
	}
	seen := map[string]bool{}
	for _, f := range files {
		base := filepath.Base(f)
		seen[base] = true
		code, out, errOut := runCLI(t, "validate", f)
		if code != exitOK || errOut != "" || !strings.Contains(out, ": ok") {
			t.Errorf("validate %s: code %d, stdout %q, stderr %q (want ok and no warning)", base, code, out, errOut)
		}
		c, ok := cases[base]
		if !ok {
			t.Errorf("%s has no case in this test: say what it allows and denies", base)
			continue
		}
		prof, _, err := policy.Resolve(policy.ResolveOptions{Files: []string{f}})
		if err != nil {
			t.Fatal(err)
		}
		m, err := policy.NewMatcher(prof.NetworkPolicy())
		if err != nil {
			t.Fatal(err)
		}
		for _, target := range c.allow {
			if r := checkTarget(m, target); r.Decision != "allow" {
				t.Errorf("%s: %s is %s (%s), want allow", base, target, r.Decision, r.Reason)
			}
		}
		for _, target := range c.deny {
			if r := checkTarget(m, target); r.Decision != "deny" {
				t.Errorf("%s: %s is allowed by %s, want deny", base, target, r.Rule)
			}
		}
	}
	for name := range cases {
		if !seen[name] {
			t.Errorf("examples/%s is missing", name)
		}
	}
}

func TestPolicyImportCLI(t *testing.T) {
	exact := writeFile(t, "isol8.json", `{"defaults": {"network": "filtered"}, "network": {"whitelist": ["^api\\.github\\.com$"], "blacklist": [".*\\.internal$"]}}`)
	code, out, errOut := runCLI(t, "policy", "import", "--from", "isol8", exact)
	if code != exitOK {
		t.Fatalf("exact import: code %d, stderr %q", code, errOut)
	}
	pol := writeFile(t, "imported.toml", out)
	if c, _, e := runCLI(t, "validate", pol); c != exitOK {
		t.Errorf("the imported policy fails validate: %s\n%s", e, out)
	}
	if !strings.Contains(out, `"api.github.com", # network.whitelist[0]`) || !strings.Contains(out, `"*.internal"`) {
		t.Errorf("imported policy lacks the translated rules:\n%s", out)
	}

	// A blacklist entry that cannot be expressed: the policy is printed,
	// the warning says BROADER, the exit status is 1.
	broader := writeFile(t, "isol8.json", `{"defaults": {"network": "filtered"}, "network": {"blacklist": ["ev[il]l"]}}`)
	code, out, errOut = runCLI(t, "policy", "import", "--from", "isol8", broader)
	if code != exitFail || !strings.Contains(errOut, "BROADER") || !strings.Contains(out, "WARNING: this policy may allow what the source denied") {
		t.Errorf("broader import: code %d, stdout %q, stderr %q", code, out, errOut)
	}

	for _, args := range [][]string{
		{"policy", "import", exact},                                  // no --from
		{"policy", "import", "--from", "isol8"},                      // no file
		{"policy", "import", "--from", "nosuch", exact},              // unknown format
		{"policy", "import", "--from", "isol8", "/nonexistent.json"}, // unreadable
		{"policy", "import", "--from", "agentkernel", exact},         // JSON is not TOML
		{"policy", "import", "--from", "isol8", "--service", "x", exact},
		{"policy"}, {"policy", "frobnicate"},
	} {
		if code, _, _ := runCLI(t, args...); code != exitUsage {
			t.Errorf("%q: code %d, want %d", args, code, exitUsage)
		}
	}
}

func TestPolicySuggestCLI(t *testing.T) {
	log := writeFile(t, "audit.log", strings.Join([]string{
		`{"kind":"dns","target":"api.example.com","port":53,"decision":"deny","reason":"no-allow-rule"}`,
		`{"kind":"connect","target":"files.example.com","port":8443,"decision":"deny","reason":"no-allow-rule"}`,
		`{"kind":"tls","target":"cdn.example.com","port":443,"decision":"would-deny","reason":"no-allow-rule"}`,
		`{"kind":"dns","target":"x.evil.test","port":53,"decision":"deny","reason":"blocked-by","rule":"*.evil.test"}`,
	}, "\n")+"\n")
	code, out, errOut := runCLI(t, "policy", "suggest", log)
	if code != exitOK {
		t.Fatalf("suggest: code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{`"api.example.com",`, `"files.example.com:8443",`, `"cdn.example.com",`} {
		if !strings.Contains(out, want) {
			t.Errorf("suggestion lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "evil.test") || !strings.Contains(errOut, `reason "blocked-by" left out`) {
		t.Errorf("a blocked-by denial was suggested or not reported:\nstdout %s\nstderr %s", out, errOut)
	}
	pol := writeFile(t, "suggested.toml", out)
	if c, _, e := runCLI(t, "validate", pol); c != exitOK {
		t.Errorf("the suggested policy fails validate: %s\n%s", e, out)
	}

	code, out, _ = runCLI(t, "policy", "suggest", "--collapse", "2", "--profile", "restrictive", log)
	if code != exitOK || !strings.Contains(out, `"*.example.com",`) || !strings.Contains(out, `profile = "offline"`) {
		t.Errorf("--collapse 2 --profile restrictive: code %d\n%s", code, out)
	}

	bad := writeFile(t, "bad.log", "garbage\n"+`{"kind":"dns","target":"ok.example.org","port":53,"decision":"deny","reason":"no-allow-rule"}`+"\n")
	code, out, errOut = runCLI(t, "policy", "suggest", bad)
	if code != exitFail || !strings.Contains(errOut, "bad.log:1: ") || !strings.Contains(out, `"ok.example.org",`) {
		t.Errorf("bad line: code %d, stdout %q, stderr %q", code, out, errOut)
	}

	for _, args := range [][]string{
		{"policy", "suggest"},
		{"policy", "suggest", "--collapse", "1", log},
		{"policy", "suggest", "--profile", "lax", log},
		{"policy", "suggest", filepath.Join(t.TempDir(), "missing.log")},
	} {
		if code, _, _ := runCLI(t, args...); code != exitUsage {
			t.Errorf("%q: code %d, want %d", args, code, exitUsage)
		}
	}
}

// TestPolicySuggestStdin reads the audit log from standard input ("-").
func TestPolicySuggestStdin(t *testing.T) {
	log := writeFile(t, "audit.log", `{"kind":"tls","target":"stdin.example.org","port":443,"decision":"deny","reason":"no-allow-rule"}`+"\n")
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := os.Stdin
	os.Stdin = f
	defer func() { os.Stdin = old }()
	code, out, errOut := runCLI(t, "policy", "suggest", "-")
	if code != exitOK || !strings.Contains(out, `"stdin.example.org",`) || !strings.Contains(out, `from "stdin"`) {
		t.Errorf("suggest -: code %d, stdout %q, stderr %q", code, out, errOut)
	}
}
