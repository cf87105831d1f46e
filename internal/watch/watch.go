// Package watch reports when any of a set of files may have changed. It
// watches the files' parent directories, not the files, so it keeps working
// when an editor writes a new file and renames it over the old one, and when
// Kubernetes swaps a ConfigMap's `..data` symlink: both replace the directory
// entry, which a watch on the old inode would never see.
package watch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watcher calls back when the content of a watched file changes.
type Watcher struct {
	paths    []string
	debounce time.Duration
	fsw      *fsnotify.Watcher
	last     []byte
}

// New watches paths. debounce is how long to wait for a burst of events to
// settle before reading the files (zero means 100ms).
func New(paths []string, debounce time.Duration) (*Watcher, error) {
	if debounce <= 0 {
		debounce = 100 * time.Millisecond
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("creating file watcher: %w", err)
	}
	dirs := map[string]bool{}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			fsw.Close()
			return nil, fmt.Errorf("watching %s: %w", p, err)
		}
		d := filepath.Dir(abs)
		if dirs[d] {
			continue
		}
		dirs[d] = true
		if err := fsw.Add(d); err != nil {
			fsw.Close()
			return nil, fmt.Errorf("watching directory %s of %s: %w", d, p, err)
		}
	}
	w := &Watcher{paths: paths, debounce: debounce, fsw: fsw}
	w.last = w.fingerprint()
	return w, nil
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
	var timer *time.Timer
	var fire <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case _, ok := <-w.fsw.Events:
			if !ok {
				return nil
			}
			if timer == nil {
				timer = time.NewTimer(w.debounce)
			} else {
				timer.Reset(w.debounce)
			}
			fire = timer.C
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return nil
			}
			return fmt.Errorf("watching policy files: %w", err)
		case <-fire:
			fire = nil
			fp := w.fingerprint()
			if !bytes.Equal(fp, w.last) {
				w.last = fp
				onChange()
			}
		}
	}
}
