package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// The explicit listener: clients with HTTP_PROXY/HTTPS_PROXY set send
// "CONNECT host:port" or absolute-form plain-HTTP requests.

// serveExplicitConn serves one client connection: requests one after the
// other (each decided on its own, THREATS A7) until the client closes, a
// request is refused, or a CONNECT turns the connection into a tunnel.
func (p *Proxy) serveExplicitConn(cc *clientConn) {
	p.serveRequests(cc, bufio.NewReaderSize(cc.c, headReadBuffer), netip.AddrPort{})
}

// serveRequests reads requests from br one after the other (each decided
// on its own, THREATS A7) until the client closes, a request is refused,
// or a CONNECT turns the connection into a tunnel. orig is the original
// destination on the transparent listener, and invalid on the explicit
// one (where only CONNECT and absolute-form requests are served).
func (p *Proxy) serveRequests(cc *clientConn, br *bufio.Reader, orig netip.AddrPort) {
	c := cc.c
	for first := true; ; first = false {
		if !first {
			cc.setState(stateIdle)
			if p.isClosing() {
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(p.cfg.IdleTimeout))
			if _, err := br.Peek(1); err != nil {
				return
			}
			cc.setState(stateHead)
		}
		_ = c.SetReadDeadline(time.Now().Add(p.cfg.HeaderTimeout))
		raw, err := readRequestHead(br, maxHeadBytes)
		var h *requestHead
		if err == nil {
			h, err = parseRequestHead(raw)
		}
		if err != nil {
			p.refuseHead(cc, raw, br, err)
			return
		}
		_ = c.SetReadDeadline(time.Time{})
		if h.method == http.MethodConnect {
			if orig.IsValid() {
				d := denyf(http.StatusMethodNotAllowed, ReasonBadRequest, "CONNECT sent to %s, which is not a proxy", orig)
				p.logDenial(audit.KindConnect, h.target, 0, cc.client, nil, d)
				answerAndClose(c, h.target, d)
				return
			}
			p.handleConnect(cc, br, h)
			return
		}
		if !p.handleHTTP(cc, br, h, orig) {
			return
		}
	}
}

// refuseHead answers a head that could not be read or parsed: nothing for
// a client that closed or stayed silent between requests, 408 for a head
// not finished in time, 431 for one too large, 400 otherwise.
func (p *Proxy) refuseHead(cc *clientConn, raw []byte, br *bufio.Reader, err error) {
	if len(raw) == 0 && br.Buffered() == 0 && (errors.Is(err, io.EOF) || isTimeout(err)) {
		return
	}
	var d *denial
	switch {
	case isTimeout(err):
		d = denyf(http.StatusRequestTimeout, ReasonTimeout, "request head not complete within %s", p.cfg.HeaderTimeout)
	case errors.Is(err, errHeadTooLarge):
		d = denyf(http.StatusRequestHeaderFieldsTooLarge, ReasonBadRequest, "request head over %d bytes or a line over %d bytes", maxHeadBytes, headReadBuffer)
	default:
		var he *headError
		if !errors.As(err, &he) {
			return // the connection failed; nobody to answer
		}
		d = denyf(http.StatusBadRequest, ReasonBadRequest, "%s", he.msg)
	}
	kind := audit.KindHTTP
	if strings.HasPrefix(string(raw), "CONNECT ") {
		kind = audit.KindConnect
	}
	p.logDenial(kind, "", 0, cc.client, nil, d)
	answerAndClose(cc.c, "", d)
}

// handleConnect serves a CONNECT: decide on host and port, dial a vetted
// address, answer 200, then check the client's first bytes: a TLS
// ClientHello must name the CONNECT host (THREATS A1, E1-E3). Non-TLS bytes
// pass: the host:port decision was made before the sniff (A5).
func (p *Proxy) handleConnect(cc *clientConn, br *bufio.Reader, h *requestHead) {
	start := time.Now()
	c := cc.c
	t, err := parseAuthority(h.target)
	if err != nil {
		d := &denial{status: http.StatusBadRequest, reason: string(policy.ReasonInvalidName), detail: err.Error()}
		p.logDenial(audit.KindConnect, h.target, 0, cc.client, nil, d)
		answerAndClose(c, h.target, d)
		return
	}
	host, target := hostOf(t), t.String()
	m := p.cfg.Policy.Current()
	d := m.Decide(t)
	if !d.Allow {
		dn := denyDecision(d, "")
		if t.Addr.IsValid() {
			dn = denyAddr(d, t.Addr)
		}
		p.logDenial(audit.KindConnect, host, t.Port, cc.client, nil, dn)
		answerAndClose(c, target, dn)
		return
	}
	key := t.String()
	if !p.acquireDest(key) {
		dn := denyf(http.StatusServiceUnavailable, ReasonDestLimit, "%d tunnels open to %s (max_tunnels_per_destination)", p.cfg.MaxTunnelsPerDest, key)
		p.logDenial(audit.KindConnect, host, t.Port, cc.client, nil, dn)
		answerAndClose(c, target, dn)
		return
	}
	defer p.releaseDest(key)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := &basis{name: t.Name, addr: t.Addr, port: t.Port, byAddr: t.Addr.IsValid()}
	if dn := cc.decided(m, b, nil, cancel); dn != nil {
		p.logDenial(audit.KindConnect, host, t.Port, cc.client, nil, dn)
		answerAndClose(c, target, dn)
		return
	}
	a := &allowed{kind: audit.KindConnect, target: host, port: t.Port, client: cc.client, decision: d, start: start}
	// An inspected name gets no tunnel: egressd dials per request (inspect.go).
	var r *relay
	if !m.Inspects(t.Name, t.Port) {
		up, ap, tried, err := p.dialTarget(ctx, m, t, netip.Addr{})
		a.addrs = tried
		if err != nil {
			p.refuseAfterAllow(cc, a, target, err, true)
			return
		}
		cc.setUpstream(up, ap.Addr())
		r = startRelay(c, up)
	}

	// The client may already have sent bytes after its CONNECT (they sit in
	// br). They were not forwarded and will not be before they are judged
	// with the rest of the first bytes.
	prefix := make([]byte, br.Buffered(), max(br.Buffered(), 4096))
	_, _ = io.ReadFull(br, prefix)
	_ = c.SetWriteDeadline(time.Now().Add(p.cfg.HeaderTimeout))
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		r.abort()
		p.finish(a, 0, 0, "writing 200 to the client: "+err.Error())
		return
	}
	_ = c.SetWriteDeadline(time.Time{})

	prefix, dn := p.checkConnectStream(cc, prefix, t)
	if dn != nil {
		down := r.abort()
		if r == nil {
			resetConn(c) // an inspected name: no tunnel was dialled
		}
		if dn.reason == "" { // client went away before sending anything
			p.finish(a, 0, down, cc.closedReasonOr("client sent nothing"))
			return
		}
		p.logDenial(audit.KindConnect, host, t.Port, cc.client, a.addrs, dn)
		return
	}
	if p.inspectTLS(ctx, m, cc, r, prefix, a, cc.tlsName(), t, netip.Addr{}) {
		return // the name is inspected: egressd terminated the TLS (inspect.go)
	}
	cc.setRelaying(true)
	upN, downN, err := r.run(prefix)
	cc.setRelaying(false)
	p.finish(a, upN, downN, cc.closedReasonOr(errorText(err)))
}

// checkConnectStream waits for the client's first bytes in an allowed
// tunnel and judges them. A denial with an empty reason means the client
// closed or idled out before sending anything.
func (p *Proxy) checkConnectStream(cc *clientConn, prefix []byte, t policy.Target) ([]byte, *denial) {
	c := cc.c
	if len(prefix) == 0 {
		// One read tells TLS from the rest; nothing else is classified here.
		buf := make([]byte, 4096)
		_ = c.SetReadDeadline(time.Now().Add(p.cfg.IdleTimeout))
		n, err := c.Read(buf)
		_ = c.SetReadDeadline(time.Time{})
		if n == 0 {
			return nil, &denial{detail: errorText(err)}
		}
		prefix = buf[:n]
	}
	if !looksLikeTLS(prefix) {
		return prefix, nil // not TLS: the host:port decision stands (A5)
	}
	prefix, hello, err := readHello(c, prefix, time.Now().Add(p.cfg.HeaderTimeout))
	if err != nil {
		return nil, helloDenial(err)
	}
	m := p.cfg.Policy.Current()
	if !hello.hasSNI {
		if t.Addr.IsValid() {
			return prefix, nil // an IP target, allowed by an IP rule: no name expected (E1)
		}
		return nil, denyf(http.StatusForbidden, ReasonNoSNI, "TLS ClientHello without server_name in a tunnel to %s", t.Name)
	}
	name, ok := policy.NormalizeName(hello.serverName)
	if !ok {
		return nil, denyf(http.StatusForbidden, ReasonBadHello, "server_name %q is not a valid host name", hello.serverName)
	}
	if t.Addr.IsValid() {
		// An IP target has no name to match; the SNI must still not be
		// blocked (block wins).
		if d := m.DecideName(name, t.Port); !d.Allow && d.Reason != policy.ReasonNoAllowRule {
			return nil, denyDecision(d, "(TLS server_name "+name+")")
		}
		cc.setSNI(name)
		return prefix, nil
	}
	if name != t.Name {
		return nil, denyf(http.StatusForbidden, ReasonSNIMismatch, "TLS server_name %s in a tunnel to %s", name, t.Name)
	}
	if d := m.DecideName(name, t.Port); !d.Allow {
		return nil, denyDecision(d, "")
	}
	return prefix, nil
}

// refuseAfterAllow handles a failure between an allow and the tunnel: a
// policy denial of every resolved address (guard, block IP rule, self) is
// a denial; a resolver or dial failure is an allowed request that failed.
// With answer false (transparent TLS and TCP) the client gets a reset.
func (p *Proxy) refuseAfterAllow(cc *clientConn, a *allowed, target string, err error, answer bool) {
	dn, ok := asDenial(err)
	if !ok {
		dn = upstreamFailure(err)
	}
	if why := cc.closedReason(); why != "" {
		p.finish(a, 0, 0, why)
		return
	}
	switch dn.reason {
	case ReasonUpstream, ReasonResolve:
		p.finish(a, 0, 0, dn.text())
	default:
		p.logDenial(a.kind, a.target, a.port, a.client, a.addrs, dn)
	}
	if !answer {
		resetConn(cc.c)
		return
	}
	answerAndClose(cc.c, target, dn)
}

// hostOf is the audit target of t: the name, or the IP literal.
func hostOf(t policy.Target) string {
	if t.Name != "" {
		return t.Name
	}
	return t.Addr.String()
}
