package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// These tests run `egressd serve` as a process of its own (this test binary,
// re-executed as egressd: see TestMain), on loopback only, and kill it the
// ways an operator or a supervisor does.

// runAsEgressd, set in the environment, makes the test binary egressd.
const runAsEgressd = "EGRESSD_TEST_RUN_AS_EGRESSD"

func TestMain(m *testing.M) {
	if os.Getenv(runAsEgressd) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// served is one `egressd serve` process.
type served struct {
	cmd    *exec.Cmd
	stderr *syncBuf
	waited chan error
	// proxy, dns and admin are the listeners' addresses.
	proxy, dns string
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freePort returns a loopback address:port nothing listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startServe starts egressd serve with args plus its listeners on free
// loopback ports, through the shell command prefix (e.g. a ulimit) when
// given, and waits until it is ready. The process is killed at the end of
// the test if it still runs.
func startServe(t *testing.T, shellPrefix string, args ...string) *served {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := &served{stderr: &syncBuf{}, waited: make(chan error, 1), proxy: freePort(t), dns: freePort(t)}
	args = append([]string{"serve", "--proxy-listen", s.proxy, "--dns-listen", s.dns, "--transparent-listen", freePort(t),
		"--upstream-dns", "127.0.0.1:9", "--ready-fd", "3", "--log-format", "json"}, args...)
	if shellPrefix != "" {
		s.cmd = exec.Command("/bin/sh", append([]string{"-c", shellPrefix + ` && exec "$0" "$@"`, exe}, args...)...)
	} else {
		s.cmd = exec.Command(exe, args...)
	}
	s.cmd.Env = append(os.Environ(), runAsEgressd+"=1")
	s.cmd.Stderr = s.stderr
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.ExtraFiles = []*os.File{w}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	go func() { s.waited <- s.cmd.Wait() }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-s.waited
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		r.Close()
		ready <- line
	}()
	select {
	case line := <-ready:
		if line != "ready\n" {
			t.Fatalf("egressd serve did not become ready (ready-fd said %q); stderr:\n%s", line, s.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("egressd serve not ready after 30s; stderr:\n%s", s.stderr)
	}
	return s
}

// stop sends sig and waits for the process to end.
func (s *served) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.waited:
	case <-time.After(15 * time.Second):
		t.Fatalf("egressd serve still running 15s after %v", sig)
	}
	s.waited <- nil // for the cleanup
}

// askDenied sends n queries for names no rule allows (each answered and
// audited at once) and checks every answer.
func askDenied(t *testing.T, addr string, n int) {
	t.Helper()
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	for i := range n {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("q%d.denied.test.", i), dns.TypeA)
		r, _, err := c.Exchange(m, addr)
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		if r.Rcode != dns.RcodeNameError {
			t.Fatalf("query %d: %s, want NXDOMAIN", i, dns.RcodeToString[r.Rcode])
		}
	}
}

// auditTargets reads an audit log: the target of every record, in order.
func auditTargets(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if line == "" {
			continue
		}
		var r struct{ Target string }
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %d is not a record: %q", i+1, line)
		}
		out = append(out, r.Target)
	}
	return out
}

// TestAuditRecordsAreAllWrittenOnSIGTERM: the audit writer batches
// records, and a SIGTERM (what a supervisor sends) writes every one before
// egressd exits.
func TestAuditRecordsAreAllWrittenOnSIGTERM(t *testing.T) {
	log := filepath.Join(t.TempDir(), "audit.log")
	// An interval longer than the test: only the shutdown can write them.
	s := startServe(t, "", "--profile", "strict", "--audit-log", log, "--audit-flush-interval", "1h")
	const n = 300
	askDenied(t, s.dns, n)
	if got := auditTargets(t, log); len(got) != 0 {
		t.Logf("%d records written before SIGTERM (a batch filled)", len(got))
	}
	s.stop(t, syscall.SIGTERM)
	got := auditTargets(t, log)
	if len(got) != n {
		t.Fatalf("%d audit records after SIGTERM, want %d\nstderr:\n%s", len(got), n, s.stderr)
	}
	for i, target := range got {
		if want := fmt.Sprintf("q%d.denied.test", i); target != want {
			t.Fatalf("record %d is for %q, want %q", i, target, want)
		}
	}
}

// TestAuditRecordsOlderThanTheIntervalSurviveSIGKILL: a record waits at
// most one flush interval in egressd's memory, so a SIGKILL (which no
// process can act on) loses only what came in the last interval.
func TestAuditRecordsOlderThanTheIntervalSurviveSIGKILL(t *testing.T) {
	log := filepath.Join(t.TempDir(), "audit.log")
	s := startServe(t, "", "--profile", "strict", "--audit-log", log, "--audit-flush-interval", "50ms")
	const n = 100
	askDenied(t, s.dns, n)
	// Ten intervals and more: the last record is due well before the kill.
	time.Sleep(time.Second)
	s.stop(t, syscall.SIGKILL)
	if got := auditTargets(t, log); len(got) != n {
		t.Fatalf("%d audit records after SIGKILL, want all %d (each was older than the flush interval)", len(got), n)
	}
}
