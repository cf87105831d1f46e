package sandbox

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/internal/syncbuf"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/pid1"
)

// The warm pool on the fake kernel: what a pooled sandbox carries from one
// tenant to the next, and what happens to one that fails a check. The
// privileged e2e tests prove the same against real tenants.

// poolWorld is a pool of size on a fake kernel, and tenant configs of its
// shape.
type poolWorld struct {
	t    *testing.T
	k    *FakeKernel
	base Config
	p    *Pool
}

func newPoolWorld(t *testing.T, pc PoolConfig) *poolWorld {
	t.Helper()
	k := NewFakeKernel()
	k.Command = func(p *FakeProcess, stdio Stdio) int {
		cmd, _ := pid1.Command(p.Spec.Process.Args)
		if len(cmd) > 0 && cmd[0] == "cat" && stdio.Stdin != nil && stdio.Stdout != nil {
			_, _ = io.Copy(stdio.Stdout, stdio.Stdin)
			return 0
		}
		if stdio.Stdout != nil {
			fmt.Fprintf(stdio.Stdout, "%s\n", strings.Join(cmd, " "))
		}
		return 0
	}
	base := fakeConfig(t, k, "standard")
	base.Init = filepath.Join(t.TempDir(), "init")
	writeELF(t, base.Init, 0o755, elf.PT_LOAD)
	pc.Config = base
	p, err := NewPool(pc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	w := &poolWorld{t: t, k: k, base: base, p: p}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("closing the pool: %v", err)
		}
		checkNothingLeft(t, k, base.StateDir)
	})
	return w
}

// tenant is a config of the pool's shape allowing allow, running args.
func (w *poolWorld) tenant(allow string, args ...string) Config {
	cfg := w.base
	cfg.Profile = resolveWith(w.t, "standard", "", policy.Setting{Key: "network.allow", Values: []string{allow}, Source: policy.Flag("--allow")})
	cfg.Args = args
	return cfg
}

// run acquires a sandbox for cfg, runs it and releases it; it returns the
// lease, the output and the error of Release and of its background reset.
func (w *poolWorld) run(cfg Config, during func(l *Lease)) (*Lease, string, error) {
	w.t.Helper()
	ctx := context.Background()
	l, err := w.p.Acquire(ctx, cfg)
	if err != nil {
		w.t.Fatalf("acquire: %v", err)
	}
	var out bytes.Buffer
	if _, err := l.Run(ctx, Stdio{Stdout: &out}); err != nil {
		w.t.Fatalf("run: %v", err)
	}
	if during != nil {
		during(l)
	}
	err = l.Release()
	return l, out.String(), errors.Join(err, l.Wait())
}

// released acquires a sandbox for cfg, runs it and releases it, its
// reset left in the background.
func (w *poolWorld) released(cfg Config) *Lease {
	w.t.Helper()
	ctx := context.Background()
	l, err := w.p.Acquire(ctx, cfg)
	if err != nil {
		w.t.Fatalf("acquire: %v", err)
	}
	if _, err := l.Run(ctx, Stdio{}); err != nil {
		w.t.Fatalf("run: %v", err)
	}
	if err := l.Release(); err != nil {
		w.t.Fatalf("release: %v", err)
	}
	return l
}

// blockOps makes the fake kernel's operations starting with prefix wait
// until unblock is called; the test's end calls it too, before the
// pool's Close waits for them.
func (w *poolWorld) blockOps(prefix string) (unblock func()) {
	slow := make(chan struct{})
	unblock = sync.OnceFunc(func() { close(slow) })
	w.t.Cleanup(unblock)
	w.k.Fail = func(op string) error {
		if strings.HasPrefix(op, prefix) {
			<-slow
		}
		return nil
	}
	return unblock
}

func (w *poolWorld) egressd(id string) *FakeEgressd {
	for _, e := range w.k.Egressd() {
		if e.NsPath == filepath.Join(NetnsDir, id) && !e.stopped() {
			return e
		}
	}
	w.t.Fatalf("no egressd running for %s", id)
	return nil
}

// TestPoolTenantGetsItsOwnPolicyAndContainerOnTheWarmHalf: two tenants in
// turn get the same namespace and egressd, each with its own policy in
// force (written, reloaded, proven by /state) and its own container, which
// is gone with all its files at release; egressd is back to
// deny-everything between them.
func TestPoolTenantGetsItsOwnPolicyAndContainerOnTheWarmHalf(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	var ranIn *FakeProcess
	a, out, err := w.run(w.tenant("a-only.test", "echo", "tenant-a"), func(l *Lease) {
		data, err := os.ReadFile(filepath.Join(w.p.base.StateDir, l.ID(), "egressd", policyFile))
		if err != nil || !strings.Contains(string(data), "a-only.test") {
			t.Errorf("egressd's policy during tenant A's lease: %s %v", data, err)
		}
		ranIn = w.k.Container(l.ID())
		// What tenant A leaves in its container's files.
		for _, d := range []string{"upper-tmpfs", "bundle", "etc"} {
			if err := os.WriteFile(filepath.Join(w.p.base.StateDir, l.ID(), d, "left-by-a"), nil, 0o644); err != nil {
				t.Error(err)
			}
		}
	})
	if err != nil || out != "echo tenant-a\n" || !a.Warm() {
		t.Fatalf("tenant A: %q, %v, warm %v", out, err, a.Warm())
	}
	if ranIn == nil || ranIn.Request == nil || strings.Join(ranIn.Request.Args, " ") != "echo tenant-a" {
		t.Fatalf("tenant A's command did not come by the request: %+v", ranIn)
	}
	e := w.egressd(a.ID())
	code, body, _ := e.Admin(context.Background(), http.MethodGet, "/state")
	if code != 200 || !strings.Contains(string(body), `"source":"reset"`) || !strings.Contains(string(body), `"empty":true`) {
		t.Errorf("egressd between tenants: %d %s", code, body)
	}
	// The container A ran in is deleted with its files; the one waiting
	// for B is another, made from scratch, that no command reached yet.
	if next := w.k.Container(a.ID()); next == nil || next == ranIn || next.Request != nil {
		t.Errorf("the container waiting after release: %+v; want a fresh one (A's was %p)", next, ranIn)
	}
	if !slices.Contains(w.k.Ops(), "runtime.delete "+a.ID()) {
		t.Error("tenant A's container was never deleted")
	}
	for _, d := range []string{"upper-tmpfs", "bundle", "etc"} {
		if _, err := os.Lstat(filepath.Join(w.p.base.StateDir, a.ID(), d, "left-by-a")); err == nil {
			t.Errorf("what tenant A left in its %s is still there after release", d)
		}
	}
	b, out, err := w.run(w.tenant("b-only.test", "echo", "tenant-b"), func(l *Lease) {
		data, _ := os.ReadFile(filepath.Join(w.p.base.StateDir, l.ID(), "egressd", policyFile))
		if strings.Contains(string(data), "a-only.test") || !strings.Contains(string(data), "b-only.test") {
			t.Errorf("egressd's policy during tenant B's lease: %s", data)
		}
	})
	if err != nil || out != "echo tenant-b\n" || b.ID() != a.ID() {
		t.Fatalf("tenant B: %q, %v, sandbox %s (A had %s)", out, err, b.ID(), a.ID())
	}
	if got := len(w.k.Egressd()); got != 1 {
		t.Errorf("%d egressd started for two tenants of a pool of 1, want 1", got)
	}
	st := w.p.Stats()
	if st.Warm != 2 || st.Idle != 1 || st.Failed != 0 || st.Created != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestPoolSandboxFailingItsResetIsDestroyedNeverHandedOut: whatever of a
// tenant is left at release (a rule added to the firewall, a process
// outside the container, egressd holding a connection or refusing its
// reset, a conntrack table that cannot be flushed, egressd gone) destroys
// the sandbox — its namespace is removed — and the next tenant gets a
// fresh one.
func TestPoolSandboxFailingItsResetIsDestroyedNeverHandedOut(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(w *poolWorld, l *Lease)
		want  string
	}{
		{"rule added", func(w *poolWorld, l *Lease) {
			w.k.Netfilter.AddRule(filepath.Join(NetnsDir, l.ID()), firewall.IPv4, "filter", firewall.ChainOutput, "-j ACCEPT")
		}, "firewall"},
		{"process left", func(w *poolWorld, l *Lease) { w.k.Stray(filepath.Join(NetnsDir, l.ID()), 4242) }, "4242"},
		// A's connection still queued on egressd's explicit proxy port
		// (a process of A's connected, wrote a request and died before
		// egressd accepted it): egressd would decide it under B's policy.
		{"connection queued for egressd", func(w *poolWorld, l *Lease) {
			w.k.Socket(filepath.Join(NetnsDir, l.ID()), "08 0100007F:0C38 0100007F:A1B2")
		}, "0100007F:0C38"},
		{"egressd holds a connection", func(w *poolWorld, l *Lease) { w.egressd(l.ID()).Hold(1) }, "/reset: 500"},
		{"egressd refuses its reset", func(w *poolWorld, l *Lease) {
			w.egressd(l.ID()).FailAdmin("POST /reset", http.StatusServiceUnavailable)
		}, "503"},
		{"conntrack not flushed", func(w *poolWorld, l *Lease) {
			ns := filepath.Join(NetnsDir, l.ID())
			w.k.Netfilter.AddConntrack(ns, 3)
			w.k.Netfilter.Fail = func(op, in string, _ firewall.Family) error {
				if op == "flush-conntrack" && in == ns {
					return fmt.Errorf("injected")
				}
				return nil
			}
		}, "conntrack"},
		{"egressd exited", func(w *poolWorld, l *Lease) { w.egressd(l.ID()).Exit(fmt.Errorf("crashed")) }, "egressd"},
		{"next container's mounts not what was checked", func(w *poolWorld, l *Lease) {
			w.k.mu.Lock()
			defer w.k.mu.Unlock()
			w.k.Fail = func(op string) error {
				if op == "runtime.create "+l.ID() {
					return errors.New(`the sandbox's mount "/sandbox": it shows another object than its source`)
				}
				return nil
			}
		}, "shows another object"},
		{"next container's start fails", func(w *poolWorld, l *Lease) {
			w.k.mu.Lock()
			defer w.k.mu.Unlock()
			w.k.Fail = func(op string) error {
				if op == "runtime.start "+l.ID() {
					return errors.New("injected start failure")
				}
				return nil
			}
		}, "injected start failure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newPoolWorld(t, PoolConfig{Size: 1})
			a, _, err := w.run(w.tenant("a.test", "true"), func(l *Lease) { tc.plant(w, l) })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("release: %v, want an error about %q", err, tc.want)
			}
			if w.k.Kernel.Netns.Exists(a.ID()) {
				t.Errorf("sandbox %s failed its reset and still exists", a.ID())
			}
			b, _, err := w.run(w.tenant("b.test", "true"), nil)
			if err != nil {
				t.Fatalf("tenant B: %v", err)
			}
			if b.ID() == a.ID() {
				t.Errorf("tenant B got sandbox %s, which failed its reset", b.ID())
			}
			if st := w.p.Stats(); st.Failed != 1 {
				t.Errorf("stats %+v, want 1 failed", st)
			}
		})
	}
}

// TestPoolReloadRefusedIsAnErrorAndDestroys: egressd refusing the
// tenant's policy fails the acquire (the command never runs) and the
// sandbox, still under deny-everything, is destroyed.
func TestPoolReloadRefusedIsAnErrorAndDestroys(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	var id string
	for _, e := range w.k.Egressd() {
		e.FailAdmin("POST /reload", http.StatusUnprocessableEntity)
		id = filepath.Base(e.NsPath)
	}
	if _, err := w.p.Acquire(context.Background(), w.tenant("a.test", "true")); err == nil || !strings.Contains(err.Error(), "422") {
		t.Fatalf("acquire with the reload refused: %v", err)
	}
	if w.k.Container(id) != nil || w.k.Kernel.Netns.Exists(id) {
		t.Errorf("sandbox %s is left after its reload was refused", id)
	}
	if st := w.p.Stats(); st.Failed != 1 || st.Warm != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestPoolIdleSandboxWhoseEgressdDiedIsNeverHandedOut: an egressd that
// exits while its sandbox is idle gets the sandbox destroyed at the next
// acquire, which gets a fresh one.
func TestPoolIdleSandboxWhoseEgressdDiedIsNeverHandedOut(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	dead := w.k.Egressd()[0]
	dead.Exit(fmt.Errorf("crashed"))
	id := filepath.Base(dead.NsPath)
	if !eventuallyTrue(func() bool { return w.p.idle[0].s.EgressdExited() }) {
		t.Fatal("the sandbox never noticed its egressd exited")
	}
	l, _, err := w.run(w.tenant("a.test", "true"), nil)
	if err != nil || l.ID() == id || !l.Warm() {
		t.Fatalf("tenant got sandbox %s (warm %v, %v); %s's egressd had died", l.ID(), l.Warm(), err, id)
	}
	if w.k.Kernel.Netns.Exists(id) {
		t.Errorf("the sandbox whose egressd died (%s) still exists", id)
	}
	if st := w.p.Stats(); st.Failed != 1 {
		t.Errorf("stats %+v, want 1 failed", st)
	}
}

func eventuallyTrue(cond func() bool) bool {
	for range 200 {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// TestPoolBoundsRetireAndRefill: MaxUses retires a sandbox after that
// many executions and a fresh one replaces it; a profile of another shape
// gets a sandbox of its own, closed at release.
func TestPoolBoundsRetireAndRefill(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1, MaxUses: 2})
	var ids []string
	for range 3 {
		l, _, err := w.run(w.tenant("a.test", "true"), nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, l.ID())
	}
	if ids[0] != ids[1] || ids[2] == ids[1] {
		t.Errorf("sandboxes %v: want the first used twice, then a fresh one", ids)
	}
	none := w.base
	none.Profile = resolveWith(t, "standard", "", withMode("none"))
	l, _, err := w.run(none, nil)
	if err != nil || l.Warm() {
		t.Fatalf("mode none through the pool: warm %v, %v", l.Warm(), err)
	}
	if w.k.Kernel.Netns.Exists(l.ID()) {
		t.Errorf("the cold sandbox %s is left after release", l.ID())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.p.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if st := w.p.Stats(); st.Retired != 1 || st.Cold != 1 || st.Warm != 3 || st.Idle != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestPoolCloseLeavesNothing: Close destroys the idle sandboxes, and a
// lease still out when it closes is destroyed at its release.
func TestPoolCloseLeavesNothing(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 2})
	l, err := w.p.Acquire(context.Background(), w.tenant("a.test", "true"))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.p.Acquire(context.Background(), w.tenant("a.test", "true")); err == nil {
		t.Error("acquire after Close succeeded")
	}
	if _, err := l.Run(context.Background(), Stdio{}); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, w.k, w.base.StateDir)
}

// configFieldRole says, for every field of Config, how a pooled sandbox
// treats a tenant's value: "request" travels to the waiting init by the
// pipe (or is the host's side of this one execution: its sinks, timeout,
// secrets masking), "shape" is fixed by the pre-made container or the
// pool's network half (a tenant's other value runs cold: fits), "pool"
// is the pool's own and never the tenant's (Acquire overrides it).
var configFieldRole = map[string]string{
	"ID": "pool", "StateDir": "pool", "Kernel": "pool",
	"Profile": "shape", // its parts: per key, TestPoolRequestOfAnotherShapeRunsCold
	"Args":    "request", "CallerEnv": "request", "Secrets": "request", "Workdir": "request",
	"AuditLog": "request", "OnDenial": "request", "Logger": "request",
	"Rootfs": "shape", "HostRoot": "shape", "Runtime": "shape", "WorkspaceDir": "shape", "Hostname": "shape",
	"Init": "shape", "Terminal": "shape", "Subnet": "shape", "ResolvConf": "shape", "EgressdPath": "shape",
	"EgressdUID": "shape", "EgressdGID": "shape", "Mark": "shape", "ReadyTimeout": "shape",
	"InspectUpstreamCA": "shape",
}

// TestPoolEveryConfigFieldHasARole: a field added to Config must be
// placed in configFieldRole (and, if "shape", be covered by fits), so no
// part of a tenant's request is silently served by the pool's shape.
func TestPoolEveryConfigFieldHasARole(t *testing.T) {
	typ := reflect.TypeOf(Config{})
	for i := range typ.NumField() {
		if _, ok := configFieldRole[typ.Field(i).Name]; !ok {
			t.Errorf("Config.%s has no role in configFieldRole: say whether a pooled sandbox sends it by the request or runs another value cold", typ.Field(i).Name)
		}
	}
}

// TestPoolRequestOfAnotherShapeRunsCold: a request differing from the
// pool's shape in anything the pre-made container fixed runs in a sandbox
// of its own; one differing only in what the request carries runs warm,
// with its command, environment and working directory the request's.
func TestPoolRequestOfAnotherShapeRunsCold(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	set := func(key string, values ...string) func(*Config) {
		return func(c *Config) {
			c.Profile = resolveWith(t, "standard", "", policy.Setting{Key: key, Values: values, Source: policy.Flag("--test")})
		}
	}
	otherRoot := t.TempDir()
	if err := os.MkdirAll(filepath.Join(otherRoot, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(otherRoot, "bin", "echo"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		warm   bool
	}{
		{"command", func(c *Config) { c.Args = []string{"echo", "other"} }, true},
		{"secrets and caller env", func(c *Config) {
			c.Secrets = []Secret{{Name: "TOKEN", Value: "s3cret"}}
			c.CallerEnv = []string{"LANG=C"}
		}, true},
		{"workdir", func(c *Config) { c.Workdir = "/tmp" }, true},
		{"allow list", set("network.allow", "other.test"), true},
		{"timeout", set("process.timeout", "7s"), true},
		{"memory", set("process.memory", "64m"), false},
		{"cpus", set("process.cpus", "0.5"), false},
		{"pids limit", set("process.pids_limit", "100"), false},
		{"read-only root", set("filesystem.read_only", "true"), false},
		{"no new privileges off", set("process.no_new_privileges", "false"), false},
		{"tmpfs", set("filesystem.tmpfs", "/cache"), false},
		{"hostname", func(c *Config) { c.Hostname = "other" }, false},
		{"terminal", func(c *Config) { c.Terminal = &WindowSize{Rows: 24, Cols: 80} }, false},
		{"rootfs", func(c *Config) { c.Rootfs = otherRoot }, false},
		{"network mode none", set("network.mode", "none"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := w.tenant("a.test", "echo", "hi")
			tc.change(&cfg)
			ctx := context.Background()
			l, err := w.p.Acquire(ctx, cfg)
			if err != nil {
				t.Fatalf("acquire: %v", err)
			}
			defer func() {
				if err := errors.Join(l.Release(), l.Wait()); err != nil {
					t.Error(err)
				}
			}()
			if l.Warm() != tc.warm {
				t.Fatalf("warm %v, want %v", l.Warm(), tc.warm)
			}
			stdio := Stdio{}
			if cfg.Terminal != nil {
				stdio.Terminal = &Terminal{}
			}
			if _, err := l.Run(ctx, stdio); err != nil {
				t.Fatalf("run: %v", err)
			}
			if !tc.warm {
				return
			}
			p := w.k.Container(l.ID())
			want := l.s.plan.Container.Spec.Process
			if p == nil || p.Request == nil {
				t.Fatal("the warm command did not come by a request")
			}
			cmd, _ := pid1.Command(want.Args)
			if d := cmp.Diff(pid1.Request{Args: cmd, Env: want.Env, Cwd: want.Cwd}, *p.Request); d != "" {
				t.Errorf("request (-the cold spec's +sent):\n%s", d)
			}
		})
	}
}

// TestPoolLeaseNeverRunEndsItsWaitingContainer: a lease released without
// running anything has its waiting container ended and deleted; the next
// tenant gets a fresh one in the same sandbox.
func TestPoolLeaseNeverRunEndsItsWaitingContainer(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	ctx := context.Background()
	l, err := w.p.Acquire(ctx, w.tenant("a.test", "echo", "never"))
	if err != nil {
		t.Fatal(err)
	}
	unused := w.k.Container(l.ID())
	if err := errors.Join(l.Release(), l.Wait()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-unused.Killed():
	default:
		t.Error("the unused waiting container was not killed")
	}
	if unused.Request != nil {
		t.Errorf("the unused waiting container got a request: %+v", unused.Request)
	}
	b, out, err := w.run(w.tenant("b.test", "echo", "b"), nil)
	if err != nil || out != "echo b\n" || b.ID() != l.ID() {
		t.Fatalf("tenant B: %q %v in %s (A had %s)", out, err, b.ID(), l.ID())
	}
}

// TestPoolAcquireWaitsForTheResetInFlight: an acquire while the only
// sandbox is being reset in the background waits for it (and gets it,
// reset and with its next container) rather than making another; Close
// waits for a reset in flight and leaves nothing.
func TestPoolAcquireWaitsForTheResetInFlight(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	unblock := w.blockOps("runtime.delete ")
	ctx := context.Background()
	a := w.released(w.tenant("a.test", "true"))
	if st := w.p.Stats(); st.Resetting != 1 || st.Idle != 0 || st.Busy != 0 {
		t.Errorf("stats while A's sandbox resets: %+v", st)
	}
	got := make(chan *Lease)
	go func() {
		b, err := w.p.Acquire(ctx, w.tenant("b.test", "true"))
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	select {
	case b := <-got:
		t.Fatalf("tenant B got %v before A's sandbox was reset", b)
	case <-time.After(100 * time.Millisecond):
	}
	unblock()
	b := <-got
	if b == nil {
		return
	}
	if b.ID() != a.ID() || !b.Warm() {
		t.Errorf("tenant B got %s (warm %v), want A's reset sandbox %s", b.ID(), b.Warm(), a.ID())
	}
	if st := w.p.Stats(); st.Created != 1 {
		t.Errorf("stats %+v: want no second sandbox made", st)
	}
	if _, err := b.Run(ctx, Stdio{}); err != nil {
		t.Fatal(err)
	}
	unblock = w.blockOps("runtime.delete ")
	if err := b.Release(); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error)
	go func() { closed <- w.p.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a reset was in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	unblock()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, w.k, w.base.StateDir)
}

// TestPoolIdleSandboxWhoseWaitingInitEndedIsNeverHandedOut: a waiting
// container that ends while idle (killed from the host) gets its sandbox
// destroyed at the next acquire, which gets a fresh one.
func TestPoolIdleSandboxWhoseWaitingInitEndedIsNeverHandedOut(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	id := w.p.idle[0].s.ID()
	w.k.Container(id).kill()
	if !eventuallyTrue(func() bool { return w.p.idle[0].next.proc.ended() }) {
		t.Fatal("the pool never saw its waiting container end")
	}
	l, out, err := w.run(w.tenant("a.test", "echo", "a"), nil)
	if err != nil || out != "echo a\n" || l.ID() == id {
		t.Fatalf("tenant got %s (%q, %v); %s's waiting container had ended", l.ID(), out, err, id)
	}
	if w.k.Kernel.Netns.Exists(id) {
		t.Errorf("the sandbox whose waiting container ended (%s) still exists", id)
	}
	if st := w.p.Stats(); st.Failed != 1 {
		t.Errorf("stats %+v, want 1 failed", st)
	}
}

// TestPoolEveryoneBusyGetsOneMadeForIt: with every pooled sandbox
// running an execution (none idle, being made or reset), an acquire gets a
// pooled sandbox made for it, destroyed at its release when the pool is
// full; the pool stays its size.
func TestPoolEveryoneBusyGetsOneMadeForIt(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	ctx := context.Background()
	a, err := w.p.Acquire(ctx, w.tenant("a.test", "true"))
	if err != nil {
		t.Fatal(err)
	}
	b, out, err := w.run(w.tenant("b.test", "echo", "b"), nil)
	if err != nil || !b.Warm() || out != "echo b\n" || b.ID() == a.ID() {
		t.Fatalf("tenant B while A runs: warm %v in %s (A's %s), %q, %v; want one made for it", b.Warm(), b.ID(), a.ID(), out, err)
	}
	if _, err := a.Run(ctx, Stdio{}); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(a.Release(), a.Wait()); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := w.p.Ready(ctx2); err != nil {
		t.Fatal(err)
	}
	if st := w.p.Stats(); st.Created != 2 || st.Destroyed != 1 || st.Warm != 2 || st.Idle != 1 || st.Cold != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestPoolLeaseWaitReturnsOnceItsRetiredSandboxIsGone: a sandbox
// retired at its release (MaxUses) is destroyed in the release's
// background part, and the lease's Wait returns only once it is gone
// from the host and counted destroyed: a caller that waited never sees
// the sandbox counted nowhere, nor its namespace still there.
func TestPoolLeaseWaitReturnsOnceItsRetiredSandboxIsGone(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1, MaxUses: 1})
	unblock := w.blockOps("netns.remove ")
	a := w.released(w.tenant("a.test", "true"))
	waited := make(chan error, 1)
	go func() { waited <- a.Wait() }()
	select {
	case err := <-waited:
		t.Fatalf("Wait returned (%v) while the retired sandbox %s was still being destroyed (stats %+v)", err, a.ID(), w.p.Stats())
	case <-time.After(100 * time.Millisecond):
	}
	unblock()
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if w.k.Kernel.Netns.Exists(a.ID()) {
		t.Errorf("the retired sandbox %s still exists after Wait", a.ID())
	}
	if st := w.p.Stats(); st.Retired != 1 || st.Destroyed != 1 {
		t.Errorf("stats after Wait %+v: want the retired sandbox counted destroyed", st)
	}
}

// TestPoolWarmCommandGetsItsStdio: the waiting container's stdio, made
// before the tenant was known, carries the tenant's input and output, and
// nothing of it reaches the next tenant.
func TestPoolWarmCommandGetsItsStdio(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	ctx := context.Background()
	for _, in := range []string{"tenant A's input\n", "B's\n"} {
		l, err := w.p.Acquire(ctx, w.tenant("a.test", "cat"))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if _, err := l.Run(ctx, Stdio{Stdin: strings.NewReader(in), Stdout: &out}); err != nil {
			t.Fatal(err)
		}
		if err := errors.Join(l.Release(), l.Wait()); err != nil {
			t.Fatal(err)
		}
		if !l.Warm() || out.String() != in {
			t.Errorf("warm %v, output %q; want %q", l.Warm(), out.String(), in)
		}
	}
}

// TestPoolHostChangeToTheNetworkShapeReplacesTheSandbox: when the host's
// resolvers change, the next reset finds the pool's network shape changed
// and replaces the sandbox (its egressd forwards to the old ones) instead
// of keeping one no tenant fits any more.
func TestPoolHostChangeToTheNetworkShapeReplacesTheSandbox(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	a, _, err := w.run(w.tenant("a.test", "true"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.base.ResolvConf, []byte("nameserver 192.0.2.54\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := w.p.Acquire(context.Background(), w.tenant("b.test", "true"))
	if err != nil {
		t.Fatal(err)
	}
	if l.Warm() {
		t.Error("a tenant planned with the new resolvers ran in the sandbox of the old ones")
	}
	if _, err := l.Run(context.Background(), Stdio{}); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(l.Release(), l.Wait()); err != nil {
		t.Fatal(err)
	}
	if w.k.Kernel.Netns.Exists(a.ID()) {
		t.Errorf("the sandbox of the old resolvers (%s) is kept", a.ID())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.p.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	d, _, err := w.run(w.tenant("d.test", "true"), nil)
	if err != nil || !d.Warm() || d.ID() == a.ID() {
		t.Errorf("tenant D: warm %v in %s (%v); want a fresh sandbox of the new shape", d.Warm(), d.ID(), err)
	}
}

// TestPoolWaitingContainerIsCreatedCheckedAndStartedBeforeTheAcquire: a
// pooled sandbox's next container is made through the cold path's
// Containers.Create (where the mounts are checked, THREATS I5) and then
// started, both before any tenant acquires it; the acquire and the run
// call no runtime at all (the command goes to the waiting init by its
// request pipe, given to the container at its create).
func TestPoolWaitingContainerIsCreatedCheckedAndStartedBeforeTheAcquire(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	runtimeOps := func() []string {
		return slices.DeleteFunc(w.k.Ops(), func(op string) bool { return !strings.HasPrefix(op, "runtime.") })
	}
	before := runtimeOps()
	ctx := context.Background()
	l, err := w.p.Acquire(ctx, w.tenant("a.test", "echo", "warm"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := l.Run(ctx, Stdio{Stdout: &out}); err != nil || out.String() != "echo warm\n" || !l.Warm() {
		t.Fatalf("run: %q, %v, warm %v", out.String(), err, l.Warm())
	}
	if during := runtimeOps()[len(before):]; len(during) > 0 {
		t.Errorf("the acquire and the run called the runtime: %q; want nothing (the container was made ahead)", during)
	}
	create, start := slices.Index(before, "runtime.create "+l.ID()), slices.Index(before, "runtime.start "+l.ID())
	if create < 0 || start < create {
		t.Errorf("before the acquire, runtime ops %q: want runtime.create %s, then runtime.start", before, l.ID())
	}
	if err := errors.Join(l.Release(), l.Wait()); err != nil {
		t.Fatal(err)
	}
	// At release, in the background: the tenant's container deleted, the
	// next one created, then started.
	after := runtimeOps()[len(before):]
	del, create2, start2 := slices.Index(after, "runtime.delete "+l.ID()), slices.Index(after, "runtime.create "+l.ID()), slices.Index(after, "runtime.start "+l.ID())
	if del < 0 || create2 < del || start2 < create2 {
		t.Errorf("at release, runtime ops %q: want runtime.delete, runtime.create, runtime.start of %s in that order", after, l.ID())
	}
}

// TestPoolFailureToMakeASandboxIsTriedAgain: a sandbox the pool fails to
// make (the first two namespaces refused) is tried again after a pause,
// and the pool is whole again, never left short for good; the failure is
// logged with when it is tried again.
func TestPoolFailureToMakeASandboxIsTriedAgain(t *testing.T) {
	k := NewFakeKernel()
	k.Command = func(*FakeProcess, Stdio) int { return 0 }
	refused := 0
	k.Fail = func(op string) error {
		if strings.HasPrefix(op, "netns.create ") && refused < 2 {
			refused++
			return errors.New("injected: no namespace")
		}
		return nil
	}
	base := fakeConfig(t, k, "standard")
	base.Init = filepath.Join(t.TempDir(), "init")
	writeELF(t, base.Init, 0o755, elf.PT_LOAD)
	var logged syncbuf.Buffer
	p, err := NewPool(PoolConfig{Config: base, Size: 2, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("closing the pool: %v", err)
		}
		checkNothingLeft(t, k, base.StateDir)
	})
	deadline := time.Now().Add(20 * time.Second)
	for p.Stats().Idle < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the pool stayed short after its failures: %+v", p.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := p.Stats(); st.Created != 2 || st.Idle != 2 {
		t.Errorf("stats %+v: want 2 made and idle", st)
	}
	if got := logged.String(); !strings.Contains(got, "injected: no namespace") || !strings.Contains(got, "retry_in=1s") {
		t.Errorf("log %q does not say what failed and when it is tried again", got)
	}
}

// TestPoolClosedWhileARetryWaitsEndsIt: Close does not wait out a retry's
// pause, and nothing is made after it.
func TestPoolClosedWhileARetryWaitsEndsIt(t *testing.T) {
	k := NewFakeKernel()
	k.Fail = func(op string) error {
		if strings.HasPrefix(op, "netns.create ") {
			return errors.New("injected: no namespace")
		}
		return nil
	}
	base := fakeConfig(t, k, "standard")
	base.Init = filepath.Join(t.TempDir(), "init")
	writeELF(t, base.Init, 0o755, elf.PT_LOAD)
	p, err := NewPool(PoolConfig{Config: base, Size: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Ready(ctx); err == nil {
		t.Fatal("Ready with every namespace refused: no error")
	}
	start := time.Now()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > retryFirst/2 {
		t.Errorf("Close took %v: it waited out the retry's pause", d)
	}
	if st := p.Stats(); st.Created != 0 {
		t.Errorf("stats %+v: made a sandbox after Close", st)
	}
	checkNothingLeft(t, k, base.StateDir)
}
