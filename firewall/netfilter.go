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

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/internal/nsthread"
)

// Netfilter is the part of the kernel a firewall is made of, in the network
// namespace whose path ns names (a bind mount such as /run/netns/NAME, or
// /proc/PID/ns/net; "" is the calling thread's own): each family's
// iptables tables, the namespace's connection tracking, and its sysctls.
// It is the seam between this package's rule engine and the kernel, shaped
// after the tools it calls (go-iptables' List and ChainExists,
// iptables-restore): System is the real one, NewFake an in-memory one that
// this package's tests and other packages' (the launcher's lifecycle) use.
type Netfilter interface {
	// List returns `iptables -t table -S chain` for family f: a -P or -N
	// line, then one "-A chain ..." line per rule.
	List(ctx context.Context, ns string, f Family, table, chain string) ([]string, error)
	// ChainExists reports whether chain exists in table.
	ChainExists(ctx context.Context, ns string, f Family, table, chain string) (bool, error)
	// Dump returns `iptables-save` for family f (ip6tables-save for
	// IPv6): every table, chain and rule at once, without counters.
	Dump(ctx context.Context, ns string, f Family) ([]byte, error)
	// Restore applies batch with `iptables-restore --noflush` (ip6tables-
	// for IPv6): each table's changes commit together or not at all.
	Restore(ctx context.Context, ns string, f Family, batch []byte) error
	// FlushConntrack deletes every conntrack entry of the namespace, both
	// families.
	FlushConntrack(ns string) error
	// CountConntrack counts the namespace's conntrack entries, both
	// families.
	CountConntrack(ns string) (int, error)
	// Sysctl reads /proc/sys/KEY ("net/ipv4/ping_group_range") as the
	// namespace sees it, and SetSysctl writes it.
	Sysctl(ns, key string) (string, error)
	SetSysctl(ns, key, value string) error
}

// System is the kernel's Netfilter: the iptables tools (go-iptables for
// listings, iptables-restore and ip6tables-restore for batches), run from a
// thread inside the namespace (internal/nsthread), netlink for conntrack.
// Every operation fails, before touching anything, unless the tools of both
// families are installed: rules go in for IPv4 and IPv6 or not at all
// (THREATS F1).
func System() Netfilter { return systemNetfilter{} }

type systemNetfilter struct{}

// inNetns runs fn in the namespace at ns: on the calling thread for ""
// (whose children inherit its namespace), else on a thread of its own
// inside it (nsthread.InNetns).
func inNetns(ns string, fn func() error) error {
	if ns == "" {
		return fn()
	}
	return nsthread.InNetns(ns, fn)
}

func (systemNetfilter) List(ctx context.Context, ns string, f Family, table, chain string) ([]string, error) {
	b, err := backendFor(f)
	if err != nil {
		return nil, err
	}
	var out []string
	err = inNetns(ns, func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		var err error
		out, err = b.List(table, chain)
		return err
	})
	return out, err
}

func (systemNetfilter) ChainExists(ctx context.Context, ns string, f Family, table, chain string) (bool, error) {
	b, err := backendFor(f)
	if err != nil {
		return false, err
	}
	var ok bool
	err = inNetns(ns, func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		var err error
		ok, err = b.ChainExists(table, chain)
		return err
	})
	return ok, err
}

func (systemNetfilter) Dump(ctx context.Context, ns string, f Family) ([]byte, error) {
	t, err := lookupTools()
	if err != nil {
		return nil, err
	}
	var out []byte
	err = inNetns(ns, func() error {
		cmd := exec.CommandContext(ctx, t.save[f])
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		var err error
		if out, err = cmd.Output(); err != nil {
			return fmt.Errorf("%s: %w: %s", filepath.Base(t.save[f]), err, strings.TrimSpace(stderr.String()))
		}
		return nil
	})
	return out, err
}

func (systemNetfilter) Restore(ctx context.Context, ns string, f Family, batch []byte) error {
	t, err := lookupTools()
	if err != nil {
		return err
	}
	return inNetns(ns, func() error { return restore(ctx, t.restore[f], batch) })
}

func (systemNetfilter) FlushConntrack(ns string) error { return inNetns(ns, flushConntrack) }

func (systemNetfilter) CountConntrack(ns string) (int, error) {
	n := 0
	err := inNetns(ns, func() error {
		for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
			flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, fam)
			if err != nil {
				return fmt.Errorf("listing the conntrack table: %w", err)
			}
			n += len(flows)
		}
		return nil
	})
	return n, err
}

func (systemNetfilter) Sysctl(ns, key string) (string, error) {
	var out string
	err := inNetns(ns, func() error {
		b, err := os.ReadFile(sysctlPath(key))
		out = string(b)
		return err
	})
	return out, err
}

func (systemNetfilter) SetSysctl(ns, key, value string) error {
	return inNetns(ns, func() error { return os.WriteFile(sysctlPath(key), []byte(value), 0o644) })
}

// sysctlPath is /proc/sys/KEY. /proc/sys/net resolves to the network
// namespace of the thread that opens it.
func sysctlPath(key string) string { return "/proc/sys/" + strings.TrimPrefix(key, "/") }

// restore runs the tool at path (iptables-restore or ip6tables-restore) with
// batch on stdin, from the calling thread (its namespace).
func restore(ctx context.Context, path string, batch []byte) error {
	cmd := exec.CommandContext(ctx, path, "--noflush", "--wait", lockWaitSeconds)
	cmd.Stdin = bytes.NewReader(batch)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s --noflush: %w: %s", filepath.Base(path), err, strings.TrimSpace(out.String()))
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

// tools are both families' binaries, found in PATH.
type tools struct {
	restore [len(families)]string
	save    [len(families)]string
	// listing makes a family's go-iptables handle on first use: it runs
	// `iptables --version`, which costs an exec, and only listings need it.
	listing [len(families)]func() (*iptables.IPTables, error)
}

// The tools are looked up once per PATH.
var toolCache struct {
	sync.Mutex
	path string
	t    *tools
}

// lookupTools returns both families' tools, or an error naming the one
// missing: never one family alone.
func lookupTools() (*tools, error) {
	toolCache.Lock()
	defer toolCache.Unlock()
	path := os.Getenv("PATH")
	if toolCache.t != nil && toolCache.path == path {
		return toolCache.t, nil
	}
	t := &tools{}
	for _, f := range families {
		name, proto := "iptables", iptables.ProtocolIPv4
		if f == IPv6 {
			name, proto = "ip6tables", iptables.ProtocolIPv6
		}
		for _, tool := range []string{name, name + "-restore", name + "-save"} {
			p, err := exec.LookPath(tool)
			if err != nil {
				return nil, fmt.Errorf("finding %s for the %s rules (both families are required, never one family alone): %w", tool, f, err)
			}
			switch tool {
			case name + "-restore":
				t.restore[f] = p
			case name + "-save":
				t.save[f] = p
			}
		}
		t.listing[f] = sync.OnceValues(func() (*iptables.IPTables, error) {
			ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(lockWait))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			return ipt, nil
		})
	}
	toolCache.path, toolCache.t = path, t
	return t, nil
}

// backendFor is family f's go-iptables handle.
func backendFor(f Family) (*iptables.IPTables, error) {
	t, err := lookupTools()
	if err != nil {
		return nil, err
	}
	return t.listing[f]()
}

// pingGroupRangeKey is the sysctl Install sets: no group may open ICMP ping
// sockets (THREATS F3). It covers ICMPv6 ping sockets too: both families
// check it.
const pingGroupRangeKey = "net/ipv4/ping_group_range"

// noPingGroups is the kernel's "no group may open ping sockets" range.
const noPingGroups = "1\t0"

// setPingGroupRange sets ping_group_range to "1 0" in ns unless it already
// is. Container runtimes mount /proc/sys read-only, so an init container
// cannot write it; there the pod (securityContext.sysctls) or the container
// engine (--sysctl) sets it, and finding it set is enough. Finding it
// otherwise and unwritable is an error that says where to set it.
func setPingGroupRange(nf Netfilter, ns string) error {
	if problem, err := pingGroupRangeProblem(nf, ns); err == nil && problem == "" {
		return nil
	}
	if err := nf.SetSysctl(ns, pingGroupRangeKey, "1 0"); err != nil {
		hint := ""
		if errors.Is(err, syscall.EROFS) || errors.Is(err, os.ErrPermission) {
			hint = ` (/proc/sys is read-only here, as in a container: set the sysctl where the namespace is made, e.g. a pod's securityContext.sysctls or docker run --sysctl net.ipv4.ping_group_range="1 0")`
		}
		return fmt.Errorf("setting net.ipv4.ping_group_range to \"1 0\": %w%s", err, hint)
	}
	return nil
}

// pingGroupRangeProblem says what is wrong with ns's ping_group_range, ""
// when it is "1 0"; the error is for failing to read it.
func pingGroupRangeProblem(nf Netfilter, ns string) (string, error) {
	v, err := nf.Sysctl(ns, pingGroupRangeKey)
	if err != nil {
		return "", fmt.Errorf("reading net.ipv4.ping_group_range: %w", err)
	}
	if got := strings.Join(strings.Fields(v), "\t"); got != noPingGroups {
		return fmt.Sprintf("net.ipv4.ping_group_range is %q, want \"1 0\" (no group may open ICMP ping sockets)", strings.ReplaceAll(got, "\t", " ")), nil
	}
	return "", nil
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
