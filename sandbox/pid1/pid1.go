package pid1

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Path is where the init binary is mounted inside every sandbox, and the
// argv[0] it is started with. /dev is the sandbox's own tmpfs whatever the
// root file system, so the mount point never collides with a file of the
// image, and nothing of the root changes.
const Path = "/dev/launcher-init"

// Exit statuses of the init itself (the shell's and Docker's conventions).
const (
	// ExitCannotInvoke: the command exists but could not be executed
	// (permission denied, not an executable).
	ExitCannotInvoke = 126
	// ExitNotFound: the command was not found.
	ExitNotFound = 127
	// ExitInitFailed: the init could not start the command for another
	// reason (bad arguments, a failed fork).
	ExitInitFailed = 125
)

// Tasks is the most tasks (threads) the init itself uses, all of which
// count against the sandbox's pids limit: it is a Go program, whose
// runtime starts a few threads (7 at most measured, under GOMAXPROCS 1).
const Tasks = 8

// Forwarded are the signals the init passes on to the command's process
// group.
var Forwarded = []os.Signal{
	syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGALRM,
	syscall.SIGCONT, syscall.SIGTSTP,
}

// Absorbed are the signals whose default in a Go program is to crash it
// with a dump of its goroutines: sent by the sandbox (process 1 gets a
// signal from inside its namespace only when it handles it, and a Go
// program handles every one), they would end the init, its command with
// it, and put the dump on the command's stderr as if the command had
// failed. The init takes them and does nothing: a fault of its own
// still crashes it (the runtime's synchronous signals are not these).
var Absorbed = []os.Signal{
	syscall.SIGABRT, syscall.SIGILL, syscall.SIGTRAP, syscall.SIGSYS,
	syscall.SIGBUS, syscall.SIGFPE, syscall.SIGSEGV, syscall.SIGSTKFLT,
}

// WindowSize is a terminal's size in characters.
type WindowSize struct{ Rows, Cols uint16 }

// String is the form Args passes: "ROWSxCOLS".
func (w WindowSize) String() string { return fmt.Sprintf("%dx%d", w.Rows, w.Cols) }

func parseWindowSize(s string) (WindowSize, error) {
	r, c, ok := strings.Cut(s, "x")
	rows, err1 := strconv.ParseUint(r, 10, 16)
	cols, err2 := strconv.ParseUint(c, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return WindowSize{}, fmt.Errorf("window size %q: want ROWSxCOLS", s)
	}
	return WindowSize{Rows: uint16(rows), Cols: uint16(cols)}, nil
}

// Args is the init's command line for running cmd: Path, then
// "-winsize=ROWSxCOLS" when size is not nil (set on the terminal before cmd
// starts), then "--" and cmd.
func Args(cmd []string, size *WindowSize) []string {
	out := []string{Path}
	if size != nil {
		out = append(out, "-winsize="+size.String())
	}
	return append(append(out, "--"), cmd...)
}

// IsInit reports whether argv is the init's (argv[0] is Path): the
// launcher's main calls Main then, before anything else.
func IsInit(argv []string) bool { return len(argv) > 0 && argv[0] == Path }

// Main runs the init with its arguments (argv without argv[0]) and returns
// the status to exit with: the command's, 128+N when signal N killed it, or
// one of the Exit* codes with a "launcher: ..." line on stderr.
func Main(args []string, stderr io.Writer) int {
	// Signals first: one that comes while the command starts is passed on
	// once it runs, never lost nor taken as the init's own death.
	sigc := make(chan os.Signal, 64)
	signal.Notify(sigc, append([]os.Signal{syscall.SIGCHLD}, Forwarded...)...)
	// Never read: a signal that finds it full is dropped.
	signal.Notify(make(chan os.Signal, 1), Absorbed...)
	// One P: the init needs no parallelism, and every OS thread it starts
	// counts against the sandbox's pids limit.
	runtime.GOMAXPROCS(1)
	// Non-dumpable: a sandbox process of the same uid cannot ptrace the
	// init or open /proc/1/fd, /proc/1/mem (the command, started by exec,
	// is dumpable again).
	_ = unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "launcher: "+format+"\n", a...)
		return code
	}
	if len(args) == 1 && args[0] == waitFlag {
		return waitAndRun(sigc, fail)
	}
	var size *WindowSize
	for len(args) > 0 && args[0] != "--" {
		v, ok := strings.CutPrefix(args[0], "-winsize=")
		if !ok {
			return fail(ExitInitFailed, "init: unknown argument %q (usage: %s [-winsize=ROWSxCOLS] -- CMD [ARGS...])", args[0], Path)
		}
		ws, err := parseWindowSize(v)
		if err != nil {
			return fail(ExitInitFailed, "init: %v", err)
		}
		size = &ws
		args = args[1:]
	}
	if len(args) < 2 {
		return fail(ExitInitFailed, "init: no command (usage: %s [-winsize=ROWSxCOLS] -- CMD [ARGS...])", Path)
	}
	return run(args[1:], os.Environ(), size, sigc, fail)
}

// waitAndRun is waiting mode (WaitArgs): the init reads one request from
// RequestFD, closes it (the command never inherits it, and nothing can
// send a second one), moves to the request's working directory and runs
// its command with its environment. The request's environment becomes
// the init's own Go environment, for the command's lookup in PATH as
// without waiting; /proc/1/environ (the one the runtime gave, which a
// non-dumpable init shows nobody anyway) never holds it.
func waitAndRun(sigc <-chan os.Signal, fail func(int, string, ...any) int) int {
	f := os.NewFile(RequestFD, "execution request")
	req, err := ReadRequest(io.LimitReader(f, 4+MaxRequest))
	f.Close()
	if err != nil {
		return fail(ExitInitFailed, "init: the execution request: %v", err)
	}
	os.Clearenv()
	for _, e := range req.Env {
		name, value, _ := strings.Cut(e, "=")
		if err := os.Setenv(name, value); err != nil {
			return fail(ExitInitFailed, "init: the execution's environment: %v", err)
		}
	}
	if err := os.Chdir(req.Cwd); err != nil {
		return fail(ExitInitFailed, "init: the working directory %q: %v", req.Cwd, err)
	}
	// As the runtime sets a container's environment (one entry per name,
	// the last one wins), so the command's is what it would be without
	// waiting.
	return run(req.Args, os.Environ(), nil, sigc, fail)
}

// run starts cmd with env as the init's only child and supervises it.
func run(cmd, env []string, size *WindowSize, sigc <-chan os.Signal, fail func(int, string, ...any) int) int {
	if os.Getpid() != 1 {
		// Outside a pid namespace of its own, orphans would go to the
		// machine's init; make them come here.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fail(ExitInitFailed, "init: becoming a subreaper: %v", err)
		}
	}
	// A terminal is ours when it is our controlling terminal (the runtime
	// made it so); then the command's group goes to its foreground.
	_, ttyErr := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	tty := ttyErr == nil
	if tty && size != nil {
		ws := &unix.Winsize{Row: size.Rows, Col: size.Cols}
		if err := unix.IoctlSetWinsize(0, unix.TIOCSWINSZ, ws); err != nil {
			return fail(ExitInitFailed, "init: setting the terminal's size: %v", err)
		}
	}

	path, err := exec.LookPath(cmd[0])
	if errors.Is(err, exec.ErrDot) {
		err = nil
	}
	if err != nil {
		return fail(cannotRun(err), "cannot run the command %q: %v", cmd[0], lookupReason(err))
	}

	// The command inherits its stdio and nothing else, whatever the
	// runtime (or whoever started the init) left open.
	closeOnExecAbove2()
	child, err := syscall.ForkExec(path, cmd, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{Setpgid: true, Foreground: tty, Ctty: 0},
	})
	if err != nil {
		if code := cannotRun(err); code != ExitInitFailed {
			return fail(code, "cannot run the command %q: %v", cmd[0], err)
		}
		return fail(ExitInitFailed, "init: starting the command %q: %v", cmd[0], err)
	}
	return supervise(child, sigc)
}

// cannotRun is the status for a command that could not be executed: 127
// when it does not exist, 126 when it exists but cannot run, else 125.
func cannotRun(err error) int {
	switch {
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, unix.ENOENT):
		return ExitNotFound
	case errors.Is(err, fs.ErrPermission), errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM),
		errors.Is(err, unix.ENOEXEC), errors.Is(err, unix.EISDIR), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ETXTBSY):
		return ExitCannotInvoke
	}
	return ExitInitFailed
}

// lookupReason is a PATH lookup's error without the name exec repeats.
func lookupReason(err error) error {
	var ee *exec.Error
	if errors.As(err, &ee) {
		if errors.Is(ee.Err, exec.ErrNotFound) {
			return errors.New("not found in the sandbox's PATH")
		}
		return ee.Err
	}
	return err
}

// supervise passes signals on to child's process group and reaps every
// child until child has ended, and returns child's status.
func supervise(child int, sigc <-chan os.Signal) int {
	for sig := range sigc {
		if sig != syscall.SIGCHLD {
			// The group may be gone already (the command ended, its
			// SIGCHLD not yet seen): nothing to pass the signal to.
			_ = unix.Kill(-child, sig.(syscall.Signal))
			continue
		}
		if status, done := reap(child); done {
			return status
		}
	}
	return ExitInitFailed // unreachable: sigc is never closed
}

// reap collects every child that has ended; done reports whether child was
// one of them, with its status.
func reap(child int) (status int, done bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return status, done
		}
		if pid == child {
			done = true
			switch {
			case ws.Exited():
				status = ws.ExitStatus()
			case ws.Signaled():
				status = 128 + int(ws.Signal())
			}
		}
	}
}

// closeOnExecAbove2 marks every descriptor above 2 close-on-exec
// (close_range(2), or one by one from /proc/self/fd on a kernel without
// it).
func closeOnExecAbove2() {
	if unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}
