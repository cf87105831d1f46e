package execapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/internal/mask"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox"
	"github.com/egressd/egressd/sandbox/specconv"
)

// Defaults of the Options limits.
const (
	DefaultMaxRequestBytes = 1 << 20
	DefaultMaxOutputBytes  = 1 << 20
	DefaultMaxQueue        = 64
	DefaultQueueTimeout    = 10 * time.Second
	DefaultMaxTimeout      = 10 * time.Minute
)

// ErrShuttingDown is the cause of the executions a shutdown kills.
var ErrShuttingDown = errors.New("the server is shutting down: the execution was killed")

// Options configure a Server.
type Options struct {
	// Files are the server's parsed policy files, applied in order under
	// every request; nil means none. Called once per request, so the
	// caller can swap in reloaded files.
	Files func() []*policy.File
	// Profile is the base profile for requests that name none; "" lets
	// the files choose.
	Profile string
	// Floor refuses any request that would resolve less restrictive than
	// this built-in profile; "" means none.
	Floor string
	// Overrides are the server's own settings (its flags), applied after
	// the files and before the request's.
	Overrides []policy.Setting
	// MaxTimeout caps process.timeout: a request asking for more, or for
	// none, is refused; a policy with none or more gets MaxTimeout
	// (source flag:--max-timeout). 0 means DefaultMaxTimeout.
	MaxTimeout time.Duration
	// Configure builds the sandbox's configuration for a resolved profile
	// and command (the launcher's flag code). Required.
	Configure func(p *policy.Profile, args []string) (sandbox.Config, error)
	// Executor runs the executions. Required.
	Executor Executor
	// MaxConcurrent is how many executions run at once; more wait in the
	// queue. 0 means 1.
	MaxConcurrent int
	// MaxQueue is how many executions may wait; past it a request gets 429
	// at once. 0 means DefaultMaxQueue; negative means no queue.
	MaxQueue int
	// QueueTimeout is how long an execution waits for its turn before it
	// gets 429. 0 means DefaultQueueTimeout.
	QueueTimeout time.Duration
	// MaxRequestBytes caps a request's body (413 past it). 0 means
	// DefaultMaxRequestBytes.
	MaxRequestBytes int64
	// MaxOutputBytes caps each of stdout and stderr; the rest is dropped
	// and the response says truncated. 0 means DefaultMaxOutputBytes.
	MaxOutputBytes int64
	// Token, when not "", is the bearer token every request but /healthz
	// and /readyz must carry.
	Token string
	// Logger receives one line per execution and the server's problems;
	// nil discards them.
	Logger *slog.Logger
}

// Server is the execution API's HTTP handler and the executions it runs.
type Server struct {
	opts    Options
	mux     *http.ServeMux
	metrics *serveMetrics
	token   [sha256.Size]byte

	slots    chan struct{}
	queued   atomic.Int64
	inFlight atomic.Int64
	draining atomic.Bool

	// killCtx ends every running execution (Kill).
	killCtx context.Context
	kill    context.CancelCauseFunc
	// active counts the execution requests being handled.
	active atomic.Int64
}

// New returns a server with opts.
func New(opts Options) (*Server, error) {
	if opts.Configure == nil || opts.Executor == nil {
		return nil, errors.New("execution API: Configure and Executor are required")
	}
	if opts.MaxTimeout == 0 {
		opts.MaxTimeout = DefaultMaxTimeout
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = 1
	}
	if opts.MaxQueue == 0 {
		opts.MaxQueue = DefaultMaxQueue
	}
	if opts.QueueTimeout <= 0 {
		opts.QueueTimeout = DefaultQueueTimeout
	}
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if opts.MaxOutputBytes <= 0 {
		opts.MaxOutputBytes = DefaultMaxOutputBytes
	}
	if opts.Files == nil {
		opts.Files = func() []*policy.File { return nil }
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, mux: http.NewServeMux(), slots: make(chan struct{}, opts.MaxConcurrent)}
	if opts.Token != "" {
		s.token = sha256.Sum256([]byte(opts.Token))
	}
	s.killCtx, s.kill = context.WithCancelCause(context.Background())
	s.metrics = newMetrics(s)
	s.mux.HandleFunc("POST /v1/execute", func(w http.ResponseWriter, r *http.Request) { s.execute(w, r, false) })
	s.mux.HandleFunc("POST /v1/execute/stream", func(w http.ResponseWriter, r *http.Request) { s.execute(w, r, true) })
	s.mux.HandleFunc("GET /v1/pool", s.pool)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { writeText(w, http.StatusOK, "ok\n") })
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", s.metrics.handler())
	return s, nil
}

// ServeHTTP implements http.Handler: the bearer token first (but for the
// health checks), then the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.opts.Token != "" && r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="launcher serve"`)
		writeError(w, &requestError{status: http.StatusUnauthorized, msg: "missing or wrong bearer token (Authorization: Bearer TOKEN, the server's --token-file)"})
		return
	}
	s.mux.ServeHTTP(w, r)
}

// authorized compares the request's bearer token with the server's in
// constant time (of equal-length digests, so not even the length leaks).
func (s *Server) authorized(r *http.Request) bool {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(got[:], s.token[:]) == 1
}

// Drain makes the server refuse new executions (503) and report not ready;
// running ones go on.
func (s *Server) Drain() { s.draining.Store(true) }

// Kill ends every running execution: its processes are killed and its
// sandbox torn down; its client gets ErrShuttingDown.
func (s *Server) Kill() { s.kill(ErrShuttingDown) }

// Wait returns when no execution request is being handled any more (after
// Drain, none starts), or with ctx's error when ctx ends first.
func (s *Server) Wait(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for s.active.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d executions still running: %w", s.active.Load(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.draining.Load() {
		writeText(w, http.StatusServiceUnavailable, "draining\n")
		return
	}
	writeText(w, http.StatusOK, "ready\n")
}

// PoolStatus is GET /v1/pool: the executor's counts and the queue's.
type PoolStatus struct {
	ExecutorStats
	MaxConcurrent int `json:"max_concurrent"`
	InFlight      int `json:"in_flight"`
	Queued        int `json:"queued"`
	MaxQueue      int `json:"max_queue"`
}

func (s *Server) pool(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, PoolStatus{
		ExecutorStats: s.opts.Executor.Stats(),
		MaxConcurrent: s.opts.MaxConcurrent,
		InFlight:      int(s.inFlight.Load()),
		Queued:        int(s.queued.Load()),
		MaxQueue:      max(s.opts.MaxQueue, 0),
	})
}

// prepared is a request made ready to run.
type prepared struct {
	req      *Request
	cfg      sandbox.Config
	warnings []string
	secrets  []string
	mask     func(string) string
}

// job is the execution of pr with its output to stdout and stderr, masked
// here whatever the executor does (sandbox.Run masks too: the server does
// not rely on every Executor to), the secrets' lower-case forms included
// (egressd's refusals quote a normalised name back to the command, which
// may print it): close flushes what the maskers held back.
func (pr *prepared) job(stdout, stderr io.Writer) (job Job, close func()) {
	forms := sandbox.OutputForms(pr.secrets)
	o, e := mask.NewWriter(stdout, forms), mask.NewWriter(stderr, forms)
	return Job{Config: pr.cfg, Stdin: strings.NewReader(pr.req.Stdin), Stdout: o, Stderr: e}, func() {
		_ = o.Close()
		_ = e.Close()
	}
}

// prepare decodes the request, resolves its profile over the server's
// policy and builds the sandbox's configuration. Once the request decoded,
// the prepared value is returned with any error (its masker masks it).
func (s *Server) prepare(r *http.Request) (*prepared, error) {
	req, err := decodeRequest(r.Body, s.opts.MaxRequestBytes)
	if err != nil {
		return nil, err
	}
	secrets := req.secrets()
	values := make([]string, len(secrets))
	for i, sec := range secrets {
		values[i] = sec.Value
	}
	pr := &prepared{req: req, secrets: values, mask: secretMasker(values)}
	p, warnings, err := s.resolve(req)
	if err != nil {
		return pr, err
	}
	for _, w := range warnings {
		if w.Source.Kind == policy.SourceRequest {
			pr.warnings = append(pr.warnings, oneLine(w.String()))
		}
	}
	if p.Filesystem.MountCwd {
		return pr, &requestError{status: http.StatusInternalServerError,
			msg: "the server's policy sets filesystem.mount_cwd, which launcher serve refuses (it would give every request the server's working directory): use filesystem.volumes"}
	}
	cfg, err := s.opts.Configure(p, append([]string{req.Cmd}, req.Args...))
	if err != nil {
		return pr, &requestError{status: http.StatusInternalServerError, msg: oneLine(err.Error())}
	}
	cfg.Secrets = secrets
	cfg.Terminal = nil
	for _, sec := range secrets {
		if len(sec.Value) < sandbox.MinSecretLength {
			pr.warnings = append(pr.warnings, fmt.Sprintf("secret %s is shorter than %d bytes: it is masked, and so is every other occurrence of those %d bytes in the output",
				sec.Name, sandbox.MinSecretLength, len(sec.Value)))
		}
	}
	pr.cfg = cfg
	return pr, nil
}

// resolve layers the request over the server's policy: built-in profile,
// the server's files, the server's flags, then the request's fields.
func (s *Server) resolve(req *Request) (*policy.Profile, []policy.Warning, error) {
	profile, profileSrc := req.Profile, policy.Request("profile")
	if profile == "" {
		profile, profileSrc = s.opts.Profile, policy.Flag("--profile")
	}
	files := s.opts.Files()
	reqSettings := req.settings()
	layer := func(extra ...policy.Setting) []policy.Setting {
		out := append([]policy.Setting(nil), s.opts.Overrides...)
		out = append(out, extra...)
		return append(out, reqSettings...)
	}
	p, warnings, err := policy.ResolveFilesFrom(profile, profileSrc, files, layer(), s.opts.Floor)
	if err != nil {
		return nil, nil, resolveError(err)
	}
	if limit := s.opts.MaxTimeout; p.Process.Timeout == 0 || p.Process.Timeout > limit {
		if req.Timeout != "" {
			asked := "none"
			if p.Process.Timeout > 0 {
				asked = p.Process.Timeout.String()
			}
			return nil, nil, badRequest("timeout %s (request:timeout) is over the server's limit, --max-timeout %s: ask for %s or less", asked, limit, limit)
		}
		capped := policy.Setting{Key: "process.timeout", Values: []string{limit.String()}, Source: policy.Flag("--max-timeout")}
		if p, warnings, err = policy.ResolveFilesFrom(profile, profileSrc, files, layer(capped), s.opts.Floor); err != nil {
			return nil, nil, resolveError(err)
		}
	}
	return p, warnings, nil
}

// resolveError is the client's error for a profile that did not resolve:
// 403 for one below the floor, 400 for a setting that does not decode,
// with the launcher's words.
func resolveError(err error) error {
	var floor *policy.FloorError
	var list policy.ErrorList
	switch {
	case errors.As(err, &floor):
		return &requestError{status: http.StatusForbidden, msg: oneLine(err.Error())}
	case errors.As(err, &list):
		return badRequest("%s", oneLine(err.Error()))
	}
	return &requestError{status: http.StatusInternalServerError, msg: oneLine(err.Error())}
}

// errBusy is a request the queue had no room or time for.
var errBusy = errors.New("busy")

// acquire waits for an execution slot: at once when one is free, else in
// the queue for at most QueueTimeout (errBusy after it, or at once when
// the queue is full).
func (s *Server) acquire(ctx context.Context) (release func(), wait time.Duration, err error) {
	release = func() { <-s.slots }
	select {
	case s.slots <- struct{}{}:
		return release, 0, nil
	default:
	}
	if s.queued.Add(1) > int64(max(s.opts.MaxQueue, 0)) {
		s.queued.Add(-1)
		return nil, 0, errBusy
	}
	defer s.queued.Add(-1)
	start := time.Now()
	t := time.NewTimer(s.opts.QueueTimeout)
	defer t.Stop()
	select {
	case s.slots <- struct{}{}:
		return release, time.Since(start), nil
	case <-t.C:
		return nil, time.Since(start), errBusy
	case <-ctx.Done():
		return nil, time.Since(start), context.Cause(ctx)
	}
}

// retryAfter is the Retry-After of a 429, in seconds: the queue's wait.
func (s *Server) retryAfter() string {
	return strconv.Itoa(max(1, int(math.Ceil(s.opts.QueueTimeout.Seconds()))))
}

func (s *Server) execute(w http.ResponseWriter, r *http.Request, stream bool) {
	if s.draining.Load() {
		s.metrics.result(resultRejected)
		writeError(w, &requestError{status: http.StatusServiceUnavailable, msg: "the server is shutting down: send the request to another"})
		return
	}
	s.active.Add(1)
	defer s.active.Add(-1)
	pr, err := s.prepare(r)
	if err != nil {
		s.metrics.result(resultInvalid)
		writeError(w, maskError(err, pr))
		return
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	stop := context.AfterFunc(s.killCtx, func() { cancel(context.Cause(s.killCtx)) })
	defer stop()

	release, wait, err := s.acquire(ctx)
	s.metrics.queueWait.Observe(wait.Seconds())
	if errors.Is(err, errBusy) {
		s.metrics.result(resultRejected)
		w.Header().Set("Retry-After", s.retryAfter())
		writeError(w, &requestError{status: http.StatusTooManyRequests, msg: fmt.Sprintf(
			"too many executions: %d running and the queue (%d) full or not moving within %s; retry later",
			s.opts.MaxConcurrent, max(s.opts.MaxQueue, 0), s.opts.QueueTimeout)})
		return
	}
	if err != nil {
		s.canceled(w, err)
		return
	}
	defer release()
	s.inFlight.Add(1)
	defer s.inFlight.Add(-1)

	if stream {
		s.runStream(ctx, w, pr, wait)
		return
	}
	s.runJSON(ctx, w, pr, wait)
}

// canceled answers an execution that ended with its context: the client
// went away (nothing to answer), or the server is shutting down.
func (s *Server) canceled(w http.ResponseWriter, err error) {
	s.metrics.result(resultCanceled)
	if errors.Is(err, ErrShuttingDown) {
		writeError(w, &requestError{status: http.StatusServiceUnavailable, msg: ErrShuttingDown.Error()})
	}
}

// Result is the answer of POST /v1/execute.
type Result struct {
	// Stdout and Stderr are the command's output, secrets masked, each cut
	// at the server's --max-output-bytes (Truncated). Bytes that are not
	// UTF-8 become U+FFFD.
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	Summary
}

// Summary is how an execution ended: a Result without the output, and the
// stream's exit event.
type Summary struct {
	ExitCode int `json:"exit_code"`
	// DurationMS is the execution's time, sandbox set-up and teardown
	// included, queue excluded.
	DurationMS int64 `json:"duration_ms"`
	// TimedOut: process.timeout killed the command (exit code 124).
	TimedOut bool `json:"timed_out"`
	// OOMKilled: the kernel killed a process of the sandbox at its memory
	// limit.
	OOMKilled bool `json:"oom_killed"`
	// Truncated: stdout or stderr went over the server's
	// --max-output-bytes; the rest was dropped.
	Truncated bool     `json:"truncated"`
	Denied    []Denied `json:"denied"`
	// Sandbox is the sandbox's id (its audit records carry it).
	Sandbox  string   `json:"sandbox,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// Denied is one destination egressd denied during the execution.
type Denied struct {
	// Kind is "dns" for a lookup, else the connection's kind ("connect",
	// "http", "tls", "tcp", "https").
	Kind string `json:"kind"`
	// Target is the name or address; Port its port (0 for a lookup).
	Target string `json:"target"`
	Port   uint16 `json:"port,omitempty"`
	// Outcome is "deny" (the policy refused it) or "error" (the policy
	// allowed it and then the resolver or the destination failed).
	Outcome string `json:"outcome"`
	// Reason is the record's reason (docs/audit.md).
	Reason string `json:"reason"`
	// Rule and Source are the deciding rule and where it was written, ""
	// when no rule decided.
	Rule   string `json:"rule"`
	Source string `json:"source"`
	// Count is how often it was denied.
	Count int `json:"count"`
}

func (pr *prepared) denied(d sandbox.Denial) Denied {
	port := d.Port
	if d.Kind == "dns" {
		port = 0
	}
	return Denied{Kind: string(d.Kind), Target: pr.mask(d.Target), Port: port, Outcome: string(d.Outcome), Reason: pr.mask(string(d.Reason)),
		Rule: pr.mask(d.Rule), Source: pr.mask(d.RuleSource), Count: d.Count}
}

// summary is how the execution ended, from the outcome.
func (pr *prepared) summary(out Outcome, took time.Duration) Summary {
	res := Summary{
		ExitCode:   out.Result.ExitCode,
		DurationMS: took.Milliseconds(),
		TimedOut:   out.Result.TimedOut,
		OOMKilled:  out.Result.OOMKills > 0,
		Denied:     []Denied{},
		Sandbox:    out.SandboxID,
		Warnings:   pr.warnings,
	}
	for _, d := range out.Denials {
		res.Denied = append(res.Denied, pr.denied(d))
	}
	for _, w := range out.Warnings {
		res.Warnings = append(res.Warnings, pr.mask(oneLine(w)))
	}
	return res
}

func (s *Server) runJSON(ctx context.Context, w http.ResponseWriter, pr *prepared, wait time.Duration) {
	stdout := &cappedBuffer{max: s.opts.MaxOutputBytes}
	stderr := &cappedBuffer{max: s.opts.MaxOutputBytes}
	job, closeStreams := pr.job(stdout, stderr)
	start := time.Now()
	out, err := s.opts.Executor.Execute(ctx, job)
	took := time.Since(start)
	closeStreams()
	if err != nil {
		s.failed(w, pr, out, err, took, wait)
		return
	}
	res := Result{Stdout: stdout.String(), Stderr: stderr.String(), Summary: pr.summary(out, took)}
	res.Truncated = stdout.truncated || stderr.truncated
	s.finished(res.Summary, took, wait)
	writeJSON(w, http.StatusOK, res)
}

// failed answers an execution the executor could not run to its end.
func (s *Server) failed(w http.ResponseWriter, pr *prepared, out Outcome, err error, took, wait time.Duration) {
	if errors.Is(err, context.Canceled) || errors.Is(err, ErrShuttingDown) {
		s.canceled(w, err)
		s.opts.Logger.Info("execution canceled", "sandbox", out.SandboxID, "cause", pr.mask(oneLine(err.Error())), "duration_ms", took.Milliseconds())
		return
	}
	msg := pr.mask(oneLine(err.Error()))
	var denied *specconv.CommandDeniedError
	if errors.As(err, &denied) {
		// The server's policy ([commands]) refuses what the request asked
		// to run: the client's to change, not a failure of the server.
		s.metrics.result(resultInvalid)
		writeError(w, &requestError{status: http.StatusForbidden, msg: msg})
		return
	}
	s.metrics.result(resultError)
	s.opts.Logger.Warn("execution failed", "sandbox", out.SandboxID, "error", msg, "duration_ms", took.Milliseconds(), "queue_ms", wait.Milliseconds())
	writeError(w, &requestError{status: http.StatusInternalServerError, msg: msg})
}

// finished counts and logs an execution that ran to its end.
func (s *Server) finished(res Summary, took, wait time.Duration) {
	result := resultOK
	switch {
	case res.TimedOut:
		result = resultTimedOut
	case res.OOMKilled:
		result = resultOOMKilled
	case res.ExitCode != 0:
		result = resultExitNonzero
	}
	s.metrics.result(result)
	s.metrics.duration.WithLabelValues(result).Observe(took.Seconds())
	s.opts.Logger.Info("execution", "sandbox", res.Sandbox, "result", result, "exit_code", res.ExitCode,
		"duration_ms", took.Milliseconds(), "queue_ms", wait.Milliseconds(), "denied", len(res.Denied), "truncated", res.Truncated)
}

// maskError masks the request's secrets in a request error's message.
func maskError(err error, pr *prepared) error {
	if pr == nil {
		return err
	}
	var re *requestError
	if errors.As(err, &re) {
		return &requestError{status: re.status, msg: pr.mask(re.msg)}
	}
	return errors.New(pr.mask(err.Error()))
}

// errorBody is every error's JSON.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	var re *requestError
	if errors.As(err, &re) {
		status = re.status
	}
	writeJSON(w, status, errorBody{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeText(w http.ResponseWriter, status int, text string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(text))
}

// oneLine joins a multi-line error (a policy's error list, a floor's
// violations) with "; ", as the launcher prints it.
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.ReplaceAll(strings.Join(parts, "; "), ":;", ":")
}
