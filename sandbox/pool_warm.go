package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/egressd/egressd/sandbox/pid1"
)

// A pooled member's next container is made and started while the member
// is idle (docs/design.md, "Pooled reuse"): its bundle, the runtime's
// create (Containers.Create, the request pipe preserved), the check of its
// mounts and the runtime's start (Created.Start), with the init waiting
// for its execution (pid1 waiting mode). Only what differs per
// execution — the command, its environment with the secrets, its working
// directory — comes later, by a pipe (pid1.Request); everything else of
// the container's spec is the pool's shape, and a tenant whose spec
// differs anywhere else gets a cold sandbox (fits). Each tenant still
// gets a container no earlier tenant ran in: the container is deleted at
// release and the next one made from scratch.

// waiting is a member's pre-made container, its init waiting.
type waiting struct {
	proc *watched
	// req is the request pipe's write end (the read end is the init's
	// pid1.RequestFD).
	req *os.File
	// The container's stdio: pipes the pool holds, handed to the lease
	// that sends the command.
	stdin          *stdinGate
	stdout, stderr switchWriter
}

// waitingPlan is the plan of a member's pre-made container: b with the
// init waiting (pid1.WaitArgs) instead of b's command, and no environment
// (the request brings the command's).
func waitingPlan(b *Plan) *Plan {
	wp := *b
	c := *b.Container
	sc := *c.Container
	spec := *sc.Spec
	proc := *spec.Process
	proc.Args, proc.Env = pid1.WaitArgs(), nil
	spec.Process = &proc
	sc.Spec, sc.Warnings = &spec, nil
	c.Container = &sc
	wp.Container = &c
	return &wp
}

// prestart makes m's next container (see above) and starts it, its init
// waiting: its root and bundle, the runtime's create with the request
// pipe's read end preserved as the init's pid1.RequestFD and the mounts
// checked (prepareContainer: Containers.Create, THREATS I5), then the
// runtime's start. On error what it made is for the caller's reset or
// teardown.
func (m *member) prestart(ctx context.Context) error {
	s := m.s
	s.mu.Lock()
	s.plan, s.cfg, s.secrets = m.wait, m.wait.cfg, nil
	s.mu.Unlock()
	r, wr, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("the request pipe: %w", err)
	}
	s.exited.Store(false)
	err = s.prepareContainer(ctx, r)
	r.Close() // the init's copy is its own
	s.mu.Lock()
	c := s.created
	s.created = nil
	s.mu.Unlock()
	if err != nil {
		wr.Close()
		if c != nil {
			_ = c.Destroy(ctx)
		}
		return err
	}
	w := &waiting{req: wr, stdin: newStdinGate()}
	if err := c.Start(ctx, Stdio{Stdin: w.stdin, Stdout: &w.stdout, Stderr: &w.stderr}); err != nil {
		// Start destroyed the container.
		wr.Close()
		w.stdin.feed(nil)
		return err
	}
	w.proc = watch(c)
	m.next = w
	return nil
}

// watched is a container's process whose end is watched from its start
// (a waiting init that ends while idle is seen at the next acquire):
// one goroutine waits for it, until it ends.
type watched struct {
	Process
	done chan struct{}
	ex   Exit
	err  error
}

func watch(p Process) *watched {
	w := &watched{Process: p, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		w.ex, w.err = p.Wait(context.Background())
	}()
	return w
}

// ended reports whether the process has ended.
func (w *watched) ended() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to end (killing it when ctx ends first) and
// says how it ended (Process.Wait).
func (w *watched) Wait(ctx context.Context) (Exit, error) {
	select {
	case <-w.done:
	case <-ctx.Done():
		_ = w.Signal(syscall.SIGKILL)
		<-w.done
		return w.ex, fmt.Errorf("the sandbox's container: %w", ctx.Err())
	}
	return w.ex, w.err
}

// send hands m's waiting container to the lease's execution: its output
// to stdio's writers, stdio.Stdin to its input, and the tenant's command,
// environment and working directory (the lease's plan) to its init. It is
// the start function of a warm lease's run.
func (m *member) send(ctx context.Context, stdio Stdio) (Process, error) {
	w := m.next
	m.next = nil
	if w == nil {
		return nil, errors.New("the pooled sandbox has no waiting container")
	}
	defer w.req.Close()
	w.stdout.set(stdio.Stdout)
	w.stderr.set(stdio.Stderr)
	w.stdin.feed(stdio.Stdin)
	err := ctx.Err()
	if err == nil {
		err = sendRequest(w.req, m.s.plan.Container.Spec.Process)
	}
	if err != nil {
		// Nothing runs: the init is killed and reaped here, the container
		// deleted at release.
		_ = w.proc.Signal(syscall.SIGKILL)
		_, _ = w.proc.Wait(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("sending the command to the pooled container's init: %w", err)
	}
	return w.proc, nil
}

// sendRequest writes the execution request of the tenant's process p (its
// command without the init's arguments, its environment and working
// directory) to the waiting init's pipe.
func sendRequest(pipe *os.File, p *specs.Process) error {
	cmd, ok := pid1.Command(p.Args)
	if !ok {
		return fmt.Errorf("the tenant's process %q is not run by the init", p.Args)
	}
	data, err := pid1.Request{Args: cmd, Env: p.Env, Cwd: p.Cwd}.Encode()
	if err != nil {
		return err
	}
	// The init reads it at once; a dead init is EPIPE, a stuck one the
	// deadline.
	_ = pipe.SetWriteDeadline(time.Now().Add(killGrace))
	_, err = pipe.Write(data)
	return err
}

// discard ends m's waiting container, if any, that no lease took: its
// init killed and reaped, its stdio copies ended (the runtime's delete
// removes the rest).
func (m *member) discard() {
	w := m.next
	m.next = nil
	if w == nil {
		return
	}
	w.req.Close()
	w.stdin.feed(nil)
	_ = w.proc.Signal(syscall.SIGKILL)
	ctx, cancel := context.WithTimeout(context.Background(), killGrace)
	defer cancel()
	_, _ = w.proc.Wait(ctx)
}

// switchWriter is a waiting container's output: discarded until a lease
// sets where it goes.
type switchWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *switchWriter) set(w io.Writer) {
	s.mu.Lock()
	s.w = w
	s.mu.Unlock()
}

func (s *switchWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil {
		return len(p), nil
	}
	return s.w.Write(p)
}

// stdinGate is a waiting container's input: Read blocks until feed gives
// the reader to copy (nil: end of input at once). Read is called from one
// goroutine only (the container's stdin copy).
type stdinGate struct {
	once sync.Once
	ch   chan io.Reader
	r    io.Reader
	fed  bool
}

func newStdinGate() *stdinGate { return &stdinGate{ch: make(chan io.Reader, 1)} }

func (g *stdinGate) feed(r io.Reader) { g.once.Do(func() { g.ch <- r }) }

func (g *stdinGate) Read(p []byte) (int, error) {
	if !g.fed {
		g.r, g.fed = <-g.ch, true
	}
	if g.r == nil {
		return 0, io.EOF
	}
	return g.r.Read(p)
}

// sameContainer reports whether a tenant's container plan a has the
// shape of b, the pool's: equal in everything but what the request
// brings (the process's arguments, environment and working directory)
// and the warnings (the tenant's are logged at acquire). Every other
// field of the spec — user, mounts, root, read-only root, terminal,
// capabilities, seccomp, rlimits, limits, hostname — and of the plan
// (view, protected paths, generated files, bundle, init) must be equal,
// so a field added later is compared without anyone remembering to.
func sameContainer(a, b *ContainerPlan) bool {
	if a == nil || b == nil || a.Container == nil || b.Container == nil || a.Spec == nil || b.Spec == nil ||
		a.Spec.Process == nil || b.Spec.Process == nil {
		return false
	}
	return reflect.DeepEqual(containerShape(a), containerShape(b))
}

func containerShape(c *ContainerPlan) ContainerPlan {
	out := *c
	sc := *c.Container
	spec := *sc.Spec
	proc := *spec.Process
	proc.Args, proc.Env, proc.Cwd = nil, nil, ""
	spec.Process = &proc
	sc.Spec, sc.Warnings = &spec, nil
	out.Container = &sc
	return out
}
