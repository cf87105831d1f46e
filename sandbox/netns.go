package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/egressd/egressd/internal/nsthread"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where a sandbox's network namespace is bind-mounted, under
// its sandbox id (iproute2's convention, so `ip netns list` shows it).
const NetnsDir = "/run/netns"

// netNS is a named network namespace the launcher created: a bind mount of
// the namespace at NetnsDir/name keeps it alive while no process is in it.
type netNS struct {
	name, path string
	// dev and ino identify the namespace (the nsfs inode), to find the
	// processes inside it.
	dev, ino uint64
}

// createNetNS makes a new network namespace bind-mounted at NetnsDir/name,
// with its loopback up and nothing else: no other link, no route. Nothing
// of the caller's namespace is visible in it.
//
// The namespace is created on a locked OS thread that is thrown away
// afterwards (the goroutine exits locked), so no other goroutine ever runs
// in it by accident.
func createNetNS(name string) (*netNS, error) {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", NetnsDir, err)
	}
	path := filepath.Join(NetnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("creating network namespace file: %w", err)
	}
	f.Close()
	n := &netNS{name: name, path: path}
	err = nsthread.Run(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting the network namespace at %s: %w", path, err)
		}
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("netlink in the new namespace: %w", err)
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("finding lo: %w", err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bringing lo up: %w", err)
		}
		return nil
	})
	if err == nil {
		var st unix.Stat_t
		if err = unix.Stat(path, &st); err == nil {
			n.dev, n.ino = st.Dev, st.Ino
		}
	}
	if err != nil {
		_ = unix.Unmount(path, unix.MNT_DETACH)
		_ = os.Remove(path)
		return nil, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	return n, nil
}

// openNetNS returns the namespace bind-mounted at NetnsDir/name, or nil if
// there is none (a mount point that is not a namespace counts as none).
func openNetNS(name string) *netNS {
	path := filepath.Join(NetnsDir, name)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return &netNS{name: name, path: path}
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return &netNS{name: name, path: path}
	}
	return &netNS{name: name, path: path, dev: st.Dev, ino: st.Ino}
}

// do runs fn on a fresh OS thread that has entered the namespace; the
// thread is discarded afterwards. Sockets fn opens, and processes it starts,
// belong to the namespace.
func (n *netNS) do(fn func() error) error {
	return nsthread.Run(func() error {
		h, err := netns.GetFromPath(n.path)
		if err != nil {
			return fmt.Errorf("opening network namespace %s: %w", n.path, err)
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			return fmt.Errorf("entering network namespace %s: %w", n.path, err)
		}
		return fn()
	})
}

// handle returns a netlink handle whose sockets live in the namespace.
func (n *netNS) handle() (*netlink.Handle, error) {
	h, err := netns.GetFromPath(n.path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", n.path, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", n.path, err)
	}
	return nh, nil
}

// destroy kills every process still inside the namespace (there should be
// none: the container and egressd are stopped first), then unmounts and
// removes its bind mount. The kernel frees the namespace, its links and its
// netfilter tables with its last reference. Idempotent.
func (n *netNS) destroy() error {
	if n == nil || n.path == "" {
		return nil
	}
	var errs []error
	if n.ino != 0 {
		if left := killProcsIn(n.dev, n.ino); len(left) > 0 {
			errs = append(errs, fmt.Errorf("processes still in network namespace %s after SIGKILL: %v", n.name, left))
		}
	}
	if err := unix.Unmount(n.path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmounting %s: %w", n.path, err))
	}
	if err := os.Remove(n.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing %s: %w", n.path, err))
	}
	return errors.Join(errs...)
}

// procsIn lists the pids of processes whose network namespace is (dev, ino).
func procsIn(dev, ino uint64) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+e.Name()+"/ns/net", &st) != nil {
			continue // gone, or a kernel thread
		}
		if st.Ino == ino && st.Dev == dev {
			out = append(out, pid)
		}
	}
	return out
}

// killProcsIn SIGKILLs every process in the namespace, by pid, and waits up
// to a second for them to go. It returns the pids still there.
func killProcsIn(dev, ino uint64) []int {
	pids := procsIn(dev, ino)
	if len(pids) == 0 {
		return nil
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(time.Second)
	for {
		// A killed child of ours stays a zombie (still "in" the namespace as
		// far as /proc knows, though its namespace link is gone) until
		// reaped; the stat of ns/net fails for zombies, so they drop out.
		left := procsIn(dev, ino)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ProcessesInNetns returns pid → command name (comm) of every process in
// the network namespace bind-mounted at path (NetnsDir/ID for a sandbox),
// nil when there is none there. For tests and benchmarks that watch a
// sandbox from outside.
func ProcessesInNetns(path string) map[int]string {
	var ns unix.Stat_t
	if unix.Stat(path, &ns) != nil {
		return nil
	}
	out := map[int]string{}
	for _, pid := range procsIn(ns.Dev, ns.Ino) {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		out[pid] = strings.TrimSpace(string(comm))
	}
	return out
}
