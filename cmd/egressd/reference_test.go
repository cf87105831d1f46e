package main

import (
	"strings"
	"testing"

	"github.com/egressd/egressd/internal/clidoc"
	"github.com/egressd/egressd/internal/golden"
)

// TestCLIReferenceIsCurrent: docs/cli/egressd.md is what the flag
// definitions make now (make docs rewrites it).
func TestCLIReferenceIsCurrent(t *testing.T) {
	var b strings.Builder
	if err := clidoc.Write(&b, completionSpec(), "make docs"); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "../../docs/cli/egressd.md", b.String())
	if t.Failed() {
		t.Log("the flags changed: run `make docs` and commit docs/cli/")
	}
}
