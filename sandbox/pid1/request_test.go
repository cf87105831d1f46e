package pid1

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRequestRoundTrips(t *testing.T) {
	want := Request{Args: []string{"sh", "-c", "echo hi"}, Env: []string{"PATH=/usr/bin:/bin", "TOKEN=s3cret", "EMPTY="}, Cwd: "/sandbox"}
	data, err := want.Encode()
	if err != nil {
		t.Fatal(err)
	}
	rd := bytes.NewReader(append(data, "trailing"...))
	got, err := ReadRequest(rd)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("round trip (-want +got):\n%s", d)
	}
	if rd.Len() != len("trailing") {
		t.Errorf("ReadRequest read %d bytes past the request", len("trailing")-rd.Len())
	}
}

// frame is body with Encode's length header.
func frame(body string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// TestMalformedRequestIsRefusedWithAReason: whatever is not one whole,
// valid request is an error naming what is wrong, never a partial request.
func TestMalformedRequestIsRefusedWithAReason(t *testing.T) {
	huge := binary.BigEndian.AppendUint32(nil, MaxRequest+1)
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"nothing", nil, "unexpected EOF"},
		{"short header", []byte{0, 0}, "unexpected EOF"},
		{"short body", frame(`{"args":["true"],"cwd":"/"}`)[:10], "unexpected EOF"},
		{"oversized", huge, "more than the"},
		{"not JSON", frame("hello"), "decoding"},
		{"unknown field", frame(`{"args":["true"],"cwd":"/","user":0}`), "unknown field"},
		{"two values", frame(`{"args":["true"],"cwd":"/"} {}`), "more than one"},
		{"null", frame(`null`), "no command"},
		{"no command", frame(`{"args":[],"cwd":"/"}`), "no command"},
		{"empty command", frame(`{"args":[""],"cwd":"/"}`), "no command"},
		{"NUL in an argument", frame(`{"args":["a\u0000b"],"cwd":"/"}`), "NUL"},
		{"env without name", frame(`{"args":["true"],"env":["=x"],"cwd":"/"}`), "environment"},
		{"env without =", frame(`{"args":["true"],"env":["X"],"cwd":"/"}`), "environment"},
		{"relative cwd", frame(`{"args":["true"],"cwd":"tmp"}`), "working directory"},
		{"unclean cwd", frame(`{"args":["true"],"cwd":"/tmp/../etc"}`), "working directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ReadRequest(bytes.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ReadRequest: %+v, %v; want an error about %q", r, err, tc.want)
			}
			if err != nil && (r.Args != nil || r.Env != nil || r.Cwd != "") {
				t.Errorf("a refused request came with parts: %+v", r)
			}
		})
	}
	if _, err := (Request{Args: []string{"x"}, Cwd: "/", Env: []string{strings.Repeat("A", MaxRequest) + "=1"}}).Encode(); err == nil {
		t.Error("Encode accepted a request over MaxRequest")
	}
}

// FuzzReadRequest: any input is a valid request or an error, never a
// panic; what is accepted encodes back to a request read the same way.
func FuzzReadRequest(f *testing.F) {
	good, _ := Request{Args: []string{"echo", "hi"}, Env: []string{"A=b"}, Cwd: "/w"}.Encode()
	f.Add(good)
	f.Add(frame(`{"args":["x"],"cwd":"/","env":null}`))
	f.Add(frame(`{"args":["a\u0000"],"cwd":"/"}`))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := ReadRequest(bytes.NewReader(in))
		if err != nil {
			return
		}
		if err := r.Check(); err != nil {
			t.Fatalf("accepted a request Check refuses: %v", err)
		}
		again, err := r.Encode()
		if err != nil {
			t.Fatalf("accepted request does not encode: %v", err)
		}
		r2, err := ReadRequest(bytes.NewReader(again))
		if err != nil {
			t.Fatalf("re-encoded request refused: %v", err)
		}
		if d := cmp.Diff(r, r2, cmp.Comparer(func(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") })); d != "" {
			t.Fatalf("round trip (-first +second):\n%s", d)
		}
	})
}

func TestCommandOfInitArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{Args([]string{"echo", "--", "x"}, nil), []string{"echo", "--", "x"}},
		{Args([]string{"sh"}, &WindowSize{Rows: 2, Cols: 3}), []string{"sh"}},
		{WaitArgs(), nil},
		{[]string{"echo", "--", "x"}, nil},
	} {
		got, ok := Command(tc.args)
		if d := cmp.Diff(tc.want, got); d != "" || ok != (tc.want != nil) {
			t.Errorf("Command(%q) = %q, %v", tc.args, got, ok)
		}
	}
}

// waitingInit is the init (this test binary) in waiting mode with the
// read end of a pipe as RequestFD; the write end is returned.
func waitingInit(t *testing.T) (*exec.Cmd, *os.File) {
	t.Helper()
	c := initCmd(t, nil)
	c.Args = []string{c.Args[0], waitFlag}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c.ExtraFiles = []*os.File{r}
	t.Cleanup(func() { r.Close(); w.Close() })
	return c, w
}

// TestWaitingInitRunsTheRequestedCommandWithOnlyItsStdio: the command runs
// with the request's environment and working directory, and inherits
// neither the request pipe nor the init's own environment.
func TestWaitingInitRunsTheRequestedCommandWithOnlyItsStdio(t *testing.T) {
	dir := t.TempDir()
	c, w := waitingInit(t)
	c.Env = append(c.Env, "INIT_ONLY=leak")
	var out, errOut bytes.Buffer
	c.Stdout, c.Stderr = &out, &errOut
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	req, err := Request{Args: []string{"sh", "-c", `pwd; echo "$SECRET"; env | grep -c INIT_ONLY; ls /proc/self/fd`},
		Env: []string{"PATH=" + os.Getenv("PATH"), "SECRET=s3cret"}, Cwd: dir}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(req); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := c.Wait(); err != nil {
		t.Fatalf("%v: %s", err, errOut.String())
	}
	real, _ := filepath.EvalSymlinks(dir)
	// ls's own directory descriptor is the 4th entry; nothing else.
	want := real + "\ns3cret\n0\n0\n1\n2\n3\n"
	if out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
}

// TestWaitingInitRefusesABadRequest: a malformed request, or none (the
// pipe closed), makes the init exit 125 with a clear message, starting
// nothing.
func TestWaitingInitRefusesABadRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		send []byte
		want string
	}{
		{"eof", nil, "unexpected EOF"},
		{"garbage", frame("{"), "decoding"},
		{"oversized", binary.BigEndian.AppendUint32(nil, MaxRequest+1), "more than the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, w := waitingInit(t)
			var errOut bytes.Buffer
			c.Stderr = &errOut
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			_, _ = w.Write(tc.send)
			w.Close()
			code := exitCode(t, c.Wait())
			if code != ExitInitFailed || !strings.Contains(errOut.String(), "launcher: init: the execution request: ") ||
				!strings.Contains(errOut.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and a message about %q", code, errOut.String(), ExitInitFailed, tc.want)
			}
		})
	}
}

// TestWaitingInitReadsOneRequestOnly: what follows the request on the
// pipe is never read, and the pipe is closed before the command starts: a
// second request cannot reach the init.
func TestWaitingInitReadsOneRequestOnly(t *testing.T) {
	c, w := waitingInit(t)
	var out bytes.Buffer
	c.Stdout = &out
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	first, _ := Request{Args: []string{"sh", "-c", "sleep 0.2; echo first"}, Env: []string{"PATH=" + os.Getenv("PATH")}, Cwd: "/"}.Encode()
	second, _ := Request{Args: []string{"sh", "-c", "echo second"}, Env: []string{"PATH=" + os.Getenv("PATH")}, Cwd: "/"}.Encode()
	if _, err := w.Write(first); err != nil {
		t.Fatal(err)
	}
	// The init closes its end once it has read the request: a write then
	// finds no reader (EPIPE) or sits unread in the pipe until exit.
	_, _ = w.Write(second)
	if err := c.Wait(); err != nil {
		t.Fatal(err)
	}
	if out.String() != "first\n" {
		t.Errorf("output %q, want only the first request's", out.String())
	}
	_, _ = io.Copy(io.Discard, bytes.NewReader(nil))
}
