package fakenet

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/nsthread"
	"github.com/egressd/egressd/internal/privtest"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Prefix starts the name of every network namespace and interface this package creates, so a
// leak is visible in `ip netns list` and LeftOvers can find it.
const Prefix = "egt-"

// NetnsDir is where named network namespaces are bind-mounted (the iproute2 convention, so
// `ip netns exec NAME` and `nsenter --net=PATH` both work on ours).
const NetnsDir = "/run/netns"

// RunTimeout bounds a command started by Run.
const RunTimeout = 30 * time.Second

// RequireRoot skips the test unless it runs as root (the fake internet needs CAP_SYS_ADMIN and
// CAP_NET_ADMIN to create network namespaces and interfaces).
func RequireRoot(t testing.TB) {
	t.Helper()
	privtest.Require(t, "fakenet creates network namespaces and interfaces")
}

// NetNS is a named network namespace created by this package: the world and every sandbox
// embed one. Its methods run things inside the namespace; nothing else changes (mounts, pid
// namespace, root directory and user stay the caller's).
type NetNS struct {
	name   string
	path   string
	handle netns.NsHandle
	ino    uint64 // inode of the namespace, to find processes still inside it at teardown
}

// Name is the namespace's name, as `ip netns list` shows it ("egt-w-<pid>-<random>" for a
// world, "egt-s-<pid>-<random>" for a sandbox).
func (n *NetNS) Name() string { return n.name }

// Path is the namespace's bind mount, /run/netns/NAME, for `nsenter --net=PATH`, setns(2) or
// an OCI spec's network namespace path.
func (n *NetNS) Path() string { return n.path }

// Exec builds a command that runs name with args inside the namespace. It is
// `nsenter --net=PATH -- name args...`: only the network namespace changes, so the command sees
// the caller's files, mounts and cgroups (a launcher started this way can run runc). The
// command runs in its own process group, and when ctx ends the whole group is killed. The
// caller starts it and owns it: a process still inside the namespace at teardown is killed and
// reported as a test error.
func (n *NetNS) Exec(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := append([]string{"--net=" + n.path, "--", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		// nsenter execs the command, so the group leader's pid is the command's.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Run runs name with args inside the namespace and waits for it, at most RunTimeout. It returns
// what the command printed and its exit code; a command killed by a signal (the timeout
// included) has exit code -1. A command that cannot start at all fails the test. It may be
// called from a cleanup function.
func (n *NetNS) Run(t testing.TB, name string, args ...string) (stdout, stderr string, exitCode int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	cmd := n.Exec(ctx, name, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("fakenet: running %s %s in %s: %v", name, strings.Join(args, " "), n.name, err)
	}
	if ctx.Err() != nil {
		t.Logf("fakenet: %s %s in %s: killed after %s", name, strings.Join(args, " "), n.name, RunTimeout)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// Do runs fn on an OS thread that has entered the namespace, and returns fn's error. Sockets
// fn creates belong to the namespace for their whole life, and may be used from any goroutine
// afterwards. fn must create them itself, synchronously: goroutines it starts run elsewhere.
// If the thread cannot be moved back, it is never unlocked, so the Go runtime discards it.
func (n *NetNS) Do(fn func() error) error {
	if n.path == "" || !n.handle.IsOpen() {
		return fmt.Errorf("namespace %q does not exist (never created, or torn down)", n.name)
	}
	return runInNS(n.handle, fn)
}

// DialContext connects to addr from inside the namespace (the socket is made there), for
// tests that talk from a sandbox in-process: as http.Transport.DialContext, or to build a
// dns.Conn. addr should be an IP literal with a port; a name would be resolved with the
// machine's resolver configuration, from inside the namespace.
func (n *NetNS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// runInNS runs fn on a fresh OS thread that entered ns; the thread is
// destroyed afterwards, so the namespace never leaks into the process.
func runInNS(ns netns.NsHandle, fn func() error) error {
	return nsthread.Run(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("entering network namespace: %w", err)
		}
		return fn()
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b)
}

// createNetNS makes a new, empty network namespace bind-mounted at /run/netns/name. Nothing of
// the caller's namespace is visible in it: it starts with a down loopback and no routes.
func createNetNS(name string) (*NetNS, error) {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", NetnsDir, err)
	}
	path := filepath.Join(NetnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("creating namespace file: %w", err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("getting the thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		mountErr := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, "")
		if mountErr != nil {
			mountErr = fmt.Errorf("bind-mounting the namespace at %s: %w", path, mountErr)
		}
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(mountErr, fmt.Errorf("returning the thread to its network namespace: %w", err))
			return // locked: the thread is discarded
		}
		runtime.UnlockOSThread()
		errc <- mountErr
	}()
	if err := <-errc; err != nil {
		_ = unix.Unmount(path, unix.MNT_DETACH)
		_ = os.Remove(path)
		return nil, err
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		_ = unix.Unmount(path, unix.MNT_DETACH)
		_ = os.Remove(path)
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		h.Close()
		_ = unix.Unmount(path, unix.MNT_DETACH)
		_ = os.Remove(path)
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	return &NetNS{name: name, path: path, handle: h, ino: st.Ino}, nil
}

// destroy kills what still runs inside the namespace, then unmounts and removes it. The
// returned error lists leaked processes and anything that could not be removed.
func (n *NetNS) destroy() error {
	if n == nil || n.path == "" || !n.handle.IsOpen() {
		return nil
	}
	var errs []error
	if err := killProcsIn(n.ino, n.name); err != nil {
		errs = append(errs, err)
	}
	n.handle.Close()
	n.handle = netns.None()
	if err := unix.Unmount(n.path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmounting %s: %w", n.path, err))
	}
	if err := os.Remove(n.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing %s: %w", n.path, err))
	}
	if _, err := os.Lstat(n.path); err == nil {
		errs = append(errs, fmt.Errorf("%s still exists after teardown", n.path))
	}
	return errors.Join(errs...)
}

// procsIn lists the pids of processes whose network namespace has inode ino.
func procsIn(ino uint64) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat("/proc/"+e.Name()+"/ns/net", &st); err != nil {
			continue // gone, or a zombie
		}
		if st.Ino == ino {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killProcsIn gives processes still in the namespace half a second to end by themselves (a
// command whose context the test's end just cancelled is being killed already), then kills the
// rest by pid and reports them: a test must not leave processes behind.
func killProcsIn(ino uint64, name string) error {
	deadline := time.Now().Add(500 * time.Millisecond)
	pids := procsIn(ino)
	for len(pids) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		pids = procsIn(ino)
	}
	if len(pids) == 0 {
		return nil
	}
	var desc []string
	for _, pid := range pids {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		desc = append(desc, fmt.Sprintf("%d (%s)", pid, strings.TrimSpace(string(comm))))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// Let the kernel release them so the namespace can be freed.
	for end := time.Now().Add(2 * time.Second); len(procsIn(ino)) > 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("processes still running in %s at teardown were killed: %s", name, strings.Join(desc, ", "))
}
