package sandbox

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine one of them started
// is still running after the last one ended: every goroutine has an owner
// and an end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
