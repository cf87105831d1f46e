package sandbox

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/sandbox/pid1"
	"github.com/egressd/egressd/sandbox/specconv"
)

// Stdio is where a container's standard streams go. A nil field is
// /dev/null.
//
// The runtime is never handed one of these as a file: runc changes the
// owner of its stdio to the container user (fixStdioPermissions), which
// for a host file or terminal would give the sandbox's uid a host inode.
// Streams are copied through pipes (or, with Terminal, a pseudo-terminal
// made inside the container) instead. Stdin is copied by a goroutine that
// ends at its next Read after the container exits (pass nil, or a reader
// the caller closes, for none to linger).
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Terminal, when not nil, gives the container's process a
	// pseudo-terminal instead of pipes: the runtime makes it inside the
	// container (its devpts) and passes its master end over a console
	// socket. Stdin is copied to it and everything the command writes,
	// stdout and stderr alike, comes to Stdout; Stderr is unused. The
	// bundle's spec must set process.terminal (Config.Terminal does).
	Terminal *Terminal
}

// Streams is what a container is created with (Runtime.Create,
// Containers.Create): its standard streams' kind, and the pipe a waiting
// init reads its execution from.
type Streams struct {
	// Terminal: a pseudo-terminal instead of pipes; the Stdio given to
	// Start must then have a Terminal, and only then.
	Terminal bool
	// Request, when not nil, is passed to the container's process as
	// file descriptor pid1.RequestFD (the runtime's --preserve-fds 1): a
	// pooled container's waiting init reads its execution from it. The
	// caller closes its copy once Create returned.
	Request *os.File
}

// WindowSize is a terminal's size in characters.
type WindowSize = pid1.WindowSize

// Terminal is a container's pseudo-terminal's size.
type Terminal struct {
	// Size is the initial window size (the init sets it before the
	// command starts; it is set on the master end too); zero leaves the
	// kernel's 0x0.
	Size WindowSize
	// Resize delivers later sizes (the caller's SIGWINCH); each is set on
	// the terminal, and the kernel signals SIGWINCH to its foreground
	// process group. nil: the size never changes.
	Resize <-chan WindowSize
}

// Exit is how a container's process ended.
type Exit struct {
	// Code is its exit status, 128+N when a signal N killed it.
	Code int
	// OOMKills is how many of the container's processes the kernel's
	// out-of-memory killer killed (the memory cgroup's oom_kill count), and
	// PidsLimitHits how many forks its pids limit refused (pids.events
	// max). Both are read on the host, from the container's cgroup after
	// its process ended, never from anything inside it; 0 when the
	// cgroup was not found (another runtime's layout).
	OOMKills, PidsLimitHits uint64
}

// Container is a container the runtime created (Runtime.Create): its
// process 1 exists, waiting for Start, which starts the command.
type Container struct {
	id   string
	rt   *Runtime
	proc *os.Process

	master *os.File    // the terminal's master end (nil with pipes)
	stdin  *os.File    // our end of the stdin pipe, until Start hands it on
	outs   [2]*os.File // our ends of the stdout and stderr pipes
	sinks  [2]io.Writer
	copies sync.WaitGroup // the output copies
	done   chan struct{}  // closed when Wait has reaped the process

	gate     chan struct{} // closed when the output may be copied
	started  atomic.Bool   // the runtime started the container
	openOnce sync.Once
	heldBack limitedBuffer // the output of a runtime that failed

	endOnce sync.Once // Start or Destroy, whichever comes first
}

// limitedBuffer keeps the first 64 KiB written to it, and discards the
// rest.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := 64<<10 - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Run starts the container id from bundleDir (Start) and waits for its
// process to end (Wait). It does not delete the container: call Delete in
// every case, it is idempotent.
func (r *Runtime) Run(ctx context.Context, id, bundleDir string, stdio Stdio) (Exit, error) {
	c, err := r.Start(ctx, id, bundleDir, stdio)
	if err != nil {
		return Exit{Code: -1}, err
	}
	return c.Wait(ctx)
}

// Start creates the container id from bundleDir (Create) and starts it
// (Container.Start), streaming stdio.
func (r *Runtime) Start(ctx context.Context, id, bundleDir string, stdio Stdio) (*Container, error) {
	c, err := r.Create(ctx, id, bundleDir, Streams{Terminal: stdio.Terminal != nil})
	if err != nil {
		return nil, err
	}
	if err := c.Start(ctx, stdio); err != nil {
		return nil, err
	}
	return c, nil
}

// Create creates the container id from bundleDir (`runc create --pid-file
// ... [--console-socket ...]`) and returns it created: its process 1 (the
// runtime's init) exists with every namespace and mount made, and waits
// for Start: nothing of the command runs before. The runtime exits as soon
// as the container exists; its process, which the runtime leaves behind,
// becomes the caller's child: Create makes the calling process a child
// subreaper (prctl PR_SET_CHILD_SUBREAPER), so Wait can reap it and see
// how it ended, and the cgroup stays for Wait to read until Delete. (A
// caller that lives long must reap other orphans that come to it.) The
// container's standard streams are pipes of ours or, with
// streams.Terminal, a pseudo-terminal made inside it, whose master end the
// runtime passes over a console socket; Start connects them to the
// caller's. streams.Request is the container's process's from its create.
//
// A runtime that fails is an error carrying its message (its JSON log in
// the bundle, else what it printed), never an exit status. The container's
// output is held back until the runtime has said it started it, so a
// failing runtime's own words, which it writes to the stream the container
// inherits, are not mistaken for the command's. A created container that
// is never started must be destroyed (Destroy).
func (r *Runtime) Create(ctx context.Context, id, bundleDir string, streams Streams) (*Container, error) {
	return r.create(ctx, id, bundleDir, streams, nil)
}

// create is Create with check: when not nil, it is called with the pid of
// the created container's process 1, after the runtime made every mount
// and before anything of the command runs (the process is the runtime's,
// waiting to be started); an error it returns destroys the container
// (killed, reaped, deleted) and is create's.
func (r *Runtime) create(ctx context.Context, id, bundleDir string, streams Streams, check func(pid int) error) (_ *Container, err error) {
	logPath, pidPath, sockPath, err := prepareStart(id, bundleDir)
	if err != nil {
		return nil, err
	}
	args := []string{"--log", logPath, "--log-format", "json", "create", "--pid-file", pidPath}
	var closeAfterRun []io.Closer
	defer func() {
		for _, f := range closeAfterRun {
			f.Close()
		}
	}()
	c := &Container{id: id, rt: r, done: make(chan struct{}), gate: make(chan struct{})}
	defer func() {
		if err != nil {
			c.open(false)
			c.closeFiles()
		}
	}()
	var ln *net.UnixListener
	if streams.Terminal {
		if len(sockPath) >= len(unix.RawSockaddrUnix{}.Path) {
			return nil, fmt.Errorf("console socket path %s is too long for a unix socket", sockPath)
		}
		if ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: sockPath, Net: "unix"}); err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		defer ln.Close() // removes the socket file too
		args = append(args, "--console-socket", sockPath)
	}
	if streams.Request != nil {
		args = append(args, "--preserve-fds", "1")
	}
	cmd := r.command(ctx, append(args, "--bundle", bundleDir, id)...)
	if streams.Request != nil {
		cmd.ExtraFiles = []*os.File{streams.Request} // fd 3: pid1.RequestFD
	}
	cmd.Dir = bundleDir
	cmd.Env = []string{"PATH=" + specconv.DefaultPath}
	// A terminal's ^C is the launcher's to handle, never the runtime's.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = killGrace
	// What the runtime prints itself, for its error message.
	var runtimeOut bytes.Buffer
	closeAfterRun, err = c.wireStdio(cmd, streams.Terminal, &runtimeOut)
	if err != nil {
		return nil, err
	}

	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("creating container %s: %w", id, ctx.Err())
		}
		// What the runtime wrote to the streams it shares with the
		// container is its own: take it for the message.
		for _, f := range closeAfterRun {
			f.Close()
		}
		closeAfterRun = nil
		return nil, r.failure(c, id, logPath, runtimeOut.String(), err)
	}
	pid, err := readPidFile(pidPath)
	if err != nil {
		_ = r.Delete(context.WithoutCancel(ctx), id)
		return nil, fmt.Errorf("%s create %s: %w", r.Name, id, err)
	}
	// The runtime has exited, so its child, the container's process, is
	// ours now (subreaper), unreaped until Wait: the pid cannot be reused.
	c.proc, err = os.FindProcess(pid)
	if err != nil {
		return nil, fmt.Errorf("container %s: its process %d: %w", id, pid, err)
	}
	if err := c.inspect(ctx, ln, check); err != nil {
		return nil, err
	}
	return c, nil
}

// inspect receives the created container c's terminal (when ln is its
// console socket) and has check inspect it. On any error the container is
// destroyed.
func (c *Container) inspect(ctx context.Context, ln *net.UnixListener, check func(pid int) error) (err error) {
	defer func() {
		if err != nil {
			_ = c.destroy(ctx)
		}
	}()
	if ln != nil {
		if c.master, err = receiveMaster(ln); err != nil {
			return fmt.Errorf("container %s: receiving its terminal from %s: %w", c.id, c.rt.Name, err)
		}
	}
	if check != nil {
		return check(c.proc.Pid)
	}
	return nil
}

// Start starts the created container (`runc start`: its process 1 goes on
// to run the command) and connects its streams to stdio, whose Terminal
// must be set when, and only when, the container was created with one.
// On any error the container is destroyed (Destroy) and nothing of the
// command ran. Start, or Destroy, is called once.
func (c *Container) Start(ctx context.Context, stdio Stdio) (err error) {
	first := false
	c.endOnce.Do(func() { first = true })
	if !first {
		return fmt.Errorf("container %s: started or destroyed already", c.id)
	}
	defer func() {
		if err != nil {
			_ = c.destroy(ctx)
		}
	}()
	if (stdio.Terminal != nil) != (c.master != nil) {
		return fmt.Errorf("container %s: a terminal needs one at create and at start", c.id)
	}
	if _, err := c.rt.runShort(ctx, "start", c.id); err != nil {
		return err
	}
	if c.master != nil {
		c.copyTerminal(stdio)
	} else {
		for i, w := range []io.Writer{stdio.Stdout, stdio.Stderr} {
			c.sinks[i] = cmp.Or[io.Writer](w, io.Discard)
		}
		if stdio.Stdin == nil {
			c.stdin.Close()
		} else {
			go copyStdin(c.stdin, stdio.Stdin, nil)
		}
		c.stdin = nil // copyStdin's, or closed
	}
	c.open(true)
	return nil
}

// Destroy removes a container that was created and never started: its
// process killed and reaped, the runtime's record deleted, our ends of its
// streams closed. After Start it does nothing (Delete removes a started
// one).
func (c *Container) Destroy(ctx context.Context) error {
	first := false
	c.endOnce.Do(func() { first = true })
	if !first {
		return nil
	}
	return c.destroy(ctx)
}

func (c *Container) destroy(ctx context.Context) error {
	_ = c.proc.Kill()
	_, _ = c.proc.Wait() // our child: reaped at once after SIGKILL
	c.open(false)
	c.closeFiles()
	if err := c.rt.Delete(context.WithoutCancel(ctx), c.id); err != nil {
		return fmt.Errorf("deleting container %s: %w", c.id, err)
	}
	return nil
}

// prepareStart checks a container's id and bundle, clears the runtime's
// log, pid file and console socket in the bundle (a previous start's), and
// makes the calling process the subreaper of the container's process.
func prepareStart(id, bundleDir string) (logPath, pidPath, sockPath string, err error) {
	if err := checkID(id); err != nil {
		return "", "", "", err
	}
	if !filepath.IsAbs(bundleDir) {
		return "", "", "", fmt.Errorf("bundle %q is not an absolute path", bundleDir)
	}
	logPath = filepath.Join(bundleDir, runtimeLog)
	pidPath = filepath.Join(bundleDir, "init.pid")
	sockPath = filepath.Join(bundleDir, "console.sock")
	for _, p := range []string{logPath, pidPath, sockPath} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", "", "", fmt.Errorf("clearing %s: %w", p, err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return "", "", "", fmt.Errorf("becoming the container process's reaper (prctl PR_SET_CHILD_SUBREAPER): %w", err)
	}
	return logPath, pidPath, sockPath, nil
}

// wireStdio gives the runtime's command its stdio. With a terminal it
// prints to out (its own words, for its error message); otherwise the
// container inherits the runtime's stdio: pipes of ours, whose output is
// copied once the runtime said it started. The files returned are the
// command's ends, to close once it ran (also after an error).
func (c *Container) wireStdio(cmd *exec.Cmd, terminal bool, out *bytes.Buffer) ([]io.Closer, error) {
	if terminal {
		cmd.Stdout, cmd.Stderr = out, out
		return nil, nil
	}
	var ends []io.Closer
	files, err := c.pipes()
	for _, f := range files {
		if f != nil {
			ends = append(ends, f)
		}
	}
	if err != nil {
		return ends, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = files[0], files[1], files[2]
	c.copyOutput()
	return ends, nil
}

// failure is the error of a runtime that failed to start container id:
// its JSON log's errors, else what it printed itself (out), else what it
// wrote to the streams it shares with the container (held back from the
// caller), else how it exited.
func (r *Runtime) failure(c *Container, id, logPath, out string, exitErr error) error {
	c.open(false)
	c.waitCopies()
	msg := runtimeErrors(logPath)
	if msg == "" {
		msg = strings.TrimSpace(out)
	}
	if msg == "" {
		msg = strings.TrimSpace(c.heldBack.String())
	}
	if msg == "" {
		msg = exitErr.Error()
	}
	return fmt.Errorf("%s create %s: %s", r.Name, id, oneLineMsg(msg))
}

// pipes makes the container's stdin, stdout and stderr pipes: the
// runtime's ends returned, ours kept (Start connects them to the caller's
// streams, or to nothing).
func (c *Container) pipes() (files [3]*os.File, err error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return files, fmt.Errorf("stdin pipe: %w", err)
	}
	files[0], c.stdin = pr, pw
	for i := range c.outs {
		pr, pw, err := os.Pipe()
		if err != nil {
			return files, fmt.Errorf("output pipe: %w", err)
		}
		files[i+1], c.outs[i] = pw, pr
	}
	return files, nil
}

// copyOutput starts copying the output pipes once the runtime said the
// container runs (open), to the sinks Start set; when it failed, what came
// is discarded.
func (c *Container) copyOutput() {
	for i, r := range c.outs {
		c.copies.Add(1)
		go func() {
			defer c.copies.Done()
			<-c.gate
			if !c.started.Load() {
				// The runtime failed: what came is its own words.
				_, _ = io.Copy(&c.heldBack, r)
				return
			}
			_, _ = io.Copy(c.sinks[i], r)
		}()
	}
}

// open releases the output copies: started says whether the container
// runs. Called once.
func (c *Container) open(started bool) {
	c.openOnce.Do(func() {
		c.started.Store(started)
		close(c.gate)
	})
}

// copyTerminal copies between the terminal's master end and stdio, and
// applies resizes.
func (c *Container) copyTerminal(stdio Stdio) {
	t := stdio.Terminal
	if t.Size != (WindowSize{}) {
		_ = c.setSize(t.Size)
	}
	if stdio.Stdin != nil {
		go copyStdin(c.master, stdio.Stdin, []byte{4}) // ^D: end of input
	}
	if stdio.Stdout != nil {
		c.copies.Add(1)
		go func() {
			defer c.copies.Done()
			// EIO once every process holding the terminal has ended.
			_, _ = io.Copy(stdio.Stdout, c.master)
		}()
	} else {
		c.copies.Add(1)
		go func() { defer c.copies.Done(); _, _ = io.Copy(io.Discard, c.master) }()
	}
	if t.Resize != nil {
		go func() {
			for {
				select {
				case ws := <-t.Resize:
					_ = c.setSize(ws)
				case <-c.done:
					return
				}
			}
		}()
	}
}

// setSize sets the terminal's window size on its master end.
func (c *Container) setSize(ws WindowSize) error {
	rc, err := c.master.SyscallConn()
	if err != nil {
		return err
	}
	var ioctlErr error
	err = rc.Control(func(fd uintptr) {
		ioctlErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: ws.Rows, Col: ws.Cols})
	})
	return errors.Join(err, ioctlErr)
}

// receiveMaster accepts the runtime's connection on the console socket and
// receives the terminal's master end (SCM_RIGHTS). The runtime has sent it
// by the time it exits; anything but one terminal master is refused.
func receiveMaster(ln *net.UnixListener) (*os.File, error) {
	if err := ln.SetDeadline(time.Now().Add(killGrace)); err != nil {
		return nil, err
	}
	conn, err := ln.AcceptUnix()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(killGrace)); err != nil {
		return nil, err
	}
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	_, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		if f, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, f...)
		}
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("got %d file descriptors, want the terminal's one", len(fds))
	}
	fd := fds[0]
	if _, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN); err != nil { // only a master answers
		unix.Close(fd)
		return nil, fmt.Errorf("what was sent is not a terminal's master end: %w", err)
	}
	// Non-blocking, so the file is pollable and Close ends a pending Read.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	unix.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), "terminal master"), nil
}

func readPidFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading the container process's pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s: %q is not a process id", path, data)
	}
	return pid, nil
}

// copyStdin feeds the container's stdin until src ends (then writes eof,
// if any: a terminal's ^D) or the container stops reading.
func copyStdin(dst *os.File, src io.Reader, eof []byte) {
	_, err := io.Copy(dst, src)
	if err == nil && eof != nil {
		_, _ = dst.Write(eof)
		return // a terminal's master is closed by Wait
	}
	if eof == nil {
		_ = dst.Close()
	}
}

// Wait waits for the container's process to end and returns how it ended.
// When ctx ends first (a timeout, an interrupted launcher), the process is
// killed (SIGKILL to the container's process 1 ends every process of its
// pid namespace) and Wait returns the exit with ctx's error wrapped. Wait
// returns once the container's output is drained (at most killGrace after
// the process ended). Call it once.
func (c *Container) Wait(ctx context.Context) (Exit, error) {
	exited := make(chan *os.ProcessState, 1)
	var waitErr error
	go func() {
		st, err := c.proc.Wait()
		waitErr = err
		exited <- st
	}()
	var st *os.ProcessState
	select {
	case st = <-exited:
	case <-ctx.Done():
		_ = c.proc.Kill()
		st = <-exited
	}
	close(c.done)
	ex := Exit{Code: -1}
	if st != nil {
		ex.Code = st.ExitCode()
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			ex.Code = 128 + int(ws.Signal())
		}
	}
	ex.OOMKills, ex.PidsLimitHits = readCgroupEvents(findCgroupDirs(c.id))
	c.drain()
	if err := ctx.Err(); err != nil {
		return ex, fmt.Errorf("container %s: %w", c.id, err)
	}
	if waitErr != nil {
		return ex, fmt.Errorf("container %s: waiting for its process: %w", c.id, waitErr)
	}
	return ex, nil
}

// drain waits for the output copies to end (every writer is gone with the
// container's pid namespace), at most killGrace, then closes our ends.
func (c *Container) drain() {
	c.waitCopies()
	c.closeFiles()
	c.copies.Wait()
}

// waitCopies waits for the output copies to end, at most killGrace.
func (c *Container) waitCopies() {
	done := make(chan struct{})
	go func() { c.copies.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(killGrace):
	}
}

func (c *Container) closeFiles() {
	for _, f := range append(c.outs[:], c.master, c.stdin) {
		if f != nil {
			f.Close()
		}
	}
}

// Signal sends sig to the container's process (its process 1: with an init,
// the init passes it on to the command).
func (c *Container) Signal(sig syscall.Signal) error {
	if err := c.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling container %s: %w", c.id, err)
	}
	return nil
}

// oneLineMsg joins a runtime's multi-line message, and escapes what is not
// printable (what came on a stream the container shares may be its own).
func oneLineMsg(s string) string {
	s = strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
