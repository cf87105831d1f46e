package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/sandbox"
)

// TestServePoolSoak runs 500 executions through `launcher serve --pool 2`
// and then holds the machine to exactly the pool's own state. It is a
// group of its own: its footprint is machine-wide (every egs- namespace,
// container and mount), which no other test may add to while it runs.
func TestServePoolSoak(t *testing.T) {
	serveGroup(t, "pool soak", []serveCase{
		{"FiveHundredExecutionsLeaveExactlyThePoolsStateAndTheServersFDsLevel", testPoolSoak},
	})
}

// TestServePoolRestartAndTenants: a pool server killed with SIGKILL
// leaves nothing once a new one reaped; two tenants running at once on a
// pool of 2 reach only their own hosts, files and processes; what a
// tenant wrote on a writable root is gone for the next (THREATS G9).
func TestServePoolRestartAndTenants(t *testing.T) {
	serveGroup(t, "pool restart and tenants", []serveCase{
		{"KilledPoolServerLeavesNothingAfterTheRestartsReap", testPoolKilledServerReaped},
		{"ConcurrentTenantsReachOnlyTheirOwnHostsFilesAndProcesses", testPoolConcurrentTenantsIsolated},
		{"TenantAsFilesOnTheWritableRootAreGoneForB", testPoolWritableRootFilesGone},
	})
}

// fullStats is GET /v1/pool's pool counts, all of them.
func (ps *poolServer) fullStats() sandbox.PoolStats {
	var st struct {
		Pool sandbox.PoolStats `json:"pool"`
	}
	if err := json.Unmarshal([]byte(ps.get("/v1/pool")), &st); err != nil {
		ps.t.Fatalf("GET /v1/pool: %v", err)
	}
	return st.Pool
}

// settled waits until the pool holds its n sandboxes, all idle, with
// nothing being made or destroyed (every sandbox made is pooled or
// destroyed).
func (ps *poolServer) settled(n int) sandbox.PoolStats {
	ps.t.Helper()
	var st sandbox.PoolStats
	if !eventually(60*time.Second, func() bool {
		st = ps.fullStats()
		return st.Idle == n && st.Busy == 0 && st.Creating == 0 && st.Created-st.Destroyed == uint64(n) && len(ps.sandboxes()) == n
	}) {
		ps.t.Fatalf("the pool never settled at %d idle sandboxes: %+v, state %v", n, st, ps.sandboxes())
	}
	return st
}

var (
	sandboxIDPattern = regexp.MustCompile(`(?i)egs-[0-9a-f]{8}`)
	ipv4Pattern      = regexp.MustCompile(`\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b`)
)

// normalize writes line with each sandbox id "egs-ID" and each uplink
// address (sandbox.DefaultSubnet) "NET"; ok is false when the line names a
// sandbox out of scope.
func normalize(line string, inScope func(id string) bool) (string, bool) {
	ok := true
	line = sandboxIDPattern.ReplaceAllStringFunc(line, func(id string) string {
		if !inScope(strings.ToLower(id)) {
			ok = false
		}
		return "egs-ID"
	})
	line = ipv4Pattern.ReplaceAllStringFunc(line, func(s string) string {
		if a, err := netip.ParseAddr(s); err == nil && sandbox.DefaultSubnet.Contains(a) {
			return "NET"
		}
		return s
	})
	return line, ok
}

// poolFootprint is what the sandboxes in scope hold on the machine, one
// sorted line per thing: their namespaces (ip netns list), the state
// directory's entries and each sandbox's own, runc's containers (the
// launcher's runtime root, runc's default), their links and rules in the
// world (both families, every table, beyond the world's own), the rules
// inside each namespace, their mounts, and the processes in each
// namespace by name. Ids read "egs-ID" and uplink addresses "NET", so two
// pools of one shape and size have the same footprint, and a footprint of
// nothing is empty; a thing of a sandbox out of scope is left out.
func poolFootprint(t *testing.T, lw *lworld, stateDir string, inScope func(id string) bool) []string {
	t.Helper()
	var fp []string
	add := func(kind, line string) {
		if l, ok := normalize(line, inScope); ok {
			fp = append(fp, kind+" "+l)
		}
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var namespaces []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], sandbox.IDPrefix) {
			if _, ok := normalize(f[0], inScope); ok {
				namespaces = append(namespaces, f[0])
			}
			add("netns", f[0])
		}
	}
	ents, _ := os.ReadDir(stateDir)
	for _, e := range ents {
		add("state", e.Name())
		if !e.IsDir() || !sandboxIDPattern.MatchString(e.Name()) {
			continue
		}
		sub, _ := os.ReadDir(filepath.Join(stateDir, e.Name()))
		for _, s := range sub {
			add("state", e.Name()+"/"+s.Name())
		}
	}
	for _, id := range runcContainers(t) {
		add("container", id)
	}
	for _, l := range sandboxLinks(func() string { out, _, _ := lw.w.Run(t, "ip", "-o", "link", "show"); return out }) {
		add("world-link", l)
	}
	own := map[string]int{}
	for _, line := range strings.Split(lw.before, "\n") {
		own[line]++
	}
	for _, line := range strings.Split(worldRules(t, lw.w), "\n") {
		if own[line] > 0 {
			own[line]--
			continue
		}
		add("world-rule", line)
	}
	for _, ns := range namespaces {
		path := filepath.Join(sandbox.NetnsDir, ns)
		rules := savedRules(t, ns, func(tool string) (string, string, int) {
			cmd := exec.Command("nsenter", "--net="+path, tool)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if err != nil && cmd.ProcessState == nil {
				return "", err.Error(), -1
			}
			return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
		})
		for _, line := range strings.Split(rules, "\n") {
			if line != "" {
				add("ns-rule", ns+" "+line)
			}
		}
		for _, comm := range processesInNetns(path) {
			add("process", ns+" "+comm)
		}
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		if mp := f[4]; strings.HasPrefix(mp, stateDir+"/") || strings.HasPrefix(mp, filepath.Join(sandbox.NetnsDir, sandbox.IDPrefix)) {
			add("mount", mp)
		}
	}
	slices.Sort(fp)
	return fp
}

// ofSandboxes keeps the lines of a footprint that name a sandbox.
func ofSandboxes(fp []string) []string {
	return slices.DeleteFunc(slices.Clone(fp), func(l string) bool { return !strings.Contains(l, "egs-ID") })
}

func countOf(fp []string, line string) int {
	n := 0
	for _, l := range fp {
		if l == line {
			n++
		}
	}
	return n
}

// conntrackEntries lists the conntrack entries, both families, of the
// namespace at nsPath (conntrack -L there).
func conntrackEntries(t *testing.T, nsPath string) []string {
	t.Helper()
	var entries []string
	for _, family := range []string{"ipv4", "ipv6"} {
		out, err := exec.Command("nsenter", "--net="+nsPath, "conntrack", "-L", "-f", family).Output()
		if err != nil {
			t.Fatalf("conntrack -L -f %s in %s: %v", family, nsPath, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.TrimSpace(line) != "" {
				entries = append(entries, line)
			}
		}
	}
	return entries
}

// vmRSS is process pid's resident set (VmRSS) in KiB.
func vmRSS(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// levelFDs is the server's open descriptors once the client's idle
// connections are closed and the server has closed its ends.
func (ps *poolServer) levelFDs() int {
	ps.t.Helper()
	ps.client.CloseIdleConnections()
	pid := ps.cmd.Process.Pid
	n := openFDs(ps.t, pid)
	eventually(5*time.Second, func() bool {
		time.Sleep(100 * time.Millisecond)
		m := openFDs(ps.t, pid)
		defer func() { n = m }()
		return m == n
	})
	return n
}

// soakExecution is execution i of the soak: its request and the check of
// its answer. Five kinds in turn: a fetch of an allowed host, a fetch of a
// denied one, a background process left running, files written where the
// sandbox user may write (each execution must find none of the earlier
// ones'), and a plain command with stdin.
func soakExecution(i int) (map[string]any, func(execResult) string) {
	var req map[string]any
	var check func(execResult) string
	switch i % 5 {
	case 0:
		uri := fmt.Sprintf("/soak-%d", i)
		req = tenant(curlPlain+" http://allowed.test"+uri, "allowed.test")
		check = func(r execResult) string {
			if got := replies(r.Stdout); r.ExitCode != 0 || len(got) != 1 || got[0].URI != uri {
				return "allowed fetch: no reply for " + uri
			}
			return ""
		}
	case 1:
		req = tenant(fmt.Sprintf("%s http://blocked.test/soak-%d; echo exit=$?", curlPlain, i), "allowed.test")
		check = func(r execResult) string {
			if len(replies(r.Stdout)) != 0 || !slices.ContainsFunc(r.Denied, func(d execDenial) bool { return d.Target == "blocked.test" }) {
				return "denied fetch: a reply, or no denial of blocked.test"
			}
			return ""
		}
	case 2:
		req = tenant(fmt.Sprintf("sleep 300 >/dev/null 2>&1 & python3 -c 'import time; time.sleep(300)' >/dev/null 2>&1 & echo bg-%d", i), "allowed.test")
		check = func(r execResult) string {
			if r.ExitCode != 0 || r.Stdout != fmt.Sprintf("bg-%d\n", i) {
				return "background processes: unexpected output"
			}
			return ""
		}
	case 3:
		req = tenant(fmt.Sprintf(`for d in /tmp "$HOME" /sandbox; do ls -A "$d" | grep soak-; echo x > "$d/soak-%d" || echo "cannot write $d"; done; echo files-%d`, i, i), "allowed.test")
		check = func(r execResult) string {
			if r.ExitCode != 0 || r.Stdout != fmt.Sprintf("files-%d\n", i) {
				return "files: an earlier execution's file is there, or a write failed"
			}
			return ""
		}
	default:
		req = tenant(fmt.Sprintf("echo run-%d; cat", i), "allowed.test")
		req["stdin"] = fmt.Sprintf("in-%d", i)
		check = func(r execResult) string {
			if r.ExitCode != 0 || r.Stdout != fmt.Sprintf("run-%d\nin-%d", i, i) {
				return "plain: unexpected output"
			}
			return ""
		}
	}
	return req, check
}

func testPoolSoak(t *testing.T) {
	const (
		total  = 500
		warmup = 20
	)
	lw := newLauncherWorld(t)
	s := startPoolServer(t, lw, 2, "--max-concurrent", "3")
	pid := s.cmd.Process.Pid
	everything := func(string) bool { return true }
	var mu sync.Mutex
	seen := map[string]bool{}
	failures := 0
	run := func(i int) {
		req, check := soakExecution(i)
		res := s.execute(req)
		mu.Lock()
		defer mu.Unlock()
		seen[res.Sandbox] = true
		if msg := check(res); msg != "" {
			failures++
			if failures <= 10 {
				t.Errorf("execution %d: %s\n%+v", i, msg, res)
			}
		}
	}
	// Sequential for the first 100, then 2, 3 and 4 clients at once
	// (--max-concurrent 3: the pool's 2, one sandbox made for the
	// execution and destroyed after it, one in the queue).
	clients := func(i int) int {
		switch {
		case i < 100:
			return 1
		case i < 250:
			return 2
		case i < 375:
			return 3
		}
		return 4
	}
	start := time.Now()
	var fdsWarm, rssWarm int
	var warm []string
	for i := 0; i < total; {
		if i == warmup {
			s.settled(2)
			fdsWarm, rssWarm = s.levelFDs(), vmRSS(t, pid)
			warm = poolFootprint(t, lw, s.stateDir, everything)
		}
		n := min(clients(i), total-i)
		var wg sync.WaitGroup
		for j := i; j < i+n; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				run(j)
			}()
		}
		wg.Wait()
		i += n
	}
	took := time.Since(start)
	st := s.settled(2)
	fdsEnd, rssEnd := s.levelFDs(), vmRSS(t, pid)
	t.Logf("%d executions in %s (%s each); pool %+v; %d sandboxes used", total, took.Round(time.Millisecond), (took / total).Round(time.Millisecond), st, len(seen))
	t.Logf("the server after %d executions: VmRSS %d KiB → %d KiB (%+d KiB), open descriptors %d → %d", warmup, rssWarm, rssEnd, rssEnd-rssWarm, fdsWarm, fdsEnd)
	if failures > 0 {
		t.Errorf("%d of %d executions went wrong", failures, total)
	}
	if st.Failed != 0 || st.Warm != total || st.Cold != 0 {
		t.Errorf("pool after %d executions: %+v; want every one warm, none failed", total, st)
	}
	if fdsEnd > fdsWarm+4 {
		t.Errorf("the server's open descriptors grew from %d to %d over %d executions", fdsWarm, fdsEnd, total-warmup)
	}
	if n := lw.w.HTTPRequests("blocked.test"); n != 0 {
		t.Errorf("the fake server for blocked.test saw %d requests", n)
	}
	if diff := cmp.Diff(warm, poolFootprint(t, lw, s.stateDir, everything)); diff != "" {
		t.Errorf("the machine after %d executions is not the pool's own state after %d (-after warm-up +at the end):\n%s", total, warmup, diff)
	}
	// Of every sandbox an execution ran in, only the pool's are left.
	pooled := s.sandboxes()
	var gone []string
	for id := range seen {
		if !slices.Contains(pooled, id) {
			gone = append(gone, id)
		}
	}
	if left := ofSandboxes(poolFootprint(t, lw, s.stateDir, func(id string) bool { return slices.Contains(gone, id) })); len(left) > 0 {
		t.Errorf("sandboxes no longer pooled left %q", left)
	}
	s.stop()
	if left := ofSandboxes(poolFootprint(t, lw, s.stateDir, everything)); len(left) > 0 {
		t.Errorf("after the server stopped: %q", left)
	}
}

// procStart is process pid's start time (field 22 of /proc/PID/stat), ""
// when there is no such process or it is dead (a zombie not yet reaped
// holds nothing): a pid and its start time name one process even if the
// pid is reused.
func procStart(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// comm, field 2, may hold spaces: count from after its ')'.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return ""
	}
	return f[19]
}

func testPoolKilledServerReaped(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startPoolServer(t, lw, 2)
	oldIDs := s.sandboxes()
	old := func(id string) bool { return slices.Contains(oldIDs, id) }
	fresh := poolFootprint(t, lw, s.stateDir, old)

	// An execution that runs until the server dies.
	running := s.streamInBackground(`{"cmd": "sh", "args": ["-c", "echo started; sleep 30"], "network": {"allow": ["allowed.test"]}}`)
	var inFlight string
	if !eventually(60*time.Second, func() bool {
		for _, id := range oldIDs {
			for _, comm := range processesInNetns(filepath.Join(sandbox.NetnsDir, id)) {
				if comm == "sleep" {
					inFlight = id
					return true
				}
			}
		}
		return false
	}) {
		t.Fatalf("the execution never ran in one of the pool's sandboxes %v\n%s", oldIDs, s.stderr.String())
	}
	// Every process of the old server's sandboxes: egressd in each, the
	// execution's in one.
	procs := map[int]string{}
	for _, id := range oldIDs {
		for pid := range processesInNetns(filepath.Join(sandbox.NetnsDir, id)) {
			procs[pid] = procStart(pid)
		}
	}
	// Should the restart not reap them, the sandboxes are removed from
	// inside the world (whose namespace their records name) before the
	// world goes.
	t.Cleanup(func() {
		for _, id := range oldIDs {
			if _, err := os.Stat(filepath.Join(sandbox.NetnsDir, id)); err == nil {
				lw.w.Run(t, launcherBinary(t), "cleanup", "--state-dir", s.stateDir)
				return
			}
		}
	})

	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-s.exited
	<-running
	left := poolFootprint(t, lw, s.stateDir, old)
	// (egressd dies with the server: its parent-death signal.)
	for _, want := range []string{"netns egs-ID", "container egs-ID", "world-link egs-ID", "process egs-ID sleep", "mount /run/netns/egs-ID"} {
		if !slices.Contains(left, want) {
			t.Fatalf("the killed server left no %q: nothing to reap (the test proves nothing)\n%q", want, left)
		}
	}
	if n := countOf(left, "netns egs-ID"); n != 2 {
		t.Fatalf("the killed server left %d namespaces, want its 2: %q", n, left)
	}

	// A new server on the same state directory reaps them before it serves.
	s2 := &poolServer{server: startServerAt(t, lw, s.sock, "--state-dir", s.stateDir, "--pool", "2"), stateDir: s.stateDir}
	s2.waitWarm(2)
	for _, id := range oldIDs {
		if !strings.Contains(s2.stderr.String(), id) {
			t.Errorf("the new server's log does not name the sandbox it reaped (%s)", id)
		}
	}
	if left := ofSandboxes(poolFootprint(t, lw, s.stateDir, old)); len(left) > 0 {
		t.Errorf("of the killed server's sandboxes (%v, %s running an execution) the reap left %q", oldIDs, inFlight, left)
	}
	for pid, start := range procs {
		if procStart(pid) == start {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			t.Errorf("process %d (%s) of the killed server's sandboxes still runs", pid, strings.TrimSpace(string(comm)))
		}
	}
	newIDs := s2.sandboxes()
	if slices.ContainsFunc(newIDs, old) {
		t.Errorf("the new server pools %v, which holds the killed server's %v", newIDs, oldIDs)
	}
	isNew := func(id string) bool { return slices.Contains(newIDs, id) }
	if diff := cmp.Diff(fresh, poolFootprint(t, lw, s.stateDir, func(id string) bool { return old(id) || isNew(id) })); diff != "" {
		t.Errorf("after the reap the machine holds other than a fresh pool's state (-the killed server's at its start +the new server's):\n%s", diff)
	}
	// It serves, on the socket path the dead one left.
	if res := s2.execute(tenant(curlPlain+" http://allowed.test/after-restart", "allowed.test")); len(replies(res.Stdout)) != 1 {
		t.Errorf("after the restart: %+v", res)
	}
	s2.stop()
	if left := ofSandboxes(poolFootprint(t, lw, s.stateDir, func(id string) bool { return old(id) || isNew(id) })); len(left) > 0 {
		t.Errorf("after the new server stopped: %q", left)
	}
}

func testPoolConcurrentTenantsIsolated(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startPoolServer(t, lw, 2, "--max-concurrent", "2")
	// Each tenant leaves a named process and files, then, for two
	// seconds, while the other does the same, looks for the other's, and
	// fetches allowed.test by name and by address.
	script := func(me string) string {
		return fmt.Sprintf(`sh -c 'exec sleep 3%[2]d' >/dev/null 2>&1 &
for d in /tmp "$HOME" /sandbox; do echo %[1]s > "$d/file-%[1]s"; done
sleep 2
echo "ps:"; ps -eo args
echo "files:"; ls -A /tmp "$HOME" /sandbox
echo "fetch:"; %[3]s http://allowed.test/%[1]s-name; echo
python3 -c '%[4]s'`, me, len(me), curlPlain, strings.ReplaceAll(rawSend, "/b-raw", "/"+me+"-raw"))
	}
	type run struct {
		res        execResult
		start, end time.Time
	}
	var a, b run
	var wg sync.WaitGroup
	for _, r := range []struct {
		out   *run
		me    string
		allow string
	}{{&a, "tenant-a", "allowed.test"}, {&b, "tenant-bb", "other.test"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.out.start = time.Now()
			r.out.res = s.execute(tenant(script(r.me), r.allow))
			r.out.end = time.Now()
		}()
	}
	wg.Wait()
	if a.res.Sandbox == b.res.Sandbox || !a.start.Before(b.end.Add(-2*time.Second)) || !b.start.Before(a.end.Add(-2*time.Second)) {
		t.Fatalf("the tenants did not run at once in two sandboxes (A %s %s–%s, B %s %s–%s): the test proves nothing",
			a.res.Sandbox, a.start.Format(time.StampMilli), a.end.Format(time.StampMilli), b.res.Sandbox, b.start.Format(time.StampMilli), b.end.Format(time.StampMilli))
	}
	t.Logf("tenant A:\n%s\ntenant B:\n%s", a.res.Stdout, b.res.Stdout)
	for _, c := range []struct {
		who, other string
		res        execResult
	}{{"A", "tenant-bb", a.res}, {"B", "tenant-a", b.res}} {
		if !strings.Contains(c.res.Stdout, "ps:") || !strings.Contains(c.res.Stdout, "files:") {
			t.Errorf("tenant %s's listing did not run: %+v", c.who, c.res)
		}
		if strings.Contains(c.res.Stdout, "file-"+c.other) {
			t.Errorf("tenant %s sees the other tenant's files", c.who)
		}
		if strings.Contains(c.res.Stdout, fmt.Sprintf("sleep 3%d", len(c.other))) {
			t.Errorf("tenant %s sees the other tenant's process", c.who)
		}
	}
	if got := replies(a.res.Stdout); len(got) != 1 || got[0].URI != "/tenant-a-name" || !strings.Contains(a.res.Stdout, "raw: b'HTTP/1.1") {
		t.Errorf("tenant A, allowed allowed.test, could not fetch it by name and by its address: %+v", a.res)
	}
	if n := countURIPrefix(lw.w, "/tenant-bb-"); n != 0 || len(replies(b.res.Stdout)) != 0 {
		t.Errorf("the world served tenant B, which may not reach allowed.test, %d requests\n%+v", n, b.res)
	}
	if !slices.ContainsFunc(b.res.Denied, func(d execDenial) bool { return d.Target == "allowed.test" }) {
		t.Errorf("tenant B's fetch of allowed.test is not among its denials: %+v", b.res.Denied)
	}
	if st := s.fullStats(); st.Warm != 2 || st.Failed != 0 {
		t.Errorf("pool after two tenants: %+v", st)
	}
}

// testPoolWritableRootFilesGone: a server whose policy runs commands as
// root (under --floor open) on the standard profile's writable root, a
// throwaway overlay: tenant A writes all over it, and tenant B, on the
// same pooled sandbox, finds none of it (the built-in user can write only
// tmpfs mounts, which TestServePool/TenantAsFilesAreGoneForB covers).
func testPoolWritableRootFilesGone(t *testing.T) {
	lw := newLauncherWorld(t)
	pol := filepath.Join(t.TempDir(), "root.toml")
	if err := os.WriteFile(pol, []byte("version = 1\n\n[process]\nuser = \"0:0\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startPoolServer(t, lw, 1, "--floor", "open", "--policy", pol)
	const paths = `/a-root /etc/a-root /usr/local/a-root /root/a-root /var/lib/a-root`
	a := s.execute(tenant(`id -u; for f in `+paths+`; do echo tenant-a > "$f" 2>/dev/null && echo "wrote $f"; done`, "allowed.test"))
	for _, want := range []string{"0\n", "wrote /a-root\n", "wrote /etc/a-root\n", "wrote /usr/local/a-root\n"} {
		if !strings.Contains(a.Stdout, want) {
			t.Fatalf("tenant A (root, writable root) did not print %q: %+v", want, a)
		}
	}
	if _, err := os.Stat("/a-root"); err == nil {
		t.Fatal("tenant A's /a-root is on the host's root: the writable root is not a throwaway overlay")
	}
	b := s.execute(tenant(`for f in `+paths+`; do [ -e "$f" ] && echo "left $f: $(cat "$f")"; done; echo checked`, "other.test"))
	if b.Sandbox != a.Sandbox {
		t.Fatalf("tenant B ran in %s, A in %s: the pool did not reuse the sandbox", b.Sandbox, a.Sandbox)
	}
	if b.Stdout != "checked\n" {
		t.Errorf("tenant B finds tenant A's files on the writable root (A wrote:\n%s):\n%s", a.Stdout, b.Stdout)
	}
}
