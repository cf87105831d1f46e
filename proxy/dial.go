package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// The upstream dialer. Names are resolved once through Config.Resolver
// (never the system resolver), every address passes Matcher.GuardAddr and
// the self check, and the connection goes to exactly an address that
// passed: there is no second resolution between check and connect
// (THREATS C5).

// vetTarget returns the addresses egressd may dial for t under m, in the
// order to try them. A name is resolved and each answer guarded; an IP
// literal is decided by DecideAddr. prefer, when it is among the vetted
// addresses, goes first (a transparent client's original destination).
// The error is a *denial when policy or the self check refused every
// address. The addresses are appended to out.
func (p *Proxy) vetTarget(ctx context.Context, m *policy.Matcher, t policy.Target, prefer netip.Addr, out []netip.AddrPort) ([]netip.AddrPort, error) {
	if t.Addr.IsValid() {
		if d := m.DecideAddr(t.Addr, t.Port); !d.Allow {
			return nil, denyAddr(d, t.Addr)
		}
		ap := netip.AddrPortFrom(t.Addr, t.Port)
		if p.isSelf(ap) {
			return nil, denyf(http.StatusForbidden, audit.ReasonSelf, "%s is egressd's own listener", ap)
		}
		return append(out, ap), nil
	}
	if p.cfg.Resolver == nil {
		return nil, denyf(http.StatusBadGateway, audit.ReasonResolverError, "no resolver configured for %s", t.Name)
	}
	rctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	addrs, err := p.cfg.Resolver.Resolve(rctx, t.Name)
	cancel()
	if err != nil {
		return nil, resolveDenial(t, err)
	}
	var first *denial
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() || a.Zone() != "" {
			continue
		}
		if d := m.GuardAddr(a, t.Port); !d.Allow {
			if first == nil {
				first = denyAddr(d, a)
			}
			continue
		}
		ap := netip.AddrPortFrom(a, t.Port)
		if p.isSelf(ap) {
			if first == nil {
				first = denyf(http.StatusForbidden, audit.ReasonSelf, "%s resolves to %s, egressd's own listener", t.Name, ap)
			}
			continue
		}
		if a == prefer {
			out = slices.Insert(out, 0, ap)
			continue
		}
		out = append(out, ap)
	}
	if len(out) == 0 {
		if first != nil {
			return nil, first
		}
		return nil, denyf(http.StatusBadGateway, audit.ReasonNoAddresses, "%s has no addresses", t.Name)
	}
	return out, nil
}

// dialVetted connects to the first of addrs that answers, each attempt
// bounded by DialTimeout, with the socket mark set. It returns the
// connection, the address it reached and every address tried (a prefix
// of addrs).
func (p *Proxy) dialVetted(ctx context.Context, addrs []netip.AddrPort) (net.Conn, netip.AddrPort, []netip.AddrPort, error) {
	var errs []error
	for i, ap := range addrs {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			return nil, netip.AddrPort{}, addrs[:i], fmt.Errorf("connecting upstream: %w", errors.Join(errs...))
		}
		start := time.Now()
		c, err := p.dial(ctx, ap)
		p.met.dialed(time.Since(start), err)
		if err == nil {
			return c, ap, addrs[:i+1], nil
		}
		errs = append(errs, err)
	}
	return nil, netip.AddrPort{}, addrs, fmt.Errorf("connecting upstream: %w", errors.Join(errs...))
}

// dialTarget vets t and dials it. The vetted addresses are appended to
// buf (a tunnel passes room it owns, so the tried list it keeps for its
// record costs no allocation); the tried ones are returned.
func (p *Proxy) dialTarget(ctx context.Context, m *policy.Matcher, t policy.Target, prefer netip.Addr, buf []netip.AddrPort) (net.Conn, netip.AddrPort, []netip.AddrPort, error) {
	addrs, err := p.vetTarget(ctx, m, t, prefer, buf[:0])
	if err != nil {
		return nil, netip.AddrPort{}, nil, err
	}
	return p.dialVetted(ctx, addrs)
}

// upstreamFailure is the failure answered when the upstream cannot be
// reached after an allow: upstream-timeout (504) or upstream-error (502).
func upstreamFailure(err error) *denial {
	if isTimeoutErr(err) {
		return denyf(http.StatusGatewayTimeout, audit.ReasonUpstreamTimeout, "%v", err)
	}
	return denyf(http.StatusBadGateway, audit.ReasonUpstreamError, "%v", err)
}

func isTimeoutErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

// The resolver's errors, as the proxy consumes them (the resolver,
// dnsfilter, declares the types): a name the policy refused carries its
// decision, a failure its reason in the one vocabulary.
type (
	policyRefusal interface {
		PolicyDecision() (policy.Decision, netip.Addr)
	}
	reasoned interface{ AuditReason() audit.Reason }
)

// resolveDenial is the denial of t when resolving it failed: the policy's
// refusal (a blocked CNAME target, every address guarded), or a failure of
// the upstream resolvers. What the client is told names no resolver: the
// sandbox never learns the upstream resolvers' addresses (the audit
// record has them).
func resolveDenial(t policy.Target, err error) *denial {
	if d, ok := asDenial(err); ok {
		return d
	}
	var pr policyRefusal
	if errors.As(err, &pr) {
		d, addr := pr.PolicyDecision()
		if d.Reason == policy.ReasonGuardedAddress && addr.IsValid() {
			dn := denyAddr(d, addr)
			dn.internal = err.Error()
			return dn
		}
		dn := denyDecision(d, "")
		dn.internal = err.Error()
		return dn
	}
	reason := audit.ReasonResolverError
	var rr reasoned
	switch {
	case errors.As(err, &rr):
		reason = rr.AuditReason()
	case isTimeoutErr(err):
		reason = audit.ReasonResolverTimeout
	}
	var dn *denial
	switch reason {
	case audit.ReasonResolverTimeout:
		dn = denyf(http.StatusGatewayTimeout, reason, "no answer for %s from the upstream resolver", t.Name)
	case audit.ReasonNoAddresses:
		dn = denyf(http.StatusBadGateway, reason, "%s has no A or AAAA records", t.Name)
	case audit.ReasonDNSMaxNameLen:
		dn = denyf(http.StatusForbidden, reason, "%s is longer than --dns-max-name-len", t.Name)
	default:
		dn = denyf(http.StatusBadGateway, audit.ReasonResolverError, "the upstream resolver failed for %s", t.Name)
	}
	dn.internal = err.Error()
	return dn
}
