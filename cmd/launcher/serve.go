package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/egressd/egressd/internal/execapi"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
)

// DefaultServeSocket is where `launcher serve` listens without --listen.
const DefaultServeSocket = "/run/egressd-launcher-serve.sock"

const serveUsage = `usage: launcher serve [flags]

Serves the execution API (docs/serve.md): POST /v1/execute runs one
command in a fresh sandbox, with the request's settings layered over
--policy files like launch flags and never below --floor, and answers with
its exit status, output and denied destinations; /v1/execute/stream sends
the same as NDJSON events while it runs. On a unix socket (mode 0600) by
default; on TCP only with --token-file. On start it removes the sandboxes
a server that died left in --state-dir; on SIGTERM it stops accepting,
lets running executions finish for --shutdown-timeout, then kills them.
SIGHUP re-reads the policy files (a broken one is refused; the last good
ones stay in force).

Examples:
  launcher serve --policy /etc/egressd/tenant.toml --floor standard
  launcher serve --listen tcp:127.0.0.1:8080 --token-file /etc/egressd/api-token

flags:
`

// serveFlags are launcher serve's flags.
type serveFlags struct {
	sb              *launchFlags
	listen          string
	tokenFile       string
	stateDir        string
	maxConcurrent   int
	maxQueue        int
	queueTimeout    time.Duration
	maxRequestBytes int64
	maxOutputBytes  int64
	maxTimeout      time.Duration
	shutdownTimeout time.Duration
	pool            int
	poolMaxUses     int
	poolMaxAge      time.Duration
}

func newServeFlags() (*flag.FlagSet, *serveFlags) {
	f := &serveFlags{sb: &launchFlags{}}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	sandboxFlags(fs, f.sb)
	fs.Lookup("floor").Usage = "security floor `PROFILE`: refuse a request less restrictive (default $EGRESSD_SECURITY_FLOOR, else " + defaultServeFloor + "; open lifts it)"
	fs.StringVar(&f.listen, "listen", "unix:"+DefaultServeSocket, "`unix:PATH` (mode 0600) or tcp:HOST:PORT (needs --token-file)")
	fs.StringVar(&f.tokenFile, "token-file", "", "`FILE` holding the bearer token every request must carry (required on TCP; readable by its owner only)")
	fs.StringVar(&f.stateDir, "state-dir", sandbox.DefaultStateDir, "`DIR` of the sandboxes' state; the stale ones in it are removed at start")
	fs.IntVar(&f.maxConcurrent, "max-concurrent", 2, "executions that run at once (`N`)")
	fs.IntVar(&f.maxQueue, "max-queue", execapi.DefaultMaxQueue, "executions that may wait for a slot (`N`; 0: none wait); past it: 429")
	fs.DurationVar(&f.queueTimeout, "queue-timeout", execapi.DefaultQueueTimeout, "how long an execution waits for a slot before 429 (`DURATION`)")
	fs.Int64Var(&f.maxRequestBytes, "max-request-bytes", execapi.DefaultMaxRequestBytes, "largest request body (`BYTES`); past it: 413")
	fs.Int64Var(&f.maxOutputBytes, "max-output-bytes", execapi.DefaultMaxOutputBytes, "output kept of each of stdout and stderr (`BYTES`); the rest is dropped, truncated: true")
	fs.DurationVar(&f.maxTimeout, "max-timeout", execapi.DefaultMaxTimeout, "longest process.timeout a request may have (`DURATION`); a policy without one gets this")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "after SIGTERM, how long running executions may finish before they are killed (`DURATION`)")
	fs.IntVar(&f.pool, "pool", 0, "keep `N` sandboxes warm and reuse them between executions, reset and verified in between (0: a fresh sandbox per execution)")
	fs.IntVar(&f.poolMaxUses, "pool-max-uses", 0, "retire a pooled sandbox after `N` executions (0: no bound)")
	fs.DurationVar(&f.poolMaxAge, "pool-max-age", 0, "retire a pooled sandbox this old (`DURATION`; 0: no bound)")
	return fs, f
}

// defaultServeFloor is the floor of a server given none: its clients
// are not the operator, and without a floor a request could ask for the
// open profile (the host's network, uid 0, no limits) or report mode.
const defaultServeFloor = "standard"

// floor is --floor, else $EGRESSD_SECURITY_FLOOR, else defaultServeFloor;
// --floor open lifts it.
func (f *serveFlags) floor() string {
	if fl := f.sb.floorName(); fl != "" {
		return fl
	}
	return defaultServeFloor
}

// policySet holds the server's parsed policy files; SIGHUP swaps in a new
// set once it parsed and resolved.
type policySet struct {
	names []string
	files atomic.Pointer[[]*policy.File]
}

// load parses every file; nothing changes unless all of them parse.
func (ps *policySet) load() error {
	var files []*policy.File
	var errs []error
	for _, name := range ps.names {
		data, err := os.ReadFile(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: cannot read policy file: %w", name, err))
			continue
		}
		f, err := policy.ParseFile(name, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		files = append(files, f)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	ps.files.Store(&files)
	return nil
}

func (ps *policySet) get() []*policy.File {
	if p := ps.files.Load(); p != nil {
		return *p
	}
	return nil
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, f := newServeFlags()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, serveUsage, stdout)
			return 0
		}
		fail(stderr, fmt.Errorf("%w (see launcher serve -h)", err))
		return exitLauncher
	}
	if fs.NArg() > 0 {
		fail(stderr, fmt.Errorf("serve takes no arguments, got %q (see launcher serve -h)", fs.Arg(0)))
		return exitLauncher
	}
	if err := serve(ctx, f, stderr); err != nil {
		fail(stderr, err)
		return exitLauncher
	}
	return 0
}

func serve(ctx context.Context, f *serveFlags, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	network, addr, token, err := serveListenFlags(f)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root (it creates network namespaces, firewall rules and containers)")
	}
	// The server's own policy: parsed now, resolved once to refuse a
	// server whose policy is broken or below its floor before it serves.
	ps := &policySet{names: f.sb.policies}
	if err := ps.load(); err != nil {
		return err
	}
	if _, _, err := policy.ResolveFiles(f.sb.profile, ps.get(), f.sb.overrides(), f.floor()); err != nil {
		return fmt.Errorf("the server's policy: %w", err)
	}
	if err := checkStateDir(f.stateDir); err != nil {
		return err
	}
	reapStaleServer(f.stateDir, log)
	// The listener before the API: listenUnix narrows the umask while it
	// makes the socket, and the umask is the whole process's; the pool
	// (newServeAPI) makes sandboxes' directories from goroutines of its
	// own, which must never be made under it (egressd could not pass
	// through a directory made 0600).
	var ln net.Listener
	if network == "unix" {
		ln, err = listenUnix(addr)
	} else {
		ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return err
	}
	api, closeAPI, err := newServeAPI(f, ps, token, log)
	if err != nil {
		ln.Close()
		return err
	}
	defer closeAPI()
	return serveUntilStopped(ctx, f, ps, api, ln, log)
}

// serveListenFlags checks --listen and --token-file: unix:PATH, or
// tcp:HOST:PORT with a token.
func serveListenFlags(f *serveFlags) (network, addr, token string, err error) {
	network, addr, ok := strings.Cut(f.listen, ":")
	if !ok || addr == "" || (network != "unix" && network != "tcp") {
		return "", "", "", fmt.Errorf("--listen %q: want unix:PATH or tcp:HOST:PORT", f.listen)
	}
	if token, err = readToken(f.tokenFile); err != nil {
		return "", "", "", err
	}
	if network == "tcp" && token == "" {
		return "", "", "", fmt.Errorf("--listen %s: TCP needs --token-file (a bearer token every request must carry); without one, listen on a unix socket", f.listen)
	}
	return network, addr, token, nil
}

// newServeAPI builds the execution API over sandboxes configured like
// launch flags, cold or from a warm pool (--pool); closeAPI closes the
// pool (every pooled sandbox destroyed) and the audit log it opened.
func newServeAPI(f *serveFlags, ps *policySet, token string, log *slog.Logger) (api *execapi.Server, closeAPI func(), err error) {
	closeAPI = func() {}
	rt, err := sandbox.NewRuntime(f.sb.runtime, "")
	if err != nil {
		return nil, closeAPI, err
	}
	if f.sb.egressd, err = f.sb.egressdPath(true); err != nil {
		return nil, closeAPI, err
	}
	var auditLog *os.File
	if f.sb.auditLog != "" {
		if auditLog, err = os.OpenFile(f.sb.auditLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640); err != nil {
			return nil, closeAPI, fmt.Errorf("--audit-log: %w", err)
		}
		closeAPI = func() { auditLog.Close() }
	}
	configure := func(p *policy.Profile, args []string) (sandbox.Config, error) {
		cfg, err := f.sb.config(p, args, false)
		if err != nil {
			return cfg, err
		}
		cfg.Runtime, cfg.StateDir = rt, f.stateDir
		if auditLog != nil {
			cfg.AuditLog = auditLog
		}
		cfg.Logger = log
		return cfg, nil
	}
	var exec execapi.Executor = &execapi.Cold{}
	if f.pool > 0 {
		pool, err := newServePool(f, ps, configure, log)
		if err != nil {
			closeAPI()
			return nil, func() {}, err
		}
		closeLog := closeAPI
		closeAPI = func() {
			if err := pool.Close(); err != nil {
				log.Warn("closing the sandbox pool", "error", oneLine(err.Error()))
			}
			closeLog()
		}
		exec = &execapi.Warm{Pool: pool}
	}
	api, err = execapi.New(execapi.Options{
		Files:           ps.get,
		Profile:         f.sb.profile,
		Floor:           f.floor(),
		Overrides:       f.sb.overrides(),
		MaxTimeout:      f.maxTimeout,
		Configure:       configure,
		Executor:        exec,
		MaxConcurrent:   f.maxConcurrent,
		MaxQueue:        queueFlag(f.maxQueue),
		QueueTimeout:    f.queueTimeout,
		MaxRequestBytes: f.maxRequestBytes,
		MaxOutputBytes:  f.maxOutputBytes,
		Token:           token,
		Logger:          log,
	})
	return api, closeAPI, err
}

// newServePool starts the warm pool of --pool: sandboxes of the shape of
// the server's own policy (what a request that asks for nothing gets).
func newServePool(f *serveFlags, ps *policySet, configure func(*policy.Profile, []string) (sandbox.Config, error), log *slog.Logger) (*sandbox.Pool, error) {
	p, _, err := policy.ResolveFiles(f.sb.profile, ps.get(), f.sb.overrides(), f.floor())
	if err != nil {
		return nil, fmt.Errorf("the server's policy: %w", err)
	}
	cfg, err := configure(p, []string{"true"})
	if err != nil {
		return nil, err
	}
	cfg.AuditLog = nil
	pool, err := sandbox.NewPool(sandbox.PoolConfig{Config: cfg, Size: f.pool, MaxUses: f.poolMaxUses, MaxAge: f.poolMaxAge, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("--pool: %w", err)
	}
	return pool, nil
}

// reapStaleServer removes what a server that died left behind: only in
// its own state directory, only sandboxes no live launcher holds.
func reapStaleServer(stateDir string, log *slog.Logger) {
	if reaped, err := sandbox.Reap(stateDir); err != nil {
		log.Warn("removing stale sandboxes", "error", oneLine(err.Error()))
	} else if len(reaped) > 0 {
		log.Info("removed stale sandboxes of a server that died", "sandboxes", strings.Join(reaped, ","))
	}
}

// serveUntilStopped serves api on ln until ctx ends or SIGTERM/SIGINT
// (then drains), re-reading the policy files on SIGHUP.
func serveUntilStopped(ctx context.Context, f *serveFlags, ps *policySet, api *execapi.Server, ln net.Listener, log *slog.Logger) error {
	hs := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigc)
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	log.Info("serving the execution API", "listen", f.listen, "floor", f.floor(), "max_concurrent", f.maxConcurrent, "state_dir", f.stateDir)
	for {
		select {
		case err := <-served:
			return fmt.Errorf("serving %s: %w", f.listen, err)
		case <-ctx.Done():
			return shutdown(hs, api, f.shutdownTimeout, sigc, log)
		case sig := <-sigc:
			if sig == syscall.SIGHUP {
				if err := reloadPolicy(ps, f); err != nil {
					log.Error("policy reload refused: the last good policy stays in force", "error", oneLine(err.Error()))
				} else {
					log.Info("policy reloaded", "files", strings.Join(ps.names, ","))
				}
				continue
			}
			log.Info("shutting down: no new executions; running ones may finish", "signal", sig.String(), "timeout", f.shutdownTimeout.String())
			return shutdown(hs, api, f.shutdownTimeout, sigc, log)
		}
	}
}

// reloadPolicy re-reads the policy files; a set that does not parse, or
// does not resolve above the floor, is refused and the old set stays.
func reloadPolicy(ps *policySet, f *serveFlags) error {
	next := &policySet{names: ps.names}
	if err := next.load(); err != nil {
		return err
	}
	if _, _, err := policy.ResolveFiles(f.sb.profile, next.get(), f.sb.overrides(), f.floor()); err != nil {
		return err
	}
	ps.files.Store(next.files.Load())
	return nil
}

// killGrace bounds the teardown of the executions a shutdown killed.
const killGrace = time.Minute

// shutdown stops accepting, lets running executions finish until timeout
// (or a second signal), then kills them and waits for their teardown.
func shutdown(hs *http.Server, api *execapi.Server, timeout time.Duration, sigc <-chan os.Signal, log *slog.Logger) error {
	api.Drain()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		select {
		case <-sigc:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := hs.Shutdown(ctx); err == nil {
		return nil
	}
	log.Warn("killing the executions still running")
	api.Kill()
	// Killed, each is torn down (container, namespace, egressd) and its
	// client told 503.
	kctx, kcancel := context.WithTimeout(context.Background(), killGrace)
	defer kcancel()
	if err := api.Wait(kctx); err != nil {
		log.Error("giving up on the teardown of killed executions: launcher cleanup removes what they leave", "error", err.Error())
	}
	_ = hs.Close() // the listener is closed already; this ends the connections
	return nil
}

// checkStateDir makes the state directory if it is missing, and refuses
// one egressd could not pass through (it runs as its own user and starts
// from its files there): every execution would fail.
func checkStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("--state-dir %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o001 == 0 {
		return fmt.Errorf("--state-dir %s: mode %04o keeps egressd (its own user) out of its files there: chmod 711 it", dir, fi.Mode().Perm())
	}
	return nil
}

// queueFlag maps --max-queue to execapi's: 0 there means the default, so
// "no queue" is negative.
func queueFlag(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}

// readToken reads the bearer token: the file's content without the
// surrounding white space. The file must be the owner's only.
func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("--token-file %s: mode %04o lets others read the token: chmod 600 it", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty", path)
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("--token-file %s: the token has white space inside it; put one token on one line", path)
	}
	return tok, nil
}

// listenUnix listens on a unix socket at path with mode 0600. A path that
// exists is refused unless it is a stale socket (nothing accepts on it),
// which is removed. It changes the process's umask for a moment: call it
// while no other goroutine makes files.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("--listen unix:%s: the path exists and is not a socket: refusing to replace it", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("--listen unix:%s: another server is listening there", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("--listen unix:%s: cannot tell whether the socket there is stale: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("--listen unix:%s: removing the stale socket: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("--listen unix:%s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("--listen unix:%s: %w", path, err)
	}
	// Made 0600 from the start: no moment in which others may connect.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("--listen unix:%s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("--listen unix:%s: %w", path, err)
	}
	return ln, nil
}
