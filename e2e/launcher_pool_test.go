package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressd/egressd/e2e/fakenet"
	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/sandbox"
	"github.com/egressd/egressd/sandbox/pid1"
)

// TestServePool runs `launcher serve --pool` in the fake internet and
// plays tenant A then tenant B on the same warm sandbox, as a client of
// the API would: nothing of A — processes, connections, DNS answers,
// learned addresses, files — reaches B, scored at the world's servers; a
// sandbox whose check fails at release is destroyed; and the pool leaves
// exactly its own sandboxes while it runs and nothing once it stops.
func TestServePool(t *testing.T) {
	serveGroup(t, "pool", []serveCase{
		{"TenantAsConnectionAndBackgroundProcessAreGoneForB", testPoolConnectionAndProcessGone},
		{"TenantAsResolvedNameIsNXDOMAINAndItsAddressClosedForB", testPoolDNSGone},
		{"TenantAsFilesAreGoneForB", testPoolFilesGone},
		{"SandboxWithARuleAddedIsDestroyedNeverReused", testPoolVerificationFailure},
		{"ExecutionsLeaveOnlyThePoolsSandboxesAndCloseLeavesNothing", testPoolLeavesOnlyItsOwn},
		{"WarmCommandGetsOnlyWhatAColdOneGets", testPoolWarmCommandGetsWhatColdGets},
		{"WarmAnswerNamesItsDenialsAndNotTheLastTenants", testPoolWarmAnswerNamesItsDenials},
		{"TenantAsClosedConnectionsAreNotListedForB", testPoolClosedConnectionsNotListed},
	})
}

// poolServer is a `launcher serve --pool N` in its own state directory
// (so its sandboxes are the egs-* entries there), once its pool is warm.
type poolServer struct {
	*server
	stateDir string
}

func startPoolServer(t *testing.T, lw *lworld, n int, args ...string) *poolServer {
	t.Helper()
	stateDir := serveStateDir(t)
	s := startServer(t, lw, append([]string{"--state-dir", stateDir, "--pool", fmt.Sprint(n)}, args...)...)
	ps := &poolServer{server: s, stateDir: stateDir}
	ps.waitWarm(n)
	return ps
}

// waitWarm waits until the pool has n idle sandboxes.
func (ps *poolServer) waitWarm(n int) {
	ps.t.Helper()
	if !eventually(60*time.Second, func() bool { return ps.stats().Idle == n }) {
		ps.t.Fatalf("the pool never had %d idle sandboxes: %+v\n%s", n, ps.stats(), ps.stderr.String())
	}
}

// serveStateDir is a state directory of the test's own under /run,
// checked empty when the test ends.
func serveStateDir(t *testing.T) string {
	t.Helper()
	stateDir, err := os.MkdirTemp("/run", "serve-e2e-state-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(stateDir, 0o711); err != nil { // egressd, its own user, passes through
		t.Fatal(err)
	}
	// Not RemoveAll: a sandbox left in it would still have mounts there.
	// What stays is the uplinks' subnet lock.
	t.Cleanup(func() {
		_ = os.Remove(filepath.Join(stateDir, "subnet.lock"))
		if err := os.Remove(stateDir); err != nil {
			t.Errorf("the state directory is not empty at the end: %v", err)
		}
	})
	return stateDir
}

// poolStats is GET /v1/pool's pool part.
type poolStats struct {
	Mode string `json:"mode"`
	Idle int    `json:"idle"`
	Pool struct {
		Created   int `json:"created"`
		Destroyed int `json:"destroyed"`
		Failed    int `json:"failed"`
		Warm      int `json:"warm"`
		Cold      int `json:"cold"`
	} `json:"pool"`
}

func (ps *poolServer) stats() poolStats {
	var st poolStats
	if err := json.Unmarshal([]byte(ps.get("/v1/pool")), &st); err != nil {
		ps.t.Fatalf("GET /v1/pool: %v", err)
	}
	return st
}

// sandboxes lists the server's sandboxes (its state directory's).
func (ps *poolServer) sandboxes() []string {
	var ids []string
	ents, _ := os.ReadDir(ps.stateDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), sandbox.IDPrefix) {
			ids = append(ids, e.Name())
		}
	}
	return ids
}

// tenant is a request running script with allow as its allow list.
func tenant(script string, allow ...string) map[string]any {
	req := sh(script)
	req["network"] = map[string]any{"allow": allow}
	return req
}

func countURIPrefix(w *fakenet.World, prefix string) int {
	n := 0
	for _, r := range w.HTTPLog() {
		if strings.HasPrefix(r.URI, prefix) {
			n++
		}
	}
	return n
}

// leakyClient keeps one TCP connection to allowed.test:80 and sends a
// request on it every 0.2 s, forever, numbering them: /a-leak-N.
const leakyClient = `import socket, time
s = socket.create_connection(("allowed.test", 80), timeout=5)
i = 0
while True:
    s.sendall(b"GET /a-leak-%d HTTP/1.1\r\nHost: allowed.test\r\n\r\n" % i)
    s.recv(65536)
    i += 1
    time.sleep(0.2)
`

// rawSend connects to 203.0.113.10:80 by address and sends one request.
const rawSend = `import socket, sys
try:
    s = socket.create_connection(("203.0.113.10", 80), timeout=3)
    s.sendall(b"GET /b-raw HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
    print("raw:", s.recv(100)[:12])
except Exception as e:
    print("raw refused:", type(e).__name__)
`

func testPoolConnectionAndProcessGone(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startPoolServer(t, lw, 1)
	// Tenant A: a long-lived connection sending all the time, from a
	// background process, and a sleeper; A's command returns at once.
	a := s.execute(tenant("python3 -c '"+leakyClient+"' >/dev/null 2>&1 & sleep 300 >/dev/null 2>&1 & sleep 1; echo started", "allowed.test"))
	if a.ExitCode != 0 || a.Stdout != "started\n" {
		t.Fatalf("tenant A: %+v", a)
	}
	if !eventually(5*time.Second, func() bool { return countURIPrefix(lw.w, "/a-leak-") > 0 }) {
		t.Fatalf("tenant A's connection never reached allowed.test: %+v", a)
	}
	sentByA := countURIPrefix(lw.w, "/a-leak-")
	// Between the tenants (the release's checks, after the answer, done:
	// a conntrack process of the test's in the namespace meanwhile would
	// be a process left): the pooled namespace tracks no flow of A's.
	s.waitWarm(1)
	if !eventually(5*time.Second, func() bool { return len(conntrackEntries(t, filepath.Join(sandbox.NetnsDir, a.Sandbox))) == 0 }) {
		t.Errorf("conntrack in the pooled namespace after tenant A's release: %q", conntrackEntries(t, filepath.Join(sandbox.NetnsDir, a.Sandbox)))
	}
	// Tenant B on the same sandbox denies allowed.test; for two seconds it
	// looks for A's processes and tries A's path by name and by address.
	b := s.execute(tenant("ps -eo args; "+curlPlain+" http://allowed.test/b-name; python3 -c '"+rawSend+"'; sleep 2", "other.test"))
	if b.Sandbox != a.Sandbox {
		t.Fatalf("tenant B ran in %s, A in %s: the pool did not reuse the sandbox", b.Sandbox, a.Sandbox)
	}
	if strings.Contains(b.Stdout, "a-leak") || strings.Contains(b.Stdout, "sleep 300") {
		t.Errorf("tenant B sees tenant A's processes:\n%s", b.Stdout)
	}
	s.waitWarm(1)
	if procs := processesInNetns(filepath.Join(sandbox.NetnsDir, a.Sandbox)); !idleProcesses(procs) {
		t.Errorf("processes in the pooled namespace between tenants: %v, want egressd and the next container's waiting init alone", procs)
	}
	if got := countURIPrefix(lw.w, "/a-leak-"); got != sentByA {
		t.Errorf("tenant A's connection sent %d more requests after its execution ended", got-sentByA)
	}
	if n := countURIPrefix(lw.w, "/b-"); n != 0 {
		t.Errorf("the world served tenant B %d requests on A's path; want none\n%+v", n, b)
	}
	if st := s.stats(); st.Pool.Failed != 0 || st.Pool.Warm != 2 {
		t.Errorf("pool after two tenants: %+v", st)
	}
}

// idleProcesses reports whether procs (pid → comm) are an idle pooled
// sandbox's: its egressd and its next container's init, waiting for the
// command (no tenant's command reached it yet).
func idleProcesses(procs map[int]string) bool {
	comms := slices.Sorted(mapValues(procs))
	return slices.Equal(comms, []string{"egressd", filepath.Base(pid1.Path)})
}

func mapValues(m map[int]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

func testPoolDNSGone(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startPoolServer(t, lw, 1)
	a := s.execute(tenant(digScript+"q keep.test; "+curlPlain+" -o /dev/null -w '%{http_code}\\n' http://keep.test/a-dns", "keep.test"))
	if !strings.Contains(a.Stdout, "keep.test status=NOERROR answer=203.0.113.10") || !strings.Contains(a.Stdout, "200") {
		t.Fatalf("tenant A could not resolve and reach keep.test: %+v", a)
	}
	queries := lw.w.DNSQueries("keep.test")
	b := s.execute(tenant(digScript+"q keep.test; "+curlPlain+" --noproxy '*' --resolve keep.test:80:203.0.113.10 http://keep.test/b-learned; python3 -c '"+rawSend+"'", "other.test"))
	if b.Sandbox != a.Sandbox {
		t.Fatalf("tenant B ran in %s, A in %s: the pool did not reuse the sandbox", b.Sandbox, a.Sandbox)
	}
	if !strings.Contains(b.Stdout, "keep.test status=NXDOMAIN answer=none") {
		t.Errorf("tenant B's query for A's name: %q, want NXDOMAIN", b.Stdout)
	}
	if got := lw.w.DNSQueries("keep.test"); got != queries {
		t.Errorf("tenant B's query for keep.test reached the world's DNS (%d → %d)", queries, got)
	}
	if n := countURIPrefix(lw.w, "/b-"); n != 0 {
		t.Errorf("the world served tenant B %d requests to the address A's answer taught egressd\n%+v", n, b)
	}
}

func testPoolFilesGone(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startPoolServer(t, lw, 1)
	const paths = `/sandbox/a-file /tmp/a-file "$HOME/a-file" /var/tmp/a-file /a-file`
	a := s.execute(tenant(`for f in `+paths+`; do echo tenant-a > "$f" 2>/dev/null && echo "wrote $f"; done`, "allowed.test"))
	t.Logf("tenant A:\n%s", a.Stdout)
	for _, want := range []string{"wrote /sandbox/a-file", "wrote /tmp/a-file"} {
		if !strings.Contains(a.Stdout, want) {
			t.Fatalf("tenant A could not write %s: %+v", want, a)
		}
	}
	b := s.execute(tenant(`for f in `+paths+`; do [ -e "$f" ] && echo "left $f: $(cat "$f")"; done; ls -A /tmp /sandbox; echo checked`, "other.test"))
	if b.Sandbox != a.Sandbox {
		t.Fatalf("tenant B ran in %s, A in %s: the pool did not reuse the sandbox", b.Sandbox, a.Sandbox)
	}
	if strings.Contains(b.Stdout, "left ") || strings.Contains(b.Stdout, "a-file") || !strings.HasSuffix(b.Stdout, "checked\n") {
		t.Errorf("tenant B finds tenant A's files (A wrote:\n%s):\n%s", a.Stdout, b.Stdout)
	}
}

func testPoolVerificationFailure(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startPoolServer(t, lw, 1)
	ids := s.sandboxes()
	if len(ids) != 1 {
		t.Fatalf("a pool of 1 has sandboxes %v", ids)
	}
	id := ids[0]
	nsPath := filepath.Join(sandbox.NetnsDir, id)
	// While tenant A runs, something adds a rule to the sandbox's
	// firewall that lets everything out.
	var wg sync.WaitGroup
	var added error
	wg.Add(1)
	go func() {
		defer wg.Done()
		time.Sleep(time.Second)
		out, err := exec.Command("nsenter", "--net="+nsPath, "iptables", "-w", "-I", firewall.ChainOutput, "1", "-j", "ACCEPT").CombinedOutput()
		if err != nil {
			added = fmt.Errorf("%v: %s", err, out)
		}
	}()
	a := s.execute(tenant("sleep 3; echo done", "allowed.test"))
	wg.Wait()
	if added != nil {
		t.Fatalf("adding the rule: %v", added)
	}
	if a.Sandbox != id {
		t.Errorf("tenant A ran in %s, want %s", a.Sandbox, id)
	}
	// The verification runs after the answer, before the sandbox is idle.
	if !eventually(30*time.Second, func() bool { _, err := os.Stat(nsPath); return err != nil }) {
		t.Errorf("the sandbox whose firewall changed (%s) still exists", id)
	}
	if !strings.Contains(s.stderr.String(), "pool: sandbox destroyed") {
		t.Errorf("no log line says the sandbox was destroyed:\n%s", s.stderr.String())
	}
	b := s.execute(tenant(curlPlain+" http://allowed.test/b-open; echo exit=$?", "other.test"))
	if b.Sandbox == id {
		t.Errorf("tenant B was given the sandbox whose verification failed (%s)", id)
	}
	if n := countURIPrefix(lw.w, "/b-"); n != 0 {
		t.Errorf("tenant B reached allowed.test (%d requests)\n%+v", n, b)
	}
	if st := s.stats(); st.Pool.Failed != 1 {
		t.Errorf("pool: %+v, want one failed", st)
	}
	if m := s.get("/metrics"); !strings.Contains(m, `egressd_serve_pool_destroyed_total{reason="failed"} 1`) {
		t.Errorf("metrics do not count the destroyed sandbox:\n%s", m)
	}
}

func testPoolLeavesOnlyItsOwn(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startPoolServer(t, lw, 2, "--max-concurrent", "2")
	pooled := s.sandboxes()
	check := func(i int, res execResult) {
		if res.Stdout != fmt.Sprintf("run-%d\n", i) || !slices.Contains(pooled, res.Sandbox) {
			t.Errorf("execution %d: %+v; want it in one of the pool's sandboxes %v", i, res, pooled)
		}
	}
	check(0, s.execute(sh("echo run-0")))
	s.waitWarm(2)
	fds := openFDs(t, s.cmd.Process.Pid)
	// Sequential, then two at a time (the pool's size).
	for i := 1; i < 10; i++ {
		check(i, s.execute(sh(fmt.Sprintf("echo run-%d", i))))
	}
	for i := 10; i < 30; i += 2 {
		var wg sync.WaitGroup
		for j := i; j < i+2; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				check(j, s.execute(sh(fmt.Sprintf("echo run-%d", j))))
			}()
		}
		wg.Wait()
	}
	s.waitWarm(2)
	after := openFDs(t, s.cmd.Process.Pid)
	t.Logf("the server's open descriptors: %d after the first execution, %d after 29 more", fds, after)
	if after > fds+8 {
		t.Errorf("the server's open descriptors grew from %d to %d over 29 executions", fds, after)
	}
	if got := s.sandboxes(); !slices.Equal(got, pooled) {
		t.Errorf("after 30 executions the server has sandboxes %v, want the pool's %v", got, pooled)
	}
	containers := runcContainers(t)
	for _, id := range pooled {
		if _, err := os.Stat(filepath.Join(sandbox.NetnsDir, id)); err != nil {
			t.Errorf("the pool's namespace %s: %v", id, err)
		}
		// Its next container, waiting for a command, and nothing else.
		if n := countOf(containers, id); n != 1 {
			t.Errorf("the idle sandbox %s has %d containers (runc list), want its next one", id, n)
		}
		if procs := processesInNetns(filepath.Join(sandbox.NetnsDir, id)); !idleProcesses(procs) {
			t.Errorf("processes in the idle sandbox %s: %v, want its egressd and the waiting init alone", id, procs)
		}
	}
	if st := s.stats(); st.Pool.Created != 2 || st.Pool.Destroyed != 0 || st.Pool.Failed != 0 || st.Pool.Warm != 30 {
		t.Errorf("pool after 30 executions: %+v", st)
	}
	s.stop()
	left := launcherLeftovers(t)
	for _, id := range pooled {
		for _, l := range left {
			if strings.Contains(l, id) {
				t.Errorf("after the server stopped: %s", l)
			}
		}
	}
}

// openFDs counts the open file descriptors of process pid.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// tcpSockets prints every TCP socket of the namespace that is not
// listening, as /proc/net/tcp and tcp6 list them: "STATE REMOTE".
const tcpSockets = `import socket, struct
for f in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(f).read().splitlines()[1:]:
        p = line.split()
        st, rem = p[3], p[2]
        if st == "0A":
            continue
        a, port = rem.split(":")
        raw = bytes.fromhex(a)
        if len(raw) == 4:
            ip = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(a, 16)))
        else:
            ip = socket.inet_ntop(socket.AF_INET6, b"".join(struct.pack("<I", int(a[i:i+8], 16)) for i in range(0, 32, 8)))
        print("socket", st, ip, int(port, 16))
print("listed")
`

// testPoolClosedConnectionsNotListed: the connections egressd made for
// tenant A, closed by A's clients, by A's end or by the reset, leave
// nothing in the pooled namespace's socket table (TIME_WAIT, FIN_WAIT)
// from which tenant B could read where A went (THREATS G9; attack review
// 2 read A's destination in /proc/net/tcp in every run).
func testPoolClosedConnectionsNotListed(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startPoolServer(t, lw, 1)
	const closedByA = `import socket
for i in range(3):
    c = socket.create_connection(("allowed.test", 80), timeout=5)
    c.sendall(b"GET /a-tw-%d HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n" % i)
    while c.recv(4096):
        pass
    c.close()
left = socket.create_connection(("allowed.test", 80), timeout=5)
left.sendall(b"GET /a-tw-open HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
left.recv(4096)
print("done")
`
	a := s.execute(tenant(curlPlain+" -o /dev/null -w '%{http_code}\\n' http://allowed.test/a-tw-proxy; python3 -c '"+closedByA+"'", "allowed.test"))
	if !strings.Contains(a.Stdout, "200") || !strings.Contains(a.Stdout, "done") {
		t.Fatalf("tenant A could not reach allowed.test: %+v", a)
	}
	if n := countURIPrefix(lw.w, "/a-tw-"); n != 5 {
		t.Fatalf("the world served tenant A %d of its 5 requests", n)
	}
	b := s.execute(tenant("python3 -c '"+tcpSockets+"'", "other.test"))
	if b.Sandbox != a.Sandbox {
		t.Fatalf("tenant B ran in %s, A in %s: the pool did not reuse the sandbox", b.Sandbox, a.Sandbox)
	}
	if !strings.Contains(b.Stdout, "listed") {
		t.Fatalf("tenant B could not list the sockets: %+v", b)
	}
	for _, line := range strings.Split(b.Stdout, "\n") {
		if strings.HasPrefix(line, "socket ") {
			t.Errorf("tenant B lists a socket of A's connections: %q", line)
		}
	}
}
