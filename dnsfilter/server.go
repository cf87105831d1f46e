package dnsfilter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/netutil"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// maxQuerySize is the largest UDP query read; longer datagrams are cut and
// then fail to parse (FORMERR). Real queries are far smaller.
const maxQuerySize = 4096

// Server is the sandbox's DNS resolver. Create it with New, bind with
// Listen, run with Serve, stop with Shutdown. It is also a dns.Handler.
type Server struct {
	set     settings
	policy  PolicySource
	audit   *audit.Logger
	log     *slog.Logger
	m       *dnsMetrics
	cache   *cache
	learned *learnedTable
	limiter *limiter
	flight  flight
	gen     atomic.Uint64 // bumped by Reset and when the upstreams change

	// reset is Reset's state (reset.go): the gate every reply passes, the
	// epoch, the context upstream lookups run in, the client TCP
	// connections.
	reset resetState
	// lastClient is the last client address and its text (clientText).
	lastClient atomic.Pointer[clientName]

	// pool holds the upstream resolvers in use (see useUpstreamsOf);
	// poolMu serialises changing it, and closing it at Shutdown.
	pool   atomic.Pointer[upstreamPool]
	poolMu sync.Mutex

	baseCtx context.Context
	cancel  context.CancelFunc

	mu       sync.Mutex
	pcs      []net.PacketConn
	lns      []net.Listener
	servers  []*dnsServer
	serving  bool
	shutdown bool
	done     chan struct{} // closed when Shutdown starts
	stopped  chan struct{} // closed when Shutdown has finished
}

type dnsServer struct {
	srv     *dns.Server
	started chan struct{}
	closer  io.Closer
}

// New validates cfg and builds a Server. It binds nothing.
func New(cfg Config) (*Server, error) {
	set, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	s := &Server{
		set:     set,
		policy:  cfg.Policy,
		audit:   cfg.Audit,
		log:     cfg.Logger,
		cache:   newCache(set.cacheSize),
		learned: newLearnedTable(set.learnedSize),
		limiter: newLimiter(set.rate, set.burst),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	if l, ok := cfg.Policy.(*policy.Live); ok && l == nil {
		s.policy = nil // a typed nil would panic in Current: deny everything instead
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.m = newMetrics(s.cache.len, s.learned.len)
	if err := s.m.register(cfg.Metrics); err != nil {
		return nil, err
	}
	s.pool.Store(&upstreamPool{addrs: set.upstreams, up: s.newUpstreams(set.upstreams)})
	s.baseCtx, s.cancel = context.WithCancel(context.Background())
	s.reset.init(s.baseCtx)
	return s, nil
}

func (s *Server) matcher() *policy.Matcher {
	if s.policy == nil {
		return nil
	}
	return s.policy.Current()
}

// upstreamPool is the exchanger for one list of upstream resolvers.
type upstreamPool struct {
	addrs []netip.AddrPort
	up    exchanger
}

func (s *Server) newUpstreams(addrs []netip.AddrPort) exchanger {
	return newUpstreams(addrs, s.set.mark, s.set.timeout, s.set.maxUpstream, s.m)
}

// blockRcode is the answer to a name m denies: the policy's
// dns_block_response, or Config.BlockResponse when the policy sets none.
func (s *Server) blockRcode(m *policy.Matcher) int {
	switch m.DNSBlockResponse() {
	case policy.DNSRefused:
		return dns.RcodeRefused
	case policy.DNSNXDomain:
		return dns.RcodeNameError
	}
	return s.set.blockRcode
}

// useUpstreamsOf makes the upstream resolvers of m — the policy's
// network.upstream_dns, or Config.Upstreams when the policy names none —
// the ones every later lookup asks. It is called with the matcher a query
// was decided with, before the query looks anything up, so a reload that
// changes the resolvers applies from the first query decided under it.
//
// When the resolvers change, the answer cache is emptied and lookups still
// in flight neither cache nor learn (their answers came from the resolvers
// of another policy); the old sockets close as their queries finish. Only
// the matcher in force may change them: a query that read the matcher just
// before a reload does not switch back.
func (s *Server) useUpstreamsOf(m *policy.Matcher) {
	want := m.UpstreamDNS()
	if len(want) == 0 {
		want = s.set.upstreams
	}
	if slices.Equal(s.pool.Load().addrs, want) {
		return
	}
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	old := s.pool.Load()
	if slices.Equal(old.addrs, want) || m != s.matcher() {
		return
	}
	select {
	case <-s.done:
		return // shut down: the pool is closed, keep it so
	default:
	}
	s.pool.Store(&upstreamPool{addrs: want, up: s.newUpstreams(want)})
	s.cache.reset(s.gen.Add(1))
	old.up.close()
	s.log.Info("upstream resolvers changed", "upstreams", fmt.Sprint(want))
}

// Listen binds addr ("127.0.0.1:53", "[::1]:53") for UDP and TCP. With port
// 0 both get the same free port. Call it before Serve, once per address;
// queries that arrive before Serve are answered once it runs.
func (s *Server) Listen(addr string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serving || s.shutdown {
		return errors.New("dnsfilter: Listen after Serve or Shutdown")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("dns listen address %q: %w", addr, err)
	}
	var lastErr error
	for range 10 { // port 0: retry when TCP cannot get UDP's port
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return fmt.Errorf("binding DNS on udp %s: %w", addr, err)
		}
		tcpAddr := net.JoinHostPort(host, fmt.Sprint(pc.LocalAddr().(*net.UDPAddr).Port))
		ln, err := net.Listen("tcp", tcpAddr)
		if err != nil {
			pc.Close()
			lastErr = fmt.Errorf("binding DNS on tcp %s: %w", tcpAddr, err)
			if port == "0" && errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return lastErr
		}
		s.pcs = append(s.pcs, pc)
		s.lns = append(s.lns, ln)
		s.log.Info("listening", "addr", pc.LocalAddr().String())
		return nil
	}
	return lastErr
}

// Addrs returns the bound addresses (one per Listen; UDP and TCP share it).
func (s *Server) Addrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(s.pcs))
	for _, pc := range s.pcs {
		out = append(out, pc.LocalAddr().(*net.UDPAddr).AddrPort())
	}
	return out
}

// Serve answers queries on every bound address until ctx ends or Shutdown
// is called (then it returns nil), or a listener fails (then it shuts the
// others down and returns the error).
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.serving || s.shutdown {
		s.mu.Unlock()
		return errors.New("dnsfilter: Serve called twice or after Shutdown")
	}
	if len(s.pcs) == 0 {
		s.mu.Unlock()
		return errors.New("dnsfilter: Serve without Listen")
	}
	s.serving = true
	for _, pc := range s.pcs {
		s.servers = append(s.servers, s.newDNSServer(&dns.Server{PacketConn: pc, UDPSize: maxQuerySize}, pc))
	}
	for _, ln := range s.lns {
		ln := s.reset.track(netutil.LimitListener(ln, s.set.maxTCPConns))
		s.servers = append(s.servers, s.newDNSServer(&dns.Server{Listener: ln}, ln))
	}
	errc := make(chan error, len(s.servers))
	for _, ds := range s.servers {
		go func() { errc <- ds.srv.ActivateAndServe() }()
	}
	n := len(s.servers)
	s.mu.Unlock()

	var err error
	select {
	case <-ctx.Done():
	case <-s.done:
	case err = <-errc:
		n--
		select {
		case <-s.done:
			err = nil // the listener was closed by a concurrent Shutdown
		default:
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if serr := s.Shutdown(sctx); err == nil {
		err = serr
	}
	// Every server goroutine ends once its listener is shut down or closed.
	for ; n > 0; n-- {
		select {
		case <-errc:
		case <-sctx.Done():
			n = 0
		}
	}
	if err != nil {
		return fmt.Errorf("dns server: %w", err)
	}
	return nil
}

func (s *Server) newDNSServer(srv *dns.Server, c io.Closer) *dnsServer {
	ds := &dnsServer{srv: srv, started: make(chan struct{}), closer: c}
	srv.Handler = s
	srv.MsgAcceptFunc = acceptQuery
	srv.NotifyStartedFunc = func() { close(ds.started) }
	srv.ReadTimeout = 2 * time.Second
	srv.WriteTimeout = 2 * time.Second
	srv.IdleTimeout = func() time.Duration { return 8 * time.Second }
	return ds
}

// Shutdown stops the listeners, waits (until ctx ends) for queries in
// progress, cancels upstream queries still running and closes the upstream
// sockets. Every query answered has been handed to the audit Logger, whose
// owner flushes it (audit.Logger.Close). Calling it again waits for the
// first call to finish and returns nil.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		select {
		case <-s.stopped:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	defer close(s.stopped)
	s.shutdown = true
	close(s.done)
	servers := s.servers
	pcs, lns := s.pcs, s.lns
	s.mu.Unlock()

	var errs []error
	if len(servers) == 0 {
		// Never served: just release the sockets.
		for _, pc := range pcs {
			pc.Close()
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	for _, ds := range servers {
		select {
		case <-ds.started:
			if err := ds.srv.ShutdownContext(ctx); err != nil {
				errs = append(errs, err)
			}
		default:
			// Not started (yet): closing the socket makes
			// ActivateAndServe return as soon as it starts reading.
			ds.closer.Close()
		}
	}
	s.cancel()
	s.poolMu.Lock()
	s.pool.Load().up.close()
	s.poolMu.Unlock()
	return errors.Join(errs...)
}

// LearnedNames returns the names, allowed by the policy when they were
// answered, whose unexpired DNS answers contained addr. IPv4-mapped IPv6
// addresses are looked up as IPv4.
func (s *Server) LearnedNames(addr netip.Addr) []string {
	return s.learned.names(addr, s.set.now())
}

// acceptQuery lets through every query (opcode QUERY, QR clear) so that the
// handler answers and audits malformed ones itself; it ignores responses (no
// reflection) and answers other opcodes NOTIMP.
func acceptQuery(dh dns.Header) dns.MsgAcceptAction {
	if dh.Bits&(1<<15) != 0 {
		return dns.MsgIgnore
	}
	if opcode := int(dh.Bits>>11) & 0xF; opcode != dns.OpcodeQuery {
		return dns.MsgRejectNotImplemented
	}
	return dns.MsgAccept
}

// ServeDNS answers one client query. It implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	var client netip.Addr
	tcp := false
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		client = a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		client = a.AddrPort().Addr().Unmap()
		tcp = true
	}
	bp := wireBufs.Get().(*[]byte)
	wire := s.serveCommitted(req, client, tcp, (*bp)[:cap(*bp)], func(wire []byte) {
		if _, err := w.Write(wire); err != nil {
			s.log.Debug("writing reply failed", "client", client, "err", err)
		}
	})
	if wire != nil && cap(wire) <= maxPooledWire {
		*bp = wire[:0]
	}
	wireBufs.Put(bp)
}

// wireBufs are the buffers replies are packed into; one that grew larger
// than maxPooledWire (a big TCP answer) is left to the collector.
var wireBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

const maxPooledWire = 16 << 10
