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
	"github.com/egressd/egressd/internal/nsthread"
)

// DefaultSubnet is the IPv4 range uplinks are carved from, one /30 per
// sandbox: the launcher's end takes the first host address, the sandbox's
// end the second.
var DefaultSubnet = netip.MustParsePrefix("10.200.0.0/16")

// SandboxLink is the name of the uplink's end inside a sandbox.
const SandboxLink = "eth0"

// uplinkPrefixBits is the size of one sandbox's link.
const uplinkPrefixBits = 30

// UplinkPlan is a filtered sandbox's way out: a veth pair from the
// launcher's network namespace (Link) into the sandbox's (SandboxLink), the
// sandbox's default route through it, and NAT for it on the launcher's
// side in chains of its own (firewall.Uplink). IPv4 only: neither end has
// an IPv6 address (not even link-local), so the sandbox has no IPv6 route
// out at all, on top of its firewall rejecting IPv6.
type UplinkPlan struct {
	// LauncherNetns is the launcher's network namespace, where its end
	// and the NAT live (a path); "" is the launcher process's own.
	LauncherNetns string `json:"launcher_netns,omitempty"`
	// Subnet is where the link's /30 is taken from: the first free one,
	// chosen at apply under a lock every launcher on the machine shares.
	Subnet netip.Prefix `json:"subnet"`
	// Link is the launcher's end (the sandbox id); ForwardChain and
	// NATChain its chains, EGS-<hex>-FWD and EGS-<hex>-NAT.
	Link         string `json:"link"`
	ForwardChain string `json:"forward_chain"`
	NATChain     string `json:"nat_chain"`
}

// planUplink names the uplink of sandbox id ("egs-<hex>").
func planUplink(id string, subnet netip.Prefix) *UplinkPlan {
	suffix := strings.TrimPrefix(id, IDPrefix)
	return &UplinkPlan{Subnet: subnet, Link: id, ForwardChain: "EGS-" + suffix + "-FWD", NATChain: "EGS-" + suffix + "-NAT"}
}

// nat is the uplink's chains for the link's prefix.
func (u *UplinkPlan) nat(prefix netip.Prefix) firewall.Uplink {
	return firewall.Uplink{Netns: u.LauncherNetns, Link: u.Link, Prefix: prefix, ForwardChain: u.ForwardChain, NATChain: u.NATChain}
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

// subnetLockName is the lock file, in the state root, that serialises
// choosing and claiming a /30 among concurrent launchers.
const subnetLockName = "subnet.lock"

// uplink is an uplink being made or made: its plan and the /30 it got.
type uplink struct {
	plan   *UplinkPlan
	prefix netip.Prefix
}

// setupUplink makes the uplink of the sandbox's namespace: it picks a free
// /30 of the subnet and claims it by addressing the launcher's end (under
// a lock shared by every launcher on the machine), raises the link, and
// installs the NAT and FORWARD chains. On error, what was made is left for
// removeUplink (s.up says what there is to remove).
func (s *Sandbox) setupUplink(ctx context.Context) error {
	u := s.plan.Uplink
	unlock, err := lockFile(filepath.Join(s.plan.StateRoot, subnetLockName))
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	taken, err := s.k.Links.Taken(u.LauncherNetns)
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	start, err := rand.Int(rand.Reader, big.NewInt(1<<20))
	if err != nil {
		return err
	}
	prefix, err := pickPrefix(u.Subnet, taken, start.Uint64())
	if err != nil {
		return err
	}
	hostAddr, nsAddr := uplinkAddrs(prefix)
	s.mu.Lock()
	s.up = &uplink{plan: u, prefix: prefix}
	s.mu.Unlock()
	if err := s.k.Links.AddVeth(u.LauncherNetns, u.Link, netip.PrefixFrom(hostAddr, uplinkPrefixBits), s.plan.Netns); err != nil {
		return err
	}
	// The /30 is claimed (its address is on a link): other launchers may
	// pick from here on.
	unlock()
	locked = false
	if err := s.k.Links.Raise(u.LauncherNetns, u.Link, s.plan.Netns, netip.PrefixFrom(nsAddr, uplinkPrefixBits), hostAddr); err != nil {
		return err
	}
	return s.k.Firewall.InstallUplink(ctx, u.nat(prefix))
}

// removeUplink removes the uplink's NAT and FORWARD chains and, unless
// nsGone, the veth pair. Parts that are already gone are not errors, so it
// is safe after a partial setup and twice.
//
// nsGone says the teardown removed the sandbox's namespace (nothing of the
// sandbox runs any more, and its bind mount is gone): the pair then goes
// with it, in the kernel's own cleanup of the namespace, which waits for
// the RCU grace periods of the links' unregistration off the launcher's
// path (an explicit RTM_DELLINK waits 20 ms or more for them). The chains
// are removed after that, while the launcher still holds the sandbox's id
// (its state directory), so they are gone before any later link could
// take the name they match (docs/launcher.md, "Teardown").
//
// The launcher waits for the link to be gone (vethGoneWait) before it
// removes the chains; one still there after that (its namespace is held
// by something else) is deleted as below.
//
// Otherwise (the namespace could not be removed, or was never known) the
// veth is set down, which stops its traffic at once, then deleted beside
// the chains' removal, so NAT never goes away while the link still
// carries anything.
func (s *Sandbox) removeUplink(ctx context.Context, u *uplink, nsGone bool) error {
	ns, link := u.plan.LauncherNetns, u.plan.Link
	if nsGone {
		// Removing the bind mount frees the namespace only when nothing
		// else references it. A socket of egressd's left as an orphan
		// (closed with bytes an upstream never acknowledged: it
		// retransmits for minutes) or a host process's reference keeps it,
		// and the veth up, addressed and routed with it: then the link is
		// deleted here, as when the namespace could not be removed. The
		// chains go only once the link has.
		gone, err := s.k.Links.Gone(ns, link, vethGoneWait)
		if err == nil && gone {
			return s.k.Firewall.RemoveUplink(ctx, u.plan.nat(u.prefix))
		}
		if err != nil {
			s.log().Warn("waiting for the veth to go with its namespace; deleting it", "link", link, "err", err)
		}
	}
	if err := s.k.Links.Down(ns, link); err != nil {
		// Not down: keep the chains until the link is gone.
		return errors.Join(s.k.Links.Delete(ns, link), s.k.Firewall.RemoveUplink(ctx, u.plan.nat(u.prefix)))
	}
	delErr := make(chan error, 1)
	go func() { delErr <- s.k.Links.Delete(ns, link) }()
	chainErr := s.k.Firewall.RemoveUplink(ctx, u.plan.nat(u.prefix))
	return errors.Join(<-delErr, chainErr)
}

// hostLinks are the kernel's links (Links), through netlink.
type hostLinks struct{}

// launcherHandle is a netlink handle in the launcher's namespace ns ("" the
// process's: a handle made on any of its threads but the throwaway ones).
func launcherHandle(ns string) (*netlink.Handle, error) {
	if ns == "" {
		return netlink.NewHandle()
	}
	return netnsHandle(ns)
}

// inLauncherNS runs fn in the launcher's namespace ns, for its sysctls.
func inLauncherNS(ns string, fn func() error) error {
	if ns == "" {
		return fn()
	}
	return nsthread.InNetns(ns, fn)
}

// Taken lists the IPv4 address prefixes and route destinations of the
// launcher's namespace, in every routing table. Default routes are left
// out: they overlap everything and claim nothing.
func (hostLinks) Taken(launcherNS string) ([]netip.Prefix, error) {
	h, err := launcherHandle(launcherNS)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
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

// AddVeth adds the veth pair, the sandbox's end born in the namespace at
// nsPath, and addresses the launcher's end. IPv6 is off on each end before
// it goes up, so it never even gets a link-local address.
//
// The launcher's end gets an interface index of its own choosing, never 2
// (the index the sandbox's end takes in a namespace holding only lo): with
// equal indexes the kernel activates the carrier up to a second late
// (linkwatch) and the first packets are dropped.
func (hostLinks) AddVeth(launcherNS, hostIf string, hostAddr netip.Prefix, nsPath string) error {
	host, err := launcherHandle(launcherNS)
	if err != nil {
		return fmt.Errorf("uplink: netlink: %w", err)
	}
	defer host.Close()
	nsFd, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	defer nsFd.Close()
	if err := createVeth(host, hostIf, nsFd); err != nil {
		return err
	}
	hostLink, err := host.LinkByName(hostIf)
	if err != nil {
		return fmt.Errorf("uplink: finding %s: %w", hostIf, err)
	}
	err = inLauncherNS(launcherNS, func() error {
		return writeSysctl("net/ipv6/conf/"+hostIf+"/disable_ipv6", "1")
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("uplink: %w", err)
	}
	if err := host.AddrAdd(hostLink, &netlink.Addr{IPNet: ipNet(hostAddr.Addr(), hostAddr.Bits())}); err != nil {
		return fmt.Errorf("uplink: address %s on %s: %w", hostAddr.Addr(), hostIf, err)
	}
	return nil
}

func createVeth(host *netlink.Handle, hostIf string, nsFd *os.File) error {
	var lastErr error
	for range 8 {
		n, err := rand.Int(rand.Reader, big.NewInt(1<<20))
		if err != nil {
			return err
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = hostIf
		attrs.Index = 4096 + int(n.Int64())
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: SandboxLink, PeerNamespace: netlink.NsFd(int(nsFd.Fd()))}
		lastErr = host.LinkAdd(veth)
		if lastErr == nil {
			return nil
		}
		if !errors.Is(lastErr, unix.EEXIST) && !errors.Is(lastErr, unix.EBUSY) {
			break
		}
		if _, err := host.LinkByName(hostIf); err == nil && !linkGoes(host, hostIf, dyingLinkWait) {
			return fmt.Errorf("uplink: a link named %s already exists", hostIf)
		}
	}
	return fmt.Errorf("uplink: creating veth %s: %w", hostIf, lastErr)
}

// dyingLinkWait bounds how long AddVeth waits for a link of the name it
// wants to go: the veth of a sandbox of the same id whose namespace was
// just removed goes in the kernel's cleanup of that namespace (Close does
// not wait for it), within milliseconds. Any other link of that name is
// never taken over.
const dyingLinkWait = time.Second

// vethGoneWait bounds how long the teardown waits for the kernel's cleanup
// of a removed namespace to take its veth pair (2–10 ms here, more under
// load) before it deletes the link itself.
const vethGoneWait = 200 * time.Millisecond

// linkGoes reports whether the link named name is gone within wait.
func linkGoes(h *netlink.Handle, name string, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		var nf netlink.LinkNotFoundError
		if _, err := h.LinkByName(name); errors.As(err, &nf) {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Gone waits up to within for hostIf to leave the launcher's namespace.
func (hostLinks) Gone(launcherNS, hostIf string, within time.Duration) (bool, error) {
	h, err := launcherHandle(launcherNS)
	if err != nil {
		return false, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	return linkGoes(h, hostIf, within), nil
}

// Raise configures the sandbox's end, brings both up and routes the
// sandbox through the launcher's end.
func (hostLinks) Raise(launcherNS, hostIf, nsPath string, nsAddr netip.Prefix, gateway netip.Addr) error {
	host, err := launcherHandle(launcherNS)
	if err != nil {
		return fmt.Errorf("uplink: netlink: %w", err)
	}
	defer host.Close()
	hostLink, err := host.LinkByName(hostIf)
	if err != nil {
		return fmt.Errorf("uplink: finding %s: %w", hostIf, err)
	}
	if err := host.LinkSetUp(hostLink); err != nil {
		return fmt.Errorf("uplink: %s up: %w", hostIf, err)
	}
	err = nsthread.InNetns(nsPath, func() error {
		if err := writeSysctl("net/ipv6/conf/"+SandboxLink+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	nsh, err := netnsHandle(nsPath)
	if err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	defer nsh.Close()
	eth, err := nsh.LinkByName(SandboxLink)
	if err != nil {
		return fmt.Errorf("uplink: finding %s in the sandbox: %w", SandboxLink, err)
	}
	if err := nsh.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(nsAddr.Addr(), nsAddr.Bits())}); err != nil {
		return fmt.Errorf("uplink: address %s on the sandbox's %s: %w", nsAddr.Addr(), SandboxLink, err)
	}
	if err := nsh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("uplink: the sandbox's %s up: %w", SandboxLink, err)
	}
	if err := nsh.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gateway.AsSlice()}); err != nil {
		return fmt.Errorf("uplink: the sandbox's default route via %s: %w", gateway, err)
	}
	if err := inLauncherNS(launcherNS, enableForwarding); err != nil {
		return fmt.Errorf("uplink: %w", err)
	}
	return waitOperUp(nsh, eth.Attrs().Index, host, hostLink.Attrs().Index)
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

// Down sets hostIf down.
func (hostLinks) Down(launcherNS, hostIf string) error {
	return withLink(launcherNS, hostIf, func(h *netlink.Handle, l netlink.Link) error {
		if err := h.LinkSetDown(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("setting veth %s down: %w", hostIf, err)
		}
		return nil
	})
}

// Delete deletes hostIf.
func (hostLinks) Delete(launcherNS, hostIf string) error {
	return withLink(launcherNS, hostIf, func(h *netlink.Handle, l netlink.Link) error {
		if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("deleting veth %s: %w", hostIf, err)
		}
		return nil
	})
}

// withLink calls fn with the link named name of the launcher's namespace;
// a link that is not there is nothing to do.
func withLink(launcherNS, name string, fn func(*netlink.Handle, netlink.Link) error) error {
	h, err := launcherHandle(launcherNS)
	if err != nil {
		return fmt.Errorf("veth %s: netlink: %w", name, err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("finding veth %s: %w", name, err)
	}
	return fn(h, l)
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
