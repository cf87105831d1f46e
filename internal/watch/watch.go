// Package watch reports when any of a set of files may have changed.
//
// It watches directories, not the files' inodes, so it keeps working when an
// editor writes a new file and renames it over the old one, and when
// Kubernetes swaps a ConfigMap's `..data` symlink: both replace a directory
// entry, which a watch on the old inode would never see. And it reacts only
// to events of the directory entries the files resolve through — each file's
// own entry and every symlink on the way to its content (`policy.toml` →
// `..data/policy.toml` → `..2026_01_01/policy.toml`), wherever those live —
// never to the other files of those directories: an audit log written next to
// the policy at any rate must not keep a reload from happening.
//
//	event in a watched directory
//	   │
//	   ├─ not an entry a watched file resolves through ──► ignored
//	   ▼
//	re-resolve the files (symlinks may have moved), watch their directories
//	   │
//	debounce: fire once events pause for the debounce, and at the latest
//	maxDelay after the first event of the burst
//	   │
//	hash every file's content ── unchanged ──► nothing
//	   ▼
//	onChange()
package watch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// maxLinks bounds the symlinks followed while resolving one path (the
// kernel's own limit: past it, open fails with ELOOP).
const maxLinks = 40

// Watcher calls back when the content of a watched file changes.
type Watcher struct {
	paths    []string // absolute
	debounce time.Duration
	maxDelay time.Duration
	fsw      *fsnotify.Watcher
	last     []byte

	// entries are the directory entries the paths resolve through (see
	// resolveEntries); dirs the directories holding them, all watched.
	entries map[string]bool
	dirs    map[string]bool

	// checks counts content checks (a debounce that fired), for tests.
	checks atomic.Int64
}

// New watches paths. debounce is how long to wait for a burst of events to
// settle before reading the files (zero means 100ms); a burst that never
// settles is read 10 debounces after its first event. The directory of each
// path must exist.
func New(paths []string, debounce time.Duration) (*Watcher, error) {
	if debounce <= 0 {
		debounce = 100 * time.Millisecond
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("creating file watcher: %w", err)
	}
	w := &Watcher{debounce: debounce, maxDelay: 10 * debounce, fsw: fsw, dirs: map[string]bool{}}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			fsw.Close()
			return nil, fmt.Errorf("watching %s: %w", p, err)
		}
		// The file's own directory must be watchable; the directories of
		// symlink targets are watched when they exist (see track).
		if d := filepath.Dir(abs); !w.dirs[d] {
			if err := fsw.Add(d); err != nil {
				fsw.Close()
				return nil, fmt.Errorf("watching directory %s of %s: %w", d, p, err)
			}
			w.dirs[d] = true
		}
		w.paths = append(w.paths, abs)
	}
	w.track()
	w.last = w.fingerprint()
	return w, nil
}

// track resolves every path again and watches exactly the directories of
// the entries they now resolve through (a ConfigMap swap moves `..data` to a
// new directory; the old one is deleted).
func (w *Watcher) track() {
	entries := map[string]bool{}
	dirs := map[string]bool{}
	for _, p := range w.paths {
		for _, e := range resolveEntries(p) {
			entries[e] = true
			dirs[filepath.Dir(e)] = true
		}
	}
	for d := range dirs {
		if !w.dirs[d] {
			// A directory that does not exist (a dangling link) is
			// tried again at the next relevant event.
			if err := w.fsw.Add(d); err != nil {
				delete(dirs, d)
			}
		}
	}
	for d := range w.dirs {
		if !dirs[d] {
			_ = w.fsw.Remove(d) // it may be gone already
		}
	}
	w.entries, w.dirs = entries, dirs
}

// resolveEntries returns the directory entries that resolving the absolute
// path p goes through: p itself, every symlink met on the way (in any
// component), and the entry it finally resolves to. It stops at the first
// component that does not exist or cannot be read.
//
// No entry has a symlink among its directories, so watching the directories
// of the entries never watches one directory under two names.
func resolveEntries(p string) []string {
	out := []string{p}
	cur := p
	for range maxLinks {
		link, rest, ok := firstSymlink(cur)
		if !ok {
			break
		}
		if link != p {
			out = append(out, link)
		}
		target, err := os.Readlink(link)
		if err != nil {
			return out
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(link), target)
		}
		cur = filepath.Join(target, rest)
	}
	if cur != p {
		out = append(out, cur)
	}
	return out
}

// firstSymlink finds the first component of the absolute path p that is a
// symlink: link is the path up to and including it, rest what follows.
func firstSymlink(p string) (link, rest string, ok bool) {
	parts := strings.Split(strings.TrimPrefix(filepath.Clean(p), "/"), "/")
	prefix := "/"
	for i, part := range parts {
		prefix = filepath.Join(prefix, part)
		fi, err := os.Lstat(prefix)
		if err != nil {
			return "", "", false
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return prefix, filepath.Join(parts[i+1:]...), true
		}
	}
	return "", "", false
}

// fingerprint hashes the current content of every path (following symlinks);
// a missing or unreadable file contributes its error text, so its
// disappearance and return are changes too.
func (w *Watcher) fingerprint() []byte {
	h := sha256.New()
	for _, p := range w.paths {
		b, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintf(h, "%s\x00error:%v\x00", p, err)
			continue
		}
		fmt.Fprintf(h, "%s\x00%d\x00", p, len(b))
		h.Write(b)
	}
	return h.Sum(nil)
}

// Run delivers onChange after every settled burst of events that changed the
// content of a watched file, until ctx ends. It closes the watcher on return.
func (w *Watcher) Run(ctx context.Context, onChange func()) error {
	defer w.fsw.Close()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var (
		fire  <-chan time.Time
		first time.Time // first event of the pending burst
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return nil
			}
			if !w.entries[ev.Name] {
				continue
			}
			w.track()
			now := time.Now()
			if fire == nil {
				first = now
			}
			timer.Reset(min(w.debounce, first.Add(w.maxDelay).Sub(now)))
			fire = timer.C
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return nil
			}
			return fmt.Errorf("watching policy files: %w", err)
		case <-fire:
			fire = nil
			w.checks.Add(1)
			w.track()
			fp := w.fingerprint()
			if !bytes.Equal(fp, w.last) {
				w.last = fp
				onChange()
			}
		}
	}
}
