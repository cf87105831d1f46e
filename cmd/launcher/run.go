package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

// signalGrace is how long the command gets to exit after the launcher
// passed it a SIGINT or SIGTERM, before it is killed.
const signalGrace = 5 * time.Second

func cmdRun(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	start := time.Now()
	f, cmdArgs, p, warnings, code, ok := parseAndResolve("run", runUsage, args, stdout, stderr, false)
	if !ok {
		return code
	}
	if !f.quiet {
		for _, w := range warnings {
			fmt.Fprintf(stderr, "launcher: %s\n", oneLine(w.String()))
		}
	}
	if os.Geteuid() != 0 {
		fail(stderr, errors.New("must run as root (it creates network namespaces, firewall rules and containers)"))
		return exitLauncher
	}
	cfg, err := f.config(p, cmdArgs, true)
	if err != nil {
		fail(stderr, err)
		return exitLauncher
	}
	if !f.quiet {
		for _, w := range secretWarnings(cfg) {
			fmt.Fprintf(stderr, "launcher: warning: %s\n", w)
		}
	}
	var auditFile *os.File
	if f.auditLog != "" {
		auditFile, err = os.OpenFile(f.auditLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			fail(stderr, fmt.Errorf("--audit-log: %w", err))
			return exitLauncher
		}
		defer auditFile.Close()
		cfg.AuditLog = auditFile
	}
	logw := &lineWriter{w: stderr}
	if !f.quiet {
		cfg.Logger = slog.New(&warnHandler{w: logw})
	}

	// Whatever a launcher that died before us left behind goes first.
	prepTime, reapStart := time.Since(start), time.Now()
	if reaped, err := sandbox.Reap(""); err != nil {
		fmt.Fprintf(stderr, "launcher: warning: removing stale sandboxes: %s\n", oneLine(err.Error()))
	} else if len(reaped) > 0 && !f.quiet {
		fmt.Fprintf(stderr, "launcher: removed %d stale sandbox(es) of a launcher that died: %s\n", len(reaped), strings.Join(reaped, ", "))
	}
	reapTime := time.Since(reapStart)

	// Signals: the first SIGINT/SIGTERM/SIGHUP is passed to the command,
	// which gets signalGrace to exit; a second one, or the end of the
	// grace, kills it. Before the command runs, a signal aborts the setup.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigc)
	var (
		mu      sync.Mutex
		sb      *sandbox.Sandbox
		running bool
		gotSig  syscall.Signal
	)
	go func() {
		for sig := range sigc {
			mu.Lock()
			first := gotSig == 0
			if first {
				gotSig = sig.(syscall.Signal)
			}
			s, r := sb, running
			mu.Unlock()
			if !first || !r {
				cancel()
				continue
			}
			go func() {
				sctx, scancel := context.WithTimeout(context.Background(), signalGrace)
				defer scancel()
				_ = s.Signal(sctx, sig.(syscall.Signal))
				select {
				case <-time.After(signalGrace):
					cancel()
				case <-ctx.Done():
				}
			}()
		}
	}()
	sigExit := func() int {
		mu.Lock()
		defer mu.Unlock()
		return 128 + int(gotSig)
	}

	s, err := sandbox.Create(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			fail(stderr, fmt.Errorf("interrupted while setting up the sandbox"))
			return sigExit()
		}
		fail(stderr, sandbox.MaskErr(err, secretValues(cfg)))
		return exitLauncher
	}
	mu.Lock()
	sb, running = s, true
	mu.Unlock()

	res, runErr := s.Run(ctx, sandbox.Stdio{Stdin: stdin, Stdout: stdout, Stderr: stderr})
	closeErr := s.Close()
	if !f.quiet && p.Network.Mode == policy.ModeFiltered {
		for _, d := range s.Denials() {
			fmt.Fprintf(stderr, "launcher: %s\n", formatDenial(d))
		}
	}
	if f.timings {
		fmt.Fprintf(stderr, "launcher: timings: %s\n", formatTimings(prepTime, reapTime, s.Timings(), time.Since(start)))
	}
	if closeErr != nil {
		fmt.Fprintf(stderr, "launcher: warning: tearing down sandbox %s: %s\n", s.ID(), oneLine(closeErr.Error()))
	}
	switch {
	case runErr != nil && ctx.Err() != nil:
		fail(stderr, fmt.Errorf("interrupted: the command was killed"))
		return sigExit()
	case runErr != nil:
		fail(stderr, runErr)
		return exitLauncher
	case res.TimedOut:
		fmt.Fprintf(stderr, "launcher: the command was killed: it ran longer than process.timeout %s (%s)\n",
			p.Process.Timeout, p.SourceOf("process.timeout"))
		return exitTimeout
	}
	if closeErr != nil && res.ExitCode == 0 {
		return exitLauncher
	}
	return res.ExitCode
}

func secretValues(cfg sandbox.Config) []string {
	out := make([]string, len(cfg.Secrets))
	for i, s := range cfg.Secrets {
		out[i] = s.Value
	}
	return out
}

// formatTimings renders the phases for --timings, in the order they
// happen: "prepare=2.0ms reap=0.1ms netns=3.2ms firewall=... total=...".
// prepare is the flags and the profile's resolution; total runs from the
// start of the run command to the end of the teardown.
func formatTimings(prepare, reap time.Duration, ts []sandbox.Timing, total time.Duration) string {
	order := []string{"netns", "firewall", "uplink", "egressd", "container", "setup", "create", "run", "teardown"}
	got := map[string]time.Duration{}
	for _, t := range ts {
		got[t.Phase] = t.Duration
	}
	parts := []string{"prepare=" + ms(prepare), "reap=" + ms(reap)}
	for _, name := range order {
		if d, ok := got[name]; ok {
			parts = append(parts, name+"="+ms(d))
		}
	}
	parts = append(parts, "total="+ms(total))
	return strings.Join(parts, " ")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

// warnHandler prints the sandbox's warnings as "launcher: warning: ..."
// lines.
type warnHandler struct {
	w     io.Writer
	attrs []slog.Attr
}

func (h *warnHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *warnHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString("launcher: ")
	if r.Level >= slog.LevelWarn {
		b.WriteString("warning: ")
	}
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " (%s: %s)", a.Key, a.Value.String())
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	b.WriteString("\n")
	_, err := io.WriteString(h.w, b.String())
	return err
}
func (h *warnHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &warnHandler{w: h.w, attrs: append(append([]slog.Attr{}, h.attrs...), as...)}
}
func (h *warnHandler) WithGroup(string) slog.Handler { return h }

// lineWriter serialises whole writes to w (warnings may come from another
// goroutine while the command's stderr streams).
type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
