package firewall

import (
	"errors"
	"fmt"

	"github.com/egressd/egressd/policy"
)

// Limits on list fields, so a mistaken config produces a clear error instead
// of a batch of thousands of rules.
const (
	maxProtectedPorts   = 64
	maxInboundPorts     = 64
	maxUpstreamDNSPorts = 16
)

// Config describes the rule set for one sandbox network namespace. It is a
// plain value: Rules, Install and Verify validate it on every call.
//
// In ModeNone only Mode is read; every other field is ignored (there is no
// egressd to exempt, no redirect and no port to protect).
type Config struct {
	// Mode is the sandbox's network mode: policy.ModeFiltered or
	// policy.ModeNone. policy.ModeHost has no network namespace and is an
	// error here, as is the empty string.
	Mode policy.Mode

	// DNSPort is the port of egressd's resolver, listening on 127.0.0.1 and
	// ::1 (UDP and TCP). Every UDP and TCP packet to port 53 of any address is
	// redirected there. Required in filtered mode.
	DNSPort uint16

	// TransparentPort is the port of egressd's transparent TCP listener on
	// 127.0.0.1 and ::1; every other outbound TCP connection is redirected
	// there. Direct (not redirected) connections to it from unexempt sockets
	// are refused. Required in filtered mode.
	TransparentPort uint16

	// ExplicitProxyPort is egressd's HTTP/CONNECT proxy on loopback, which the
	// sandbox reaches directly (HTTP_PROXY). Loopback is open to the sandbox,
	// so no rule names it; it is checked not to collide with the other ports
	// (a protected explicit proxy port would break every proxy-aware client).
	// Zero means egressd runs no explicit proxy.
	ExplicitProxyPort uint16

	// Mark is the SO_MARK egressd sets on its own sockets (it needs
	// CAP_NET_ADMIN, or CAP_NET_RAW since Linux 5.17, neither of which a
	// sandbox process may hold). Marked TCP, and marked
	// UDP to UpstreamDNSPorts, leave the namespace unredirected; nothing else
	// is exempt. Zero means no mark exemption. Filtered mode needs Mark or
	// ExemptUID (else egressd's upstream connections would be redirected into
	// itself).
	Mark uint32

	// ExemptUID is the documented fallback for where egressd cannot hold
	// CAP_NET_ADMIN: sockets owned by this uid are exempt like marked ones
	// (see THREATS G2 for why a mark is preferred: anything that becomes this
	// uid walks around the filter). nil means no uid exemption. Uid 0 is
	// refused: exempting root would exempt any sandbox process running as
	// root.
	ExemptUID *uint32

	// UpstreamDNSPorts are the UDP destination ports egressd's exempt sockets
	// may send to (its upstream resolvers). nil means [53]. TCP needs no list:
	// exempt sockets may open TCP to any port.
	UpstreamDNSPorts []uint16

	// ProtectedPorts are loopback TCP ports (egressd's admin and metrics
	// listeners) that only exempt sockets may reach; anything else connecting
	// to them, at 127.0.0.1, ::1 or any local address, gets a TCP reset.
	// nil means none.
	ProtectedPorts []uint16

	// InboundTCPPorts are TCP ports on which connections from outside the
	// namespace (through its uplink) are accepted, e.g. a metrics port the
	// launcher scrapes. nil means none: inbound connections are dropped, so
	// nobody outside can open a channel into the sandbox and read data back.
	InboundTCPPorts []uint16
}

// upstreamDNSPorts returns UpstreamDNSPorts with its default applied.
func (c Config) upstreamDNSPorts() []uint16 {
	if c.UpstreamDNSPorts == nil {
		return []uint16{53}
	}
	return c.UpstreamDNSPorts
}

// Validate reports every problem with c, joined into one error, or nil.
func (c Config) Validate() error {
	switch c.Mode {
	case policy.ModeNone:
		return nil
	case policy.ModeFiltered:
	case policy.ModeHost:
		return errors.New(`firewall config: mode "host" uses the host's network namespace; there is no sandbox namespace to install rules in (use "filtered" or "none")`)
	case "":
		return errors.New(`firewall config: mode is empty; want "filtered" or "none"`)
	default:
		return fmt.Errorf(`firewall config: unknown mode %q; want "filtered" or "none"`, c.Mode)
	}

	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("firewall config: "+format, args...))
	}
	if c.DNSPort == 0 {
		add("DNSPort is required in filtered mode (the port of egressd's resolver on 127.0.0.1 and ::1)")
	}
	if c.TransparentPort == 0 {
		add("TransparentPort is required in filtered mode (the port of egressd's transparent listener)")
	}
	if c.DNSPort != 0 && c.DNSPort == c.TransparentPort {
		add("DNSPort and TransparentPort are both %d; egressd's resolver and transparent listener need different ports", c.DNSPort)
	}
	if c.ExplicitProxyPort != 0 && c.ExplicitProxyPort == c.TransparentPort {
		add("ExplicitProxyPort and TransparentPort are both %d; direct connections to the transparent port are refused, so the explicit proxy needs its own port", c.ExplicitProxyPort)
	}
	if c.ExplicitProxyPort != 0 && c.ExplicitProxyPort == c.DNSPort {
		add("ExplicitProxyPort and DNSPort are both %d", c.ExplicitProxyPort)
	}
	if c.Mark == 0 && c.ExemptUID == nil {
		add("filtered mode needs Mark (egressd's SO_MARK) or ExemptUID, or egressd's own upstream traffic would be redirected into itself")
	}
	if c.ExemptUID != nil && *c.ExemptUID == 0 {
		add("ExemptUID 0 would exempt every process running as root; run egressd under its own uid or use Mark")
	}

	checkList := func(name string, ports []uint16, max int) {
		if len(ports) > max {
			add("%s has %d ports; at most %d are supported", name, len(ports), max)
			return
		}
		seen := make(map[uint16]bool, len(ports))
		for _, p := range ports {
			if p == 0 {
				add("%s contains port 0", name)
				continue
			}
			if seen[p] {
				add("%s lists port %d twice", name, p)
			}
			seen[p] = true
		}
	}
	if c.UpstreamDNSPorts != nil && len(c.UpstreamDNSPorts) == 0 {
		add("UpstreamDNSPorts is empty, so egressd could not reach any upstream resolver; leave it nil for [53]")
	}
	checkList("UpstreamDNSPorts", c.UpstreamDNSPorts, maxUpstreamDNSPorts)
	checkList("ProtectedPorts", c.ProtectedPorts, maxProtectedPorts)
	checkList("InboundTCPPorts", c.InboundTCPPorts, maxInboundPorts)
	for _, p := range c.ProtectedPorts {
		switch p {
		case 0:
		case c.DNSPort:
			add("ProtectedPorts contains DNSPort %d; the sandbox must reach its resolver", p)
		case c.TransparentPort:
			add("ProtectedPorts contains TransparentPort %d; redirected connections land there", p)
		case c.ExplicitProxyPort:
			add("ProtectedPorts contains ExplicitProxyPort %d; the sandbox must reach its proxy", p)
		}
	}
	return errors.Join(errs...)
}
