package dnsfilter

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/audit"
)

// maxDecisions bounds how often one query is decided: a Reset between a
// decision and its reply makes it decided again.
const maxDecisions = 3

// resetState is what Reset needs beyond the tables it empties.
type resetState struct {
	// gate is held for reading while a reply is checked and written, and
	// for writing while Reset bumps the epoch and empties the tables.
	gate sync.RWMutex
	// epoch counts resets; a decision remembers the one it started in.
	epoch atomic.Uint64
	// lookups is the context upstream exchanges run in; Reset cancels it
	// and starts a new one.
	lookups atomic.Pointer[epochContext]
	base    context.Context

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

type epochContext struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func (r *resetState) init(base context.Context) {
	r.base = base
	r.conns = make(map[*trackedConn]struct{})
	r.renewLookups()
}

// renewLookups starts a new lookup context and cancels the old one.
func (r *resetState) renewLookups() {
	ctx, cancel := context.WithCancel(r.base)
	if old := r.lookups.Swap(&epochContext{ctx, cancel}); old != nil {
		old.cancel()
	}
}

// lookupContext is the context an upstream exchange starts in now.
func (r *resetState) lookupContext() context.Context { return r.lookups.Load().ctx }

// serveCommitted decides req, packs its reply into buf and hands it to
// write under the gate, deciding again when a Reset began since the
// decision started. The query is counted and audited once, under the gate,
// so the audit records of every reply written before a Reset are logged
// before it returns. It returns the packed reply (nil when nothing was
// sent), for buf's owner to reuse.
func (s *Server) serveCommitted(req *dns.Msg, client netip.Addr, tcp bool, buf []byte, write func([]byte)) []byte {
	if req.Response {
		return nil
	}
	for try := 1; ; try++ {
		epoch := s.reset.epoch.Load()
		now := s.set.now()
		resp, out := s.decide(req, client, now, try > 1)
		s.reset.gate.RLock()
		if s.reset.epoch.Load() != epoch {
			s.reset.gate.RUnlock()
			if try < maxDecisions {
				continue
			}
			// Resets kept overtaking its decision: an error, like a
			// query decided while shutting down.
			resp = reply(req, dns.RcodeServerFailure)
			out = outcome{reason: audit.ReasonShuttingDown, target: out.target, qtype: out.qtype,
				note: "egressd was reset while the query was decided"}
			s.reset.gate.RLock()
		}
		s.account(&out, client, now)
		wire, err := s.packReply(req, tcp, resp, &out, buf)
		if err != nil {
			s.log.Debug("packing reply failed", "client", client, "err", err)
		} else {
			write(wire)
		}
		s.reset.gate.RUnlock()
		return wire
	}
}

// Reset forgets everything the resolver learned from past queries, so a
// pooled sandbox can be handed to the next tenant: the answer cache (and
// the packed replies memoised on its answers), the learned-address table,
// the per-client rate buckets; upstream lookups in flight are cancelled and
// client TCP connections closed. The audit record of every reply written
// before Reset returns has been logged (its owner flushes the Logger). Put the next policy in force (the deny-everything one,
// between tenants) before calling it: a query whose decision began before
// Reset is decided again under the policy in force when it is answered.
// Lookups that end after Reset neither cache nor learn their answers.
func (s *Server) Reset() {
	// Close the TCP connections first: a reply blocked writing to one
	// holds the gate.
	s.reset.closeConns()
	s.reset.gate.Lock()
	s.reset.epoch.Add(1)
	gen := s.gen.Add(1)
	s.cache.reset(gen)
	s.learned.reset(gen)
	s.limiter.reset()
	s.reset.renewLookups()
	s.reset.gate.Unlock()
	// Connections accepted while the gate was closed were served under
	// the new epoch; closing them too leaves none from before.
	s.reset.closeConns()
}

// State counts what the resolver holds now. After Reset every count is
// zero until the next query.
type State struct {
	// CacheEntries are cached answers (one per name and query type).
	CacheEntries int `json:"cache_entries"`
	// LearnedAddresses are addresses in the learned-address table.
	LearnedAddresses int `json:"learned_addresses"`
	// RateLimitClients are client IPs with a rate-limit bucket.
	RateLimitClients int `json:"rate_limit_clients"`
	// LookupsInFlight are upstream lookups not finished yet.
	LookupsInFlight int `json:"lookups_in_flight"`
	// TCPConnections are open client TCP connections.
	TCPConnections int `json:"tcp_connections"`
}

// Empty reports whether the resolver holds nothing of past queries.
func (st State) Empty() bool { return st == State{} }

// State returns the counts of every table and connection Reset clears.
func (s *Server) State() State {
	return State{
		CacheEntries:     s.cache.len(),
		LearnedAddresses: s.learned.len(),
		RateLimitClients: s.limiter.len(),
		LookupsInFlight:  s.flight.len(),
		TCPConnections:   s.reset.connCount(),
	}
}

// track wraps ln so that its connections are known until they close.
func (r *resetState) track(ln net.Listener) net.Listener {
	return &trackingListener{Listener: ln, r: r}
}

func (r *resetState) closeConns() {
	r.mu.Lock()
	conns := make([]*trackedConn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

func (r *resetState) connCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

type trackingListener struct {
	net.Listener
	r *resetState
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, r: l.r}
	l.r.mu.Lock()
	l.r.conns[tc] = struct{}{}
	l.r.mu.Unlock()
	return tc, nil
}

// trackedConn is a client TCP connection, registered until it closes.
type trackedConn struct {
	net.Conn
	r    *resetState
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.r.mu.Lock()
		delete(c.r.conns, c)
		c.r.mu.Unlock()
	})
	return c.Conn.Close()
}

func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
