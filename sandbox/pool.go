package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/egressd/egressd/policy"
)

// PoolConfig is a warm pool's shape and bounds.
type PoolConfig struct {
	// Config is the shape every pooled sandbox is made with: its profile's
	// network section (filtered mode, no inspection), upstream resolvers,
	// mark, subnet, egressd binary and identity, rootfs, runtime, state
	// directory and kernel. Its Args are never run (any command will do);
	// its policy is in force only until the first reset.
	Config Config
	// Size is how many sandboxes the pool keeps warm (at least 1).
	Size int
	// MaxUses retires a sandbox after that many executions; 0 means no
	// bound.
	MaxUses int
	// MaxAge retires a sandbox that old; 0 means no bound.
	MaxAge time.Duration
	// Logger receives a line for every sandbox destroyed because a reset
	// or a check failed; nil discards them.
	Logger *slog.Logger
}

// PoolStats are a pool's counts.
type PoolStats struct {
	// Size is the configured size; Idle, Busy and Creating how many
	// pooled sandboxes are in each state now.
	Size     int `json:"size"`
	Idle     int `json:"idle"`
	Busy     int `json:"busy"`
	Creating int `json:"creating"`
	// Resetting is how many are being reset after their lease, and their
	// next container made, in the background (counted in neither Idle
	// nor Busy).
	Resetting int `json:"resetting"`
	// Created and Destroyed count pooled sandboxes made and removed;
	// Retired of those destroyed reached MaxUses or MaxAge, Failed failed
	// a reset or a check (each also logged).
	Created   uint64 `json:"created"`
	Destroyed uint64 `json:"destroyed"`
	Retired   uint64 `json:"retired"`
	Failed    uint64 `json:"failed"`
	// Warm counts executions given a pooled sandbox, Cold those given a
	// sandbox of their own (another shape than the pool's).
	Warm uint64 `json:"warm"`
	Cold uint64 `json:"cold"`
}

// Pool keeps warm sandboxes of one shape and hands them to tenant after
// tenant (docs/design.md, "Pooled reuse"). What is pooled is the half of
// a sandbox that does not depend on the tenant: the network namespace,
// the uplink and its NAT, the firewall, and egressd under its
// deny-everything policy. The container is made per execution on that
// half and deleted at release, so its writable layer, its tmpfs mounts
// and every process in it end with it; but it is made ahead, while the
// sandbox is idle, its init waiting for the command (pool_warm.go).
//
// Acquire puts the tenant's policy in force (policy.json written, POST
// /reload, GET /state shows it), and after a long idle verifies the
// firewall again; Run sends the command to the waiting container.
// Release resets egressd (POST /reset: deny-everything, empty, audit
// flushed) and, in the background, deletes the container, checks that
// only egressd is left in the namespace and that the container's root is
// gone, flushes the namespace's conntrack table and checks it is empty,
// verifies the firewall, and makes the next container; only then is the
// sandbox pooled again. A sandbox failing any step is destroyed, never
// handed out again, and replaced in the background (THREATS G9).
type Pool struct {
	cfg  PoolConfig
	base Config // cfg.Config, defaults applied
	log  *slog.Logger

	mu       sync.Mutex
	idle     []*member
	busy     int // leased or resetting
	creating int
	// resetting counts the busy members whose release runs in the
	// background.
	resetting int
	closed    bool
	stats     PoolStats
	changed   chan struct{} // closed and replaced on every change
	lastErr   error         // the last failure to make a sandbox
	refills   sync.WaitGroup
	// failures counts the attempts to make a sandbox that failed in a
	// row (none succeeded since); retrying is set while a retry waits;
	// stop ends its wait when the pool closes.
	failures int
	retrying bool
	stop     chan struct{}
}

// The pool tries again to make a sandbox that failed after
// retryFirst, doubled after each failure in a row up to retryMax: a
// transient failure (a namespace, a start-up under load) never leaves it
// short for good, and one that persists is not tried in a tight loop.
const (
	retryFirst = time.Second
	retryMax   = 30 * time.Second
)

// member is one pooled sandbox.
type member struct {
	s    *Sandbox
	base *Plan // the plan it was made from
	wait *Plan // base with the init waiting: its next containers' (waitingPlan)
	born time.Time
	uses int
	// generation is egressd's policy generation after its last reset.
	generation uint64
	// next is its pre-made container, started and waiting (pool_warm.go);
	// nil between a lease's send and the next prestart.
	next *waiting
	// verified is when its firewall was last verified.
	verified time.Time
}

// NewPool checks the pool's shape and starts making its sandboxes in the
// background (Ready waits for them).
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.Size < 1 {
		return nil, fmt.Errorf("pool size %d: want at least 1", cfg.Size)
	}
	if cfg.MaxUses < 0 || cfg.MaxAge < 0 {
		return nil, errors.New("pool bounds: max uses and max age may not be negative")
	}
	base, err := cfg.Config.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("pool shape: %w", err)
	}
	if base.Profile.Network.Mode != policy.ModeFiltered {
		return nil, fmt.Errorf("pool shape: network mode %q; a pool holds filtered sandboxes only", base.Profile.Network.Mode)
	}
	if base.Init == "" {
		return nil, errors.New("pool shape: no init (Config.Init): a pooled sandbox's container is made ahead, its init waiting for the command")
	}
	base.ID = ""
	probe, err := NewPlan(withID(base, ExplainID))
	if err != nil {
		return nil, fmt.Errorf("pool shape: %w", err)
	}
	if len(probe.Egressd.Files) > 0 {
		return nil, errors.New("pool shape: a profile that inspects hosts is not pooled")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{cfg: cfg, base: base, log: log, changed: make(chan struct{}), stop: make(chan struct{})}
	p.stats.Size = cfg.Size
	p.mu.Lock()
	p.refill()
	p.mu.Unlock()
	return p, nil
}

func withID(cfg Config, id string) Config {
	cfg.ID = id
	return cfg
}

// notify wakes Ready; p.mu is held.
func (p *Pool) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// refill starts making sandboxes until the pool has Size of them; p.mu is
// held.
func (p *Pool) refill() {
	for !p.closed && len(p.idle)+p.busy+p.creating < p.cfg.Size {
		p.creating++
		p.refills.Add(1)
		go func() {
			defer p.refills.Done()
			m, err := p.create(context.Background())
			p.mu.Lock()
			p.creating--
			if err != nil {
				p.lastErr = err
				p.failures++
				wait := p.retryLocked()
				p.notify()
				p.mu.Unlock()
				p.log.Warn("pool: making a sandbox failed", "error", err, "retry_in", wait)
				return
			}
			p.failures = 0
			if p.closed {
				p.mu.Unlock()
				p.destroy(m)
				return
			}
			p.idle = append(p.idle, m)
			p.notify()
			p.mu.Unlock()
		}()
	}
}

// retryLocked schedules the next refill after a failure to make a
// sandbox, unless one is scheduled or the pool is closed, and says after
// how long (0: none scheduled); p.mu is held.
func (p *Pool) retryLocked() time.Duration {
	if p.closed || p.retrying {
		return 0
	}
	wait := retryFirst << min(p.failures-1, 5)
	wait = min(wait, retryMax)
	p.retrying = true
	p.refills.Add(1)
	go func() {
		defer p.refills.Done()
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-p.stop:
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		p.retrying = false
		p.refill()
	}()
	return wait
}

// Ready waits until every sandbox of the pool is idle, the last attempt
// to make one failed (its error), or ctx ends.
func (p *Pool) Ready(ctx context.Context) error {
	for {
		p.mu.Lock()
		idle, creating, err, ch := len(p.idle), p.creating, p.lastErr, p.changed
		p.mu.Unlock()
		switch {
		case idle >= p.cfg.Size:
			return nil
		case creating == 0 && err != nil:
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// create makes one pooled sandbox: Apply of the pool's shape, its
// container's root removed at once, egressd reset to deny-everything, and
// its first container made ahead, its init waiting (prestart).
func (p *Pool) create(ctx context.Context) (*member, error) {
	s, err := Create(ctx, p.base)
	if err != nil {
		return nil, err
	}
	m := &member{s: s, base: s.plan, wait: waitingPlan(s.plan), born: time.Now(), verified: time.Now()}
	// The namespace outlives its tenants: it keeps no closed connection
	// (TIME_WAIT) whose destination the next could read.
	err = s.k.Firewall.KeepNoClosedConnections(s.plan.Netns)
	if err == nil {
		err = s.dropContainer(ctx)
	}
	if err == nil {
		m.generation, err = m.resetEgressd(ctx)
	}
	if err == nil {
		err = m.prestart(ctx)
	}
	if err != nil {
		m.discard()
		if cerr := s.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, fmt.Errorf("pooled sandbox %s: %w", s.ID(), err)
	}
	p.mu.Lock()
	p.stats.Created++
	p.mu.Unlock()
	return m, nil
}

// Lease is a sandbox handed to one execution by Acquire: Run it once,
// then give it back with Release.
type Lease struct {
	s    *Sandbox
	m    *member // nil: a cold sandbox of its own
	pool *Pool
	once sync.Once
	err  error

	// What Release kept of a warm lease (the member goes on to its next
	// tenant): its timings and denials; the background reset's timing and
	// error once reset is closed.
	mu       sync.Mutex
	released bool
	timings  []Timing
	denials  []Denial
	reset    chan struct{}
	resetErr error
}

// ID names the sandbox.
func (l *Lease) ID() string { return l.s.ID() }

// Warm reports whether the sandbox came from the pool.
func (l *Lease) Warm() bool { return l.m != nil }

// Run runs the execution's command (Sandbox.Run); in a pooled sandbox, by
// sending it to the container made ahead, whose init waits for it.
func (l *Lease) Run(ctx context.Context, stdio Stdio) (Result, error) {
	if l.m == nil {
		return l.s.Run(ctx, stdio)
	}
	return l.s.run(ctx, stdio, l.m.send)
}

// Signal signals the command (Sandbox.Signal).
func (l *Lease) Signal(sig syscall.Signal) error { return l.s.Signal(sig) }

// Denials are the execution's denied destinations, as egressd recorded
// them up to Release, which has it flush its audit log.
func (l *Lease) Denials() []Denial {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return slices.Clone(l.denials)
	}
	return l.s.Denials()
}

// Timings are the phases of this execution (Sandbox.Timings); after
// Release of a pooled sandbox, with "reset" (the background reset and the
// next container, "next") once Wait has returned.
func (l *Lease) Timings() []Timing {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return slices.Clone(l.timings)
	}
	return l.s.Timings()
}

// Wait waits for the background part of a pooled lease's Release (the
// reset and its checks, and the next container made; the sandbox
// destroyed when it is retired or the pool is full) and returns its
// error: a sandbox failing it was destroyed, never handed out again. When
// it returns, the sandbox is idle in the pool or destroyed and counted so
// (Stats). It returns nil at once for a cold lease or one not released.
func (l *Lease) Wait() error {
	l.mu.Lock()
	ch := l.reset
	l.mu.Unlock()
	if ch == nil {
		return nil
	}
	<-ch
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.resetErr
}

// Acquire returns a sandbox ready to Run cfg's command: a pooled one with
// the tenant's policy in force (and its firewall verified again when it
// was idle longer than reverifyAfter), its container made ahead and
// waiting for the command, or, for a request of another shape than the
// pool's (another network mode, rootfs, runtime, resolvers, inspection,
// or a container spec differing in anything but the command, its
// environment and working directory: sameContainer), a sandbox of its
// own (Create). With no idle sandbox it waits for one being made or
// reset, or, with none, makes one now, pooled at release if the pool has
// room. cfg.ID, StateDir and Kernel are the pool's.
func (p *Pool) Acquire(ctx context.Context, cfg Config) (*Lease, error) {
	m, err := p.take(ctx)
	if err != nil {
		return nil, err
	}
	if m == nil {
		if m, err = p.create(ctx); err != nil {
			p.done(nil)
			return nil, err
		}
	}
	cfg.Kernel, cfg.StateDir = p.base.Kernel, p.base.StateDir
	planned := time.Now()
	tp, err := NewPlan(withID(cfg, m.s.ID()))
	planning := Timing{Phase: "plan", Duration: time.Since(planned)}
	if err != nil {
		p.done(m)
		return nil, fmt.Errorf("planning the sandbox: %w", err)
	}
	if !m.fits(tp) {
		stale := false
		if !m.sameNetwork(tp) {
			// Another network shape than m's: the tenant's own, or the
			// pool's as the host has it now (m is then replaced, not kept
			// for tenants that no longer fit it).
			_, err := p.replan(m)
			stale = err != nil
		}
		if stale {
			p.fail(m, errors.New("acquire: the pool's network shape changed on the host (its resolvers?)"))
		} else {
			p.done(m)
		}
		return p.cold(ctx, cfg)
	}
	if err := m.lease(ctx, tp); err != nil {
		p.fail(m, fmt.Errorf("acquire: %w", err))
		return nil, fmt.Errorf("preparing pooled sandbox %s: %w", m.s.ID(), err)
	}
	m.s.mu.Lock()
	m.s.timings = append(m.s.timings, planning)
	m.s.mu.Unlock()
	p.mu.Lock()
	p.stats.Warm++
	p.mu.Unlock()
	return &Lease{s: m.s, m: m, pool: p}, nil
}

// cold makes cfg a sandbox of its own (Create), closed at release.
func (p *Pool) cold(ctx context.Context, cfg Config) (*Lease, error) {
	s, err := Create(ctx, withID(cfg, ""))
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.stats.Cold++
	p.mu.Unlock()
	return &Lease{s: s, pool: p}, nil
}

// take takes an idle member (retiring those past MaxAge), waiting for one
// being made; nil when there is none to wait for: the caller makes one.
// It counts the caller busy.
func (p *Pool) take(ctx context.Context) (*member, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if p.closed {
			return nil, errors.New("the sandbox pool is closed")
		}
		for len(p.idle) > 0 {
			m := p.idle[len(p.idle)-1]
			p.idle = p.idle[:len(p.idle)-1]
			if p.cfg.MaxAge > 0 && time.Since(m.born) > p.cfg.MaxAge {
				p.stats.Retired++
				p.dropLocked(m)
				continue
			}
			if m.s.EgressdExited() {
				p.log.Warn("pool: sandbox destroyed", "id", m.s.ID(), "error", "its egressd exited while idle")
				p.stats.Failed++
				p.dropLocked(m)
				continue
			}
			if m.next == nil || m.next.proc.ended() {
				p.log.Warn("pool: sandbox destroyed", "id", m.s.ID(), "error", "its waiting container ended while idle")
				p.stats.Failed++
				p.dropLocked(m)
				continue
			}
			p.busy++
			p.notify()
			return m, nil
		}
		if p.creating == 0 && p.resetting == 0 {
			p.busy++
			p.notify()
			return nil, nil
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
			p.mu.Lock()
		case <-ctx.Done():
			p.mu.Lock()
			return nil, ctx.Err()
		}
	}
}

// done puts m, a member Acquire did not hand out, back (nil: none).
func (p *Pool) done(m *member) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.busy--
	if m != nil && !p.keep(m) {
		p.dropLocked(m)
	}
	p.notify()
}

// keep puts m back among the idle ones and reports whether it did: not
// when the pool is full or closed (m is then the caller's to destroy);
// p.mu is held.
func (p *Pool) keep(m *member) bool {
	if p.closed || len(p.idle)+p.busy+p.creating >= p.cfg.Size {
		return false
	}
	p.idle = append(p.idle, m)
	return true
}

// Release ends the lease: a cold sandbox is closed; a pooled one has
// egressd reset at once (deny-everything in force, the tenant's state and
// connections dropped, its audit log flushed, so Denials are the
// execution's) and the rest of its reset, its checks and its next
// container run in the background (see Pool and Wait), after which it is
// pooled again, or destroyed and replaced. The command's processes are
// gone when Run returns (its init's end ends its pid namespace). The
// error is the teardown's or egressd's reset's, for the caller's log: the
// execution's result stands either way. Release may be called more than
// once; it returns the first call's error.
func (l *Lease) Release() error {
	l.once.Do(func() { l.err = l.pool.release(l) })
	return l.err
}

func (p *Pool) release(l *Lease) error {
	if l.m == nil {
		return l.s.Close()
	}
	m := l.m
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	start := time.Now()
	gen, err := m.resetEgressd(ctx)
	if err == nil {
		// egressd flushed its audit log in the reset: once the sink has
		// read that far (a barrier appended to the stream came back), the
		// tenant's denials are complete and kept for its answer.
		err = m.s.syncAudit(ctx)
	}
	m.s.timed("release", start)
	l.mu.Lock()
	l.released, l.timings, l.denials = true, m.s.Timings(), m.s.Denials()
	l.reset = make(chan struct{})
	l.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("resetting pooled sandbox %s: %w", m.s.ID(), err)
		p.fail(m, fmt.Errorf("release: %w", err))
		l.resetDone(nil, err)
		return err
	}
	m.generation = gen
	// What egressd writes from now on is nobody's to see.
	m.s.sink.retarget(nil, NewLineMasker(nil), nil)
	p.mu.Lock()
	if p.closed {
		// Destroyed now, not reset: nothing may start in the background
		// once Close waits for it.
		p.busy--
		p.dropLocked(m)
		p.notify()
		p.mu.Unlock()
		l.resetDone(nil, nil)
		return nil
	}
	p.resetting++
	p.refills.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.refills.Done()
		p.recycle(m, l)
	}()
	return nil
}

// resetDone records the background reset's timings and error on l.
func (l *Lease) resetDone(timings []Timing, err error) {
	l.mu.Lock()
	l.timings = append(l.timings, timings...)
	l.resetErr = err
	l.mu.Unlock()
	close(l.reset)
}

// recycle is the background part of m's release (l's): the rest of its
// reset and its checks, and its next container made (member.reset,
// prestart); only then is m pooled again. A member failing any step is
// destroyed and replaced.
func (p *Pool) recycle(m *member, l *Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	start := time.Now()
	var nextTook time.Duration
	err := m.reset(ctx, func(ctx context.Context) error {
		t := time.Now()
		defer func() { nextTook = time.Since(t) }()
		np, err := p.replan(m)
		if err != nil {
			return err
		}
		m.base, m.wait = np, waitingPlan(np)
		return m.prestart(ctx)
	})
	// "reset" is the whole background part, "next" the next container's
	// share of it.
	timings := []Timing{{Phase: "reset", Duration: time.Since(start)}, {Phase: "next", Duration: nextTook}}
	if err == nil {
		m.verified = time.Now()
	}
	if err != nil {
		err = fmt.Errorf("resetting pooled sandbox %s: %w", m.s.ID(), err)
		p.mu.Lock()
		p.resetting--
		p.mu.Unlock()
		p.fail(m, fmt.Errorf("release: %w", err))
		l.resetDone(timings, err)
		return
	}
	m.uses++
	p.mu.Lock()
	p.busy--
	p.resetting--
	kept := false
	if (p.cfg.MaxUses > 0 && m.uses >= p.cfg.MaxUses) || (p.cfg.MaxAge > 0 && time.Since(m.born) > p.cfg.MaxAge) {
		p.stats.Retired++
	} else {
		kept = p.keep(m)
	}
	if !kept {
		p.refill() // m's replacement, when the pool is short
	}
	p.notify()
	p.mu.Unlock()
	if !kept {
		// Destroyed here, as the rest of the release's background part,
		// not in a goroutine of its own: the lease's Wait must not
		// return while m's namespace and egressd are still there and m
		// is counted nowhere (neither idle nor destroyed).
		p.destroy(m)
	}
	// The lease's Wait returns once the pool counts m where it is: idle,
	// or destroyed.
	l.resetDone(timings, nil)
}

// fail destroys m, which failed a step (err), and replaces it.
func (p *Pool) fail(m *member, err error) {
	p.log.Warn("pool: sandbox destroyed", "id", m.s.ID(), "error", err)
	p.mu.Lock()
	p.busy--
	p.stats.Failed++
	p.refill()
	p.notify()
	p.mu.Unlock()
	p.destroy(m)
}

// dropLocked destroys m (retired, or not needed: the pool is full or
// closed) and starts its replacement; p.mu is held. The destruction runs
// in the background, but after Close before dropLocked returns.
func (p *Pool) dropLocked(m *member) {
	p.refill()
	p.notify()
	if p.closed {
		p.mu.Unlock()
		p.destroy(m)
		p.mu.Lock()
		return
	}
	p.refills.Add(1)
	go func() {
		defer p.refills.Done()
		p.destroy(m)
	}()
}

// destroy ends m's waiting container, if any, and closes m's sandbox.
func (p *Pool) destroy(m *member) {
	m.discard()
	if err := m.s.Close(); err != nil {
		p.log.Warn("pool: tearing down a sandbox", "id", m.s.ID(), "error", err)
	}
	p.mu.Lock()
	p.stats.Destroyed++
	p.mu.Unlock()
}

// Stats returns the pool's counts.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.stats
	st.Idle, st.Busy, st.Creating, st.Resetting = len(p.idle), p.busy-p.resetting, p.creating, p.resetting
	return st
}

// Close destroys every idle sandbox and waits for the background work
// (refills, resets, retirements) to end. A lease still out is destroyed at its
// Release. Acquire fails from now on.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.stop)
	idle := p.idle
	p.idle = nil
	p.notify()
	p.mu.Unlock()
	var errs []error
	for _, m := range idle {
		m.discard()
		if err := m.s.Close(); err != nil {
			errs = append(errs, err)
		}
		p.mu.Lock()
		p.stats.Destroyed++
		p.mu.Unlock()
	}
	p.refills.Wait()
	return errors.Join(errs...)
}

// fits reports whether the tenant's plan tp has m's shape: the same
// network mode, firewall, uplink, egressd command line, no inspection,
// the same root and runtime for the container, and a container that
// differs from the pool's only in what the request brings
// (sameContainer).
func (m *member) fits(tp *Plan) bool {
	return m.sameNetwork(tp) && sameContainer(tp.Container, m.base.Container)
}

// sameNetwork reports whether tp has the network half m was made with:
// everything of fits but the container.
func (m *member) sameNetwork(tp *Plan) bool {
	b := m.base
	if tp.Mode != b.Mode || tp.Firewall == nil || tp.Uplink == nil || tp.Egressd == nil {
		return false
	}
	return reflect.DeepEqual(*tp.Firewall, *b.Firewall) && reflect.DeepEqual(*tp.Uplink, *b.Uplink) &&
		slices.Equal(tp.Egressd.Args, b.Egressd.Args) && tp.Egressd.Binary == b.Egressd.Binary &&
		tp.Egressd.UID == b.Egressd.UID && tp.Egressd.GID == b.Egressd.GID && len(tp.Egressd.Files) == 0 &&
		tp.cfg.Rootfs == b.cfg.Rootfs && tp.cfg.HostRoot == b.cfg.HostRoot && sameRuntime(tp.cfg.Runtime, b.cfg.Runtime)
}

// replan plans m's shape again, from the host as it is now: a change to
// the network half (the resolvers in resolv.conf) is an error, since m's
// egressd and firewall are of the old one, and m is to be replaced.
// Given to m's next container (m.base, m.wait: only before its prestart),
// a host change to the container's shape (an /etc entry made private, an
// account) reaches the pool's next container instead of sending every
// tenant cold.
func (p *Pool) replan(m *member) (*Plan, error) {
	np, err := NewPlan(withID(p.base, m.s.ID()))
	if err != nil {
		return nil, fmt.Errorf("planning the pool's shape again: %w", err)
	}
	if !m.sameNetwork(np) {
		return nil, errors.New("the pool's network shape changed on the host (its resolvers?): the sandbox is replaced")
	}
	return np, nil
}

func sameRuntime(a, b *Runtime) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Path == b.Path && a.Root == b.Root
}

// reverifyAfter is how long a member may stay idle before an acquire
// verifies its firewall again. Its release verified it with no process of
// any tenant left, and nothing in the namespace can change it since (the
// waiting init runs no command and has no capability; only host root
// can); the re-verification after a long idle catches an operator's
// change on the host. Under load members are reused within it and skip
// the verification on the tenant's path.
const reverifyAfter = 10 * time.Second

// lease puts tenant plan tp on m: the audit stream the tenant's, then the
// tenant's policy put in force and proven so, and, after a long idle, the
// firewall verified again. The command is sent (Run) only after both
// succeeded.
func (m *member) lease(ctx context.Context, tp *Plan) error {
	s := m.s
	s.mu.Lock()
	s.plan, s.cfg, s.secrets = tp, tp.cfg, tp.secrets
	s.ctr, s.pending, s.timings = nil, nil, nil
	s.mu.Unlock()
	s.exited.Store(false)
	s.sink.retarget(tp.cfg.AuditLog, NewLineMasker(tp.secrets), tp.cfg.OnDenial)
	for _, w := range tp.Container.Warnings {
		s.log().Warn(w)
	}
	steps := []func() error{s.step("policy", func() error { return m.loadPolicy(ctx, tp.Egressd) })}
	if time.Since(m.verified) > reverifyAfter {
		// The tenant's rules are the pool's (fits), which the release
		// verified; verified again, not re-installed: a namespace whose
		// rules changed while idle is destroyed, never repaired.
		steps = append(steps, s.step("firewall", func() error {
			err := s.k.Firewall.Verify(ctx, tp.Netns, *tp.Firewall)
			if err == nil {
				m.verified = time.Now()
			}
			return err
		}))
	}
	var errs joinedErrs
	errs.parallel(steps...)
	return errs.join()
}

// loadPolicy puts the tenant's policy snapshot in force in m's egressd:
// written aside and renamed over policy.json, POST /reload, and the state
// it answers (?state=1: GET /state's, after the reload) must show it
// (source policy, a generation past the last reset).
func (m *member) loadPolicy(ctx context.Context, e *EgressdPlan) error {
	tmp := EgressdFile{Name: policyFile + ".new", Data: e.Policy}
	if err := m.s.writeEgressdFile(tmp); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(e.Dir, tmp.Name), filepath.Join(e.Dir, policyFile)); err != nil {
		return fmt.Errorf("writing egressd's %s: %w", policyFile, err)
	}
	st, err := m.admin(ctx, http.MethodPost, "/reload?state=1", http.StatusOK)
	if err != nil {
		return err
	}
	if st.Policy.Source != "policy" || st.Policy.Generation <= m.generation {
		return fmt.Errorf("egressd's policy after the reload: source %q generation %d, want the tenant's (generation > %d)",
			st.Policy.Source, st.Policy.Generation, m.generation)
	}
	return nil
}

// reset takes the rest of the tenant's part off m, after Release reset
// egressd, and proves it gone (see Pool): the container deleted (a
// waiting one no lease took ended first) and only egressd left in the
// namespace; then at once: the container's root removed and next (the
// next container) made, the namespace's conntrack table flushed and
// checked empty, and the firewall verified. Last, egressd must still
// run. (The check of the namespace's processes runs alone: the
// verification's iptables-save runs in the namespace.)
func (m *member) reset(ctx context.Context, next func(context.Context) error) error {
	s := m.s
	m.discard()
	if err := s.deleteContainer(ctx); err != nil {
		return err
	}
	s.container.Store(false)
	eg := s.EgressdPID()
	if left := slices.DeleteFunc(s.k.Netns.Pids(s.ns), func(pid int) bool { return pid == eg }); len(left) > 0 {
		return fmt.Errorf("processes left in the sandbox's namespace after its container was deleted: %v", left)
	}
	// next may plan m again (replan): what the checks read is taken now.
	netns, fw := m.base.Netns, *m.base.Firewall
	var errs joinedErrs
	errs.parallel(
		func() error {
			if err := s.removeRoot(); err != nil {
				return err
			}
			s.mu.Lock()
			s.plan, s.cfg, s.secrets = m.base, m.base.cfg, nil
			s.mu.Unlock()
			return next(ctx)
		},
		func() error { return s.k.Firewall.FlushConntrack(netns) },
		func() error { return s.k.Firewall.Verify(ctx, netns, fw) },
	)
	if err := errs.join(); err != nil {
		return err
	}
	if s.EgressdExited() {
		return errors.New("egressd exited")
	}
	return s.noConnectionsLeft(ctx)
}

// socketsSettle bounds how long a reset waits for the namespace's TCP
// sockets to end: egressd reset every connection and the namespace keeps
// none closed, so only one whose closing still awaits its peer's answer
// (an RTT) may remain a moment.
const socketsSettle = time.Second

// noConnectionsLeft checks that the sandbox's namespace holds no TCP
// socket but egressd's listeners, waiting up to socketsSettle: a
// connection open, closing (which names its destination in /proc/net/tcp
// to the next tenant) or still queued for egressd to accept (which
// egressd would otherwise take and decide under the next tenant's
// policy) fails the reset (THREATS G9).
func (s *Sandbox) noConnectionsLeft(ctx context.Context) error {
	deadline := time.Now().Add(socketsSettle)
	for {
		left, err := s.k.Netns.Sockets(s.ns)
		if err == nil && len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if err != nil {
				return fmt.Errorf("reading the sockets of the sandbox's namespace: %w", err)
			}
			return fmt.Errorf("TCP sockets left in the sandbox's namespace after its reset (state local remote): %v", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dropContainer deletes the sandbox's container (every process in it
// killed) and removes its root (removeRoot).
func (s *Sandbox) dropContainer(ctx context.Context) error {
	if err := s.deleteContainer(ctx); err != nil {
		return err
	}
	s.container.Store(false)
	return s.removeRoot()
}

// removeRoot removes the container's root, its placeholders, its
// generated files and its bundle, and checks that the root's directories
// are gone.
func (s *Sandbox) removeRoot() error {
	s.mu.Lock()
	cleanup := s.rootfsCleanup
	s.rootfsCleanup = nil
	s.mu.Unlock()
	if cleanup != nil {
		if err := cleanup(); err != nil {
			return fmt.Errorf("removing the container's root: %w", err)
		}
	}
	c := s.plan.Container
	for _, dir := range []string{c.Bundle, c.EtcDir} {
		if err := removeTree(dir); err != nil {
			return err
		}
	}
	for _, d := range []string{"rootfs", "upper-tmpfs", "view"} {
		if _, err := os.Lstat(filepath.Join(s.dir, d)); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("the container's %s is still in %s after its removal (%v)", d, s.dir, err)
		}
	}
	return nil
}

// resetEgressd puts egressd to deny-everything (POST /reset) and checks
// that it says so and holds nothing; it returns the policy generation.
func (m *member) resetEgressd(ctx context.Context) (uint64, error) {
	st, err := m.admin(ctx, http.MethodPost, "/reset", http.StatusOK)
	if err != nil {
		return 0, err
	}
	if !st.Empty || st.Policy.Source != "reset" {
		return 0, fmt.Errorf("egressd after its reset: source %q, empty %v; want deny-everything and nothing held", st.Policy.Source, st.Empty)
	}
	return st.Policy.Generation, nil
}

// egressdState is the part of egressd's GET /state a pool reads.
type egressdState struct {
	Policy struct {
		Source     string `json:"source"`
		Generation uint64 `json:"generation"`
	} `json:"policy"`
	Empty bool `json:"empty"`
}

// admin sends one request to m's egressd and wants status want; the
// answer, the state, is decoded (GET /state, POST /reset, POST
// /reload?state=1).
func (m *member) admin(ctx context.Context, method, path string, want int) (egressdState, error) {
	var st egressdState
	m.s.mu.Lock()
	eg := m.s.eg
	m.s.mu.Unlock()
	if eg == nil {
		return st, errors.New("the sandbox has no egressd")
	}
	code, body, err := eg.Admin(ctx, method, path)
	if err != nil {
		return st, err
	}
	if code != want {
		return st, fmt.Errorf("egressd: %s %s: %d %s", method, path, code, oneLine(body))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("egressd: %s %s: %w", method, path, err)
	}
	return st, nil
}

// oneLine is an admin answer for an error message: one line, bounded.
func oneLine(b []byte) string {
	const max = 200
	if len(b) > max {
		b = b[:max]
	}
	return fmt.Sprintf("%q", b)
}
