package fakenet

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LeftOvers lists what fakenet created and nobody removed, as "netns NAME" and "link NAME":
//
//   - network namespaces in /run/netns named by UniqueName ("egt-<kind>-<pid>-<random>") whose
//     pid is this process's, or a process's that no longer runs (a test binary killed before
//     its cleanups ran);
//   - sandbox veth ends ("egt-s<N>") in the caller's own network namespace (they only ever
//     exist inside a world, so one here is a bug).
//
// Namespaces of other running processes (test packages running in parallel) are not listed,
// nor are names that do not follow UniqueName's pattern (other tools' namespaces).
// A suite asserts a clean machine at its end with:
//
//	if left := fakenet.LeftOvers(); len(left) > 0 { t.Errorf("left behind: %v", left) }
func LeftOvers() []string {
	var out []string
	ents, _ := os.ReadDir(NetnsDir)
	for _, e := range ents {
		pid, ok := ownerPid(e.Name())
		if !ok || (pid != os.Getpid() && processAlive(pid)) {
			continue
		}
		out = append(out, "netns "+e.Name())
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if n := l.Attrs().Name; isWorldLinkName(n) {
			out = append(out, "link "+n)
		}
	}
	return out
}

// UniqueName returns a network namespace name "egt-<kind>-<pid>-<random>" (kind "w" for
// worlds, "s" for sandboxes). Another e2e package that makes namespaces of its own can use it,
// so that LeftOvers and RemoveStale cover those too. kind must be non-empty, without '-'.
func UniqueName(kind string) string {
	if kind == "" || strings.Contains(kind, "-") {
		panic(fmt.Sprintf("fakenet.UniqueName(%q): kind must be non-empty and without '-'", kind))
	}
	return fmt.Sprintf("%s%s-%d-%s", Prefix, kind, os.Getpid(), randomHex(3))
}

func isWorldLinkName(n string) bool {
	rest, ok := strings.CutPrefix(n, Prefix+"s")
	if !ok || rest == "" {
		return false
	}
	_, err := strconv.ParseUint(rest, 10, 8)
	return err == nil
}

// RemoveStale removes the namespaces that earlier, dead test processes left in /run/netns
// (their servers and sandboxes died with them; only the bind mounts remain). Namespaces of
// running processes, this one included, are not touched. Call it from TestMain before the
// tests, if a crashed run may have come before.
func RemoveStale() error {
	ents, err := os.ReadDir(NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		pid, ok := ownerPid(e.Name())
		if !ok || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		path := filepath.Join(NetnsDir, e.Name())
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", path, err))
			continue
		}
		if err := os.Remove(path); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", path, err))
		}
	}
	return errors.Join(errs...)
}

// ownerPid reads the pid out of a UniqueName: "egt-<kind>-<pid>-<6 hex digits>".
func ownerPid(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return 0, false
	}
	parts := strings.Split(rest, "-")
	if len(parts) != 3 || parts[0] == "" || len(parts[2]) != 6 {
		return 0, false
	}
	if _, err := hex.DecodeString(parts[2]); err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
