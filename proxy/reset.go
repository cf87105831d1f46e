package proxy

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Reset closes every client connection (CONNECT tunnels, transparent
// connections, keep-alive HTTP clients, inspected sessions) and every
// upstream connection, without stopping the listeners, and waits until
// their handlers have ended, so that nothing of the last tenant of a pooled
// sandbox survives into the next. A connection being decided is refused.
// It returns an error naming what is still open when ctx ends first.
func (p *Proxy) Reset(ctx context.Context) error {
	closed := p.snapshot()
	for _, cc := range closed {
		cc.closeBy("closed by reset")
	}
	p.transport.CloseIdleConnections()
	for _, cc := range closed {
		select {
		case <-cc.released:
		case <-ctx.Done():
			return fmt.Errorf("proxy reset: %d connections still open: %w", p.OpenTunnels(), ctx.Err())
		}
	}
	// A request that ended while its connection closed may have put its
	// upstream connection back in the pool. Every relay has ended: close
	// the idle splice pipes too (they are empty; a reset leaves none).
	p.transport.CloseIdleConnections()
	p.pipes.closeIdle()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		st := p.State()
		if st.UpstreamHTTPConnections == 0 && st.RefusalsInFlight == 0 {
			return nil
		}
		select {
		case <-tick.C:
			p.transport.CloseIdleConnections()
		case <-ctx.Done():
			return fmt.Errorf("proxy reset: %d upstream HTTP connections, %d refusals still open: %w",
				st.UpstreamHTTPConnections, st.RefusalsInFlight, ctx.Err())
		}
	}
}

// State counts what the proxy holds now. After Reset every count is zero
// until the next connection.
type State struct {
	// ExplicitConnections and TransparentConnections are the client
	// connections open on each listener kind; Tunnels of them are relaying
	// (spliced, or an inspected session), InspectedSessions are terminated
	// TLS sessions.
	ExplicitConnections    int `json:"explicit_connections"`
	TransparentConnections int `json:"transparent_connections"`
	Tunnels                int `json:"tunnels"`
	InspectedSessions      int `json:"inspected_sessions"`
	// DestinationSlots are destinations with a max_tunnels_per_destination
	// slot taken.
	DestinationSlots int `json:"destination_slots"`
	// UpstreamHTTPConnections are open upstream connections of the plain
	// HTTP forwarder and of inspected sessions, pooled idle ones included.
	UpstreamHTTPConnections int `json:"upstream_http_connections"`
	// RefusalsInFlight are connections past max_tunnels still being
	// answered 503.
	RefusalsInFlight int `json:"refusals_in_flight"`
	// InspectCertificates are the certificates the inspection CA in force
	// has minted and cached (one per host name served).
	InspectCertificates int `json:"inspect_certificates"`
	// SplicePipes are the relay's splice pipes open, in use or idle.
	SplicePipes int `json:"splice_pipes"`
}

// Empty reports whether the proxy holds nothing of past connections.
func (st State) Empty() bool { return st == State{} }

// State returns the counts of every connection and table Reset clears.
func (p *Proxy) State() State {
	var st State
	p.mu.Lock()
	conns := make([]*clientConn, 0, len(p.conns))
	for cc := range p.conns {
		conns = append(conns, cc)
	}
	st.DestinationSlots = len(p.perDest)
	p.mu.Unlock()
	for _, cc := range conns {
		if cc.explicit {
			st.ExplicitConnections++
		} else {
			st.TransparentConnections++
		}
		cc.mu.Lock()
		if cc.relaying {
			st.Tunnels++
		}
		if cc.basis != nil && cc.basis.inspected {
			st.InspectedSessions++
		}
		cc.mu.Unlock()
	}
	st.UpstreamHTTPConnections = int(p.upstreamHTTP.Load())
	st.RefusalsInFlight = len(p.refusing)
	_, st.SplicePipes = p.pipes.stats()
	if ins := p.inspect.Load(); ins != nil && ins.CA != nil {
		st.InspectCertificates = ins.CA.CachedCertificates()
	}
	return st
}

// countUpstream registers an upstream connection of the HTTP forwarder or
// of an inspected session until it closes. (Tunnels are not wrapped: they
// are spliced, and counted with their client connection.)
func (p *Proxy) countUpstream(c net.Conn) net.Conn {
	p.upstreamHTTP.Add(1)
	return &countedConn{Conn: c, n: &p.upstreamHTTP}
}

type countedConn struct {
	net.Conn
	n    *atomic.Int64
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.n.Add(-1) })
	return c.Conn.Close()
}
