package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/sandbox"
)

// ttyFlag is -t/--tty and --no-tty: unset means automatic, a terminal when
// stdin and stdout both are one (like `docker run -it`).
type ttyFlag struct{ set, on bool }

func (f *ttyFlag) String() string {
	if !f.set {
		return "auto"
	}
	return strconv.FormatBool(f.on)
}

func (f *ttyFlag) Set(v string) error {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("want true or false, got %q", v)
	}
	f.set, f.on = true, b
	return nil
}

func (f *ttyFlag) IsBoolFlag() bool { return true }

// noTTYFlag is --no-tty: the same as -t=false.
type noTTYFlag struct{ f *ttyFlag }

func (n noTTYFlag) String() string { return "false" }
func (n noTTYFlag) Set(v string) error {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("want true or false, got %q", v)
	}
	n.f.set, n.f.on = true, !b
	return nil
}
func (n noTTYFlag) IsBoolFlag() bool { return true }

// wants says whether the command gets a terminal, given the launcher's
// stdin and stdout.
func (f *ttyFlag) wants(stdin io.Reader, stdout io.Writer) bool {
	if f.set {
		return f.on
	}
	_, in := terminalFd(stdin)
	_, out := terminalFd(stdout)
	return in && out
}

// terminalFd returns x's descriptor and whether x is a terminal.
func terminalFd(x any) (int, bool) {
	f, ok := x.(*os.File)
	if !ok || f == nil {
		return -1, false
	}
	fd := int(f.Fd())
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return fd, err == nil
}

// windowSize is the size of the first of the launcher's streams that is a
// terminal (stdout first: it is where the command's output is drawn);
// 0x0 when none is.
func windowSize(streams ...any) sandbox.WindowSize {
	for _, s := range streams {
		if fd, ok := terminalFd(s); ok {
			if ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ); err == nil {
				return sandbox.WindowSize{Rows: ws.Row, Cols: ws.Col}
			}
		}
	}
	return sandbox.WindowSize{}
}

// rawTerminal is the caller's terminal put in raw mode for a sandbox's
// terminal: every key goes to the command (^C as a byte, which the
// sandbox's terminal turns into SIGINT for the command), nothing is echoed
// twice. restore puts the saved mode back; it is called on every way out
// of a run, and a guard process (ttyguard) puts it back even when the
// launcher cannot (a panic in any goroutine, SIGKILL).
type rawTerminal struct {
	f     *os.File
	fd    int
	saved unix.Termios
	guard *exec.Cmd
	gconn *os.File // our end of the guard's socket

	mu       sync.Mutex
	restored bool
}

// makeRaw saves f's mode, starts the guard with it, and sets raw mode.
func makeRaw(f *os.File) (*rawTerminal, error) {
	fd := int(f.Fd())
	saved, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("reading the terminal's mode: %w", err)
	}
	t := &rawTerminal{f: f, fd: fd, saved: *saved}
	t.startGuard()
	if err := t.setRaw(); err != nil {
		t.restore()
		return nil, err
	}
	return t, nil
}

// raw sets raw mode again (after SIGCONT: the shell that resumed the
// launcher may have reset the terminal), unless it was restored.
func (t *rawTerminal) raw() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.restored {
		return nil
	}
	return t.setRaw()
}

// setRaw sets raw mode (cfmakeraw) on the saved mode.
func (t *rawTerminal) setRaw() error {
	r := t.saved
	r.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	r.Oflag &^= unix.OPOST
	r.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	r.Cflag &^= unix.CSIZE | unix.PARENB
	r.Cflag |= unix.CS8
	r.Cc[unix.VMIN], r.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(t.fd, unix.TCSETS, &r); err != nil {
		return fmt.Errorf("setting the terminal to raw mode: %w", err)
	}
	return nil
}

// restore puts the saved mode back (once) and lets the guard go.
func (t *rawTerminal) restore() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.restored {
		return
	}
	t.restored = true
	_ = unix.IoctlSetTermios(t.fd, unix.TCSETS, &t.saved)
	if t.gconn != nil {
		_, _ = t.gconn.Write([]byte{guardDone})
		t.gconn.Close()
		_ = t.guard.Wait()
	}
}

// ttyGuardArg0 is the guard's argv[0]: the launcher's main runs
// ttyGuardMain for it.
const ttyGuardArg0 = "launcher-ttyguard"

// guardDone tells the guard the terminal was restored.
const guardDone = 'D'

// startGuard starts the launcher's own binary as the terminal's guard: it
// holds the terminal (its stdin) and the saved mode, in a session of its
// own (no signal of the terminal reaches it), and puts the mode back when
// its socket to the launcher ends without guardDone. A guard that cannot
// start leaves the launcher to restore the terminal alone.
func (t *rawTerminal) startGuard() {
	self, err := os.Executable()
	if err != nil {
		return
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "ttyguard"), os.NewFile(uintptr(fds[1]), "ttyguard")
	defer theirs.Close()
	var state bytes.Buffer
	_ = binary.Write(&state, binary.NativeEndian, t.saved)
	cmd := &exec.Cmd{Path: self, Args: []string{ttyGuardArg0}, Env: []string{},
		Stdin: t.f, ExtraFiles: []*os.File{theirs},
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	if err := cmd.Start(); err != nil {
		ours.Close()
		return
	}
	if _, err := ours.Write(state.Bytes()); err != nil {
		ours.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return
	}
	t.guard, t.gconn = cmd, ours
}

// ttyGuardMain is the guard: it reads the saved mode from fd 3, then waits;
// when the launcher's end closes without guardDone, it restores the mode on
// its stdin.
func ttyGuardMain() int {
	conn := os.NewFile(3, "ttyguard")
	var saved unix.Termios
	if err := binary.Read(conn, binary.NativeEndian, &saved); err != nil {
		return 1
	}
	var b [1]byte
	if n, _ := conn.Read(b[:]); n == 1 && b[0] == guardDone {
		return 0
	}
	_ = unix.IoctlSetTermios(0, unix.TCSETS, &saved)
	return 0
}
