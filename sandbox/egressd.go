package sandbox

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/nsthread"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/specconv"
)

// Where egressd listens inside a filtered sandbox's namespace: loopback
// only, all above 1024 so an unprivileged process can bind them (the
// firewall redirects port 53 and every outbound TCP connection to them).
const (
	EgressdDNSPort         = 15053
	EgressdTransparentPort = 15001
	EgressdProxyPort       = 3128
)

// Defaults for egressd's identity. The uid and gid must not be any sandbox
// user's (Create refuses a sandbox user with either), so nothing in a
// sandbox can signal, trace or impersonate egressd (THREATS G2). The mark
// is what the firewall exempts: only a socket of a process holding
// CAP_NET_ADMIN or, since Linux 5.17, CAP_NET_RAW can carry it; egressd
// alone holds either (filtered mode refuses both in cap_add, and the
// built-in seccomp filters refuse SO_MARK as well).
const (
	DefaultEgressdUID = 65530
	DefaultEgressdGID = 65530
	DefaultMark       = 0x4547
)

// DefaultReadyTimeout bounds egressd's start.
const DefaultReadyTimeout = 10 * time.Second

// egressdStopGrace is how long egressd gets after SIGTERM before SIGKILL.
const egressdStopGrace = 2 * time.Second

// EgressdPlan is how a filtered sandbox's egressd runs: its own process, a
// child of the launcher, in the sandbox's network namespace only, as UID:GID
// with CAP_NET_ADMIN alone, its files in Dir (private to it: the policy
// snapshot, the admin socket, the inspection files, its binary bound there).
type EgressdPlan struct {
	// Binary is the egressd binary on the host (any path root can read),
	// bound read-only at Dir/egressd, which its uid can reach.
	Binary string `json:"binary"`
	Dir    string `json:"dir"`
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
	// Args are its command line without argv[0] (egressdArgs).
	Args []string `json:"args"`
	// Policy is the snapshot of the launch's resolved network policy it
	// enforces (Dir/policy.json; writeEgressdPolicy).
	Policy []byte `json:"-"`
	// Files are further files of Dir (inspection's: the CA, a copy of the
	// upstream CA bundle, the credentials' secrets), each mode 0400 and
	// owned by UID:GID; their contents are never shown.
	Files []EgressdFile `json:"files,omitempty"`
	// ReadyTimeout bounds its start.
	ReadyTimeout time.Duration `json:"ready_timeout"`
}

// EgressdFile is one file of egressd's directory.
type EgressdFile struct {
	Name string `json:"name"`
	Data []byte `json:"-"`
}

// policyFile, adminSocket and binaryName are egressd's files in its dir.
const (
	policyFile  = "policy.json"
	adminSocket = "admin.sock"
	binaryName  = "egressd"
)

// egressdFlags are what egressdArgs needs.
type egressdFlags struct {
	dir       string
	mark      uint32
	upstream  []netip.AddrPort
	sandboxID string
	// extra are further flags (inspection's, inspect.go).
	extra []string
}

// egressdArgs returns egressd's command line (without argv[0]).
func egressdArgs(s egressdFlags) []string {
	up := make([]string, len(s.upstream))
	for i, u := range s.upstream {
		up[i] = u.String()
	}
	return append([]string{
		"serve",
		"--policy", filepath.Join(s.dir, policyFile),
		"--dns-listen", fmt.Sprintf("127.0.0.1:%d,[::1]:%d", EgressdDNSPort, EgressdDNSPort),
		"--proxy-listen", fmt.Sprintf("127.0.0.1:%d", EgressdProxyPort),
		"--transparent-listen", fmt.Sprintf("127.0.0.1:%d,[::1]:%d", EgressdTransparentPort, EgressdTransparentPort),
		"--admin-listen", "unix:" + filepath.Join(s.dir, adminSocket),
		"--upstream-dns", strings.Join(up, ","),
		"--mark", strconv.FormatUint(uint64(s.mark), 10),
		"--audit-log", "-",
		"--sandbox-id", s.sandboxID,
		"--ready-fd", "3",
		"--shutdown-grace", "1s",
		// The launcher writes the policy and reloads it itself (POST
		// /reload): no file watcher, whose inotify instance makes
		// egressd's exit wait ~15 ms for the kernel (its SRCU grace
		// period), on every sandbox's teardown.
		"--watch-policy=false",
	}, s.extra...)
}

// hostEgressd starts egressd as a process of the machine (EgressdStarter).
type hostEgressd struct{}

// egressdProc is a running egressd.
type egressdProc struct {
	cmd     *exec.Cmd
	pid     int
	done    chan struct{} // closed once it has exited and been reaped
	waitErr error         // set before done closes
	stderr  *tailBuffer
	stop1   sync.Once
	stopErr error
	// auditDone is closed when its audit stream has ended.
	auditDone chan struct{}
	// auditW is the launcher's own write end of the audit stream
	// (AppendAudit's), closed by Stop once egressd has exited: the stream
	// ends when both ends are closed.
	auditMu sync.Mutex
	auditW  *os.File
	// admin is its admin endpoint's client (the unix socket in its dir).
	admin *http.Client
}

func (e *egressdProc) Pid() int              { return e.pid }
func (e *egressdProc) Done() <-chan struct{} { return e.done }
func (e *egressdProc) Err() error {
	select {
	case <-e.done:
		return e.waitErr
	default:
		return nil
	}
}

// Start starts egressd inside the namespace at nsPath and waits until it
// is serving (or ctx ends).
//
// egressd is its own process, a child of the launcher, in no namespace of
// the container (not its pid or mount namespace: only the network
// namespace is shared). It is started from a thread that has entered the
// namespace, set no_new_privs and dropped every capability but
// CAP_NET_ADMIN from its bounding set, and it runs as e.UID:e.GID with no
// supplementary groups and CAP_NET_ADMIN as its only (ambient) capability,
// which it needs for SO_MARK. The thread lives until egressd exits, so its
// parent-death signal (SIGKILL) fires only if the launcher dies.
//
// It runs its binary as bound into e.Dir (the launcher binds it there,
// traversable by its uid, unlike where the launcher may have found it, say
// /root/egressd/bin). Audit records arrive on its stdout and go to audit;
// its stderr is kept for error messages.
func (hostEgressd) Start(ctx context.Context, nsPath string, p *EgressdPlan, audit func(io.Reader)) (EgressdProcess, error) {
	timeout := p.ReadyTimeout
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	e := &egressdProc{done: make(chan struct{}), auditDone: make(chan struct{}), stderr: newTailBuffer(16 << 10),
		admin: adminClient(filepath.Join(p.Dir, adminSocket))}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer readyR.Close()
	auditR, auditW, err := os.Pipe()
	if err != nil {
		readyW.Close()
		return nil, err
	}
	cmd := exec.Command(filepath.Join(p.Dir, binaryName), p.Args...)
	cmd.Args[0] = "egressd"
	cmd.Env = []string{"PATH=" + specconv.DefaultPath}
	cmd.Dir = p.Dir
	cmd.Stdout = auditW
	cmd.Stderr = e.stderr
	cmd.ExtraFiles = []*os.File{readyW}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: p.UID, Gid: p.GID, Groups: []uint32{}},
		AmbientCaps: []uintptr{unix.CAP_NET_ADMIN},
		Pdeathsig:   syscall.SIGKILL,
		Setpgid:     true, // a terminal's ^C is the launcher's to handle
	}
	e.cmd = cmd
	err = e.start(nsPath)
	readyW.Close()
	if err != nil {
		auditW.Close()
		auditR.Close()
		close(e.auditDone)
		return nil, fmt.Errorf("starting egressd: %w", err)
	}
	e.auditW = auditW
	e.pid = cmd.Process.Pid
	go func() {
		defer close(e.auditDone)
		defer auditR.Close()
		audit(auditR)
	}()
	return e, e.waitReady(ctx, readyR, timeout)
}

// adminClient talks HTTP to the admin socket at sock.
func adminClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}}
}

// adminBodyLimit bounds what is read of an admin answer.
const adminBodyLimit = 1 << 20

// Admin implements EgressdProcess.
func (e *egressdProc) Admin(ctx context.Context, method, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://egressd-admin"+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := e.admin.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("egressd's admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, adminBodyLimit))
	if err != nil {
		return resp.StatusCode, body, fmt.Errorf("egressd's admin endpoint: %s %s: %w", method, path, err)
	}
	return resp.StatusCode, body, nil
}

// start starts the process from a thread inside the namespace; that
// thread waits for it (it must outlive it: Pdeathsig).
func (e *egressdProc) start(nsPath string) error {
	started := make(chan error, 1)
	go func() {
		err := nsthread.InNetns(nsPath, func() error {
			if err := confineThread(); err != nil {
				started <- err
				return nil
			}
			if err := e.cmd.Start(); err != nil {
				started <- err
				return nil
			}
			started <- nil
			e.waitErr = e.cmd.Wait()
			close(e.done)
			return nil
		})
		if err != nil {
			// The namespace could not be entered: fn never ran. (Once
			// fn has said something, this finds the buffer full.)
			select {
			case started <- err:
			default:
			}
		}
	}()
	return <-started
}

// waitReady waits for "ready" on the ready pipe, egressd's exit, the
// timeout or ctx, whichever comes first.
func (e *egressdProc) waitReady(ctx context.Context, readyR *os.File, timeout time.Duration) error {
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(readyR).ReadString('\n')
		if err == nil && line == "ready\n" {
			ready <- nil
			return
		}
		ready <- errors.New("closed its ready pipe without saying ready")
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-ready:
		if err == nil {
			return nil
		}
		// The pipe closes when egressd exits: report the exit instead.
		select {
		case <-e.done:
			return fmt.Errorf("egressd exited before it was ready (%v): %s", e.waitErr, e.stderr.lastLines(5))
		case <-time.After(time.Second):
			return fmt.Errorf("egressd %s: %s", err, e.stderr.lastLines(5))
		}
	case <-e.done:
		return fmt.Errorf("egressd exited before it was ready (%v): %s", e.waitErr, e.stderr.lastLines(5))
	case <-timer.C:
		return fmt.Errorf("egressd not ready after %s: %s", timeout, e.stderr.lastLines(5))
	case <-ctx.Done():
		return fmt.Errorf("waiting for egressd: %w", ctx.Err())
	}
}

// confineThread sets what the calling (throwaway) thread's children
// inherit: no_new_privs, and a capability bounding set of CAP_NET_ADMIN
// alone. The launcher's other threads are unaffected.
func confineThread() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("setting no_new_privs: %w", err)
	}
	last, err := lastCap()
	if err != nil {
		return err
	}
	for c := 0; c <= last; c++ {
		if c == unix.CAP_NET_ADMIN {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
		}
	}
	return nil
}

func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// bindFile bind-mounts the file src onto dst (created empty).
func bindFile(fsys HostFS, src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o001 == 0 {
		return fmt.Errorf("%s is not a file every user may execute", src)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o555)
	if err != nil {
		return err
	}
	f.Close()
	if err := fsys.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		os.Remove(dst)
		return fmt.Errorf("bind-mounting %s at %s: %w", src, dst, err)
	}
	return nil
}

// Stop ends egressd: SIGTERM, then SIGKILL after the grace period, by pid;
// it waits for the process and for its audit stream to end. Idempotent.
func (e *egressdProc) Stop() error {
	e.stop1.Do(func() {
		select {
		case <-e.done:
		default:
			_ = e.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-e.done:
			case <-time.After(egressdStopGrace):
				_ = e.cmd.Process.Kill()
				select {
				case <-e.done:
				case <-time.After(5 * time.Second):
					e.stopErr = fmt.Errorf("egressd (pid %d) did not exit after SIGKILL", e.pid)
				}
			}
		}
		e.auditMu.Lock()
		if e.auditW != nil {
			e.auditW.Close()
			e.auditW = nil
		}
		e.auditMu.Unlock()
		select {
		case <-e.auditDone:
		case <-time.After(2 * time.Second):
		}
	})
	return e.stopErr
}

// AppendAudit writes line at the end of its audit stream, after all that
// egressd wrote to it so far.
func (e *egressdProc) AppendAudit(line []byte) error {
	e.auditMu.Lock()
	defer e.auditMu.Unlock()
	if e.auditW == nil {
		return errors.New("egressd's audit stream is closed")
	}
	_, err := e.auditW.Write(line)
	return err
}

// egressdPolicy is the policy egressd enforces for a launch: the launch's
// resolved network policy, frozen (the launcher checked it against the
// floor; a policy file edited during the run does not change it), as a
// snapshot (policy.Profile.Snapshot: the JSON GET /policy writes, read by
// egressd with the same code). Every value keeps its original source, so
// egressd's audit records, X-Egressd-Denied headers and 403 bodies name the
// file and line, flag or built-in the rule was written at.
func egressdPolicy(p *policy.Profile) ([]byte, error) {
	data, err := policy.MarshalSnapshot(p.Snapshot("network"))
	if err != nil {
		return nil, fmt.Errorf("egressd's policy: %w", err)
	}
	return data, nil
}

// Denial is one distinct request egressd refused (outcome deny), could
// not serve (outcome error: the upstream resolver or the destination
// failed), or let through in report mode that filtered mode would refuse
// (outcome would-deny) during a run. Every text in it has the sandbox's
// secrets masked.
type Denial struct {
	// Kind is the audit record kind: "dns" for a name lookup, else a
	// connection or request ("connect", "http", "tls", "tcp", "https").
	Kind audit.Kind
	// Outcome is deny, error or would-deny.
	Outcome audit.Outcome
	// Target is the name or IP asked for, normalised (escaped and capped
	// by egressd when the sandbox spelt it oddly); Port its port (53 for
	// a lookup).
	Target string
	Port   uint16
	// Name is the name a connection to an address was decided on (a
	// learned name), when that is not Target.
	Name string
	// Reason is the record's reason (audit.Reasons).
	Reason audit.Reason
	// Rule and RuleSource are the deciding rule and where it was written
	// ("flag:--block", "policy.toml:7", "builtin:standard"), if a rule
	// decided; for an error, the rule that allowed what then failed.
	Rule, RuleSource string
	// Addrs are the addresses involved, when the record had them.
	Addrs []string
	// Method and Path are the request's, for a request refused inside an
	// inspected session (Kind "https").
	Method, Path string
	// Error is egressd's explanation beyond the reason, if any.
	Error string
	// Count is how many times the run had it.
	Count int
}

// auditSink takes egressd's audit stream: it masks the sandbox's secrets
// in every record, copies every record to out, keeps one Denial per
// destination and reason, and tells onDenial of each new one as it comes.
type auditSink struct {
	mask *LineMasker
	// onDenial, when set, is called once per distinct Denial, when it is
	// first seen, from the goroutine reading the stream.
	onDenial func(Denial)

	mu      sync.Mutex
	out     io.Writer
	denials map[denialKey]*Denial
	order   []denialKey
	// barriers are the lines barrier handed out and not yet read back.
	barriers map[string]chan struct{}
}

// barrierPrefix starts a barrier line; egressd's lines are JSON objects.
const barrierPrefix = "launcher-audit-barrier "

// barrier returns a line to append to the audit stream (AppendAudit) and
// a channel closed once the sink has read up to it: every record written
// to the stream before it has been taken by then. The line is the sink's
// alone (a random token), never recorded or copied out.
func (a *auditSink) barrier() ([]byte, <-chan struct{}) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := barrierPrefix + hex.EncodeToString(b[:])
	ch := make(chan struct{})
	a.mu.Lock()
	if a.barriers == nil {
		a.barriers = map[string]chan struct{}{}
	}
	a.barriers[token] = ch
	a.mu.Unlock()
	return []byte(token + "\n"), ch
}

// passed reports whether line is a barrier of the sink's, and lets its
// waiter go.
func (a *auditSink) passed(line []byte) bool {
	if !bytes.HasPrefix(line, []byte(barrierPrefix)) {
		return false
	}
	a.mu.Lock()
	ch, ok := a.barriers[string(line)]
	delete(a.barriers, string(line))
	a.mu.Unlock()
	if ok {
		close(ch)
	}
	return ok
}

// syncAudit waits until the sandbox's sink has taken every audit record
// egressd wrote before now (a reset flushes egressd's log first): a
// barrier appended to the stream must be read back.
func (s *Sandbox) syncAudit(ctx context.Context) error {
	s.mu.Lock()
	eg := s.eg
	s.mu.Unlock()
	if eg == nil {
		return errors.New("the sandbox has no egressd")
	}
	line, seen := s.sink.barrier()
	if err := eg.AppendAudit(line); err != nil {
		return fmt.Errorf("egressd's audit stream: %w", err)
	}
	select {
	case <-seen:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("egressd's audit stream was not read up to the reset: %w", ctx.Err())
	}
}

type denialKey struct {
	outcome      audit.Outcome
	dns          bool
	target       string
	port         uint16
	reason       audit.Reason
	rule         string
	method, path string
}

func newAuditSink(out io.Writer, m *LineMasker, onDenial func(Denial)) *auditSink {
	return &auditSink{out: out, mask: m, onDenial: onDenial, denials: map[denialKey]*Denial{}}
}

// retarget hands the stream to another tenant of a pooled sandbox: its
// output, its secrets and its denial callback, with no denial of the last
// tenant's kept.
func (a *auditSink) retarget(out io.Writer, m *LineMasker, onDenial func(Denial)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.out, a.mask, a.onDenial = out, m, onDenial
	a.denials, a.order = map[denialKey]*Denial{}, nil
}

// consume reads JSON lines until r ends.
func (a *auditSink) consume(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		a.record(sc.Bytes())
	}
}

func (a *auditSink) record(line []byte) {
	if a.passed(line) {
		return
	}
	a.mu.Lock()
	mask, onDenial := a.mask, a.onDenial
	a.mu.Unlock()
	var rec audit.Record
	if err := json.Unmarshal(line, &rec); err != nil {
		a.write([]byte(mask.String(string(line)) + "\n"))
		return
	}
	mask.Record(&rec)
	if out, err := json.Marshal(&rec); err == nil {
		a.write(append(out, '\n'))
	}
	if rec.Decision == audit.OutcomeAllow {
		return
	}
	k := denialKey{outcome: rec.Decision, dns: rec.Kind == audit.KindDNS, target: rec.Target, port: rec.Port, reason: rec.Reason, rule: rec.Rule, method: rec.Method, path: rec.Path}
	a.mu.Lock()
	if d, ok := a.denials[k]; ok {
		d.Count++
		a.mu.Unlock()
		return
	}
	d := &Denial{Kind: rec.Kind, Outcome: rec.Decision, Target: rec.Target, Port: rec.Port, Name: rec.Name, Reason: rec.Reason,
		Rule: rec.Rule, RuleSource: rec.Source, Addrs: rec.Addrs, Method: rec.Method, Path: rec.Path, Error: rec.Error, Count: 1}
	a.denials[k] = d
	a.order = append(a.order, k)
	first := *d
	first.Addrs = slices.Clone(d.Addrs)
	a.mu.Unlock()
	if onDenial != nil {
		onDenial(first)
	}
}

func (a *auditSink) write(b []byte) {
	if a.out == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_, _ = a.out.Write(b)
}

// list returns the denials, one per destination and reason, sorted by
// target and port. A lookup denial is left out when the same name was
// also denied as a connection (the connection says more: its port).
func (a *auditSink) list() []Denial {
	a.mu.Lock()
	defer a.mu.Unlock()
	conn := map[string]bool{}
	for _, k := range a.order {
		if !k.dns {
			conn[k.target] = true
		}
	}
	var out []Denial
	for _, k := range a.order {
		if k.dns && conn[k.target] {
			continue
		}
		d := *a.denials[k]
		d.Addrs = slices.Clone(d.Addrs)
		out = append(out, d)
	}
	slices.SortStableFunc(out, func(x, y Denial) int {
		return cmp.Or(cmp.Compare(x.Target, y.Target), cmp.Compare(x.Port, y.Port))
	})
	return out
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

// lastLines returns the last n non-empty lines, joined by " | ".
func (t *tailBuffer) lastLines(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var lines []string
	for _, l := range strings.Split(string(t.buf), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return "(no output)"
	}
	return strings.Join(lines, " | ")
}
