package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// The transparent listener: every TCP connection of the sandbox lands here
// through the firewall's REDIRECT. The original destination comes from
// conntrack; the first bytes say how to decide (the full table is in
// doc.go):
//
//	TLS with SNI   → decide on the name at the original port, dial the
//	                 name's own vetted resolution (THREATS A3)
//	HTTP/1         → decide on Host per request, dial its vetted resolution
//	TLS w/o SNI    → allowed only if an allow IP rule names the address
//	                 (THREATS E1; a learned address is not enough)
//	h2c, other     → no name to decide on: relayed raw only where raw TCP
//	                 is admitted explicitly (decideRaw), refused elsewhere
//	unknown        → still unclassified when due: refused, never relayed
//
// Denials reset the connection (plain HTTP gets a readable 403).

// serverFirstWait is how long a connection that has sent nothing may wait
// before the raw-TCP rule lets it through, for protocols where the server
// speaks first (SMTP, MySQL, IMAP). Its first bytes, when they come, are
// still judged (inspectLate). A connection the raw rule denies keeps
// waiting for its first bytes, up to HeaderTimeout. (Proxy.firstWait holds
// it; tests shorten it.)
const serverFirstWait = 300 * time.Millisecond

// serveTransparentConn serves one redirected connection.
func (p *Proxy) serveTransparentConn(cc *clientConn) {
	orig, err := p.origDst(cc.c)
	if err != nil {
		p.log.Warn("transparent connection without an original destination", "client", cc.client, "err", err)
		p.logDenial(audit.KindTCP, "", 0, cc.client, nil, denyf(0, audit.ReasonBadRequest, "%v", err))
		resetConn(cc.c)
		return
	}
	p.serveRedirected(cc, orig)
}

// serveRedirected serves a redirected connection whose original
// destination is orig.
func (p *Proxy) serveRedirected(cc *clientConn, orig netip.AddrPort) {
	orig = netip.AddrPortFrom(orig.Addr().Unmap(), orig.Port())
	if p.isSelf(orig) {
		d := denyf(0, audit.ReasonSelf, "%s is egressd's own listener", orig)
		p.logDenial(audit.KindTCP, orig.Addr().String(), orig.Port(), cc.client, nil, d)
		resetConn(cc.c)
		return
	}
	start := time.Now()
	buf, err := readFirst(cc.c, cc.peekBuf(), start.Add(min(p.firstWait, p.cfg.HeaderTimeout)))
	if len(buf) == 0 {
		if err != nil && !isTimeout(err) {
			return // the client left without a word
		}
		if _, _, dn := p.decideRaw(p.cfg.Policy.Current(), orig); dn == nil {
			p.transparentRaw(cc, orig, nil, start)
			return
		}
	}
	if classify(buf) == streamUnknown && isTimeout(err) {
		buf, err = readFirst(cc.c, buf, start.Add(p.cfg.HeaderTimeout))
	}
	switch classify(buf) {
	case streamTLS:
		p.transparentTLS(cc, orig, buf, start)
	case streamHTTP:
		p.serveRequests(cc, cc.headReader(io.MultiReader(bytes.NewReader(buf), cc.c)), arrival{orig: orig})
	case streamH2C, streamOther:
		p.transparentRaw(cc, orig, buf, start)
	default:
		// Still unclassified at the deadline, or the client closed first:
		// refused, never relayed (it could still become a request line).
		if len(buf) == 0 && !isTimeout(err) {
			return // the client left without a word
		}
		dn := unclassified(len(buf), err, p.cfg.HeaderTimeout)
		if len(buf) == 0 {
			// Silent throughout: say why raw TCP (a server-first
			// protocol) was not let through.
			if _, _, dn = p.decideRaw(p.cfg.Policy.Current(), orig); dn != nil {
				dn.detail = fmt.Sprintf("sent nothing within %s; ", p.cfg.HeaderTimeout) + dn.detail
			}
		}
		if dn != nil {
			p.logDenial(audit.KindTCP, orig.Addr().String(), orig.Port(), cc.client, nil, dn)
		}
		resetConn(cc.c)
	}
}

// transparentTLS decides a TLS connection on its SNI.
func (p *Proxy) transparentTLS(cc *clientConn, orig netip.AddrPort, prefix []byte, start time.Time) {
	c := cc.c
	port := orig.Port()
	prefix, hello, err := readHello(c, prefix, start.Add(p.cfg.HeaderTimeout))
	if err != nil {
		p.logDenial(audit.KindTLS, orig.Addr().String(), port, cc.client, nil, helloDenial(err))
		resetConn(c)
		return
	}
	if !hello.hasSNI {
		// No name: only an allow IP rule naming the address lets it
		// through (THREATS E1), as on the explicit path. An address
		// merely learned for some allowed name is not enough: a shared
		// front end serves other names there, unseen without an SNI.
		if d := p.cfg.Policy.Current().DecideAddr(orig.Addr(), port); !d.Allow {
			p.logDenial(audit.KindTLS, orig.Addr().String(), port, cc.client, nil,
				denyf(0, audit.ReasonNoSNI, "TLS ClientHello without server_name to %s, which no allow IP rule names", orig))
			resetConn(c)
			return
		}
		p.transparentRaw(cc, orig, prefix, start)
		return
	}
	name, ok := policy.NormalizeName(hello.serverName)
	if !ok {
		d := denyf(0, audit.ReasonBadHello, "server_name %q is not a valid host name", hello.serverName)
		p.logDenial(audit.KindTLS, orig.Addr().String(), port, cc.client, nil, d)
		resetConn(c)
		return
	}
	m := p.cfg.Policy.Current()
	d := m.DecideName(name, port)
	dial := policy.Target{Name: name, Port: port}
	b := &basis{name: name, port: port}
	if (!d.Allow || d.WouldDeny) && d.Reason == policy.ReasonNoAllowRule {
		// A name no rule allows, sent to an address an allow IP rule names:
		// the IP rule allows the address whatever it serves (in report
		// mode too: an allow beats a would-deny).
		if da := m.DecideAddr(orig.Addr(), port); da.Allow && !da.WouldDeny {
			d, dial = da, policy.Target{Addr: orig.Addr(), Port: port}
			b = &basis{sni: name, addr: orig.Addr(), port: port, byAddr: true}
		}
	}
	if !d.Allow {
		p.logDenial(audit.KindTLS, name, port, cc.client, nil, denyDecision(d, ""))
		resetConn(c)
		return
	}
	ctx, done, ok := p.admitTunnel(cc, audit.KindTLS, name, port, dial, m, b)
	if !ok {
		return
	}
	defer done()
	a := &allowed{kind: audit.KindTLS, target: name, port: port, client: cc.client, decision: d, start: start}
	if p.inspectTLS(ctx, m, cc, nil, prefix, a, name, dial, orig.Addr()) {
		return // the name is inspected: egressd terminates the TLS (inspect.go)
	}
	up, ap, tried, err := p.dialTarget(ctx, m, dial, orig.Addr(), nil)
	a.addrs = tried
	if err != nil {
		p.refuseAfterAllow(cc, a, "", err, false)
		return
	}
	cc.setUpstream(up, ap.Addr())
	r := new(relay).start(p.pipes, c, up)
	cc.setRelaying(true)
	upN, downN, err := r.run(prefix, cc.releasePeekBuf)
	cc.setRelaying(false)
	p.finish(a, upN, downN, cc.closedReasonOr(errorText(err)))
}

// decideRaw decides a connection with no name to go by (h2c, other bytes,
// or none yet): allowed when the original address was learned for a name
// that a rule naming the port allows (Matcher.DecideNameRaw; default_ports
// admit a name for TLS and HTTP only) and it passes the guard, or when an
// allow IP rule names the address. A learned name allowed on the port only
// by a portless rule is refused as unidentified-stream.
func (p *Proxy) decideRaw(m *policy.Matcher, orig netip.AddrPort) (policy.Decision, *basis, *denial) {
	addr, port := orig.Addr(), orig.Port()
	var first *denial
	if p.cfg.Learned != nil {
		for _, n := range p.cfg.Learned.LearnedNames(addr) {
			d, dn := decideRawName(m, n, port, addr.String()+" was learned for "+n)
			if dn == nil {
				if g := m.GuardAddr(addr, port); !g.Allow {
					return policy.Decision{}, nil, denyAddr(g, addr)
				}
				return d, &basis{name: n, addr: addr, port: port, raw: true}, nil
			}
			if first == nil || first.reason == audit.ReasonNoAllowRule && dn.reason == audit.ReasonUnidentified {
				first = dn
			}
		}
	}
	d := m.DecideAddr(addr, port)
	if d.Allow && (!d.WouldDeny || first == nil) {
		// In report mode an address no rule names is a would-deny, but
		// not for a stream refused on a name learned for it (a raw
		// stream on a default port: unidentified-stream holds).
		return d, &basis{addr: addr, port: port, byAddr: true, raw: true}, nil
	}
	if first != nil && d.Reason == policy.ReasonNoAllowRule {
		return policy.Decision{}, nil, first
	}
	dn := denyAddr(d, addr)
	if d.Reason == policy.ReasonNoAllowRule {
		dn.detail = "(no allowed name was learned for " + addr.String() + ")"
	}
	return policy.Decision{}, nil, dn
}

// decideRawName decides raw TCP to name on port (Matcher.DecideNameRaw);
// the denial is nil when it is allowed. A name allowed on the port only by
// a rule without a port is refused as unidentified-stream (nameOnly); where
// says how the stream came to name.
func decideRawName(m *policy.Matcher, name string, port uint16, where string) (policy.Decision, *denial) {
	d := m.DecideNameRaw(name, port)
	if d.Allow {
		return d, nil
	}
	if d.Reason == policy.ReasonNoAllowRule {
		if dd := m.DecideName(name, port); dd.Allow {
			return d, nameOnly(name, port, dd, where)
		}
	}
	return d, denyDecision(d, "("+where+")")
}

// nameOnly is the refusal of a stream that names no host (h2c, or bytes of
// no protocol egressd reads) to name on port, which the allow d admits only
// by a portless rule: its default ports admit the name for TLS and HTTP,
// whose every stream or request is decided on the name it carries. In
// report mode d may be a would-deny on a default port: the rule learned
// from it would be portless, so the stream is refused the same way. where
// says how the stream came to name ("203.0.113.10 was learned for x.test",
// "a CONNECT tunnel to x.test").
func nameOnly(name string, port uint16, d policy.Decision, where string) *denial {
	if d.WouldDeny {
		dn := denyf(0, audit.ReasonUnidentified,
			"%s, which no rule allows: report mode lets it through as the allow list learned from it would, and the rule learned for port %d has no port, which admits TLS with its server_name and HTTP/1 with its Host only; this stream names no host egressd can check, so raw TCP there needs a rule naming the port, e.g. %s",
			where, port, policy.Target{Name: name, Port: port})
		dn.name = name
		return dn
	}
	rule := ""
	if d.Rule != nil {
		rule = " (" + d.Rule.Text
		if src := d.Rule.Source.String(); src != "" {
			rule += ", " + src
		}
		rule += ")"
	}
	dn := denyf(0, audit.ReasonUnidentified,
		"%s, which a rule without a port%s allows on %d for TLS with its server_name and HTTP/1 with its Host only; this stream names no host egressd can check, so raw TCP there needs a rule naming the port, e.g. %s",
		where, rule, port, policy.Target{Name: name, Port: port})
	dn.name = name
	return dn
}

// admitTunnel takes a per-destination slot for key and registers cc's
// decision basis b, so a reload re-decides it; the returned context ends
// when a reload denies it. On refusal it logs, resets the client and
// reports false. done releases what it took.
func (p *Proxy) admitTunnel(cc *clientConn, kind audit.Kind, target string, port uint16, key policy.Target, m *policy.Matcher, b *basis) (ctx context.Context, done func(), ok bool) {
	if !p.acquireDest(key) {
		dn := denyf(0, audit.ReasonMaxTunnelsPerDest, "%d tunnels open to %s (--max-tunnels-per-dest)", p.cfg.MaxTunnelsPerDest, key)
		p.logDenial(kind, target, port, cc.client, nil, dn)
		resetConn(cc.c)
		return nil, nil, false
	}
	life := new(lifetime)
	if dn := cc.decided(m, b, nil, life); dn != nil {
		life.end()
		p.releaseDest(key)
		p.logDenial(kind, target, port, cc.client, nil, dn)
		resetConn(cc.c)
		return nil, nil, false
	}
	return life, func() { life.end(); p.releaseDest(key) }, true
}

// transparentRaw serves a connection decided on its address. When its
// first bytes have not been seen yet (or not enough of them), they are
// judged when they come.
func (p *Proxy) transparentRaw(cc *clientConn, orig netip.AddrPort, prefix []byte, start time.Time) {
	c := cc.c
	addr, port := orig.Addr(), orig.Port()
	target := addr.String()
	m := p.cfg.Policy.Current()
	d, b, dn := p.decideRaw(m, orig)
	if dn != nil {
		if dn.reason == audit.ReasonUnidentified && classify(prefix) == streamH2C {
			dn.detail = h2cRefused + dn.detail
		}
		p.logDenial(audit.KindTCP, target, port, cc.client, nil, dn)
		resetConn(c)
		return
	}
	ctx, done, ok := p.admitTunnel(cc, audit.KindTCP, target, port, policy.Target{Addr: orig.Addr(), Port: orig.Port()}, m, b)
	if !ok {
		return
	}
	defer done()
	a := &allowed{kind: audit.KindTCP, target: target, name: b.name, port: port, client: cc.client, decision: d, start: start}
	up, _, tried, err := p.dialVetted(ctx, []netip.AddrPort{orig})
	a.addrs = tried
	if err != nil {
		p.refuseAfterAllow(cc, a, "", err, false)
		return
	}
	cc.setUpstream(up, addr)
	r := new(relay).start(p.pipes, c, up)
	if classify(prefix) == streamUnknown {
		if prefix == nil {
			prefix = cc.peekBuf() // silent so far: its first bytes are peeked when they come
		}
		var dn *denial
		prefix, dn = p.inspectLate(c, prefix, port, b.byAddr)
		if dn != nil {
			down := r.abort()
			if dn.reason == "" {
				p.finish(a, 0, down, cc.closedReasonOr("client sent nothing"))
				return
			}
			p.logDenial(audit.KindTCP, target, port, cc.client, a.addrs, dn)
			return
		}
		if classify(prefix) == streamHTTP {
			// HTTP that came late is still decided on its Host per
			// request (a raw relay would pass every request after the
			// first undecided): hand it to the HTTP path, unless the
			// upstream already spoke, which no HTTP server does.
			if !r.detach() {
				p.logDenial(audit.KindTCP, target, port, cc.client, a.addrs,
					denyf(0, audit.ReasonBadRequest, "HTTP request after the server spoke first"))
				resetConn(c)
				return
			}
			p.serveRequests(cc, cc.headReader(io.MultiReader(bytes.NewReader(prefix), c)), arrival{orig: orig})
			return
		}
	}
	cc.setRelaying(true)
	upN, downN, err := r.run(prefix, cc.releasePeekBuf)
	cc.setRelaying(false)
	p.finish(a, upN, downN, cc.closedReasonOr(errorText(err)))
}

// h2cRefused begins the explanation of a refused h2c stream.
const h2cRefused = "HTTP/2 with prior knowledge (h2c) is not decided stream by stream (use HTTPS, or HTTP/1.1); "

// inspectLate judges first bytes that came after a connection was let
// through on its address: a ClientHello's name must be allowed on the port
// too, so waiting out serverFirstWait does not skip the name check (HTTP
// goes back to the per-request path, see transparentRaw). When an allow IP
// rule let the connection through (byAddr), the name only has to be
// unblocked, as on the immediate path. Bytes still unclassified when due
// are refused. A denial with an empty reason means the client closed or
// idled out before sending anything.
func (p *Proxy) inspectLate(c net.Conn, prefix []byte, port uint16, byAddr bool) ([]byte, *denial) {
	prefix, err := awaitFirst(c, prefix, p.cfg.IdleTimeout, p.cfg.HeaderTimeout)
	if len(prefix) == 0 {
		return nil, &denial{detail: errorText(err)}
	}
	switch classify(prefix) {
	case streamUnknown:
		return nil, unclassified(len(prefix), err, p.cfg.HeaderTimeout)
	case streamTLS:
		var hello clientHello
		prefix, hello, err = readHello(c, prefix, time.Now().Add(p.cfg.HeaderTimeout))
		if err != nil {
			return nil, helloDenial(err)
		}
		if !hello.hasSNI {
			if !byAddr {
				return nil, denyf(0, audit.ReasonNoSNI, "TLS ClientHello without server_name, and no allow IP rule names the address")
			}
			return prefix, nil
		}
		name, ok := policy.NormalizeName(hello.serverName)
		if !ok {
			return nil, denyf(0, audit.ReasonBadHello, "server_name %q is not a valid host name", hello.serverName)
		}
		d := p.cfg.Policy.Current().DecideName(name, port)
		if !d.Allow && (!byAddr || d.Reason != policy.ReasonNoAllowRule) {
			return nil, denyDecision(d, "(TLS server_name "+name+")")
		}
	}
	return prefix, nil
}
