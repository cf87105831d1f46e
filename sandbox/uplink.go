package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/firewall"
)

// DefaultSubnet is the IPv4 range uplinks are carved from, one /30 per
// sandbox: the launcher's end takes the first host address, the sandbox's
// end the second.
var DefaultSubnet = netip.MustParsePrefix("10.200.0.0/16")

// SandboxLink is the name of the uplink's end inside a sandbox.
const SandboxLink = "eth0"

// uplinkPrefixBits is the size of one sandbox's link.
const uplinkPrefixBits = 30

// uplink is a filtered sandbox's way out: a veth pair from the launcher's
// network namespace (hostIf, hostAddr) into the sandbox's (SandboxLink,
// nsAddr), the sandbox's default route through it, and NAT for it on the
// launcher's side in chains of its own. IPv4 only: neither end has an IPv6
// address (not even link-local), so the sandbox has no IPv6 route out at
// all, on top of its firewall rejecting IPv6.
type uplink struct {
	hostIf           string
	prefix           netip.Prefix
	hostAddr, nsAddr netip.Addr
	// fwdChain and natChain are the launcher-side chains (filter FORWARD
	// and nat POSTROUTING) holding this uplink's rules.
	fwdChain, natChain string
}

// newUplink names an uplink for sandbox id ("egs-<hex>"): the launcher's
// veth end is called id, its chains EGS-<hex>-FWD and EGS-<hex>-NAT.
func newUplink(id string) *uplink {
	suffix := strings.TrimPrefix(id, IDPrefix)
	return &uplink{hostIf: id, fwdChain: "EGS-" + suffix + "-FWD", natChain: "EGS-" + suffix + "-NAT"}
}

// uplinkAddrs returns the launcher's and the sandbox's address in a /30.
func uplinkAddrs(p netip.Prefix) (host, ns netip.Addr) {
	host = p.Masked().Addr().Next()
	return host, host.Next()
}

// pickPrefix returns the first /30 of subnet, scanning from the start-th
// one and wrapping around, that overlaps none of taken. taken holds every
// address prefix and route destination of the launcher's namespace, so a
// /30 in use by another sandbox, or a range some other route claims, is
// skipped.
func pickPrefix(subnet netip.Prefix, taken []netip.Prefix, start uint64) (netip.Prefix, error) {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || subnet.Bits() > uplinkPrefixBits {
		return netip.Prefix{}, fmt.Errorf("uplink subnet %s: want an IPv4 prefix of /%d or larger", subnet, uplinkPrefixBits)
	}
	n := uint64(1) << (uplinkPrefixBits - subnet.Bits())
	base := binary.BigEndian.Uint32(subnet.Addr().AsSlice())
	for i := range n {
		k := (start + i) % n
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], base+uint32(k)<<(32-uplinkPrefixBits))
		cand := netip.PrefixFrom(netip.AddrFrom4(b), uplinkPrefixBits)
		free := true
		for _, t := range taken {
			if t.Overlaps(cand) {
				free = false
				break
			}
		}
		if free {
			return cand, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("uplink subnet %s has no free /%d: every one overlaps an address or route of this namespace (give another with --subnet)", subnet, uplinkPrefixBits)
}

// takenPrefixes lists the IPv4 address prefixes and route destinations of
// the namespace h talks to, in every routing table. Default routes are
// left out: they overlap everything and claim nothing.
func takenPrefixes(h *netlink.Handle) ([]netip.Prefix, error) {
	var out []netip.Prefix
	addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok {
			out = append(out, p.Masked())
		}
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range routes {
		if p, ok := prefixOf(r.Dst); ok && p.Bits() > 0 {
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// subnetLockName is the lock file, in the state root, that serialises
// choosing and claiming a /30 among concurrent launchers.
const subnetLockName = "subnet.lock"

// setup creates the uplink of ns: it picks a free /30 of subnet (under a
// lock shared by every launcher on the machine), creates the veth pair with
// one end born inside ns, addresses and raises both ends, routes the
// sandbox's default through it, turns IPv4 forwarding on, and installs the
// NAT and FORWARD rules. On error, what was made is left for remove.
func (u *uplink) setup(ctx context.Context, ns *netNS, subnet netip.Prefix, stateRoot string) error {
	unlock, err := lockFile(filepath.Join(stateRoot, subnetLockName))
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	host, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("uplink: netlink: %w", err)
	}
	defer host.Close()
	taken, err := takenPrefixes(host)
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	start, err := rand.Int(rand.Reader, big.NewInt(1<<20))
	if err != nil {
		return err
	}
	if u.prefix, err = pickPrefix(subnet, taken, start.Uint64()); err != nil {
		return err
	}
	u.hostAddr, u.nsAddr = uplinkAddrs(u.prefix)

	nsh, err := ns.handle()
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	defer nsh.Close()
	nsFd, err := os.Open(ns.path)
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	defer nsFd.Close()

	// No IPv6 on either end: disable_ipv6 is set on each end before it
	// goes up, so it never even gets a link-local address.
	if err := u.createVeth(host, nsFd); err != nil {
		return err
	}
	hostLink, err := host.LinkByName(u.hostIf)
	if err != nil {
		return fmt.Errorf("uplink: finding %s: %w", u.hostIf, err)
	}
	if err := writeSysctl("net/ipv6/conf/"+u.hostIf+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("uplink: %w", err)
	}
	if err := host.AddrAdd(hostLink, &netlink.Addr{IPNet: ipNet(u.hostAddr, uplinkPrefixBits)}); err != nil {
		return fmt.Errorf("uplink: address %s on %s: %w", u.hostAddr, u.hostIf, err)
	}
	// The /30 is claimed (its address is on a link): other launchers may
	// pick from here on.
	unlock()
	locked = false
	if err := host.LinkSetUp(hostLink); err != nil {
		return fmt.Errorf("uplink: %s up: %w", u.hostIf, err)
	}

	err = ns.do(func() error {
		if err := writeSysctl("net/ipv6/conf/"+SandboxLink+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	eth, err := nsh.LinkByName(SandboxLink)
	if err != nil {
		return fmt.Errorf("uplink: finding %s in the sandbox: %w", SandboxLink, err)
	}
	if err := nsh.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(u.nsAddr, uplinkPrefixBits)}); err != nil {
		return fmt.Errorf("uplink: address %s on the sandbox's %s: %w", u.nsAddr, SandboxLink, err)
	}
	if err := nsh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("uplink: the sandbox's %s up: %w", SandboxLink, err)
	}
	if err := nsh.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: u.hostAddr.AsSlice()}); err != nil {
		return fmt.Errorf("uplink: the sandbox's default route via %s: %w", u.hostAddr, err)
	}
	if err := enableForwarding(); err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	if err := firewall.New(firewall.System()).InstallUplink(ctx, u.nat()); err != nil {
		return err
	}
	return waitOperUp(nsh, eth.Attrs().Index, host, hostLink.Attrs().Index)
}

// createVeth adds the veth pair, the sandbox's end born in the namespace
// open as nsFd. The launcher's end gets an interface index of its own
// choosing, never 2 (the index the sandbox's end takes in a namespace
// holding only lo): with equal indexes the kernel activates the carrier up
// to a second late (linkwatch) and the first packets are dropped.
func (u *uplink) createVeth(host *netlink.Handle, nsFd *os.File) error {
	var lastErr error
	for range 8 {
		n, err := rand.Int(rand.Reader, big.NewInt(1<<20))
		if err != nil {
			return err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = u.hostIf
		attrs.Index = 4096 + int(n.Int64())
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: SandboxLink, PeerNamespace: netlink.NsFd(int(nsFd.Fd()))}
		lastErr = host.LinkAdd(veth)
		if lastErr == nil {
			return nil
		}
		if !errors.Is(lastErr, unix.EEXIST) && !errors.Is(lastErr, unix.EBUSY) {
			break
		}
		if _, err := host.LinkByName(u.hostIf); err == nil {
			return fmt.Errorf("uplink: a link named %s already exists", u.hostIf)
		}
	}
	return fmt.Errorf("uplink: creating veth %s: %w", u.hostIf, lastErr)
}

// waitOperUp waits until the kernel has activated both ends of the veth
// (carrier changes apply asynchronously; until then the link drops).
func waitOperUp(nsh *netlink.Handle, nsIndex int, host *netlink.Handle, hostIndex int) error {
	deadline := time.Now().Add(3 * time.Second)
	for {
		a, err := nsh.LinkByIndex(nsIndex)
		if err != nil {
			return fmt.Errorf("uplink: %w", err)
		}
		b, err := host.LinkByIndex(hostIndex)
		if err != nil {
			return fmt.Errorf("uplink: %w", err)
		}
		if a.Attrs().OperState == netlink.OperUp && b.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("uplink: veth not operationally up after 3s (%s, %s)", a.Attrs().OperState, b.Attrs().OperState)
		}
		time.Sleep(time.Millisecond)
	}
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}
}

// nat is the uplink's launcher-side NAT and FORWARD chains
// (firewall.Uplink).
func (u *uplink) nat() firewall.Uplink {
	return firewall.Uplink{Link: u.hostIf, Prefix: u.prefix, ForwardChain: u.fwdChain, NATChain: u.natChain}
}

// remove deletes the veth pair (both ends go together; the sandbox loses
// its way out at once) and the uplink's chains. Parts that are already
// gone are not errors, so remove is safe after a partial setup and twice.
//
// The veth is set down first, which stops traffic at once; deleting it
// (slow: the kernel waits for RCU grace periods) and removing the chains
// then run side by side, so NAT never goes away while the link still
// carries anything.
func (u *uplink) remove(ctx context.Context) error {
	// A handle made here talks to this thread's namespace from any thread.
	h, err := netlink.NewHandle()
	if err != nil {
		return errors.Join(fmt.Errorf("deleting veth %s: %w", u.hostIf, err), u.removeChains(ctx))
	}
	defer h.Close()
	l, err := h.LinkByName(u.hostIf)
	if err != nil {
		return u.removeChains(ctx)
	}
	if err := h.LinkSetDown(l); err != nil && !errors.Is(err, unix.ENODEV) {
		// Not down: keep the chains until the link is gone.
		return errors.Join(u.deleteLink(h, l), u.removeChains(ctx))
	}
	delErr := make(chan error, 1)
	go func() { delErr <- u.deleteLink(h, l) }()
	chainErr := u.removeChains(ctx)
	return errors.Join(<-delErr, chainErr)
}

func (u *uplink) deleteLink(h *netlink.Handle, l netlink.Link) error {
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("deleting veth %s: %w", u.hostIf, err)
	}
	return nil
}

// removeChains removes the uplink's chains and jumps (whatever part of
// them exists).
func (u *uplink) removeChains(ctx context.Context) error {
	return firewall.New(firewall.System()).RemoveUplink(ctx, u.nat())
}

// enableForwarding turns IPv4 forwarding on in the launcher's namespace
// (NAT for the uplinks needs it). It is left on: other sandboxes may be
// using it, and Docker and every other container runtime do the same.
func enableForwarding() error {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	return writeSysctl("net/ipv4/ip_forward", "1")
}

// writeSysctl writes /proc/sys/<key>, in the network namespace of the
// calling thread for net/ keys.
func writeSysctl(key, value string) error {
	f, err := os.OpenFile("/proc/sys/"+key, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("setting %s: %w", strings.ReplaceAll(key, "/", "."), err)
	}
	defer f.Close()
	if _, err := f.WriteString(value); err != nil {
		return fmt.Errorf("setting %s = %s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}

// lockFile takes an exclusive flock on path (created if missing) and
// returns its release.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	if err := flockWait(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// flockWait takes an exclusive flock on f, waiting for it (and through
// signals).
func flockWait(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
