package execapi

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/egressd/egressd/sandbox"
)

// Executor runs executions in sandboxes. Cold makes a fresh sandbox for
// each; a warm pool (issue 10) implements the same interface by acquiring
// a ready sandbox, running the job in it and releasing it.
type Executor interface {
	// Execute runs job.Config's command to its end with job's streams and
	// returns how it ended. When ctx ends first, every process of the
	// execution is killed and ctx's error is returned. An error is a
	// failure of the launcher or the runtime, never the command's exit
	// status.
	Execute(ctx context.Context, job Job) (Outcome, error)
	// Stats are the executor's counts for GET /v1/pool.
	Stats() ExecutorStats
}

// Job is one execution.
type Job struct {
	// Config is the sandbox's configuration: the resolved profile, the
	// command, its secrets.
	Config sandbox.Config
	// Stdin feeds the command; nil means none.
	Stdin io.Reader
	// Stdout and Stderr receive its output as it comes, secrets already
	// masked by the executor (sandbox.Run masks them).
	Stdout, Stderr io.Writer
	// OnDenial, when set, is told of each distinct denial (once each) as
	// it happens, from a goroutine that must not wait (sandbox.Config's
	// OnDenial).
	OnDenial func(sandbox.Denial)
}

// Outcome is how an execution ended.
type Outcome struct {
	// SandboxID names the sandbox the command ran in.
	SandboxID string
	Result    sandbox.Result
	// Denials are the destinations denied during the run, one each.
	Denials []sandbox.Denial
	// Warnings are problems that did not fail the execution (a teardown
	// that left something, say), in words for the client.
	Warnings []string
}

// ExecutorStats are an executor's counts.
type ExecutorStats struct {
	// Mode is "cold" (a fresh sandbox per execution) or "warm" (a pool).
	Mode string `json:"mode"`
	// Size is how many sandboxes the executor keeps ready (0 when cold);
	// Idle of them are waiting for an execution.
	Size int `json:"size"`
	Idle int `json:"idle"`
	// Busy is how many sandboxes run an execution now.
	Busy int `json:"busy"`
	// Pool is the warm pool's counts (sandbox.PoolStats); nil when cold.
	Pool *sandbox.PoolStats `json:"pool,omitempty"`
}

// Cold runs each execution the way `launcher run` does: sandbox.Create,
// Run, Close.
type Cold struct {
	busy atomic.Int64
}

// Execute implements Executor.
func (c *Cold) Execute(ctx context.Context, job Job) (Outcome, error) {
	c.busy.Add(1)
	defer c.busy.Add(-1)
	cfg := job.Config
	// Each distinct denial as egressd records it, while the command runs.
	cfg.OnDenial = job.OnDenial
	s, err := sandbox.Create(ctx, cfg)
	if err != nil {
		return Outcome{}, fmt.Errorf("setting up the sandbox: %w", err)
	}
	return runAndEnd(ctx, job, s, s.Close, "tearing down sandbox %s: %s")
}

// ran is a sandbox an executor runs a job in.
type ran interface {
	ID() string
	Run(ctx context.Context, stdio sandbox.Stdio) (sandbox.Result, error)
	Denials() []sandbox.Denial
}

// runAndEnd runs job in s, ends it with end (its error a warning, worded
// by warning with the sandbox's id and the error), and returns the outcome.
func runAndEnd(ctx context.Context, job Job, s ran, end func() error, warning string) (Outcome, error) {
	out := Outcome{SandboxID: s.ID()}
	res, runErr := s.Run(ctx, sandbox.Stdio{Stdin: job.Stdin, Stdout: job.Stdout, Stderr: job.Stderr})
	endErr := end()
	out.Result = res
	out.Denials = s.Denials()
	if endErr != nil {
		out.Warnings = append(out.Warnings, fmt.Sprintf(warning, s.ID(), endErr))
	}
	if runErr != nil {
		if ctx.Err() != nil {
			return out, context.Cause(ctx)
		}
		return out, runErr
	}
	return out, nil
}

// Stats implements Executor.
func (c *Cold) Stats() ExecutorStats {
	return ExecutorStats{Mode: "cold", Busy: int(c.busy.Load())}
}

// Warm runs each execution in a sandbox of a warm pool (sandbox.Pool):
// Acquire, Run, Release. When Run returns the command's processes are
// gone (its init's end ends its pid namespace) and Release resets egressd
// before the outcome is returned, so when a client has its answer nothing
// of its execution runs any more; the rest of the reset and its checks
// follow in the background. A request whose profile has another shape than
// the pool's gets a sandbox of its own.
type Warm struct {
	Pool *sandbox.Pool
}

// Execute implements Executor.
func (w *Warm) Execute(ctx context.Context, job Job) (Outcome, error) {
	cfg := job.Config
	cfg.OnDenial = job.OnDenial
	l, err := w.Pool.Acquire(ctx, cfg)
	if err != nil {
		return Outcome{}, fmt.Errorf("setting up the sandbox: %w", err)
	}
	return runAndEnd(ctx, job, l, l.Release, "releasing sandbox %s: %s (it was destroyed, not reused)")
}

// Stats implements Executor.
func (w *Warm) Stats() ExecutorStats {
	st := w.Pool.Stats()
	return ExecutorStats{Mode: "warm", Size: st.Size, Idle: st.Idle, Busy: st.Busy, Pool: &st}
}
