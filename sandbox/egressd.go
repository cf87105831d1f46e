package sandbox

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	"github.com/egressd/egressd/policy"
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

// egressdSpec is how to start one sandbox's egressd.
type egressdSpec struct {
	binary    string // on the host, any path root can read
	dir       string // private to egressd: policy snapshot, admin socket, binary mount
	uid, gid  uint32
	mark      uint32
	upstream  []netip.AddrPort
	sandboxID string
	timeout   time.Duration
	// sink receives egressd's audit records.
	sink *auditSink
	// extra are further flags (inspection's, inspect.go).
	extra []string
}

// egressdProc is a running egressd.
type egressdProc struct {
	cmd     *exec.Cmd
	pid     int
	done    chan struct{} // closed once it has exited and been reaped
	waitErr error         // set before done closes
	stderr  *tailBuffer
	stopped chan struct{} // closed when stop begins
	stop1   sync.Once
	// auditDone is closed when its audit stream has ended.
	auditDone chan struct{}
	// binaryMount is the bind mount of the binary inside dir.
	binaryMount string
}

// policyFile, adminSocket and binaryName are egressd's files in its dir.
const (
	policyFile  = "policy.json"
	adminSocket = "admin.sock"
	binaryName  = "egressd"
)

// egressdArgs returns egressd's command line (without argv[0]).
func egressdArgs(s egressdSpec) []string {
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
	}, s.extra...)
}

// startEgressd starts egressd inside ns and waits until it is serving (or
// ctx ends).
//
// egressd is its own process, a child of the launcher, in no namespace of
// the container (not its pid or mount namespace: only the network
// namespace is shared). It is started from a thread that has entered ns,
// set no_new_privs and dropped every capability but CAP_NET_ADMIN from its
// bounding set, and it runs as spec.uid:spec.gid with no supplementary
// groups and CAP_NET_ADMIN as its only (ambient) capability, which it
// needs for SO_MARK. The thread lives until egressd exits, so its
// parent-death signal (SIGKILL) fires only if the launcher dies.
//
// Its binary is bind-mounted into spec.dir (traversable by its uid, unlike
// where the launcher may have found it, say /root/egressd/bin). Its policy
// is a snapshot of the launch's resolved network policy (see
// writeEgressdPolicy). Audit records arrive on its stdout and go to
// spec.sink; its stderr is kept for error messages.
func startEgressd(ctx context.Context, ns *netNS, s egressdSpec) (*egressdProc, error) {
	if s.timeout <= 0 {
		s.timeout = DefaultReadyTimeout
	}
	e := &egressdProc{done: make(chan struct{}), stopped: make(chan struct{}), auditDone: make(chan struct{}), stderr: newTailBuffer(16 << 10)}
	bin := filepath.Join(s.dir, binaryName)
	if err := bindFile(s.binary, bin); err != nil {
		return nil, fmt.Errorf("egressd binary: %w", err)
	}
	e.binaryMount = bin

	readyR, readyW, err := os.Pipe()
	if err != nil {
		return e, err
	}
	defer readyR.Close()
	auditR, auditW, err := os.Pipe()
	if err != nil {
		readyW.Close()
		return e, err
	}
	cmd := exec.Command(bin, egressdArgs(s)...)
	cmd.Args[0] = "egressd"
	cmd.Env = []string{"PATH=" + DefaultPath}
	cmd.Dir = s.dir
	cmd.Stdout = auditW
	cmd.Stderr = e.stderr
	cmd.ExtraFiles = []*os.File{readyW}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: s.uid, Gid: s.gid, Groups: []uint32{}},
		AmbientCaps: []uintptr{unix.CAP_NET_ADMIN},
		Pdeathsig:   syscall.SIGKILL,
		Setpgid:     true, // a terminal's ^C is the launcher's to handle
	}
	e.cmd = cmd

	started := make(chan error, 1)
	go func() {
		// The thread that starts egressd must outlive it (Pdeathsig), so
		// the whole life of the process runs in this call.
		_ = ns.do(func() error {
			if err := confineThread(); err != nil {
				started <- err
				return nil
			}
			if err := cmd.Start(); err != nil {
				started <- err
				return nil
			}
			started <- nil
			e.waitErr = cmd.Wait()
			close(e.done)
			return nil
		})
	}()
	err = <-started
	readyW.Close()
	auditW.Close()
	if err != nil {
		auditR.Close()
		close(e.auditDone)
		return e, fmt.Errorf("starting egressd: %w", err)
	}
	e.pid = cmd.Process.Pid
	go func() {
		defer close(e.auditDone)
		defer auditR.Close()
		s.sink.consume(auditR)
	}()

	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(readyR).ReadString('\n')
		if err == nil && line == "ready\n" {
			ready <- nil
			return
		}
		ready <- errors.New("closed its ready pipe without saying ready")
	}()
	timer := time.NewTimer(s.timeout)
	defer timer.Stop()
	select {
	case err := <-ready:
		if err == nil {
			return e, nil
		}
		// The pipe closes when egressd exits: report the exit instead.
		select {
		case <-e.done:
			return e, fmt.Errorf("egressd exited before it was ready (%v): %s", e.waitErr, e.stderr.lastLines(5))
		case <-time.After(time.Second):
			return e, fmt.Errorf("egressd %s: %s", err, e.stderr.lastLines(5))
		}
	case <-e.done:
		return e, fmt.Errorf("egressd exited before it was ready (%v): %s", e.waitErr, e.stderr.lastLines(5))
	case <-timer.C:
		return e, fmt.Errorf("egressd not ready after %s: %s", s.timeout, e.stderr.lastLines(5))
	case <-ctx.Done():
		return e, fmt.Errorf("waiting for egressd: %w", ctx.Err())
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
func bindFile(src, dst string) error {
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
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		os.Remove(dst)
		return fmt.Errorf("bind-mounting %s at %s: %w", src, dst, err)
	}
	return nil
}

// exited reports whether egressd has exited (for whatever reason).
func (e *egressdProc) exited() bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

// stop ends egressd: SIGTERM, then SIGKILL after the grace period, by pid;
// it waits for the process and for its audit stream to end. Idempotent.
func (e *egressdProc) stop() error {
	if e == nil {
		return nil
	}
	var err error
	e.stop1.Do(func() {
		close(e.stopped)
		if e.cmd != nil && e.cmd.Process != nil {
			if !e.exited() {
				_ = e.cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-e.done:
				case <-time.After(egressdStopGrace):
					_ = e.cmd.Process.Kill()
					select {
					case <-e.done:
					case <-time.After(5 * time.Second):
						err = fmt.Errorf("egressd (pid %d) did not exit after SIGKILL", e.pid)
					}
				}
			}
			select {
			case <-e.auditDone:
			case <-time.After(2 * time.Second):
			}
		}
		if e.binaryMount != "" {
			if uerr := unmountAndRemove(e.binaryMount); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}
	})
	return err
}

// writeEgressdPolicy writes the policy egressd enforces for a launch: the
// launch's resolved network policy, frozen (the launcher checked it against
// the floor; a policy file edited during the run does not change it), as a
// snapshot (policy.Profile.Snapshot: the JSON GET /policy writes, read by
// egressd with the same code). Every value keeps its original source, so
// egressd's audit records, X-Egressd-Denied headers and 403 bodies name the
// file and line, flag or built-in the rule was written at.
func writeEgressdPolicy(p *policy.Profile, path string, uid, gid uint32) error {
	data, err := policy.MarshalSnapshot(p.Snapshot("network"))
	if err != nil {
		return fmt.Errorf("writing egressd's policy: %w", err)
	}
	if err := os.WriteFile(path, data, 0o400); err != nil {
		return fmt.Errorf("writing egressd's policy: %w", err)
	}
	if err := os.Chown(path, int(uid), int(gid)); err != nil {
		return fmt.Errorf("writing egressd's policy: %w", err)
	}
	return nil
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

// consume reads JSON lines until r ends.
func (a *auditSink) consume(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		a.record(sc.Bytes())
	}
}

func (a *auditSink) record(line []byte) {
	var rec audit.Record
	if err := json.Unmarshal(line, &rec); err != nil {
		a.write([]byte(a.mask.String(string(line)) + "\n"))
		return
	}
	a.mask.Record(&rec)
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
	if a.onDenial != nil {
		a.onDenial(first)
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
