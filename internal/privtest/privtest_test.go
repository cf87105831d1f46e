package privtest

import (
	"os"
	"testing"
)

// TestRequireSkipsWithoutTheSwitch: without the switch a privileged test
// is skipped even as root, and Enabled agrees with Require.
func TestRequireSkipsWithoutTheSwitch(t *testing.T) {
	t.Setenv(Env, "")
	ran := false
	t.Run("gated", func(t *testing.T) {
		Require(t, "test")
		ran = true
	})
	if ran || Enabled() {
		t.Errorf("ran %v, Enabled %v without %s", ran, Enabled(), Env)
	}
	t.Setenv(Env, "1")
	ran = false
	t.Run("switched", func(t *testing.T) {
		Require(t, "test")
		ran = true
	})
	if want := os.Geteuid() == 0; ran != want || Enabled() != want {
		t.Errorf("with %s=1 as uid %d: ran %v, Enabled %v", Env, os.Geteuid(), ran, Enabled())
	}
}
