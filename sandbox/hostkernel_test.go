package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/internal/ptytest"
	"github.com/egressd/egressd/internal/syncbuf"
	"golang.org/x/sys/unix"
)

// The host kernel's adapters, as far as they run without privilege: what
// they do with what the kernel answers. The privileged tests drive them
// against the kernel itself.

// scriptRuntime is a runtime whose binary is a shell script answering
// runc's short commands: delete and kill log their arguments, list prints
// states.
func scriptRuntime(t *testing.T, body string) (*Runtime, string) {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	path := filepath.Join(dir, "runc")
	script := "#!/bin/sh\necho \"$@\" >> " + log + "\n" + body
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	rt, err := NewRuntime(path, "/state")
	if err != nil {
		t.Fatal(err)
	}
	return rt, log
}

func TestRuntimeShortCommands(t *testing.T) {
	ctx := context.Background()
	rt, log := scriptRuntime(t, `case "$3" in
delete) case "$5" in egt-gone) echo "container does not exist" >&2; exit 1;; egt-broken) echo "cannot delete: busy" >&2; exit 1;; esac;;
list) echo '[{"id":"egt-1","pid":42,"status":"running","bundle":"/b","created":"2026-01-01T00:00:00Z"}]';;
esac`)
	if err := rt.Delete(ctx, "egt-gone"); err != nil {
		t.Errorf("Delete of a container the runtime does not know: %v", err)
	}
	if err := rt.Delete(ctx, "egt-broken"); err == nil || !strings.Contains(err.Error(), "cannot delete: busy") {
		t.Errorf("Delete that fails: %v, want the runtime's words", err)
	}
	if err := rt.Kill(ctx, "egt-1", syscall.SIGTERM); err != nil {
		t.Errorf("Kill: %v", err)
	}
	states, err := rt.List(ctx)
	if err != nil || len(states) != 1 || states[0].ID != "egt-1" || states[0].Pid != 42 {
		t.Errorf("List = %+v, %v", states, err)
	}
	for _, bad := range []string{"-rf", "a b"} {
		if rt.Delete(ctx, bad) == nil || rt.Kill(ctx, bad, syscall.SIGKILL) == nil {
			t.Errorf("an id %q reached the runtime", bad)
		}
	}
	calls, _ := os.ReadFile(log)
	want := "--root /state delete --force egt-gone\n--root /state delete --force egt-broken\n--root /state kill egt-1 15\n--root /state list --format json\n"
	if string(calls) != want {
		t.Errorf("runtime called with\n%s\nwant\n%s", calls, want)
	}

	garbled, _ := scriptRuntime(t, `echo 'not json'`)
	if _, err := garbled.List(ctx); err == nil {
		t.Error("List of garbage succeeded")
	}
	// The host's Containers skips runc's delete where runc has no record,
	// and runs it otherwise.
	if err := (hostContainers{}).Delete(ctx, &Runtime{Name: "runc", Path: "/nonexistent/runc"}, "egs-00000001"); err != nil {
		t.Errorf("delete of a container runc has no record of: %v", err)
	}
	if err := (hostContainers{}).Delete(ctx, rt, "egt-broken"); err == nil {
		t.Error("a failing delete of another state directory's container passed")
	}
}

func TestHostContainersStartRunsTheRuntime(t *testing.T) {
	// The fake runtime's shell may reap a child that exits before it
	// does itself; runc's container outlives runc.
	rt := fakeRuntime(t, `sleep 0.2; exit 4`)
	p, err := hostContainers{}.Create(context.Background(), rt, "egt-fake", t.TempDir(), Streams{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background(), Stdio{}); err != nil {
		t.Fatal(err)
	}
	if ex, err := p.Wait(context.Background()); err != nil || ex.Code != 4 {
		t.Errorf("Wait = %+v, %v", ex, err)
	}
	broken, _ := scriptRuntime(t, `echo "no cgroup for you" >&2; exit 1`)
	if p, err := (hostContainers{}).Create(context.Background(), broken, "egt-fake", t.TempDir(), Streams{}, nil); err == nil || p != nil {
		t.Errorf("Create with a failing runtime: %v, %v", p, err)
	}
}

// TestTerminalIsCopiedAndResized: the terminal's master end is copied to
// the caller's stdout, stdin reaches it, and a resize lands on it.
func TestTerminalIsCopiedAndResized(t *testing.T) {
	master, slave := ptytest.Open(t)
	resize := make(chan WindowSize, 1)
	var out syncbuf.Buffer
	in, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &Container{id: "egt-tty", master: master, done: make(chan struct{}), gate: make(chan struct{})}
	c.copyTerminal(Stdio{Stdin: in, Stdout: &out, Terminal: &Terminal{Size: WindowSize{Rows: 24, Cols: 80}, Resize: resize}})
	if rows, cols := termSize(t, slave); rows != 24 || cols != 80 {
		t.Errorf("initial size %dx%d", rows, cols)
	}
	resize <- WindowSize{Rows: 50, Cols: 132}
	deadline := time.Now().Add(5 * time.Second)
	for rows, _ := termSize(t, slave); rows != 50 && time.Now().Before(deadline); rows, _ = termSize(t, slave) {
		time.Sleep(time.Millisecond)
	}
	if rows, cols := termSize(t, slave); rows != 50 || cols != 132 {
		t.Errorf("size after the resize %dx%d", rows, cols)
	}
	if _, err := slave.Write([]byte("from the command\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := inW.Write([]byte("typed\n")); err != nil {
		t.Fatal(err)
	}
	got := ptytest.ReadUntil(t, slave, "typed", 5*time.Second)
	if !strings.Contains(got, "typed") {
		t.Errorf("stdin did not reach the terminal: %q", got)
	}
	for !strings.Contains(out.String(), "from the command") && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !strings.Contains(out.String(), "from the command") {
		t.Errorf("the terminal's output did not reach stdout: %q", out.String())
	}
	inW.Close()
	close(c.done)
	slave.Close()
	c.drain()
}

func termSize(t *testing.T, f *os.File) (rows, cols uint16) {
	var ws WindowSize
	ptytest.Control(t, f, func(fd int) error {
		w, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
		ws = WindowSize{Rows: w.Row, Cols: w.Col}
		return err
	})
	return ws.Rows, ws.Cols
}

// TestEgressdReadinessAndStop: the ready pipe's "ready" is readiness; an
// exit before it, a pipe closed without it, a timeout and the caller giving
// up are errors that say which; Stop ends the process (SIGTERM, then
// SIGKILL) and waits for its audit stream.
func TestEgressdReadinessAndStop(t *testing.T) {
	start := func(t *testing.T, script string) (*egressdProc, *os.File) {
		t.Helper()
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		e := &egressdProc{done: make(chan struct{}), auditDone: make(chan struct{}), stderr: newTailBuffer(1 << 10)}
		e.cmd = exec.Command("sh", "-c", script)
		e.cmd.ExtraFiles = []*os.File{w}
		e.cmd.Stderr = e.stderr
		if err := e.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		e.pid = e.cmd.Process.Pid
		go func() { e.waitErr = e.cmd.Wait(); close(e.done) }()
		close(e.auditDone)
		t.Cleanup(func() { e.Stop(); r.Close() })
		return e, r
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name, script, want string
		ctx                context.Context
	}{
		{"ready", `echo ready >&3; exec sleep 30`, "", ctx},
		{"exits first", `echo "bad policy" >&2; exit 2`, "exited before it was ready (exit status 2): bad policy", ctx},
		{"says something else", `echo nope >&3; exec 3>&-; exec sleep 30`, "closed its ready pipe without saying ready", ctx},
		{"never ready", `exec sleep 30`, "not ready after 200ms", ctx},
		{"caller gives up", `exec sleep 30`, "waiting for egressd: context canceled", cancelled()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, r := start(t, tc.script)
			err := e.waitReady(tc.ctx, r, 200*time.Millisecond)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("waitReady = %v, want %q", err, tc.want)
			}
			if e.Pid() != e.cmd.Process.Pid {
				t.Error("pid")
			}
		})
	}
	// Ignores SIGTERM (once it says ready: the trap is set): killed after
	// the grace.
	e, r := start(t, `trap '' TERM; echo ready >&3; exec sleep 30`)
	if err := e.waitReady(ctx, r, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := e.Stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took < egressdStopGrace {
		t.Errorf("Stop took %v: SIGKILL before the grace", took)
	}
	select {
	case <-e.Done():
		if e.Err() == nil {
			t.Error("a killed egressd with no exit error")
		}
	default:
		t.Error("still running after Stop")
	}
	if err := e.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func cancelled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// TestHostAdaptersFailClosedWithoutTheirNamespace: a namespace that is not
// there fails egressd's start and the uplink's steps, saying which.
func TestHostAdaptersFailClosedWithoutTheirNamespace(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-netns")
	dir := t.TempDir()
	_, err := hostEgressd{}.Start(context.Background(), missing, &EgressdPlan{Dir: dir, Args: []string{"serve"}}, func(io.Reader) {})
	if err == nil || !strings.Contains(err.Error(), "starting egressd") {
		t.Errorf("egressd in no namespace: %v", err)
	}
	if err := (hostLinks{}).AddVeth("", "egs-test", DefaultSubnet, missing); err == nil {
		t.Error("a veth into no namespace")
	}
	if err := (hostLinks{}).Raise(missing, "egs-test", missing, DefaultSubnet, DefaultSubnet.Addr()); err == nil {
		t.Error("raising a link in no namespace")
	}
	if _, err := (hostLinks{}).Taken(missing); err == nil {
		t.Error("the prefixes of no namespace")
	}
}

// TestHostLinksReadTheLaunchersNamespace: the prefixes in use are read from
// the kernel (every address's network, and routes), and a link that is not
// there is nothing to set down or delete.
func TestHostLinksReadTheLaunchersNamespace(t *testing.T) {
	taken, err := hostLinks{}.Taken("")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(taken, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr("127.0.0.1")) }) {
		t.Errorf("taken %v: lacks loopback's", taken)
	}
	for _, p := range taken {
		if p.Bits() == 0 || p != p.Masked() {
			t.Errorf("taken %v holds %v", taken, p)
		}
	}
	if err := (hostLinks{}).Down("", "egs-nolink0"); err != nil {
		t.Errorf("Down of a missing link: %v", err)
	}
	if err := (hostLinks{}).Delete("", "egs-nolink0"); err != nil {
		t.Errorf("Delete of a missing link: %v", err)
	}
	if _, ok := prefixOf(nil); ok {
		t.Error("prefixOf(nil)")
	}
}

// TestHostNamespacesFindWhatIsInside: the processes in a namespace are
// found by its identity (the test's own child here), a file that is no
// namespace has none, and a name is there or not.
func TestHostNamespacesFindWhatIsInside(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	procs := ProcessesInNetns("/proc/self/ns/net")
	if procs[cmd.Process.Pid] != "sleep" {
		t.Errorf("processes in the test's namespace lack its child: %v", procs)
	}
	if ProcessesInNetns(filepath.Join(t.TempDir(), "none")) != nil {
		t.Error("processes of no namespace")
	}
	if n := (hostNamespaces{}).Open("egs-ffffff00"); n.Ino != 0 || n.Path != NetnsDir+"/egs-ffffff00" {
		t.Errorf("Open of nothing: %+v", n)
	}
	if (hostNamespaces{}).Exists("egs-ffffff00") {
		t.Error("a namespace of nothing exists")
	}
}

// TestOfLauncherFindsTheSandboxOfAProcess: the state records say which
// sandbox a launcher process made.
func TestOfLauncherFindsTheSandboxOfAProcess(t *testing.T) {
	root := t.TempDir()
	for id, pid := range map[string]int{"egs-000000a1": 101, "egs-000000a2": 202} {
		os.MkdirAll(filepath.Join(root, id), 0o700)
		data, _ := json.Marshal(stateRecord{ID: id, LauncherPID: pid})
		os.WriteFile(filepath.Join(root, id, "state.json"), data, 0o600)
	}
	os.WriteFile(filepath.Join(root, "subnet.lock"), nil, 0o600)
	if id, ok := ofLauncher(root, 202); !ok || id != "egs-000000a2" {
		t.Errorf("ofLauncher(202) = %q, %v", id, ok)
	}
	if _, ok := ofLauncher(root, 303); ok {
		t.Error("a sandbox of a process that made none")
	}
}

// TestPrepareContainerMakesThePlannedContainer: the helper tests and
// benchmarks use makes the root, files and bundle the plan names, and its
// cleanup removes them.
func TestPrepareContainerMakesThePlannedContainer(t *testing.T) {
	k := NewFakeKernel()
	p := resolveWith(t, "strict", "", withMode("none"))
	dir := filepath.Join(t.TempDir(), "egs-00000abc")
	c, err := PrepareContainer(context.Background(), Config{Profile: p, Args: []string{"true"}, StateDir: filepath.Dir(dir), Kernel: k.Kernel}, "egs-00000abc", dir, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"bundle/config.json", "etc/passwd", "etc/group", "etc/resolv.conf", "etc/hosts"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if err := c.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if left := k.Leftovers(); len(left) > 0 {
		t.Errorf("left %q", left)
	}
	if _, err := PrepareContainer(context.Background(), Config{Profile: p, Kernel: k.Kernel}, "egs-00000abc", dir, ""); err == nil {
		t.Error("a container without a command")
	}
}

func TestMaskErr(t *testing.T) {
	err := fmt.Errorf("runc run: token s3cr3t-value in argv")
	if got := MaskErr(err, []string{"s3cr3t-value"}).Error(); got != "runc run: token "+SecretMask+" in argv" {
		t.Errorf("MaskErr = %q", got)
	}
	if MaskErr(err, nil) != err || MaskErr(nil, []string{"x"}) != nil || MaskErr(err, []string{"absent"}) != err {
		t.Error("MaskErr changed what holds no secret")
	}
	if got := MaskSecrets("a s3cr3t-value b", []string{"s3cr3t-value"}); got != "a "+SecretMask+" b" {
		t.Errorf("MaskSecrets = %q", got)
	}
}

// TestCreateRefusesAnUnplannableConfig: a Config that cannot be planned
// fails before anything is made, with "creating the sandbox".
func TestCreateRefusesAnUnplannableConfig(t *testing.T) {
	k := NewFakeKernel()
	cfg := fakeConfig(t, k, "standard")
	cfg.Args = nil
	if _, err := Create(context.Background(), cfg); err == nil || !strings.HasPrefix(err.Error(), "creating the sandbox: ") {
		t.Errorf("Create without a command: %v", err)
	}
	cfg = fakeConfig(t, k, "standard")
	cfg.ID = "not-an-id"
	if _, err := Create(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "sandbox id") {
		t.Errorf("Create with a bad id: %v", err)
	}
	if len(k.Ops()) != 0 {
		t.Errorf("the kernel was touched: %q", k.Ops())
	}
}

// TestBindSourceSwappedBeforeTheRuntimeIsRefused: a bind source that is,
// or leads through, a symbolic link, or is not of its planned type, when
// the host's Containers records it is refused before the runtime is asked
// to create anything (THREATS I5; the privileged
// TestSwappedSourceCannotRedirectAMount swaps during the runtime's mount).
func TestBindSourceSwappedBeforeTheRuntimeIsRefused(t *testing.T) {
	ws := t.TempDir()
	decoy := t.TempDir()
	for _, d := range []string{".git/hooks", "dir"} {
		if err := os.MkdirAll(filepath.Join(ws, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(ws, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(decoy, filepath.Join(ws, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("dir", filepath.Join(ws, ".git/viadir")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		bind BindMount
		want string
	}{
		{"a link", BindMount{Dest: "/w/link", Source: filepath.Join(ws, "link"), Root: ws}, "symbolic link"},
		{"a link from /", BindMount{Dest: "/e", Source: filepath.Join(ws, "link")}, "symbolic link"},
		{"through a link", BindMount{Dest: "/w/.git/viadir/x", Source: filepath.Join(ws, ".git/viadir/x"), Root: ws}, "symbolic link"},
		{"a file planned a directory", BindMount{Dest: "/w/file", Source: filepath.Join(ws, "file"), Root: ws, Type: sourceDir}, "no longer a directory"},
		{"a directory planned a file", BindMount{Dest: "/w/dir", Source: filepath.Join(ws, "dir"), Root: ws, Type: sourceFile}, "no longer a regular file"},
		{"outside its root", BindMount{Dest: "/w/x", Source: decoy, Root: ws}, "is not in"},
		{"a device", BindMount{Dest: "/w/zero", Source: "/dev/zero"}, "neither a directory nor a regular file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rt, calls := scriptRuntime(t, "exit 0")
			ok := BindMount{Dest: "/w/.git/hooks", Source: filepath.Join(ws, ".git/hooks"), Root: ws, Type: sourceDir, ReadOnly: true}
			_, err := hostContainers{}.Create(context.Background(), rt, "egt-fake", t.TempDir(), Streams{}, []BindMount{ok, tc.bind})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), strconv.Quote(tc.bind.Dest)) {
				t.Errorf("Create = %v, want an error naming %q and saying %q", err, tc.bind.Dest, tc.want)
			}
			if data, _ := os.ReadFile(calls); len(data) > 0 {
				t.Errorf("the runtime was called: %s", data)
			}
		})
	}
}
