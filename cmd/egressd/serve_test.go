package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/syncbuf"
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
	stderr *syncbuf.Buffer
	waited chan error
	// proxy, dns and admin are the listeners' addresses.
	proxy, dns string
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
	s := &served{stderr: &syncbuf.Buffer{}, waited: make(chan error, 1), proxy: freePort(t), dns: freePort(t)}
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
//
// Also as the launcher runs it: its policy from a file it reloads itself
// (--watch-policy=false), so no file watcher is stopped on the way out.
func TestAuditRecordsAreAllWrittenOnSIGTERM(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"built-in profile", []string{"--profile", "strict"}},
		{"unwatched policy file", []string{"--policy", strictPolicyFile(t), "--watch-policy=false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "audit.log")
			// An interval longer than the test: only the shutdown can write them.
			s := startServe(t, "", append(tc.args, "--audit-log", log, "--audit-flush-interval", "1h")...)
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
		})
	}
}

// strictPolicyFile writes a policy file of the strict profile.
func strictPolicyFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.toml")
	if err := os.WriteFile(p, []byte("version = 1\nprofile = \"strict\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
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

// TestTunnelFloodPastTheFDLimitIsRefusedNotEMFILE: a sandbox that opens
// tunnel after tunnel must meet egressd's cap, refused cleanly and
// audited, never the process's descriptor limit (where accept4 and every
// dial fail with EMFILE for everyone). Under `ulimit -n 1024` egressd
// computes its cap from the limit, logs it and serves it in /metrics; the
// tunnels up to it are relayed, the ones past it get 503 max-tunnels, and
// once they close egressd serves again.
func TestTunnelFloodPastTheFDLimitIsRefusedNotEMFILE(t *testing.T) {
	echo := startHoldingEcho(t)
	log := filepath.Join(t.TempDir(), "audit.log")
	admin := freePort(t)
	s := startServe(t, "ulimit -n 1024", "--allow", "127.0.0.1:*", "--audit-log", log, "--admin-listen", admin,
		"--max-tunnels", "100000")

	limit := loggedTunnelCap(t, s)
	if limit < 16 || limit > 1024/2 {
		t.Fatalf("tunnel cap %d under a limit of 1024 descriptors; want 16..512 (two per tunnel, room kept for the rest)\nstderr:\n%s", limit, s.stderr)
	}
	if got := metricValue(t, admin, "egressd_proxy_max_tunnels"); got != float64(limit) {
		t.Errorf("egressd_proxy_max_tunnels = %v, want the logged cap %d", got, limit)
	}

	const past = 40
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	refused := 0
	for i := range limit + past {
		c, status, err := connectThrough(s.proxy, echo)
		if i < limit {
			if err != nil || status != 200 {
				t.Fatalf("tunnel %d (cap %d): status %d, err %v\nstderr:\n%s", i+1, limit, status, err, s.stderr)
			}
			if err := echoByte(c); err != nil {
				t.Fatalf("tunnel %d (cap %d) relays nothing: %v", i+1, limit, err)
			}
			held = append(held, c)
			continue
		}
		// Past the cap: a 503 (or, when many refusals are being written
		// at once, a reset), never a tunnel.
		if err == nil && status == 200 {
			t.Fatalf("tunnel %d opened past the cap of %d", i+1, limit)
		}
		if err == nil && status != 503 {
			t.Fatalf("tunnel %d past the cap: status %d, want 503", i+1, status)
		}
		if c != nil {
			c.Close()
		}
		refused++
	}
	if strings.Contains(s.stderr.String(), "too many open files") {
		t.Errorf("egressd ran out of descriptors:\n%s", s.stderr)
	}

	// Healthy afterwards: the held tunnels close, a new one relays, the
	// resolver answers.
	for _, c := range held {
		c.Close()
	}
	held = nil
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, status, err := connectThrough(s.proxy, echo)
		if err == nil && status == 200 {
			if err := echoByte(c); err != nil {
				t.Fatalf("a tunnel after the flood relays nothing: %v", err)
			}
			c.Close()
			break
		}
		if c != nil {
			c.Close()
		}
		refused++ // the held tunnels' handlers had not all let go yet
		if time.Now().After(deadline) {
			t.Fatalf("no tunnel 10s after the flood ended: status %d, err %v\nstderr:\n%s", status, err, s.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	askDenied(t, s.dns, 1)

	s.stop(t, syscall.SIGTERM)
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	limited := strings.Count(string(b), `"reason":"`+string(audit.ReasonMaxTunnels)+`"`)
	if limited != refused {
		t.Errorf("%d max-tunnels records in the audit log, want one per refused tunnel (%d)", limited, refused)
	}
}

// loggedTunnelCap reads the tunnel cap egressd logged at start (its
// stderr is copied in by another goroutine: it may come after ready).
func loggedTunnelCap(t *testing.T, s *served) int {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, line := range strings.Split(s.stderr.String(), "\n") {
			var l struct {
				MaxTunnels *int `json:"max_tunnels"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.MaxTunnels != nil {
				return *l.MaxTunnels
			}
		}
	}
	t.Fatalf("egressd logged no tunnel cap (max_tunnels); stderr:\n%s", s.stderr)
	return 0
}

// metricValue reads one unlabelled metric from the admin endpoint.
func metricValue(t *testing.T, admin, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

// connectThrough sends a CONNECT for target to the proxy at addr and
// returns the connection and the answer's status (the connection is nil
// when the proxy reset or closed it without an answer).
func connectThrough(addr, target string) (net.Conn, int, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, 0, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
		c.Close()
		return nil, 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		c.Close()
		return nil, 0, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, resp.StatusCode, nil
}

// echoByte sends a byte through c and reads it back.
func echoByte(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	b := []byte{0x01} // not a request line: relayed as raw TCP to an IP target
	if _, err := c.Write(b); err != nil {
		return err
	}
	_, err := io.ReadFull(c, b)
	return err
}

// startHoldingEcho serves loopback connections that echo every byte until
// the client closes, and returns its address.
func startHoldingEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	return ln.Addr().String()
}
