package proxy

import (
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
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
	"github.com/egressd/egressd/internal/inspectca"
	"github.com/egressd/egressd/internal/mask"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/policy"
)

// HTTPS inspection (docs/inspection.md). For a name a [[network.inspect]]
// entry matches, an allowed TLS stream is not spliced: egressd completes
// the handshake itself with a certificate for the name signed by the
// inspection CA, and serves the requests inside with net/http (HTTP/1.1,
// and HTTP/2 where the client offers it in ALPN), deciding each one:
//
//	allowed TLS stream ── CONNECT: after the ClientHello's SNI == CONNECT host
//	                   └─ transparent: after the decision on the SNI
//	  name inspected? ── no ──► splice, as before
//	     yes ─► TLS handshake (certificate for the name, ALPN h2, http/1.1)
//	            per request: Host/:authority == the name ─► methods/paths rules
//	              ─► placeholder sent elsewhere? ─► credential header set
//	              ─► upstream: vetted dial, TLS verified for the name
//	              ─► response (masked when a credential was sent)
//
// Why net/http and not goproxy's MITM loop: measured with goproxy v1.9.4,
// its loop reads each request head with http.ReadRequest on an unbounded
// reader (a 256 MiB header line inside the session grew the heap by 287 MiB,
// unanswered), answers an upstream failure by dropping the connection (the
// client reads EOF, not a 502), runs detached from the handler that hijacked
// the connection, and writes its own "200 OK" into the stream. net/http's
// server bounds the head (MaxHeaderBytes, ReadHeaderTimeout), keeps
// HTTP/1.1 alive, speaks HTTP/2, and httputil.ReverseProxy streams bodies
// and server-sent events and passes WebSocket upgrades. Inside the session
// the requests are origin-form over TLS, decided on what net/http parsed
// and forwarded as net/http writes them again, so the reasons the tunnel
// path keeps its own strict head parser (doc.go) do not apply.

// Inspect configures HTTPS inspection.
type Inspect struct {
	// CA signs the certificate egressd presents for each inspected host.
	// Nil: a policy that inspects a host gets that host refused
	// (inspection-unavailable), never spliced uninspected.
	CA *inspectca.CA
	// UpstreamRoots verify the inspected hosts' own certificates; nil means
	// the system's trust store.
	UpstreamRoots *x509.CertPool
	// Secrets are the credentials' secret values, by name.
	Secrets map[string]string

	forms sync.Map // secret value → mask.Forms of it
}

// formsOf returns the forms (mask.Forms) of a secret value, computed once.
func (c *Inspect) formsOf(secret string) []string {
	if f, ok := c.forms.Load(secret); ok {
		return f.([]string)
	}
	f, _ := c.forms.LoadOrStore(secret, mask.Forms(secret))
	return f.([]string)
}

// SetInspect puts cfg in force for TLS sessions that start from now on
// (a rotated CA, new secrets); sessions already open keep theirs until they
// end. Nil turns inspection off (inspected hosts are then refused).
func (p *Proxy) SetInspect(cfg *Inspect) { p.inspect.Store(cfg) }

// inspectTimeouts of one session beyond Config's.
const (
	// maxInspectHeaderBytes bounds one request head inside a session.
	maxInspectHeaderBytes = 64 << 10
	// maxAuditPath caps the path written to an audit record.
	maxAuditPath = 256
	// maxUpstreamConns bounds the upstream connections one session opens
	// (an HTTP/2 client multiplexes; each stream needs one).
	maxUpstreamConns = 64
)

// inspectMetrics are inspection's collectors.
//
//	egressd_proxy_inspected_requests_total{host,result,reason}   one per request in an inspected session
//	egressd_proxy_inspect_handshake_failures_total{host}         client TLS handshakes that failed (no trust, pinning)
//
// host is the inspect entry's host pattern, so the label set is bounded by
// the policy, not by what the sandbox asks for.
type inspectMetrics struct {
	requests   *metrics.CounterVec
	handshakes *metrics.CounterVec
}

func newInspectMetrics(reg *metrics.Registry) (*inspectMetrics, error) {
	m := &inspectMetrics{
		requests: metrics.NewCounterVec("egressd_proxy_inspected_requests_total",
			"Requests inside inspected TLS sessions, by the inspect entry's host pattern, result (allow, deny, error) and reason.",
			"host", "result", "reason"),
		handshakes: metrics.NewCounterVec("egressd_proxy_inspect_handshake_failures_total",
			"TLS handshakes with sandbox clients that failed in inspected sessions (a client that does not trust the inspection CA, or pins certificates), by host pattern.",
			"host"),
	}
	if reg == nil {
		return m, nil
	}
	if err := reg.Register(m.requests, m.handshakes); err != nil {
		return nil, fmt.Errorf("registering inspection metrics: %w", err)
	}
	return m, nil
}

// inspectTLS hands an allowed stream to inspection when its TLS name is
// inspected under m (the matcher its connection was decided with), and
// reports whether it did: then everything about the connection, its audit
// record included, is done. name is the TLS name (the CONNECT host, or the
// SNI); dial is what the upstream dials (the name, or an address an allow
// IP rule admitted); prefer is a transparent client's original address. r
// is a CONNECT tunnel's relay, nil when the CONNECT host itself is
// inspected (no tunnel was dialled); its upstream is dropped before the
// client's first byte went up. A stream to an inspected name that does not
// start with TLS is refused.
func (p *Proxy) inspectTLS(ctx context.Context, m *policy.Matcher, cc *clientConn, r *relay, prefix []byte, a *allowed, name string, dial policy.Target, prefer netip.Addr) bool {
	port := dial.Port
	if name == "" || !m.Inspects(name, port) {
		if looksLikeTLS(prefix) {
			cc.setSplicedTLS()
		}
		return false
	}
	if r != nil && !r.detach() {
		p.logDenial(a.kind, a.target, port, cc.client, a.addrs, denyf(0, audit.ReasonBadRequest, "the upstream spoke before the client"))
		resetConn(cc.c)
		return true
	}
	if !looksLikeTLS(prefix) {
		p.logDenial(a.kind, a.target, port, cc.client, a.addrs, denyf(0, audit.ReasonBadRequest, "%s is inspected: the stream must start with TLS", name))
		resetConn(cc.c)
		return true
	}
	cfg := p.inspect.Load()
	if cfg == nil || cfg.CA == nil {
		p.logDenial(a.kind, a.target, port, cc.client, a.addrs, denyf(0, audit.ReasonInspectUnset, "%s is inspected, but egressd has no inspection CA", name))
		resetConn(cc.c)
		return true
	}
	if dial.Addr.IsValid() {
		// Admitted by its address (a CONNECT to an IP literal, or a
		// transparent stream an allow IP rule admitted), the stream names
		// an inspected host: its requests, and the credential egressd adds
		// to them, go to the name's own vetted addresses, never to the
		// address the sandbox chose (which may serve the name's certificate
		// and be another machine altogether). A name no rule allows is
		// refused: an IP rule admits an address, not a name.
		if d := m.DecideName(name, port); !d.Allow {
			p.logDenial(a.kind, a.target, port, cc.client, a.addrs, denyDecision(d,
				fmt.Sprintf("(TLS server_name %s is inspected: its requests go only to the addresses it resolves to, so the name itself must be allowed)", name)))
			resetConn(cc.c)
			return true
		}
		prefer, dial = dial.Addr, policy.Target{Name: name, Port: port}
		cc.setNameBasis(name)
	}
	cc.setInspected()
	cc.shareBuffers() // net/http's goroutines read the peeked bytes
	a.inspected = true
	cc.setRelaying(true) // the idle watchdog covers the session
	up, down, errText := p.serveInspected(ctx, cc, cfg, prefix, name, dial, prefer)
	cc.setRelaying(false)
	p.finish(a, up, down, cc.closedReasonOr(errText))
	return true
}

// serveInspected terminates the client's TLS and serves its requests until
// the connection ends. It returns the bytes read from and written to the
// client (TLS records) and why it ended, if not cleanly.
func (p *Proxy) serveInspected(ctx context.Context, cc *clientConn, cfg *Inspect, prefix []byte, name string, dial policy.Target, prefer netip.Addr) (up, down int64, errText string) {
	conn := &inspectConn{Conn: cc.c, prefix: prefix}
	label := name
	if in := p.cfg.Policy.Current().Inspection(name, dial.Port); in != nil {
		label = in.Label()
	}
	tc := tls.Server(conn, &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cfg.CA.Certificate(name) },
		NextProtos:     []string{"h2", "http/1.1"},
		MinVersion:     tls.VersionTLS12,
	})
	_ = cc.c.SetDeadline(time.Now().Add(p.cfg.HeaderTimeout))
	if err := tc.Handshake(); err != nil {
		p.imet.handshakes.WithLabelValues(label).Inc()
		return conn.in.Load(), conn.out.Load(), fmt.Sprintf("TLS handshake with the client failed: %v (a client must trust the inspection CA; one that pins certificates cannot be inspected)", err)
	}
	_ = cc.c.SetDeadline(time.Time{})

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &inspectSession{p: p, cc: cc, cfg: cfg, name: name, port: dial.Port, dial: dial, prefer: prefer, ctx: sctx}
	s.idle = sync.NewCond(&s.mu)
	s.hostHeader = hostHeaderFor(policy.Target{Name: name, Port: dial.Port}, 443)
	s.transport = &http.Transport{
		Proxy:                  nil,
		DialTLSContext:         s.dialTLS,
		ForceAttemptHTTP2:      false,
		TLSNextProto:           map[string]func(string, *tls.Conn) http.RoundTripper{},
		DisableCompression:     true,
		MaxIdleConnsPerHost:    16,
		MaxConnsPerHost:        maxUpstreamConns,
		IdleConnTimeout:        90 * time.Second,
		ResponseHeaderTimeout:  p.cfg.IdleTimeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: maxInspectHeaderBytes,
	}
	s.proxy = &httputil.ReverseProxy{
		Rewrite:        s.rewrite,
		Transport:      s.transport,
		ModifyResponse: s.modifyResponse,
		ErrorHandler:   s.upstreamError,
		ErrorLog:       log.New(io.Discard, "", 0),
	}
	ln := &oneConnListener{conn: tc, done: make(chan struct{})}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: p.cfg.HeaderTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		MaxHeaderBytes:    maxInspectHeaderBytes,
		ErrorLog:          log.New(io.Discard, "", 0),
		BaseContext:       func(net.Listener) context.Context { return sctx },
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				ln.Close()
			}
		},
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: maxUpstreamConns},
	}
	_ = srv.Serve(ln)
	s.wait()
	cancel()
	s.transport.CloseIdleConnections()
	return conn.in.Load(), conn.out.Load(), ""
}

// inspectSession is one inspected TLS connection: its requests' handler.
type inspectSession struct {
	p          *Proxy
	cc         *clientConn
	cfg        *Inspect
	name       string // the TLS name: every request's Host must be it
	port       uint16
	dial       policy.Target
	prefer     netip.Addr
	hostHeader string
	ctx        context.Context
	transport  *http.Transport
	proxy      *httputil.ReverseProxy

	mu     sync.Mutex
	idle   *sync.Cond
	active int
	closed bool
}

// enter registers a request handler; false once the session is over (an
// HTTP/2 stream handler that started as the connection closed).
func (s *inspectSession) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.active++
	return true
}

func (s *inspectSession) leave() {
	s.mu.Lock()
	s.active--
	if s.active == 0 {
		s.idle.Broadcast()
	}
	s.mu.Unlock()
}

// wait ends the session and waits for its request handlers.
func (s *inspectSession) wait() {
	s.mu.Lock()
	s.closed = true
	for s.active > 0 {
		s.idle.Wait()
	}
	s.mu.Unlock()
}

// inspectRequest is one request's state, from the handler to the reverse
// proxy's hooks (through the request's context) and back into its audit
// record.
type inspectRequest struct {
	start     time.Time
	label     string
	path      string // for the audit record
	canonical string // the path sent upstream, when path rules made it canonical
	decision  policy.Decision
	creds     []string // names of the secrets whose headers were set
	forms     []string // their values in every form masked in the response (mask.Forms)
	upAddr    atomic.Value
	denial    *denial // a refusal, or a failure to serve an allowed request (the outcome its reason has)
	failure   string  // why an allowed, answered request ended early
}

type inspectRequestKey struct{}

func (s *inspectSession) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		return
	}
	defer s.leave()
	p := s.p
	m := p.cfg.Policy.Current()
	in := m.Inspection(s.name, s.port)
	if in == nil { // a reload stopped inspecting the name; Reevaluate closes the session
		in = &policy.Inspection{Name: s.name, Port: s.port}
	}
	rawPath, query := requestPath(r)
	rq := &inspectRequest{start: time.Now(), label: in.Label(), path: auditPath(rawPath, query, in.LogQuery())}
	cw := &countingResponseWriter{ResponseWriter: w}
	body := &countingBody{ReadCloser: r.Body}
	r.Body = body
	defer func() {
		v := recover()
		if v != nil { // the reverse proxy aborts a response the upstream broke off
			rq.failure = mask.String(fmt.Sprintf("response aborted: %v", v), rq.forms)
		}
		s.record(r, rq, cw, body)
		if v != nil {
			panic(v)
		}
	}()
	if dn := s.check(m, in, r, rawPath, rq); dn != nil {
		rq.denial = dn
		s.refuse(cw, r, dn)
		return
	}
	// Every head written to the client is masked, the 1xx ones the
	// reverse proxy passes on without ModifyResponse included; the
	// trailers it copies after the body are masked once it returns.
	cw.forms = rq.forms
	defer maskHeader(cw.Header(), rq.forms)
	ctx := context.WithValue(r.Context(), inspectRequestKey{}, rq)
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		rq.upAddr.Store(info.Conn.RemoteAddr().String())
	}})
	s.proxy.ServeHTTP(cw, r.WithContext(ctx))
}

// check decides one request; nil means forward it. It sets the
// credentials' headers on r.
func (s *inspectSession) check(m *policy.Matcher, in *policy.Inspection, r *http.Request, rawPath string, rq *inspectRequest) *denial {
	if b := s.cc.currentBasis(); b != nil {
		if dn := recheck(m, b); dn != nil {
			return dn
		}
	}
	if b := s.cc.currentBasis(); b != nil && b.byAddr {
		rq.decision = m.DecideAddr(b.addr, s.port)
	} else {
		rq.decision = m.DecideName(s.name, s.port)
	}
	ht, err := parseHostHeader(r.Host, s.port)
	if err != nil || ht.Name != s.name || hasExplicitPort(r.Host) && ht.Port != s.port {
		return denyf(http.StatusMisdirectedRequest, audit.ReasonHostMismatch, "Host %q in a TLS session for %s (THREATS A2)", r.Host, s.name)
	}
	if r.Method == http.MethodConnect {
		return denyf(http.StatusMethodNotAllowed, audit.ReasonBadRequest, "CONNECT inside an inspected session to %s", s.name)
	}
	if up := r.Header.Get("Upgrade"); up != "" && !strings.EqualFold(up, "websocket") {
		return denyf(http.StatusBadRequest, audit.ReasonBadRequest, "Upgrade: %s inside an inspected session (only websocket is passed)", up)
	}
	path := rawPath
	if in.HasPathRules() {
		cp, err := policy.CanonicalPath(rawPath)
		if err != nil {
			return denyf(http.StatusBadRequest, audit.ReasonBadRequest, "%v", err)
		}
		path, rq.canonical = cp, cp
	}
	if d := in.Decide(r.Method, path); !d.Allow {
		return &denial{status: http.StatusForbidden, reason: audit.Reason(d.Reason), decision: policy.Decision{
			Reason: d.Reason, Rule: &policy.Rule{Text: d.RuleText(), Source: d.Rule.Source}}}
	}
	if dn := methodOverrideDenial(in, s.name, r.Header, r.RequestURI); dn != nil {
		return dn
	}
	if dn := placeholderDenial(m, s.name, r.RequestURI, r.Header); dn != nil {
		return dn
	}
	r.Body = scanRequestBody(r.Body, m, in, s.name, r.Method, r.Header)
	for _, c := range in.Credentials {
		if s.dial.Name != s.name { // inspectTLS dials an inspected name by its name only; fail closed if not
			return denyf(http.StatusForbidden, audit.ReasonNoAllowRule, "the credential for %s goes only to the addresses %s resolves to, not %s", c.Host, s.name, s.dial)
		}
		v, ok := s.cfg.Secrets[c.Secret]
		if !ok {
			return denyf(http.StatusServiceUnavailable, audit.ReasonCredentialUnset, "the secret %s of the credential for %s was not given to egressd", c.Secret, c.Host)
		}
		r.Header[c.Header] = []string{c.Prefix + v}
		rq.creds, rq.forms = append(rq.creds, c.Secret), append(rq.forms, s.cfg.formsOf(v)...)
	}
	if len(rq.forms) > 0 {
		// Plain bytes, so the response can be scanned for the secret.
		r.Header.Set("Accept-Encoding", "identity")
		r.Header.Del("Sec-Websocket-Extensions")
	}
	return nil
}

// rewrite builds the upstream request: the vetted origin, Host from the
// name, the canonical path when path rules judged one.
func (s *inspectSession) rewrite(pr *httputil.ProxyRequest) {
	rq, _ := pr.In.Context().Value(inspectRequestKey{}).(*inspectRequest)
	u := pr.Out.URL
	u.Scheme, u.Host, u.User, u.Opaque = "https", s.dial.String(), nil, ""
	if rq != nil && rq.canonical != "" {
		u.Path, _ = url.PathUnescape(rq.canonical)
		u.RawPath = rq.canonical
	}
	pr.Out.Host = s.hostHeader
}

// dialTLS connects to a vetted address of the session's destination and
// verifies the upstream's certificate for the name.
func (s *inspectSession) dialTLS(ctx context.Context, _, _ string) (net.Conn, error) {
	p := s.p
	c, _, _, err := p.dialTarget(ctx, p.cfg.Policy.Current(), s.dial, s.prefer, nil)
	if err != nil {
		return nil, err
	}
	c = p.countUpstream(c)
	tc := tls.Client(c, &tls.Config{ServerName: s.name, RootCAs: s.cfg.UpstreamRoots, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12})
	hctx, cancel := context.WithTimeout(ctx, p.cfg.HeaderTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("TLS with %s (%s): %w", s.name, c.RemoteAddr(), err)
	}
	return tc, nil
}

// modifyResponse masks the secrets, in every form mask.Forms lists, in a
// response to a request that carried a credential: every header, the body
// (decompressed from gzip first; any other encoding is refused, since it
// cannot be scanned), the trailers, and the stream of a WebSocket upgrade.
// Each form becomes as many '*' as it has bytes, so lengths and framing
// stay true. (1xx heads, which the reverse proxy passes on without this
// hook, are masked by the response writer.)
func (s *inspectSession) modifyResponse(resp *http.Response) error {
	rq, _ := resp.Request.Context().Value(inspectRequestKey{}).(*inspectRequest)
	if rq == nil || len(rq.forms) == 0 {
		return nil
	}
	maskHeader(resp.Header, rq.forms)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if rwc, ok := resp.Body.(io.ReadWriteCloser); ok {
			resp.Body = &maskedStream{ReadWriteCloser: rwc, r: mask.NewSameLengthReader(rwc, rq.forms)}
		}
		return nil
	}
	switch enc := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			return denyf(http.StatusBadGateway, audit.ReasonUpstreamError, "the gzip response of %s does not decompress: %v", s.name, err)
		}
		resp.Body = &gzipBody{Reader: zr, raw: resp.Body}
		resp.Header.Del("Content-Encoding")
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
	default:
		return denyf(http.StatusBadGateway, audit.ReasonUpstreamError, "%s answered in Content-Encoding %q, which egressd cannot scan for the credential it sent", s.name, enc)
	}
	resp.Body = &maskedBody{r: mask.NewSameLengthReader(resp.Body, rq.forms), body: resp.Body, resp: resp, forms: rq.forms}
	return nil
}

// upstreamError answers a request the upstream side failed: a policy
// refusal of every vetted address, an upstream certificate that does not
// verify, a failed dial or exchange.
func (s *inspectSession) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	rq, _ := r.Context().Value(inspectRequestKey{}).(*inspectRequest)
	if rq == nil {
		rq = &inspectRequest{}
	}
	if r.Context().Err() != nil {
		rq.failure = "the client went away: " + err.Error()
		return
	}
	dn, ok := asDenial(err)
	switch {
	case ok:
	case isCertificateError(err):
		dn = denyf(http.StatusBadGateway, audit.ReasonUpstreamCert, "the certificate of %s does not verify: %v", s.name, err)
	default:
		dn = upstreamFailure(err)
	}
	if len(rq.forms) > 0 {
		// An upstream error can quote what the upstream sent ("malformed
		// HTTP response ..."): masked before the client or the audit
		// record sees it.
		masked := *dn
		masked.detail, masked.internal = mask.String(dn.detail, rq.forms), mask.String(dn.internal, rq.forms)
		dn = &masked
	}
	rq.denial = dn
	s.refuse(w, r, dn)
}

func isCertificateError(err error) bool {
	var (
		cv  *tls.CertificateVerificationError
		ua  x509.UnknownAuthorityError
		he  x509.HostnameError
		inv x509.CertificateInvalidError
	)
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &inv)
}

// refuse answers a request with a denial. Over HTTP/1.1 it is written with
// the proxy's denial helper on the hijacked connection, which then closes
// (reason in the status line, as everywhere); over HTTP/2 (no reason
// phrase, no hijacking) as a response on the stream.
func (s *inspectSession) refuse(w http.ResponseWriter, r *http.Request, dn *denial) {
	target := sanitizeLine(s.name + r.URL.Path)
	if r.ProtoMajor == 1 {
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_ = writeDenial(c, target, dn)
			_ = c.Close()
			return
		}
	}
	status, reason, body := denialParts(target, dn)
	h := w.Header()
	for k := range h {
		delete(h, k)
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Egressd-Denied", reason)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// record writes the request's audit record and counts it.
func (s *inspectSession) record(r *http.Request, rq *inspectRequest, cw *countingResponseWriter, body *countingBody) {
	p := s.p
	dn := rq.denial
	rec := audit.Record{
		Kind:       audit.KindHTTPS,
		Target:     s.name,
		Port:       s.port,
		AddrValues: audit.AddrValues{Client: s.cc.client},
		Method:     sanitizeLine(r.Method),
		Path:       rq.path,
		Status:     cw.status,
		BytesUp:    body.n.Load(),
		BytesDown:  cw.n,
		DurationMS: float64(time.Since(rq.start).Microseconds()) / 1000,
		Credential: strings.Join(rq.creds, ","),
	}
	if a, ok := rq.upAddr.Load().(string); ok {
		rec.Addrs = []string{a}
	}
	if dn != nil {
		rec.Decision, rec.Reason, rec.Rule, rec.Source, rec.Error = dn.reason.Outcome(), dn.reason, dn.ruleText(), dn.ruleSource(), dn.detailForAudit()
		if rec.Decision == audit.OutcomeError && dn.decision.Reason == "" && rq.decision.Rule != nil {
			rec.Rule, rec.Source = rq.decision.Rule.Text, rq.decision.Rule.Source.String() // the rule that allowed what failed
		}
		p.log.Debug("inspected request refused", "target", s.name, "method", rec.Method, "path", rec.Path, "reason", dn.text())
	} else {
		rec.Reason, rec.Error = audit.Reason(rq.decision.Reason), sanitizeLine(rq.failure)
		rec.Decision = rec.Reason.OutcomeLetThrough(rq.decision.WouldDeny)
		if rq.decision.Rule != nil {
			rec.Rule, rec.Source = rq.decision.Rule.Text, rq.decision.Rule.SourceText()
		}
	}
	p.imet.requests.WithLabelValues(rq.label, string(rec.Decision), string(rec.Reason)).Inc()
	p.cfg.Audit.Log(rec)
}

// requestPath splits the request-target into the raw path and query.
func requestPath(r *http.Request) (path, query string) {
	uri := r.RequestURI
	switch {
	case uri == "*":
		return uri, ""
	case strings.HasPrefix(uri, "/"):
		path, query, _ = strings.Cut(uri, "?")
		return path, query
	}
	return r.URL.EscapedPath(), r.URL.RawQuery // absolute-form
}

// auditPath is the path as audited: control bytes escaped, capped, the
// query string only when the entry says so.
func auditPath(path, query string, logQuery bool) string {
	if logQuery && query != "" {
		path += "?" + query
	}
	s := sanitizeLine(path)
	if len(s) > maxAuditPath {
		s = s[:maxAuditPath] + "..."
	}
	return s
}

// checkPlainRequest applies inspection to a plain-HTTP request egressd
// sees anyway: a credential's placeholder on its way to another host is
// refused, and when the host is inspected its method and path rules decide
// (the path made canonical first). It returns the origin-form target to
// send. Credentials are never added to plain HTTP: the secret would cross
// the network in the clear.
func checkPlainRequest(m *policy.Matcher, t policy.Target, h *requestHead, target string) (string, *denial) {
	host := hostOf(t)
	if dn := placeholderDenial(m, host, target, h.header); dn != nil {
		return "", dn
	}
	if t.Name == "" {
		return target, nil
	}
	in := m.Inspection(t.Name, t.Port)
	if in == nil {
		return target, nil
	}
	path, query, hasQuery := strings.Cut(target, "?")
	if in.HasPathRules() {
		cp, err := policy.CanonicalPath(path)
		if err != nil {
			return "", denyf(http.StatusBadRequest, audit.ReasonBadRequest, "%v", err)
		}
		path = cp
	}
	if d := in.Decide(h.method, path); !d.Allow {
		return "", &denial{status: http.StatusForbidden, reason: audit.Reason(d.Reason), decision: policy.Decision{
			Reason: d.Reason, Rule: &policy.Rule{Text: d.RuleText(), Source: d.Rule.Source}}}
	}
	if dn := methodOverrideDenial(in, t.Name, h.header, target); dn != nil {
		return "", dn
	}
	if hasQuery {
		path += "?" + query
	}
	return path, nil
}

// maskHeader masks the forms of the secrets in every header name and
// value, each by as many '*' as it has bytes (as in the body).
func maskHeader(h http.Header, forms []string) {
	if len(forms) == 0 {
		return
	}
	maskOne := func(v string) string {
		for _, f := range forms {
			if strings.Contains(v, f) {
				v = strings.ReplaceAll(v, f, strings.Repeat("*", len(f)))
			}
		}
		return v
	}
	for k, vs := range h {
		for i, v := range vs {
			vs[i] = maskOne(v)
		}
		if mk := maskFold(k, forms); mk != k {
			delete(h, k)
			h[mk] = append(h[mk], vs...)
		}
	}
}

// maskFold masks the forms in a header name with ASCII case ignored:
// net/http rewrites the case of the names it parses.
func maskFold(name string, forms []string) string {
	lower := policy.LowerASCII(name) // same length as name, so indexes carry over
	var b []byte
	for _, f := range forms {
		lf := policy.LowerASCII(f)
		for i := 0; ; {
			k := strings.Index(lower[i:], lf)
			if k < 0 {
				break
			}
			if b == nil {
				b = []byte(name)
			}
			for j := i + k; j < i+k+len(lf); j++ {
				b[j] = '*'
			}
			i += k + len(lf)
		}
	}
	if b == nil {
		return name
	}
	return string(b)
}

// maskedBody is a response body with the secrets masked; at its end it
// masks the trailers too (the reverse proxy copies them after the body).
type maskedBody struct {
	r     io.Reader
	body  io.ReadCloser
	resp  *http.Response
	forms []string
}

func (b *maskedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if errors.Is(err, io.EOF) {
		maskHeader(b.resp.Trailer, b.forms)
	}
	return n, err
}

func (b *maskedBody) Close() error { return b.body.Close() }

// gzipBody is a gzip response body, decompressed.
type gzipBody struct {
	*gzip.Reader
	raw io.ReadCloser
}

func (b *gzipBody) Close() error { return b.raw.Close() }

// maskedStream is an upgraded (WebSocket) stream whose upstream-to-client
// bytes are masked.
type maskedStream struct {
	io.ReadWriteCloser
	r io.Reader
}

func (s *maskedStream) Read(p []byte) (int, error) { return s.r.Read(p) }

// inspectConn is the client connection under the TLS server: the peeked
// prefix first, and byte counts both ways.
type inspectConn struct {
	net.Conn
	prefix  []byte
	in, out atomic.Int64
}

func (c *inspectConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		c.in.Add(int64(n))
		return n, nil
	}
	n, err := c.Conn.Read(b)
	c.in.Add(int64(n))
	return n, err
}

func (c *inspectConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.out.Add(int64(n))
	return n, err
}

// oneConnListener hands one connection to an http.Server, then blocks
// until that connection is done.
type oneConnListener struct {
	conn net.Conn
	once sync.Once
	took atomic.Bool
	done chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if l.took.CompareAndSwap(false, true) {
		return l.conn, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// countingResponseWriter records the status and body bytes written.
// Unwrap lets http.ResponseController reach Flush and Hijack.
// When forms is set, every head written is masked first (mask.Forms).
type countingResponseWriter struct {
	http.ResponseWriter
	status int
	n      int64
	forms  []string
}

func (w *countingResponseWriter) WriteHeader(code int) {
	if w.status == 0 || w.status/100 == 1 {
		w.status = code
	}
	maskHeader(w.Header(), w.forms)
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingResponseWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *countingResponseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts the request body bytes read.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// tlsName is the name a TLS stream was decided on: the CONNECT host, the
// SNI, or (CONNECT to an IP literal) the ClientHello's name.
func (cc *clientConn) tlsName() string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.basis == nil {
		return ""
	}
	if cc.basis.name != "" {
		return cc.basis.name
	}
	return cc.basis.sni
}

// InspectConfig returns the inspection configuration in force (nil: none).
func (p *Proxy) InspectConfig() *Inspect { return p.inspect.Load() }
