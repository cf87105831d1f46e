package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/internal/syncbuf"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/specconv"
)

// The life of a sandbox on the fake kernel: every test here runs as any
// user, and the privileged tests (netns_test.go, uplink_test.go,
// egressd_test.go, runtime_test.go, sandbox_test.go, the e2e suite) prove
// the same paths on the real one.

// fakeRT is the runtime a fake launch names (the fake kernel runs it).
var fakeRT = &Runtime{Name: "runc", Path: "/fake/runc", Root: "/fake/state"}

// fakeConfig is a launch of profile on k, in a state root of the test's.
func fakeConfig(t *testing.T, k *FakeKernel, profile string, overrides ...policy.Setting) Config {
	t.Helper()
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(rc, []byte("nameserver 192.0.2.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return Config{Profile: resolveWith(t, profile, "", overrides...), Args: []string{"sh", "-c", "echo hi"},
		EgressdPath: "/bin/true", ResolvConf: rc, StateDir: filepath.Join(dir, "state"), Runtime: fakeRT, Kernel: k.Kernel}
}

func withMode(mode string) policy.Setting {
	return policy.Setting{Key: "network.mode", Values: []string{mode}, Source: policy.Flag("--net")}
}

// checkNothingLeft fails the test when the fake kernel or the state root
// holds anything of a sandbox.
func checkNothingLeft(t *testing.T, k *FakeKernel, stateRoot string) {
	t.Helper()
	if left := k.Leftovers(); len(left) > 0 {
		t.Errorf("left in the kernel: %q", left)
	}
	ents, _ := os.ReadDir(stateRoot)
	for _, e := range ents {
		if e.Name() != subnetLockName {
			t.Errorf("left in the state directory: %s", e.Name())
		}
	}
}

// TestLifecycleCreatesWhatThePlanSays: in each mode, Apply makes exactly
// the plan's namespace, rules, uplink, egressd and container, the command
// runs with its output streamed and secrets masked, and Close leaves
// nothing.
func TestLifecycleCreatesWhatThePlanSays(t *testing.T) {
	for _, mode := range []string{"filtered", "none", "host"} {
		t.Run(mode, func(t *testing.T) {
			k := NewFakeKernel()
			k.Command = func(p *FakeProcess, stdio Stdio) int {
				fmt.Fprintf(stdio.Stdout, "ran %s with token %s\n", p.Spec.Process.Args[0], "tok-123456")
				return 3
			}
			cfg := fakeConfig(t, k, "standard", withMode(mode))
			cfg.Secrets = []Secret{{"TOKEN", "tok-123456"}}
			s, err := Create(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			p := s.Plan()
			if p.ID != s.ID() || s.StateDir() != filepath.Join(cfg.StateDir, s.ID()) {
				t.Errorf("id %s, state dir %s; plan %s", s.ID(), s.StateDir(), p.ID)
			}
			checkApplied(t, k, s)
			var out bytes.Buffer
			res, err := s.Run(context.Background(), Stdio{Stdout: &out})
			if err != nil || res.ExitCode != 3 {
				t.Errorf("Run = %+v, %v; want exit 3", res, err)
			}
			if out.String() != "ran sh with token "+SecretMask+"\n" {
				t.Errorf("stdout %q: want the secret masked", out.String())
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			checkNothingLeft(t, k, cfg.StateDir)
			phases := map[string]bool{}
			for _, tm := range s.Timings() {
				phases[tm.Phase] = true
			}
			for _, ph := range []string{"container", "setup", "create", "run", "teardown"} {
				if !phases[ph] {
					t.Errorf("no timing for %s: %v", ph, s.Timings())
				}
			}
		})
	}
}

// checkApplied checks the fake kernel holds what s's plan says.
func checkApplied(t *testing.T, k *FakeKernel, s *Sandbox) {
	t.Helper()
	p := s.Plan()
	if (p.Netns != "") != k.Kernel.Netns.Exists(p.ID) || s.NetNSPath() != p.Netns {
		t.Errorf("namespace %q: exists %v", p.Netns, k.Kernel.Netns.Exists(p.ID))
	}
	if p.Firewall != nil {
		v4, v6, _ := firewall.Rules(*p.Firewall)
		for f, want := range map[firewall.Family][]byte{firewall.IPv4: v4, firewall.IPv6: v6} {
			if got := k.Netfilter.Batches(p.Netns, f); !slices.Equal(got, []string{string(want)}) {
				t.Errorf("%s rules in %s: %q, want the plan's", f, p.Netns, got)
			}
		}
	}
	if p.Uplink != nil {
		l := k.Link(p.Uplink.Link)
		if l == nil || !l.Up || l.NsPath != p.Netns || !p.Uplink.Subnet.Contains(l.HostAddr.Addr()) || l.Gateway != l.HostAddr.Addr() {
			t.Errorf("uplink %+v", l)
		} else if got := k.Netfilter.Save("", firewall.IPv4); !strings.Contains(got, "-A "+p.Uplink.NATChain+" -s "+l.HostAddr.Masked().String()+" ! -o "+p.Uplink.Link+" -j MASQUERADE") {
			t.Errorf("launcher-side NAT:\n%s", got)
		}
	}
	eg := k.Egressd()
	if (p.Egressd != nil) != (len(eg) == 1) {
		t.Fatalf("egressd processes %d for plan %+v", len(eg), p.Egressd)
	}
	if p.Egressd != nil {
		if eg[0].NsPath != p.Netns || !slices.Equal(eg[0].Plan.Args, p.Egressd.Args) || s.EgressdPID() != eg[0].Pid() {
			t.Errorf("egressd in %s with %q", eg[0].NsPath, eg[0].Plan.Args)
		}
		for _, name := range []string{"", policyFile} {
			path := filepath.Join(p.Egressd.Dir, name)
			if uid, gid, ok := k.Owner(path); !ok || uid != int(p.Egressd.UID) || gid != int(p.Egressd.GID) {
				t.Errorf("%s owned by %d:%d (%v), want egressd's", path, uid, gid, ok)
			}
		}
		if data, err := os.ReadFile(filepath.Join(p.Egressd.Dir, policyFile)); err != nil || !bytes.Equal(data, p.Egressd.Policy) {
			t.Errorf("egressd's policy: %v", err)
		}
	}
	data, err := os.ReadFile(filepath.Join(p.Container.Bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.MarshalIndent(p.Container.Spec, "", "\t")
	if d := cmp.Diff(string(want)+"\n", string(data)); d != "" {
		t.Errorf("the bundle's spec is not the plan's (-plan +bundle):\n%s", d)
	}
}

// TestLifecycleEveryStepFailingRollsBack fails each step of a launch in
// turn, kernel operations and file writes alike: Create fails with the
// step's error and nothing is left, in the kernel or the state directory.
func TestLifecycleEveryStepFailingRollsBack(t *testing.T) {
	for _, mode := range []string{"filtered", "none", "host"} {
		t.Run(mode, func(t *testing.T) {
			// The operations of a successful launch.
			ref := NewFakeKernel()
			cfg := fakeConfig(t, ref, "standard", withMode(mode))
			cfg.ID = "egs-0a1b2c3d"
			s, err := Create(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			// Operation names hold the state root, which each run has its
			// own of. A failed read of ping_group_range is followed by the
			// write, which decides: not a step of its own.
			norm := func(op, root string) string { return strings.ReplaceAll(op, root, "$STATE") }
			var ops []string
			for _, op := range ref.Ops() {
				if !strings.HasPrefix(op, "netfilter sysctl ") {
					ops = append(ops, norm(op, cfg.StateDir))
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if len(ops) == 0 {
				t.Fatal("a launch of no operation")
			}
			for _, op := range ops {
				t.Run(op, func(t *testing.T) {
					k := NewFakeKernel()
					root := filepath.Join(t.TempDir(), "state")
					boom := errors.New("injected failure of " + op)
					var once sync.Once
					fail := func(got string) (err error) {
						if norm(got, root) == op {
							once.Do(func() { err = boom })
						}
						return err
					}
					k.Fail = fail
					k.Netfilter.Fail = func(o, ns string, f firewall.Family) error {
						return fail(fmt.Sprintf("netfilter %s %s %s", o, f, ns))
					}
					c := cfg
					c.Kernel, c.StateDir = k.Kernel, root
					s, err := Create(context.Background(), c)
					if err == nil {
						s.Close()
						t.Fatalf("Create succeeded with %s failing", op)
					}
					if !strings.Contains(err.Error(), "injected failure of "+op) {
						t.Errorf("error %q does not say what failed", err)
					}
					checkNothingLeft(t, k, c.StateDir)
				})
			}
		})
	}
}

// TestLifecycleTeardownOnEveryWayOut: the command ending, the caller
// giving up, the timeout, a runtime that cannot start the container,
// egressd dying, and no run at all: Close leaves nothing each time.
func TestLifecycleTeardownOnEveryWayOut(t *testing.T) {
	blockUntilKilled := func(p *FakeProcess, stdio Stdio) int { <-p.Killed(); return 137 }
	for _, tc := range []struct {
		name    string
		timeout string
		command func(p *FakeProcess, stdio Stdio) int
		fail    string
		run     func(t *testing.T, s *Sandbox, k *FakeKernel)
	}{
		{name: "command exits", run: func(t *testing.T, s *Sandbox, k *FakeKernel) {
			if res, err := s.Run(context.Background(), Stdio{}); err != nil || res.ExitCode != 0 {
				t.Errorf("Run = %+v, %v", res, err)
			}
		}},
		{name: "caller interrupts", command: blockUntilKilled, run: func(t *testing.T, s *Sandbox, k *FakeKernel) {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			if _, err := s.Run(ctx, Stdio{}); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Run after the caller gave up: %v", err)
			}
		}},
		{name: "timeout", timeout: "50ms", command: blockUntilKilled, run: func(t *testing.T, s *Sandbox, k *FakeKernel) {
			res, err := s.Run(context.Background(), Stdio{})
			if err != nil || !res.TimedOut || res.ExitCode != ExitTimeout {
				t.Errorf("Run = %+v, %v; want the timeout", res, err)
			}
		}},
		{name: "runtime fails", fail: "runtime.start", run: func(t *testing.T, s *Sandbox, k *FakeKernel) {
			if _, err := s.Run(context.Background(), Stdio{}); err == nil || !strings.Contains(err.Error(), "runc start") {
				t.Errorf("Run with a failing runtime: %v", err)
			}
		}},
		{name: "egressd dies", command: blockUntilKilled, run: func(t *testing.T, s *Sandbox, k *FakeKernel) {
			k.Egressd()[0].Exit(errors.New("exit status 2"))
			deadline := time.Now().Add(5 * time.Second)
			for !s.EgressdExited() && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if !s.EgressdExited() {
				t.Error("egressd's death went unnoticed")
			}
		}},
		{name: "never run", run: func(t *testing.T, s *Sandbox, k *FakeKernel) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := NewFakeKernel()
			k.Command = tc.command
			var settings []policy.Setting
			if tc.timeout != "" {
				settings = append(settings, policy.Setting{Key: "process.timeout", Values: []string{tc.timeout}})
			}
			cfg := fakeConfig(t, k, "standard", settings...)
			var logs syncbuf.Buffer
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			s, err := Create(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tc.fail != "" {
				k.Fail = func(op string) error {
					if strings.HasPrefix(op, tc.fail) {
						return errors.New("injected")
					}
					return nil
				}
			}
			tc.run(t, s, k)
			k.Fail = nil
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			checkNothingLeft(t, k, cfg.StateDir)
			if tc.name == "egressd dies" && !strings.Contains(logs.String(), "no network egress") {
				t.Errorf("no warning that egressd died: %q", logs.String())
			}
		})
	}
}

// teardownOps closes a running sandbox of k (whose command runs until it
// is killed) and returns the kernel operations in order, an index lookup
// by prefix, whether the uplink's chains were still in place when the
// first operation with prefix chainsAt began, and the state dir.
func teardownOps(t *testing.T, k *FakeKernel, chainsAt string) (ops []string, at func(prefix string) int, chainsThen bool, stateDir string) {
	t.Helper()
	k.Command = func(p *FakeProcess, stdio Stdio) int { <-p.Killed(); return 137 }
	cfg := fakeConfig(t, k, "standard")
	s, done := runInBackground(t, k, cfg, true)
	var chains, seen atomic.Bool
	k.Fail = func(op string) error {
		if strings.HasPrefix(op, chainsAt) && !seen.Swap(true) {
			chains.Store(strings.Contains(k.Netfilter.Save("", firewall.IPv4), "EGS-"))
		}
		return nil
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	<-done
	ops = k.Ops()
	at = func(prefix string) int {
		return slices.IndexFunc(ops, func(op string) bool { return strings.HasPrefix(op, prefix) })
	}
	return ops, at, chains.Load(), cfg.StateDir
}

// TestLifecycleTeardownStopsTheWorkloadBeforeTheNamespace: nothing of the
// sandbox is still running when its namespace goes (the fake's Remove
// would kill it, as the real one does by pid, and Leftovers would not
// tell).
func TestLifecycleTeardownStopsTheWorkloadBeforeTheNamespace(t *testing.T) {
	k := NewFakeKernel()
	ops, at, chainsAtRemove, stateDir := teardownOps(t, k, "netns.remove")
	remove := at("netns.remove")
	if i := at("runtime.delete"); i < 0 || i > remove {
		t.Errorf("runtime.delete at %d, namespace removed at %d: %q", i, remove, ops)
	}
	// The veth goes with the namespace (the kernel's cleanup), not by
	// an explicit, slow deletion; its chains are removed after that.
	if at("links.down") >= 0 || at("links.delete") >= 0 {
		t.Errorf("the veth was deleted explicitly although its namespace went: %q", ops)
	}
	if !chainsAtRemove {
		t.Error("the uplink's chains were gone before the namespace: they must stay while its veth may carry anything")
	}
	if !k.Egressd()[0].stopped() {
		t.Error("egressd still runs")
	}
	checkNothingLeft(t, k, stateDir)
}

// TestLifecycleTeardownDeletesTheVethOfANamespaceSomethingStillHolds: a
// namespace whose bind mount is gone but that something still references
// (egressd's socket left as an orphan by a hostile upstream that stops
// acknowledging, retransmitting for minutes) keeps its veth up, addressed
// and routed; the teardown sees the link still there and deletes it before
// it removes the chains, so nothing of the sandbox's uplink outlives the
// launcher (review 3).
func TestLifecycleTeardownDeletesTheVethOfANamespaceSomethingStillHolds(t *testing.T) {
	k := NewFakeKernel()
	k.Pinned = func(string) bool { return true }
	ops, at, chainsAtDown, stateDir := teardownOps(t, k, "links.down")
	remove, gone, down, del := at("netns.remove"), at("links.gone"), at("links.down"), at("links.delete")
	if remove < 0 || gone < remove || down < gone || del < down {
		t.Errorf("want the namespace removed, then the link looked for, set down and deleted; got netns.remove at %d, links.gone at %d, links.down at %d, links.delete at %d: %q", remove, gone, down, del, ops)
	}
	if !chainsAtDown {
		t.Error("the uplink's chains were gone before its veth was down: they must stay while the link may carry anything")
	}
	checkNothingLeft(t, k, stateDir)
}

// TestLifecycleSignalsReachTheCommand: a signal sent before the container
// runs is delivered once it does, later ones at once.
func TestLifecycleSignalsReachTheCommand(t *testing.T) {
	k := NewFakeKernel()
	got := make(chan syscall.Signal, 4)
	k.Command = func(p *FakeProcess, stdio Stdio) int {
		for sig := range p.Signals() {
			got <- sig
			if sig == syscall.SIGTERM {
				return 143
			}
		}
		return 0
	}
	cfg := fakeConfig(t, k, "strict", withMode("none"))
	s, err := Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	done := make(chan Result, 1)
	go func() {
		res, _ := s.Run(context.Background(), Stdio{})
		done <- res
	}()
	if sig := <-got; sig != syscall.SIGUSR1 {
		t.Errorf("first signal %v", sig)
	}
	if err := s.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if res := <-done; res.ExitCode != 143 {
		t.Errorf("exit %d, want 143", res.ExitCode)
	}
}

// TestLifecycleDenialsComeFromEgressdsAuditStream: the audit records
// egressd writes reach --audit-log as written, the live callback once and
// the launcher's summary once per destination.
func TestLifecycleDenialsComeFromEgressdsAuditStream(t *testing.T) {
	k := NewFakeKernel()
	cfg := fakeConfig(t, k, "standard")
	var audit syncbuf.Buffer
	cfg.AuditLog = &audit
	var live []Denial
	cfg.OnDenial = func(d Denial) { live = append(live, d) }
	s, err := Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := `{"time":"2026-01-01T00:00:00Z","kind":"connect","target":"evil.test","port":443,"decision":"deny","reason":"blocked-by","rule":"evil.test","rule_source":"flag:--block"}`
	k.Egressd()[0].Audit(rec, rec)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	want := []Denial{{Kind: "connect", Outcome: "deny", Target: "evil.test", Port: 443, Reason: "blocked-by", Rule: "evil.test", RuleSource: "flag:--block", Count: 2}}
	if d := cmp.Diff(want, s.Denials()); d != "" {
		t.Errorf("denials (-want +got):\n%s", d)
	}
	if len(live) != 1 || live[0].Target != "evil.test" {
		t.Errorf("told live of %+v, want evil.test once", live)
	}
	if strings.Count(audit.String(), `"target":"evil.test"`) != 2 {
		t.Errorf("audit log %q", audit.String())
	}
}

// TestLifecycleReapRemovesWhatACrashedLauncherLeft: a launcher that died
// mid-run (its lock dropped, nothing torn down) leaves a running container,
// egressd, links, rules and mounts; Reap removes them all, and touches
// neither a live launcher's sandbox nor one whose uplink lives in another
// network namespace.
func TestLifecycleReapRemovesWhatACrashedLauncherLeft(t *testing.T) {
	k := NewFakeKernel()
	k.Command = func(p *FakeProcess, stdio Stdio) int { <-p.Killed(); return 137 }
	cfg := fakeConfig(t, k, "standard")
	crashed, err := Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	go crashed.Run(context.Background(), Stdio{})
	for k.Container(crashed.ID()) == nil {
		time.Sleep(time.Millisecond)
	}
	live, err := Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	crashed.lock.Close() // as when its process dies

	// A sandbox of a launcher in another namespace: its record says so.
	elsewhere := filepath.Join(cfg.StateDir, "egs-0e0e0e0e")
	os.MkdirAll(elsewhere, 0o700)
	os.WriteFile(filepath.Join(elsewhere, "lock"), nil, 0o600)
	rec, _ := json.Marshal(stateRecord{ID: "egs-0e0e0e0e", Mode: policy.ModeFiltered, LauncherNetNS: "1:2"})
	os.WriteFile(filepath.Join(elsewhere, "state.json"), rec, 0o600)

	reaped, err := k.Kernel.Reap(cfg.StateDir)
	if err != nil || !slices.Equal(reaped, []string{crashed.ID()}) {
		t.Errorf("Reap = %v, %v; want [%s]", reaped, err, crashed.ID())
	}
	left := k.Leftovers()
	for _, l := range left {
		if strings.Contains(l, crashed.ID()) || strings.Contains(l, strings.TrimPrefix(crashed.ID(), IDPrefix)) {
			t.Errorf("left of the crashed launcher's sandbox: %s", l)
		}
	}
	if !k.Kernel.Netns.Exists(live.ID()) || k.Container(crashed.ID()) != nil {
		t.Errorf("after Reap: live namespace %v, crashed container %v", k.Kernel.Netns.Exists(live.ID()), k.Container(crashed.ID()))
	}
	if _, err := os.Stat(elsewhere); err != nil {
		t.Errorf("Reap removed a sandbox of another namespace's launcher: %v", err)
	}
	if again, err := k.Kernel.Reap(cfg.StateDir); err != nil || len(again) != 0 {
		t.Errorf("a second Reap: %v, %v", again, err)
	}
	live.Close()
	os.RemoveAll(elsewhere)
	checkNothingLeft(t, k, cfg.StateDir)
}

// TestLifecycleIDInUseIsRefusedNotShared: a plan whose id names an
// existing namespace or state directory is not applied over it.
func TestLifecycleIDInUseIsRefusedNotShared(t *testing.T) {
	k := NewFakeKernel()
	cfg := fakeConfig(t, k, "strict", withMode("none"))
	cfg.ID = "egs-00c0ffee"
	if _, err := k.Kernel.Netns.Create(cfg.ID); err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(context.Background(), p); !errors.Is(err, errIDTaken) {
		t.Errorf("Apply over an existing namespace: %v", err)
	}
	k.Kernel.Netns.Remove(k.Kernel.Netns.Open(cfg.ID))
	first, err := Apply(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := Apply(context.Background(), p); !errors.Is(err, errIDTaken) {
		t.Errorf("Apply of a plan already applied: %v", err)
	}
	// Without an id of its own, Create draws another.
	cfg.ID = ""
	s, err := Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestRunAppliesWhatExplainShows: what Apply hands the kernel — the
// namespace's rules, the uplink's NAT, egressd's command line, the spec the
// runtime starts — is what Plan.Explain shows for the same plan.
func TestRunAppliesWhatExplainShows(t *testing.T) {
	k := NewFakeKernel()
	cfg := fakeConfig(t, k, "standard", policy.Setting{Key: "network.allow", Values: []string{"a.test"}, Source: policy.Flag("--allow")})
	cfg.Secrets = []Secret{{"TOKEN", "tok-123456"}}
	p, err := NewPlan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := p.Explain()
	if err != nil {
		t.Fatal(err)
	}
	s, err := Apply(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Run(context.Background(), Stdio{}); err != nil {
		t.Fatal(err)
	}
	started := k.Container(s.ID())
	spec := *started.Spec
	proc := *spec.Process
	proc.Env = RedactEnv(proc.Env)
	spec.Process = &proc
	if d := cmp.Diff(ex.Spec, &spec); d != "" {
		t.Errorf("the spec the runtime started (-explain +run):\n%s", d)
	}
	if got := k.Netfilter.Batches(p.Netns, firewall.IPv4); !slices.Equal(got, []string{ex.FirewallIPv4}) {
		t.Errorf("IPv4 rules applied %q, explain shows %q", got, ex.FirewallIPv4)
	}
	if got := k.Netfilter.Batches(p.Netns, firewall.IPv6); !slices.Equal(got, []string{ex.FirewallIPv6}) {
		t.Errorf("IPv6 rules applied %q, explain shows %q", got, ex.FirewallIPv6)
	}
	if got := append([]string{"egressd"}, k.Egressd()[0].Plan.Args...); !slices.Equal(got, ex.Egressd) {
		t.Errorf("egressd started as %q, explain shows %q", got, ex.Egressd)
	}
	// The /30 is chosen at launch; explain shows the subnet's first.
	first, _ := pickPrefix(p.Uplink.Subnet, nil, 0)
	chosen := k.Link(p.Uplink.Link).HostAddr.Masked()
	nat := k.Netfilter.Batches("", firewall.IPv4)
	if len(nat) != 1 || strings.ReplaceAll(nat[0], chosen.String(), first.String()) != ex.Uplink {
		t.Errorf("uplink rules applied %q, explain shows %q", nat, ex.Uplink)
	}
}

// TestFakeKernelRefusesWhatTheKernelWould: the fake is strict where the
// lifecycle relies on the kernel being so.
func TestFakeKernelRefusesWhatTheKernelWould(t *testing.T) {
	k := NewFakeKernel()
	kern := k.Kernel
	if _, err := kern.Netns.Create("egs-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := kern.Netns.Create("egs-1"); err == nil {
		t.Error("a namespace created twice")
	}
	if err := kern.Links.AddVeth("", "egs-1", netip.MustParsePrefix("10.9.0.1/30"), "/run/netns/none"); err == nil {
		t.Error("a veth into no namespace")
	}
	if err := kern.Links.AddVeth("", "egs-1", netip.MustParsePrefix("10.9.0.1/30"), NetnsDir+"/egs-1"); err != nil {
		t.Fatal(err)
	}
	if err := kern.Links.AddVeth("", "egs-1", netip.MustParsePrefix("10.9.0.5/30"), NetnsDir+"/egs-1"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("a link taken over: %v", err)
	}
	if taken, _ := kern.Links.Taken(""); !slices.Contains(taken, netip.MustParsePrefix("10.9.0.0/30")) {
		t.Errorf("taken %v", taken)
	}
	if err := kern.FS.Mount("x", filepath.Join(t.TempDir(), "missing"), "tmpfs", 0, ""); err == nil {
		t.Error("a mount on nothing")
	}
	if err := kern.FS.Unmount(t.TempDir(), 0); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("unmount of nothing mounted: %v", err)
	}
	if err := kern.FS.Lchown(filepath.Join(t.TempDir(), "missing"), 1, 1); err == nil {
		t.Error("chown of nothing")
	}
	if _, err := kern.Egressd.Start(context.Background(), NetnsDir+"/egs-1", &EgressdPlan{Dir: t.TempDir()}, func(io.Reader) {}); err == nil {
		t.Error("egressd started without its binary bound")
	}
}

// TestLifecyclePlanOnAnotherSandboxsPlaceholdersIsMadeAgain: sandbox b is
// planned while a's placeholders stand in the shared workspace (they are
// planned as what is there), and a ends before b is applied, removing
// them. Apply must not go on with mount sources that are gone (runc fails
// on them): it plans the container again, makes b's own placeholders, and
// the plan b holds is what was made.
func TestLifecyclePlanOnAnotherSandboxsPlaceholdersIsMadeAgain(t *testing.T) {
	k := NewFakeKernel()
	ws := t.TempDir()
	if err := os.Chmod(ws, 0o777); err != nil { // writable by the sandbox user
		t.Fatal(err)
	}
	cfg := fakeConfig(t, k, "standard", withMode("none"), policy.Setting{Key: "filesystem.mount_cwd", Values: []string{"true"}, Source: policy.Flag("--mount-cwd")})
	cfg.WorkspaceDir = ws
	if err := os.MkdirAll(cfg.StateDir, 0o711); err != nil {
		t.Fatal(err)
	}
	first, err := NewPlan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Container.Protected) == 0 {
		t.Fatal("no protected paths planned in the workspace")
	}
	a, releaseA := sandboxStateDir(t, cfg.StateDir, "egs-0000000a")
	if err := acquirePlaceholders(cfg.StateDir, a, first.Container.Protected); err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(cfg) // on a's placeholders
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(p.Container.Protected, func(pp specconv.ProtectedPath) bool { return pp.How == specconv.ProtectPlaceholder }) {
		t.Fatal("planned a placeholder where a's stands")
	}
	if err := releasePlaceholders(cfg.StateDir, a); err != nil {
		t.Fatal(err)
	}
	releaseA()
	if err := os.RemoveAll(a); err != nil {
		t.Fatal(err)
	}

	s, err := Apply(context.Background(), p)
	if err != nil {
		t.Fatalf("Apply after a's placeholders went: %v", err)
	}
	if !slices.ContainsFunc(s.Plan().Container.Protected, func(pp specconv.ProtectedPath) bool { return pp.How == specconv.ProtectPlaceholder }) {
		t.Error("the plan b holds was not made again")
	}
	checkApplied(t, k, s)
	for _, pp := range s.Plan().Container.Protected {
		if _, err := os.Lstat(pp.Host); err != nil {
			t.Errorf("protected path %s: %v", pp.Path, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if left := listNames(t, ws); len(left) != 0 {
		t.Errorf("the workspace holds %v after b ended", left)
	}
	checkNothingLeft(t, k, cfg.StateDir)
}

// TestLifecycleStateDirectoryThatCannotBeClaimed: a state root that is no
// directory fails the launch saying so; a directory being born under the
// id, or one left with the id's name, makes the id taken; none of them is
// touched, and nothing is made in the kernel.
func TestLifecycleStateDirectoryThatCannotBeClaimed(t *testing.T) {
	k := NewFakeKernel()
	cfg := fakeConfig(t, k, "strict", withMode("none"))
	cfg.ID = "egs-00beef00"
	if err := os.WriteFile(filepath.Join(filepath.Dir(cfg.StateDir), "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	asFile := cfg
	asFile.StateDir = filepath.Join(filepath.Dir(cfg.StateDir), "file", "state")
	if _, err := Create(context.Background(), asFile); err == nil || !strings.Contains(err.Error(), "creating") {
		t.Errorf("a state root under a file: %v", err)
	}
	for _, name := range []string{".new-" + cfg.ID, cfg.ID} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, name, "kept"), 0o700); err != nil {
			t.Fatal(err)
		}
		p, err := NewPlan(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Apply(context.Background(), p); !errors.Is(err, errIDTaken) {
			t.Errorf("with %s there: %v, want the id taken", name, err)
		}
		if _, err := os.Stat(filepath.Join(cfg.StateDir, name, "kept")); err != nil {
			t.Errorf("%s was touched: %v", name, err)
		}
		if err := os.RemoveAll(filepath.Join(cfg.StateDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	checkNothingLeft(t, k, cfg.StateDir)
}

// TestLifecycleCommandCannotRunBeforeTheFirewall: the runtime creates the
// container while the firewall, the uplink and egressd come up, but the
// command starts only once all of them are in force; when one of them
// fails, the created container is destroyed and the command never ran.
func TestLifecycleCommandCannotRunBeforeTheFirewall(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail error // the firewall's install
	}{
		{name: "setup succeeds"},
		{name: "firewall fails", fail: errors.New("injected firewall failure")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := NewFakeKernel()
			var ran atomic.Int32
			var missing []string // what was not in force when the command ran
			k.Command = func(p *FakeProcess, stdio Stdio) int {
				ran.Add(1)
				if !slices.Contains(k.Netfilter.Namespaces(), p.Netns) {
					missing = append(missing, "the firewall")
				}
				if l := k.Link(p.ID); l == nil || !l.Up {
					missing = append(missing, "the uplink")
				}
				if eg := k.Egressd(); len(eg) != 1 || eg[0].NsPath != p.Netns || eg[0].stopped() {
					missing = append(missing, "egressd")
				}
				return 0
			}
			cfg := fakeConfig(t, k, "standard")
			cfg.ID = "egs-0a1b2c3d"
			// The firewall's install waits until the container exists:
			// the two overlap, and a container that could run before
			// its firewall would do so now.
			var once sync.Once
			k.Netfilter.Fail = func(op, ns string, f firewall.Family) error {
				if op != "restore" || ns == "" {
					return nil
				}
				var err error
				once.Do(func() {
					deadline := time.Now().Add(5 * time.Second)
					for k.Container(cfg.ID) == nil && time.Now().Before(deadline) {
						time.Sleep(time.Millisecond)
					}
					c := k.Container(cfg.ID)
					if c == nil {
						t.Error("the container was not created while the firewall went in")
						return
					}
					select {
					case <-c.Started():
						t.Error("the container started before its firewall was installed")
					case <-time.After(20 * time.Millisecond):
					}
					err = tc.fail
				})
				return err
			}
			s, err := Create(context.Background(), cfg)
			if tc.fail != nil {
				if err == nil || !strings.Contains(err.Error(), tc.fail.Error()) {
					t.Errorf("Create = %v, want the firewall's failure", err)
				}
				if s != nil {
					s.Close()
				}
				if slices.ContainsFunc(k.Ops(), func(o string) bool { return strings.HasPrefix(o, "runtime.start") }) {
					t.Errorf("the container was started: %q", k.Ops())
				}
				if ran.Load() != 0 {
					t.Error("the command ran")
				}
				checkNothingLeft(t, k, cfg.StateDir)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res, err := s.Run(context.Background(), Stdio{}); err != nil || res.ExitCode != 0 {
				t.Errorf("Run = %+v, %v", res, err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if ran.Load() != 1 || len(missing) > 0 {
				t.Errorf("the command ran %d times, without %v", ran.Load(), missing)
			}
			checkNothingLeft(t, k, cfg.StateDir)
		})
	}
}

// TestLifecycleTeardownStepFailingLeavesOnlyItsOwn: the teardown's steps
// run at once; one that fails (the runtime's delete, the veth's, the
// namespace's, an unmount) leaves what it removes and says so, and every
// other step still removes all of its own.
func TestLifecycleTeardownStepFailingLeavesOnlyItsOwn(t *testing.T) {
	for _, tc := range []struct {
		fail    string   // the operation that fails (a prefix)
		left    []string // what may be left (prefixes of Leftovers)
		running bool     // the command still runs at the teardown
		noErr   bool     // the failure is no error: what it would do is done otherwise
	}{
		{fail: "runtime.delete", left: []string{"container "}},
		{fail: "runtime.delete", left: []string{"container "}, running: true},
		// The namespace stays: its veth is deleted explicitly instead.
		{fail: "netns.remove", left: []string{"namespace ", `rules in namespace "/run/netns/`}},
		{fail: "fs.unmount ", left: []string{"mount "}},
	} {
		name := tc.fail
		if tc.running {
			name += " running"
		}
		t.Run(name, func(t *testing.T) {
			k := NewFakeKernel()
			if tc.running {
				k.Command = func(p *FakeProcess, stdio Stdio) int { <-p.Killed(); return 137 }
			}
			s, done := runInBackground(t, k, fakeConfig(t, k, "standard"), tc.running)
			if !tc.running {
				<-done
			}
			boom := errors.New("injected teardown failure")
			k.Fail = func(op string) error {
				if strings.HasPrefix(op, tc.fail) {
					return boom
				}
				return nil
			}
			err := s.Close()
			k.Fail = nil
			if tc.running {
				// The runtime's delete failed: nothing killed the command
				// but the namespace's removal (its processes, by pid).
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					t.Fatal("the command outlived the teardown")
				}
			}
			if !errors.Is(err, boom) && !tc.noErr || err != nil && tc.noErr {
				t.Errorf("Close = %v, want the injected failure: %v", err, !tc.noErr)
			}
			for _, l := range k.Leftovers() {
				if !slices.ContainsFunc(tc.left, func(p string) bool { return strings.HasPrefix(l, p) }) {
					t.Errorf("left %q, which no failing step holds (%s failed)", l, tc.fail)
				}
			}
			if eg := k.Egressd(); len(eg) != 1 || !eg[0].stopped() {
				t.Error("egressd still runs")
			}
		})
	}
}

// runInBackground creates the sandbox of cfg on k and runs it in a
// goroutine; with started, it returns once the container started. done
// is closed when Run returns.
func runInBackground(t *testing.T, k *FakeKernel, cfg Config, started bool) (*Sandbox, <-chan struct{}) {
	t.Helper()
	s, err := Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(context.Background(), Stdio{})
	}()
	if started {
		<-k.Container(s.ID()).Started() // created by Create
	}
	return s, done
}
