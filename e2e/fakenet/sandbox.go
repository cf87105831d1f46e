package fakenet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// SandboxLink is the name of the sandbox's side of its veth.
const SandboxLink = "eth0"

// worldLinkIndexBase + slot is the ifindex of a sandbox veth's world end.
const worldLinkIndexBase = 1000

// SandboxOption configures NewSandbox.
type SandboxOption func(*sandboxConfig)

type sandboxConfig struct {
	noIPv6 bool
}

// NoIPv6 gives the sandbox no IPv6 address and no IPv6 route (only the kernel's link-local
// address on eth0). By default a sandbox has both, so that an IPv6 bypass has a path that only a
// firewall can stop.
func NoIPv6() SandboxOption {
	return func(c *sandboxConfig) { c.noIPv6 = true }
}

// Sandbox is a network namespace joined to the world by a veth pair: eth0 inside, with a /30
// out of LinkPrefix4 (and a /64 out of LinkPrefix6), loopback up, and default routes to the
// world's end of the veth. The world holds every fake-internet address, so a packet from the
// sandbox reaches the servers directly and replies come back over the veth; anything else gets
// an immediate ICMP unreachable from the world.
type Sandbox struct {
	NetNS

	w         *World
	slot      int
	worldLink string
	addr, gw  netip.Addr
	addr6     netip.Addr
	gw6       netip.Addr

	closeOnce sync.Once
	closeErr  error
}

// NewSandbox creates a sandbox namespace joined to the world. It is removed when t ends (or
// when the world is torn down, whichever comes first), even if the test failed. A world holds
// at most 64 sandboxes at once.
func (w *World) NewSandbox(t testing.TB, opts ...SandboxOption) *Sandbox {
	t.Helper()
	var cfg sandboxConfig
	for _, o := range opts {
		o(&cfg)
	}
	s, err := w.newSandbox(cfg)
	if s != nil {
		t.Cleanup(func() {
			// Report only if this call did the teardown: an earlier Close (the test's, or the
			// world's) returned its error to its caller.
			s.closeOnce.Do(func() {
				s.closeErr = s.close()
				if s.closeErr != nil {
					t.Errorf("fakenet: tearing down sandbox %s: %v", s.name, s.closeErr)
				}
			})
		})
	}
	if err != nil {
		t.Fatalf("fakenet: creating sandbox: %v", err)
	}
	return s
}

func (w *World) newSandbox(cfg sandboxConfig) (*Sandbox, error) {
	w.mu.Lock()
	if w.closed || w.nl == nil {
		w.mu.Unlock()
		return nil, errors.New("the world is not running")
	}
	slot := -1
	for i, used := range w.slots {
		if !used {
			slot = i
			break
		}
	}
	if slot < 0 {
		w.mu.Unlock()
		return nil, fmt.Errorf("all %d sandbox slots of the world are in use", maxSandboxes)
	}
	w.slots[slot] = true
	s := &Sandbox{w: w, slot: slot, worldLink: fmt.Sprintf("%ss%d", Prefix, slot)}
	w.sandboxes[s] = struct{}{}
	w.mu.Unlock()

	base := LinkPrefix4.Addr().As4()
	base[3] = byte(4 * slot)
	s.gw = netip.AddrFrom4([4]byte{base[0], base[1], base[2], base[3] + 1})
	s.addr = netip.AddrFrom4([4]byte{base[0], base[1], base[2], base[3] + 2})
	if !cfg.noIPv6 {
		b := LinkPrefix6.Addr().As16()
		b[6], b[7] = 0, byte(slot)
		b[15] = 1
		s.gw6 = netip.AddrFrom16(b)
		b[15] = 2
		s.addr6 = netip.AddrFrom16(b)
	}

	ns, err := createNetNS(UniqueName("s"))
	if err != nil {
		return s, fmt.Errorf("creating the sandbox namespace: %w", err)
	}
	s.NetNS = *ns
	if err := hook("sandbox-netns"); err != nil {
		return s, err
	}
	if err := s.wire(); err != nil {
		return s, fmt.Errorf("wiring %s to %s: %w", s.name, w.name, err)
	}
	return s, nil
}

// wire creates the veth pair (born with its ends in the two namespaces; nothing ever appears in
// the caller's namespace), addresses both ends and routes the sandbox into the world.
func (s *Sandbox) wire() error {
	w := s.w
	sh, err := netlink.NewHandleAt(s.handle)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", s.name, err)
	}
	defer sh.Close()

	attrs := netlink.NewLinkAttrs()
	attrs.Name = s.worldLink
	// The world's end gets an ifindex of its own choosing, never the index the sandbox's end
	// gets (2, the first after lo). With equal indexes the kernel does not count the carrier
	// change as urgent and activates the link up to a second later (linkwatch), and the first
	// packets of a test are dropped.
	attrs.Index = worldLinkIndexBase + s.slot
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: SandboxLink, PeerNamespace: netlink.NsFd(int(s.handle))}
	w.nlMu.Lock()
	err = w.nl.LinkAdd(veth)
	var worldEnd netlink.Link
	if err == nil {
		worldEnd, err = w.nl.LinkByName(s.worldLink)
	}
	if err == nil {
		err = w.nl.LinkSetUp(worldEnd)
	}
	w.nlMu.Unlock()
	if err != nil {
		return fmt.Errorf("veth %s in the world: %w", s.worldLink, err)
	}
	if err := hook("veth"); err != nil {
		return err
	}
	if err := addAddr(w.nl, &w.nlMu, worldEnd.Attrs().Index, netip.PrefixFrom(s.gw, 30)); err != nil {
		return err
	}
	if s.gw6.IsValid() {
		if err := addAddr(w.nl, &w.nlMu, worldEnd.Attrs().Index, netip.PrefixFrom(s.gw6, 64)); err != nil {
			return err
		}
	}

	var mu sync.Mutex // addAddr's lock; sh is this goroutine's alone
	lo, err := sh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	if err := sh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	eth, err := sh.LinkByName(SandboxLink)
	if err != nil {
		return fmt.Errorf("finding %s: %w", SandboxLink, err)
	}
	if err := sh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("%s up: %w", SandboxLink, err)
	}
	if err := addAddr(sh, &mu, eth.Attrs().Index, netip.PrefixFrom(s.addr, 30)); err != nil {
		return err
	}
	if err := sh.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: s.gw.AsSlice()}); err != nil {
		return fmt.Errorf("IPv4 default route via %s: %w", s.gw, err)
	}
	if s.addr6.IsValid() {
		if err := addAddr(sh, &mu, eth.Attrs().Index, netip.PrefixFrom(s.addr6, 64)); err != nil {
			return err
		}
		def6 := &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		if err := sh.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: def6, Gw: s.gw6.AsSlice()}); err != nil {
			return fmt.Errorf("IPv6 default route via %s: %w", s.gw6, err)
		}
	}
	return s.waitOperUp(sh, eth.Attrs().Index, worldEnd.Attrs().Index)
}

// waitOperUp waits until the kernel has activated both ends of the veth. Carrier changes are
// applied asynchronously (linkwatch); until then a device transmits through the noop qdisc,
// which drops, and the first ARP or SYN of a test would be lost and retried a second later.
func (s *Sandbox) waitOperUp(sh *netlink.Handle, ethIndex, worldIndex int) error {
	deadline := time.Now().Add(3 * time.Second)
	for {
		eth, err := sh.LinkByIndex(ethIndex)
		if err != nil {
			return fmt.Errorf("reading %s: %w", SandboxLink, err)
		}
		s.w.nlMu.Lock()
		we, err := s.w.nl.LinkByIndex(worldIndex)
		s.w.nlMu.Unlock()
		if err != nil {
			return fmt.Errorf("reading %s: %w", s.worldLink, err)
		}
		if eth.Attrs().OperState == netlink.OperUp && we.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("veth not operationally up after 3s (%s %s, %s %s)",
				SandboxLink, eth.Attrs().OperState, s.worldLink, we.Attrs().OperState)
		}
		time.Sleep(time.Millisecond)
	}
}

// Addr is the sandbox's IPv4 address on eth0 (what the world's servers see as the client).
func (s *Sandbox) Addr() netip.Addr { return s.addr }

// Addr6 is the sandbox's IPv6 address on eth0; the zero Addr with NoIPv6.
func (s *Sandbox) Addr6() netip.Addr { return s.addr6 }

// Gateway is the world's end of the veth, the sandbox's IPv4 default route.
func (s *Sandbox) Gateway() netip.Addr { return s.gw }

// Gateway6 is the world's end of the veth for IPv6; the zero Addr with NoIPv6.
func (s *Sandbox) Gateway6() netip.Addr { return s.gw6 }

// WorldLink is the name of the veth's end inside the world ("egt-s<slot>").
func (s *Sandbox) WorldLink() string { return s.worldLink }

// Close removes the sandbox: processes left inside it (killed and reported), its veth and its
// namespace. NewSandbox arranges it with t.Cleanup; calling it earlier is allowed, and calling
// it again returns the first result.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Sandbox) close() error {
	w := s.w
	var errs []error
	vethGone := true
	w.nlMu.Lock()
	if w.nl != nil {
		link, err := w.nl.LinkByName(s.worldLink)
		switch {
		case err == nil:
			if err := w.nl.LinkDel(link); err != nil {
				vethGone = false
				errs = append(errs, fmt.Errorf("deleting veth %s: %w", s.worldLink, err))
			}
		case !errors.As(err, new(netlink.LinkNotFoundError)):
			vethGone = false
			errs = append(errs, fmt.Errorf("finding veth %s: %w", s.worldLink, err))
		}
	}
	w.nlMu.Unlock()
	if err := s.destroy(); err != nil {
		errs = append(errs, err)
	}
	w.mu.Lock()
	delete(w.sandboxes, s)
	if vethGone {
		w.slots[s.slot] = false // a veth that could not be deleted keeps its slot (and its name) taken
	}
	w.mu.Unlock()
	return errors.Join(errs...)
}
