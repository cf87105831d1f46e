package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/policy"
)

// Policy gives the matcher in force; *policy.Live satisfies it. A nil
// matcher denies everything.
type Policy interface {
	Current() *policy.Matcher
}

// Resolver is egressd's own resolver path (never the system resolver): it
// returns the A/AAAA addresses of a name the DNS side has already checked
// against the policy by name.
type Resolver interface {
	Resolve(ctx context.Context, name string) ([]netip.Addr, error)
}

// Learned is the DNS-learned address table: the names whose answers
// contained addr and have not expired.
type Learned interface {
	LearnedNames(addr netip.Addr) []string
}

// Config configures a Proxy. Only Policy is required.
type Config struct {
	// Policy is consulted on every decision. Required.
	Policy Policy
	// Resolver resolves every name the proxy dials. Nil means no name can
	// be resolved: every allowed name target then fails with
	// resolver-error (fail closed). IP-literal targets need no resolver.
	Resolver Resolver
	// Learned maps addresses to the names they were learned for. Nil means
	// no learned addresses: transparent connections without a name (raw
	// TCP, TLS without SNI) are then allowed only by allow IP rules.
	Learned Learned
	// Mark is set as SO_MARK on every upstream socket so the sandbox
	// firewall lets egressd's own traffic out. Zero sets no mark (tests,
	// host mode).
	Mark uint32
	// HeaderTimeout bounds reading a request head and peeking the first
	// bytes of a connection (a ClientHello, once its first byte arrived).
	// Zero means 10s.
	HeaderTimeout time.Duration
	// IdleTimeout closes a tunnel with no payload in either direction for
	// this long, and a keep-alive HTTP connection waiting this long for its
	// next request. Zero means 5m.
	IdleTimeout time.Duration
	// DialTimeout bounds each upstream TCP connect. Zero means 10s.
	DialTimeout time.Duration
	// MaxTunnels caps concurrent client connections over both listeners
	// (a CONNECT tunnel, a transparent connection, a keep-alive HTTP client
	// connection each count once). Past it, new connections are refused:
	// 503 on the explicit listener, a reset on the transparent one. Zero
	// means 4096; negative means no cap. With FDLimit set, the cap is
	// lowered to what the limit leaves room for (MaxTunnels reports it).
	MaxTunnels int
	// FDLimit is the process's file-descriptor limit (RLIMIT_NOFILE); when
	// positive, the tunnel cap never exceeds what it leaves room for after
	// FDReserve and the proxy's own reserve (fds.go), so a client past the
	// cap is refused cleanly instead of the process running out of
	// descriptors. Zero means no limit is considered.
	FDLimit int
	// FDReserve is the descriptors the rest of the process may hold at once
	// (the resolver's sockets), counted off FDLimit before tunnels.
	FDReserve int
	// MaxTunnelsPerDest caps concurrent tunnels and in-flight HTTP requests
	// to one destination (name or address, and port). Zero means 512;
	// negative means no cap.
	MaxTunnelsPerDest int
	// Audit receives one record per decision. Nil discards them.
	Audit *audit.Logger
	// Logger receives operational logs (accept errors, unexpected
	// failures; decisions at debug level). Nil discards them.
	Logger *slog.Logger
	// Metrics registers the egressd_proxy_* collectors (see metrics.go).
	// Nil registers none.
	Metrics *metrics.Registry
	// SelfAddrs are egressd's own listening address:ports (DNS, admin,
	// metrics, both proxy listeners). The proxy never dials one, whatever
	// the policy says (THREATS C6). The addresses of the listeners passed
	// to ServeExplicit and ServeTransparent are added automatically. An
	// unspecified address (0.0.0.0, ::) matches every address of its
	// family on that port.
	SelfAddrs []netip.AddrPort
	// Inspect configures HTTPS inspection (inspect.go); SetInspect
	// replaces it. Nil: hosts the policy inspects are refused.
	Inspect *Inspect
}

const (
	defaultHeaderTimeout     = 10 * time.Second
	defaultIdleTimeout       = 5 * time.Minute
	defaultDialTimeout       = 10 * time.Second
	defaultMaxTunnelsPerDest = 512
	// defaultMaxPipes bounds the splice pipes in use at once (2 fds each).
	defaultMaxPipes = 256
)

// DefaultMaxTunnels is the cap on client connections when
// Config.MaxTunnels is zero.
const DefaultMaxTunnels = 4096

// ErrClosed is returned by ServeExplicit and ServeTransparent after
// Shutdown.
var ErrClosed = errors.New("proxy: closed")

// Proxy is egressd's explicit and transparent proxy. It is safe for
// concurrent use; one Proxy serves any number of listeners.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	met       *proxyMetrics
	imet      *inspectMetrics
	inspect   atomic.Pointer[Inspect]
	dialer    upstreamDialer
	transport *http.Transport

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*clientConn]struct{}
	perDest   map[policy.Target]int
	self      []netip.AddrPort
	closing   bool
	drained   chan struct{} // closed when closing and conns is empty
	handlers  sync.WaitGroup
	watchOnce sync.Once
	stopWatch chan struct{}
	watchDone chan struct{}
	refusing  chan struct{} // semaphore of refuseAtAccept's goroutines
	// upstreamHTTP counts the open upstream connections of the HTTP
	// forwarder and of inspected sessions (reset.go).
	upstreamHTTP atomic.Int64
	// origDst finds a transparent connection's original destination
	// (originalDst; tests inject one).
	origDst func(net.Conn) (netip.AddrPort, error)
	// dial connects to a vetted address (dialer.dial; tests inject one
	// that reaches a stand-in server instead).
	dial func(ctx context.Context, ap netip.AddrPort) (net.Conn, error)
	// firstWait is serverFirstWait (tests shorten it).
	firstWait time.Duration
	// pipes are the relay's splice pipes (splice.go).
	pipes *pipePool
}

// New checks cfg, fills its defaults and returns a Proxy that serves
// nothing until ServeExplicit or ServeTransparent is called.
func New(cfg Config) (*Proxy, error) {
	if cfg.Policy == nil {
		return nil, errors.New("proxy: Config.Policy is nil (a proxy without a policy would have nothing to enforce)")
	}
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = defaultHeaderTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	if cfg.MaxTunnels == 0 {
		cfg.MaxTunnels = DefaultMaxTunnels
	}
	if cfg.MaxTunnelsPerDest == 0 {
		cfg.MaxTunnelsPerDest = defaultMaxTunnelsPerDest
	}
	pipes := defaultMaxPipes
	if cfg.FDLimit > 0 {
		b, err := budgetFDs(cfg.FDLimit, cfg.FDReserve)
		if err != nil {
			return nil, err
		}
		pipes = b.pipes
		if cfg.MaxTunnels < 0 || cfg.MaxTunnels > b.tunnels {
			cfg.MaxTunnels = b.tunnels
		}
	}
	for _, ap := range cfg.SelfAddrs {
		if !ap.IsValid() {
			return nil, fmt.Errorf("proxy: self address %v is not a valid address:port", ap)
		}
	}
	met, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	imet, err := newInspectMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		cfg:       cfg,
		log:       log,
		met:       met,
		imet:      imet,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*clientConn]struct{}),
		perDest:   make(map[policy.Target]int),
		stopWatch: make(chan struct{}),
		watchDone: make(chan struct{}),
		refusing:  make(chan struct{}, maxRefusing),
		origDst:   originalDst,
	}
	for _, ap := range cfg.SelfAddrs {
		p.self = append(p.self, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	p.dialer = upstreamDialer{mark: cfg.Mark, timeout: cfg.DialTimeout, keepAlive: 30 * time.Second}
	p.dial = p.dialer.dial
	p.firstWait = serverFirstWait
	p.pipes = newPipePool(pipes)
	if cfg.Metrics != nil {
		pp := p.pipes
		err := cfg.Metrics.Register(metrics.NewCounterFunc("egressd_proxy_relay_copied_chunks_total",
			"Chunks the relay moved through a user-space buffer because every splice pipe was in use.",
			func() float64 { return float64(pp.copiedChunks.Load()) }))
		if err != nil {
			return nil, fmt.Errorf("registering proxy metrics: %w", err)
		}
	}
	p.met.maxTunnels.Set(float64(max(cfg.MaxTunnels, -1)))
	p.transport = p.newTransport()
	p.inspect.Store(cfg.Inspect)
	return p, nil
}

// ServeExplicit serves the explicit proxy (CONNECT and absolute-form HTTP)
// on ln until Shutdown; it then returns ErrClosed. ln's address is added to
// the self addresses.
func (p *Proxy) ServeExplicit(ln net.Listener) error {
	return p.serve(ln, true)
}

// ServeTransparent serves connections redirected by the sandbox firewall
// (iptables REDIRECT, IPv4 or IPv6) on ln until Shutdown; it then returns
// ErrClosed. ln's address is added to the self addresses.
func (p *Proxy) ServeTransparent(ln net.Listener) error {
	return p.serve(ln, false)
}

func (p *Proxy) serve(ln net.Listener, explicit bool) error {
	handle := p.serveTransparentConn
	if explicit {
		handle = p.serveExplicitConn
	}
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		_ = ln.Close()
		return ErrClosed
	}
	p.listeners[ln] = struct{}{}
	if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil {
		p.self = append(p.self, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	p.mu.Unlock()
	p.watchOnce.Do(func() { go p.idleWatchdog() })

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			p.mu.Lock()
			closing := p.closing
			p.mu.Unlock()
			if closing {
				return ErrClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAcceptError(err) {
				// EMFILE and friends: back off, never spin, never exit.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.log.Warn("accept failed; retrying", "listener", ln.Addr().String(), "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			p.mu.Lock()
			delete(p.listeners, ln)
			p.mu.Unlock()
			return fmt.Errorf("accepting on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		cc, why := p.admit(c, explicit)
		if cc == nil {
			p.refuseAtAccept(c, explicit, why)
			continue
		}
		go p.runHandler(cc, handle)
	}
}

// runHandler runs one connection's handler and releases it.
func (p *Proxy) runHandler(cc *clientConn, handle func(*clientConn)) {
	defer p.handlers.Done()
	defer p.release(cc)
	defer cc.releaseBuffers() // after the close: nothing reads them any more
	defer cc.c.Close()
	handle(cc)
}

// admit registers a new client connection, or returns nil and why not.
func (p *Proxy) admit(c net.Conn, explicit bool) (*clientConn, audit.Reason) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return nil, audit.ReasonShuttingDown
	}
	if p.cfg.MaxTunnels > 0 && len(p.conns) >= p.cfg.MaxTunnels {
		return nil, audit.ReasonMaxTunnels
	}
	cc := &clientConn{p: p, c: c, client: clientAddr(c), accepted: time.Now(), explicit: explicit, released: make(chan struct{})}
	p.conns[cc] = struct{}{}
	p.handlers.Add(1)
	p.met.open.Inc()
	return cc, ""
}

func (p *Proxy) release(cc *clientConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.conns[cc]; !ok {
		return
	}
	delete(p.conns, cc)
	close(cc.released)
	p.met.open.Dec()
	if p.closing && len(p.conns) == 0 && p.drained != nil {
		close(p.drained)
		p.drained = nil
	}
}

// maxRefusing bounds the goroutines answering 503 to connections refused
// at accept; past it, refused connections are reset without an answer.
const maxRefusing = 64

// refuseAtAccept turns away a connection accepted past MaxTunnels (or
// during shutdown): 503 on the explicit listener, a reset on the
// transparent one. The accept loop never waits on the refused client.
func (p *Proxy) refuseAtAccept(c net.Conn, explicit bool, why audit.Reason) {
	if why != audit.ReasonMaxTunnels {
		resetConn(c)
		return
	}
	p.met.refTunnels.Inc()
	d := denyf(http.StatusServiceUnavailable, audit.ReasonMaxTunnels, "%d connections open (--max-tunnels)", p.cfg.MaxTunnels)
	client := clientAddr(c)
	if !explicit {
		resetConn(c)
		p.logDenial(audit.KindTCP, "", 0, client, nil, d)
		return
	}
	// The request is unread; connect is the explicit listener's kind.
	p.logDenial(audit.KindConnect, "", 0, client, nil, d)
	select {
	case p.refusing <- struct{}{}:
	default:
		resetConn(c)
		return
	}
	go func() {
		defer func() { <-p.refusing }()
		answerAndClose(c, "", d)
	}()
}

// answerAndClose writes a denial, half-closes, and drains briefly before
// closing, so the client reads the answer instead of a reset caused by its
// own unread request bytes.
func answerAndClose(c net.Conn, target string, d *denial) {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if err := writeDenial(c, target, d); err == nil {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
			_, _ = io.CopyN(io.Discard, c, 64<<10)
		}
	}
	_ = c.Close()
}

// acquireDest reserves one slot of the per-destination cap. The key is
// the destination as a value: rendering it as text cost each tunnel two
// allocations.
func (p *Proxy) acquireDest(key policy.Target) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.MaxTunnelsPerDest > 0 && p.perDest[key] >= p.cfg.MaxTunnelsPerDest {
		p.met.refDest.Inc()
		return false
	}
	p.perDest[key]++
	return true
}

func (p *Proxy) releaseDest(key policy.Target) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.perDest[key] <= 1 {
		delete(p.perDest, key)
		return
	}
	p.perDest[key]--
}

// OpenTunnels returns the number of client connections being served.
func (p *Proxy) OpenTunnels() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// MaxTunnels is the cap in force on client connections (Config.MaxTunnels,
// lowered to what Config.FDLimit leaves room for); negative means none.
func (p *Proxy) MaxTunnels() int { return p.cfg.MaxTunnels }

// Reevaluate re-decides every open tunnel and in-flight request against
// the matcher now in force, with the inputs of its original decision
// (name, address dialled, port), and closes those now denied. Call it
// after a policy reload. Idle pooled upstream connections are dropped too,
// so no later request reuses a connection vetted under the old policy.
func (p *Proxy) Reevaluate() {
	m := p.cfg.Policy.Current()
	for _, cc := range p.snapshot() {
		b := cc.currentBasis()
		if b == nil {
			continue
		}
		if d := recheck(m, b); d != nil {
			p.log.Info("closing a connection the reloaded policy denies", "client", cc.client, "target", sanitizeLine(b.target()), "reason", d.text())
			cc.closeBy("closed on policy reload: " + d.text())
		}
	}
	p.transport.CloseIdleConnections()
}

// Shutdown stops the listeners, closes idle keep-alive connections, waits
// until the remaining connections end or ctx is done, and then closes
// whatever is left (CONNECT tunnels included: they are tracked here, not by
// an http.Server). It returns ctx.Err() if it had to close connections.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	first := !p.closing
	p.closing = true
	for ln := range p.listeners {
		_ = ln.Close()
		delete(p.listeners, ln)
	}
	drained := make(chan struct{})
	if len(p.conns) == 0 {
		close(drained)
	} else {
		p.drained = drained
	}
	p.mu.Unlock()
	if first {
		p.watchOnce.Do(func() { close(p.watchDone) }) // never started
		close(p.stopWatch)
	}
	// Connections between requests or still in their first head are not
	// doing anything a client waits for: close them now.
	for _, cc := range p.snapshot() {
		if cc.idleOrUnstarted() {
			cc.closeBy("closed by shutdown")
		}
	}
	p.transport.CloseIdleConnections()
	var err error
	select {
	case <-drained:
	case <-ctx.Done():
		err = ctx.Err()
		for _, cc := range p.snapshot() {
			cc.closeBy("closed by shutdown")
		}
	}
	p.handlers.Wait()
	<-p.watchDone
	p.transport.CloseIdleConnections()
	p.pipes.closeIdle() // every relay has ended: every pipe is idle
	return err
}

func (p *Proxy) snapshot() []*clientConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*clientConn, 0, len(p.conns))
	for cc := range p.conns {
		out = append(out, cc)
	}
	return out
}

func (p *Proxy) isClosing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closing
}

// isSelf reports whether ap is one of egressd's own listeners.
func (p *Proxy) isSelf(ap netip.AddrPort) bool {
	a := ap.Addr().Unmap()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.self {
		if s.Port() != ap.Port() {
			continue
		}
		sa := s.Addr()
		if sa == a || sa.IsUnspecified() && sa.Is4() == a.Is4() {
			return true
		}
	}
	return false
}

// idleWatchdog closes relaying tunnels idle for longer than IdleTimeout.
// The relay splices between sockets without seeing the bytes, so idleness
// comes from the kernel: TCP_INFO's time since data was last received from
// and sent to the client.
func (p *Proxy) idleWatchdog() {
	defer close(p.watchDone)
	tick := min(max(p.cfg.IdleTimeout/10, 50*time.Millisecond), 5*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-p.stopWatch:
			return
		case <-t.C:
		}
		for _, cc := range p.snapshot() {
			if !cc.isRelaying() {
				continue
			}
			idle, ok := socketIdle(cc.c)
			if ok && idle >= p.cfg.IdleTimeout {
				cc.closeBy(fmt.Sprintf("closed after %s idle", idle.Round(time.Millisecond)))
			}
		}
	}
}

// connState is where a client connection is in its life.
type connState int

const (
	stateHead   connState = iota // reading the first head or peeking: nothing decided
	stateIdle                    // keep-alive HTTP connection between requests
	stateActive                  // a decided request or tunnel is in progress
)

// clientConn is one client connection, registered from accept to close
// with the inputs of the decision in force on it.
type clientConn struct {
	p *Proxy
	c net.Conn
	// client is c's remote address (IPv4-mapped as IPv4), invalid when c
	// is not TCP (a test's pipe).
	client   netip.AddrPort
	accepted time.Time
	// explicit: accepted on the explicit listener (else the transparent).
	explicit bool
	// released is closed when the connection is no longer registered.
	released chan struct{}

	mu       sync.Mutex
	state    connState
	basis    *basis
	upstream net.Conn
	// life is the lifetime of the decided tunnel or request, ended by
	// closeBy; nil between requests.
	life     *lifetime
	relaying bool
	closedBy string

	// The handler goroutine's own (buffers.go): the pooled head reader and
	// first-bytes buffer it holds, and whether another goroutine may read
	// them (then they are not pooled again).
	br     *bufio.Reader
	peek   *[]byte
	shared bool
}

// basis is what a decision was made on, so it can be made again.
type basis struct {
	// name is the name the allow was for; empty when an address decided.
	name string
	// sni is a ClientHello name checked only against the block list
	// (CONNECT to an allowed IP literal).
	sni string
	// addr is the vetted address dialled (invalid until known).
	addr netip.Addr
	port uint16
	// byAddr: allowed by Matcher.DecideAddr(addr, port) (IP literal or
	// allow IP rule) rather than by name.
	byAddr bool
	// raw: the stream is relayed without a name of its own (h2c, other
	// bytes), so a name must be allowed by a rule naming the port
	// (Matcher.DecideNameRaw), not only by default ports.
	raw bool
	// inspected: a TLS stream egressd terminates (inspect.go); splicedTLS:
	// a TLS stream spliced because its name was not inspected. A reload
	// that changes which of the two a stream would be closes it.
	inspected, splicedTLS bool
}

func (b *basis) target() string {
	if b.name != "" {
		return policy.Target{Name: b.name, Port: b.port}.String()
	}
	return policy.Target{Addr: b.addr, Port: b.port}.String()
}

// recheck decides b again with m; nil means still allowed.
func recheck(m *policy.Matcher, b *basis) *denial {
	if b.byAddr {
		if d := m.DecideAddr(b.addr, b.port); !d.Allow {
			return denyAddr(d, b.addr)
		}
	} else {
		d := m.DecideName(b.name, b.port)
		if b.raw {
			d = m.DecideNameRaw(b.name, b.port)
		}
		if !d.Allow {
			return denyDecision(d, "")
		}
		if b.addr.IsValid() {
			if d := m.GuardAddr(b.addr, b.port); !d.Allow {
				return denyAddr(d, b.addr)
			}
		}
	}
	if b.sni != "" {
		if d := m.DecideName(b.sni, b.port); !d.Allow && d.Reason != policy.ReasonNoAllowRule {
			return denyDecision(d, "")
		}
	}
	if b.inspected || b.splicedTLS {
		name := b.name
		if name == "" {
			name = b.sni
		}
		if name != "" && m.Inspects(name, b.port) != b.inspected {
			return denyf(http.StatusServiceUnavailable, audit.ReasonInspectChanged, "whether %s is inspected changed", name)
		}
	}
	return nil
}

// denyAddr is a denial of an address by DecideAddr or GuardAddr, naming
// the guarded range when the guard decided.
func denyAddr(d policy.Decision, a netip.Addr) *denial {
	label, _ := policy.GuardedRange(a)
	dn := denyDecision(d, guardDetail(a.String(), label))
	dn.addr = a
	return dn
}

func (cc *clientConn) setState(s connState) {
	cc.mu.Lock()
	cc.state = s
	cc.mu.Unlock()
}

func (cc *clientConn) idleOrUnstarted() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.state != stateActive
}

func (cc *clientConn) currentBasis() *basis {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.basis == nil {
		return nil
	}
	b := *cc.basis
	return &b
}

// decided records the decision in force, made with matcher m, and what to
// close if it is revoked. It returns a non-nil denial when the connection
// must not go on: it was closed by Reevaluate, Reset or Shutdown meanwhile,
// or a policy reload since m denies it (a reload that Reevaluate ran
// before this registration would otherwise miss).
func (cc *clientConn) decided(m *policy.Matcher, b *basis, upstream net.Conn, life *lifetime) *denial {
	cc.mu.Lock()
	if cc.closedBy != "" {
		why := cc.closedBy
		cc.mu.Unlock()
		return denyf(http.StatusServiceUnavailable, audit.ReasonShuttingDown, "%s", why)
	}
	cc.state, cc.basis, cc.upstream, cc.life = stateActive, b, upstream, life
	cc.mu.Unlock()
	if cur := cc.p.cfg.Policy.Current(); cur != m {
		if d := recheck(cur, b); d != nil {
			return d
		}
	}
	return nil
}

// setUpstream records a tunnel's upstream connection and the vetted
// address it reached; if the connection was closed meanwhile, it closes
// the upstream too.
func (cc *clientConn) setUpstream(up net.Conn, a netip.Addr) {
	cc.mu.Lock()
	cc.upstream = up
	if cc.basis != nil && !cc.basis.byAddr {
		cc.basis.addr = a
	}
	closed := cc.closedBy != ""
	cc.mu.Unlock()
	if closed {
		_ = up.Close()
	}
}

// setRaw records that the tunnel relays bytes that name no host, which a
// reload must re-decide with Matcher.DecideNameRaw.
func (cc *clientConn) setRaw() {
	cc.mu.Lock()
	if cc.basis != nil {
		cc.basis.raw = true
	}
	cc.mu.Unlock()
}

// setInspected and setSplicedTLS record what became of a TLS stream.
func (cc *clientConn) setInspected() {
	cc.mu.Lock()
	if cc.basis != nil {
		cc.basis.inspected = true
	}
	cc.mu.Unlock()
}

func (cc *clientConn) setSplicedTLS() {
	cc.mu.Lock()
	if cc.basis != nil {
		cc.basis.splicedTLS = true
	}
	cc.mu.Unlock()
}

// setSNI records a ClientHello name that a reload must re-check against
// the block list.
func (cc *clientConn) setSNI(name string) {
	cc.mu.Lock()
	if cc.basis != nil {
		cc.basis.sni = name
	}
	cc.mu.Unlock()
}

// setNameBasis records that the stream, admitted by its address, is now
// served by name (an inspected TLS name: inspect.go), so a reload
// re-decides the name and guards the address it reaches.
func (cc *clientConn) setNameBasis(name string) {
	cc.mu.Lock()
	if cc.basis != nil {
		cc.basis.name, cc.basis.sni, cc.basis.byAddr, cc.basis.addr = name, "", false, netip.Addr{}
	}
	cc.mu.Unlock()
}

// closedReasonOr is closedReason, or s when egressd did not close it.
func (cc *clientConn) closedReasonOr(s string) string {
	if why := cc.closedReason(); why != "" {
		return why
	}
	return s
}

// setAddr records the vetted address an HTTP request was sent to.
func (cc *clientConn) setAddr(a netip.Addr) {
	cc.mu.Lock()
	if cc.basis != nil && !cc.basis.byAddr {
		cc.basis.addr = a
	}
	cc.mu.Unlock()
}

// undecided clears the decision after a request ends.
func (cc *clientConn) undecided() {
	cc.mu.Lock()
	cc.basis, cc.upstream, cc.life = nil, nil, nil
	cc.mu.Unlock()
}

func (cc *clientConn) setRelaying(on bool) {
	cc.mu.Lock()
	cc.relaying = on
	cc.mu.Unlock()
}

func (cc *clientConn) isRelaying() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.relaying
}

// closedReason is why egressd closed the connection early, or "".
func (cc *clientConn) closedReason() string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.closedBy
}

// closeBy closes the connection (with a reset) and its upstream, and ends
// the lifetime of its tunnel or in-flight request (a pending dial, resolve
// or upstream exchange); the handler sees the errors and ends.
func (cc *clientConn) closeBy(reason string) {
	cc.mu.Lock()
	if cc.closedBy == "" {
		cc.closedBy = reason
	}
	up, life := cc.upstream, cc.life
	cc.mu.Unlock()
	if life != nil {
		life.end()
	}
	resetConn(cc.c)
	if up != nil {
		// Reset, not closed: a connection ended this way keeps no
		// closing state (FIN_WAIT, TIME_WAIT) in the namespace, which
		// would name its destination to the next tenant of a pooled
		// sandbox (THREATS G9).
		resetConn(up)
	}
}

// clientAddr is c's remote address as the audit records it, the value
// (rendered by the audit writer: no text per connection); an IPv4-mapped
// address as IPv4, as TCPAddr.String writes it. Invalid when c is not TCP.
func clientAddr(c net.Conn) netip.AddrPort {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// resetConn closes c with a TCP reset (SO_LINGER 0) when it is TCP, so a
// refused client fails fast instead of seeing a clean end of stream.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// logDenial writes the audit record of a denial (or of a failure, the
// outcome its reason has: audit.Reason.Outcome), immediately.
func (p *Proxy) logDenial(kind audit.Kind, target string, port uint16, client netip.AddrPort, dialed []netip.AddrPort, d *denial) {
	outcome := d.reason.Outcome()
	p.met.decision(string(kind), outcome, d.reason)
	name := d.name
	if name == target {
		name = ""
	}
	var addrs []string
	if len(dialed) == 0 && d.addr.IsValid() {
		addrs = []string{d.addr.String()}
	}
	p.cfg.Audit.Log(audit.Record{
		Kind:       kind,
		Target:     sanitizeLine(target),
		Name:       name,
		Port:       port,
		Addrs:      addrs,
		Decision:   outcome,
		Reason:     d.reason,
		Rule:       d.ruleText(),
		Source:     d.ruleSource(),
		Error:      d.detailForAudit(),
		AddrValues: audit.AddrValues{Dialed: dialed, Client: client},
	})
	p.log.Debug("refused", "kind", kind, "target", sanitizeLine(target), "port", port, "client", client, "reason", d.text())
}

// logFailure writes the record of an allowed request that could not be
// served (d's reason has outcome error: the resolver or the upstream
// failed), naming the rule that allowed it; a refusal found after the
// allow (every address guarded, a blocked CNAME target) is a denial.
func (p *Proxy) logFailure(a *allowed, d *denial) {
	if d.reason.Outcome() != audit.OutcomeError || d.decision.Reason != "" {
		p.logDenial(a.kind, a.targetText(), a.port, a.client, a.addrs, d)
		return
	}
	p.met.decision(string(a.kind), audit.OutcomeError, d.reason)
	p.cfg.Audit.Log(a.record(audit.OutcomeError, d.reason, d.detailForAudit()))
}

// record is the audit record of a: what every record of an allowed
// connection or request carries, with its outcome, reason and error text.
func (a *allowed) record(outcome audit.Outcome, reason audit.Reason, errText string) audit.Record {
	r := audit.Record{
		Kind:       a.kind,
		Target:     a.target,
		Name:       a.name,
		Port:       a.port,
		Decision:   outcome,
		Reason:     reason,
		AddrValues: audit.AddrValues{Target: a.targetAddr, Dialed: a.addrs, Client: a.client},
		Error:      errText,
		DurationMS: float64(time.Since(a.start).Microseconds()) / 1000,
	}
	if a.decision.Rule != nil {
		r.Rule = a.decision.Rule.Text
		r.Source = a.decision.Rule.SourceText()
	}
	return r
}

// allowed is an allow decision whose record is written when the connection
// or request ends, with its byte counts and duration.
type allowed struct {
	kind audit.Kind
	// target is the name or address asked for; an IP-literal CONNECT
	// target may be given as targetAddr instead (target empty), which the
	// audit writer renders.
	target     string
	targetAddr netip.Addr
	// name is the learned name a connection to an address was allowed
	// on (tcp), for the record's "name".
	name     string
	port     uint16
	client   netip.AddrPort
	decision policy.Decision
	start    time.Time
	// addrs are the addresses dialled, in order (the last reached).
	addrs []netip.AddrPort
	// inspected: the connection's TLS was terminated (inspect.go).
	inspected bool
}

// targetText is a's target as text.
func (a *allowed) targetText() string {
	if a.target == "" && a.targetAddr.IsValid() {
		return a.targetAddr.String()
	}
	return a.target
}

// finish writes the record of an allowed connection or request (a
// would-deny in report mode: its decision says so). errText describes a
// failure after the decision (dial error, early close).
func (p *Proxy) finish(a *allowed, up, down int64, errText string) {
	reason := audit.Reason(a.decision.Reason)
	outcome := reason.OutcomeLetThrough(a.decision.WouldDeny)
	p.met.decision(string(a.kind), outcome, reason)
	p.met.relayed(up, down)
	r := a.record(outcome, reason, sanitizeLine(errText))
	r.BytesUp, r.BytesDown, r.Inspected = up, down, a.inspected
	p.cfg.Audit.Log(r)
}

// errorText renders an error for the audit log, "" for nil and EOF.
func errorText(err error) string {
	if err == nil || errors.Is(err, io.EOF) {
		return ""
	}
	return err.Error()
}
