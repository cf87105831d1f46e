package sandbox

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/specconv"
)

// IDPrefix starts every sandbox id ("egs-" and 8 hex digits). The id names
// everything a sandbox makes, so a leftover is recognisable: its network
// namespace (/run/netns/ID), its veth in the launcher's namespace (ID), its
// container (ID, in `runc list`), its state directory
// (DefaultStateDir/ID) and its uplink chains (EGS-<hex>-FWD, EGS-<hex>-NAT).
const IDPrefix = "egs-"

// DefaultStateDir holds one private directory per running sandbox (its
// lock, state record, container bundle, rootfs mounts, generated
// resolv.conf and hosts, and egressd's policy snapshot and admin socket).
// It is under /run, which every sandbox sees as a fresh tmpfs, so nothing
// in it is visible inside a container, even where /run is part of the host
// root the container's root is built from.
const DefaultStateDir = "/run/egressd-launcher"

// MinPidsLimit is the lowest process.pids_limit a sandbox with an init
// runs with: the init's own tasks (pid1.Tasks) and as many for the
// command.
const MinPidsLimit = specconv.MinPidsLimit

// ExitTimeout is the exit code of a command killed by its timeout.
const ExitTimeout = 124

// Secret is a value given to the sandbox as an environment variable and
// masked (SecretMask) wherever it appears in the command's output.
type Secret struct{ Name, Value string }

// Config is one launch. The profile is resolved (policy.Resolve, floor
// included) by the caller; NewPlan plans it, Apply (or Create) enforces it.
type Config struct {
	// ID is the sandbox's id; "" means a fresh random one (ExplainID
	// names none, for explain).
	ID string
	// Profile is the resolved profile. Required.
	Profile *policy.Profile
	// Args is the command and its arguments. Required.
	Args []string

	// Rootfs is an image directory the container's root is built on; ""
	// (or "/") means the host view: the host's system directories (see
	// specconv.PlanView, PrepareRootfs).
	Rootfs string
	// HostRoot is where the host's system directories and account
	// databases are read; "" means "/". For tests.
	HostRoot string
	// Runtime runs the container; nil means runc from PATH with its
	// default state directory.
	Runtime *Runtime
	// CallerEnv is the environment env.pass copies from (os.Environ());
	// nil means nothing is passed.
	CallerEnv []string
	// Secrets are set in the sandbox's environment and masked in its
	// output; nil means none.
	Secrets []Secret
	// Workdir is the working directory inside the sandbox; "" means the
	// profile's workspace.
	Workdir string
	// WorkspaceDir is the host directory bound read-write at the
	// workspace. Required when the profile sets filesystem.mount_cwd; ""
	// otherwise gives the workspace a fresh tmpfs.
	WorkspaceDir string
	// Hostname is the sandbox's host name; "" means DefaultHostname.
	Hostname string
	// Init is the host path of the init binary (the launcher itself, built
	// static), bind-mounted read-only at pid1.Path and run as the
	// container's process 1 with the command as its child (package pid1);
	// "" runs the command itself as process 1, without an init (signals
	// it does not handle are then dropped, and its orphans are not reaped).
	Init string
	// Terminal, when not nil, gives the command a pseudo-terminal of that
	// initial size instead of pipes (process.terminal; Run then wants a
	// Stdio.Terminal); nil: pipes.
	Terminal *WindowSize

	// Subnet is the IPv4 range filtered mode's uplink /30 is taken from;
	// the zero Prefix means DefaultSubnet.
	Subnet netip.Prefix
	// ResolvConf is read for upstream resolvers when the profile names
	// none (network.upstream_dns); "" means /etc/resolv.conf.
	ResolvConf string
	// EgressdPath is the egressd binary. Required in filtered mode.
	EgressdPath string
	// EgressdUID and EgressdGID are egressd's identity; zero means
	// DefaultEgressdUID and DefaultEgressdGID. Neither may be 0, nor the
	// sandbox user's uid or gid.
	EgressdUID, EgressdGID uint32
	// Mark is egressd's SO_MARK, exempted by the firewall; 0 means
	// DefaultMark.
	Mark uint32
	// ReadyTimeout bounds egressd's start; 0 means DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// AuditLog receives egressd's audit records (JSON lines, docs/audit.md)
	// with each rule's original source and the secrets masked; nil keeps
	// only Denials.
	AuditLog io.Writer
	// OnDenial, when set, is told of each distinct Denial when egressd
	// first records it (live, while the command runs), from the goroutine
	// reading egressd's audit stream; it must not block for long.
	OnDenial func(Denial)
	// InspectUpstreamCA is a PEM bundle on the host that egressd verifies
	// inspected hosts' certificates against (docs/inspection.md); "" means
	// the host's trust store.
	InspectUpstreamCA string

	// StateDir is where the sandbox's state directory is made; "" means
	// DefaultStateDir.
	StateDir string
	// Logger receives warnings during the run (egressd exiting, say); nil
	// discards them.
	Logger *slog.Logger
	// Kernel is what Apply, Close and Reap act on; nil means the host's
	// (HostKernel). Tests give NewFakeKernel's.
	Kernel *Kernel
}

// Timing is how long one phase of a sandbox's life took.
type Timing struct {
	Phase    string
	Duration time.Duration
}

// Sandbox is one sandbox: made by Apply (or Create), run by Run, removed by
// Close.
type Sandbox struct {
	plan *Plan
	cfg  Config
	k    *Kernel
	id   string
	dir  string
	mode policy.Mode
	lock *os.File
	rt   *Runtime

	// What exists so far, for the teardown (mu).
	ns            NetNS // the namespace, when made
	up            *uplink
	eg            EgressdProcess
	egStopping    chan struct{} // closed when the teardown stops egressd
	sink          *auditSink
	rootfsCleanup func() error
	bundle        string

	container atomic.Bool      // the runtime may know the container
	exited    atomic.Bool      // Run reaped the container's process 1
	created   Created          // the container created, not yet started (mu)
	closing   bool             // Close has begun (mu)
	ctr       Process          // the started container (mu)
	pending   []syscall.Signal // sent before ctr was known (mu)
	secrets   []string

	egressdGone atomic.Bool

	mu      sync.Mutex
	timings []Timing

	closeOnce sync.Once
	closeErr  error
}

// stateRecord is DefaultStateDir/ID/state.json: what Reap needs to remove
// a sandbox whose launcher died without tearing it down. It is written
// before anything it names is made.
type stateRecord struct {
	ID          string      `json:"id"`
	Mode        policy.Mode `json:"mode"`
	LauncherPID int         `json:"launcher_pid"`
	// LauncherNetNS identifies the launcher's network namespace (where
	// the veth and the uplink chains are), "dev:ino".
	LauncherNetNS string    `json:"launcher_netns"`
	Runtime       string    `json:"runtime"`
	RuntimeRoot   string    `json:"runtime_root,omitempty"`
	Created       time.Time `json:"created"`
}

// OfLauncher returns the id of the sandbox whose launcher is process pid,
// from the state records in DefaultStateDir.
func OfLauncher(pid int) (id string, ok bool) { return ofLauncher(DefaultStateDir, pid) }

func ofLauncher(stateDir string, pid int) (id string, ok bool) {
	ents, _ := os.ReadDir(stateDir)
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(stateDir, e.Name(), "state.json"))
		if err != nil {
			continue
		}
		var rec stateRecord
		if json.Unmarshal(data, &rec) == nil && rec.LauncherPID == pid && validID(rec.ID) {
			return rec.ID, true
		}
	}
	return "", false
}

// ID returns the sandbox's id.
func (s *Sandbox) ID() string { return s.id }

// StateDir returns the sandbox's private state directory.
func (s *Sandbox) StateDir() string { return s.dir }

// NetNSPath returns the sandbox's network namespace (NetnsDir/ID), or ""
// in host mode.
func (s *Sandbox) NetNSPath() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ns.Path
}

// EgressdPID returns egressd's pid, or 0 when the sandbox has none.
func (s *Sandbox) EgressdPID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.eg == nil {
		return 0
	}
	return s.eg.Pid()
}

// Runtime returns the OCI runtime that runs the sandbox's container.
func (s *Sandbox) Runtime() *Runtime { return s.rt }

// Plan returns the plan the sandbox was made from.
func (s *Sandbox) Plan() *Plan { return s.plan }

// EgressdExited reports whether egressd exited before Close stopped it.
// The sandbox then has no network egress at all: the firewall redirects
// everything to ports nobody listens on (fail closed).
func (s *Sandbox) EgressdExited() bool { return s.egressdGone.Load() }

// Denials returns the distinct destinations egressd denied so far, sorted
// by target and port. Complete once Close has returned.
func (s *Sandbox) Denials() []Denial {
	if s.sink == nil {
		return nil
	}
	return s.sink.list()
}

// Timings returns how long each phase took so far. Create's parallel
// phases (firewall, uplink, egressd, container, the last including
// runtime.create) overlap; "setup" is their wall time. Run's are
// runtime.start and run (from the start to the end of the command).
func (s *Sandbox) Timings() []Timing {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.timings)
}

func (s *Sandbox) timed(phase string, start time.Time) {
	s.mu.Lock()
	s.timings = append(s.timings, Timing{Phase: phase, Duration: time.Since(start)})
	s.mu.Unlock()
}

func (s *Sandbox) log() *slog.Logger {
	s.mu.Lock() // a pool's lease changes cfg
	l := s.cfg.Logger
	s.mu.Unlock()
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// withDefaults fills cfg's zero values and checks what Create needs.
func (cfg Config) withDefaults() (Config, error) {
	p := cfg.Profile
	if p == nil {
		return cfg, errors.New("no profile")
	}
	if len(cfg.Args) == 0 || cfg.Args[0] == "" {
		return cfg, errors.New("no command to run")
	}
	switch p.Network.Mode {
	case policy.ModeFiltered, policy.ModeReport, policy.ModeNone, policy.ModeHost:
	default:
		return cfg, fmt.Errorf("unknown network mode %q", p.Network.Mode)
	}
	if cfg.Rootfs == "" {
		cfg.Rootfs = "/"
	}
	if !filepath.IsAbs(cfg.Rootfs) {
		return cfg, fmt.Errorf("rootfs %q is not an absolute path", cfg.Rootfs)
	}
	cfg.Rootfs = filepath.Clean(cfg.Rootfs)
	if cfg.Rootfs != "/" {
		st, err := os.Stat(cfg.Rootfs)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return cfg, fmt.Errorf("rootfs %s: no such directory (--rootfs names the directory the sandbox's root is built on)", cfg.Rootfs)
		case err != nil:
			return cfg, fmt.Errorf("rootfs %s: %w", cfg.Rootfs, err)
		case !st.IsDir():
			return cfg, fmt.Errorf("rootfs %s: not a directory", cfg.Rootfs)
		}
	}
	if cfg.Workdir != "" && !isCleanAbs(cfg.Workdir) {
		return cfg, fmt.Errorf("working directory %q is not an absolute clean path inside the sandbox", cfg.Workdir)
	}
	if p.Filesystem.MountCwd && cfg.WorkspaceDir == "" {
		return cfg, errors.New("filesystem.mount_cwd is set but no workspace directory was given")
	}
	if cfg.WorkspaceDir != "" {
		abs, err := filepath.Abs(cfg.WorkspaceDir)
		if err != nil {
			return cfg, err
		}
		cfg.WorkspaceDir = abs
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = DefaultSubnet
	}
	if cfg.EgressdUID == 0 {
		cfg.EgressdUID = DefaultEgressdUID
	}
	if cfg.EgressdGID == 0 {
		cfg.EgressdGID = DefaultEgressdGID
	}
	if cfg.Mark == 0 {
		cfg.Mark = DefaultMark
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(cfg.StateDir) {
		return cfg, fmt.Errorf("state directory %q is not an absolute path", cfg.StateDir)
	}
	for _, sec := range cfg.Secrets {
		if !policy.ValidEnvName(sec.Name) || strings.ContainsRune(sec.Value, 0) {
			return cfg, fmt.Errorf("secret %q: want a variable name of letters, digits and _, and a value without NUL", sec.Name)
		}
	}
	if p.Network.Mode.Proxied() && cfg.EgressdPath == "" {
		return cfg, errors.New("filtered (and report) mode needs the egressd binary; none was given")
	}
	if cfg.Kernel == nil {
		cfg.Kernel = HostKernel()
	}
	return cfg, nil
}

// selfNetNS identifies the calling thread's network namespace as "dev:ino".
func selfNetNS() string {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return ""
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// Result is how a sandboxed command ended.
type Result struct {
	// ExitCode is the command's exit status (128+N when killed by signal
	// N), or ExitTimeout when the profile's timeout killed it.
	ExitCode int
	// TimedOut reports that the timeout killed the command.
	TimedOut bool
	// OOMKills is how many processes of the sandbox the kernel's
	// out-of-memory killer killed at process.memory, and PidsLimitHits how
	// many forks process.pids_limit refused; both read on the host from the
	// sandbox's cgroup (Exit).
	OOMKills, PidsLimitHits uint64
}

var errTimedOut = errors.New("the sandbox's timeout expired")

// Run runs the command in the container, streaming stdio (secrets masked in
// stdout and stderr, or in the terminal's output), and returns how it ended.
// The profile's process.timeout bounds it: when it expires every process of
// the container is killed and the result is ExitTimeout. When ctx ends first
// (the launcher was interrupted), the container is killed and ctx's error is
// returned with the result. A runtime that fails to start the container is an
// error, never an exit status. Run may be called once.
func (s *Sandbox) Run(ctx context.Context, stdio Stdio) (Result, error) {
	return s.run(ctx, stdio, s.start)
}

// start starts the container Apply created (the runtime's start): the
// cold path's start function of run.
func (s *Sandbox) start(ctx context.Context, stdio Stdio) (Process, error) {
	s.mu.Lock()
	c, closing := s.created, s.closing
	s.created = nil
	s.mu.Unlock()
	if closing {
		if c != nil {
			_ = c.Destroy(ctx)
		}
		return nil, errors.New("running the sandbox: it is being torn down")
	}
	if c == nil {
		// Not made by Apply (a Sandbox of a test's own making).
		var err error
		if c, err = s.createContainer(ctx, nil); err != nil {
			return nil, err
		}
	}
	t := time.Now()
	err := c.Start(ctx, stdio)
	s.timed("runtime.start", t)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// run is Run with the container's process started by start (a pooled
// sandbox's sends the command to its waiting container instead).
func (s *Sandbox) run(ctx context.Context, stdio Stdio, start func(context.Context, Stdio) (Process, error)) (Result, error) {
	if (s.cfg.Terminal != nil) != (stdio.Terminal != nil) {
		return Result{ExitCode: -1}, errors.New("running the sandbox: a terminal needs both Config.Terminal and Stdio.Terminal")
	}
	runCtx := ctx
	if t := s.cfg.Profile.Process.Timeout; t > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeoutCause(ctx, t, errTimedOut)
		defer cancel()
	}
	var closers []io.Closer
	if stdio.Stdout != nil {
		m := NewMasker(stdio.Stdout, s.secrets)
		stdio.Stdout, closers = m, append(closers, m)
	}
	if stdio.Stderr != nil {
		m := NewMasker(stdio.Stderr, s.secrets)
		stdio.Stderr, closers = m, append(closers, m)
	}
	began := time.Now()
	c, err := start(runCtx, stdio)
	ex := Exit{Code: -1}
	if err == nil {
		s.mu.Lock()
		s.ctr = c
		pending := s.pending
		s.pending = nil
		s.mu.Unlock()
		// Signals that came while the runtime started the container.
		for _, sig := range pending {
			_ = c.Signal(sig)
		}
		ex, err = c.Wait(runCtx)
		s.exited.Store(ex.Code >= 0)
	}
	s.timed("run", began)
	for _, c := range closers {
		_ = c.Close()
	}
	res := Result{ExitCode: ex.Code, OOMKills: ex.OOMKills, PidsLimitHits: ex.PidsLimitHits}
	if ctx.Err() == nil && errors.Is(context.Cause(runCtx), errTimedOut) {
		res.ExitCode, res.TimedOut = ExitTimeout, true
		return res, nil
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if err != nil {
		return res, MaskErr(err, s.secrets)
	}
	return res, nil
}

// MaskErr returns err with any secret in its message masked.
func MaskErr(err error, secrets []string) error {
	if err == nil || len(secrets) == 0 {
		return err
	}
	msg := err.Error()
	if masked := MaskSecrets(msg, secrets); masked != msg {
		return errors.New(masked)
	}
	return err
}

// Signal sends sig to the container's process 1 (the init, which passes
// it on to the command's process group), e.g. to pass on the SIGTERM the
// launcher received. A signal sent before the container runs (while Run
// starts it: the command may already run then) is delivered as soon as it
// does; after it ended nothing happens.
func (s *Sandbox) Signal(sig syscall.Signal) error {
	s.mu.Lock()
	c := s.ctr
	if c == nil {
		s.pending = append(s.pending, sig)
	}
	s.mu.Unlock()
	if c == nil {
		return nil
	}
	return c.Signal(sig)
}

// teardownTimeout bounds Close's runtime and iptables commands.
const teardownTimeout = 30 * time.Second

// Close removes everything the sandbox made. Its independent steps run at
// once:
//
//   - the container (runc delete --force: every process in it is killed;
//     a container created and never started is destroyed);
//   - egressd (SIGTERM, SIGKILL after 2 s) and its binary's mount; once
//     it has exited and nothing of the container runs any more, the
//     network namespace: any process still in it is killed by pid, then
//     its bind mount is removed and the kernel frees it with its firewall
//     rules and the veth pair (the sandbox's only way out; there is
//     nothing to flush first: the rules live and die with the namespace,
//     and flushing them while anything could still run inside would only
//     open a window); then the uplink's NAT and FORWARD chains in the
//     launcher's namespace (removeUplink: when the namespace could not be
//     removed, the veth is set down and deleted explicitly);
//   - once nothing of the container runs any more, its root (the overlay
//     and its tmpfs) and the protected paths' placeholders;
//
// and then the state directory (never crossing a mount point) and the
// lock. Nothing of the container runs any more once Run has reaped its
// process 1 (every process of its pid namespace dies with it), or else
// once the runtime's delete returned. Every step runs even when another
// fails; the errors are joined. Close is idempotent, and safe after a
// partial Apply.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		start := time.Now()
		s.closeErr = s.teardown()
		s.timed("teardown", start)
	})
	return s.closeErr
}

func (s *Sandbox) teardown() error {
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	var errs joinedErrs
	s.mu.Lock()
	ns, up, eg, rootfsCleanup := s.ns, s.up, s.eg, s.rootfsCleanup
	s.mu.Unlock()
	// A container whose process 1 Run reaped has no process left: its
	// removal (the runtime's record and cgroup) neither waits for nor
	// holds up any other step. Otherwise the namespace and the root wait
	// for it: nothing of the sandbox may run on once they go.
	exited, containerGone := s.exited.Load(), make(chan struct{})
	if exited {
		close(containerGone)
	}
	errs.parallel(
		func() error {
			err := s.step("runtime.delete", func() error { return s.deleteContainer(ctx) })()
			if !exited {
				close(containerGone)
			}
			return err
		},
		func() error {
			var errs joinedErrs
			errs.add(s.step("egressd.stop", func() error { return s.stopEgressd(eg) })())
			<-containerGone
			// Nothing of the sandbox runs any more: its namespace goes,
			// and the veth pair with it (removeUplink), then the uplink's
			// chains.
			nsGone := false
			if ns.Path != "" {
				err := s.step("netns.remove", func() error { return s.k.Netns.Remove(ns) })()
				errs.add(err)
				nsGone = err == nil && ns.Ino != 0
			}
			if up != nil {
				errs.add(s.step("uplink.remove", func() error { return s.removeUplink(ctx, up, nsGone) })())
			}
			return errs.join()
		},
		func() error {
			<-containerGone
			if rootfsCleanup != nil {
				return s.step("rootfs.remove", rootfsCleanup)()
			}
			return nil
		},
	)
	if s.dir != "" {
		errs.add(s.step("statedir.remove", s.removeStateDir)())
	}
	if s.lock != nil {
		s.lock.Close()
	}
	return errs.join()
}

// deleteContainer has the runtime delete the container, if it may know it
// (a container created and never started is destroyed: its process killed
// and reaped too).
func (s *Sandbox) deleteContainer(ctx context.Context) error {
	s.mu.Lock()
	c := s.created
	s.created = nil
	s.mu.Unlock()
	if c != nil {
		if err := c.Destroy(ctx); err != nil {
			return fmt.Errorf("deleting container %s: %w", s.id, err)
		}
		return nil
	}
	if !s.container.Load() || s.rt == nil {
		return nil
	}
	if err := s.k.Runtime.Delete(ctx, s.rt, s.id); err != nil {
		return fmt.Errorf("deleting container %s: %w", s.id, err)
	}
	return nil
}

// stopEgressd stops egressd, if it was started, and removes its binary's
// mount.
func (s *Sandbox) stopEgressd(eg EgressdProcess) error {
	var err error
	if eg != nil {
		close(s.egStopping)
		err = eg.Stop()
	}
	if s.dir != "" {
		err = errors.Join(err, unmountAndRemove(s.k.FS, filepath.Join(s.dir, "egressd", binaryName)))
	}
	return err
}

// removeStateDir releases the protected paths' placeholders on the host
// (this sandbox is no longer a user of them; for a reaped one, its record
// says which directories it protected), undoes what a reaped sandbox may
// still have mounted (a live one's cleanups did it already: no-ops then),
// and removes the state directory.
func (s *Sandbox) removeStateDir() error {
	var errs []error
	stateRoot := s.cfg.StateDir
	if stateRoot == "" {
		stateRoot = filepath.Dir(s.dir)
	}
	errs = append(errs, releasePlaceholders(stateRoot, s.dir))
	views, _ := os.ReadDir(filepath.Join(s.dir, "view"))
	for _, v := range views {
		errs = append(errs, unmountAndRemove(s.k.FS, filepath.Join(s.dir, "view", v.Name())))
	}
	for _, m := range []string{"view", "rootfs", "upper-tmpfs", filepath.Join("egressd", binaryName)} {
		errs = append(errs, unmountAndRemove(s.k.FS, filepath.Join(s.dir, m)))
	}
	errs = append(errs, removeTree(s.dir))
	return errors.Join(errs...)
}

// joinedErrs collects errors from goroutines.
type joinedErrs struct {
	mu   sync.Mutex
	errs []error
}

func (j *joinedErrs) add(err error) {
	if err != nil {
		j.mu.Lock()
		j.errs = append(j.errs, err)
		j.mu.Unlock()
	}
}

// parallel runs fns at once and adds their errors.
func (j *joinedErrs) parallel(fns ...func() error) {
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Add(1)
		go func() { defer wg.Done(); j.add(fn()) }()
	}
	wg.Wait()
}

func (j *joinedErrs) join() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return errors.Join(j.errs...)
}

// removeTree removes dir and everything below it, refusing to descend into
// or remove a mount point (an entry on another device): a state directory
// with something still mounted in it is reported, never emptied through
// the mount.
func removeTree(dir string) error {
	var root unix.Stat_t
	if err := unix.Lstat(dir, &root); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	var walk func(p string) error
	walk = func(p string) error {
		ents, err := os.ReadDir(p)
		if err != nil {
			return fmt.Errorf("removing %s: %w", p, err)
		}
		var errs []error
		for _, e := range ents {
			c := filepath.Join(p, e.Name())
			var st unix.Stat_t
			if err := unix.Lstat(c, &st); err != nil {
				continue
			}
			if st.Dev != root.Dev {
				errs = append(errs, fmt.Errorf("not removing %s: something is mounted there", c))
				continue
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				if err := walk(c); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			if err := os.Remove(c); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("removing %s: %w", c, err))
			}
		}
		return errors.Join(errs...)
	}
	if err := walk(dir); err != nil {
		return err
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}

// UpstreamDNS returns the resolvers a filtered sandbox's egressd forwards
// to: the profile's network.upstream_dns, or else the nameservers of
// resolvConf ("" means /etc/resolv.conf). They are reached from inside the
// sandbox's namespace, through its IPv4 uplink, so a loopback address (a
// local stub such as systemd-resolved's 127.0.0.53) and an IPv6 address
// cannot work; given explicitly they are an error, read from resolv.conf
// they are skipped, and an error names them when nothing else is left.
func UpstreamDNS(p *policy.Profile, resolvConf string) ([]netip.AddrPort, error) {
	if len(p.Network.UpstreamDNS) > 0 {
		for _, u := range p.Network.UpstreamDNS {
			if err := checkUpstream(u.Addr()); err != nil {
				return nil, fmt.Errorf("network.upstream_dns %s (%s): %w", u, p.SourceOf("network.upstream_dns"), err)
			}
		}
		return slices.Clone(p.Network.UpstreamDNS), nil
	}
	if resolvConf == "" {
		resolvConf = "/etc/resolv.conf"
	}
	data, err := os.ReadFile(resolvConf)
	if err != nil {
		return nil, fmt.Errorf("no upstream DNS given (--upstream-dns) and %s is unreadable: %w", resolvConf, err)
	}
	var out []netip.AddrPort
	var skipped []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		a = a.Unmap()
		if err := checkUpstream(a); err != nil {
			skipped = append(skipped, a.String())
			continue
		}
		out = append(out, netip.AddrPortFrom(a, 53))
	}
	if len(out) == 0 {
		if len(skipped) > 0 {
			return nil, fmt.Errorf("no usable upstream DNS: %s lists only %s, which the sandbox's namespace cannot reach "+
				"(loopback or IPv6); give --upstream-dns IP (for systemd-resolved, a DNS server from `resolvectl status`)",
				resolvConf, strings.Join(skipped, ", "))
		}
		return nil, fmt.Errorf("no upstream DNS given (--upstream-dns) and %s lists no nameserver", resolvConf)
	}
	return out, nil
}

func checkUpstream(a netip.Addr) error {
	a = a.Unmap()
	switch {
	case a.IsLoopback():
		return errors.New("a loopback resolver is the launcher's own and cannot be reached from the sandbox's namespace; give the address of a resolver on the network")
	case !a.Is4():
		return errors.New("the sandbox's uplink is IPv4 only; give an IPv4 resolver")
	case a.IsUnspecified() || a.IsMulticast():
		return errors.New("not a resolver address")
	}
	return nil
}

// validID reports whether id looks like a sandbox id.
func validID(id string) bool {
	hexPart, ok := strings.CutPrefix(id, IDPrefix)
	if !ok || len(hexPart) != 8 {
		return false
	}
	_, err := hex.DecodeString(hexPart)
	return err == nil
}

// isCleanAbs reports whether p is an absolute, clean path without NUL.
func isCleanAbs(p string) bool {
	return p != "" && filepath.IsAbs(p) && filepath.Clean(p) == p && !strings.ContainsRune(p, 0)
}
