package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/egressd/egressd/sandbox"
)

// runSignals is what a run does with the signals the launcher receives.
// The first SIGINT, SIGTERM, SIGHUP or SIGQUIT is passed to the command
// (through the sandbox's init, to its process group), which gets
// signalGrace to exit; a second one, or the end of the grace, kills it
// (cancel). Before the command runs, one aborts the setup. SIGUSR1 and
// SIGUSR2 are passed on; SIGWINCH resizes the command's terminal; SIGCONT
// (after a stop) puts the caller's terminal back in raw mode.
type runSignals struct {
	ctx    context.Context
	cancel context.CancelFunc
	sigc   chan os.Signal
	// resize carries the caller's terminal's new size (only the latest);
	// nil without a terminal.
	resize chan sandbox.WindowSize
	// size reads the caller's terminal's size.
	size func() sandbox.WindowSize

	mu      sync.Mutex
	sb      *sandbox.Sandbox
	running bool
	gotSig  syscall.Signal
	raw     *rawTerminal
}

// handleSignals starts handling the run's signals; ctx is cancelled when
// the run must stop. The handler ends with stop.
func handleSignals(ctx context.Context, terminal bool, stdin io.Reader, stdout, stderr io.Writer) *runSignals {
	rs := &runSignals{sigc: make(chan os.Signal, 8)}
	rs.ctx, rs.cancel = context.WithCancel(ctx)
	if terminal {
		rs.resize = make(chan sandbox.WindowSize, 1)
		rs.size = func() sandbox.WindowSize { return windowSize(stdout, stdin, stderr) }
	}
	signal.Notify(rs.sigc, append(append([]os.Signal{}, stopSignals...), syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGCONT)...)
	go func() {
		for sig := range rs.sigc {
			rs.handle(sig.(syscall.Signal))
		}
	}()
	return rs
}

// stop stops receiving signals, ends the handler and cancels the run's
// context.
func (rs *runSignals) stop() {
	signal.Stop(rs.sigc)
	close(rs.sigc) // ends the handler: Stop guarantees no more sends
	rs.cancel()
}

// handle is what one signal does.
func (rs *runSignals) handle(sig syscall.Signal) {
	rs.mu.Lock()
	s, running, raw := rs.sb, rs.running, rs.raw
	rs.mu.Unlock()
	switch sig {
	case syscall.SIGWINCH:
		if rs.resize != nil {
			select { // only the latest size matters
			case <-rs.resize:
			default:
			}
			rs.resize <- rs.size()
		}
		return
	case syscall.SIGCONT:
		if raw != nil {
			_ = raw.raw()
		}
		return
	case syscall.SIGUSR1, syscall.SIGUSR2:
		if running {
			_ = s.Signal(sig)
		}
		return
	}
	rs.mu.Lock()
	first := rs.gotSig == 0
	if first {
		rs.gotSig = sig
	}
	rs.mu.Unlock()
	if !first || !running {
		rs.cancel()
		return
	}
	_ = s.Signal(sig)
	go func() { // ends with the grace or the run
		select {
		case <-time.After(signalGrace):
			rs.cancel()
		case <-rs.ctx.Done():
		}
	}()
}

// running says the command of s runs: signals go to it from now on.
func (rs *runSignals) setRunning(s *sandbox.Sandbox) {
	rs.mu.Lock()
	rs.sb, rs.running = s, true
	rs.mu.Unlock()
}

// setRaw records the caller's terminal in raw mode (SIGCONT restores it);
// nil when it is not.
func (rs *runSignals) setRaw(raw *rawTerminal) {
	rs.mu.Lock()
	rs.raw = raw
	rs.mu.Unlock()
}

// restoreTerminal puts the caller's terminal back in its own mode.
func (rs *runSignals) restoreTerminal() {
	rs.mu.Lock()
	rs.raw.restore()
	rs.raw = nil
	rs.mu.Unlock()
}

// exitCode is the launcher's exit status after the signal that stopped
// the run: 128+N.
func (rs *runSignals) exitCode() int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return 128 + int(rs.gotSig)
}
