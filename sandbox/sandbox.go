package sandbox

import (
	"context"
	"crypto/rand"
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

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/pid1"
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
const MinPidsLimit = 2 * pid1.Tasks

// ExitTimeout is the exit code of a command killed by its timeout.
const ExitTimeout = 124

// Secret is a value given to the sandbox as an environment variable and
// masked (SecretMask) wherever it appears in the command's output.
type Secret struct{ Name, Value string }

// Config is one launch. The profile is resolved (policy.Resolve, floor
// included) by the caller; Create enforces it.
type Config struct {
	// Profile is the resolved profile. Required.
	Profile *policy.Profile
	// Args is the command and its arguments. Required.
	Args []string

	// Rootfs is an image directory the container's root is built on; ""
	// (or "/") means the host view: the host's system directories (see
	// PlanView, PrepareRootfs).
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
}

// Timing is how long one phase of a sandbox's life took.
type Timing struct {
	Phase    string
	Duration time.Duration
}

// Sandbox is one sandbox: made by Create, run by Run, removed by Close.
type Sandbox struct {
	cfg  Config
	id   string
	dir  string
	mode policy.Mode
	lock *os.File

	ns   *netNS
	up   *uplink
	eg   *egressdProc
	sink *auditSink
	fw   firewall.Config

	rt            *Runtime
	bundle        string
	container     atomic.Bool      // the runtime may know the container
	exited        atomic.Bool      // Run reaped the container's process 1
	ctr           *Container       // the started container (mu)
	pending       []syscall.Signal // sent before ctr was known (mu)
	rootfsCleanup func() error
	secrets       []string
	inspect       *inspectPlan

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
func OfLauncher(pid int) (id string, ok bool) {
	ents, _ := os.ReadDir(DefaultStateDir)
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(DefaultStateDir, e.Name(), "state.json"))
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
	if s.ns == nil {
		return ""
	}
	return s.ns.path
}

// EgressdPID returns egressd's pid, or 0 when the sandbox has none.
func (s *Sandbox) EgressdPID() int {
	if s.eg == nil {
		return 0
	}
	return s.eg.pid
}

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
// phases (firewall, uplink, egressd, container) overlap; "setup" is their
// wall time.
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
	if s.cfg.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.cfg.Logger
}

func (cfg Config) hostRoot() string {
	if cfg.HostRoot == "" {
		return "/"
	}
	return cfg.HostRoot
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
	return cfg, nil
}

// Create makes the sandbox for cfg, ready to Run:
//
//	filtered: namespace (lo) ─┬─ firewall.Install (filtered)       ─┐
//	                          ├─ uplink: veth /30, route, NAT        ├─ ready
//	                          ├─ egressd serve (netns, ready-fd)     │
//	                          └─ rootfs overlay, spec, bundle       ─┘
//	none:     namespace (lo) ─┬─ firewall.Install (none)
//	                          └─ rootfs overlay, spec, bundle
//	host:     rootfs overlay, spec, bundle (no namespace: the host's network)
//
// The four branches run at once; none of them starts a workload, and the
// container starts (Run) only after all of them succeeded, so no sandbox
// process ever runs without its firewall. On any error everything made so
// far is removed and the error says which step failed.
func Create(ctx context.Context, cfg Config) (s *Sandbox, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("creating the sandbox: %w", err)
	}
	s = &Sandbox{cfg: cfg, mode: cfg.Profile.Network.Mode, rt: cfg.Runtime}
	for _, sec := range cfg.Secrets {
		s.secrets = append(s.secrets, sec.Value)
	}
	defer func() {
		if err != nil {
			if cerr := s.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
			}
			s = nil
		}
	}()
	if s.rt == nil {
		if s.rt, err = NewRuntime("", ""); err != nil {
			return s, err
		}
	}
	start := time.Now()
	if s.inspect, err = planInspection(cfg); err != nil {
		return s, err
	}
	if err := s.makeStateDir(); err != nil {
		return s, err
	}
	if err := s.inspect.makeCA(s.id); err != nil {
		return s, err
	}
	var upstream []netip.AddrPort
	if s.mode.Proxied() {
		if upstream, err = UpstreamDNS(cfg.Profile, cfg.ResolvConf); err != nil {
			return s, err
		}
	}
	if s.mode != policy.ModeHost {
		t := time.Now()
		if s.ns, err = createNetNS(s.id); err != nil {
			return s, err
		}
		s.timed("netns", t)
	}

	setup := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	step := func(i int, name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.Now()
			errs[i] = fn()
			s.timed(name, t)
		}()
	}
	switch s.mode {
	case policy.ModeFiltered, policy.ModeReport:
		s.fw = firewall.Config{
			Mode:              policy.ModeFiltered,
			DNSPort:           EgressdDNSPort,
			TransparentPort:   EgressdTransparentPort,
			ExplicitProxyPort: EgressdProxyPort,
			Mark:              cfg.Mark,
			UpstreamDNSPorts:  upstreamPorts(upstream),
		}
		step(0, "firewall", func() error { return s.installFirewall(ctx) })
		s.up = newUplink(s.id)
		step(1, "uplink", func() error { return s.up.setup(ctx, s.ns, cfg.Subnet, cfg.StateDir) })
		step(2, "egressd", func() error { return s.startEgressd(ctx, upstream) })
	case policy.ModeNone:
		s.fw = firewall.Config{Mode: policy.ModeNone}
		step(0, "firewall", func() error { return s.installFirewall(ctx) })
	}
	step(3, "container", func() error { return s.prepareContainer(ctx) })
	wg.Wait()
	s.timed("setup", setup)
	if err := errors.Join(errs...); err != nil {
		return s, err
	}
	if err := ctx.Err(); err != nil {
		return s, err
	}
	s.timed("create", start)
	return s, nil
}

// installFirewall installs the sandbox's firewall: by default the
// fresh-namespace batch (firewall.InstallFresh), or firewall.Install with
// EGRESSD_LAUNCHER_FIREWALL=install.
func (s *Sandbox) installFirewall(ctx context.Context) error {
	if os.Getenv("EGRESSD_LAUNCHER_FIREWALL") == "install" {
		return firewall.Install(ctx, s.ns.path, s.fw)
	}
	return firewall.InstallFresh(ctx, s.ns.path, s.fw)
}

// newID returns a fresh sandbox id.
func newID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return IDPrefix + hex.EncodeToString(b[:])
}

// makeStateDir creates, locks and records the sandbox's state directory
// under a fresh id. The directory is made as ".new-ID" and renamed once
// its lock is held, so Reap never mistakes a directory being born for one
// whose launcher died.
func (s *Sandbox) makeStateDir() error {
	root := s.cfg.StateDir
	if err := os.MkdirAll(root, 0o711); err != nil {
		return fmt.Errorf("creating %s: %w", root, err)
	}
	for range 8 {
		id := newID()
		tmp := filepath.Join(root, ".new-"+id)
		dir := filepath.Join(root, id)
		if err := os.Mkdir(tmp, 0o711); err != nil {
			if errors.Is(err, os.ErrExist) {
				continue
			}
			return fmt.Errorf("creating the sandbox's state directory: %w", err)
		}
		lock, err := os.OpenFile(filepath.Join(tmp, "lock"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			err = unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		}
		if err != nil {
			if lock != nil {
				lock.Close()
			}
			_ = removeTree(tmp)
			return fmt.Errorf("locking the sandbox's state directory: %w", err)
		}
		if _, err := os.Lstat(filepath.Join(NetnsDir, id)); err == nil {
			lock.Close()
			_ = removeTree(tmp)
			continue // a namespace by that name exists: pick another id
		}
		if err := os.Rename(tmp, dir); err != nil {
			lock.Close()
			_ = removeTree(tmp)
			if errors.Is(err, os.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
				continue
			}
			return fmt.Errorf("creating the sandbox's state directory: %w", err)
		}
		s.id, s.dir, s.lock = id, dir, lock
		rec := stateRecord{ID: id, Mode: s.mode, LauncherPID: os.Getpid(), LauncherNetNS: selfNetNS(),
			Runtime: s.rt.Path, RuntimeRoot: s.rt.Root, Created: time.Now().UTC()}
		data, _ := json.MarshalIndent(rec, "", "  ")
		if err := os.WriteFile(filepath.Join(dir, "state.json"), append(data, '\n'), 0o600); err != nil {
			return fmt.Errorf("writing the sandbox's state record: %w", err)
		}
		return nil
	}
	return errors.New("could not find a free sandbox id")
}

// selfNetNS identifies the calling thread's network namespace as "dev:ino".
func selfNetNS() string {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return ""
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// startEgressd writes egressd's private directory and starts it.
func (s *Sandbox) startEgressd(ctx context.Context, upstream []netip.AddrPort) error {
	cfg := s.cfg
	dir := filepath.Join(s.dir, "egressd")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("egressd's directory: %w", err)
	}
	if err := os.Chown(dir, int(cfg.EgressdUID), int(cfg.EgressdGID)); err != nil {
		return fmt.Errorf("egressd's directory: %w", err)
	}
	if err := writeEgressdPolicy(cfg.Profile, filepath.Join(dir, policyFile), cfg.EgressdUID, cfg.EgressdGID); err != nil {
		return err
	}
	if err := s.inspect.writeEgressdFiles(dir, cfg.EgressdUID, cfg.EgressdGID, cfg.InspectUpstreamCA); err != nil {
		return err
	}
	s.sink = newAuditSink(cfg.AuditLog, NewLineMasker(s.secrets), cfg.OnDenial)
	e, err := startEgressd(ctx, s.ns, egressdSpec{
		binary: cfg.EgressdPath, dir: dir, uid: cfg.EgressdUID, gid: cfg.EgressdGID, mark: cfg.Mark,
		upstream: upstream, sandboxID: s.id, timeout: cfg.ReadyTimeout, sink: s.sink,
		extra: s.inspect.egressdArgs(dir, cfg.InspectUpstreamCA),
	})
	s.eg = e
	if err != nil {
		return err
	}
	go func() {
		select {
		case <-e.done:
			select {
			case <-e.stopped:
			default:
				s.egressdGone.Store(true)
				s.log().Warn(fmt.Sprintf("egressd (pid %d) exited during the run (%v); the sandbox has no network egress from now on (fail closed)", e.pid, e.waitErr))
			}
		case <-e.stopped:
		}
	}()
	return nil
}

// containerPlan is what the container is built from, shared by Create and
// Explain: everything the launch will make, decided before anything is
// made.
type containerPlan struct {
	spec *specs.Spec
	// secretNames are the environment variables holding secrets.
	secretNames []string
	// view is what of the host the sandbox sees; rootfs is the root
	// PrepareRootfs will make of it.
	view   *View
	rootfs string
	// user is who the command runs as.
	user User
	// protected are the mounts keeping the protected paths of the
	// workspace and the writable volumes.
	protected []ProtectedPath
	// passwd and group are the sandbox's generated /etc/passwd and
	// /etc/group; etcDir is where they (and resolv.conf and hosts) go.
	passwd, group []byte
	etcDir        string
	// warnings are what the launch should tell the operator.
	warnings []string
	// trustBundle is the sandbox's CA bundle when it inspects HTTPS (its
	// root's system bundle and the sandbox's CA), written to
	// etcDir/ca-certificates.crt; nil otherwise.
	trustBundle []byte
}

// rootfsDir is where PrepareRootfs makes the root of v in stateDir, and
// overlayDir the throwaway overlay of the writable system directory at
// path.
func rootfsDir(v *View, stateDir string) string {
	if v.Image != "" {
		return filepath.Join(stateDir, "rootfs")
	}
	return filepath.Join(stateDir, "upper-tmpfs", "root")
}

func overlayDir(stateDir, path string) string {
	return filepath.Join(stateDir, "view", strings.TrimPrefix(path, "/"))
}

// planContainer plans the container of sandbox id, whose state directory
// is dir and network namespace netnsPath (see PrepareContainer): the view,
// the user (checked against the host's accounts), the protected paths, the
// environment, the trust bundle when it inspects (ins) and the spec. It
// reads the host and changes nothing.
func planContainer(cfg Config, ins *inspectPlan, id, dir, netnsPath string) (*containerPlan, error) {
	p := cfg.Profile
	if n := p.Process.PidsLimit; cfg.Init != "" && n > 0 && n < MinPidsLimit {
		return nil, fmt.Errorf("process.pids_limit %d (%s) is too low: the sandbox's init takes up to %d tasks itself (its threads count); "+
			"give at least %d, or 0 for no limit", n, p.SourceOf("process.pids_limit"), pid1.Tasks, MinPidsLimit)
	}
	image := ""
	if cfg.Rootfs != "/" {
		image = cfg.Rootfs
	}
	// The user first, from the view's /etc (expose and volumes cannot
	// change it), for the home that "~/" volumes go under.
	sys, err := planSystemView(cfg.HostRoot, image, p, false)
	if err != nil {
		return nil, err
	}
	user, err := ResolveUser(sys.Tree(), p.Process.User)
	if err != nil {
		return nil, err
	}
	host, err := readAccounts(cfg.hostRoot())
	if err != nil {
		return nil, err
	}
	if err := checkHostIdentity(user, host, p.Process.AllowHostUser, p.SourceOf("process.user").String()); err != nil {
		return nil, err
	}
	if p.Network.Mode.Proxied() && (user.UID == cfg.EgressdUID || user.GID == cfg.EgressdGID) {
		return nil, fmt.Errorf("process.user %s (%s) shares egressd's uid or gid %d:%d; the sandbox must not be able to act as egressd",
			p.Process.User, p.SourceOf("process.user"), cfg.EgressdUID, cfg.EgressdGID)
	}
	workspace := p.Filesystem.Workspace
	if workspace == "" {
		workspace = "/sandbox"
	}
	vo := ViewOptions{HostRoot: cfg.HostRoot, Image: image, Home: user.Home, Workspace: workspace,
		WorkspaceDir: cfg.WorkspaceDir, StateDir: cfg.StateDir, Homes: host.homes,
		SystemWritable: !p.Filesystem.ReadOnly && (user.UID == 0 || host.isAccount(user.UID) || p.Process.AllowHostUser)}
	if cfg.WorkspaceDir != "" {
		// Bound (and protected) where its links lead, the path checked.
		what := fmt.Sprintf("the workspace (filesystem.mount_cwd, %s)", p.SourceOf("filesystem.mount_cwd"))
		if cfg.WorkspaceDir, err = checkHostPath(cfg.WorkspaceDir, what, vo); err != nil {
			return nil, err
		}
		vo.WorkspaceDir = cfg.WorkspaceDir
	}
	view, err := PlanView(p, vo)
	if err != nil {
		return nil, err
	}
	tree := view.Tree()
	plan := &containerPlan{view: view, rootfs: rootfsDir(view, dir), user: user, etcDir: filepath.Join(dir, "etc")}

	var extra []string
	for _, sec := range cfg.Secrets {
		extra = append(extra, sec.Name+"="+ins.env(sec)) // a credential's secret stays with egressd
		plan.secretNames = append(plan.secretNames, sec.Name)
	}
	proxyURL := ""
	if p.Network.Mode.Proxied() {
		proxyURL = fmt.Sprintf("http://127.0.0.1:%d", EgressdProxyPort)
	}
	env, err := BuildEnv(p, user.Home, SandboxPath(user.Home, tree), cfg.CallerEnv, extra, proxyURL)
	if err != nil {
		return nil, err
	}
	env = ins.applyEnv(env)
	pathEnv := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathEnv = v
		}
	}
	masks, err := BlockedPaths(tree, p.Commands.Block, pathEnv)
	if err != nil {
		return nil, err
	}
	args, err := CheckCommand(p, tree, user, cfg.Args, env)
	if err != nil {
		return nil, err
	}
	if err := findExecutable(p, tree, user, args[0], pathEnv); err != nil {
		return nil, err
	}

	// The host directories the sandbox may write: the workspace and the
	// writable volumes. Each must be writable by the sandbox user, and
	// keeps its protected paths.
	protect := p.Filesystem.EffectiveProtect()
	type writableDir struct{ host, path, what string }
	var writableDirs []writableDir
	if cfg.WorkspaceDir != "" {
		writableDirs = append(writableDirs, writableDir{cfg.WorkspaceDir, workspace,
			fmt.Sprintf("the workspace %s (filesystem.mount_cwd, %s)", cfg.WorkspaceDir, p.SourceOf("filesystem.mount_cwd"))})
	}
	for _, m := range view.Mounts {
		if m.Kind == MountVolume && m.Writable {
			writableDirs = append(writableDirs, writableDir{m.Source, m.Path, m.Origin})
		}
	}
	for _, w := range writableDirs {
		fi, err := os.Stat(w.host)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.what, err)
		}
		if !fi.IsDir() {
			continue
		}
		if err := checkWritable(w.host, user); err != nil {
			return nil, fmt.Errorf("%s is not writable by the sandbox user %d:%d (%v); give that user write access "+
				"(setfacl -m u:%d:rwx %s), or run as the directory's owner with --user UID:GID --allow-host-user",
				w.what, user.UID, user.GID, err, user.UID, w.host)
		}
		if user.UID == 0 {
			plan.warnings = append(plan.warnings, fmt.Sprintf("the command runs as root with %s: what it creates there is owned by root on the host", w.what))
		}
		pps, err := PlanProtect(w.host, w.path, protect, user.UID != 0 && !host.isAccount(user.UID))
		if err != nil {
			return nil, err
		}
		plan.protected = append(plan.protected, pps...)
	}

	binds := slices.Clone(view.Mounts)
	for i, b := range binds {
		if b.Kind == MountSystem && b.Writable {
			binds[i].Source = overlayDir(dir, b.Path)
		}
	}
	plan.passwd, plan.group, err = identityFiles(tree, user, image == "")
	if err != nil {
		return nil, err
	}
	opts := SpecOptions{
		Args: args, Env: env, Cwd: cfg.Workdir, Hostname: cfg.Hostname,
		RootfsDir: plan.rootfs, WorkspaceDir: cfg.WorkspaceDir, NetNSPath: netnsPath,
		MaskPaths: masks, User: user, CgroupsPath: id,
		Binds: binds, Protected: plan.protected, HiddenPaths: view.Hidden,
		Passwd: filepath.Join(plan.etcDir, "passwd"), Group: filepath.Join(plan.etcDir, "group"),
		Init: cfg.Init, Terminal: cfg.Terminal,
	}
	if p.Network.Mode != policy.ModeHost {
		// The sandbox's only resolver is on loopback: the firewall
		// redirects port 53 of any address to egressd (filtered), and
		// nothing answers there in mode none (lookups fail at once).
		opts.ResolvConf, opts.Hosts = filepath.Join(plan.etcDir, "resolv.conf"), filepath.Join(plan.etcDir, "hosts")
	}
	if ins.inspects {
		if plan.trustBundle, err = ins.trustBundle(tree, id); err != nil {
			return nil, err
		}
		opts.TrustBundle, opts.TrustPaths = filepath.Join(plan.etcDir, "ca-certificates.crt"), trustPaths(tree)
	}
	plan.spec, err = BuildSpec(p, opts)
	if err != nil {
		return nil, err
	}
	return plan, nil
}

// findExecutable checks that argv0 names an executable file in the root
// file system the way exec would find it (a name in PATH, or a path), so a
// typo fails the launch with a clear error instead of the runtime's. A path
// the sandbox mounts over (the workspace, /tmp, ...) or a relative path
// cannot be checked beforehand and is left to exec.
func findExecutable(p *policy.Profile, t Tree, user User, argv0, pathEnv string) error {
	var candidates []string
	switch {
	case strings.HasPrefix(argv0, "/"):
		for _, sh := range shadowedPaths(p, user) {
			if argv0 == sh || strings.HasPrefix(argv0, sh+"/") {
				return nil
			}
		}
		candidates = []string{argv0}
	case strings.Contains(argv0, "/"):
		return nil
	default:
		for _, d := range searchDirs(pathEnv, false) {
			candidates = append(candidates, d+"/"+argv0)
		}
	}
	for _, c := range candidates {
		f, ok, err := t.stat(c)
		if err != nil {
			return fmt.Errorf("looking up the command: %w", err)
		}
		if ok && f.mode&0o111 != 0 {
			return nil
		}
	}
	if strings.HasPrefix(argv0, "/") {
		return fmt.Errorf("command %q not found in the sandbox's root file system (or not executable)", argv0)
	}
	return fmt.Errorf("command %q not found in the sandbox's PATH (%s)", argv0, pathEnv)
}

// prepareContainer makes the sandbox's container (PrepareContainer).
func (s *Sandbox) prepareContainer(ctx context.Context) error {
	netnsPath := ""
	if s.mode != policy.ModeHost {
		netnsPath = filepath.Join(NetnsDir, s.id)
	}
	c, err := prepareContainer(ctx, s.cfg, s.inspect, s.id, s.dir, netnsPath)
	if c != nil {
		s.rootfsCleanup = c.Cleanup
	}
	if err != nil {
		return err
	}
	for _, w := range c.Warnings {
		s.log().Warn(w)
	}
	s.bundle = c.Bundle
	return nil
}

// Prepared is a container PrepareContainer made, ready for the runtime.
type Prepared struct {
	// Bundle is the OCI bundle directory.
	Bundle string
	// Warnings are what the launch should tell the operator.
	Warnings []string
	// Cleanup removes what PrepareContainer made: the root file system and
	// the protected paths' placeholders. It may be called more than once.
	Cleanup func() error
}

// PrepareContainer plans the container of cfg (id, state directory dir,
// network namespace netnsPath: "" gives mode none a fresh one and is
// required for mode host), then makes what the plan says: the root file
// system (PrepareRootfs), the protected paths' placeholders, the generated
// /etc files and the bundle. On error the Container it returns, if any,
// still needs its Cleanup.
func PrepareContainer(ctx context.Context, cfg Config, id, dir, netnsPath string) (*Prepared, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ins, err := planInspection(cfg)
	if err != nil {
		return nil, err
	}
	if err := ins.makeCA(id); err != nil {
		return nil, err
	}
	return prepareContainer(ctx, cfg, ins, id, dir, netnsPath)
}

// prepareContainer is PrepareContainer with the launch's inspection plan
// (its CA made), for a cfg that has its defaults.
func prepareContainer(ctx context.Context, cfg Config, ins *inspectPlan, id, dir, netnsPath string) (*Prepared, error) {
	// Sandboxes sharing a workspace share its placeholders: one that ends
	// between this plan and its registration may remove a placeholder the
	// plan counted on. The plan is then made again, from what is there.
	for attempt := 1; ; attempt++ {
		c, err := prepareContainerOnce(ctx, cfg, ins, id, dir, netnsPath)
		if c == nil || !errors.Is(err, errProtectedChanged) || attempt == 5 {
			return c, err
		}
		if err := c.Cleanup(); err != nil {
			return c, err
		}
	}
}

func prepareContainerOnce(ctx context.Context, cfg Config, ins *inspectPlan, id, dir, netnsPath string) (*Prepared, error) {
	plan, err := planContainer(cfg, ins, id, dir, netnsPath)
	if err != nil {
		return nil, err
	}
	if cfg.Init != "" {
		u := plan.spec.Process.User
		if err := CheckInit(cfg.Init, u.UID, u.GID, u.AdditionalGids); err != nil {
			return nil, err
		}
	}
	rootfs, err := PrepareRootfs(ctx, plan.view, dir, !cfg.Profile.Filesystem.ReadOnly)
	if err != nil {
		return nil, err
	}
	c := &Prepared{Warnings: plan.warnings, Cleanup: func() error {
		return errors.Join(rootfs.Cleanup(), releasePlaceholders(cfg.StateDir, dir))
	}}
	if rootfs.Dir != plan.rootfs {
		return c, fmt.Errorf("preparing rootfs: made %s, planned %s", rootfs.Dir, plan.rootfs)
	}
	for path, d := range rootfs.Overlays {
		if d != overlayDir(dir, path) {
			return c, fmt.Errorf("preparing rootfs: overlay of %s at %s, planned at %s", path, d, overlayDir(dir, path))
		}
	}
	if err := acquirePlaceholders(cfg.StateDir, dir, plan.protected); err != nil {
		return c, err
	}
	if err := os.MkdirAll(plan.etcDir, 0o755); err != nil {
		return c, err
	}
	if cfg.Profile.Network.Mode != policy.ModeHost {
		if _, _, err := WriteEtcFiles(plan.etcDir, netip.MustParseAddr("127.0.0.1"), cfg.Hostname); err != nil {
			return c, err
		}
	}
	files := map[string][]byte{"passwd": plan.passwd, "group": plan.group}
	if plan.trustBundle != nil {
		files["ca-certificates.crt"] = plan.trustBundle
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(plan.etcDir, name), data, 0o644); err != nil {
			return c, fmt.Errorf("writing the sandbox's %s: %w", name, err)
		}
	}
	c.Bundle = filepath.Join(dir, "bundle")
	return c, WriteBundle(c.Bundle, plan.spec)
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
	start := time.Now()
	s.container.Store(true)
	c, err := s.rt.Start(runCtx, s.id, s.bundle, stdio)
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
	s.timed("run", start)
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

// containerGone reports whether runc (with its default state directory)
// certainly has no record of the container: it removes one that ran to its
// end itself, and its state lives in /run/runc/ID. For another runtime or
// state directory it reports false, and Close runs the runtime's delete.
func (s *Sandbox) containerGone() bool {
	if s.rt.Name != "runc" || s.rt.Root != "" {
		return false
	}
	_, err := os.Lstat(filepath.Join("/run/runc", s.id))
	return errors.Is(err, os.ErrNotExist)
}

// teardownTimeout bounds Close's runtime and iptables commands.
const teardownTimeout = 30 * time.Second

// Close removes everything the sandbox made, in this order:
//
//  1. at once: the container (runc delete --force: every process in it is
//     killed; when Run saw its process 1 end, its removal runs beside all
//     the steps below instead), egressd (SIGTERM, SIGKILL after 2 s), the
//     veth pair (the sandbox's only way out) and the uplink's NAT and
//     FORWARD chains;
//  2. the network namespace: any process still in it is killed by pid,
//     then its bind mount is removed and the kernel frees it with its
//     firewall rules (there is nothing to flush first: the rules live and
//     die with the namespace, and flushing them while anything could still
//     run inside would only open a window);
//  3. the rootfs overlay and its tmpfs, egressd's binary mount;
//  4. the state directory (never crossing a mount point), and the lock.
//
// Every step runs even when an earlier one fails; the errors are joined.
// Close is idempotent, and safe after a partial Create.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() {
		start := time.Now()
		s.closeErr = s.teardown()
		s.timed("teardown", start)
	})
	return s.closeErr
}

func (s *Sandbox) teardown() error {
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	add := func(err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}
	parallel := func(fns ...func() error) {
		for _, fn := range fns {
			wg.Add(1)
			go func() { defer wg.Done(); add(fn()) }()
		}
		wg.Wait()
	}
	deleteContainer := func() error {
		if s.container.Load() && s.rt != nil && !s.containerGone() {
			if err := s.rt.Delete(ctx, s.id); err != nil {
				return fmt.Errorf("deleting container %s: %w", s.id, err)
			}
		}
		return nil
	}
	// A container whose process 1 Run reaped has no process left: its
	// removal (the runtime's record and cgroup) neither waits for nor
	// holds up any other step, so it runs beside all of them. Otherwise
	// it goes first, with egressd and the uplink: nothing of the sandbox
	// may run on once its namespace and mounts go.
	var late sync.WaitGroup
	first := deleteContainer
	if s.exited.Load() {
		late.Add(1)
		go func() { defer late.Done(); add(deleteContainer()) }()
		first = func() error { return nil }
	}
	parallel(
		first,
		func() error { return s.eg.stop() },
		func() error {
			if s.up != nil {
				return s.up.remove(ctx)
			}
			return nil
		},
	)
	if s.ns != nil {
		add(s.ns.destroy())
	}
	if s.rootfsCleanup != nil {
		add(s.rootfsCleanup())
	}
	if s.dir != "" {
		// The protected paths' placeholders on the host: this sandbox is
		// no longer a user of them (for a reaped one, its record says
		// which directories it protected).
		stateRoot := s.cfg.StateDir
		if stateRoot == "" {
			stateRoot = filepath.Dir(s.dir)
		}
		add(releasePlaceholders(stateRoot, s.dir))
		// What a reaped sandbox may still have mounted (a live one's
		// cleanups did it already; these are no-ops then).
		views, _ := os.ReadDir(filepath.Join(s.dir, "view"))
		for _, v := range views {
			add(unmountAndRemove(filepath.Join(s.dir, "view", v.Name())))
		}
		for _, m := range []string{"view", "rootfs", "upper-tmpfs", filepath.Join("egressd", binaryName)} {
			add(unmountAndRemove(filepath.Join(s.dir, m)))
		}
		add(removeTree(s.dir))
	}
	late.Wait()
	if s.lock != nil {
		s.lock.Close()
	}
	return errors.Join(errs...)
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

func upstreamPorts(up []netip.AddrPort) []uint16 {
	var ports []uint16
	for _, u := range up {
		if !slices.Contains(ports, u.Port()) {
			ports = append(ports, u.Port())
		}
	}
	slices.Sort(ports)
	return ports
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

// newDirGrace is how old a ".new-ID" directory must be before Reap takes
// it for abandoned (its launcher died between making and locking it).
const newDirGrace = time.Minute

// Reap removes every sandbox under stateDir ("" means DefaultStateDir)
// whose launcher is gone: one whose state directory's lock nobody holds
// (a launcher holds it for the sandbox's whole life; the kernel drops it
// when the process dies, however it dies). Each is torn down the way Close
// does it: container deleted, every process in its namespace killed, veth
// and uplink chains removed (when they are in the caller's network
// namespace, where that launcher made them), mounts undone, directory
// removed. It returns the ids it removed. Sandboxes of running launchers
// are never touched.
func Reap(stateDir string) (reaped []string, err error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	ents, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reaping stale sandboxes: %w", err)
	}
	self := selfNetNS()
	var errs []error
	for _, e := range ents {
		name := e.Name()
		fresh := strings.HasPrefix(name, ".new-")
		id := strings.TrimPrefix(name, ".new-")
		if !e.IsDir() || !validID(id) {
			continue
		}
		dir := filepath.Join(stateDir, name)
		if fresh {
			if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < newDirGrace {
				continue
			}
		}
		lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR, 0)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			continue
		}
		if lock != nil {
			if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
				lock.Close()
				continue // its launcher is alive
			}
		} else if !fresh {
			continue // no lock at all: not ours to judge
		}
		s := &Sandbox{id: id, dir: dir, lock: lock}
		var rec stateRecord
		if data, err := os.ReadFile(filepath.Join(dir, "state.json")); err == nil && json.Unmarshal(data, &rec) == nil && rec.ID == id {
			if rec.Mode.Proxied() && rec.LauncherNetNS != "" && rec.LauncherNetNS != self {
				// Its uplink and NAT rules live in another network
				// namespace, which only a launcher there can remove:
				// leave the whole sandbox to it rather than half-reap it.
				if lock != nil {
					lock.Close()
				}
				continue
			}
			s.mode = rec.Mode
			if rec.Runtime != "" {
				s.rt = &Runtime{Name: filepath.Base(rec.Runtime), Path: rec.Runtime, Root: rec.RuntimeRoot}
				s.container.Store(true)
			}
			if rec.Mode != policy.ModeHost {
				s.ns = openNetNS(id)
			}
			if rec.Mode.Proxied() && rec.LauncherNetNS == self {
				s.up = newUplink(id)
			}
		}
		if err := s.Close(); err != nil {
			errs = append(errs, fmt.Errorf("reaping sandbox %s: %w", id, err))
		}
		reaped = append(reaped, id)
	}
	return reaped, errors.Join(errs...)
}

// explainID stands for the id a launch would get.
const explainID = IDPrefix + "00000000"

// Explanation is what a launch would set up, without setting anything up.
type Explanation struct {
	// Profile is every value of the resolved profile with its source.
	Profile []policy.Provenance `json:"profile"`
	// FirewallIPv4 and FirewallIPv6 are the sandbox namespace's rules, as
	// iptables-restore input; empty in host mode.
	FirewallIPv4 string `json:"firewall_ipv4,omitempty"`
	FirewallIPv6 string `json:"firewall_ipv6,omitempty"`
	// Uplink is the launcher-side NAT and FORWARD rules (filtered mode),
	// shown for the first /30 of the subnet (the one used is chosen at
	// launch).
	Uplink string `json:"uplink,omitempty"`
	// Egressd is egressd's command line (filtered mode).
	Egressd []string `json:"egressd,omitempty"`
	// View is what of the host the sandbox sees: the system directories
	// (or the image), exposed paths, volumes, and what is hidden.
	View *View `json:"view"`
	// User is who the command runs as.
	User User `json:"user"`
	// Protected are the mounts keeping the protected paths of the
	// workspace and the writable volumes; empty without either.
	Protected []ProtectedPath `json:"protected,omitempty"`
	// Warnings are what a launch would warn about.
	Warnings []string `json:"warnings,omitempty"`
	// Init is the sandbox's process 1 (Config.Init); nil without one.
	Init *InitExplanation `json:"init,omitempty"`
	// Spec is the OCI runtime spec. Environment values are shown as
	// "<redacted>", but for PATH, HOME and the proxy variables.
	Spec *specs.Spec `json:"spec"`
}

// InitExplanation is the init a launch runs as the sandbox's process 1.
type InitExplanation struct {
	// Path is where it runs inside the sandbox, Binary the host file
	// bound read-only there.
	Path   string `json:"path"`
	Binary string `json:"binary"`
	// Forwards are the signals it passes on to the command's process
	// group ("SIGINT", ...).
	Forwards []string `json:"forwards"`
}

// Explain returns what Create would set up for cfg, without running or
// mounting anything: the firewall rules, the uplink rules, egressd's
// command line, the view, the user, the protected paths and the
// container's spec (the same plan Create makes; paths name a placeholder
// sandbox id, egs-00000000).
func Explain(cfg Config) (*Explanation, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p := cfg.Profile
	ex := &Explanation{Profile: p.Explain()}
	dir := filepath.Join(cfg.StateDir, explainID)
	ins, err := planInspection(cfg)
	if err != nil {
		return nil, err
	}
	switch p.Network.Mode {
	case policy.ModeFiltered, policy.ModeReport:
		upstream, err := UpstreamDNS(p, cfg.ResolvConf)
		if err != nil {
			return nil, err
		}
		fw := firewall.Config{Mode: policy.ModeFiltered, DNSPort: EgressdDNSPort, TransparentPort: EgressdTransparentPort,
			ExplicitProxyPort: EgressdProxyPort, Mark: cfg.Mark, UpstreamDNSPorts: upstreamPorts(upstream)}
		v4, v6, err := firewall.Rules(fw)
		if err != nil {
			return nil, err
		}
		ex.FirewallIPv4, ex.FirewallIPv6 = string(v4), string(v6)
		u := newUplink(explainID)
		if u.prefix, err = pickPrefix(cfg.Subnet, nil, 0); err != nil {
			return nil, err
		}
		rules, err := firewall.UplinkRules(u.nat())
		if err != nil {
			return nil, err
		}
		ex.Uplink = string(rules)
		ex.Egressd = append([]string{"egressd"}, egressdArgs(egressdSpec{dir: filepath.Join(dir, "egressd"), mark: cfg.Mark,
			upstream: upstream, sandboxID: explainID, extra: ins.egressdArgs(filepath.Join(dir, "egressd"), cfg.InspectUpstreamCA)})...)
	case policy.ModeNone:
		v4, v6, err := firewall.Rules(firewall.Config{Mode: policy.ModeNone})
		if err != nil {
			return nil, err
		}
		ex.FirewallIPv4, ex.FirewallIPv6 = string(v4), string(v6)
	}
	netnsPath := ""
	if p.Network.Mode != policy.ModeHost {
		netnsPath = filepath.Join(NetnsDir, explainID)
	}
	plan, err := planContainer(cfg, ins, explainID, dir, netnsPath)
	if err != nil {
		return nil, err
	}
	ex.Spec, ex.View, ex.User, ex.Protected, ex.Warnings = plan.spec, plan.view, plan.user, plan.protected, plan.warnings
	if cfg.Init != "" {
		ex.Init = &InitExplanation{Path: pid1.Path, Binary: cfg.Init}
		for _, sig := range pid1.Forwarded {
			ex.Init.Forwards = append(ex.Init.Forwards, unix.SignalName(sig.(syscall.Signal)))
		}
	}
	shown := []string{"PATH", "HOME", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"}
	for i, e := range ex.Spec.Process.Env {
		if name, _, _ := strings.Cut(e, "="); !slices.Contains(shown, name) {
			ex.Spec.Process.Env[i] = name + "=<redacted>"
		}
	}
	return ex, nil
}
