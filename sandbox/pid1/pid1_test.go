package pid1

import (
	"bytes"
	"errors"
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
)

// The test binary is the init when this variable is set (the launcher
// recognises it by argv[0] instead).
const asInit = "EGRESSD_PID1_TEST_AS_INIT"

func TestMain(m *testing.M) {
	if os.Getenv(asInit) == "1" {
		os.Exit(Main(os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}

// initCmd is the init (this test binary) running cmd, with an optional
// window size.
func initCmd(t *testing.T, size *WindowSize, cmd ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := Args(cmd, size)
	c := exec.Command(self, args[1:]...)
	c.Env = append(os.Environ(), asInit+"=1")
	// Its own group: the tests signal it alone.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return c
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if err == nil {
		return 0
	}
	if !errors.As(err, &ee) {
		t.Fatalf("running the init: %v", err)
	}
	return ee.ExitCode()
}

func TestArgs(t *testing.T) {
	got := strings.Join(Args([]string{"sh", "-c", "x"}, &WindowSize{Rows: 24, Cols: 80}), " ")
	if want := Path + " -winsize=24x80 -- sh -c x"; got != want {
		t.Errorf("Args = %q, want %q", got, want)
	}
	if !IsInit(Args([]string{"true"}, nil)) || IsInit([]string{"/usr/bin/launcher", "run"}) || IsInit(nil) {
		t.Error("IsInit does not recognise the init's argv by its argv[0] alone")
	}
}

func TestExitStatusIsTheCommands(t *testing.T) {
	for _, tc := range []struct {
		cmd  []string
		want int
	}{
		{[]string{"true"}, 0},
		{[]string{"sh", "-c", "exit 7"}, 7},
		{[]string{"sh", "-c", "kill -TERM $$"}, 128 + int(syscall.SIGTERM)},
		{[]string{"sh", "-c", "kill -KILL $$"}, 128 + int(syscall.SIGKILL)},
	} {
		var stderr bytes.Buffer
		c := initCmd(t, nil, tc.cmd...)
		c.Stderr = &stderr
		if got := exitCode(t, c.Run()); got != tc.want {
			t.Errorf("%q: exit %d, want %d (stderr %q)", tc.cmd, got, tc.want, stderr.String())
		}
	}
}

// TestCommandThatCannotRunSaysWhy: not found is 127, not executable 126,
// bad arguments 125, each with one "launcher: " line.
func TestCommandThatCannotRunSaysWhy(t *testing.T) {
	dir := t.TempDir()
	noexec := filepath.Join(dir, "script")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\necho hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	for _, tc := range []struct {
		args []string
		want int
		msg  string
	}{
		{Args([]string{"no-such-command-here"}, nil), ExitNotFound, `cannot run the command "no-such-command-here": not found`},
		{Args([]string{"/no/such/file"}, nil), ExitNotFound, `cannot run the command "/no/such/file"`},
		{Args([]string{noexec}, nil), ExitCannotInvoke, "permission denied"},
		{Args([]string{dir}, nil), ExitCannotInvoke, "cannot run the command"},
		{[]string{Path, "--"}, ExitInitFailed, "init: no command"},
		{[]string{Path, "-bogus", "--", "true"}, ExitInitFailed, `init: unknown argument "-bogus"`},
		{[]string{Path, "-winsize=axb", "--", "true"}, ExitInitFailed, `window size "axb"`},
	} {
		var stderr bytes.Buffer
		c := exec.Command(self, tc.args[1:]...)
		c.Env = append(os.Environ(), asInit+"=1")
		c.Stderr = &stderr
		got := exitCode(t, c.Run())
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		if got != tc.want || len(lines) != 1 || !strings.HasPrefix(lines[0], "launcher: ") || !strings.Contains(lines[0], tc.msg) {
			t.Errorf("%q: exit %d, stderr %q; want %d and one launcher: line containing %q", tc.args, got, stderr.String(), tc.want, tc.msg)
		}
	}
}

// TestSignalsReachTheCommandsGroup: a command that installs no handler
// dies of each stop signal at once, as does everything in its process
// group (a pipeline's other member here); the init's status says which
// signal.
func TestSignalsReachTheCommandsGroup(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			c := initCmd(t, nil, "sh", "-c", "sleep 30 | sleep 31")
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			// The command's group is its pid, the init's only child.
			var group int
			if !eventually(2*time.Second, func() bool {
				group = childOf(c.Process.Pid)
				return group > 0 && len(groupMembers(group)) == 3 // sh and both sleeps
			}) {
				_ = c.Process.Kill()
				t.Fatalf("the command's group never had its three processes: %v", groupMembers(group))
			}
			start := time.Now()
			if err := c.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			code := exitCode(t, c.Wait())
			if took := time.Since(start); took > time.Second {
				t.Errorf("the init took %v to end after %v", took, sig)
			}
			if code != 128+int(sig) {
				t.Errorf("exit %d, want %d", code, 128+int(sig))
			}
			if !eventually(2*time.Second, func() bool { return len(groupMembers(group)) == 0 }) {
				t.Errorf("processes of the command's group survived %v: %v", sig, groupMembers(group))
				_ = unix.Kill(-group, unix.SIGKILL)
			}
		})
	}
}

// TestSignalThatWouldCrashAGoProgramLeavesTheInitRunning: the signals
// whose Go default is a crash with a goroutine dump, sent to the init
// (as a sandbox process can send them to process 1), neither end it nor
// its command, and put nothing on its stderr; the command's own status
// is the init's (attack review 2: `kill -ABRT 1` ended the command with
// exit 2 and 8 KiB of the init's dump).
func TestSignalThatWouldCrashAGoProgramLeavesTheInitRunning(t *testing.T) {
	c := initCmd(t, nil, "sh", "-c", "sleep 1; exit 7")
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if !eventually(2*time.Second, func() bool { return childOf(c.Process.Pid) > 0 }) {
		_ = c.Process.Kill()
		t.Fatal("the init never started its command")
	}
	for _, sig := range Absorbed {
		if err := c.Process.Signal(sig); err != nil {
			t.Fatalf("%v: %v", sig, err)
		}
	}
	if code := exitCode(t, c.Wait()); code != 7 {
		t.Errorf("exit %d, want the command's 7", code)
	}
	if stderr.Len() != 0 {
		t.Errorf("the init wrote to stderr: %.300q", stderr.String())
	}
}

// childOf is a child of pid, or 0.
func childOf(pid int) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if c, err := strconv.Atoi(e.Name()); err == nil && parentOf(c) == pid {
			return c
		}
	}
	return 0
}

// groupMembers lists the live (not zombie) processes of process group pgid.
func groupMembers(pgid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		_, rest, _ := strings.Cut(string(stat), ") ")
		f := strings.Fields(rest)
		if len(f) > 2 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			out = append(out, pid)
		}
	}
	return out
}

// TestOrphanedZombiesAreReaped: a grandchild whose parent exited becomes
// the init's child (process 1 in a sandbox; a subreaper here) and is
// reaped when it ends, while the command still runs.
func TestOrphanedZombiesAreReaped(t *testing.T) {
	c := initCmd(t, nil, "sh", "-c", "sh -c 'sleep 1 & echo $!'; sleep 4")
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Process.Kill(); _ = c.Wait() }()
	var buf [32]byte
	n, _ := out.Read(buf[:])
	orphan, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		t.Fatalf("orphan pid %q: %v", buf[:n], err)
	}
	// Adopted by the init (not by the machine's init, which would reap it
	// too and prove nothing)...
	if !eventually(900*time.Millisecond, func() bool { return parentOf(orphan) == c.Process.Pid }) {
		t.Fatalf("the orphan %d was not adopted by the init %d (parent %d)", orphan, c.Process.Pid, parentOf(orphan))
	}
	// ...and gone, not a zombie, once it ended, while the command runs on.
	if !eventually(2500*time.Millisecond, func() bool {
		_, err := os.Stat("/proc/" + strconv.Itoa(orphan))
		return errors.Is(err, os.ErrNotExist)
	}) {
		stat, _ := os.ReadFile("/proc/" + strconv.Itoa(orphan) + "/stat")
		t.Errorf("the orphan %d was not reaped: %s", orphan, stat)
	}
}

// parentOf is pid's parent, or 0.
func parentOf(pid int) int {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	f := strings.Fields(rest)
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// TestTerminalIsTheCommandsWithItsSize: under a terminal the command's
// group is the terminal's foreground group (so ^C typed there signals it)
// and the size given to Args is set before it starts.
func TestTerminalIsTheCommandsWithItsSize(t *testing.T) {
	master, slave := ptytest.Open(t)
	c := initCmd(t, &WindowSize{Rows: 33, Cols: 99}, "sh", "-c",
		`test -t 0 && echo tty=yes; stty size; [ "$(ps -o tpgid= -p $$)" -eq "$(ps -o pgid= -p $$)" ] && echo fg=yes; exec sleep 30`)
	c.Stdin, c.Stdout, c.Stderr = slave, slave, slave
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	got := ptytest.ReadUntil(t, master, "fg=yes", 5*time.Second)
	for _, want := range []string{"tty=yes", "33 99"} {
		if !strings.Contains(got, want) {
			t.Errorf("the command's view of its terminal lacks %q: %q", want, got)
		}
	}
	// ^C typed on the terminal reaches the command, not the init. Typed
	// once the shell is sleep (a shell that catches SIGINT between two
	// commands runs the next one before it exits).
	if !eventually(5*time.Second, func() bool {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(childOf(c.Process.Pid)) + "/comm")
		return strings.TrimSpace(string(comm)) == "sleep"
	}) {
		t.Fatal("the command never became sleep")
	}
	if _, err := master.Write([]byte{3}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		if code := exitCode(t, err); code != 128+int(syscall.SIGINT) {
			t.Errorf("after ^C: exit %d, want %d", code, 128+int(syscall.SIGINT))
		}
	case <-time.After(5 * time.Second):
		_ = c.Process.Kill()
		t.Fatal("^C on the terminal did not stop the command")
	}
}

func eventually(d time.Duration, f func() bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if f() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}
