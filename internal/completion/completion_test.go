package completion

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// testSpec is a small program shaped like egressd: commands, a command with
// subcommands, flags with files, fixed words and free values, and a quote in
// a description.
func testSpec() Spec {
	serve := flag.NewFlagSet("serve", flag.ContinueOnError)
	serve.String("policy", "", "policy `FILE` (repeatable)")
	serve.String("profile", "", "built-in `profile`")
	serve.String("dns-listen", "", "resolver `ADDR`")
	serve.Bool("json", false, "print JSON, don't [guess]: really")
	install := flag.NewFlagSet("install", flag.ContinueOnError)
	install.String("mode", "filtered", "network `MODE`")
	install.Uint("dns-port", 53, "resolver `PORT`")
	return Spec{
		Program: "prog",
		Flags:   []Flag{{Name: "version", Usage: "print the version"}},
		Commands: []Command{
			{Name: "serve", Summary: "run it", Flags: FromFlagSet(serve, map[string][]string{"profile": {"open", "strict"}})},
			{Name: "validate", Summary: "check files", Args: Args{Files: true}},
			{Name: "firewall", Summary: "the firewall's", Subcommands: []Command{
				{Name: "install", Summary: "put it in", Flags: FromFlagSet(install, map[string][]string{"mode": {"filtered", "none"}})},
				{Name: "remove", Summary: "take it out"},
			}},
			{Name: "completion", Summary: "print a script", Args: Args{Words: Shells}},
		},
	}
}

func script(t *testing.T, shell string) string {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, shell, testSpec()); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "prog."+shell)
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func needShell(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (scripts/deps.sh installs it)", name)
	}
	return p
}

func TestFromFlagSetKnowsBoolsFilesWordsAndDefaults(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Bool("json", false, "JSON")
	fs.String("policy", "", "policy `FILE`")
	fs.String("egressd", "", "binary `PATH`")
	fs.String("log-format", "text", "`text|json`")
	got := FromFlagSet(fs, map[string][]string{"log-format": {"text", "json"}})
	want := []Flag{
		{Name: "egressd", Usage: "binary PATH", Value: true, Files: true, Placeholder: "PATH"},
		{Name: "json", Usage: "JSON"},
		{Name: "log-format", Usage: "text|json", Value: true, Words: []string{"text", "json"}, Placeholder: "text|json", Default: "text"},
		{Name: "policy", Usage: "policy FILE", Value: true, Files: true, Placeholder: "FILE"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestBashCompletes runs the generated function the way bash's completion
// does (COMP_WORDS, COMP_CWORD) and compares what it offers.
func TestBashCompletes(t *testing.T) {
	bash := needShell(t, "bash")
	p := script(t, "bash")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.toml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		line string // words typed; the last is the one being completed
		want []string
	}{
		{"prog ''", []string{"completion", "firewall", "serve", "validate"}},
		{"prog se", []string{"serve"}},
		{"prog --", []string{"--version"}},
		{"prog serve --p", []string{"--policy", "--profile"}},
		{"prog serve --profile ''", []string{"open", "strict"}},
		{"prog serve --policy po", []string{"policy.toml"}},
		{"prog serve --dns-listen ''", nil},
		{"prog firewall ''", []string{"install", "remove"}},
		{"prog firewall install --mode n", []string{"none"}},
		{"prog firewall install --", []string{"--dns-port", "--mode"}},
		{"prog firewall remove --", nil},
		{"prog completion ''", []string{"bash", "fish", "zsh"}},
		{"prog validate po", []string{"policy.toml"}},
	} {
		t.Run(tc.line, func(t *testing.T) {
			prog := `source "$1"; eval "COMP_WORDS=($2)"; COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _prog; printf '%s\n' "${COMPREPLY[@]}"`
			cmd := exec.Command(bash, "-c", prog, "bash", p, tc.line)
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("bash: %v\n%s", err, out)
			}
			var got []string
			got = append(got, strings.Fields(string(out))...)
			slices.Sort(got)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestFishCompletes asks fish itself (complete -C) what it would offer.
func TestFishCompletes(t *testing.T) {
	fish := needShell(t, "fish")
	p := script(t, "fish")
	for _, tc := range []struct {
		line string
		want []string
	}{
		{"prog ", []string{"completion", "firewall", "serve", "validate"}},
		{"prog firewall ", []string{"install", "remove"}},
		{"prog firewall install --mode ", []string{"filtered", "none"}},
		{"prog firewall install --d", []string{"--dns-port"}},
		{"prog serve --j", []string{"--json"}},
		{"prog completion ", []string{"bash", "fish", "zsh"}},
	} {
		t.Run(tc.line, func(t *testing.T) {
			cmd := exec.Command(fish, "--no-config", "-c", `source $argv[1]; complete -C $argv[2]`, p, tc.line)
			cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "XDG_CONFIG_HOME="+t.TempDir(), "XDG_DATA_HOME="+t.TempDir())
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("fish: %v\n%s", err, out)
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if w, _, _ := strings.Cut(l, "\t"); w != "" {
					got = append(got, w)
				}
			}
			slices.Sort(got)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestScriptsParse checks every script's syntax with its own shell.
func TestScriptsParse(t *testing.T) {
	for _, tc := range []struct{ shell, flag string }{{"bash", "-n"}, {"zsh", "-n"}, {"fish", "--no-execute"}} {
		t.Run(tc.shell, func(t *testing.T) {
			sh := needShell(t, tc.shell)
			if out, err := exec.Command(sh, tc.flag, script(t, tc.shell)).CombinedOutput(); err != nil {
				t.Fatalf("%s %s: %v\n%s", tc.shell, tc.flag, err, out)
			}
		})
	}
}

// TestZshLoadsAndRegisters loads the script into an interactive-like zsh
// with compinit and checks the function is bound to the program.
func TestZshLoadsAndRegisters(t *testing.T) {
	zsh := needShell(t, "zsh")
	p := script(t, "zsh")
	home := t.TempDir()
	cmd := exec.Command(zsh, "-f", "-c", `autoload -U compinit && compinit -u -d "$HOME/.zcompdump" && source "$1" && print -r -- ${_comps[prog]}`, "zsh", p)
	cmd.Env = append(os.Environ(), "HOME="+home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("zsh: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "_prog" {
		t.Errorf("zsh binds prog to %q, want _prog", got)
	}
}

func TestUnknownShellIsAnError(t *testing.T) {
	err := Write(&bytes.Buffer{}, "powershell", testSpec())
	if err == nil || !strings.Contains(err.Error(), "bash, zsh, fish") {
		t.Errorf("err = %v, want the list of shells", err)
	}
}
