package execapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
	"github.com/egressd/egressd/sandbox/specconv"
)

// fakeExecutor runs jobs with run, recording each.
type fakeExecutor struct {
	mu   sync.Mutex
	jobs []Job
	run  func(ctx context.Context, job Job) (Outcome, error)
}

func (f *fakeExecutor) Execute(ctx context.Context, job Job) (Outcome, error) {
	f.mu.Lock()
	f.jobs = append(f.jobs, job)
	f.mu.Unlock()
	if f.run == nil {
		return Outcome{SandboxID: "egs-00000001"}, nil
	}
	return f.run(ctx, job)
}

func (f *fakeExecutor) Stats() ExecutorStats { return ExecutorStats{Mode: "cold"} }

func (f *fakeExecutor) lastJob(t *testing.T) Job {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.jobs) == 0 {
		t.Fatal("the executor ran nothing")
	}
	return f.jobs[len(f.jobs)-1]
}

// newTestServer serves an execution API over ex with opts (Configure and
// Executor filled in), the policy files given as name → content.
func newTestServer(t *testing.T, ex Executor, opts Options, files map[string]string) (*Server, *httptest.Server) {
	t.Helper()
	var parsed []*policy.File
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := policy.ParseFile(path, []byte(content))
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, f)
	}
	opts.Files = func() []*policy.File { return parsed }
	opts.Executor = ex
	opts.Configure = func(p *policy.Profile, args []string) (sandbox.Config, error) {
		return sandbox.Config{Profile: p, Args: args}, nil
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	return s, hs
}

type response struct {
	status int
	header http.Header
	body   string
}

func post(t *testing.T, hs *httptest.Server, path, body string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, hs.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return do(t, req)
}

func get(t *testing.T, hs *httptest.Server, path string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, hs.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) response {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

func decodeResult(t *testing.T, r response) Result {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status %d, want 200: %s", r.status, r.body)
	}
	var res Result
	if err := json.Unmarshal([]byte(r.body), &res); err != nil {
		t.Fatalf("decoding %q: %v", r.body, err)
	}
	return res
}

func errorOf(t *testing.T, r response) string {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Error == "" {
		t.Fatalf("status %d: body %q is not an error object", r.status, r.body)
	}
	return e.Error
}

// TestMalformedRequestsAreRefusedWithTheirCause: every request the server
// cannot take gets a 4xx naming what is wrong, and nothing runs.
func TestMalformedRequestsAreRefusedWithTheirCause(t *testing.T) {
	ex := &fakeExecutor{}
	_, hs := newTestServer(t, ex, Options{MaxRequestBytes: 200}, nil)
	for _, tc := range []struct {
		name, body string
		status     int
		want       string
	}{
		{"empty", ``, 400, "the request is empty"},
		{"not JSON", `cmd=true`, 400, "not valid JSON"},
		{"cut short", `{"cmd": "true"`, 400, "ends in the middle"},
		{"unknown field", `{"cmd": "true", "comand": "x"}`, 400, `unknown field "comand"`},
		{"unknown nested field", `{"cmd": "true", "network": {"alow": ["x.test"]}}`, 400, `unknown field "alow"`},
		{"wrong type", `{"cmd": "true", "args": "-c"}`, 400, "args: want a JSON array, got string"},
		{"two objects", `{"cmd": "true"} {"cmd": "false"}`, 400, "data after its JSON object"},
		{"no cmd", `{"args": ["x"]}`, 400, `no "cmd"`},
		{"NUL in an argument", `{"cmd": "echo", "args": ["a\u0000b"]}`, 400, "NUL"},
		{"secret name", `{"cmd": "true", "secrets": {"A-B": "value"}}`, 400, `"A-B" is not a variable name`},
		{"empty secret", `{"cmd": "true", "secrets": {"TOKEN": ""}}`, 400, "TOKEN is empty"},
		{"NUL in a secret", `{"cmd": "true", "secrets": {"TOKEN": "a\u0000b"}}`, 400, "TOKEN holds a NUL byte"},
		{"= in an env name", `{"cmd": "true", "env": {"A=B": "c"}}`, 400, `env: "A=B" is not a variable name`},
		{"env name", `{"cmd": "true", "env": {"": "c"}}`, 400, `env: "" is not a variable name`},
		{"too large", `{"cmd": "true", "stdin": "` + strings.Repeat("x", 300) + `"}`, 413, "larger than the server's limit of 200 bytes"},
		{"bad pattern", `{"cmd": "true", "network": {"allow": ["*github.com"]}}`, 400, "request:network.allow"},
		{"bad memory", `{"cmd": "true", "limits": {"memory": "lots"}}`, 400, "request:limits.memory"},
		{"unknown profile", `{"cmd": "true", "profile": "lenient"}`, 400, `request:profile: unknown profile "lenient"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := post(t, hs, "/v1/execute", tc.body)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			if msg := errorOf(t, r); !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not say %q", msg, tc.want)
			}
		})
	}
	if len(ex.jobs) != 0 {
		t.Errorf("the executor ran %d refused requests", len(ex.jobs))
	}
}

// TestRequestIsLayeredOverTheServersPolicyLikeFlags: the request's fields
// become settings over the server's files, each with its field as the
// source; the files' block rules stay (nothing removes a block).
func TestRequestIsLayeredOverTheServersPolicyLikeFlags(t *testing.T) {
	ex := &fakeExecutor{}
	_, hs := newTestServer(t, ex, Options{}, map[string]string{"tenant.toml": `version = 1
profile = "strict"
[network]
allow = ["pypi.org"]
block = ["evil.test"]
`})
	r := post(t, hs, "/v1/execute", `{"cmd": "python3", "args": ["-c", "print(1)"], "stdin": "in",
		"network": {"allow": ["api.example.com:443"], "block": ["*.tracker.test"]},
		"env": {"B": "2", "A": "1"}, "secrets": {"TOKEN": "s3cr3t-value"}, "timeout": "30s",
		"limits": {"memory": "256m", "cpus": 0.5, "pids_limit": 64}}`)
	decodeResult(t, r)
	job := ex.lastJob(t)
	if diff := cmp.Diff([]string{"python3", "-c", "print(1)"}, job.Config.Args); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]sandbox.Secret{{Name: "TOKEN", Value: "s3cr3t-value"}}, job.Config.Secrets); diff != "" {
		t.Errorf("secrets (-want +got):\n%s", diff)
	}
	if in, _ := io.ReadAll(job.Stdin); string(in) != "in" {
		t.Errorf("stdin %q, want %q", in, "in")
	}
	got := map[string]string{}
	for _, pv := range job.Config.Profile.Explain() {
		got[pv.Field+" "+pv.Value] = pv.Source
	}
	for key, src := range map[string]string{
		`network.allow "pypi.org"`:            "tenant.toml:4",
		`network.allow "api.example.com:443"`: "request:network.allow",
		`network.block "evil.test"`:           "tenant.toml:5",
		`network.block "*.tracker.test"`:      "request:network.block",
		`process.timeout "30s"`:               "request:timeout",
		`process.memory "256MiB"`:             "request:limits.memory",
		`process.cpus 0.5`:                    "request:limits.cpus",
		`process.pids_limit 64`:               "request:limits.pids_limit",
	} {
		g, ok := got[key]
		if !ok {
			t.Errorf("the profile has no %s; it has %v", key, got)
			continue
		}
		if !strings.HasSuffix(g, src) {
			t.Errorf("%s comes from %q, want %q", key, g, src)
		}
	}
	p := job.Config.Profile
	// The profile a request names must be the one the files build on.
	r = post(t, hs, "/v1/execute", `{"cmd": "true", "profile": "standard"}`)
	if r.status != http.StatusBadRequest || !strings.Contains(errorOf(t, r), "named at request:profile") {
		t.Errorf("a request's profile other than the files': %d %s, want 400 naming request:profile", r.status, r.body)
	}
	if p.Name != "strict" {
		t.Errorf("profile %q, want the file's strict", p.Name)
	}
	if p.Env.Set["A"] != "1" || p.Env.Set["B"] != "2" || p.SourceOf("env.set.A").String() != "request:env" {
		t.Errorf("env.set %v (A from %s), want A=1 B=2 from request:env", p.Env.Set, p.SourceOf("env.set.A"))
	}
}

// TestRequestBelowTheFloorIsRefusedWithTheLaunchersMessage: a request that
// would loosen the profile below --floor gets 403 with the message the
// launcher prints for the same setting as a flag, naming the request's
// field as the source; nothing runs.
func TestRequestBelowTheFloorIsRefusedWithTheLaunchersMessage(t *testing.T) {
	ex := &fakeExecutor{}
	_, hs := newTestServer(t, ex, Options{Floor: "standard"}, nil)
	r := post(t, hs, "/v1/execute", `{"cmd": "true", "network": {"mode": "host"}}`)
	if r.status != http.StatusForbidden {
		t.Fatalf("status %d, want 403: %s", r.status, r.body)
	}
	_, _, cliErr := policy.Resolve(policy.ResolveOptions{Overrides: []policy.Setting{{Key: "network.mode", Values: []string{"host"}, Source: policy.Flag("--net")}}, Floor: "standard"})
	if cliErr == nil {
		t.Fatal("the floor let the flag through")
	}
	want := strings.ReplaceAll(oneLine(cliErr.Error()), "flag:--net", "request:network.mode")
	if diff := cmp.Diff(want, errorOf(t, r)); diff != "" {
		t.Errorf("message (-launcher's, with the request's source +got):\n%s", diff)
	}
	for _, body := range []string{`{"cmd": "true", "profile": "open"}`, `{"cmd": "true", "network": {"allow": ["*"]}}`} {
		if r := post(t, hs, "/v1/execute", body); r.status != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403: %s", body, r.status, r.body)
		}
	}
	if len(ex.jobs) != 0 {
		t.Errorf("the executor ran %d requests below the floor", len(ex.jobs))
	}
}

// TestTimeoutIsCappedByTheServer: a request may not ask for more than
// --max-timeout, nor for none; a policy without a timeout gets the cap.
func TestTimeoutIsCappedByTheServer(t *testing.T) {
	ex := &fakeExecutor{}
	_, hs := newTestServer(t, ex, Options{MaxTimeout: 2 * time.Minute}, nil)
	for _, body := range []string{`{"cmd": "true", "timeout": "1h"}`, `{"cmd": "true", "timeout": "0"}`} {
		r := post(t, hs, "/v1/execute", body)
		if r.status != http.StatusBadRequest || !strings.Contains(errorOf(t, r), "--max-timeout 2m0s") {
			t.Errorf("%s: status %d %s, want 400 naming --max-timeout 2m0s", body, r.status, r.body)
		}
	}
	decodeResult(t, post(t, hs, "/v1/execute", `{"cmd": "true"}`))
	p := ex.lastJob(t).Config.Profile
	if p.Process.Timeout != 2*time.Minute || p.SourceOf("process.timeout").String() != "flag:--max-timeout" {
		t.Errorf("timeout %s from %s, want 2m from flag:--max-timeout", p.Process.Timeout, p.SourceOf("process.timeout"))
	}
	decodeResult(t, post(t, hs, "/v1/execute", `{"cmd": "true", "timeout": "90s"}`))
	if p := ex.lastJob(t).Config.Profile; p.Process.Timeout != 90*time.Second {
		t.Errorf("timeout %s, want the request's 90s", p.Process.Timeout)
	}
}

// TestOutputOverTheCapIsTruncatedAndFlagged: each stream keeps its first
// --max-output-bytes, the response says truncated, and the command was
// never blocked by the cap (every write succeeded).
func TestOutputOverTheCapIsTruncatedAndFlagged(t *testing.T) {
	ex := &fakeExecutor{run: func(ctx context.Context, job Job) (Outcome, error) {
		for range 10 {
			if n, err := job.Stdout.Write([]byte(strings.Repeat("o", 30))); n != 30 || err != nil {
				return Outcome{}, fmt.Errorf("write: %d, %v", n, err)
			}
		}
		io.WriteString(job.Stderr, "short")
		return Outcome{Result: sandbox.Result{ExitCode: 3}}, nil
	}}
	_, hs := newTestServer(t, ex, Options{MaxOutputBytes: 100}, nil)
	res := decodeResult(t, post(t, hs, "/v1/execute", `{"cmd": "yes"}`))
	if res.Stdout != strings.Repeat("o", 100) || res.Stderr != "short" || !res.Truncated || res.ExitCode != 3 {
		t.Errorf("stdout %d bytes, stderr %q, truncated %v, exit %d; want 100, short, true, 3", len(res.Stdout), res.Stderr, res.Truncated, res.ExitCode)
	}
}

// TestSecretIsMaskedInEveryField: a secret the command prints (whole, split
// across writes, on stderr), that egressd saw in a name it denied (lower
// case), or that an error quotes, appears in no field of the response,
// JSON or stream, even from an executor that does not mask.
func TestSecretIsMaskedInEveryField(t *testing.T) {
	const secret = "Sk3tchyT0kenValue"
	ex := &fakeExecutor{}
	_, hs := newTestServer(t, ex, Options{}, nil)
	leak := func(ctx context.Context, job Job) (Outcome, error) {
		io.WriteString(job.Stdout, "token="+secret+"\n")
		io.WriteString(job.Stdout, "refused "+strings.ToLower(secret)+".exfil.test\n")
		io.WriteString(job.Stderr, "half="+secret[:5])
		io.WriteString(job.Stderr, secret[5:]+"\n")
		d := sandbox.Denial{Kind: "dns", Target: strings.ToLower(secret) + ".exfil.test", Reason: "no-allow-rule", Count: 1}
		if job.OnDenial != nil {
			job.OnDenial(d)
		}
		return Outcome{SandboxID: "egs-00000001", Denials: []sandbox.Denial{d}, Warnings: []string{"teardown: " + secret}}, nil
	}
	body := `{"cmd": "sh", "secrets": {"API_TOKEN": "` + secret + `"}}`
	check := func(name, out string) {
		t.Helper()
		if strings.Contains(strings.ToLower(out), strings.ToLower(secret)) || strings.Contains(out, secret[:8]) {
			t.Errorf("%s leaks the secret:\n%s", name, out)
		}
		if !strings.Contains(out, "***") {
			t.Errorf("%s has no mask at all: the fake did not run?\n%s", name, out)
		}
	}
	ex.run = leak
	r := post(t, hs, "/v1/execute", body)
	res := decodeResult(t, r)
	check("JSON response", r.body)
	if res.Stdout != "token=***\nrefused ***.exfil.test\n" || res.Stderr != "half=***\n" || res.Denied[0].Target != "***.exfil.test" {
		t.Errorf("stdout %q stderr %q denied %q", res.Stdout, res.Stderr, res.Denied[0].Target)
	}
	check("stream", post(t, hs, "/v1/execute/stream", body).body)
	ex.run = func(ctx context.Context, job Job) (Outcome, error) {
		return Outcome{}, errors.New("runc: exec: " + secret + ": no such file")
	}
	r = post(t, hs, "/v1/execute", body)
	if r.status != http.StatusInternalServerError {
		t.Errorf("status %d, want 500", r.status)
	}
	check("error", r.body)
	check("stream error", post(t, hs, "/v1/execute/stream", body).body)
}

// TestCommandTheServersPolicyRefusesIs403: a command the server's
// [commands] section refuses is the client's to change (403, counted
// invalid), never a server failure (500).
func TestCommandTheServersPolicyRefusesIs403(t *testing.T) {
	ex := &fakeExecutor{run: func(ctx context.Context, job Job) (Outcome, error) {
		return Outcome{}, fmt.Errorf("planning: %w", &specconv.CommandDeniedError{Command: "nc", Reason: "blocked by commands.block"})
	}}
	_, hs := newTestServer(t, ex, Options{}, nil)
	r := post(t, hs, "/v1/execute", `{"cmd":"nc"}`)
	if r.status != http.StatusForbidden || !strings.Contains(r.body, "nc") {
		t.Errorf("status %d body %s, want 403 naming the command", r.status, r.body)
	}
}

// TestFullQueueGets429WithRetryAfter: with every slot busy, a request waits
// in the queue for --queue-timeout and then gets 429; with the queue full
// too, it gets 429 at once; both say when to retry.
func TestFullQueueGets429WithRetryAfter(t *testing.T) {
	started, release := make(chan struct{}, 4), make(chan struct{})
	ex := &fakeExecutor{run: func(ctx context.Context, job Job) (Outcome, error) {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return Outcome{}, nil
	}}
	s, hs := newTestServer(t, ex, Options{MaxConcurrent: 1, MaxQueue: 1, QueueTimeout: 1500 * time.Millisecond}, nil)
	first := make(chan response, 1)
	go func() { first <- post(t, hs, "/v1/execute", `{"cmd": "sleep"}`) }()
	<-started
	queued := make(chan response, 1)
	go func() { queued <- post(t, hs, "/v1/execute", `{"cmd": "sleep"}`) }()
	waitFor(t, func() bool { return s.queued.Load() == 1 }, "the second request to queue")
	r := post(t, hs, "/v1/execute", `{"cmd": "sleep"}`)
	if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") != "2" {
		t.Errorf("with the queue full: status %d Retry-After %q, want 429 and 2: %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	r = <-queued
	if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" || !strings.Contains(errorOf(t, r), "retry later") {
		t.Errorf("after the queue timeout: status %d Retry-After %q: %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	close(release)
	decodeResult(t, <-first)
	pool := get(t, hs, "/v1/pool")
	var ps PoolStatus
	if err := json.Unmarshal([]byte(pool.body), &ps); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(PoolStatus{ExecutorStats: ExecutorStats{Mode: "cold"}, MaxConcurrent: 1, MaxQueue: 1}, ps); diff != "" {
		t.Errorf("pool (-want +got):\n%s", diff)
	}
	metrics := get(t, hs, "/metrics").body
	for _, want := range []string{`egressd_serve_executions_total{result="rejected"} 2`, `egressd_serve_executions_total{result="ok"} 1`, "egressd_serve_in_flight 0", "egressd_serve_queued 0"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRequestWithoutTheTokenIsRefused: with a token, every endpoint but the
// health checks wants it as a bearer token; a wrong one, a missing one or
// another scheme gets 401 and runs nothing.
func TestRequestWithoutTheTokenIsRefused(t *testing.T) {
	ex := &fakeExecutor{}
	_, hs := newTestServer(t, ex, Options{Token: "correct-horse-battery"}, nil)
	for _, auth := range []string{"", "Bearer wrong", "Bearer correct-horse-batter", "Basic correct-horse-battery", "correct-horse-battery"} {
		for _, path := range []string{"/v1/execute", "/v1/execute/stream"} {
			if r := post(t, hs, path, `{"cmd": "true"}`, "Authorization", auth); r.status != http.StatusUnauthorized {
				t.Errorf("POST %s with %q: status %d, want 401", path, auth, r.status)
			}
		}
		for _, path := range []string{"/v1/pool", "/metrics"} {
			if r := get(t, hs, path, "Authorization", auth); r.status != http.StatusUnauthorized {
				t.Errorf("GET %s with %q: status %d, want 401", path, auth, r.status)
			}
		}
	}
	if len(ex.jobs) != 0 {
		t.Fatalf("the executor ran %d unauthorized requests", len(ex.jobs))
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if r := get(t, hs, path); r.status != http.StatusOK {
			t.Errorf("GET %s without a token: %d, want 200", path, r.status)
		}
	}
	decodeResult(t, post(t, hs, "/v1/execute", `{"cmd": "true"}`, "Authorization", "Bearer correct-horse-battery"))
}

// TestStreamIsOneJSONObjectPerLine: the stream's lines are each one JSON
// event, flushed as they come; output split inside a UTF-8 character comes
// whole; a denial comes when it happens; exit is last and has no output.
func TestStreamIsOneJSONObjectPerLine(t *testing.T) {
	denied := make(chan struct{})
	ex := &fakeExecutor{run: func(ctx context.Context, job Job) (Outcome, error) {
		io.WriteString(job.Stdout, "caf\xc3")
		io.WriteString(job.Stdout, "\xa9\nline two\n")
		d := sandbox.Denial{Kind: "connect", Target: "evil.test", Port: 443, Reason: "no-allow-rule", Count: 1}
		job.OnDenial(d)
		<-denied // the client saw the denial before the command ended
		io.WriteString(job.Stderr, "oops\n")
		return Outcome{SandboxID: "egs-00000002", Result: sandbox.Result{ExitCode: 1}, Denials: []sandbox.Denial{d}}, nil
	}}
	_, hs := newTestServer(t, ex, Options{}, nil)
	resp, err := http.Post(hs.URL+"/v1/execute/stream", "application/json", strings.NewReader(`{"cmd": "sh"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != ndjson {
		t.Errorf("Content-Type %q, want %q", ct, ndjson)
	}
	var types []string
	var stdout, stderr strings.Builder
	var exit map[string]any
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("line %q is not one JSON object: %v", sc.Text(), err)
		}
		typ, _ := ev["type"].(string)
		types = append(types, typ)
		switch typ {
		case EventStdout:
			stdout.WriteString(ev["data"].(string))
		case EventStderr:
			stderr.WriteString(ev["data"].(string))
		case EventDenial:
			d := ev["denial"].(map[string]any)
			if d["target"] != "evil.test" || d["reason"] != "no-allow-rule" {
				t.Errorf("denial %v", d)
			}
			close(denied)
		case EventExit:
			exit = ev
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"stdout", "stdout", "denial", "stderr", "exit"}, types); diff != "" {
		t.Errorf("event types (-want +got):\n%s", diff)
	}
	if stdout.String() != "café\nline two\n" || stderr.String() != "oops\n" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	if exit["exit_code"] != float64(1) || exit["sandbox"] != "egs-00000002" || exit["stdout"] != nil || len(exit["denied"].([]any)) != 1 {
		t.Errorf("exit event %v", exit)
	}
}

// TestShutdownDrainsThenKills: after Drain, new executions get 503 and
// /readyz says so while running ones go on; Kill ends them (their context)
// and their clients get 503.
func TestShutdownDrainsThenKills(t *testing.T) {
	started := make(chan struct{}, 1)
	ex := &fakeExecutor{run: func(ctx context.Context, job Job) (Outcome, error) {
		started <- struct{}{}
		<-ctx.Done()
		return Outcome{}, context.Cause(ctx)
	}}
	s, hs := newTestServer(t, ex, Options{}, nil)
	running := make(chan response, 1)
	go func() { running <- post(t, hs, "/v1/execute", `{"cmd": "sleep"}`) }()
	<-started
	s.Drain()
	if r := get(t, hs, "/readyz"); r.status != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining: %d, want 503", r.status)
	}
	if r := post(t, hs, "/v1/execute", `{"cmd": "true"}`); r.status != http.StatusServiceUnavailable {
		t.Errorf("a new execution while draining: %d, want 503", r.status)
	}
	select {
	case r := <-running:
		t.Fatalf("the running execution ended on Drain: %d %s", r.status, r.body)
	case <-time.After(50 * time.Millisecond):
	}
	s.Kill()
	r := <-running
	if r.status != http.StatusServiceUnavailable || !strings.Contains(errorOf(t, r), "shutting down") {
		t.Errorf("killed execution: %d %s, want 503 saying the server is shutting down", r.status, r.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Wait(ctx); err != nil {
		t.Error(err)
	}
}

func TestUTF8Tail(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"", 0}, {"abc", 0}, {"caf\xc3", 1}, {"café", 0}, {"\xe2\x82", 2}, {"€", 0},
		{"x\xf0\x9f\x98", 3}, {"😀", 0}, {"\xa9\xa9\xa9\xa9", 0}, {"a\xff", 0},
	} {
		if got := utf8Tail([]byte(tc.in)); got != tc.want {
			t.Errorf("utf8Tail(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// blockingWriter is a client that reads nothing until released.
type blockingWriter struct {
	header  http.Header
	release chan struct{}
	mu      sync.Mutex
	lines   int
}

func (b *blockingWriter) Header() http.Header { return b.header }
func (b *blockingWriter) WriteHeader(int)     {}
func (b *blockingWriter) Write(p []byte) (int, error) {
	<-b.release
	b.mu.Lock()
	b.lines += strings.Count(string(p), "\n")
	b.mu.Unlock()
	return len(p), nil
}

// TestSlowStreamClientNeverHoldsUpTheAuditReader: denials reach the stream
// from the goroutine that reads egressd's audit records; a client that
// reads nothing must not stall it (egressd would block on its audit
// writes): past a bound the live events are dropped (the exit event lists
// every denial), and every queued one is sent once the client reads.
func TestSlowStreamClientNeverHoldsUpTheAuditReader(t *testing.T) {
	w := &blockingWriter{header: http.Header{}, release: make(chan struct{})}
	st := &streamer{w: w, rc: http.NewResponseController(w), enc: json.NewEncoder(w)}
	live := newLiveDenials(st, &prepared{mask: secretMasker(nil)})
	added := make(chan struct{})
	go func() {
		for i := range 10 * maxLiveDenials {
			live.add(sandbox.Denial{Kind: "dns", Target: fmt.Sprintf("n%d.test", i), Reason: "no-allow-rule"})
		}
		close(added)
	}()
	select {
	case <-added:
	case <-time.After(10 * time.Second):
		t.Fatal("adding denials blocked on a client that reads nothing")
	}
	close(w.release)
	live.close()
	live.add(sandbox.Denial{Target: "after-close.test"}) // a late record: ignored, no panic
	if w.lines < 1 || w.lines > maxLiveDenials+1 {
		t.Errorf("%d denial events sent, want between 1 and %d", w.lines, maxLiveDenials+1)
	}
}
