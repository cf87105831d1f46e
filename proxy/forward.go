package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// Plain-HTTP forwarding, shared by the explicit listener (absolute-form
// requests) and the transparent one (origin-form requests with Host).
// Every request is decided on its own. Requests are rebuilt from the
// parsed head: origin-form target, Host from the canonical target,
// hop-by-hop, Proxy-* and Upgrade headers removed, body re-framed. The
// upstream connection pool is keyed by the vetted origin ("name:port" or
// "ip:port"), so a connection dialled for one host never carries a request
// for another (THREATS A7).

// preferKey is the context key of a transparent client's original
// address: when it is among a name's vetted addresses it is dialled first.
type preferKey struct{}

// newTransport is the upstream HTTP client: no proxy from the environment,
// no HTTP/2, no automatic compression, every connection from the vetted
// dialer.
func (p *Proxy) newTransport() *http.Transport {
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            p.dialForTransport,
		ForceAttemptHTTP2:      false,
		TLSNextProto:           map[string]func(string, *tls.Conn) http.RoundTripper{},
		DisableCompression:     true,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    8,
		IdleConnTimeout:        90 * time.Second,
		ResponseHeaderTimeout:  p.cfg.IdleTimeout,
		MaxResponseHeaderBytes: 64 << 10,
	}
}

// dialForTransport dials the pool key addr ("name:port" or "ip:port"),
// vetting it under the matcher in force.
func (p *Proxy) dialForTransport(ctx context.Context, _, addr string) (net.Conn, error) {
	t, err := policy.ParseTarget(addr, 80)
	if err != nil {
		return nil, &denial{status: http.StatusBadRequest, reason: audit.ReasonInvalidName, detail: err.Error()}
	}
	prefer, _ := ctx.Value(preferKey{}).(netip.Addr)
	c, _, _, err := p.dialTarget(ctx, p.cfg.Policy.Current(), t, prefer, nil)
	if err != nil {
		return nil, err
	}
	return p.countUpstream(c), nil
}

// handleHTTP decides and forwards one plain-HTTP request. It reports
// whether the client connection may carry another request. arr says which
// listener or tunnel it came through.
func (p *Proxy) handleHTTP(cc *clientConn, br *bufio.Reader, h *requestHead, arr arrival) bool {
	start := time.Now()
	c := cc.c
	orig := arr.orig
	t, path, dn := httpTarget(h, arr)
	if dn != nil {
		// Name the host the request asked for where Host says it (the
		// transparent listener, a tunnel), else the request-target.
		target, port := h.target, uint16(0)
		if h.hasHost && (orig.IsValid() || arr.inTunnel()) {
			target, port = h.host, orig.Port()
			if arr.inTunnel() {
				port = arr.tunnel.Port
			}
		}
		p.logDenial(audit.KindHTTP, target, port, cc.client, nil, dn)
		answerAndClose(c, target, dn)
		return false
	}
	host, target := hostOf(t), t.String()
	m := p.cfg.Policy.Current()
	d := m.Decide(t)
	dial := t
	b := &basis{name: t.Name, addr: t.Addr, port: t.Port, byAddr: t.Addr.IsValid()}
	if (!d.Allow || d.WouldDeny) && orig.IsValid() && t.Name != "" && d.Reason == policy.ReasonNoAllowRule {
		// As for TLS: an address an allow IP rule names may be reached
		// whatever Host says, as long as no block rule names the host.
		if da := m.DecideAddr(orig.Addr(), orig.Port()); da.Allow && !da.WouldDeny {
			d, dial = da, policy.Target{Addr: orig.Addr(), Port: orig.Port()}
			b = &basis{sni: t.Name, addr: orig.Addr(), port: orig.Port(), byAddr: true}
		}
	}
	if !d.Allow {
		dn := denyDecision(d, "")
		if t.Addr.IsValid() {
			dn = denyAddr(d, t.Addr)
		}
		p.logDenial(audit.KindHTTP, host, t.Port, cc.client, nil, dn)
		answerAndClose(c, target, dn)
		return false
	}
	path, dn = checkPlainRequest(m, t, h, path) // placeholders, inspected hosts' rules (inspect.go)
	if dn != nil {
		p.logDenial(audit.KindHTTP, host, t.Port, cc.client, nil, dn)
		answerAndClose(c, target, dn)
		return false
	}
	u, err := url.ParseRequestURI(path)
	if err != nil {
		dn := denyf(http.StatusBadRequest, audit.ReasonBadRequest, "request-target: %v", err)
		p.logDenial(audit.KindHTTP, host, t.Port, cc.client, nil, dn)
		answerAndClose(c, target, dn)
		return false
	}
	u.Scheme, u.Host = "http", dial.String() // the pool key: the vetted origin
	key := dial
	if !p.acquireDest(key) {
		dn := denyf(http.StatusServiceUnavailable, audit.ReasonMaxTunnelsPerDest, "%d requests open to %s (--max-tunnels-per-dest)", p.cfg.MaxTunnelsPerDest, key)
		p.logDenial(audit.KindHTTP, host, t.Port, cc.client, nil, dn)
		answerAndClose(c, target, dn)
		return false
	}
	defer p.releaseDest(key)

	life := new(lifetime)
	defer life.end()
	if dn := cc.decided(m, b, nil, life); dn != nil {
		p.logDenial(audit.KindHTTP, host, t.Port, cc.client, nil, dn)
		answerAndClose(c, target, dn)
		return false
	}
	defer cc.undecided()
	a := &allowed{kind: audit.KindHTTP, target: host, port: t.Port, client: cc.client, decision: d, start: start}
	cw := &clientWriter{c: c, idle: p.cfg.IdleTimeout}
	body := newRequestBody(br, h, c, cw, p.cfg.IdleTimeout)
	if body != nil {
		cc.shareBuffers() // the transport's goroutines read the body through br
	}
	out := &http.Request{
		Method:     h.method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     forwardHeader(h.header),
		Host:       hostHeaderFor(t, 80),
	}
	if body != nil {
		// Scanned for a placeholder sent here and a _method form field (requestscan.go).
		out.Body, out.ContentLength = scanRequestBody(body, m, m.Inspection(t.Name, t.Port), host, h.method, h.header), h.contentLength
	}
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if ap, err := netip.ParseAddrPort(info.Conn.RemoteAddr().String()); err == nil {
			a.addrs = []netip.AddrPort{ap}
			cc.setAddr(ap.Addr().Unmap())
		}
	}}
	ctx := httptrace.WithClientTrace(life, trace)
	if orig.IsValid() {
		ctx = context.WithValue(ctx, preferKey{}, orig.Addr())
	}
	cc.setRelaying(true) // the idle watchdog covers the exchange
	defer cc.setRelaying(false)
	resp, err := p.transport.RoundTrip(out.WithContext(ctx))
	if err != nil {
		cw.begin()
		if why := cc.closedReason(); why != "" {
			p.finish(a, body.count(), 0, why)
			return false
		}
		dn, ok := asDenial(err)
		if !ok {
			dn = upstreamFailure(err)
		}
		p.logFailure(a, dn)
		answerAndClose(c, target, dn)
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		cw.begin()
		dn := denyf(http.StatusBadGateway, audit.ReasonUpstreamError, "upstream switched protocols on a request without Upgrade")
		p.logFailure(a, dn)
		answerAndClose(c, target, dn)
		return false
	}
	keep := h.keepAlive && !p.isClosing()
	n, keep, werr := cw.writeResponse(resp, h, keep)
	if !body.done() {
		keep = false // the request body was not all read: the stream is out of step
	}
	p.finish(a, body.count(), n, cc.closedReasonOr(errorText(werr)))
	return keep && werr == nil
}

// httpTarget finds what a plain-HTTP request is for. Explicit listener:
// the absolute-form target, whose host the Host header (if any) must
// equal (THREATS A6, B8). Transparent listener: the Host header at the
// original port. Inside a CONNECT tunnel: the Host header, which must name
// the tunnel's target (THREATS A1 for plain HTTP).
func httpTarget(h *requestHead, arr arrival) (policy.Target, string, *denial) {
	invalid := func(err error) *denial {
		return &denial{status: http.StatusBadRequest, reason: audit.ReasonInvalidName, detail: err.Error()}
	}
	orig := arr.orig
	if arr.inTunnel() {
		if !strings.HasPrefix(h.target, "/") {
			return policy.Target{}, "", denyf(http.StatusBadRequest, audit.ReasonBadRequest,
				"request-target %q in a CONNECT tunnel is not origin-form", h.target)
		}
		if !h.hasHost {
			return policy.Target{}, "", denyf(http.StatusBadRequest, audit.ReasonBadRequest, "request without a Host header")
		}
		t, err := parseHostHeader(h.host, arr.tunnel.Port)
		if err != nil {
			return policy.Target{}, "", invalid(err)
		}
		if t != arr.tunnel {
			return policy.Target{}, "", denyf(http.StatusForbidden, audit.ReasonHostMismatch,
				"Host header %q does not name the CONNECT tunnel's target %s", h.host, arr.tunnel)
		}
		return t, h.target, nil
	}
	if !orig.IsValid() {
		if strings.HasPrefix(h.target, "/") || h.target == "*" {
			return policy.Target{}, "", denyf(http.StatusBadRequest, audit.ReasonNotProxy,
				"%s %s is not a proxy request (use an absolute http:// URL, or CONNECT)", h.method, h.target)
		}
		t, path, err := parseAbsoluteTarget(h.target)
		if err != nil {
			if errors.Is(err, errBadAuthority) || errors.Is(err, policy.ErrInvalidName) {
				return policy.Target{}, "", invalid(err)
			}
			return policy.Target{}, "", denyf(http.StatusBadRequest, audit.ReasonBadRequest, "%v", err)
		}
		if !h.hasHost {
			if h.proto == "HTTP/1.1" {
				return policy.Target{}, "", denyf(http.StatusBadRequest, audit.ReasonBadRequest, "HTTP/1.1 request without a Host header")
			}
			return t, path, nil
		}
		ht, err := parseHostHeader(h.host, 80)
		if err != nil || ht != t {
			return policy.Target{}, "", denyf(http.StatusBadRequest, audit.ReasonHostMismatch,
				"Host header %q does not name the request-target's host %s", h.host, t)
		}
		return t, path, nil
	}
	if !strings.HasPrefix(h.target, "/") {
		return policy.Target{}, "", denyf(http.StatusBadRequest, audit.ReasonBadRequest,
			"request-target %q is not origin-form (the transparent listener is not a proxy)", h.target)
	}
	if !h.hasHost {
		return policy.Target{}, "", denyf(http.StatusBadRequest, audit.ReasonBadRequest, "request without a Host header")
	}
	t, err := parseHostHeader(h.host, orig.Port())
	if err != nil {
		return policy.Target{}, "", invalid(err)
	}
	if hasExplicitPort(h.host) && t.Port != orig.Port() {
		return policy.Target{}, "", denyf(http.StatusBadRequest, audit.ReasonHostMismatch,
			"Host header %q names port %d; the connection is to port %d", h.host, t.Port, orig.Port())
	}
	return t, h.target, nil
}

// hasExplicitPort reports whether a host[:port] carries a port.
func hasExplicitPort(s string) bool {
	if strings.HasPrefix(s, "[") {
		return strings.Contains(s, "]:")
	}
	return strings.Count(s, ":") == 1
}

// forwardHeader is the request header sent upstream: hop-by-hop, Proxy-*,
// Upgrade, Host and framing headers removed (the transport writes Host and
// framing from the rebuilt request).
func forwardHeader(in http.Header) http.Header {
	h := in.Clone()
	stripHopHeaders(h)
	delete(h, "Host")
	delete(h, "Content-Length")
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // keep Go's default User-Agent out
	}
	return h
}

// requestBody is a client request body read from the client connection:
// exactly Content-Length bytes, or a chunked body (trailers read and
// dropped). It sends "100 Continue" on the first read when the client
// expects it.
type requestBody struct {
	r       io.Reader
	br      *bufio.Reader
	c       net.Conn
	idle    time.Duration
	chunked bool
	want    int64
	cw      *clientWriter // nil unless the client expects 100 Continue
	cont    sync.Once
	n       atomic.Int64
	eof     atomic.Bool
}

// newRequestBody returns the body of h, or nil when it has none.
func newRequestBody(br *bufio.Reader, h *requestHead, c net.Conn, cw *clientWriter, idle time.Duration) *requestBody {
	b := &requestBody{br: br, c: c, idle: idle, want: h.contentLength}
	switch {
	case h.chunked:
		b.r, b.chunked = httputil.NewChunkedReader(br), true
	case h.contentLength > 0:
		b.r = io.LimitReader(br, h.contentLength)
	default:
		return nil
	}
	if h.expectContinue {
		b.cw = cw
	}
	return b
}

func (b *requestBody) Read(p []byte) (int, error) {
	if b.cw != nil {
		b.cont.Do(b.cw.sendContinue)
	}
	if b.eof.Load() {
		return 0, io.EOF
	}
	_ = b.c.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.r.Read(p)
	total := b.n.Add(int64(n))
	if !b.chunked && total == b.want {
		b.eof.Store(true)
		return n, io.EOF
	}
	if errors.Is(err, io.EOF) {
		if !b.chunked {
			return n, io.ErrUnexpectedEOF // the client closed before Content-Length bytes
		}
		if terr := readTrailer(b.br); terr != nil {
			return n, terr
		}
		b.eof.Store(true)
	}
	return n, err
}

func (b *requestBody) Close() error { return nil }

// count is the body bytes read so far.
func (b *requestBody) count() int64 {
	if b == nil {
		return 0
	}
	return b.n.Load()
}

// done reports whether the body was read to its end (true for no body).
func (b *requestBody) done() bool { return b == nil || b.eof.Load() }

// readTrailer consumes the trailer section after a last chunk, up to and
// including its empty line.
func readTrailer(br *bufio.Reader) error {
	total := 0
	for {
		line, err := br.ReadSlice('\n')
		total += len(line)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				return errHeadTooLarge
			}
			return err
		}
		if total > maxHeadBytes {
			return errHeadTooLarge
		}
		if len(line) < 2 || line[len(line)-2] != '\r' {
			return badHead("bare LF in chunked trailer")
		}
		if len(line) == 2 {
			return nil
		}
	}
}

// clientWriter writes the response to the client, after at most one
// "100 Continue" that must not interleave with it.
type clientWriter struct {
	c       net.Conn
	idle    time.Duration
	mu      sync.Mutex
	started bool
}

func (w *clientWriter) sendContinue() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started {
		return
	}
	_ = w.c.SetWriteDeadline(time.Now().Add(w.idle))
	_, _ = io.WriteString(w.c, "HTTP/1.1 100 Continue\r\n\r\n")
}

// begin marks the start of the final response: no 100 Continue after it.
func (w *clientWriter) begin() {
	w.mu.Lock()
	w.started = true
	w.mu.Unlock()
}

func (w *clientWriter) Write(b []byte) (int, error) {
	_ = w.c.SetWriteDeadline(time.Now().Add(w.idle))
	return w.c.Write(b)
}

// writeResponse writes resp to the client as HTTP/1.1 (hop-by-hop headers
// removed, body re-framed: Content-Length when known, chunked to an
// HTTP/1.1 client, else until close) and returns the body bytes written
// and whether the connection may be kept.
func (w *clientWriter) writeResponse(resp *http.Response, h *requestHead, keep bool) (int64, bool, error) {
	w.begin()
	hdr := resp.Header.Clone()
	stripHopHeaders(hdr)
	delete(hdr, "Content-Length")
	code := resp.StatusCode
	bodyless := h.method == http.MethodHead || code/100 == 1 || code == http.StatusNoContent || code == http.StatusNotModified
	const (
		modeNone = iota
		modeLength
		modeChunked
		modeClose
	)
	mode := modeNone
	switch {
	case bodyless:
		if h.method == http.MethodHead && resp.ContentLength >= 0 {
			hdr["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
		}
	case resp.ContentLength >= 0:
		mode = modeLength
		hdr["Content-Length"] = []string{strconv.FormatInt(resp.ContentLength, 10)}
	case h.proto == "HTTP/1.1":
		mode = modeChunked
		hdr["Transfer-Encoding"] = []string{"chunked"}
	default:
		mode, keep = modeClose, false
	}
	switch {
	case !keep:
		hdr["Connection"] = []string{"close"}
	case h.proto == "HTTP/1.0":
		hdr["Connection"] = []string{"keep-alive"}
	}
	reason := strings.TrimPrefix(resp.Status, strconv.Itoa(code)+" ")
	if reason == resp.Status || reason == "" {
		reason = http.StatusText(code)
	}
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 " + strconv.Itoa(code) + " " + sanitizeLine(reason) + "\r\n")
	_ = hdr.Write(&head)
	head.WriteString("\r\n")
	if _, err := w.Write(head.Bytes()); err != nil {
		return 0, false, err
	}
	switch mode {
	case modeLength:
		n, err := io.Copy(w, io.LimitReader(resp.Body, resp.ContentLength))
		if err == nil && n < resp.ContentLength {
			err = io.ErrUnexpectedEOF
		}
		return n, keep && err == nil, err
	case modeChunked:
		n, err := w.writeChunked(resp)
		return n, keep && err == nil, err
	case modeClose:
		n, err := io.Copy(w, resp.Body)
		return n, false, err
	}
	return 0, keep, nil
}

// writeChunked copies resp.Body as chunks, each sent as it arrives (event
// streams stay live), then the last chunk and the trailers.
func (w *clientWriter) writeChunked(resp *http.Response) (int64, error) {
	buf := make([]byte, 32<<10)
	var total int64
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			total += int64(n)
			bufs := net.Buffers{[]byte(strconv.FormatInt(int64(n), 16) + "\r\n"), buf[:n], []byte("\r\n")}
			_ = w.c.SetWriteDeadline(time.Now().Add(w.idle))
			if _, werr := bufs.WriteTo(w.c); werr != nil {
				return total, werr
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return total, err
		}
	}
	var tail bytes.Buffer
	tail.WriteString("0\r\n")
	if len(resp.Trailer) > 0 {
		tr := resp.Trailer.Clone()
		stripHopHeaders(tr)
		_ = tr.Write(&tail)
	}
	tail.WriteString("\r\n")
	_, err := w.Write(tail.Bytes())
	return total, err
}
