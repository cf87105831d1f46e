package watch

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// runWatcher starts a watcher of paths and returns a channel that receives
// one value per onChange call.
func runWatcher(t *testing.T, paths ...string) chan struct{} {
	t.Helper()
	_, ch := startWatcher(t, 20*time.Millisecond, paths...)
	return ch
}

func startWatcher(t *testing.T, debounce time.Duration, paths ...string) (*Watcher, chan struct{}) {
	t.Helper()
	w, err := New(paths, debounce)
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
	return w, changes
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

// steadyWriter appends to path every interval until the test ends, like an
// audit log under load, and returns how many writes it made so far.
func steadyWriter(t *testing.T, path string, interval time.Duration) func() int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := f.WriteString(`{"decision":"allow"}` + "\n"); err == nil {
					n.Add(1)
				}
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done; f.Close() })
	return n.Load
}

// TestOtherFilesOfTheDirectoryAreIgnored: events of files the policy does
// not resolve through do not even start a check.
func TestOtherFilesOfTheDirectoryAreIgnored(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "policy.toml")
	write(t, p, "a")
	w, ch := startWatcher(t, 20*time.Millisecond, p)
	for i := range 20 {
		write(t, filepath.Join(dir, "audit.jsonl"), strings.Repeat("x", i))
	}
	write(t, filepath.Join(dir, "policy.toml.bak"), "b")
	if err := os.Rename(filepath.Join(dir, "policy.toml.bak"), filepath.Join(dir, "policy.old")); err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, ch, "writes to other files") // 10 debounces
	if n := w.checks.Load(); n != 0 {
		t.Errorf("%d content checks after events of other files only; want 0", n)
	}
}

// TestSteadyTrafficOnOtherFilesDoesNotDelayAReload is the starvation bug: an
// audit log in the policy's directory written more often than the debounce
// kept resetting the timer, and the reload never happened.
func TestSteadyTrafficOnOtherFilesDoesNotDelayAReload(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "policy.toml")
	write(t, p, "a")
	// A long debounce against writes every 5ms: a pause in the writer
	// long enough to let the old watcher fire is unlikely even on a loaded
	// machine, and this watcher must not need one.
	_, ch := startWatcher(t, 300*time.Millisecond, p)
	writes := steadyWriter(t, filepath.Join(dir, "audit.jsonl"), 5*time.Millisecond)
	for writes() < 10 {
		time.Sleep(5 * time.Millisecond)
	}
	write(t, p, "b")
	before := writes()
	expectChange(t, ch, "a policy write amid steady audit-log writes")
	if n := writes() - before; n < 20 {
		t.Fatalf("the audit-log writer made only %d writes until the reload: the test did not exercise steady traffic", n)
	}
}

// TestPolicyWrittenWithoutPauseStillReloads: a burst of events of the policy
// itself that never settles is read maxDelay after it began, not never.
func TestPolicyWrittenWithoutPauseStillReloads(t *testing.T) {
	p := filepath.Join(t.TempDir(), "policy.toml")
	write(t, p, "a")
	_, ch := startWatcher(t, 300*time.Millisecond, p) // maxDelay 3s
	writes := steadyWriter(t, p, 5*time.Millisecond)  // content changes with every write
	expectChange(t, ch, "a policy file written every 5ms")
	if writes() == 0 {
		t.Fatal("the writer never wrote")
	}
}

// TestSymlinkIntoAnotherDirectoryIsFollowed: the file a symlink points to
// lives in a directory of its own; an in-place write there is a change, and
// so is pointing the link elsewhere.
func TestSymlinkIntoAnotherDirectoryIsFollowed(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"conf", "real", "other"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(root, "real", "policy.toml"), "a")
	write(t, filepath.Join(root, "other", "policy.toml"), "b")
	p := filepath.Join(root, "conf", "policy.toml")
	if err := os.Symlink("../real/policy.toml", p); err != nil {
		t.Fatal(err)
	}
	w, ch := startWatcher(t, 20*time.Millisecond, p)
	write(t, filepath.Join(root, "real", "policy.toml"), "c")
	expectChange(t, ch, "an in-place write to the symlink's target")

	tmp := filepath.Join(root, "conf", ".policy.toml.new")
	if err := os.Symlink("../other/policy.toml", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, "re-pointing the symlink")
	checks := w.checks.Load()
	write(t, filepath.Join(root, "real", "policy.toml"), "d") // no longer the target
	expectQuiet(t, ch, "a write to the old target")
	write(t, filepath.Join(root, "other", "policy.toml"), "e")
	expectChange(t, ch, "an in-place write to the new target")
	if w.checks.Load() != checks+1 {
		t.Errorf("the old target's directory is still watched: %d checks, want %d", w.checks.Load(), checks+1)
	}
}

func TestResolveEntriesOfAConfigMapMount(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "..v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "..v1", "policy.toml"), "a")
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "policy.toml")
	if err := os.Symlink("..data/policy.toml", p); err != nil {
		t.Fatal(err)
	}
	want := []string{p, filepath.Join(dir, "..data"), filepath.Join(dir, "..v1", "policy.toml")}
	if got := resolveEntries(p); !slices.Equal(got, want) {
		t.Errorf("resolveEntries:\n got %q\nwant %q", got, want)
	}
	plain := filepath.Join(dir, "plain.toml")
	if got := resolveEntries(plain); !slices.Equal(got, []string{plain}) {
		t.Errorf("resolveEntries of a missing plain file: %q", got)
	}
}
