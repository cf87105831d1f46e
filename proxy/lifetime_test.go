package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// A tunnel's lifetime replaces the context.WithCancel it used to hold:
// these tests hold it to what that context did for everything that hangs
// off it (a pending dial, the resolver's and the transport's derived
// contexts), and to ending a tunnel whose dial is under way.

func TestLifetimeEndsItsDerivedContexts(t *testing.T) {
	var l lifetime
	if err := l.Err(); err != nil {
		t.Fatalf("a fresh lifetime has Err %v", err)
	}
	child, cancelChild := context.WithTimeout(&l, time.Hour)
	defer cancelChild()
	stopped, cancelStopped := context.WithCancel(&l)
	cancelStopped() // ended on its own: its hook must go
	ran := make(chan struct{})
	stop := l.AfterFunc(func() { close(ran) })
	l.mu.Lock()
	hooks := len(l.hooks)
	l.mu.Unlock()
	if hooks != 2 { // child's and ours: contexts derive through AfterFunc, not a goroutine each
		t.Errorf("%d hooks registered, want 2 (the derived context's and AfterFunc's)", hooks)
	}
	done := l.Done()
	select {
	case <-done:
		t.Fatal("Done closed before end")
	default:
	}

	l.end()
	l.end() // ending twice is harmless
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed by end")
	}
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a context derived from the lifetime outlived it")
	}
	if !errors.Is(child.Err(), context.Canceled) || !errors.Is(l.Err(), context.Canceled) {
		t.Errorf("errors after end: lifetime %v, derived %v; want context.Canceled", l.Err(), child.Err())
	}
	if !errors.Is(stopped.Err(), context.Canceled) {
		t.Errorf("the context cancelled on its own: %v", stopped.Err())
	}
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc's function did not run at end")
	}
	if stop() {
		t.Error("stop after end reported it stopped the function")
	}
	// Asked for after the end: already closed, and AfterFunc runs at once.
	var late lifetime
	late.end()
	select {
	case <-late.Done():
	default:
		t.Error("Done of an ended lifetime is open")
	}
	ranLate := make(chan struct{})
	late.AfterFunc(func() { close(ranLate) })
	select {
	case <-ranLate:
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc on an ended lifetime never ran")
	}
}

func TestLifetimeAfterFuncStopped(t *testing.T) {
	var l lifetime
	ran := make(chan struct{}, 1)
	stop := l.AfterFunc(func() { ran <- struct{}{} })
	if !stop() {
		t.Fatal("stop before end reported nothing stopped")
	}
	if stop() {
		t.Error("a second stop reported it stopped the function again")
	}
	l.end()
	select {
	case <-ran:
		t.Fatal("a stopped function ran")
	case <-time.After(50 * time.Millisecond):
	}
}

func TestUpstreamDialEndsWhenItsLifetimeEnds(t *testing.T) {
	ap := fullBacklog(t)
	d := upstreamDialer{timeout: 30 * time.Second}
	before := openFDs(t)
	var l lifetime
	time.AfterFunc(100*time.Millisecond, l.end)
	start := time.Now()
	c, err := d.dial(&l, ap)
	if err == nil {
		c.Close()
		t.Skip("the kernel answered a SYN to a full accept queue; cannot hold a handshake open here")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the dial of an ended lifetime ended after %v, want at once", took)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled in its chain", err)
	}
	// Ended before the dial: refused before a socket is made.
	if c, err := d.dial(&l, ap); err == nil || !errors.Is(err, context.Canceled) {
		if c != nil {
			c.Close()
		}
		t.Errorf("dial under an ended lifetime: %v, want context.Canceled", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors %d after the ended dials, %d before", after, before)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dialing != nil {
		t.Error("the lifetime still holds the dial's socket")
	}
}

// A tunnel whose upstream handshake hangs is ended at once by a Reset (a
// pooled sandbox changing tenants; a reload that denies it ends it the same
// way, through closeBy): the dial is woken, the client refused, the
// handler gone.
func TestResetEndsATunnelStillDialling(t *testing.T) {
	ap := fullBacklog(t)
	h := newHarness(t, policyOf(t, "allow 127.0.0.1:*"), func(c *Config) { c.DialTimeout = 30 * time.Second })
	c := h.dial()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", ap, ap)
	deadline := time.Now().Add(5 * time.Second)
	for h.p.OpenTunnels() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the CONNECT never reached the proxy")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // into the dial
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.p.Reset(ctx); err != nil {
		t.Fatalf("Reset: %v (the dialling tunnel was not ended)", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Reset took %v with a tunnel dialling, want at once", took)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [64]byte
	n, _ := c.Read(b[:])
	if resp := string(b[:n]); strings.HasPrefix(resp, "HTTP/1.1 200") {
		t.Fatalf("the client got a tunnel: %q", resp)
	}
	if n := h.p.OpenTunnels(); n != 0 {
		t.Errorf("%d tunnels open after Reset", n)
	}
}

// A forwarded request's lifetime is its transport's context: a Reset (or a
// reload that denies it) ends a request whose upstream never answers,
// instead of waiting for it.
func TestResetEndsAForwardedRequestWaitingForItsUpstream(t *testing.T) {
	got := make(chan struct{}, 1)
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done(): // egressd gave up on it
		}
	}))
	defer up.Close()
	defer close(release)
	port := netip.MustParseAddrPort(up.Listener.Addr().String()).Port()
	h := newHarness(t, policyOf(t, "allow 127.0.0.1:*"))
	c := h.dial()
	fmt.Fprintf(c, "GET http://127.0.0.1:%d/slow HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", port, port)
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the request never reached the upstream")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.p.Reset(ctx); err != nil {
		t.Fatalf("Reset: %v (the forwarded request was not ended)", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Reset took %v with a request waiting upstream, want at once", took)
	}
}
