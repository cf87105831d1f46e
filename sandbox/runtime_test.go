package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/privtest"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func requireRootForContainers(t testing.TB) {
	t.Helper()
	privtest.Require(t, "mounts and runs containers")
}

func requireRunc(t testing.TB) *Runtime {
	t.Helper()
	requireRootForContainers(t)
	rt, err := NewRuntime("runc", "")
	if err != nil {
		t.Skipf("needs runc: %v", err)
	}
	return rt
}

// testID is a unique container id with the egt- prefix.
func containerTestID(t testing.TB) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "egt-" + hex.EncodeToString(b[:])
}

// mountsUnder lists mount points at or below dir (from mountinfo).
func mountsBelow(t testing.TB, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

// stateDir makes a private directory for one test sandbox and removes it
// at the end, refusing to (and failing the test) if anything is still
// mounted below it.
func containerStateDir(t testing.TB) string {
	t.Helper()
	base := "/run/egressd-test"
	if err := os.MkdirAll(base, 0o700); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(base, "egt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m := mountsBelow(t, dir); len(m) > 0 {
			t.Errorf("mounts left under %s: %v (not removing it)", dir, m)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
		_ = os.Remove(base) // only when no other test still uses it
	})
	return dir
}

// sandboxRun is one container run by runSandbox.
type sandboxRun struct {
	code           int
	stdout, stderr string
	err            error
}

// runSandbox runs args in a container built from p the way the launcher
// does (PrepareContainer: the host view, the user, the protected paths,
// the spec, the bundle; in a fresh network namespace in mode none) and
// cleans everything up.
func runSandbox(t *testing.T, rt *Runtime, p *policy.Profile, args []string, secrets []string) sandboxRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, id := prepareTestContainer(t, rt, Config{Profile: p, Args: args, Hostname: "egt-box",
		CallerEnv: []string{"TERM=dumb", "SECRET_TOKEN=nope"}})
	var stdout, stderr bytes.Buffer
	outW, errW := NewMasker(&stdout, secrets), NewMasker(&stderr, secrets)
	ex, err := rt.Run(ctx, id, c.Bundle, Stdio{Stdout: outW, Stderr: errW})
	_ = outW.Close()
	_ = errW.Close()
	return sandboxRun{code: ex.Code, stdout: stdout.String(), stderr: stderr.String(), err: err}
}

// prepareTestContainer makes cfg's container in a test state directory
// (PrepareContainer, no network namespace: mode none gets a fresh one) and
// removes it, and the container, when the test ends.
func prepareTestContainer(t testing.TB, rt *Runtime, cfg Config) (*Prepared, string) {
	t.Helper()
	dir := containerStateDir(t)
	id := containerTestID(t)
	if cfg.Profile.Network.Mode == policy.ModeFiltered {
		t.Fatal("prepareTestContainer: filtered mode needs the launcher's namespace")
	}
	c, err := PrepareContainer(context.Background(), cfg, id, dir, "")
	if c != nil {
		t.Cleanup(func() {
			if err := rt.Delete(context.Background(), id); err != nil {
				t.Errorf("Delete %s: %v", id, err)
			}
			if err := c.Cleanup(); err != nil {
				t.Errorf("container cleanup: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("PrepareContainer: %v", err)
	}
	return c, id
}

func offlineStrict(t *testing.T) *policy.Profile {
	t.Helper()
	p, err := policy.BuiltinProfile("strict")
	if err != nil {
		t.Fatal(err)
	}
	p.Network.Mode = policy.ModeNone // --net none: a fresh, empty namespace
	return p
}

// TestStrictSandboxIsConfined runs a shell in the strict profile and checks
// what it may and may not do: non-root, read-only root, writable /tmp,
// no new user namespace (THREATS G1), no capabilities.
func TestStrictSandboxIsConfined(t *testing.T) {
	rt := requireRunc(t)
	p := offlineStrict(t)
	script := `id -u; touch /x 2>&1; touch /tmp/ok && echo tmp-ok; unshare -U true 2>&1; ` +
		`grep -E '^Cap(Eff|Bnd|Prm|Amb):' /proc/self/status; grep NoNewPrivs /proc/self/status; ` +
		`cp /bin/true /tmp/t && /tmp/t 2>&1; ` +
		`cp /bin/true /sandbox/t && /sandbox/t && echo workspace-exec-ok; pwd; ` +
		`touch "$HOME/x" ~/.cache/x && echo home-ok "$HOME"; ` +
		`ls -A /run | wc -l | sed 's/^/run-entries=/'; ` +
		`grep nameserver /etc/resolv.conf; hostname; grep -c egt-box /etc/hosts | sed 's/^/hosts=/'; ` +
		`echo done`
	r := runSandbox(t, rt, p, []string{"/bin/sh", "-c", script}, nil)
	if r.err != nil || r.code != 0 {
		t.Fatalf("run: code %d, err %v\nstdout:\n%s\nstderr:\n%s", r.code, r.err, r.stdout, r.stderr)
	}
	t.Logf("output:\n%s", r.stdout)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if want := strconv.Itoa(policy.DefaultUID); lines[0] != want {
		t.Errorf("uid = %q, want %s", lines[0], want)
	}
	for _, want := range []string{
		"touch: cannot touch '/x': Read-only file system",
		"tmp-ok",
		"unshare: unshare failed: Operation not permitted",
		"CapEff:\t0000000000000000",
		"CapBnd:\t0000000000000000",
		"CapPrm:\t0000000000000000",
		"CapAmb:\t0000000000000000",
		"NoNewPrivs:\t1",
		"/tmp/t: Permission denied", // /tmp is noexec
		"workspace-exec-ok",
		"/sandbox",
		"home-ok /home/sandbox",
		"run-entries=0", // the host's /run (and this test's bundle in it) is hidden
		"nameserver 127.0.0.1",
		"egt-box",
		"hosts=1",
		"done",
	} {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, want) }) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(r.stdout, "SECRET_TOKEN") {
		t.Errorf("an environment variable the profile does not pass reached the sandbox")
	}
}

// TestUnshareRefusedBySeccompNotByAccident shows the strict run above
// refuses unshare because of its seccomp filter: the same sandbox without
// the filter can create a user namespace.
func TestUnshareRefusedBySeccompNotByAccident(t *testing.T) {
	rt := requireRunc(t)
	p := offlineStrict(t)
	p.Process.Seccomp = policy.SeccompUnconfined
	r := runSandbox(t, rt, p, []string{"/bin/sh", "-c", "unshare -U true 2>&1 && echo userns-ok"}, nil)
	if r.err != nil {
		t.Fatalf("run: %v\n%s%s", r.err, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "userns-ok") {
		t.Skipf("this kernel refuses user namespaces without seccomp too (%q); the strict test proves nothing more here", r.stdout)
	}
}

// TestBlockedCommandFailsForEveryProcess checks masking: a blocked command
// fails by name through a shell, by absolute path, and through env, while
// other commands still run.
func TestBlockedCommandFailsForEveryProcess(t *testing.T) {
	rt := requireRunc(t)
	if _, err := os.Stat("/usr/bin/curl"); err != nil {
		t.Skip("needs /usr/bin/curl on the host")
	}
	p := offlineStrict(t)
	p.Commands.Block = []string{"curl"}
	script := `sh -c curl; echo "sh=$?"; /usr/bin/curl; echo "abs=$?"; /bin/curl; echo "bin=$?"; ` +
		`env curl; echo "env=$?"; ls / >/dev/null && echo ls-ok`
	r := runSandbox(t, rt, p, []string{"/bin/sh", "-c", script}, nil)
	if r.err != nil {
		t.Fatalf("run: %v\n%s%s", r.err, r.stdout, r.stderr)
	}
	t.Logf("stdout:\n%sstderr:\n%s", r.stdout, r.stderr)
	// dash reports a command found but not executable with status 127.
	if !strings.Contains(r.stdout, "sh=126") && !strings.Contains(r.stdout, "sh=127") {
		t.Errorf("sh -c curl did not fail with 126/127")
	}
	for _, want := range []string{"abs=126", "bin=126", "env=126", "ls-ok"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	for _, want := range []string{"sh: 1: curl: Permission denied", "/usr/bin/curl: Permission denied", "env: 'curl': Permission denied"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
}

// TestSecretIsMaskedInContainerOutput runs a container that prints a
// secret byte by byte (so it crosses pipe writes) and checks it never
// reaches the output.
func TestSecretIsMaskedInContainerOutput(t *testing.T) {
	rt := requireRunc(t)
	p := offlineStrict(t)
	const secret = "s3cr3t-T0KEN-value"
	script := `for c in ` + strings.Join(strings.Split(secret, ""), " ") + `; do printf %s "$c"; sleep 0.01; done; echo; ` +
		`echo "again ` + secret + ` end" >&2`
	r := runSandbox(t, rt, p, []string{"/bin/sh", "-c", script}, []string{secret})
	if r.err != nil || r.code != 0 {
		t.Fatalf("run: code %d err %v", r.code, r.err)
	}
	if strings.Contains(r.stdout+r.stderr, secret) {
		t.Fatalf("secret leaked: stdout %q stderr %q", r.stdout, r.stderr)
	}
	if r.stdout != SecretMask+"\n" || r.stderr != "again "+SecretMask+" end\n" {
		t.Errorf("stdout %q stderr %q, want the secret masked", r.stdout, r.stderr)
	}
}

// TestWritableRootDoesNotChangeHost writes into a standard (writable root)
// sandbox and checks the host file system is untouched.
func TestWritableRootDoesNotChangeHost(t *testing.T) {
	rt := requireRunc(t)
	p, err := policy.BuiltinProfile("standard")
	if err != nil {
		t.Fatal(err)
	}
	p.Network.Mode = policy.ModeNone
	p.Process.User = policy.User{} // root, to be able to write /etc
	name := "/etc/" + containerTestID(t)
	r := runSandbox(t, rt, p, []string{"/bin/sh", "-c", "echo x > " + name + " && cat " + name + " && echo wrote"}, nil)
	if r.err != nil || !strings.Contains(r.stdout, "wrote") {
		t.Fatalf("run: code %d err %v out %q err %q", r.code, r.err, r.stdout, r.stderr)
	}
	if _, err := os.Stat(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("host %s after the sandbox wrote it: %v (want not exist)", name, err)
	}
}

// TestRunTimeoutKillsContainer checks that ending Run's context kills the
// container and reports the deadline.
func TestRunTimeoutKillsContainer(t *testing.T) {
	rt := requireRunc(t)
	p := offlineStrict(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, id := prepareTestContainer(t, rt, Config{Profile: p, Args: []string{"/bin/sleep", "60"}})
	bundle := c.Bundle
	runCtx, runCancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer runCancel()
	start := time.Now()
	ex, err := rt.Run(runCtx, id, bundle, Stdio{})
	code, took := ex.Code, time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Run error = %v, want deadline exceeded", err)
	}
	if code != 128+int(syscall.SIGKILL) {
		t.Errorf("exit code = %d, want %d (killed)", code, 128+int(syscall.SIGKILL))
	}
	if took > 10*time.Second {
		t.Errorf("Run took %v after a 1.5s deadline", took)
	}
}

// TestRuntimeReportsBadSpec checks that a spec the runtime refuses is an
// error with the runtime's message, not a plain exit code.
func TestRuntimeReportsBadSpec(t *testing.T) {
	rt := requireRunc(t)
	dir := containerStateDir(t)
	id := containerTestID(t)
	p := offlineStrict(t)
	env, _ := specconv.BuildEnv(p, specconv.DefaultHome, "", nil, nil, "")
	spec, err := specconv.BuildSpec(p, specconv.SpecOptions{Args: []string{"/bin/true"}, Env: env, RootfsDir: filepath.Join(dir, "missing-rootfs"), User: specconv.User{UID: policy.DefaultUID, GID: policy.DefaultGID}, CgroupsPath: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteBundle(dir, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Delete(context.Background(), id) })
	_, err = rt.Run(context.Background(), id, dir, Stdio{})
	if err == nil || !strings.Contains(err.Error(), "runc create "+id) {
		t.Errorf("Run with a missing rootfs: err = %v, want a runc error", err)
	}
}

func TestDeleteMissingContainerIsNotAnError(t *testing.T) {
	rt := requireRunc(t)
	if err := rt.Delete(context.Background(), containerTestID(t)); err != nil {
		t.Errorf("Delete of an unknown container: %v", err)
	}
	if _, err := rt.List(context.Background()); err != nil {
		t.Errorf("List: %v", err)
	}
}

func TestNewRuntime(t *testing.T) {
	if _, err := NewRuntime("docker", ""); err == nil || !strings.Contains(err.Error(), "unknown runtime") {
		t.Errorf("NewRuntime(docker) err = %v, want unknown runtime", err)
	}
	if _, err := exec.LookPath("crun"); err != nil {
		_, err := NewRuntime("crun", "")
		want := "runtime crun not found: install it or use --runtime runc"
		if err == nil || err.Error() != want {
			t.Errorf("NewRuntime(crun) err = %v, want %q", err, want)
		}
	}
	if _, err := NewRuntime("/nonexistent/runc", ""); err == nil {
		t.Error("NewRuntime of a missing path succeeded")
	}
	if _, err := NewRuntime("runc", "relative/root"); err == nil {
		t.Error("NewRuntime with a relative root succeeded")
	}
}

func TestContainerIDCannotBeAnOption(t *testing.T) {
	for _, id := range []string{"", "-rf", "--root=/", "a/b", "a b", strings.Repeat("a", 200)} {
		if err := checkID(id); err == nil {
			t.Errorf("checkID(%q) accepted", id)
		}
	}
	for _, id := range []string{"egt-1", "a", "A.b_c-9"} {
		if err := checkID(id); err != nil {
			t.Errorf("checkID(%q): %v", id, err)
		}
	}
}

func TestWriteBundleIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "b")
	p := offlineStrict(t)
	spec, err := specconv.BuildSpec(p, specconv.SpecOptions{Args: []string{"true"}, RootfsDir: "/r", User: specconv.User{UID: 100, GID: 100}})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteBundle(dir, spec); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, filepath.Join(dir, "config.json"): 0o600} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want {
			t.Errorf("%s mode %v, want %v", path, st.Mode(), want)
		}
	}
	if err := WriteBundle(dir, nil); err == nil {
		t.Error("WriteBundle(nil) succeeded")
	}
}

func TestRuntimeErrorsReadsJSONLog(t *testing.T) {
	f := filepath.Join(t.TempDir(), "log")
	log := `{"level":"info","msg":"starting"}
not json
{"level":"error","msg":"container_linux.go:380: starting container process caused: exec: \"nope\": executable file not found in $PATH"}
`
	if err := os.WriteFile(f, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got := runtimeErrors(f)
	if !strings.Contains(got, `exec: "nope": executable file not found`) || strings.Contains(got, "starting\n") {
		t.Errorf("runtimeErrors = %q", got)
	}
	if runtimeErrors(filepath.Join(t.TempDir(), "none")) != "" {
		t.Error("a missing log gave errors")
	}
}

// BenchmarkRuncRunTrue measures `runc run` of /bin/true with a minimal spec
// from the strict profile (fresh netns), rootfs prepared once. Run with
// -benchtime=10x; it reports the median.
func BenchmarkRuncRunTrue(b *testing.B) {
	requireRootForContainers(b)
	rt, err := NewRuntime("runc", "")
	if err != nil {
		b.Skip(err)
	}
	ctx := context.Background()
	p, _ := policy.BuiltinProfile("strict")
	p.Network.Mode = policy.ModeNone
	c, _ := prepareTestContainer(b, rt, Config{Profile: p, Args: []string{"/bin/true"}})
	var times []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := containerTestID(b)
		start := time.Now()
		ex, err := rt.Run(ctx, id, c.Bundle, Stdio{})
		times = append(times, time.Since(start))
		if err != nil || ex.Code != 0 {
			b.Fatalf("run: %d %v", ex.Code, err)
		}
		if err := rt.Delete(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "ms-median")
}

// seccompProbe prints "name=errno" (0: the call succeeded) for raw system
// calls, so high argument bits reach the kernel as given. x86_64 numbers.
const seccompProbe = `
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def sc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r == 0 and nr == 56:
        os._exit(0)
    if r < 0:
        return ctypes.get_errno()
    if nr == 41:
        os.close(r)
    elif nr == 56:
        os.waitpid(r, 0)
    return 0
SOCKET, CLONE, CLONE3 = 41, 56, 435
probes = [
    ("unix", SOCKET, 1, 1, 0),
    ("inet", SOCKET, 2, 1, 0),
    ("netlink", SOCKET, 16, 2, 0),
    ("vsock", SOCKET, 40, 1, 0),
    ("vsock-high-bits", SOCKET, (1 << 32) | 40, 1, 0),
    ("appletalk", SOCKET, 5, 2, 0),
    ("clone3", CLONE3, 0, 0),
    ("clone-newuser", CLONE, 0x10000000 | 17, 0, 0, 0, 0),
]
for name, nr, *args in probes:
    print("%s=%d" % (name, sc(nr, *args)))
`

// TestSeccompRefusesSocketFamiliesAndUserNamespaces runs raw system calls
// under each built-in filter (THREATS F4, F5, G1): non-IP socket families,
// including a domain with high bits set that the kernel truncates to
// AF_VSOCK, clone3 (ENOSYS, so libc falls back to clone) and clone with
// CLONE_NEWUSER. The unconfined row shows the kernel alone would allow them.
func TestSeccompRefusesSocketFamiliesAndUserNamespaces(t *testing.T) {
	rt := requireRunc(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the probe uses x86_64 system call numbers")
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("needs python3 on the host")
	}
	const (
		ok     = "0"
		eperm  = "1"
		enosys = "38"
	)
	tests := []struct {
		seccomp string
		want    map[string]string // probe → errno; absent: anything but EPERM
	}{
		{policy.SeccompStrict, map[string]string{"unix": ok, "inet": ok, "netlink": eperm, "vsock": eperm,
			"vsock-high-bits": eperm, "appletalk": eperm, "clone3": enosys, "clone-newuser": eperm}},
		{policy.SeccompModerate, map[string]string{"unix": ok, "inet": ok, "netlink": ok, "vsock": eperm,
			"vsock-high-bits": eperm, "appletalk": eperm, "clone3": enosys, "clone-newuser": eperm}},
		{policy.SeccompUnconfined, map[string]string{"unix": ok, "inet": ok, "netlink": ok}},
	}
	for _, tc := range tests {
		t.Run(tc.seccomp, func(t *testing.T) {
			p := offlineStrict(t)
			p.Process.Seccomp = tc.seccomp
			r := runSandbox(t, rt, p, []string{"python3", "-c", seccompProbe}, nil)
			if r.err != nil || r.code != 0 {
				t.Fatalf("probe: code %d err %v\n%s%s", r.code, r.err, r.stdout, r.stderr)
			}
			got := map[string]string{}
			for line := range strings.SplitSeq(strings.TrimSpace(r.stdout), "\n") {
				k, v, _ := strings.Cut(line, "=")
				got[k] = v
			}
			for probe, want := range tc.want {
				if got[probe] != want {
					t.Errorf("%s: errno %s, want %s", probe, got[probe], want)
				}
			}
			if tc.seccomp == policy.SeccompUnconfined {
				for _, probe := range []string{"vsock", "vsock-high-bits", "clone3"} {
					if got[probe] == eperm || got[probe] == enosys {
						t.Errorf("%s: errno %s without a filter: the filtered rows prove nothing", probe, got[probe])
					}
				}
			}
			t.Logf("%s: %v", tc.seccomp, got)
		})
	}
}

// TestOpenProfileRunsOnTheHostNetwork runs the open profile (host network,
// root, writable root, no seccomp): still no capabilities and its own pid
// namespace.
func TestOpenProfileRunsOnTheHostNetwork(t *testing.T) {
	rt := requireRunc(t)
	p, err := policy.BuiltinProfile("open")
	if err != nil {
		t.Fatal(err)
	}
	hostNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	r := runSandbox(t, rt, p, []string{"/bin/sh", "-c", "id -u; readlink /proc/self/ns/net; grep CapEff /proc/self/status; echo $$"}, nil)
	if r.err != nil || r.code != 0 {
		t.Fatalf("run: code %d err %v\n%s%s", r.code, r.err, r.stdout, r.stderr)
	}
	want := "0\n" + hostNS + "\nCapEff:\t0000000000000000\n1\n"
	if r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
}

// TestChooseRuntimeTakesCrunOnlyWhereItRuns: without --runtime, crun runs
// the containers where it is installed and the host's cgroup layout is
// one it accepts; runc otherwise, and the choice says why.
func TestChooseRuntimeTakesCrunOnlyWhereItRuns(t *testing.T) {
	installed := func(names ...string) func(string) (string, error) {
		return func(name string) (string, error) {
			if slices.Contains(names, name) {
				return "/usr/bin/" + name, nil
			}
			return "", exec.ErrNotFound
		}
	}
	hybrid := cgroupMode{Hybrid: true, HybridControllers: []string{"hugetlb"}}
	takes := func(max string) func(string) (string, error) {
		return func(string) (string, error) { return max, nil }
	}
	old := func(string) (string, error) { return "", errors.New("exit status 1: unknown command features") }
	for _, tc := range []struct {
		name      string
		lookPath  func(string) (string, error)
		mode      cgroupMode
		ociMax    func(string) (string, error)
		want, why string
		err       string
	}{
		{"v2 with crun", installed("runc", "crun"), cgroupMode{Unified: true}, takes("1.3.0"), "crun",
			"crun is installed, runs on this host's cgroups (v2, unified) and takes spec " + specs.Version, ""},
		{"v1 with crun", installed("runc", "crun"), cgroupMode{}, takes("1.4.0"), "crun", "(v1)", ""},
		{"hybrid, v2 without controllers", installed("runc", "crun"), cgroupMode{Hybrid: true}, takes("1.3.1"), "crun", "no controller on v2", ""},
		{"hybrid, controllers on v2", installed("runc", "crun"), hybrid, takes("1.3.0"), "runc",
			`crun is installed but refuses this host's cgroup layout (hybrid v1 + v2, controllers hugetlb on v2; crun: "cgroups in hybrid mode not supported`, ""},
		{"crun of an older spec", installed("runc", "crun"), cgroupMode{Unified: true}, takes("1.2.0"), "runc",
			"crun is installed but runs specs up to 1.2.0, and the spec is " + specs.Version, ""},
		{"crun of a pre-release", installed("runc", "crun"), cgroupMode{Unified: true}, takes(specs.Version + "-dev"), "runc", "runs specs up to", ""},
		{"crun without features", installed("runc", "crun"), cgroupMode{Unified: true}, old, "runc", "cannot say which spec versions it runs", ""},
		{"no crun", installed("runc"), cgroupMode{Unified: true}, takes("1.3.0"), "runc", "crun is not installed", ""},
		{"crun only, hybrid", installed("crun"), hybrid, takes("1.3.0"), "", "", "no OCI runtime found: install runc (or crun), or name one with --runtime PATH (crun is installed but refuses"},
		{"none", installed(), cgroupMode{Unified: true}, takes("1.3.0"), "", "", "no OCI runtime found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, err := chooseRuntime("/state", tc.lookPath, tc.mode, tc.ociMax)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("chooseRuntime = %+v, %v; want an error saying %q", rt, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rt.Name != tc.want || rt.Path != "/usr/bin/"+tc.want || rt.Root != "/state" || !strings.Contains(rt.Why, tc.why) {
				t.Errorf("chooseRuntime = %+v, want %s because %q", rt, tc.want, tc.why)
			}
		})
	}
	// This host: whatever it chose, it says why; crun only if it runs here.
	rt, err := NewRuntime("", "")
	if err != nil {
		t.Skipf("no runtime on this host: %v", err)
	}
	if rt.Why == "" || (rt.Name == "crun" && hostCgroupMode().crunRefusal() != "") {
		t.Errorf("NewRuntime() = %+v on a host of cgroups %s", rt, hostCgroupMode())
	}
}
