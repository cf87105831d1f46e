package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/internal/syncbuf"
	"github.com/egressd/egressd/policy"
	"github.com/google/go-cmp/cmp"
)

// TestPoolTenantsDenialsOutliveItsReleaseAndAreNoOneElses: the release
// hands the sandbox's audit stream to nobody, yet a tenant's answer, read
// after its release (execapi's Warm), lists what egressd denied it, up to
// the record written last; the next tenant's lists none of them.
func TestPoolTenantsDenialsOutliveItsReleaseAndAreNoOneElses(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	rec := `{"time":"2026-01-01T00:00:00Z","kind":"connect","target":"evil.test","port":443,"decision":"deny","reason":"no-allow-rule"}`
	// Written the moment before the release, as egressd's flush at the
	// reset writes what it held: the release reads the stream up to there
	// before it hands the stream on.
	a, _, err := w.run(w.tenant("a.test", "true"), func(l *Lease) { w.egressd(l.ID()).Audit(rec) })
	if err != nil {
		t.Fatal(err)
	}
	want := []Denial{{Kind: "connect", Outcome: "deny", Target: "evil.test", Port: 443, Reason: "no-allow-rule", Count: 1}}
	if d := cmp.Diff(want, a.Denials()); d != "" {
		t.Errorf("tenant A's denials after its release (-want +got):\n%s", d)
	}
	b, _, err := w.run(w.tenant("b.test", "true"), nil)
	if err != nil || b.ID() != a.ID() {
		t.Fatalf("tenant B: %v, sandbox %s (A had %s)", err, b.ID(), a.ID())
	}
	if d := b.Denials(); len(d) != 0 {
		t.Errorf("tenant B's denials hold tenant A's: %+v", d)
	}
	if d := cmp.Diff(want, a.Denials()); d != "" {
		t.Errorf("tenant A's denials after B's lease (-want +got):\n%s", d)
	}
}

// privateNetnsEnv marks the test process runInPrivateNetns started.
const privateNetnsEnv = "EGRESSD_TEST_IN_PRIVATE_NETNS"

// runInPrivateNetns runs the (top-level) test t again in a child test
// process in a network namespace of its own, and reports whether the
// caller is that child: the parent only waits for it and passes on its
// verdict. A pooled sandbox's uplink and NAT rules go into the
// launcher's namespace; there they go into one the test owns, with no
// route anywhere, which ends with the child.
func runInPrivateNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(privateNetnsEnv) == "1" {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), privateNetnsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("the test in a network namespace of its own: %v\n%s", err, out)
	}
	t.Logf("the test in a network namespace of its own:\n%s", out)
	return false
}

// plantingNetfilter is the kernel's netfilter, except that once armed
// for a namespace every conntrack flush there is followed by a conntrack
// entry put in with conntrack(8): a flow that comes back after every flush
// (firewall.FlushConntrack flushes again an entry that came back once), on
// the real kernel, just where a pool's release checks.
type plantingNetfilter struct {
	firewall.Netfilter
	mu    sync.Mutex
	armed string // a namespace's path
	err   error
}

func (p *plantingNetfilter) arm(ns string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armed = ns
}

func (p *plantingNetfilter) FlushConntrack(ns string) error {
	if err := p.Netfilter.FlushConntrack(ns); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.armed != ns {
		return nil
	}
	out, err := exec.Command("nsenter", "--net="+ns, "conntrack", "-I", "-p", "tcp", "-s", "10.200.0.2", "-d", "203.0.113.10",
		"--sport", "40000", "--dport", "80", "--state", "ESTABLISHED", "--timeout", "300", "-u", "SEEN_REPLY,ASSURED").CombinedOutput()
	if err != nil {
		p.err = fmt.Errorf("conntrack -I: %v: %s", err, out)
	}
	return nil
}

// launcherBinary builds the launcher, static (every sandbox's init).
func launcherBinary(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "launcher")
	build := exec.Command("go", "build", "-o", path, "github.com/egressd/egressd/cmd/launcher")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the launcher: %v\n%s", err, out)
	}
	return path
}

// TestPoolSandboxFailingAKernelCheckIsDestroyedNeverHandedOut: on the
// real kernel (runc, egressd, iptables, conntrack), a pooled sandbox in
// which, between a tenant's execution and the next acquire, a rule was
// added to its firewall, a process that is not egressd was left in its
// namespace, or a conntrack entry is there after the release's flush, is
// destroyed (Failed+1, a log line naming it) and never handed out; the
// next acquire gets a fresh sandbox whose checks pass.
func TestPoolSandboxFailingAKernelCheckIsDestroyedNeverHandedOut(t *testing.T) {
	requireRunc(t)
	requireRootNetns(t)
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Fatalf("conntrack(8) is missing (scripts/deps.sh installs it): %v", err)
	}
	if !runInPrivateNetns(t) {
		return
	}
	egressd, launcher := egressdBinary(t), launcherBinary(t)
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(rc, []byte("nameserver 192.0.2.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, ns string, nf *plantingNetfilter)
		want  string // in the log line
	}{
		{"rule added", func(t *testing.T, ns string, _ *plantingNetfilter) {
			if out, err := exec.Command("nsenter", "--net="+ns, "iptables", "-w", "-I", firewall.ChainOutput, "1", "-j", "ACCEPT").CombinedOutput(); err != nil {
				t.Fatalf("adding the rule: %v: %s", err, out)
			}
		}, firewall.ChainOutput},
		{"process left", func(t *testing.T, ns string, _ *plantingNetfilter) {
			stray := exec.Command("nsenter", "--net="+ns, "sleep", "120")
			if err := stray.Start(); err != nil {
				t.Fatal(err)
			}
			// The namespace's removal kills it; if it is not removed, so
			// does the test.
			t.Cleanup(func() { _ = stray.Process.Kill(); _ = stray.Wait() })
		}, "processes left"},
		{"conntrack entry after the flush", func(t *testing.T, ns string, nf *plantingNetfilter) { nf.arm(ns) }, "conntrack"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state, err := os.MkdirTemp("/run", "egressd-pool-test-")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(state, 0o711); err != nil { // egressd, its own user, passes through
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = os.Remove(filepath.Join(state, subnetLockName))
				if err := os.Remove(state); err != nil {
					t.Errorf("the state directory is not empty at the end: %v", err)
				}
			})
			nf := &plantingNetfilter{Netfilter: firewall.System()}
			k := HostKernel()
			k.Firewall = firewall.New(nf)
			var log syncbuf.Buffer
			tenant := func(allow string, args ...string) Config {
				return Config{Profile: resolveWith(t, "standard", "", policy.Setting{Key: "network.allow", Values: []string{allow}, Source: policy.Flag("--allow")}),
					Args: args, EgressdPath: egressd, Init: launcher, ResolvConf: rc, StateDir: state, Kernel: k}
			}
			p, err := NewPool(PoolConfig{Config: tenant("a.test", "true"), Size: 1, Logger: slog.New(slog.NewTextHandler(&log, nil))})
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			t.Cleanup(func() {
				if err := p.Close(); err != nil {
					t.Errorf("closing the pool: %v", err)
				}
				for _, id := range ids {
					if k.Netns.Exists(id) {
						t.Errorf("sandbox %s's namespace is left after the pool closed", id)
					}
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := p.Ready(ctx); err != nil {
				t.Fatal(err)
			}

			a, err := p.Acquire(ctx, tenant("a.test", "sh", "-c", "echo tenant-a"))
			if err != nil {
				t.Fatal(err)
			}
			id := a.ID()
			ids = append(ids, id)
			var out bytes.Buffer
			if res, err := a.Run(ctx, Stdio{Stdout: &out}); err != nil || res.ExitCode != 0 || out.String() != "tenant-a\n" {
				t.Fatalf("tenant A: %+v %v %q", res, err, out.String())
			}
			tc.plant(t, filepath.Join(NetnsDir, id), nf)
			relErr := a.Release()
			if nf.err != nil {
				t.Fatalf("planting: %v", nf.err)
			}
			var st PoolStats
			if !eventuallyTrue(func() bool { st = p.Stats(); return st.Failed == 1 && !k.Netns.Exists(id) }) {
				t.Fatalf("after the release (%v): stats %+v, namespace there %v; want the sandbox destroyed", relErr, st, k.Netns.Exists(id))
			}
			if line := logLine(log.String(), id); !strings.Contains(line, "destroyed") || !strings.Contains(line, tc.want) {
				t.Errorf("the log line of %s's destruction: %q, want one saying destroyed and %q\n%s", id, line, tc.want, log.String())
			}

			b, err := p.Acquire(ctx, tenant("b.test", "true"))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, b.ID())
			if b.ID() == id {
				t.Errorf("tenant B was handed %s, which failed its checks", id)
			}
			if res, err := b.Run(ctx, Stdio{}); err != nil || res.ExitCode != 0 {
				t.Errorf("tenant B: %+v %v", res, err)
			}
			if err := b.Release(); err != nil {
				t.Errorf("releasing tenant B's fresh sandbox: %v", err)
			}
			if st := p.Stats(); st.Failed != 1 || st.Warm != 2 {
				t.Errorf("stats after tenant B: %+v; want the fresh sandbox's checks passed (failed still 1)", st)
			}
		})
	}
}

// logLine is the first line of log naming id.
func logLine(log, id string) string {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, id) {
			return line
		}
	}
	return ""
}
