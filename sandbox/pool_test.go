package sandbox

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/firewall"
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
		if stdio.Stdout != nil {
			cmd, _ := pid1.Command(p.Spec.Process.Args)
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newPoolWorld(t, PoolConfig{Size: 1})
			a, _, err := w.run(w.tenant("a.test", "true"), func(l *Lease) { tc.plant(w, l) })
			w.k.Netfilter.Fail = nil
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
