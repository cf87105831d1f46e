package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// The transparent listener: every TCP connection of the sandbox lands here
// through the firewall's REDIRECT. The original destination comes from
// conntrack; the first bytes say how to decide:
//
//	TLS with SNI   → decide on the name at the original port, dial the
//	                 name's own vetted resolution (THREATS A3)
//	HTTP           → decide on Host per request, dial its vetted resolution
//	TLS w/o SNI    → allowed only if an allow IP rule names the address
//	                 (THREATS E1; a learned address is not enough)
//	anything else  → allowed only if the original address was learned from
//	                 an allowed DNS answer for a name allowed on that port,
//	                 or an allow IP rule names it
//
// Denials reset the connection (plain HTTP gets a readable 403).

// serverFirstWait is how long a connection that has sent nothing may wait
// before the raw-TCP rule lets it through, for protocols where the server
// speaks first (SMTP, MySQL, IMAP). Its first bytes, when they come, are
// still judged (inspectLate). A connection the raw rule denies keeps
// waiting for its first bytes, up to HeaderTimeout.
const serverFirstWait = 300 * time.Millisecond

// serveTransparentConn serves one redirected connection.
func (p *Proxy) serveTransparentConn(cc *clientConn) {
	orig, err := p.origDst(cc.c)
	if err != nil {
		p.log.Warn("proxy: transparent connection without an original destination", "client", cc.client, "err", err)
		p.logDenial(audit.KindTCP, "", 0, cc.client, nil, denyf(0, ReasonBadRequest, "%v", err))
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
		d := denyf(0, ReasonSelf, "%s is egressd's own listener", orig)
		p.logDenial(audit.KindTCP, orig.Addr().String(), orig.Port(), cc.client, nil, d)
		resetConn(cc.c)
		return
	}
	start := time.Now()
	buf, err := readFirst(cc.c, make([]byte, 0, 4096), start.Add(min(serverFirstWait, p.cfg.HeaderTimeout)))
	if len(buf) == 0 {
		if err != nil && !isTimeout(err) {
			return // the client left without a word
		}
		if _, _, dn := p.decideRaw(p.cfg.Policy.Current(), orig); dn == nil {
			p.transparentRaw(cc, orig, nil, start)
			return
		}
		buf, err = readFirst(cc.c, buf, start.Add(p.cfg.HeaderTimeout))
		if len(buf) == 0 && err != nil && !isTimeout(err) {
			return
		}
	}
	switch classify(buf) {
	case streamTLS:
		p.transparentTLS(cc, orig, buf, start)
	case streamHTTP:
		br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(buf), cc.c), headReadBuffer)
		p.serveRequests(cc, br, orig)
	default:
		p.transparentRaw(cc, orig, buf, start)
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
				denyf(0, ReasonNoSNI, "TLS ClientHello without server_name to %s, which no allow IP rule names", orig))
			resetConn(c)
			return
		}
		p.transparentRaw(cc, orig, prefix, start)
		return
	}
	name, ok := policy.NormalizeName(hello.serverName)
	if !ok {
		d := denyf(0, ReasonBadHello, "server_name %q is not a valid host name", hello.serverName)
		p.logDenial(audit.KindTLS, orig.Addr().String(), port, cc.client, nil, d)
		resetConn(c)
		return
	}
	m := p.cfg.Policy.Current()
	d := m.DecideName(name, port)
	dial := policy.Target{Name: name, Port: port}
	b := &basis{name: name, port: port}
	if !d.Allow && d.Reason == policy.ReasonNoAllowRule {
		// A name no rule allows, sent to an address an allow IP rule names:
		// the IP rule allows the address whatever it serves.
		if da := m.DecideAddr(orig.Addr(), port); da.Allow {
			d, dial = da, policy.Target{Addr: orig.Addr(), Port: port}
			b = &basis{sni: name, addr: orig.Addr(), port: port, byAddr: true}
		}
	}
	if !d.Allow {
		p.logDenial(audit.KindTLS, name, port, cc.client, nil, denyDecision(d, ""))
		resetConn(c)
		return
	}
	ctx, done, ok := p.admitTunnel(cc, audit.KindTLS, name, port, dial.String(), m, b)
	if !ok {
		return
	}
	defer done()
	a := &allowed{kind: audit.KindTLS, target: name, port: port, client: cc.client, decision: d, start: start}
	if p.inspectTLS(ctx, m, cc, nil, prefix, a, name, dial, orig.Addr()) {
		return // the name is inspected: egressd terminates the TLS (inspect.go)
	}
	up, ap, tried, err := p.dialTarget(ctx, m, dial, orig.Addr())
	a.addrs = tried
	if err != nil {
		p.refuseAfterAllow(cc, a, "", err, false)
		return
	}
	cc.setUpstream(up, ap.Addr())
	r := startRelay(c, up)
	cc.setRelaying(true)
	upN, downN, err := r.run(prefix)
	cc.setRelaying(false)
	p.finish(a, upN, downN, cc.closedReasonOr(errorText(err)))
}

// decideRaw decides a connection with no name to go by: allowed when the
// original address was learned for a name allowed on the port (and passes
// the guard), or when an allow IP rule names it.
func (p *Proxy) decideRaw(m *policy.Matcher, orig netip.AddrPort) (policy.Decision, *basis, *denial) {
	addr, port := orig.Addr(), orig.Port()
	var first *denial
	if p.cfg.Learned != nil {
		for _, n := range p.cfg.Learned.LearnedNames(addr) {
			d := m.DecideName(n, port)
			if !d.Allow {
				if first == nil {
					first = denyDecision(d, "(learned name "+n+")")
				}
				continue
			}
			if g := m.GuardAddr(addr, port); !g.Allow {
				return policy.Decision{}, nil, denyAddr(g, addr)
			}
			return d, &basis{name: n, addr: addr, port: port}, nil
		}
	}
	d := m.DecideAddr(addr, port)
	if d.Allow {
		return d, &basis{addr: addr, port: port, byAddr: true}, nil
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

// admitTunnel takes a per-destination slot for key and registers cc's
// decision basis b, so a reload re-decides it; the returned context ends
// when a reload denies it. On refusal it logs, resets the client and
// reports false. done releases what it took.
func (p *Proxy) admitTunnel(cc *clientConn, kind audit.Kind, target string, port uint16, key string, m *policy.Matcher, b *basis) (ctx context.Context, done func(), ok bool) {
	if !p.acquireDest(key) {
		dn := denyf(0, ReasonDestLimit, "%d tunnels open to %s (max_tunnels_per_destination)", p.cfg.MaxTunnelsPerDest, key)
		p.logDenial(kind, target, port, cc.client, nil, dn)
		resetConn(cc.c)
		return nil, nil, false
	}
	ctx, cancel := context.WithCancel(context.Background())
	if dn := cc.decided(m, b, nil, cancel); dn != nil {
		cancel()
		p.releaseDest(key)
		p.logDenial(kind, target, port, cc.client, nil, dn)
		resetConn(cc.c)
		return nil, nil, false
	}
	return ctx, func() { cancel(); p.releaseDest(key) }, true
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
		p.logDenial(audit.KindTCP, target, port, cc.client, nil, dn)
		resetConn(c)
		return
	}
	ctx, done, ok := p.admitTunnel(cc, audit.KindTCP, target, port, orig.String(), m, b)
	if !ok {
		return
	}
	defer done()
	a := &allowed{kind: audit.KindTCP, target: target, port: port, client: cc.client, decision: d, start: start}
	up, _, tried, err := p.dialVetted(ctx, []netip.AddrPort{orig})
	a.addrs = tried
	if err != nil {
		p.refuseAfterAllow(cc, a, "", err, false)
		return
	}
	cc.setUpstream(up, addr)
	r := startRelay(c, up)
	if classify(prefix) == streamUnknown {
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
					denyf(0, ReasonBadRequest, "HTTP request after the server spoke first"))
				resetConn(c)
				return
			}
			br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(prefix), c), headReadBuffer)
			p.serveRequests(cc, br, orig)
			return
		}
	}
	cc.setRelaying(true)
	upN, downN, err := r.run(prefix)
	cc.setRelaying(false)
	p.finish(a, upN, downN, cc.closedReasonOr(errorText(err)))
}

// inspectLate judges first bytes that came after a connection was let
// through on its address: a ClientHello's name or an HTTP request's Host
// must be allowed on the port too, so waiting out serverFirstWait does not
// skip the name check. When an allow IP rule let the connection through
// (byAddr), the name only has to be unblocked, as on the immediate path. A
// denial with an empty reason means the client closed or idled out before
// sending anything.
func (p *Proxy) inspectLate(c net.Conn, prefix []byte, port uint16, byAddr bool) ([]byte, *denial) {
	refused := func(d policy.Decision) bool {
		return !d.Allow && (!byAddr || d.Reason != policy.ReasonNoAllowRule)
	}
	var err error
	if len(prefix) == 0 {
		prefix, err = readFirst(c, prefix, time.Now().Add(p.cfg.IdleTimeout))
		if len(prefix) == 0 {
			return nil, &denial{detail: errorText(err)}
		}
	}
	if classify(prefix) == streamUnknown {
		prefix, _ = readFirst(c, prefix, time.Now().Add(p.cfg.HeaderTimeout))
	}
	m := p.cfg.Policy.Current()
	switch classify(prefix) {
	case streamTLS:
		var hello clientHello
		prefix, hello, err = readHello(c, prefix, time.Now().Add(p.cfg.HeaderTimeout))
		if err != nil {
			return nil, helloDenial(err)
		}
		if !hello.hasSNI {
			if !byAddr {
				return nil, denyf(0, ReasonNoSNI, "TLS ClientHello without server_name, and no allow IP rule names the address")
			}
			return prefix, nil
		}
		name, ok := policy.NormalizeName(hello.serverName)
		if !ok {
			return nil, denyf(0, ReasonBadHello, "server_name %q is not a valid host name", hello.serverName)
		}
		if d := m.DecideName(name, port); refused(d) {
			return nil, denyDecision(d, "(TLS server_name "+name+")")
		}
	case streamHTTP:
		var h *requestHead
		prefix, h, err = readHead(c, prefix, time.Now().Add(p.cfg.HeaderTimeout))
		if err != nil {
			return nil, denyf(http.StatusBadRequest, ReasonBadRequest, "%v", err)
		}
		if h.hasHost {
			t, err := parseHostHeader(h.host, port)
			if err != nil {
				return nil, &denial{reason: string(policy.ReasonInvalidName), detail: err.Error()}
			}
			if d := m.Decide(t); refused(d) {
				return nil, denyDecision(d, "(HTTP Host "+t.String()+")")
			}
		}
	}
	return prefix, nil
}
