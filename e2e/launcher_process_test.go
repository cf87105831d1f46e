package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/internal/ptytest"
	"github.com/egressd/egressd/sandbox"
)

// Issue #8, the process half: the command runs under an init (process 1 of
// the sandbox) that passes signals on and reaps orphans, gets a terminal
// when asked, and every way a sandbox fails says what failed.

// waitForSleep waits until the sandbox of the launcher pid runs a sleep,
// and returns the sandbox's id.
func waitForSleep(t *testing.T, pid int) string {
	t.Helper()
	var id string
	if !eventually(30*time.Second, func() bool {
		var ok bool
		if id, ok = sandboxOf(pid); !ok {
			return false
		}
		for _, comm := range processesInNetns(filepath.Join(sandbox.NetnsDir, id)) {
			if comm == "sleep" {
				return true
			}
		}
		return false
	}) {
		t.Fatal("the sandbox's sleep never ran")
	}
	return id
}

// testLauncherSignalsStopSleep: `sleep 30` installs no handler; as the
// container's process 1 it ignored SIGINT and SIGTERM until the launcher's
// 5 s grace ran out. Under the init, each stops it at once and the
// launcher's status is the command's (128+N), with nothing left behind.
// Under strict (read-only root, seccomp strict, no capabilities) and
// standard.
func testLauncherSignalsStopSleep(t *testing.T) {
	lw := newLauncherWorld(t)
	for _, tc := range []struct {
		profile string
		sig     syscall.Signal
	}{
		{"strict", syscall.SIGINT},
		{"standard", syscall.SIGTERM},
	} {
		started := make(chan int, 1)
		done := make(chan lresult, 1)
		go func() {
			done <- lw.runWith(lopts{started: func(p int) { started <- p }, noMount: true}, "--profile", tc.profile, "--", "sleep", "30")
		}()
		pid := <-started
		id := waitForSleep(t, pid)
		sent := time.Now()
		if err := syscall.Kill(pid, tc.sig); err != nil {
			t.Fatal(err)
		}
		r := <-done
		took := time.Since(sent)
		t.Logf("%s under %s: the launcher exited %v after the signal", unix.SignalName(tc.sig), tc.profile, took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("%s under %s: the launcher took %v to exit after the signal, want under 1s\n%s", unix.SignalName(tc.sig), tc.profile, took, r)
		}
		if want := 128 + int(tc.sig); r.code != want {
			t.Errorf("%s under %s: exit %d, want %d (the command's death by the signal)\n%s", unix.SignalName(tc.sig), tc.profile, r.code, want, r)
		}
		if _, err := os.Stat(filepath.Join(sandbox.NetnsDir, id)); err == nil {
			t.Errorf("namespace %s still there after the launcher exited", id)
		}
	}
}

// reapProbe forks a child that forks a grandchild and exits at once: the
// grandchild, orphaned, is adopted by the sandbox's process 1 and exits
// 0.2 s later. The probe waits for its own child only, then counts the
// zombies in the sandbox. As process 1 itself, python never reaped the
// orphan: a zombie stayed until the sandbox ended.
const reapProbe = `
import os, time
pid = os.fork()
if pid == 0:
    if os.fork() == 0:
        time.sleep(0.2)
        os._exit(0)
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(1.5)
zombies = 0
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            stat = open("/proc/%s/stat" % p).read()
        except OSError:
            continue
        if stat.rsplit(") ", 1)[1].split()[0] == "Z":
            zombies += 1
print("zombies=%d" % zombies)
`

func testLauncherZombiesReaped(t *testing.T) {
	lw := newLauncherWorld(t)
	r := lw.run("--", sandboxPython, "-c", reapProbe)
	if r.code != 0 || marker(r.stdout, "zombies") != "0" {
		t.Errorf("an orphan that ended was left a zombie in the sandbox: want exit 0 and zombies=0\n%s", r)
	}
}

// testLauncherTerminal drives the launcher from a pseudo-terminal the test
// opens, as a person at a terminal would: under -t the command sees a
// terminal of the caller's size, a resize of the caller's terminal reaches
// it (SIGWINCH), a secret is masked in what it prints, ^C typed stops it
// (130), and the caller's terminal is back in its own mode afterwards.
// --no-tty gives pipes under the same terminal.
func testLauncherTerminal(t *testing.T) {
	lw := newLauncherWorld(t)
	script := `tty; test -t 0 && echo stdin-is-a-tty; echo "secret=$TOKEN"; stty size
trap 'stty size; echo resized; exec sleep 31' WINCH
echo ready
while :; do sleep 0.1; done`
	master, slave := ptytest.Open(t)
	ptytest.SetSize(t, master, 30, 100)
	before := ptytest.Mode(t, slave)
	cmd, done := lw.startOnTerminal(slave, "-t", "--secret", "TOKEN=hunter2-hunter2", "--", "sh", "-c", script)
	out := ptytest.ReadUntil(t, master, "ready", 30*time.Second)
	for _, want := range []string{"/dev/pts/", "stdin-is-a-tty", "secret=***", "30 100"} {
		if !strings.Contains(out, want) {
			t.Errorf("the command's terminal output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("the secret was printed unmasked through the terminal:\n%s", out)
	}
	ptytest.SetSize(t, master, 40, 120)
	out = ptytest.ReadUntil(t, master, "resized", 10*time.Second)
	if !strings.Contains(out, "40 120") {
		t.Errorf("the new window size did not reach the command:\n%s", out)
	}
	// ^C once the shell is `sleep 31` (a shell that catches SIGINT
	// between two commands would start the next one first).
	if !eventually(10*time.Second, func() bool {
		id, ok := sandboxOf(cmd.Process.Pid)
		for pid, comm := range processesInNetns(filepath.Join(sandbox.NetnsDir, id)) {
			args, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			if ok && comm == "sleep" && string(args) == "sleep\x0031\x00" {
				return true
			}
		}
		return false
	}) {
		t.Fatal("the command never became sleep 31")
	}
	if _, err := master.Write([]byte{3}); err != nil { // ^C
		t.Fatal(err)
	}
	select {
	case <-done:
		if code := cmd.ProcessState.ExitCode(); code != 130 {
			t.Errorf("^C typed at the terminal: the launcher exited %d, want 130 (the command's death by SIGINT)", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("^C typed at the terminal did not stop the command")
	}
	if after := ptytest.Mode(t, slave); after != before {
		t.Errorf("the caller's terminal was not restored: mode before %+v, after %+v", before, after)
	}

	// Under the same terminal, --no-tty gives pipes; without either flag
	// the command gets a terminal (stdin and stdout are terminals).
	for _, tc := range []struct {
		flag, want string
	}{
		{"--no-tty", "not a tty"},
		{"--quiet", "/dev/pts/"},
	} {
		ptytest.Drain(master)
		_, done := lw.startOnTerminal(slave, tc.flag, "--", "sh", "-c", "tty; echo done")
		out := ptytest.ReadUntil(t, master, "done", 30*time.Second)
		<-done
		if !strings.Contains(out, tc.want) {
			t.Errorf("launcher run %s on a terminal: want %q from tty:\n%s", tc.flag, tc.want, out)
		}
	}
}

// testLauncherTerminalRestoredWhenKilled: a launcher killed with SIGKILL
// cannot restore the caller's terminal itself; its guard process does.
func testLauncherTerminalRestoredWhenKilled(t *testing.T) {
	lw := newLauncherWorld(t)
	master, slave := ptytest.Open(t)
	before := ptytest.Mode(t, slave)
	cmd, done := lw.startOnTerminal(slave, "-t", "--", "sleep", "30")
	id := waitForSleep(t, cmd.Process.Pid)
	if after := ptytest.Mode(t, slave); after == before {
		t.Fatal("the launcher did not put the terminal in raw mode")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-done
	if !eventually(2*time.Second, func() bool { return ptytest.Mode(t, slave) == before }) {
		t.Errorf("the terminal stayed in raw mode after the launcher was killed: before %+v, after %+v", before, ptytest.Mode(t, slave))
	}
	ptytest.Drain(master)
	// What the killed launcher left is reaped (the world checks its rules).
	out, errOut, code := lw.w.Run(t, launcherBinary(t), "cleanup")
	if code != 0 || !strings.Contains(out, "removed "+id) {
		t.Errorf("launcher cleanup: exit %d, stdout %q, stderr %q; want it to remove %s", code, out, errOut, id)
	}
}

// tiocsti pushes a command line into the input of the terminal on fd 0,
// as if typed there (THREATS G8).
const tiocsti = `import fcntl, termios
for c in b"echo INJECTED-BY-THE-SANDBOX\n":
    fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))
print("pushed")`

// testLauncherTerminalInjectionStaysInTheSandbox: a command given a
// terminal pushes a command line into it with TIOCSTI. Had it the caller's
// terminal (runc's pass-through mode), the caller's shell would read and run
// that line once the launcher exits; the sandbox's terminal is its own, made
// inside the container, so the caller's terminal has no input waiting. The
// same probe run on the caller's terminal directly shows the check is not
// vacuous (the kernel honours TIOCSTI here).
func testLauncherTerminalInjectionStaysInTheSandbox(t *testing.T) {
	lw := newLauncherWorld(t)
	master, slave := ptytest.Open(t)
	_, done := lw.startOnTerminal(slave, "-t", "--", sandboxPython, "-c", tiocsti)
	out := ptytest.ReadUntil(t, master, "pushed", 30*time.Second)
	<-done
	if n := ptytest.Queued(t, slave); n != 0 {
		t.Errorf("the sandbox's TIOCSTI left %d bytes of input on the caller's terminal (its shell would run them)\n%s", n, out)
	}
	// The control: the probe on the caller's terminal itself.
	probe := exec.Command(sandboxPython, "-c", tiocsti)
	probe.Stdin, probe.Stdout = slave, io.Discard
	probe.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := probe.Run(); err != nil {
		t.Skipf("TIOCSTI does not work on this machine's own terminals (%v): the test proves nothing here", err)
	}
	if ptytest.Queued(t, slave) == 0 {
		t.Error("the control probe queued no input on the caller's terminal: the check above proves nothing")
	}
}

// startOnTerminal starts `launcher run` in the world with the suite's
// defaults (no workspace) and tty as its controlling terminal and stdio;
// done is closed when it has exited.
func (lw *lworld) startOnTerminal(tty *os.File, args ...string) (*exec.Cmd, <-chan struct{}) {
	t := lw.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), launcherRunTimeout)
	full := append([]string{"run", "--egressd", egressdBin, "--upstream-dns", dnsAddr.String()}, args...)
	cmd := lw.w.Exec(ctx, launcherBinary(t), full...)
	cmd.Env = cleanEnv()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	// The terminal is the launcher's controlling terminal, its group the
	// foreground one: what the terminal signals (SIGWINCH) reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer cancel()
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() { <-done })
	return cmd, done
}

// testLauncherBrokenRuntime: a runtime that fails to run the container
// (here one that prints its complaint and exits 1, as runc does) is the
// launcher's failure, 125 with a "launcher:" line carrying the runtime's
// words; it used to be taken for the command's exit status 1.
func testLauncherBrokenRuntime(t *testing.T) {
	lw := newLauncherWorld(t)
	dir := t.TempDir()
	rt := filepath.Join(dir, "broken-runtime")
	script := "#!/bin/sh\ncase \" $* \" in *\" create \"*) echo 'broken-runtime: cannot create the container: cgroup out of cheese' >&2; exit 1;; esac\nexit 0\n"
	if err := os.WriteFile(rt, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	r := lw.run("--runtime", rt, "--", "sh", "-c", "echo ran=yes")
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if r.code != 125 || len(lines) != 1 || !strings.HasPrefix(lines[0], "launcher: ") || !strings.Contains(lines[0], "cgroup out of cheese") {
		t.Errorf("a runtime that fails: want exit 125 and one launcher: line with its message\n%s", r)
	}
	if marker(r.stdout, "ran") != "" || strings.Contains(r.stdout, "out of cheese") {
		t.Errorf("the runtime's own words or a command's output reached stdout\n%s", r)
	}
}

// testLauncherCommandThatCannotRun: a command the init cannot execute
// (here a script without the x bit in the workspace, which the launcher
// cannot check before the workspace is mounted) is 126 with a line, a
// missing one 127.
func testLauncherCommandThatCannotRun(t *testing.T) {
	lw := newLauncherWorld(t)
	if err := os.WriteFile(filepath.Join(lw.ws, "noexec.sh"), []byte("#!/bin/sh\necho ran\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cmd  string
		code int
		msg  string
	}{
		{"/sandbox/noexec.sh", 126, `launcher: cannot run the command "/sandbox/noexec.sh": permission denied`},
		{"/sandbox/missing.sh", 127, `launcher: cannot run the command "/sandbox/missing.sh"`},
	} {
		r := lw.run("--", tc.cmd)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("%s: want exit %d and %q\n%s", tc.cmd, tc.code, tc.msg, r)
		}
	}
}

// testLauncherNegativePidsLimitRefused: --pids-limit -5 used to mean no
// limit at all, silently.
func testLauncherNegativePidsLimitRefused(t *testing.T) {
	lw := newLauncherWorld(t)
	r := lw.run("--pids-limit", "-5", "--", "sh", "-c", "echo ran=yes")
	want := "launcher: flag:--pids-limit: process.pids_limit must not be negative (0 means no limit)"
	if r.code != 125 || strings.TrimSpace(r.stderr) != want || marker(r.stdout, "ran") != "" {
		t.Errorf("--pids-limit -5: want exit 125 and %q, nothing run\n%s", want, r)
	}
	// 0 is no limit: a fork loop runs to its own end.
	r = lw.run("--pids-limit", "0", "--timeout", "60s", "--", sandboxPython, "-c", forkScript)
	if n, _ := strconv.Atoi(marker(r.stdout, "forked")); r.code != 0 || n != 200 {
		t.Errorf("--pids-limit 0: want 200 forks and no error\n%s", r)
	}
}

// pidsLimitLine is what the launcher says after a run that hit the limit.
func pidsLimitLine(limit int) string {
	return fmt.Sprintf("launcher: the sandbox reached its task limit, process.pids_limit %d (flag:--pids-limit): ", limit)
}
