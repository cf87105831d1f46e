package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/specconv"
)

// errIDTaken is Apply's answer when the plan's id is in use (another
// sandbox's state directory or namespace): Create plans again.
var errIDTaken = errors.New("the sandbox id is in use")

// Create plans the launch cfg describes (NewPlan) and applies the plan
// (Apply), planning again under a fresh id in the (unlikely) case the one
// drawn is in use.
func Create(ctx context.Context, cfg Config) (*Sandbox, error) {
	for range 8 {
		p, err := NewPlan(cfg)
		if errors.As(err, new(configError)) {
			return nil, fmt.Errorf("creating the sandbox: %w", err)
		}
		if err != nil {
			return nil, err
		}
		s, err := Apply(ctx, p)
		if errors.Is(err, errIDTaken) && cfg.ID == "" {
			continue
		}
		return s, err
	}
	return nil, errors.New("creating the sandbox: could not find a free sandbox id")
}

// Apply makes the sandbox p plans, on p's kernel (Config.Kernel), ready to
// Run:
//
//	filtered: state dir, namespace (lo) ─┬─ firewall (filtered)              ─┐
//	                                     ├─ uplink: veth /30, route, NAT      ├─ ready
//	                                     ├─ egressd serve (netns, ready-fd)   │
//	                                     └─ root, files, bundle; created     ─┘
//	none:     state dir, namespace (lo) ─┬─ firewall (none)
//	                                     └─ root, files, bundle; created
//	host:     state dir, root, files, bundle; created (the host's network)
//
// The branches run at once. The container's is the runtime's create with
// its mounts checked (createContainer): the container's process 1 then
// waits, and nothing of the command runs until Run starts it, after all
// the branches succeeded, so no sandbox process ever runs without its
// firewall. On any error everything made so far is removed (Close: a
// created container is destroyed) and the error says which step failed.
func Apply(ctx context.Context, p *Plan) (s *Sandbox, err error) {
	s = &Sandbox{plan: p, cfg: p.cfg, k: p.cfg.Kernel, mode: p.Mode, rt: p.Runtime, secrets: p.secrets, egStopping: make(chan struct{})}
	if s.k == nil {
		s.k = HostKernel()
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
	if err := s.claimStateDir(); err != nil {
		return s, err
	}
	if p.Netns != "" {
		t := time.Now()
		ns, err := s.k.Netns.Create(p.ID)
		if err != nil {
			return s, err
		}
		s.mu.Lock()
		s.ns = ns
		s.mu.Unlock()
		s.timed("netns", t)
	}
	setup := time.Now()
	var errs joinedErrs
	var steps []func() error
	if p.Firewall != nil {
		steps = append(steps, s.step("firewall", func() error { return s.installFirewall(ctx) }))
	}
	if p.Uplink != nil {
		steps = append(steps, s.step("uplink", func() error { return s.setupUplink(ctx) }))
	}
	if p.Egressd != nil {
		steps = append(steps, s.step("egressd", func() error { return s.startEgressd(ctx) }))
	}
	steps = append(steps, s.step("container", func() error { return s.prepareContainer(ctx, nil) }))
	errs.parallel(steps...)
	s.timed("setup", setup)
	if err := errs.join(); err != nil {
		return s, err
	}
	if err := ctx.Err(); err != nil {
		return s, err
	}
	s.timed("create", start)
	return s, nil
}

// step times fn as phase.
func (s *Sandbox) step(phase string, fn func() error) func() error {
	return func() error {
		t := time.Now()
		defer s.timed(phase, t)
		return fn()
	}
}

// installFirewall installs the sandbox's firewall: by default the
// fresh-namespace batch (firewall.InstallFresh), or firewall.Install with
// EGRESSD_LAUNCHER_FIREWALL=install.
func (s *Sandbox) installFirewall(ctx context.Context) error {
	if os.Getenv("EGRESSD_LAUNCHER_FIREWALL") == "install" {
		return s.k.Firewall.Install(ctx, s.plan.Netns, *s.plan.Firewall)
	}
	return s.k.Firewall.InstallFresh(ctx, s.plan.Netns, *s.plan.Firewall)
}

// claimStateDir creates, locks and records the sandbox's state directory
// for the plan's id. The directory is made as ".new-ID" and renamed once
// its lock is held, so Reap never mistakes a directory being born for one
// whose launcher died. An id whose directory or namespace exists is
// errIDTaken.
func (s *Sandbox) claimStateDir() error {
	p := s.plan
	if err := os.MkdirAll(p.StateRoot, 0o711); err != nil {
		return fmt.Errorf("creating %s: %w", p.StateRoot, err)
	}
	tmp := filepath.Join(p.StateRoot, ".new-"+p.ID)
	if err := os.Mkdir(tmp, 0o711); err != nil {
		if errors.Is(err, os.ErrExist) {
			return errIDTaken
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
	if s.k.Netns.Exists(p.ID) {
		lock.Close()
		_ = removeTree(tmp)
		return errIDTaken // a namespace by that name exists
	}
	if err := os.Rename(tmp, p.StateDir); err != nil {
		lock.Close()
		_ = removeTree(tmp)
		if errors.Is(err, os.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
			return errIDTaken
		}
		return fmt.Errorf("creating the sandbox's state directory: %w", err)
	}
	s.id, s.dir, s.lock = p.ID, p.StateDir, lock
	rec := stateRecord{ID: p.ID, Mode: p.Mode, LauncherPID: os.Getpid(), LauncherNetNS: selfNetNS(),
		Runtime: s.rt.Path, RuntimeRoot: s.rt.Root, Created: time.Now().UTC()}
	data, _ := json.MarshalIndent(rec, "", "  ")
	if err := os.WriteFile(filepath.Join(p.StateDir, "state.json"), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing the sandbox's state record: %w", err)
	}
	return nil
}

// startEgressd writes egressd's private directory (owned by its uid: the
// policy snapshot, the inspection files, its binary bound there) and
// starts it in the sandbox's namespace.
func (s *Sandbox) startEgressd(ctx context.Context) error {
	e := s.plan.Egressd
	if err := os.Mkdir(e.Dir, 0o700); err != nil {
		return fmt.Errorf("egressd's directory: %w", err)
	}
	if err := s.k.FS.Lchown(e.Dir, int(e.UID), int(e.GID)); err != nil {
		return fmt.Errorf("egressd's directory: %w", err)
	}
	files := append([]EgressdFile{{Name: policyFile, Data: e.Policy}}, e.Files...)
	for _, f := range files {
		if err := s.writeEgressdFile(f); err != nil {
			return err
		}
	}
	if err := bindFile(s.k.FS, e.Binary, filepath.Join(e.Dir, binaryName)); err != nil {
		return fmt.Errorf("egressd binary: %w", err)
	}
	s.sink = newAuditSink(s.cfg.AuditLog, NewLineMasker(s.secrets), s.cfg.OnDenial)
	proc, err := s.k.Egressd.Start(ctx, s.plan.Netns, e, s.sink.consume)
	if proc != nil {
		s.mu.Lock()
		s.eg = proc
		s.mu.Unlock()
		go s.watchEgressd(proc)
	}
	return err
}

// writeEgressdFile writes one file of egressd's directory, mode 0400,
// owned by its uid.
func (s *Sandbox) writeEgressdFile(f EgressdFile) error {
	e := s.plan.Egressd
	p := filepath.Join(e.Dir, f.Name)
	if err := os.WriteFile(p, f.Data, 0o400); err != nil {
		return fmt.Errorf("writing egressd's %s: %w", f.Name, err)
	}
	if err := s.k.FS.Lchown(p, int(e.UID), int(e.GID)); err != nil {
		return fmt.Errorf("writing egressd's %s: %w", f.Name, err)
	}
	return nil
}

// watchEgressd says so when egressd exits before the teardown stops it:
// the sandbox then has no network egress at all (fail closed). It ends
// with egressd or when the teardown begins.
func (s *Sandbox) watchEgressd(e EgressdProcess) {
	select {
	case <-e.Done():
		select {
		case <-s.egStopping:
		default:
			s.egressdGone.Store(true)
			s.log().Warn(fmt.Sprintf("egressd (pid %d) exited during the run (%v); the sandbox has no network egress from now on (fail closed)", e.Pid(), e.Err()))
		}
	case <-s.egStopping:
	}
}

// prepareContainer makes the sandbox's container as planned: its root,
// files and bundle, then the runtime's create (createContainer), with
// request, when not nil, the container's pid1.RequestFD (a pooled
// sandbox's waiting init: prestart).
func (s *Sandbox) prepareContainer(ctx context.Context, request *os.File) error {
	cleanup, err := s.plan.makeContainer(ctx, s.k.FS)
	s.mu.Lock()
	s.rootfsCleanup = cleanup
	s.mu.Unlock()
	if err != nil {
		return err
	}
	for _, w := range s.plan.Container.Warnings {
		s.log().Warn(w)
	}
	for root, others := range sharedWith(s.plan.StateRoot, s.plan.StateDir, s.plan.Container.Protected) {
		if len(others) > 0 {
			s.log().Warn(fmt.Sprintf("%q is also a writable directory of the live sandbox(es) %s: each can change what the other finds there "+
				"(never which host files it is shown: every mount is checked)", root, strings.Join(others, ", ")))
		}
	}
	s.bundle = s.plan.Container.Bundle
	c, err := s.createContainer(ctx, request)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.created = c
	s.mu.Unlock()
	return nil
}

// createContainer has the runtime create the sandbox's container (its
// mounts checked: Containers.Create). Nothing of the command runs until
// its Start, which Run calls only once every step of the setup succeeded.
func (s *Sandbox) createContainer(ctx context.Context, request *os.File) (Created, error) {
	t := time.Now()
	defer s.timed("runtime.create", t)
	s.container.Store(true)
	return s.k.Runtime.Create(ctx, s.rt, s.id, s.bundle, Streams{Terminal: s.cfg.Terminal != nil, Request: request}, s.plan.Container.Binds(s.dir))
}

// makeContainer makes the plan's container (makeContainer). Sandboxes
// sharing a workspace share its placeholders: one that ends between this
// plan and its registration may remove a placeholder the plan counted on
// (errProtectedChanged). The container is then planned again, from what
// is there, and made again, so the plan holds what was made.
func (pl *Plan) makeContainer(ctx context.Context, fsys HostFS) (func() error, error) {
	for attempt := 1; ; attempt++ {
		cleanup, err := makeContainer(ctx, fsys, pl.Container, pl.StateRoot, pl.StateDir)
		if cleanup == nil || !errors.Is(err, errProtectedChanged) || attempt == 5 {
			return cleanup, err
		}
		if err := cleanup(); err != nil {
			return cleanup, err
		}
		if err := pl.planContainer(pl.ins); err != nil {
			return nil, err
		}
	}
}

// makeContainer makes what c says in the sandbox's directory dir: the root
// file system (PrepareRootfs), the protected paths' placeholders, the
// generated /etc files and the bundle. The cleanup it returns, if any,
// removes the root and the placeholders, also after an error.
func makeContainer(ctx context.Context, fsys HostFS, c *ContainerPlan, stateRoot, dir string) (func() error, error) {
	if c.Init != "" {
		u := c.Spec.Process.User
		if err := CheckInit(c.Init, u.UID, u.GID, u.AdditionalGids); err != nil {
			return nil, err
		}
	}
	rootfs, err := prepareRootfs(ctx, fsys, c.View, dir, c.WritableRoot)
	if err != nil {
		return nil, err
	}
	cleanup := func() error { return errors.Join(rootfs.Cleanup(), releasePlaceholders(stateRoot, dir)) }
	if rootfs.Dir != c.Rootfs {
		return cleanup, fmt.Errorf("preparing rootfs: made %s, planned %s", rootfs.Dir, c.Rootfs)
	}
	for path, d := range rootfs.Overlays {
		if want := specconv.OverlayDir(dir, path); d != want {
			return cleanup, fmt.Errorf("preparing rootfs: overlay of %s at %s, planned at %s", path, d, want)
		}
	}
	if err := acquirePlaceholders(stateRoot, dir, c.Protected); err != nil {
		return cleanup, err
	}
	if err := os.MkdirAll(c.EtcDir, 0o755); err != nil {
		return cleanup, err
	}
	for name, data := range c.Files {
		if err := os.WriteFile(filepath.Join(c.EtcDir, name), data, 0o644); err != nil {
			return cleanup, fmt.Errorf("writing the sandbox's %s: %w", name, err)
		}
	}
	return cleanup, WriteBundle(c.Bundle, c.Spec)
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

// PrepareContainer plans the container of cfg as sandbox id, with state
// directory dir and network namespace netnsPath ("" gives mode none a
// fresh one and is required for mode host), and makes it on the host: the
// root file system, the protected paths' placeholders, the generated /etc
// files and the bundle. For tests and benchmarks that run a container
// without the rest of a sandbox. On error the Prepared it returns, if any,
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
	pl := &Plan{ID: id, StateRoot: cfg.StateDir, StateDir: dir, Mode: cfg.Profile.Network.Mode, Netns: netnsPath, cfg: cfg, ins: ins}
	if pl.Mode == policy.ModeHost {
		pl.Netns = ""
	}
	if err := pl.planContainer(ins); err != nil {
		return nil, err
	}
	cleanup, err := pl.makeContainer(ctx, cfg.Kernel.FS)
	if cleanup == nil {
		return nil, err
	}
	c := pl.Container
	return &Prepared{Bundle: c.Bundle, Warnings: c.Warnings, Cleanup: cleanup}, err
}
