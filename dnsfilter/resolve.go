package dnsfilter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// DeniedError is a name the policy does not allow. It is not a failure:
// callers tell it from upstream errors with errors.As.
type DeniedError struct {
	// Name is the normalised name asked for (as given, when invalid).
	Name string
	// Decision is why: the name's own decision, the decision on a blocked
	// CNAME target, or a guarded-address decision when the guard removed
	// every address.
	Decision policy.Decision
	// CNAME is the target in the answer chain that was blocked, if that is
	// what denied the name.
	CNAME string
	// Addr is an address the guard refused, when the guard denied.
	Addr netip.Addr
}

func (e *DeniedError) Error() string {
	if e.CNAME != "" {
		return fmt.Sprintf("resolving %s denied: CNAME %s %s", e.Name, e.CNAME, e.Decision)
	}
	if e.Addr.IsValid() {
		return fmt.Sprintf("resolving %s denied: %s %s", e.Name, e.Decision, e.Addr)
	}
	return fmt.Sprintf("resolving %s denied: %s", e.Name, e.Decision)
}

// PolicyDecision is the decision that refused the name and, for the
// address guard, an address it refused (the proxy's view of a refusal).
func (e *DeniedError) PolicyDecision() (policy.Decision, netip.Addr) { return e.Decision, e.Addr }

// ResolveError is a lookup of an allowed name that could not be answered:
// the upstream resolvers failed or did not answer, the name has no
// addresses, or it is longer than MaxNameLen. Reason says which, in the
// one vocabulary (audit.Reasons).
type ResolveError struct {
	Name   string
	Reason audit.Reason
	Err    error
}

func (e *ResolveError) Error() string { return fmt.Sprintf("resolving %s: %v", e.Name, e.Err) }
func (e *ResolveError) Unwrap() error { return e.Err }

// AuditReason is the failure's reason: resolver-timeout, resolver-error,
// no-addresses or dns-max-name-len.
func (e *ResolveError) AuditReason() audit.Reason { return e.Reason }

// ErrNoAddresses is returned (in a ResolveError) by Resolve for an allowed
// name with no A or AAAA record.
var ErrNoAddresses = errors.New("no A or AAAA records")

// ErrNameTooLong is returned (in a ResolveError) by Resolve for a name over
// MaxNameLen.
var ErrNameTooLong = errors.New("name longer than the configured maximum")

// upstreamReason is the reason of a failed upstream exchange: no answer in
// time, or any other failure.
func upstreamReason(err error) audit.Reason {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return audit.ReasonResolverTimeout
	}
	return audit.ReasonResolverError
}

// Resolve returns every A and AAAA address of name that passes the address
// guard (for some port: the proxy guards each again with its port), asking
// the same policy, cache and upstreams as client queries and feeding the
// learned-address table the same way. A denied name is never sent upstream:
// the error is then a *DeniedError.
func (s *Server) Resolve(ctx context.Context, name string) ([]netip.Addr, error) {
	canon, ok := policy.NormalizeName(name)
	if !ok {
		return nil, &DeniedError{Name: name, Decision: policy.Decision{Reason: policy.ReasonInvalidName}}
	}
	if len(canon) > s.set.maxNameLen {
		return nil, &ResolveError{Name: canon, Reason: audit.ReasonDNSMaxNameLen, Err: fmt.Errorf("%w (%d bytes)", ErrNameTooLong, s.set.maxNameLen)}
	}
	m := s.matcher()
	if d := m.DecideNameAnyPort(canon); !d.Allow {
		return nil, &DeniedError{Name: canon, Decision: d}
	}
	s.useUpstreamsOf(m)
	type result struct {
		a   *answer
		err error
	}
	var (
		res [2]result
		wg  sync.WaitGroup
		now = s.set.now()
	)
	for i, qt := range [2]uint16{dns.TypeA, dns.TypeAAAA} {
		wg.Go(func() {
			a, err := s.lookup(ctx, canon, qt, now)
			res[i] = result{a, err}
		})
	}
	wg.Wait()

	var (
		addrs   []netip.Addr
		errs    []error
		guarded *filtered
	)
	for _, r := range res {
		if r.err != nil {
			var de *DeniedError
			if errors.As(r.err, &de) {
				return nil, de
			}
			errs = append(errs, r.err)
			continue
		}
		f := r.a.filterFor(m)
		if f.deny {
			return nil, &DeniedError{Name: canon, Decision: f.denyBy, CNAME: f.denyName}
		}
		s.learn(r.a, f, now)
		if f.allGuarded {
			guarded = f
		}
		addrs = append(addrs, f.addrs...)
	}
	switch {
	case len(addrs) > 0:
		return addrs, nil
	case guarded != nil && len(errs) < len(res):
		return nil, &DeniedError{Name: canon, Decision: guarded.guardBy, Addr: guarded.guarded}
	case len(errs) > 0:
		err := errors.Join(errs...)
		return nil, &ResolveError{Name: canon, Reason: upstreamReason(err), Err: err}
	}
	return nil, &ResolveError{Name: canon, Reason: audit.ReasonNoAddresses, Err: ErrNoAddresses}
}

// lookup returns the answer for (name, qtype) from the cache or upstream.
// name must be normalised and allowed; fetch checks again before anything
// is sent.
func (s *Server) lookup(ctx context.Context, name string, qtype uint16, now time.Time) (*answer, error) {
	k := cacheKey{name: name, qtype: qtype}
	gen := s.gen.Load()
	if a := s.cache.get(k, now); a != nil {
		s.m.cacheHits.Inc()
		return a, nil
	}
	s.m.cacheMisses.Inc()
	return s.flight.do(ctx, flightKey{k, gen}, s.fetch)
}

// fetch asks upstream for k with a fresh query — new ID, one question,
// class IN, the lower-cased name, our own EDNS0 buffer size and nothing of
// the client's message — and caches the sanitised answer. It asks the
// upstreams in use now; an answer fetched across a change of upstreams (or
// a Reset) is returned but neither cached nor learned.
func (s *Server) fetch(fk flightKey) (*answer, error) {
	k, gen := fk.cacheKey, fk.gen
	up := s.pool.Load().up
	// The last word before anything leaves: the name must be allowed by
	// the policy in force now.
	if d := s.matcher().DecideNameAnyPort(k.name); !d.Allow {
		return nil, &DeniedError{Name: k.name, Decision: d}
	}
	q := new(dns.Msg)
	q.RecursionDesired = true
	q.Question = []dns.Question{{Name: k.name + ".", Qtype: k.qtype, Qclass: dns.ClassINET}}
	q.SetEdns0(upstreamEDNSSize, false)
	resp, err := up.exchange(s.reset.lookupContext(), q)
	if err != nil {
		return nil, err
	}
	now := s.set.now()
	a, err := sanitize(k.name, k.qtype, resp, now, s.set.maxTTL, s.set.maxNegTTL)
	if err != nil {
		return nil, err
	}
	a.gen = gen
	if a.expires.After(now) && gen == s.gen.Load() && resp.Len() <= s.set.maxCachedBytes {
		s.cache.put(k, a)
	}
	return a, nil
}

// learn feeds the learned-address table from a filtered answer: its
// addresses under the allowed names of its chain, until the answer expires
// (at least LearnFloor from now). A memoised answer is learned again only
// when its learned entry is about to run out.
func (s *Server) learn(a *answer, f *filtered, now time.Time) {
	if f.deny || len(f.addrs) == 0 || a.gen != s.gen.Load() {
		return
	}
	floor := s.set.learnFloor
	if prev := f.learnedUntil.Load(); prev != 0 && now.Add(floor/2).UnixNano() < prev {
		return
	}
	until := a.expires
	if fl := now.Add(floor); fl.After(until) {
		until = fl
	}
	f.learnedUntil.Store(until.UnixNano())
	s.learned.add(f.addrs, f.names, until, now, a.gen)
}

// flightKey is what concurrent lookups share: the same question in the same
// generation (a lookup after a change of upstreams never joins one begun
// before it).
type flightKey struct {
	cacheKey
	gen uint64
}

// flight merges concurrent lookups of the same key into one upstream query.
type flight struct {
	mu    sync.Mutex
	calls map[flightKey]*flightCall
}

type flightCall struct {
	done chan struct{}
	ans  *answer
	err  error
}

// do runs fn(k) once for all concurrent callers with key k. fn runs in its
// own goroutine, so a caller whose ctx ends returns at once without
// cancelling the query for the others.
func (f *flight) do(ctx context.Context, k flightKey, fn func(flightKey) (*answer, error)) (*answer, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = make(map[flightKey]*flightCall)
	}
	c := f.calls[k]
	if c == nil {
		c = &flightCall{done: make(chan struct{})}
		f.calls[k] = c
		go f.run(k, c, fn)
	}
	f.mu.Unlock()
	select {
	case <-c.done:
		return c.ans, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// len is the number of upstream lookups in flight.
func (f *flight) len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *flight) run(k flightKey, c *flightCall, fn func(flightKey) (*answer, error)) {
	c.ans, c.err = fn(k)
	f.mu.Lock()
	delete(f.calls, k)
	f.mu.Unlock()
	close(c.done)
}
