package sandbox

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeRuntime is a runtime of runc's command line that "runs" a container
// by starting script in the background at `create` (the container's
// process, which it leaves behind like `runc create`), writing its pid to
// --pid-file, and exiting. Any other command (start, delete, kill)
// succeeds.
func fakeRuntime(t *testing.T, script string) *Runtime {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake-runtime")
	body := `#!/bin/sh
for a; do [ "$a" = create ] && run=1; done
[ -n "$run" ] || exit 0
while [ $# -gt 0 ]; do [ "$1" = --pid-file ] && pidfile=$2; shift; done
exec 3<&0 # an asynchronous command's stdin would be /dev/null
sh -c '` + script + `' <&3 3<&- &
echo $! > "$pidfile"
`
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	rt, err := NewRuntime(path, "")
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// TestStartWaitReapsTheContainersProcess: the runtime exits at once; the
// container's process it leaves behind is adopted (subreaper) and waited
// for, its output streamed and its status returned.
func TestStartWaitReapsTheContainersProcess(t *testing.T) {
	rt := fakeRuntime(t, `read line; echo "out:$line"; echo err >&2; sleep 0.2; exit 3`)
	var stdout, stderr bytes.Buffer
	ex, err := rt.Run(context.Background(), "egt-fake", t.TempDir(),
		Stdio{Stdin: strings.NewReader("hello\n"), Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	if ex.Code != 3 || stdout.String() != "out:hello\n" || stderr.String() != "err\n" {
		t.Errorf("exit %d, stdout %q, stderr %q; want 3, \"out:hello\\n\", \"err\\n\"", ex.Code, stdout.String(), stderr.String())
	}
	if ex.OOMKills != 0 || ex.PidsLimitHits != 0 {
		t.Errorf("counters of a container without a cgroup: %+v", ex)
	}
}

func TestSignalAndCancelReachTheContainersProcess(t *testing.T) {
	rt := fakeRuntime(t, `exec sleep 30`)
	c, err := rt.Start(context.Background(), "egt-fake", t.TempDir(), Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ex, err := c.Wait(context.Background())
	if err != nil || ex.Code != 128+int(syscall.SIGTERM) {
		t.Errorf("after SIGTERM: exit %d, %v; want %d", ex.Code, err, 128+int(syscall.SIGTERM))
	}
	if err := c.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("signalling a container that ended: %v, want nothing", err)
	}

	c, err = rt.Start(context.Background(), "egt-fake", t.TempDir(), Stdio{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	ex, err = c.Wait(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || ex.Code != 128+int(syscall.SIGKILL) {
		t.Errorf("Wait past its context: exit %d, %v; want %d and the deadline", ex.Code, err, 128+int(syscall.SIGKILL))
	}
}

// TestFailingRuntimeIsAnErrorWithItsWords: a runtime that fails is an
// error with what it said, never an exit status, and what it said does not
// reach the container's streams.
func TestFailingRuntimeIsAnErrorWithItsWords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(path, []byte("#!/bin/sh\necho 'cannot start: out of cheese' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	rt, err := NewRuntime(path, "")
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	_, err = rt.Run(context.Background(), "egt-fake", t.TempDir(), Stdio{Stdout: &stdout, Stderr: &stderr})
	if err == nil || !strings.Contains(err.Error(), "cannot start: out of cheese") || !strings.Contains(err.Error(), path+" create egt-fake") {
		t.Errorf("Run with a failing runtime: %v, want its message", err)
	}
	if stdout.Len()+stderr.Len() > 0 {
		t.Errorf("the runtime's words reached the container's streams: %q %q", stdout.String(), stderr.String())
	}
}

// sendFds sends fds over a connection to the console socket at path.
func sendFds(t *testing.T, path string, fds ...int) {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, _, err := conn.(*net.UnixConn).WriteMsgUnix([]byte("/dev/ptmx"), unix.UnixRights(fds...), nil); err != nil {
		t.Fatal(err)
	}
}

// TestConsoleSocketTakesOnlyATerminalMaster: what comes over the console
// socket is a terminal's master end, or refused.
func TestConsoleSocketTakesOnlyATerminalMaster(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	defer ptmx.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	for _, tc := range []struct {
		name string
		fds  []int
		want string
	}{
		{"master", []int{int(ptmx.Fd())}, ""},
		{"pipe", []int{int(pr.Fd())}, "not a terminal's master end"},
		{"two", []int{int(ptmx.Fd()), int(pr.Fd())}, "got 2 file descriptors"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "console.sock")
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			sendFds(t, sock, tc.fds...)
			f, err := receiveMaster(ln)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				f.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("receiveMaster: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestRuntimeMessageIsOneEscapedLine(t *testing.T) {
	for in, want := range map[string]string{
		"exec failed:\n  no such file\n": "exec failed:; no such file;",
		"bell\x07 esc\x1b[31m":           `bell\x07 esc\x1b[31m`,
		"bad \xff byte, ok ü \ufffd":     `bad \xff byte, ok ü ` + "\ufffd",
	} {
		if got := oneLineMsg(in); got != want {
			t.Errorf("oneLineMsg(%q) = %q, want %q", in, got, want)
		}
	}
}
