package specconv

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/egressd/egressd/policy"
)

// resolveWith resolves a profile from a policy file body and flags.
func resolveWith(t *testing.T, profile, file string, overrides ...policy.Setting) *policy.Profile {
	t.Helper()
	var files []string
	if file != "" {
		path := filepath.Join(t.TempDir(), "tenant.toml")
		if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, path)
	}
	p, _, err := policy.Resolve(policy.ResolveOptions{Profile: profile, Files: files, Overrides: overrides})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
