// Package ptytest opens pseudo-terminal pairs for tests that drive a
// program as a person at a terminal would (the launcher's -t, the init's
// foreground group), and reads, sizes and inspects them. For tests only.
//
// Every call works on the descriptor through SyscallConn, never os.File.Fd,
// which would put the file in blocking mode for good and end read
// deadlines.
package ptytest

import (
	"bytes"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Open returns a new pseudo-terminal's master and slave ends, closed when
// the test ends; it skips the test where the machine has none.
func Open(t testing.TB) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	var n uint32
	Control(t, m, func(fd int) (err error) {
		if err = unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err == nil {
			n, err = unix.IoctlGetUint32(fd, unix.TIOCGPTN)
		}
		return err
	})
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// Control runs fn on f's descriptor and fails the test on an error.
func Control(t testing.TB, f *os.File, fn func(fd int) error) {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fnErr error
	if err := rc.Control(func(fd uintptr) { fnErr = fn(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if fnErr != nil {
		t.Fatal(fnErr)
	}
}

// SetSize sets the terminal's window size (on the master end, the kernel
// signals SIGWINCH to the terminal's foreground process group).
func SetSize(t testing.TB, f *os.File, rows, cols uint16) {
	t.Helper()
	Control(t, f, func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
}

// Mode returns the terminal's mode (termios).
func Mode(t testing.TB, f *os.File) unix.Termios {
	t.Helper()
	var tio *unix.Termios
	Control(t, f, func(fd int) (err error) {
		tio, err = unix.IoctlGetTermios(fd, unix.TCGETS)
		return err
	})
	return *tio
}

// Queued is how many bytes of input wait to be read on the terminal.
func Queued(t testing.TB, f *os.File) int {
	t.Helper()
	var n int
	Control(t, f, func(fd int) (err error) {
		n, err = unix.IoctlGetInt(fd, unix.TIOCINQ)
		return err
	})
	return n
}

// ReadUntil reads master until want appears, failing the test after d.
func ReadUntil(t testing.TB, master *os.File, want string, d time.Duration) string {
	t.Helper()
	var got []byte
	_ = master.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte(want)) {
		n, err := master.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("reading the terminal (want %q): %v; got:\n%s", want, err, got)
		}
	}
	return string(got)
}

// Drain discards what master has to read now.
func Drain(master *os.File) {
	_ = master.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	buf := make([]byte, 4096)
	for {
		if _, err := master.Read(buf); err != nil {
			return
		}
	}
}
