package proxy

import (
	"context"
	"os"
	"sync"
	"time"
)

// lifetime is how long one tunnel or request may go on: it ends once, when
// closeBy closes the connection (a reload denied it, Reset, Shutdown, the
// idle watchdog) or when its handler is done. A dial pending under it
// (upstreamDialer.await) is woken at once; so is everything derived from
// it, for it is a context.Context: the resolver, the forwarder's transport
// and an inspected session take it as their context.
//
// It is not a context tree. A tunnel used to hold a context.WithCancel of
// the background context, and every dial registered a context.AfterFunc on
// it: seven allocations per tunnel (bench/README.md, Issue 13, third pass).
// A lifetime is a field of the tunnel's state (no allocation of its own);
// the pending dial's socket is a field of it, not a callback; its Done
// channel is made only for a caller that asks for one (a derived context,
// the HTTP transport); and a context derived from it registers through
// AfterFunc, as context does with any parent that has one, instead of a
// goroutine per child.
//
// The zero value is a lifetime that has not ended.
type lifetime struct {
	mu sync.Mutex
	// err is context.Canceled once ended; nil before.
	err error
	// done is Done's channel, made on its first call; closed by end.
	done chan struct{}
	// dialing is the socket of a connect under way (watchDial); end sets
	// its write deadline in the past, which ends the wait for the
	// handshake.
	dialing *os.File
	// hooks are AfterFunc's, run (each in its own goroutine) by end.
	hooks map[*lifetimeHook]struct{}
}

// lifetimeHook is one AfterFunc registration.
type lifetimeHook struct{ f func() }

var _ context.Context = (*lifetime)(nil)

// end ends l: Err reports context.Canceled from now on, Done is closed, a
// pending dial is woken and the AfterFunc hooks start. Ending an ended
// lifetime does nothing.
func (l *lifetime) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return
	}
	l.err = context.Canceled
	if l.done != nil {
		close(l.done)
	}
	if l.dialing != nil {
		// Under the lock: unwatchDial takes it before the socket is
		// closed, so the file is still open here.
		_ = l.dialing.SetWriteDeadline(aLongTimeAgo)
	}
	for h := range l.hooks {
		go h.f()
	}
	l.hooks = nil
}

// watchDial registers f, the socket of a connect under way, so that end
// wakes its wait; it reports false (and registers nothing) when l has
// already ended. The dialer calls unwatchDial before it closes f.
func (l *lifetime) watchDial(f *os.File) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return false
	}
	l.dialing = f
	return true
}

func (l *lifetime) unwatchDial() {
	l.mu.Lock()
	l.dialing = nil
	l.mu.Unlock()
}

// Deadline reports none: the dial and header timeouts bound each step.
func (l *lifetime) Deadline() (time.Time, bool) { return time.Time{}, false }

// Done returns a channel closed when l ends.
func (l *lifetime) Done() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done == nil {
		l.done = make(chan struct{})
		if l.err != nil {
			close(l.done)
		}
	}
	return l.done
}

// Err is nil until l ends, then context.Canceled.
func (l *lifetime) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Value carries nothing.
func (l *lifetime) Value(any) any { return nil }

// AfterFunc arranges for f to run in its own goroutine once l ends (at
// once if it has); stop cancels that and reports whether it did. It is
// the method through which the context package ties a context derived
// from l (context.WithTimeout(l, …)) to it without a goroutine of its own.
func (l *lifetime) AfterFunc(f func()) (stop func() bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		go f()
		return func() bool { return false }
	}
	h := &lifetimeHook{f: f}
	if l.hooks == nil {
		l.hooks = make(map[*lifetimeHook]struct{})
	}
	l.hooks[h] = struct{}{}
	return func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		if _, ok := l.hooks[h]; !ok {
			return false
		}
		delete(l.hooks, h)
		return true
	}
}
