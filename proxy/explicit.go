package proxy

import (
	"bufio"
	"bytes"
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
	p.serveRequests(cc, cc.headReader(cc.c), arrival{})
}

// arrival is where plain-HTTP requests came in, which says what they may
// name. The zero value is the explicit listener: CONNECT and absolute-form
// requests.
type arrival struct {
	// orig is the original destination of a transparent connection;
	// invalid otherwise.
	orig netip.AddrPort
	// tunnel is the target of the allowed CONNECT tunnel the requests came
	// through (origin-form, and each Host must name it); zero otherwise.
	tunnel policy.Target
}

// inTunnel reports whether the requests came through a CONNECT tunnel.
func (a arrival) inTunnel() bool { return a.tunnel != policy.Target{} }

// serveRequests reads requests from br one after the other (each decided
// on its own, THREATS A7) until the client closes, a request is refused,
// or a CONNECT turns the connection into a tunnel. arr says which listener
// or tunnel they came through.
func (p *Proxy) serveRequests(cc *clientConn, br *bufio.Reader, arr arrival) {
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
		var h requestHead // on the stack for a CONNECT (handleHTTP gets a copy)
		if err == nil {
			err = h.parse(raw)
		}
		if err != nil {
			p.refuseHead(cc, raw, br, err)
			return
		}
		_ = c.SetReadDeadline(time.Time{})
		if h.major != 1 {
			// "GET / HTTP/2.0", "PRI * HTTP/2.0" after an h2c upgrade
			// attempt: not HTTP/1, so not decided or forwarded as such.
			d := denyf(http.StatusHTTPVersionNotSupported, audit.ReasonBadRequest, "%s request line: only HTTP/1.x requests are served (h2c is refused)", h.proto)
			target := h.target
			if h.hasHost {
				target = h.host
			}
			p.logDenial(audit.KindHTTP, target, 0, cc.client, nil, d)
			answerAndClose(c, target, d)
			return
		}
		if h.method == http.MethodConnect {
			switch {
			case arr.orig.IsValid():
				d := denyf(http.StatusMethodNotAllowed, audit.ReasonBadRequest, "CONNECT sent to %s, which is not a proxy", arr.orig)
				p.logDenial(audit.KindConnect, h.target, 0, cc.client, nil, d)
				answerAndClose(c, h.target, d)
				return
			case arr.inTunnel():
				d := denyf(http.StatusMethodNotAllowed, audit.ReasonBadRequest, "CONNECT inside a CONNECT tunnel to %s", arr.tunnel)
				p.logDenial(audit.KindConnect, h.target, 0, cc.client, nil, d)
				answerAndClose(c, h.target, d)
				return
			}
			p.handleConnect(cc, br, &h)
			return
		}
		hh := h
		if !p.handleHTTP(cc, br, &hh, arr) {
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
		d = denyf(http.StatusRequestTimeout, audit.ReasonHeaderTimeout, "request head not complete within %s", p.cfg.HeaderTimeout)
	case errors.Is(err, errHeadTooLarge):
		d = denyf(http.StatusRequestHeaderFieldsTooLarge, audit.ReasonBadRequest, "request head over %d bytes or a line over %d bytes", maxHeadBytes, headReadBuffer)
	default:
		var he *headError
		if !errors.As(err, &he) {
			return // the connection failed; nobody to answer
		}
		d = denyf(http.StatusBadRequest, audit.ReasonBadRequest, "%s", he.msg)
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
		d := &denial{status: http.StatusBadRequest, reason: audit.ReasonInvalidName, detail: err.Error()}
		p.logDenial(audit.KindConnect, h.target, 0, cc.client, nil, d)
		answerAndClose(c, h.target, d)
		return
	}
	m := p.cfg.Policy.Current()
	d := m.Decide(t)
	if !d.Allow {
		dn := denyDecision(d, "")
		if t.Addr.IsValid() {
			dn = denyAddr(d, t.Addr)
		}
		p.logDenial(audit.KindConnect, hostOf(t), t.Port, cc.client, nil, dn)
		answerAndClose(c, t.String(), dn)
		return
	}
	if !p.acquireDest(t) {
		dn := denyf(http.StatusServiceUnavailable, audit.ReasonMaxTunnelsPerDest, "%d tunnels open to %s (--max-tunnels-per-dest)", p.cfg.MaxTunnelsPerDest, t)
		p.logDenial(audit.KindConnect, hostOf(t), t.Port, cc.client, nil, dn)
		answerAndClose(c, t.String(), dn)
		return
	}
	defer p.releaseDest(t)

	// What the tunnel's decision was made on, what its record will say,
	// its relay and its lifetime, in one allocation.
	st := &struct {
		basis
		allowed
		relay relay
		life  lifetime
		// dialable holds the vetted addresses (an IP literal, or a name's
		// first few), so the record's tried list is no allocation.
		dialable [4]netip.AddrPort
	}{
		basis: basis{name: t.Name, addr: t.Addr, port: t.Port, byAddr: t.Addr.IsValid()},
		// An IP-literal target goes to the record as the address: the
		// audit writer renders it (no text per tunnel).
		allowed: allowed{kind: audit.KindConnect, target: t.Name, targetAddr: t.Addr, port: t.Port, client: cc.client, decision: d, start: start},
	}
	b, a, ctx := &st.basis, &st.allowed, &st.life
	defer ctx.end()
	if dn := cc.decided(m, b, nil, ctx); dn != nil {
		p.logDenial(audit.KindConnect, a.targetText(), t.Port, cc.client, nil, dn)
		answerAndClose(c, t.String(), dn)
		return
	}
	// An inspected name gets no tunnel: egressd dials per request (inspect.go).
	var r *relay
	if !m.Inspects(t.Name, t.Port) {
		up, ap, tried, err := p.dialTarget(ctx, m, t, netip.Addr{}, st.dialable[:0])
		a.addrs = tried
		if err != nil {
			p.refuseAfterAllow(cc, a, t.String(), err, true)
			return
		}
		cc.setUpstream(up, ap.Addr())
		r = st.relay.start(p.pipes, c, up)
	}

	// The client may already have sent bytes after its CONNECT (they sit in
	// br). They were not forwarded and will not be before they are judged
	// with the rest of the first bytes. The head reader is done with.
	prefix := cc.peekBuf()
	if n := br.Buffered(); n > 0 {
		if n > cap(prefix) {
			prefix = make([]byte, 0, n)
		}
		prefix = prefix[:n]
		_, _ = io.ReadFull(br, prefix)
	}
	cc.releaseHeadReader()
	_ = c.SetWriteDeadline(time.Now().Add(p.cfg.HeaderTimeout))
	if _, err := c.Write(connectEstablished); err != nil {
		r.abort()
		p.finish(a, 0, 0, "writing 200 to the client: "+err.Error())
		return
	}
	_ = c.SetWriteDeadline(time.Time{})

	prefix, kind, dn := p.checkConnectStream(cc, prefix, t)
	if dn != nil {
		down := r.abort()
		if r == nil {
			resetConn(c) // an inspected name: no tunnel was dialled
		}
		if dn.reason == "" { // client went away before sending anything
			p.finish(a, 0, down, cc.closedReasonOr("client sent nothing"))
			return
		}
		p.logDenial(audit.KindConnect, a.targetText(), t.Port, cc.client, a.addrs, dn)
		return
	}
	if kind == streamHTTP {
		// Plain HTTP in the tunnel: decided per request, each Host must
		// name the tunnel's target, each request forwarded like an
		// absolute-form one (a splice would pass every request after the
		// first undecided). No HTTP server speaks first.
		if r != nil && !r.detach() {
			p.logDenial(audit.KindConnect, a.targetText(), t.Port, cc.client, a.addrs,
				denyf(0, audit.ReasonBadRequest, "HTTP request after the server spoke first"))
			resetConn(c)
			return
		}
		p.serveRequests(cc, cc.headReader(io.MultiReader(bytes.NewReader(prefix), c)), arrival{tunnel: t})
		p.finish(a, 0, 0, cc.closedReason())
		return
	}
	if p.inspectTLS(ctx, m, cc, r, prefix, a, cc.tlsName(), t, netip.Addr{}) {
		return // the name is inspected: egressd terminated the TLS (inspect.go)
	}
	cc.setRelaying(true)
	upN, downN, err := r.run(prefix, cc.releasePeekBuf)
	cc.setRelaying(false)
	p.finish(a, upN, downN, cc.closedReasonOr(errorText(err)))
}

// connectEstablished is the answer to an allowed CONNECT.
var connectEstablished = []byte("HTTP/1.1 200 Connection established\r\n\r\n")

// checkConnectStream waits for the client's first bytes in an allowed
// tunnel and judges them (the table in doc.go): a TLS ClientHello must name
// the CONNECT host; HTTP/1 is returned for the caller to decide per
// request; h2c and other bytes pass only where the CONNECT admits raw TCP
// (an IP target an allow IP rule admitted, or a name a rule naming the
// port allows: THREATS A5); bytes still unclassified when due are refused.
// A denial with an empty reason means the client closed or idled out
// before sending anything.
func (p *Proxy) checkConnectStream(cc *clientConn, prefix []byte, t policy.Target) ([]byte, streamKind, *denial) {
	c := cc.c
	prefix, err := awaitFirst(c, prefix, p.cfg.IdleTimeout, p.cfg.HeaderTimeout)
	if len(prefix) == 0 {
		return nil, streamUnknown, &denial{detail: errorText(err)}
	}
	kind := classify(prefix)
	switch kind {
	case streamUnknown:
		return nil, kind, unclassified(len(prefix), err, p.cfg.HeaderTimeout)
	case streamHTTP:
		return prefix, kind, nil
	case streamH2C, streamOther:
		if t.Addr.IsValid() {
			return prefix, kind, nil // an IP target: its allow IP rule admits raw TCP
		}
		if _, dn := decideRawName(p.cfg.Policy.Current(), t.Name, t.Port, "a CONNECT tunnel to "+t.Name); dn != nil {
			if kind == streamH2C && dn.reason == audit.ReasonUnidentified {
				dn.detail = h2cRefused + dn.detail
			}
			return nil, kind, dn
		}
		cc.setRaw()
		return prefix, kind, nil
	}
	prefix, hello, err := readHello(c, prefix, time.Now().Add(p.cfg.HeaderTimeout))
	if err != nil {
		return nil, kind, helloDenial(err)
	}
	m := p.cfg.Policy.Current()
	if !hello.hasSNI {
		if t.Addr.IsValid() {
			return prefix, kind, nil // an IP target, allowed by an IP rule: no name expected (E1)
		}
		return nil, kind, denyf(0, audit.ReasonNoSNI, "TLS ClientHello without server_name in a tunnel to %s", t.Name)
	}
	name, ok := policy.NormalizeName(hello.serverName)
	if !ok {
		return nil, kind, denyf(0, audit.ReasonBadHello, "server_name %q is not a valid host name", hello.serverName)
	}
	if t.Addr.IsValid() {
		// An IP target has no name to match; the SNI must still not be
		// blocked (block wins).
		if d := m.DecideName(name, t.Port); !d.Allow && d.Reason != policy.ReasonNoAllowRule {
			return nil, kind, denyDecision(d, "(TLS server_name "+name+")")
		}
		cc.setSNI(name)
		return prefix, kind, nil
	}
	if name != t.Name {
		return nil, kind, denyf(0, audit.ReasonSNIMismatch, "TLS server_name %s in a tunnel to %s", name, t.Name)
	}
	if d := m.DecideName(name, t.Port); !d.Allow {
		return nil, kind, denyDecision(d, "")
	}
	return prefix, kind, nil
}

// refuseAfterAllow handles a failure between an allow and the tunnel: a
// policy refusal of every resolved address (guard, block IP rule, self, a
// blocked CNAME target) is a denial; a resolver or dial failure an error
// (logFailure). With answer false (transparent TLS and TCP) the client gets
// a reset.
func (p *Proxy) refuseAfterAllow(cc *clientConn, a *allowed, target string, err error, answer bool) {
	dn, ok := asDenial(err)
	if !ok {
		dn = upstreamFailure(err)
	}
	if why := cc.closedReason(); why != "" {
		p.finish(a, 0, 0, why)
		return
	}
	p.logFailure(a, dn)
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
