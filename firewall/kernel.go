package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/egressd/egressd/internal/nsthread"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// iptablesInterface is the part of *iptables.IPTables (coreos/go-iptables)
// this package calls, so tests can substitute a fake.
type iptablesInterface interface {
	// List returns `iptables -t table -S chain`: a -P or -N line, then one
	// "-A chain ..." line per rule.
	List(table, chain string) ([]string, error)
	// ChainExists reports whether chain exists in table.
	ChainExists(table, chain string) (bool, error)
}

// backend is one family's tools. Its methods act on the network namespace of
// the calling OS thread (see inNetns).
type backend interface {
	iptablesInterface
	// restore applies a batch with `iptables-restore --noflush`: all of a
	// table's changes commit together or not at all.
	restore(ctx context.Context, batch []byte) error
}

// execBackend runs the iptables binaries. go-iptables execs them as children
// of the calling thread, so they inherit the thread's network namespace.
type execBackend struct {
	*iptables.IPTables
	restorePath string
}

func (b *execBackend) restore(ctx context.Context, batch []byte) error {
	cmd := exec.CommandContext(ctx, b.restorePath, "--noflush", "--wait", lockWaitSeconds)
	cmd.Stdin = bytes.NewReader(batch)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s --noflush: %w: %s", filepath.Base(b.restorePath), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// lockWait bounds how long an iptables tool waits for the xtables lock
// (iptables-legacy only; iptables-nft takes none), so a stuck lock holder
// fails an operation instead of hanging it.
const (
	lockWait        = 10
	lockWaitSeconds = "10"
)

// The tool paths and versions are looked up once per PATH: go-iptables runs
// `iptables --version` on every New, which costs an exec.
var toolCache struct {
	sync.Mutex
	path     string
	backends [len(families)]*execBackend
}

// lookupBackends returns both families' tools, or an error if either is
// missing: rules are installed for IPv4 and IPv6 or not at all (THREATS F1),
// never "IPv4 only".
func lookupBackends() ([len(families)]backend, error) {
	toolCache.Lock()
	defer toolCache.Unlock()
	path := os.Getenv("PATH")
	if toolCache.path != path {
		toolCache.path = path
		toolCache.backends = [len(families)]*execBackend{}
	}
	var out [len(families)]backend
	for i, f := range families {
		if b := toolCache.backends[i]; b != nil {
			out[i] = b
			continue
		}
		proto, name := iptables.ProtocolIPv4, "iptables"
		if f == ipv6 {
			proto, name = iptables.ProtocolIPv6, "ip6tables"
		}
		ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(lockWait))
		if err != nil {
			return out, fmt.Errorf("finding %s for the %s rules (both families are required, never one family alone): %w", name, f, err)
		}
		restorePath, err := exec.LookPath(name + "-restore")
		if err != nil {
			return out, fmt.Errorf("finding %s-restore for the %s rules (both families are required, never one family alone): %w", name, f, err)
		}
		b := &execBackend{IPTables: ipt, restorePath: restorePath}
		toolCache.backends[i] = b
		out[i] = b
	}
	return out, nil
}

// inNetns runs fn on a fresh OS thread inside the network namespace at
// nsPath; see nsthread.InNetns.
func inNetns(nsPath string, fn func() error) error { return nsthread.InNetns(nsPath, fn) }

// pingGroupRangePath is read and written from a thread inside the namespace:
// /proc/sys/net resolves to the network namespace of the thread that opens it.
const pingGroupRangePath = "/proc/sys/net/ipv4/ping_group_range"

// noPingGroups is the kernel's "no group may open ping sockets" range
// (THREATS F3). It covers ICMPv6 ping sockets too: both families check it.
const noPingGroups = "1\t0"

// setPingGroupRange sets ping_group_range to "1 0" unless it already is.
// Container runtimes mount /proc/sys read-only, so an init container cannot
// write it; there the pod (securityContext.sysctls) or the container engine
// (--sysctl) sets it, and finding it set is enough. Finding it otherwise and
// unwritable is an error that says where to set it.
func setPingGroupRange() error {
	if checkPingGroupRange() == nil {
		return nil
	}
	if err := os.WriteFile(pingGroupRangePath, []byte("1 0"), 0o644); err != nil {
		hint := ""
		if errors.Is(err, syscall.EROFS) || errors.Is(err, os.ErrPermission) {
			hint = ` (/proc/sys is read-only here, as in a container: set the sysctl where the namespace is made, e.g. a pod's securityContext.sysctls or docker run --sysctl net.ipv4.ping_group_range="1 0")`
		}
		return fmt.Errorf("setting net.ipv4.ping_group_range to \"1 0\": %w%s", err, hint)
	}
	return nil
}

func checkPingGroupRange() error {
	b, err := os.ReadFile(pingGroupRangePath)
	if err != nil {
		return fmt.Errorf("reading net.ipv4.ping_group_range: %w", err)
	}
	if got := strings.Join(strings.Fields(string(b)), "\t"); got != noPingGroups {
		return fmt.Errorf("net.ipv4.ping_group_range is %q, want \"1 0\" (no group may open ICMP ping sockets)", strings.ReplaceAll(got, "\t", " "))
	}
	return nil
}

// flushConntrack deletes every conntrack entry, both families, of the calling
// thread's network namespace (the netlink socket is opened there). It sends
// the flush with family AF_UNSPEC: the kernel filters a flush by the family in
// the request, so the AF_INET that netlink.ConntrackTableFlush sends would
// leave IPv6 entries behind.
func flushConntrack() error {
	req := nl.NewNetlinkRequest((unix.NFNL_SUBSYS_CTNETLINK<<8)|nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
	if _, err := req.Execute(unix.NETLINK_NETFILTER, 0); err != nil {
		return fmt.Errorf("flushing conntrack table: %w", err)
	}
	return nil
}
