package watch

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// runWatcher starts w and returns a channel that receives one value per
// onChange call.
func runWatcher(t *testing.T, paths ...string) chan struct{} {
	t.Helper()
	w, err := New(paths, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan struct{}, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Run(ctx, func() { changes <- struct{}{} })
	}()
	t.Cleanup(func() { cancel(); <-done })
	return changes
}

func expectChange(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("no change reported after %s", what)
	}
}

func expectQuiet(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("change reported after %s, which changed no content", what)
	case <-time.After(200 * time.Millisecond):
	}
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInPlaceWriteIsSeen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "policy.toml")
	write(t, p, "a")
	ch := runWatcher(t, p)
	write(t, p, "b")
	expectChange(t, ch, "in-place write")
	write(t, p, "b")
	expectQuiet(t, ch, "rewriting the same content")
}

func TestEditorWriteAndRenameIsSeen(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "policy.toml")
	write(t, p, "a")
	ch := runWatcher(t, p)
	tmp := filepath.Join(dir, ".policy.toml.swp")
	write(t, tmp, "b")
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, "write-and-rename")
	// A second rename proves the watch survived the first one.
	write(t, tmp, "c")
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, "second write-and-rename")
}

// TestConfigMapSymlinkSwapIsSeen reproduces the layout kubelet uses:
// policy.toml -> ..data/policy.toml, ..data -> ..2026_v1, swapped atomically
// by renaming a new ..data_tmp symlink over ..data.
func TestConfigMapSymlinkSwapIsSeen(t *testing.T) {
	dir := t.TempDir()
	for v, content := range map[string]string{"..v1": "a", "..v2": "b"} {
		if err := os.Mkdir(filepath.Join(dir, v), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, v, "policy.toml"), content)
	}
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "policy.toml")
	if err := os.Symlink("..data/policy.toml", p); err != nil {
		t.Fatal(err)
	}
	ch := runWatcher(t, p)
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, "ConfigMap symlink swap")
}

func TestRemovedFileIsAChange(t *testing.T) {
	p := filepath.Join(t.TempDir(), "policy.toml")
	write(t, p, "a")
	ch := runWatcher(t, p)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, "removal")
	write(t, p, "a")
	expectChange(t, ch, "re-creation")
}
