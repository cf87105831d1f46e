// Command fakeworld starts the fake internet of the e2e tests (e2e/fakenet)
// in a network namespace of its own, runs one command inside it, reports
// what the world's servers saw, and tears everything down. `make demo`
// runs the launcher in it, so a filtered sandbox can be shown without any
// real network.
//
//	fakeworld [-record NAME=IP]... [-ca FILE] -- CMD [ARGS...]
//
// The world (see e2e/fakenet/README.md): a DNS server at 203.0.113.53
// answering the -record names, HTTP and HTTPS servers on 203.0.113.10,
// 198.51.100.10 and 2001:db8::10 that answer every request with a JSON
// description of it, certificates from a throwaway CA (written to -ca), and
// no route to anywhere else. CMD runs in the world's network namespace
// only (nsenter --net): it sees the machine's files and can run runc.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"github.com/egressd/egressd/e2e/fakenet"
	"github.com/egressd/egressd/internal/privtest"
)

func main() { os.Exit(run()) }

type recordFlag []string

func (r *recordFlag) String() string     { return strings.Join(*r, ",") }
func (r *recordFlag) Set(v string) error { *r = append(*r, v); return nil }

func run() (code int) {
	var records recordFlag
	flag.Var(&records, "record", "DNS record `NAME=IP` in the world (repeatable)")
	caOut := flag.String("ca", "", "write the world's CA certificate (PEM) to `FILE`")
	quiet := flag.Bool("quiet", false, "do not report what the world saw")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: fakeworld [-record NAME=IP]... [-ca FILE] -- CMD [ARGS...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		return 2
	}
	tb := &programTB{name: "fakeworld"}
	defer func() {
		if r := recover(); r != nil && r != errFatal {
			panic(r)
		}
		tb.runCleanups()
		if tb.failed || tb.skipped {
			code = 1
		}
	}()
	// Running this program is itself the request for namespaces that the
	// privileged tests wait for a switch to make: as root it switches
	// them on for its own process (fakenet checks the same switch).
	if os.Geteuid() == 0 {
		os.Setenv(privtest.Env, "1")
	}
	w := fakenet.Start(tb) // skips (and so returns 1) unless root
	for _, r := range records {
		name, ip, ok := strings.Cut(r, "=")
		addr, err := netip.ParseAddr(ip)
		if !ok || err != nil {
			fmt.Fprintf(os.Stderr, "fakeworld: -record %q: want NAME=IP\n", r)
			return 2
		}
		if addr.Is4() {
			w.SetRecords(name, fakenet.A(ip))
		} else {
			w.SetRecords(name, fakenet.AAAA(ip))
		}
	}
	if *caOut != "" {
		if err := os.WriteFile(*caOut, w.CAPEM(), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "fakeworld:", err)
			return 1
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := w.Exec(ctx, flag.Arg(0), flag.Args()[1:]...)
	// Let the command shut down on a signal (the launcher tears its sandbox
	// down); exec's WaitDelay kills it if it does not.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
		if code < 0 {
			code = 128 + int(exit.Sys().(syscall.WaitStatus).Signal())
		}
	case err != nil:
		fmt.Fprintln(os.Stderr, "fakeworld:", err)
		code = 1
	}
	if !*quiet {
		report(os.Stderr, w)
	}
	return code
}

// report says what reached the world's servers.
func report(out io.Writer, w *fakenet.World) {
	fmt.Fprintln(out, "fakeworld: what the fake internet saw:")
	for _, q := range w.DNSLog() {
		fmt.Fprintf(out, "  DNS   %-5s %-24s from %s\n", q.Type, q.Name, q.From.Addr())
	}
	for _, r := range w.HTTPLog() {
		fmt.Fprintf(out, "  %-5s %s %s%s from %s\n", strings.ToUpper(r.Scheme), r.Method, r.Host, r.URI, r.Remote.Addr())
	}
	if len(w.DNSLog())+len(w.HTTPLog()) == 0 {
		fmt.Fprintln(out, "  nothing")
	}
}

// errFatal unwinds run after Fatal.
var errFatal = errors.New("fatal")

// programTB lets a program use fakenet, which takes a testing.TB: it logs
// to stderr, Fatal unwinds run, and cleanups run when run returns.
type programTB struct {
	testing.TB // never called: only here for TB's unexported method
	name       string
	cleanups   []func()
	failed     bool
	skipped    bool
}

func (t *programTB) runCleanups() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
	t.cleanups = nil
}

func (t *programTB) ArtifactDir() string          { return os.TempDir() }
func (t *programTB) Attr(key, value string)       {}
func (t *programTB) Cleanup(f func())             { t.cleanups = append(t.cleanups, f) }
func (t *programTB) Error(args ...any)            { t.Log(args...); t.failed = true }
func (t *programTB) Errorf(f string, args ...any) { t.Logf(f, args...); t.failed = true }
func (t *programTB) Fail()                        { t.failed = true }
func (t *programTB) FailNow()                     { t.failed = true; panic(errFatal) }
func (t *programTB) Failed() bool                 { return t.failed }
func (t *programTB) Fatal(args ...any)            { t.Error(args...); panic(errFatal) }
func (t *programTB) Fatalf(f string, args ...any) { t.Errorf(f, args...); panic(errFatal) }
func (t *programTB) Helper()                      {}
func (t *programTB) Log(args ...any) {
	fmt.Fprintln(os.Stderr, append([]any{"fakeworld:"}, args...)...)
}
func (t *programTB) Logf(f string, args ...any) {
	fmt.Fprintf(os.Stderr, "fakeworld: "+f+"\n", args...)
}
func (t *programTB) Name() string             { return t.name }
func (t *programTB) Setenv(key, value string) { os.Setenv(key, value) }
func (t *programTB) Chdir(dir string)         { _ = os.Chdir(dir) }
func (t *programTB) Skip(args ...any)         { t.Log(args...); t.skipped = true; panic(errFatal) }
func (t *programTB) SkipNow()                 { t.skipped = true; panic(errFatal) }
func (t *programTB) Skipf(f string, args ...any) {
	t.Logf(f, args...)
	t.skipped = true
	panic(errFatal)
}
func (t *programTB) Skipped() bool            { return t.skipped }
func (t *programTB) Context() context.Context { return context.Background() }
func (t *programTB) Output() io.Writer        { return os.Stderr }
func (t *programTB) TempDir() string {
	dir, err := os.MkdirTemp("", "fakeworld-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
