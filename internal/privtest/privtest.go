// Package privtest gates the tests that change the machine — network
// namespaces, iptables rules, mounts, containers — on an explicit switch:
// they run only as root and only with EGRESSD_PRIVILEGED_TESTS=1, which
// `make test` sets and `make unit` does not. So a unit run never touches the
// kernel, even as root, and a privileged run says it is one.
//
// For tests only.
package privtest

import (
	"os"
	"testing"
)

// Env is the switch: "1" runs the privileged tests (as root).
const Env = "EGRESSD_PRIVILEGED_TESTS"

// Enabled reports whether privileged tests run in this process: as root,
// with Env set to 1.
func Enabled() bool { return os.Geteuid() == 0 && os.Getenv(Env) == "1" }

// Require skips t unless privileged tests run, saying why and what the
// test needs the privilege for.
func Require(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root: %s", what)
	}
	if os.Getenv(Env) != "1" {
		t.Skipf("privileged (%s): runs with %s=1, as make test sets it", what, Env)
	}
}
