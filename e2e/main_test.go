// Package e2e runs egressd as a real process inside a sandbox network
// namespace of the fake internet (e2e/fakenet), behind the real firewall, and
// attacks it from inside the sandbox with ordinary tools (curl, dig, openssl,
// python3). Every verdict is scored at the application layer (THREATS T4):
// what the fake servers logged and answered, never a bare TCP connect.
//
// Root only; as any other user every test skips.
package e2e

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"testing"

	"github.com/egressd/egressd/e2e/fakenet"
	"github.com/egressd/egressd/internal/privtest"
)

var (
	// egressdBin is the egressd binary built once for the whole suite.
	egressdBin string
	// pythonBin is a python3 interpreter by absolute path (see findPython),
	// so clients inside the sandbox start fast and need no PATH.
	pythonBin string
)

func TestMain(m *testing.M) {
	flag.Parse()
	if !privtest.Enabled() {
		// Every test skips (fakenet.RequireRoot); nothing to build or check.
		os.Exit(m.Run())
	}
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	_ = fakenet.RemoveStale() // what a killed earlier run left behind

	before, err := rootRuleset()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: reading the root namespace's rules:", err)
		return 1
	}

	dir, err := os.MkdirTemp("", "egressd-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	egressdBin = filepath.Join(dir, "egressd")
	build := exec.Command("go", "build", "-o", egressdBin, "github.com/egressd/egressd/cmd/egressd")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building egressd: %v\n%s", err, out)
		return 1
	}
	if pythonBin, err = findPython(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}

	code := m.Run()

	if left := fakenet.LeftOvers(); len(left) > 0 {
		fmt.Fprintln(os.Stderr, "e2e: left behind:", left)
		code = 1
	}
	after, err := rootRuleset()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: reading the root namespace's rules:", err)
		code = 1
	} else if after != before {
		fmt.Fprintf(os.Stderr, "e2e: the root namespace's iptables rules changed during the suite\nbefore:\n%s\nafter:\n%s", before, after)
		code = 1
	}
	return code
}

// rootRuleset is iptables-save and ip6tables-save of the caller's namespace,
// without the comment lines (they carry timestamps) and packet counters.
func rootRuleset() (string, error) {
	var b strings.Builder
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(tool).Output()
		if err != nil {
			return "", fmt.Errorf("%s: %w", tool, err)
		}
		for _, line := range bytes.Split(out, []byte("\n")) {
			if len(line) == 0 || line[0] == '#' {
				continue
			}
			if line[0] == ':' { // ":CHAIN POLICY [packets:bytes]"
				if i := bytes.LastIndexByte(line, '['); i > 0 {
					line = line[:i]
				}
			}
			b.WriteString(tool + " " + string(line) + "\n")
		}
	}
	return b.String(), nil
}

// findPython returns the path of a python3 interpreter every user can run:
// the system's if there is one, else the one on PATH (following a pyenv
// shim to the interpreter it runs). Clients inside a container running as
// a non-root user need the former; a pyenv under /root is not theirs.
func findPython() (string, error) {
	for _, p := range []string{"/usr/bin/python3", "/usr/local/bin/python3"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o001 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath("python3")
	if err != nil {
		return "", fmt.Errorf("python3 is required: %w", err)
	}
	out, err := exec.Command(p, "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		return "", fmt.Errorf("running %s: %w", p, err)
	}
	if real := strings.TrimSpace(string(out)); real != "" {
		return real, nil
	}
	return p, nil
}
