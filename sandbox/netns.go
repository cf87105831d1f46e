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

// hostNamespaces are the kernel's network namespaces (Namespaces).
type hostNamespaces struct{}

// Create makes a new network namespace bind-mounted at NetnsDir/name, with
// its loopback up and nothing else: no other link, no route. Nothing of
// the caller's namespace is visible in it.
//
// The namespace is created on a locked OS thread that is thrown away
// afterwards (the goroutine exits locked), so no other goroutine ever runs
// in it by accident.
func (hostNamespaces) Create(name string) (NetNS, error) {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return NetNS{}, fmt.Errorf("creating %s: %w", NetnsDir, err)
	}
	path := filepath.Join(NetnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return NetNS{}, fmt.Errorf("creating network namespace file: %w", err)
	}
	f.Close()
	n := NetNS{Name: name, Path: path}
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
			n.Dev, n.Ino = st.Dev, st.Ino
		}
	}
	if err != nil {
		_ = unix.Unmount(path, unix.MNT_DETACH)
		_ = os.Remove(path)
		return NetNS{}, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	return n, nil
}

// Open returns the namespace bind-mounted at NetnsDir/name; Dev and Ino
// are zero if there is none (a mount point that is not a namespace counts
// as none).
func (hostNamespaces) Open(name string) NetNS {
	n := NetNS{Name: name, Path: filepath.Join(NetnsDir, name)}
	var st unix.Stat_t
	if err := unix.Stat(n.Path, &st); err != nil {
		return n
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(n.Path, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return n
	}
	n.Dev, n.Ino = st.Dev, st.Ino
	return n
}

// Exists reports whether anything is at NetnsDir/name.
func (hostNamespaces) Exists(name string) bool {
	_, err := os.Lstat(filepath.Join(NetnsDir, name))
	return err == nil
}

// Remove kills every process still inside the namespace (there should be
// none: the container and egressd are stopped first), then unmounts and
// removes its bind mount. The kernel frees the namespace, its links and its
// netfilter tables with its last reference. Idempotent.
func (hostNamespaces) Remove(n NetNS) error {
	if n.Path == "" {
		return nil
	}
	var errs []error
	if n.Ino != 0 {
		if left := killProcsIn(n.Dev, n.Ino); len(left) > 0 {
			errs = append(errs, fmt.Errorf("processes still in network namespace %s after SIGKILL: %v", n.Name, left))
		}
	}
	if err := unix.Unmount(n.Path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmounting %s: %w", n.Path, err))
	}
	if err := os.Remove(n.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing %s: %w", n.Path, err))
	}
	return errors.Join(errs...)
}

// Pids lists the processes in the namespace n.
func (hostNamespaces) Pids(n NetNS) []int {
	if n.Ino == 0 {
		return nil
	}
	return procsIn(n.Dev, n.Ino)
}

func (hostNamespaces) Sockets(n NetNS) ([]string, error) {
	if n.Ino == 0 {
		return nil, fmt.Errorf("network namespace %s: not open", n.Path)
	}
	// /proc/PID/net is the network namespace of process PID: any process
	// in n shows n's sockets. One that ends while it is read is an error
	// (and the reset's caller tries again).
	pids := procsIn(n.Dev, n.Ino)
	if len(pids) == 0 {
		return nil, fmt.Errorf("network namespace %s: no process in it to read its sockets through", n.Path)
	}
	var out []string
	for _, f := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pids[0], f))
		if err != nil {
			return nil, fmt.Errorf("reading the sockets of %s: %w", n.Path, err)
		}
		if strings.HasPrefix(f, "tcp") {
			out = append(out, openTCPSockets(string(b))...)
		} else {
			out = append(out, queuedUDPSockets(string(b))...)
		}
	}
	return out, nil
}

// queuedUDPSockets are the sockets of a /proc/net/udp or udp6 table with
// datagrams waiting to be read, each as "udp LOCAL REMOTE queued=TX:RX":
// a query of the last tenant's still queued at egressd's DNS port would
// be answered under the next tenant's policy.
func queuedUDPSockets(table string) []string {
	var out []string
	for i, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 5 {
			continue
		}
		if _, rx, _ := strings.Cut(f[4], ":"); strings.Trim(rx, "0") != "" {
			out = append(out, "udp "+f[1]+" "+f[2]+" queued="+f[4])
		}
	}
	return out
}

// tcpListen is /proc/net/tcp's state of a listening socket.
const tcpListen = "0A"

// openTCPSockets are the sockets of a /proc/net/tcp or tcp6 table that
// are not listening, each as "STATE LOCAL REMOTE".
func openTCPSockets(table string) []string {
	var out []string
	for i, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 4 || f[3] == tcpListen {
			continue
		}
		out = append(out, f[3]+" "+f[1]+" "+f[2])
	}
	return out
}

// netnsHandle returns a netlink handle whose sockets live in the namespace
// at path.
func netnsHandle(path string) (*netlink.Handle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	return nh, nil
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
