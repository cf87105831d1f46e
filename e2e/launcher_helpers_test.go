package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/e2e/fakenet"
	"github.com/egressd/egressd/internal/syncbuf"
	"github.com/egressd/egressd/sandbox"
)

// The launcher binary, built once for the suite into a directory removed
// by TestLauncher's cleanup.
var launcherBuild struct {
	once sync.Once
	bin  string
	err  error
}

// launcherBinary builds cmd/launcher once for the whole run, beside the
// egressd binary TestMain built (a test's TempDir would vanish after the
// first of several -count runs). $EGRESSD_E2E_LAUNCHER names another
// launcher binary to test instead (the one before a change, to see an
// attack test fail there).
func launcherBinary(t *testing.T) string {
	t.Helper()
	launcherBuild.once.Do(func() {
		if bin := os.Getenv("EGRESSD_E2E_LAUNCHER"); bin != "" {
			launcherBuild.bin = bin
			return
		}
		launcherBuild.bin = filepath.Join(filepath.Dir(egressdBin), "launcher")
		// Static, as `make build`: the launcher is also every sandbox's init.
		build := exec.Command("go", "build", "-o", launcherBuild.bin, "github.com/egressd/egressd/cmd/launcher")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := build.CombinedOutput()
		if err != nil {
			launcherBuild.err = fmt.Errorf("building the launcher: %v\n%s", err, out)
		}
	})
	if launcherBuild.err != nil {
		t.Fatal(launcherBuild.err)
	}
	return launcherBuild.bin
}

// launcherRunTimeout bounds one launcher run; every command the tests run
// has its own, shorter bound (curl --max-time, --timeout), so reaching it is
// a bug.
const launcherRunTimeout = 90 * time.Second

// lworld is a fake internet with a workspace directory, for launcher runs.
type lworld struct {
	t  *testing.T
	w  *fakenet.World
	ws string // host directory mounted at /sandbox (--mount-cwd)
	// before is the world's ruleset before any launcher ran in it.
	before string
}

// newLauncherWorld starts a world with the standard DNS records (setRecords)
// and a workspace holding the world's CA (/sandbox/ca.pem in the sandbox).
// When the test ends, before the world goes, it checks that the launcher
// left nothing in the world: no rule, chain or link of its own.
func newLauncherWorld(t *testing.T) *lworld {
	t.Helper()
	w := fakenet.Start(t)
	setRecords(w)
	ws := t.TempDir()
	// The sandbox user (policy.DefaultUID, no host account) writes here,
	// through the bind mount.
	if err := os.Chmod(ws, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ws, "ca.pem"), w.CAPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	lw := &lworld{t: t, w: w, ws: ws}
	lw.before = worldRules(t, w)
	t.Cleanup(func() {
		if after := worldRules(t, w); after != lw.before {
			t.Errorf("the launcher left rules in the world:\nbefore:\n%s\nafter:\n%s", lw.before, after)
		}
		for _, l := range sandboxLinks(func() string { out, _, _ := w.Run(t, "ip", "-o", "link", "show"); return out }) {
			t.Errorf("the launcher left a link in the world: %s", l)
		}
	})
	return lw
}

// sandboxLinks lists the sandboxes' veths (named by their ids) in `ip -o
// link show` output. The launcher returns only once its sandbox's veth is
// gone (taken by the kernel with the namespace, or deleted), so any one
// listed after a launcher returned is left behind.
func sandboxLinks(show func() string) []string {
	var names []string
	for _, line := range strings.Split(show(), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"); strings.HasPrefix(name, sandbox.IDPrefix) {
			names = append(names, name)
		}
	}
	return names
}

// worldRules is the world's iptables-save and ip6tables-save output without
// comments, counters, and the empty tables and built-in chains that merely
// using iptables-nft creates: what remains are chains and rules.
func worldRules(t *testing.T, w *fakenet.World) string {
	t.Helper()
	return savedRules(t, "the world", func(tool string) (string, string, int) { return w.Run(t, tool) })
}

// savedRules is worldRules for any namespace: run runs a tool there
// (where names the namespace in errors).
func savedRules(t *testing.T, where string, run func(tool string) (stdout, stderr string, code int)) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, errOut, code := run(tool)
		if code != 0 {
			t.Fatalf("%s in %s: exit %d: %s", tool, where, code, errOut)
		}
		for _, line := range strings.Split(out, "\n") {
			switch {
			case line == "", strings.HasPrefix(line, "#"), strings.HasPrefix(line, "*"), line == "COMMIT":
				continue
			case strings.HasPrefix(line, ":"):
				f := strings.Fields(line)
				if len(f) >= 2 && f[1] == "ACCEPT" { // a built-in chain's default policy
					continue
				}
				line = strings.Join(f[:min(2, len(f))], " ")
			}
			b.WriteString(tool + " " + line + "\n")
		}
	}
	return b.String()
}

// lopts are the less common knobs of a launcher run.
type lopts struct {
	// stdin feeds the command; nil means /dev/null.
	stdin io.Reader
	// env is added to the launcher's environment.
	env []string
	// noDefaults leaves out the flags every run gets (--egressd,
	// --upstream-dns, --mount-cwd, --audit-log).
	noDefaults bool
	// noMount leaves out --mount-cwd.
	noMount bool
	// started, if set, is called with the launcher's pid once it started.
	started func(pid int)
	// stdout, if set, receives the command's output as it streams.
	stdout io.Writer
	// stderr, if set, receives the launcher's stderr as it streams.
	stderr io.Writer
	// dir is the launcher's working directory (what --mount-cwd mounts);
	// "" means the world's workspace.
	dir string
	// upstream replaces the world's resolver as --upstream-dns.
	upstream string
	// wrap, if set, is a command the launcher runs under: wrap..., the
	// launcher, its arguments (it must exec them, keeping the pid).
	wrap []string
}

// lresult is one launcher run.
type lresult struct {
	stdout, stderr string
	code           int
	took           time.Duration
	audit          []launcherAudit
	// auditRaw is the audit log as the launcher wrote it.
	auditRaw string
}

func (r lresult) String() string {
	return fmt.Sprintf("exit %d after %s\nstdout: %s\nstderr: %s", r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

// launcherAudit is one audit record the launcher copied (--audit-log).
type launcherAudit struct {
	Kind     string   `json:"kind"`
	QType    string   `json:"qtype"`
	Target   string   `json:"target"`
	Port     uint16   `json:"port"`
	Decision string   `json:"decision"`
	Reason   string   `json:"reason"`
	Rule     string   `json:"rule"`
	Source   string   `json:"rule_source"`
	Addrs    []string `json:"addrs"`
	Client   string   `json:"client"`
	Name     string   `json:"name"`
	Path     string   `json:"path"`
	Error    string   `json:"error"`
}

// run runs `launcher run` inside the world with the suite's egressd, the
// world's resolver as upstream DNS, the workspace mounted at /sandbox and
// an audit log, then args (launcher flags, "--", the command).
func (lw *lworld) run(args ...string) lresult {
	lw.t.Helper()
	return lw.runWith(lopts{}, args...)
}

func (lw *lworld) runWith(o lopts, args ...string) lresult {
	t := lw.t
	t.Helper()
	bin := launcherBinary(t)
	auditPath := filepath.Join(t.TempDir(), "audit.jsonl")
	full := []string{"run"}
	if !o.noDefaults {
		upstream := dnsAddr.String()
		if o.upstream != "" {
			upstream = o.upstream
		}
		full = append(full, "--egressd", egressdBin, "--upstream-dns", upstream, "--audit-log", auditPath)
		if !o.noMount {
			full = append(full, "--mount-cwd")
		}
	}
	full = append(full, args...)
	ctx, cancel := context.WithTimeout(context.Background(), launcherRunTimeout)
	defer cancel()
	if len(o.wrap) > 0 {
		full = append(append(slices.Clone(o.wrap[1:]), bin), full...)
		bin = o.wrap[0]
	}
	cmd := lw.w.Exec(ctx, bin, full...)
	cmd.Dir = lw.ws
	if o.dir != "" {
		cmd.Dir = o.dir
	}
	cmd.Env = append(cleanEnv(), o.env...)
	// On timeout: SIGTERM, so the launcher tears its sandbox down; SIGKILL
	// only if it does not finish that.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 20 * time.Second
	var out, errOut syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if o.stdout != nil {
		cmd.Stdout = io.MultiWriter(&out, o.stdout)
	}
	if o.stderr != nil {
		cmd.Stderr = io.MultiWriter(&errOut, o.stderr)
	}
	cmd.Stdin = o.stdin
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the launcher: %v", err)
	}
	if o.started != nil {
		o.started(cmd.Process.Pid)
	}
	_ = cmd.Wait()
	r := lresult{stdout: out.String(), stderr: errOut.String(), took: time.Since(start), code: -1}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		t.Fatalf("launcher %s: killed after %s\n%s", strings.Join(args, " "), launcherRunTimeout, r)
	}
	if data, err := os.ReadFile(auditPath); err == nil {
		r.auditRaw = string(data)
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			var rec launcherAudit
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				t.Errorf("audit log line %q: %v", sc.Text(), err)
				continue
			}
			r.audit = append(r.audit, rec)
		}
	}
	return r
}

// sandboxPython is the python3 inside sandboxes: the system one, which the
// sandbox user can reach (the suite's pythonBin may live under /root).
const sandboxPython = "/usr/bin/python3"

// curlArgs is curl trusting the world's CA (in the workspace), bounded.
const curlArgs = "curl -sS --max-time 5 --cacert /sandbox/ca.pem"

// replies parses the fake servers' JSON replies among the lines of out.
func replies(out string) []fakenet.HTTPRequest {
	var rs []fakenet.HTTPRequest
	for _, line := range strings.Split(out, "\n") {
		if r, err := fakenet.ParseReply([]byte(line)); err == nil {
			rs = append(rs, r)
		}
	}
	return rs
}

// marker returns the value printed by `echo NAME=VALUE` in out, or "".
func marker(out, name string) string {
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+"="); ok {
			return v
		}
	}
	return ""
}

// sandboxOf returns the id of the sandbox whose launcher is pid (the
// launcher runs through nsenter, which execs it: same pid).
func sandboxOf(pid int) (id string, ok bool) { return sandbox.OfLauncher(pid) }

// processesInNetns lists pid → comm of the processes in the namespace
// bind-mounted at path.
func processesInNetns(path string) map[int]string { return sandbox.ProcessesInNetns(path) }

// launcherLeftovers lists what the launcher's sandboxes left on the
// machine: namespaces, state directories, containers.
func launcherLeftovers(t *testing.T) []string {
	t.Helper()
	var left []string
	ents, _ := os.ReadDir(sandbox.NetnsDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), sandbox.IDPrefix) {
			left = append(left, "netns "+e.Name())
		}
	}
	ents, _ = os.ReadDir(sandbox.DefaultStateDir)
	for _, e := range ents {
		// A sandbox's directory, or the record of a protected directory's
		// placeholders (protect-HASH.json, .lock).
		if strings.Contains(e.Name(), sandbox.IDPrefix) || strings.HasPrefix(e.Name(), "protect-") {
			left = append(left, "state "+e.Name())
		}
	}
	for _, id := range runcContainers(t) {
		if strings.HasPrefix(id, sandbox.IDPrefix) {
			left = append(left, "container "+id)
		}
	}
	for _, l := range sandboxLinks(func() string { out, _ := exec.Command("ip", "-o", "link", "show").Output(); return string(out) }) {
		left = append(left, "link "+l)
	}
	return left
}

// runcContainers lists the ids of runc's containers (its default root).
func runcContainers(t *testing.T) []string {
	t.Helper()
	// runc list has failed once (exit 1, a make test run while other
	// work made and removed containers on the machine): it is asked
	// again, a few times, before its failure counts, and what it said is
	// kept for the message.
	var out []byte
	var err error
	for try := 0; try < 5; try++ {
		var stderr bytes.Buffer
		cmd := exec.Command("runc", "list", "--format", "json")
		cmd.Stderr = &stderr
		if out, err = cmd.Output(); err == nil {
			break
		}
		err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("runc list: %v", err)
	}
	var cs []struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(bytes.TrimSpace(out), &cs)
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return ids
}

// worldHTTPTo counts the world's HTTP log entries answered on addr.
func worldHTTPTo(w *fakenet.World, addr netip.Addr) int {
	n := 0
	for _, r := range w.HTTPLog() {
		if r.Local.Addr() == addr {
			n++
		}
	}
	return n
}
