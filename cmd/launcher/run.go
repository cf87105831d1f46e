package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

// signalGrace is how long the command gets to exit after the launcher
// passed it a SIGINT, SIGTERM, SIGHUP or SIGQUIT, before it is killed.
const signalGrace = 5 * time.Second

// stopSignals are the signals that ask the launcher to stop the command.
var stopSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}

// limitLines say which of the sandbox's limits the kernel enforced during
// the run (read on the host from its cgroup), one line each.
func limitLines(p *policy.Profile, res sandbox.Result) []string {
	var out []string
	if n := res.OOMKills; n > 0 {
		if p.Process.Memory > 0 {
			out = append(out, fmt.Sprintf("out of memory: the kernel killed %s of the sandbox at its memory limit, process.memory %s (%s)",
				plural(n, "process", "processes"), settingValue(p, "process.memory"), p.SourceOf("process.memory")))
		} else {
			out = append(out, fmt.Sprintf("out of memory: the kernel killed %s of the sandbox (process.memory sets no limit: the machine ran out)",
				plural(n, "process", "processes")))
		}
	}
	if n := res.PidsLimitHits; n > 0 {
		out = append(out, fmt.Sprintf("the sandbox reached its task limit, process.pids_limit %d (%s): %s refused",
			p.Process.PidsLimit, p.SourceOf("process.pids_limit"), plural(n, "fork was", "forks were")))
	}
	return out
}

func plural(n uint64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// settingValue is key's value as explain shows it ("64MiB", unquoted).
func settingValue(p *policy.Profile, key string) string {
	for _, pv := range p.Explain() {
		if pv.Field == key {
			return strings.Trim(pv.Value, `"`)
		}
	}
	return ""
}

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
	if f.tty.wants(stdin, stdout) {
		ws := windowSize(stdout, stdin, stderr)
		cfg.Terminal = &ws
	}
	// From here on every line the launcher writes (warnings, live denials,
	// the summary, errors) has the secrets masked, in every form egressd
	// may have written them (THREATS D4); the command's own output is
	// masked as it streams (sandbox.Run).
	cmdStderr := stderr
	stderr = sandbox.NewLineMasker(secretValues(cfg)).Writer(stderr)
	out, err := runOutputs(f, p, &cfg, stderr)
	if err != nil {
		fail(stderr, err)
		return exitLauncher
	}
	defer out.closeAudit()

	// Whatever a launcher that died before us left behind goes first.
	prepTime, reapStart := time.Since(start), time.Now()
	reapStale(f.quiet, stderr)
	reapTime := time.Since(reapStart)

	sigs := handleSignals(ctx, cfg.Terminal != nil, stdin, stdout, stderr)
	defer sigs.stop()
	ctx = sigs.ctx

	s, err := sandbox.Create(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			fail(stderr, fmt.Errorf("interrupted while setting up the sandbox"))
			return sigs.exitCode()
		}
		fail(stderr, sandbox.MaskErr(err, secretValues(cfg)))
		return exitLauncher
	}
	stdio := sandbox.Stdio{Stdin: stdin, Stdout: stdout, Stderr: cmdStderr}
	if cfg.Terminal != nil {
		stdio.Terminal = &sandbox.Terminal{Size: *cfg.Terminal, Resize: sigs.resize}
		rt := rawCallerTerminal(stdin, stderr)
		// Restored on every way out: here after the run, by this defer on
		// a panic of this goroutine, by the guard process on any other
		// death.
		defer rt.restore()
		out.logw.crlf.Store(rt != nil)
		sigs.setRaw(rt)
	}
	sigs.setRunning(s)

	res, runErr := s.Run(ctx, stdio)
	sigs.restoreTerminal()
	out.logw.crlf.Store(false)
	closeErr := s.Close()
	report := runReport{f: f, p: p, s: s, words: out.words, res: res, runErr: runErr, closeErr: closeErr, ctx: ctx,
		timings: func() string {
			return formatTimings(s.Runtime().Name, prepTime, reapTime, s.Timings(), time.Since(start))
		}}
	return report.print(stderr, sigs.exitCode)
}

// rawCallerTerminal puts the caller's terminal (stdin) in raw mode for the
// run, and returns it to restore; nil when stdin is no terminal or it
// stays in its own mode (said on stderr).
func rawCallerTerminal(stdin io.Reader, stderr io.Writer) *rawTerminal {
	in, ok := stdin.(*os.File)
	if !ok {
		return nil
	}
	if _, isTerm := terminalFd(in); !isTerm {
		return nil
	}
	rt, err := makeRaw(in)
	if err != nil {
		fmt.Fprintf(stderr, "launcher: warning: %s; the terminal stays in its own mode (typed keys are echoed twice)\n", err)
	}
	return rt
}

// runOutput is where a run's launcher lines go besides stderr.
type runOutput struct {
	// logw writes the warnings' lines and the live denials.
	logw *lineWriter
	// words says denials in the launcher's words.
	words denialWords
	// closeAudit closes the audit log, if any.
	closeAudit func()
}

// runOutputs sets cfg's audit log, warnings' logger and live denials, all
// written to stderr (masked), and says the secret warnings.
func runOutputs(f *launchFlags, p *policy.Profile, cfg *sandbox.Config, stderr io.Writer) (runOutput, error) {
	out := runOutput{closeAudit: func() {}}
	if !f.quiet {
		for _, w := range secretWarnings(*cfg) {
			fmt.Fprintf(stderr, "launcher: warning: %s\n", w)
		}
	}
	if f.auditLog != "" {
		auditFile, err := os.OpenFile(f.auditLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return out, fmt.Errorf("--audit-log: %w", err)
		}
		out.closeAudit = func() { auditFile.Close() }
		cfg.AuditLog = auditFile
	}
	out.logw = &lineWriter{w: stderr}
	if p.Network.Mode.Proxied() {
		out.words.resolvers, _ = sandbox.UpstreamDNS(p, cfg.ResolvConf) // Create says it if they are unusable
	}
	if !f.quiet {
		cfg.Logger = slog.New(&warnHandler{w: out.logw})
		// Each distinct denial as egressd records it, while the command
		// runs; the summary after the run counts them.
		logw, words := out.logw, out.words
		cfg.OnDenial = func(d sandbox.Denial) { fmt.Fprintf(logw, "launcher: %s\n", words.line(d)) }
	}
	return out, nil
}

// reapStale removes the sandboxes of launchers that died, saying so.
func reapStale(quiet bool, stderr io.Writer) {
	if reaped, err := sandbox.Reap(""); err != nil {
		fmt.Fprintf(stderr, "launcher: warning: removing stale sandboxes: %s\n", oneLine(err.Error()))
	} else if len(reaped) > 0 && !quiet {
		fmt.Fprintf(stderr, "launcher: removed %d stale sandbox(es) of a launcher that died: %s\n", len(reaped), strings.Join(reaped, ", "))
	}
}

// runReport is how a run ended, as the launcher reports it.
type runReport struct {
	f        *launchFlags
	p        *policy.Profile
	s        *sandbox.Sandbox
	words    denialWords
	res      sandbox.Result
	runErr   error
	closeErr error
	// ctx is the run's: done when a signal stopped it.
	ctx     context.Context
	timings func() string
}

// print writes the run's denials, timings, teardown warning and limits to
// stderr and returns the launcher's exit status (sigExit's after a
// signal).
func (r runReport) print(stderr io.Writer, sigExit func() int) int {
	if ds := r.s.Denials(); !r.f.quiet && len(ds) > 0 {
		fmt.Fprintf(stderr, "launcher: %s during the run:\n", countDenials(ds))
		for _, line := range r.words.summary(ds, r.f.auditLog) {
			fmt.Fprintf(stderr, "launcher: %s\n", line)
		}
	}
	if r.f.timings {
		fmt.Fprintf(stderr, "launcher: timings: %s\n", r.timings())
	}
	if r.closeErr != nil {
		fmt.Fprintf(stderr, "launcher: warning: tearing down sandbox %s: %s\n", r.s.ID(), oneLine(r.closeErr.Error()))
	}
	for _, line := range limitLines(r.p, r.res) {
		fmt.Fprintf(stderr, "launcher: %s\n", line)
	}
	switch {
	case r.runErr != nil && r.ctx.Err() != nil:
		fail(stderr, fmt.Errorf("interrupted: the command was killed"))
		return sigExit()
	case r.runErr != nil:
		fail(stderr, r.runErr)
		return exitLauncher
	case r.res.TimedOut:
		fmt.Fprintf(stderr, "launcher: the command was killed: it ran longer than process.timeout %s (%s)\n",
			r.p.Process.Timeout, r.p.SourceOf("process.timeout"))
		return exitTimeout
	}
	if r.closeErr != nil && r.res.ExitCode == 0 {
		return exitLauncher
	}
	return r.res.ExitCode
}

// countDenials says how many destinations were denied and how many failed:
// "2 destinations denied, 1 failed".
func countDenials(ds []sandbox.Denial) string {
	var denied, failed, would int
	for _, d := range ds {
		switch d.Outcome {
		case audit.OutcomeError:
			failed++
		case audit.OutcomeWouldDeny:
			would++
		default:
			denied++
		}
	}
	var parts []string
	if denied > 0 {
		parts = append(parts, fmt.Sprintf("%d %s denied", denied, pluralWord(denied, "destination", "destinations")))
	}
	if would > 0 {
		parts = append(parts, fmt.Sprintf("%d %s report mode would deny (let through)", would, pluralWord(would, "destination", "destinations")))
	}
	if failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", failed))
	}
	return strings.Join(parts, ", ")
}

func pluralWord(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func secretValues(cfg sandbox.Config) []string {
	out := make([]string, len(cfg.Secrets))
	for i, s := range cfg.Secrets {
		out[i] = s.Value
	}
	return out
}

// formatTimings renders the runtime that ran the container and the phases
// for --timings, in the order they happen: "runtime=runc prepare=2.0ms
// reap=0.1ms netns=3.2ms firewall=... total=... runtime.delete=...", the
// teardown's own steps (which run at once inside teardown) last. prepare
// is the flags and the profile's resolution; total runs from the start of
// the run command to the end of the teardown.
func formatTimings(runtime string, prepare, reap time.Duration, ts []sandbox.Timing, total time.Duration) string {
	order := []string{"netns", "firewall", "uplink", "egressd", "container", "runtime.create", "setup", "create",
		"runtime.start", "run", "teardown"}
	got := map[string]time.Duration{}
	for _, t := range ts {
		got[t.Phase] = t.Duration
	}
	parts := []string{"runtime=" + runtime, "prepare=" + ms(prepare), "reap=" + ms(reap)}
	for _, name := range order {
		if d, ok := got[name]; ok {
			parts = append(parts, name+"="+ms(d))
		}
	}
	parts = append(parts, "total="+ms(total))
	for _, t := range ts {
		if !slices.Contains(order, t.Phase) {
			parts = append(parts, t.Phase+"="+ms(t.Duration))
		}
	}
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
// goroutine while the command's stderr streams). While crlf is set (the
// caller's terminal is in raw mode, which does not turn "\n" into "\r\n"),
// it ends lines with "\r\n".
type lineWriter struct {
	mu   sync.Mutex
	w    io.Writer
	crlf atomic.Bool
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.crlf.Load() {
		if _, err := l.w.Write(bytes.ReplaceAll(p, []byte("\n"), []byte("\r\n"))); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return l.w.Write(p)
}
