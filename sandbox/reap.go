package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/policy"
)

// newDirGrace is how old a ".new-ID" directory must be before Reap takes
// it for abandoned (its launcher died between making and locking it).
const newDirGrace = time.Minute

// Reap removes every sandbox under stateDir ("" means DefaultStateDir)
// whose launcher is gone, on the host's kernel (Kernel.Reap).
func Reap(stateDir string) (reaped []string, err error) {
	return HostKernel().Reap(stateDir)
}

// Reap removes every sandbox under stateDir ("" means DefaultStateDir)
// whose launcher is gone: one whose state directory's lock nobody holds
// (a launcher holds it for the sandbox's whole life; the kernel drops it
// when the process dies, however it dies). Each is torn down the way Close
// does it: container deleted, every process in its namespace killed, veth
// and uplink chains removed (when they are in the caller's network
// namespace, where that launcher made them), mounts undone, directory
// removed. It returns the ids it removed. Sandboxes of running launchers
// are never touched.
func (k *Kernel) Reap(stateDir string) (reaped []string, err error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	ents, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reaping stale sandboxes: %w", err)
	}
	self := selfNetNS()
	var errs []error
	for _, e := range ents {
		s := k.orphan(stateDir, e, self)
		if s == nil {
			continue
		}
		if err := s.Close(); err != nil {
			errs = append(errs, fmt.Errorf("reaping sandbox %s: %w", s.id, err))
		}
		reaped = append(reaped, s.id)
	}
	return reaped, errors.Join(errs...)
}

// orphan returns the sandbox of state directory entry e if its launcher is
// gone (its lock is then held by the caller), ready for Close; nil if the
// entry is no sandbox's, its launcher lives, or its uplink lives in
// another network namespace than self (the caller's).
func (k *Kernel) orphan(stateDir string, e os.DirEntry, self string) *Sandbox {
	name := e.Name()
	fresh := strings.HasPrefix(name, ".new-")
	id := strings.TrimPrefix(name, ".new-")
	if !e.IsDir() || !validID(id) {
		return nil
	}
	dir := filepath.Join(stateDir, name)
	if fresh {
		if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < newDirGrace {
			return nil
		}
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR, 0)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if lock != nil {
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			lock.Close()
			return nil // its launcher is alive
		}
	} else if !fresh {
		return nil // no lock at all: not ours to judge
	}
	s := &Sandbox{k: k, id: id, dir: dir, lock: lock, cfg: Config{StateDir: stateDir}, egStopping: make(chan struct{})}
	var rec stateRecord
	data, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil || json.Unmarshal(data, &rec) != nil || rec.ID != id {
		return s // no record: only the directory to remove
	}
	if rec.Mode.Proxied() && rec.LauncherNetNS != "" && rec.LauncherNetNS != self {
		// Its uplink and NAT rules live in another network namespace,
		// which only a launcher there can remove: leave the whole sandbox
		// to it rather than half-reap it.
		if lock != nil {
			lock.Close()
		}
		return nil
	}
	s.mode = rec.Mode
	if rec.Runtime != "" {
		s.rt = &Runtime{Name: filepath.Base(rec.Runtime), Path: rec.Runtime, Root: rec.RuntimeRoot}
		s.container.Store(true)
	}
	if rec.Mode != policy.ModeHost {
		s.ns = k.Netns.Open(id)
	}
	if rec.Mode.Proxied() {
		s.up = &uplink{plan: planUplink(id, netip.Prefix{})}
	}
	return s
}
