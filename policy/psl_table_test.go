package policy

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/policy/internal/psltree"
)

// TestPSLTableAgreesWithXNet checks psl_table.go through x/net's own API:
// each child a parent lists is a public suffix (or a parent in turn); a "*"
// child is a wildcard rule.
func TestPSLTableAgreesWithXNet(t *testing.T) {
	if len(pslParents()) < 100 || len(pslParents()["amazonaws.com"]) == 0 || isPublicSuffix("amazonaws.com") {
		t.Fatalf("pslParents holds %d parents, amazonaws.com none: regenerate with go generate ./policy", len(pslParents()))
	}
	for parent, kids := range pslParents() {
		for _, k := range kids {
			name := k + "." + parent
			if k == "*" {
				name = "egressd-probe." + parent
			}
			_, parentToo := pslParents()[name]
			if !isPublicSuffix(name) && !parentToo {
				t.Errorf("child %s of %s is neither a public suffix nor a parent", k, parent)
			}
		}
	}
}

// TestPSLTableIsCurrent decodes the x/net module go.mod names and requires
// psl_table.go to be what the generator makes of it: after updating x/net,
// run go generate ./policy.
func TestPSLTableIsCurrent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}} {{.Version}}", "golang.org/x/net").Output()
	f := strings.Fields(string(out))
	if err != nil || len(f) != 2 || f[0] == "" {
		t.Skipf("cannot locate the golang.org/x/net module source to decode its list (go list: %v, %q)", err, out)
	}
	tbl, err := psltree.Decode(filepath.Join(f[0], "publicsuffix"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "golang.org/x/net " + f[1] + ": " + tbl.Version; pslSource != want {
		t.Errorf("psl_table.go was made from %q, go.mod has %q: run go generate ./policy", pslSource, want)
	}
	if diff := cmp.Diff(tbl.Parents, pslParents()); diff != "" {
		t.Errorf("psl_table.go differs from x/net's list (-x/net +table); run go generate ./policy:\n%s", diff)
	}
}
