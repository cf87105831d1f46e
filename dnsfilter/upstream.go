package dnsfilter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/internal/sockopt"
)

// upstreamEDNSSize is the EDNS0 buffer size egressd advertises, upstream and
// to clients (the DNS flag day 2020 value: no IP fragmentation).
const upstreamEDNSSize = 1232

const (
	// maxIdleUDPPerUpstream bounds the connected UDP sockets kept for
	// reuse (fewer when MaxUpstreamQueries is lower): enough that a burst
	// of misses does not open and close a socket per query.
	maxIdleUDPPerUpstream = 128
	// maxUsesPerSocket retires a reused UDP socket after this many queries,
	// so one source port is not predictable for long.
	maxUsesPerSocket = 128
)

// exchanger sends one re-synthesised query upstream and returns the reply.
// The real one is *upstreams; tests and the fuzz target use in-memory ones.
type exchanger interface {
	exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error)
	close()
}

// errUpstreamBusy is returned when no upstream slot frees up in time.
var errUpstreamBusy = errors.New("too many upstream queries in flight")

// upstreams forwards to a list of resolvers: UDP first over a small pool of
// connected sockets, TCP when the reply is truncated; on failure the next
// resolver is tried, starting next time with the last one that answered.
type upstreams struct {
	servers   []*upstreamServer
	timeout   time.Duration
	sem       chan struct{}
	preferred atomic.Uint32
	m         *dnsMetrics
	tcp       *dns.Client
	closed    atomic.Bool
	bufs      sync.Pool
}

type upstreamServer struct {
	addr string
	idle chan *udpConn
}

type udpConn struct {
	c    *net.UDPConn
	uses int
}

func newUpstreams(addrs []netip.AddrPort, mark uint32, timeout time.Duration, maxInflight int, m *dnsMetrics) *upstreams {
	u := &upstreams{
		timeout: timeout,
		sem:     make(chan struct{}, maxInflight),
		m:       m,
		tcp: &dns.Client{
			Net:     "tcp",
			Timeout: timeout,
			Dialer:  &net.Dialer{Timeout: timeout, Control: sockopt.MarkControl(mark)},
		},
		bufs: sync.Pool{New: func() any { b := make([]byte, dns.MaxMsgSize); return &b }},
	}
	for _, a := range addrs {
		u.servers = append(u.servers, &upstreamServer{addr: a.String(), idle: make(chan *udpConn, min(maxInflight, maxIdleUDPPerUpstream))})
	}
	return u
}

func (u *upstreams) dialer() *net.Dialer { return u.tcp.Dialer }

// exchange asks each upstream in turn until one gives a usable reply.
// SERVFAIL and REFUSED count as unusable; if every upstream answers so, the
// error names the last of them and its answer (the caller answers the
// client SERVFAIL).
func (u *upstreams) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	select {
	case u.sem <- struct{}{}:
	default:
		t := time.NewTimer(u.timeout)
		select {
		case u.sem <- struct{}{}:
			t.Stop()
		case <-t.C:
			return nil, errUpstreamBusy
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
	defer func() { <-u.sem }()

	n := uint32(len(u.servers))
	start := u.preferred.Load() % n
	var lastErr error
	for i := range n {
		idx := (start + i) % n
		srv := u.servers[idx]
		resp, err := u.exchangeOne(ctx, srv, q)
		if err != nil {
			lastErr = fmt.Errorf("upstream %s: %w", srv.addr, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused {
			lastErr = fmt.Errorf("upstream %s: %w", srv.addr, &upstreamRcodeError{resp.Rcode})
			continue
		}
		if i > 0 {
			u.preferred.Store(idx)
		}
		return resp, nil
	}
	// Every upstream failed or answered SERVFAIL or REFUSED: the error
	// names the last (the audit record's error; the client gets a bare
	// SERVFAIL).
	return nil, lastErr
}

func (u *upstreams) exchangeOne(ctx context.Context, srv *upstreamServer, q *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	start := time.Now()
	q.Id = dns.Id()
	resp, err := u.exchangeUDP(ctx, srv, q)
	if err == nil && resp.Truncated {
		q.Id = dns.Id()
		resp, err = u.exchangeTCP(ctx, srv, q)
	}
	d := time.Since(start).Seconds()
	if err != nil {
		u.m.upstreamErr.Observe(d)
		u.m.upstreamErrors.Inc()
		return nil, err
	}
	u.m.upstreamOK.Observe(d)
	return resp, nil
}

func (u *upstreams) exchangeUDP(ctx context.Context, srv *upstreamServer, q *dns.Msg) (*dns.Msg, error) {
	wire, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("packing query: %w", err)
	}
	uc, err := u.getUDP(ctx, srv)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	if err := uc.c.SetDeadline(deadline); err != nil {
		uc.c.Close()
		return nil, err
	}
	// Cancellation (shutdown) unblocks the read at once.
	stop := context.AfterFunc(ctx, func() { _ = uc.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := uc.c.Write(wire); err != nil {
		uc.c.Close()
		return nil, fmt.Errorf("sending over udp: %w", err)
	}
	bp := u.bufs.Get().(*[]byte)
	defer u.bufs.Put(bp)
	buf := *bp
	for {
		n, err := uc.c.Read(buf)
		if err != nil {
			uc.c.Close()
			return nil, fmt.Errorf("reading over udp: %w", err)
		}
		resp := new(dns.Msg)
		if resp.Unpack(buf[:n]) != nil || !isReplyTo(resp, q) {
			// A late reply to an earlier query on this socket, or junk:
			// keep waiting for ours until the deadline.
			continue
		}
		if !stop() {
			// The context ended while we read: the deadline was moved
			// into the past, so the socket cannot be reused as is.
			uc.c.Close()
			return resp, nil
		}
		u.putUDP(srv, uc)
		return resp, nil
	}
}

func (u *upstreams) exchangeTCP(ctx context.Context, srv *upstreamServer, q *dns.Msg) (*dns.Msg, error) {
	resp, _, err := u.tcp.ExchangeContext(ctx, q, srv.addr)
	if err != nil {
		return nil, fmt.Errorf("over tcp: %w", err)
	}
	if !isReplyTo(resp, q) {
		return nil, errors.New("over tcp: reply does not match the query")
	}
	return resp, nil
}

func (u *upstreams) getUDP(ctx context.Context, srv *upstreamServer) (*udpConn, error) {
	select {
	case uc := <-srv.idle:
		return uc, nil
	default:
	}
	c, err := u.dialer().DialContext(ctx, "udp", srv.addr)
	if err != nil {
		return nil, fmt.Errorf("opening udp socket: %w", err)
	}
	return &udpConn{c: c.(*net.UDPConn)}, nil
}

func (u *upstreams) putUDP(srv *upstreamServer, uc *udpConn) {
	uc.uses++
	if uc.uses >= maxUsesPerSocket || u.closed.Load() {
		uc.c.Close()
		return
	}
	select {
	case srv.idle <- uc:
	default:
		uc.c.Close()
	}
}

// close closes the idle sockets; sockets in use are closed when returned.
func (u *upstreams) close() {
	u.closed.Store(true)
	for _, s := range u.servers {
		for {
			select {
			case uc := <-s.idle:
				uc.c.Close()
				continue
			default:
			}
			break
		}
	}
}

// isReplyTo checks a reply against the query it answers: same ID, QR set,
// opcode QUERY, and the same single question (name compared without case).
func isReplyTo(resp, q *dns.Msg) bool {
	if resp.Id != q.Id || !resp.Response || resp.Opcode != dns.OpcodeQuery {
		return false
	}
	if len(resp.Question) != 1 {
		// A reply with no question section is legal for some errors,
		// but we cannot tell what it answers: refuse it.
		return false
	}
	a, b := resp.Question[0], q.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}
