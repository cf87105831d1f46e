package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/sandbox/specconv"
	"golang.org/x/sys/unix"
)

// sandboxStateDir makes a sandbox state directory under stateRoot whose
// lock is held (a live sandbox) until the test ends or release is called.
func sandboxStateDir(t *testing.T, stateRoot, id string) (dir string, release func()) {
	t.Helper()
	dir = filepath.Join(stateRoot, id)
	if err := os.Mkdir(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return dir, func() { f.Close() }
}

func TestPlaceholdersAreMadeAndRemovedOnlyIfUnchanged(t *testing.T) {
	stateRoot, ws := t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(ws, ".git"), 0o755); err != nil {
		t.Fatal(err)
	}
	pps, err := specconv.PlanProtect(ws, "/w", []string{".envrc", ".idea/", ".git/commondir", ".mcp.json"}, true)
	if err != nil {
		t.Fatal(err)
	}
	// Someone makes .mcp.json between the plan and the launch: it is not
	// ours, so it stays.
	if err := os.WriteFile(filepath.Join(ws, ".mcp.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir, _ := sandboxStateDir(t, stateRoot, "egs-00000001")
	if err := acquirePlaceholders(stateRoot, dir, pps); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{".envrc": 0o444, ".idea": os.ModeDir | 0o555, ".git/commondir": 0o444} {
		fi, err := os.Lstat(filepath.Join(ws, name))
		if err != nil || fi.Mode() != want {
			t.Errorf("placeholder %s: %v %v, want mode %v", name, fi.Mode(), err, want)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(ws, ".git/commondir")); string(data) != ".\n" {
		t.Errorf(".git/commondir holds %q: git takes an empty one for an error", data)
	}
	// A placeholder that changed is reported and left.
	if err := os.Chmod(filepath.Join(ws, ".envrc"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = releasePlaceholders(stateRoot, dir)
	if err == nil || !strings.Contains(err.Error(), ".envrc\": it changed since the launch made it") {
		t.Errorf("releasePlaceholders: %v, want the changed .envrc reported", err)
	}
	for name, want := range map[string]bool{".envrc": true, ".idea": false, ".git/commondir": false, ".mcp.json": true, ".git": true} {
		if _, err := os.Lstat(filepath.Join(ws, name)); (err == nil) != want {
			t.Errorf("after release, %s exists = %v, want %v", name, err == nil, want)
		}
	}
	// Once nothing is left to report, the records go too.
	os.Remove(filepath.Join(ws, ".envrc"))
	if err := releasePlaceholders(stateRoot, dir); err != nil {
		t.Fatal(err)
	}
	if left := listNames(t, stateRoot); !slices.Equal(left, []string{"egs-00000001"}) {
		t.Errorf("the state root holds %v, want only the sandbox's directory", left)
	}
}

// TestPlaceholdersOutliveNoSandboxThatUsesThem: two sandboxes protect one
// workspace; the first to end leaves the placeholders to the other (its
// mounts are on them), the last removes them; a sandbox that died is not
// waited for.
func TestPlaceholdersOutliveNoSandboxThatUsesThem(t *testing.T) {
	stateRoot, ws := t.TempDir(), t.TempDir()
	plan := func() []specconv.ProtectedPath {
		pps, err := specconv.PlanProtect(ws, "/w", []string{".envrc", ".vscode/"}, true)
		if err != nil {
			t.Fatal(err)
		}
		return pps
	}
	a, _ := sandboxStateDir(t, stateRoot, "egs-0000000a")
	b, _ := sandboxStateDir(t, stateRoot, "egs-0000000b")
	dead, die := sandboxStateDir(t, stateRoot, "egs-0000000d")
	for _, dir := range []string{a, b, dead} {
		if err := acquirePlaceholders(stateRoot, dir, plan()); err != nil {
			t.Fatal(err)
		}
	}
	die() // its launcher was killed: it never releases
	// A launch sharing the directory with live sandboxes is told which.
	if diff := cmp.Diff(map[string][]string{ws: {"egs-0000000b"}}, sharedWith(stateRoot, a, plan())); diff != "" {
		t.Errorf("sharedWith (-want +got; the dead one is no user):\n%s", diff)
	}
	exists := func() bool {
		_, err1 := os.Lstat(filepath.Join(ws, ".envrc"))
		_, err2 := os.Lstat(filepath.Join(ws, ".vscode"))
		return err1 == nil && err2 == nil
	}
	if err := releasePlaceholders(stateRoot, a); err != nil {
		t.Fatal(err)
	}
	if !exists() {
		t.Fatal("the first sandbox to end removed placeholders another one still uses")
	}
	if err := releasePlaceholders(stateRoot, b); err != nil {
		t.Fatal(err)
	}
	if left := listNames(t, ws); len(left) != 0 {
		t.Errorf("the workspace holds %v after the last live sandbox ended", left)
	}
	// Reaping the dead one later finds nothing left to do.
	if err := releasePlaceholders(stateRoot, dead); err != nil {
		t.Fatal(err)
	}
}

func listNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestPlanMadeOnAnotherSandboxsPlaceholderIsMadeAgain: sandbox b plans
// while a's placeholders exist (read-only binds of what is there); a ends
// and removes them before b registers. b must not go on with a plan whose
// mount sources are gone (runc fails on them): acquiring says the plan no
// longer holds, and a new plan makes the placeholders b then owns.
func TestPlanMadeOnAnotherSandboxsPlaceholderIsMadeAgain(t *testing.T) {
	stateRoot, ws := t.TempDir(), t.TempDir()
	plan := func() []specconv.ProtectedPath {
		pps, err := specconv.PlanProtect(ws, "/w", []string{".envrc", ".vscode/"}, true)
		if err != nil {
			t.Fatal(err)
		}
		return pps
	}
	a, _ := sandboxStateDir(t, stateRoot, "egs-0000000a")
	b, _ := sandboxStateDir(t, stateRoot, "egs-0000000b")
	if err := acquirePlaceholders(stateRoot, a, plan()); err != nil {
		t.Fatal(err)
	}
	stale := plan() // sees a's placeholders as existing paths
	for _, pp := range stale {
		if pp.How == specconv.ProtectPlaceholder {
			t.Fatalf("planned %s as a placeholder with a's placeholder in place", pp.Path)
		}
	}
	if err := releasePlaceholders(stateRoot, a); err != nil {
		t.Fatal(err)
	}
	if err := acquirePlaceholders(stateRoot, b, stale); !errors.Is(err, errProtectedChanged) {
		t.Fatalf("acquiring a plan whose paths are gone: %v, want errProtectedChanged", err)
	}
	if err := releasePlaceholders(stateRoot, b); err != nil {
		t.Fatal(err)
	}
	if err := acquirePlaceholders(stateRoot, b, plan()); err != nil {
		t.Fatal(err)
	}
	if left := listNames(t, ws); !slices.Equal(left, []string{".envrc", ".vscode"}) {
		t.Errorf("the workspace holds %v, want b's placeholders", left)
	}
	if err := releasePlaceholders(stateRoot, b); err != nil {
		t.Fatal(err)
	}
	if left := listNames(t, ws); len(left) != 0 {
		t.Errorf("the workspace holds %v after b ended", left)
	}
}
