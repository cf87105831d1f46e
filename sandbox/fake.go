package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/sandbox/pid1"
)

// FakeKernel is a Kernel in memory, for tests of this package and of
// others (the launcher's): namespaces, links, mounts and owners are
// records; the firewall is a firewall.Fake; a container's process and
// egressd are goroutines the test drives. Nothing of the machine changes,
// so a sandbox's whole life runs as any user. It records every operation
// (Ops), can fail any of them (Fail), and says what is left (Leftovers),
// which after a sandbox's Close must be nothing.
type FakeKernel struct {
	// Kernel is the kernel to hand Config.Kernel.
	Kernel *Kernel
	// Netfilter is the firewall's fake (the sandbox namespaces' rules by
	// their path, the launcher's uplink chains in namespace "").
	Netfilter *firewall.Fake

	// Fail, if set, is asked before every operation (its name, as Ops
	// lists them: "netns.create egs-…"); an error it returns fails the
	// operation, which then changes nothing.
	Fail func(op string) error
	// Command, if set, is what every container's process does: it runs
	// once the container starts, with the container's stdio, and its
	// result is the process's exit status. It should return soon after
	// p.Killed() closes. nil: the process exits 0 at once.
	Command func(p *FakeProcess, stdio Stdio) int
	// Taken are prefixes the launcher's namespace is said to use besides
	// the fake links' (Links.Taken).
	Taken []netip.Prefix
	// Pinned, if set, says whether something still references the
	// namespace at a path when it is removed (an orphaned socket's
	// retransmissions, a host process's fd): its bind mount goes, but the
	// kernel keeps it, and the veth pairs with an end in it, until then.
	Pinned func(nsPath string) bool

	mu         sync.Mutex
	ops        []string
	namespaces map[string]NetNS
	nextIno    uint64
	links      map[string]*FakeLink
	containers map[string]*FakeProcess
	egressd    []*FakeEgressd
	mounts     map[string]fakeMount
	owners     map[string][2]int
	strays     map[string][]int
	sockets    map[string][]string // by namespace path: Sockets's lines
}

// fakeMount is one mount: what it mounts, and for a file system of its own
// (tmpfs, overlay) the entries its target held before, which it hid: what
// was written into it is gone when it is unmounted, as on the kernel.
type fakeMount struct {
	source, fstype string
	hid            map[string]bool
}

// FakeLink is a veth the fake made.
type FakeLink struct {
	Name      string
	HostAddr  netip.Prefix
	NsPath    string
	NsAddr    netip.Prefix
	Gateway   netip.Addr
	Up        bool
	Forwarded bool
}

// NewFakeKernel returns an empty fake kernel.
func NewFakeKernel() *FakeKernel {
	k := &FakeKernel{Netfilter: firewall.NewFake(), namespaces: map[string]NetNS{}, links: map[string]*FakeLink{},
		containers: map[string]*FakeProcess{}, mounts: map[string]fakeMount{}, owners: map[string][2]int{},
		strays: map[string][]int{}, sockets: map[string][]string{}}
	k.Kernel = &Kernel{Netns: fakeNamespaces{k}, Links: fakeLinks{k}, Firewall: firewall.New(k.Netfilter),
		Runtime: fakeContainers{k}, Egressd: fakeEgressdStarter{k}, FS: fakeFS{k}}
	return k
}

// do records op and asks Fail; k.mu is held.
func (k *FakeKernel) do(op string) error {
	k.ops = append(k.ops, op)
	if k.Fail != nil {
		return k.Fail(op)
	}
	return nil
}

// Ops returns every operation so far, in order, the firewall's included
// ("netfilter restore IPv4 /run/netns/egs-…").
func (k *FakeKernel) Ops() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := slices.Clone(k.ops)
	for _, op := range k.Netfilter.Ops() {
		out = append(out, "netfilter "+op)
	}
	return out
}

// Leftovers lists what exists in the fake kernel: namespaces, links,
// containers the runtime knows, running egressd processes, mounts, and
// rules in any namespace (the launcher's included). Empty after every
// sandbox made on it was closed.
func (k *FakeKernel) Leftovers() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for name := range k.namespaces {
		out = append(out, "namespace "+name)
	}
	for name := range k.links {
		out = append(out, "link "+name)
	}
	for id := range k.containers {
		out = append(out, "container "+id)
	}
	for _, e := range k.egressd {
		if !e.stopped() {
			out = append(out, fmt.Sprintf("egressd pid %d in %s", e.pid, e.NsPath))
		}
	}
	for target := range k.mounts {
		out = append(out, "mount "+target)
	}
	for _, ns := range k.Netfilter.Namespaces() {
		out = append(out, "rules in namespace "+strconv.Quote(ns))
	}
	sort.Strings(out)
	return out
}

// Container returns the process of container id, if the runtime knows it.
func (k *FakeKernel) Container(id string) *FakeProcess {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.containers[id]
}

// Egressd returns every egressd the fake started, in order.
func (k *FakeKernel) Egressd() []*FakeEgressd {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.egressd)
}

// Link returns the link of that name, if it exists.
func (k *FakeKernel) Link(name string) *FakeLink {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l, ok := k.links[name]; ok {
		c := *l
		return &c
	}
	return nil
}

// Owner returns the owner Lchown gave path.
func (k *FakeKernel) Owner(path string) (uid, gid int, ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	o, ok := k.owners[path]
	return o[0], o[1], ok
}

// Stray puts a process pid in the namespace at nsPath that no container
// or egressd of the fake owns (one that escaped its container's cgroup,
// say): Namespaces.Pids lists it until the namespace is removed.
func (k *FakeKernel) Stray(nsPath string, pid int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.strays[nsPath] = append(k.strays[nsPath], pid)
}

// Socket puts a TCP socket that is not listening ("STATE LOCAL
// REMOTE") in the namespace at nsPath: Namespaces.Sockets lists it until
// the namespace is removed.
func (k *FakeKernel) Socket(nsPath, line string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.sockets[nsPath] = append(k.sockets[nsPath], line)
}

// fakeNamespaces are FakeKernel's Namespaces.
type fakeNamespaces struct{ k *FakeKernel }

func (f fakeNamespaces) Create(name string) (NetNS, error) {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("netns.create " + name); err != nil {
		return NetNS{}, err
	}
	if _, ok := k.namespaces[name]; ok {
		return NetNS{}, fmt.Errorf("creating network namespace %s: %w", name, os.ErrExist)
	}
	k.nextIno++
	ns := NetNS{Name: name, Path: filepath.Join(NetnsDir, name), Dev: 4, Ino: 1000 + k.nextIno}
	k.namespaces[name] = ns
	return ns, nil
}

func (f fakeNamespaces) Open(name string) NetNS {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ops = append(k.ops, "netns.open "+name)
	if ns, ok := k.namespaces[name]; ok {
		return ns
	}
	return NetNS{Name: name, Path: filepath.Join(NetnsDir, name)}
}

func (f fakeNamespaces) Exists(name string) bool {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.namespaces[name]
	return ok
}

// Remove kills what is still inside (an egressd or a container process
// of the namespace: the teardown should have ended them first), then
// drops the namespace, its rules and the veth pairs with an end in it (the
// kernel removes them in its cleanup of the namespace).
func (f fakeNamespaces) Remove(ns NetNS) error {
	k := f.k
	k.mu.Lock()
	if err := k.do("netns.remove " + ns.Name); err != nil {
		k.mu.Unlock()
		return err
	}
	var inside []*FakeProcess
	for _, p := range k.containers {
		if p.Netns == ns.Path {
			inside = append(inside, p)
		}
	}
	var eg []*FakeEgressd
	for _, e := range k.egressd {
		if e.NsPath == ns.Path && !e.stopped() {
			eg = append(eg, e)
		}
	}
	delete(k.namespaces, ns.Name)
	pinned := k.Pinned != nil && k.Pinned(ns.Path)
	for name, l := range k.links {
		if l.NsPath == ns.Path && !pinned {
			delete(k.links, name) // a veth pair goes with either end's namespace
		}
	}
	delete(k.strays, ns.Path)
	delete(k.sockets, ns.Path)
	k.mu.Unlock()
	for _, p := range inside {
		p.kill()
	}
	for _, e := range eg {
		e.exit(errors.New("signal: killed"))
	}
	k.Netfilter.Remove(ns.Path)
	return nil
}

// Pids lists the running egressd and container processes of the
// namespace (a container's process is 1 000 000 plus its index in the
// runtime's list), and its strays.
func (f fakeNamespaces) Pids(ns NetNS) []int {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []int
	for _, e := range k.egressd {
		if e.NsPath == ns.Path && !e.stopped() {
			out = append(out, e.pid)
		}
	}
	for _, p := range k.containers {
		select {
		case <-p.done:
		default:
			if p.Netns == ns.Path {
				out = append(out, p.pid)
			}
		}
	}
	out = append(out, k.strays[ns.Path]...)
	slices.Sort(out)
	return out
}

func (f fakeNamespaces) Sockets(ns NetNS) ([]string, error) {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("netns.sockets " + ns.Name); err != nil {
		return nil, err
	}
	return slices.Clone(k.sockets[ns.Path]), nil
}

// fakeLinks are FakeKernel's Links.
type fakeLinks struct{ k *FakeKernel }

func (f fakeLinks) Taken(string) ([]netip.Prefix, error) {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("links.taken"); err != nil {
		return nil, err
	}
	out := slices.Clone(k.Taken)
	for _, l := range k.links {
		out = append(out, l.HostAddr.Masked())
	}
	return out, nil
}

func (f fakeLinks) AddVeth(_, hostIf string, hostAddr netip.Prefix, nsPath string) error {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("links.add-veth " + hostIf); err != nil {
		return err
	}
	if _, ok := k.links[hostIf]; ok {
		return fmt.Errorf("uplink: a link named %s already exists", hostIf)
	}
	if !k.namespaceAt(nsPath) {
		return fmt.Errorf("uplink: %s: no such namespace", nsPath)
	}
	k.links[hostIf] = &FakeLink{Name: hostIf, HostAddr: hostAddr, NsPath: nsPath}
	return nil
}

func (k *FakeKernel) namespaceAt(path string) bool {
	for _, ns := range k.namespaces {
		if ns.Path == path {
			return true
		}
	}
	return false
}

func (f fakeLinks) Raise(_, hostIf, nsPath string, nsAddr netip.Prefix, gateway netip.Addr) error {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("links.raise " + hostIf); err != nil {
		return err
	}
	l, ok := k.links[hostIf]
	if !ok || l.NsPath != nsPath {
		return fmt.Errorf("uplink: finding %s: link not found", hostIf)
	}
	l.NsAddr, l.Gateway, l.Up, l.Forwarded = nsAddr, gateway, true, true
	return nil
}

func (f fakeLinks) Down(_, hostIf string) error {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("links.down " + hostIf); err != nil {
		return err
	}
	if l, ok := k.links[hostIf]; ok {
		l.Up = false
	}
	return nil
}

func (f fakeLinks) Delete(_, hostIf string) error {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("links.delete " + hostIf); err != nil {
		return err
	}
	delete(k.links, hostIf)
	return nil
}

func (f fakeLinks) Gone(_, hostIf string, _ time.Duration) (bool, error) {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("links.gone " + hostIf); err != nil {
		return false, err
	}
	_, ok := k.links[hostIf]
	return !ok, nil
}

// fakeFS is FakeKernel's HostFS: mounts are records (a target must exist,
// as for a real mount); nothing is mounted on the host.
type fakeFS struct{ k *FakeKernel }

func (f fakeFS) Mount(source, target, fstype string, _ uintptr, _ string) error {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("fs.mount " + fstype + " " + target); err != nil {
		return err
	}
	if _, err := os.Lstat(target); err != nil {
		return err
	}
	m := fakeMount{source: source, fstype: fstype}
	if fstype == "tmpfs" || fstype == "overlay" {
		m.hid = map[string]bool{}
		ents, _ := os.ReadDir(target)
		for _, e := range ents {
			m.hid[e.Name()] = true
		}
	}
	k.mounts[target] = m
	return nil
}

func (f fakeFS) Unmount(target string, _ int) error {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.mounts[target]; !ok {
		if _, err := os.Lstat(target); err != nil {
			return unix.ENOENT
		}
		return unix.EINVAL
	}
	if err := k.do("fs.unmount " + target); err != nil {
		return err
	}
	m := k.mounts[target]
	delete(k.mounts, target)
	if m.hid != nil {
		// What was written into the file system goes with it.
		ents, _ := os.ReadDir(target)
		for _, e := range ents {
			if !m.hid[e.Name()] {
				if err := os.RemoveAll(filepath.Join(target, e.Name())); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (f fakeFS) Lchown(path string, uid, gid int) error {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do(fmt.Sprintf("fs.lchown %d:%d %s", uid, gid, path)); err != nil {
		return err
	}
	if _, err := os.Lstat(path); err != nil {
		return err
	}
	k.owners[path] = [2]int{uid, gid}
	return nil
}

// FakeProcess is a container's process 1 in a FakeKernel.
type FakeProcess struct {
	// ID is the container's id, Bundle its bundle, Spec the spec read from
	// it (config.json) at start, Netns the namespace it joined.
	ID, Bundle string
	Spec       *specs.Spec
	Netns      string
	// Request is what a waiting init read (Streams.Request); its command,
	// environment and working directory are then in Spec too.
	Request *pid1.Request

	k        *FakeKernel
	pid      int
	terminal bool
	start    chan struct{} // closed by Start
	stdio    Stdio         // Start's
	endOnce  sync.Once     // Start or Destroy
	signals  chan syscall.Signal
	killed   chan struct{}
	killOnce sync.Once
	done     chan struct{}
	code     int
}

// waitRequest is a waiting init's start (pid1 waiting mode): it reads one
// request from req, closes it, and puts the request's command,
// environment and working directory in Spec as the runtime would have
// them without waiting. false: killed first, or a bad request (exit 125,
// a message on stderr).
func (p *FakeProcess) waitRequest(req *os.File, stdio Stdio) bool {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-p.killed:
			req.Close() // ends a Read in progress
		case <-stop:
		}
	}()
	r, err := pid1.ReadRequest(req)
	req.Close()
	select {
	case <-p.killed:
		p.code = 128 + int(syscall.SIGKILL)
		return false
	default:
	}
	if err != nil {
		p.code = pid1.ExitInitFailed
		if stdio.Stderr != nil {
			fmt.Fprintf(stdio.Stderr, "launcher: init: the execution request: %v\n", err)
		}
		return false
	}
	p.k.mu.Lock()
	proc := *p.Spec.Process
	proc.Args, proc.Env, proc.Cwd = pid1.Args(r.Args, nil), r.Env, r.Cwd
	p.Spec.Process = &proc
	p.Request = &r
	p.k.mu.Unlock()
	return true
}

// Started is closed when the container is started: the command (Command)
// runs from then on, never before.
func (p *FakeProcess) Started() <-chan struct{} { return p.start }

// Start starts the created container: the command runs (FakeKernel's
// Command). On error the container is destroyed.
func (p *FakeProcess) Start(ctx context.Context, stdio Stdio) error {
	first := false
	p.endOnce.Do(func() { first = true })
	if !first {
		return fmt.Errorf("container %s: started or destroyed already", p.ID)
	}
	k := p.k
	k.mu.Lock()
	err := k.do("runtime.start " + p.ID)
	k.mu.Unlock()
	if err == nil && (stdio.Terminal != nil) != p.terminal {
		err = errors.New("a terminal needs one at create and at start")
	}
	if err != nil {
		_ = p.destroy(ctx)
		return fmt.Errorf("runc start %s: %w", p.ID, err)
	}
	p.stdio = stdio
	close(p.start)
	return nil
}

// Destroy kills and deletes a container never started.
func (p *FakeProcess) Destroy(ctx context.Context) error {
	first := false
	p.endOnce.Do(func() { first = true })
	if !first {
		return nil
	}
	return p.destroy(ctx)
}

func (p *FakeProcess) destroy(ctx context.Context) error {
	return fakeContainers{p.k}.Delete(ctx, nil, p.ID)
}

// Signals delivers the signals sent to the process.
func (p *FakeProcess) Signals() <-chan syscall.Signal { return p.signals }

// Killed is closed when the process is killed (SIGKILL, the runtime's
// delete, its namespace removed).
func (p *FakeProcess) Killed() <-chan struct{} { return p.killed }

func (p *FakeProcess) kill() { p.killOnce.Do(func() { close(p.killed) }) }

// Wait waits for the process to end; when ctx ends first it is killed.
func (p *FakeProcess) Wait(ctx context.Context) (Exit, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		p.kill()
		<-p.done
		return Exit{Code: p.code}, fmt.Errorf("container %s: %w", p.ID, ctx.Err())
	}
	return Exit{Code: p.code}, nil
}

// Signal sends sig; SIGKILL kills.
func (p *FakeProcess) Signal(sig syscall.Signal) error {
	if sig == syscall.SIGKILL {
		p.kill()
		return nil
	}
	select {
	case p.signals <- sig:
	case <-p.done:
	}
	return nil
}

// fakeContainers are FakeKernel's Containers.
type fakeContainers struct{ k *FakeKernel }

// Create checks nothing of binds: the fake mounts nothing. The process
// runs the command (Command) once started, never before.
func (f fakeContainers) Create(ctx context.Context, rt *Runtime, id, bundle string, streams Streams, binds []BindMount) (Created, error) {
	k := f.k
	k.mu.Lock()
	err := k.do("runtime.create " + id)
	_, exists := k.containers[id]
	pid := 1000000 + len(k.ops)
	k.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%s create %s: %w", rt.Name, id, err)
	}
	if exists {
		return nil, fmt.Errorf("%s create %s: container with given ID already exists", rt.Name, id)
	}
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("%s create %s: %w", rt.Name, id, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("%s create %s: %w", rt.Name, id, err)
	}
	p := &FakeProcess{ID: id, Bundle: bundle, Spec: &spec, k: k, pid: pid, terminal: streams.Terminal, start: make(chan struct{}),
		signals: make(chan syscall.Signal, 16), killed: make(chan struct{}), done: make(chan struct{})}
	for _, n := range spec.Linux.Namespaces {
		if n.Type == specs.NetworkNamespace {
			p.Netns = n.Path
		}
	}
	var req *os.File
	if streams.Request != nil {
		// The container's own copy of the request pipe (the caller closes
		// its copy once Create returns), as the runtime passes it.
		// Not Fd(), which would make the pipe blocking and its Read
		// deaf to Close.
		rc, err := streams.Request.SyscallConn()
		fd, dupErr := -1, error(nil)
		if err == nil {
			err = rc.Control(func(f uintptr) { fd, dupErr = unix.Dup(int(f)) })
		}
		err = errors.Join(err, dupErr)
		if err != nil {
			return nil, fmt.Errorf("%s create %s: %w", rt.Name, id, err)
		}
		req = os.NewFile(uintptr(fd), "request")
	}
	k.mu.Lock()
	k.containers[id] = p
	cmd := k.Command
	k.mu.Unlock()
	go func() {
		defer close(p.done)
		select {
		case <-p.start:
		case <-p.killed:
			p.code = 128 + int(syscall.SIGKILL)
			if req != nil {
				req.Close()
			}
			return
		}
		if req != nil && !p.waitRequest(req, p.stdio) {
			return
		}
		if cmd == nil {
			return
		}
		p.code = cmd(p, p.stdio)
		select {
		case <-p.killed:
			p.code = 128 + int(syscall.SIGKILL)
		default:
		}
	}()
	return p, nil
}

func (f fakeContainers) Delete(_ context.Context, rt *Runtime, id string) error {
	k := f.k
	k.mu.Lock()
	if err := k.do("runtime.delete " + id); err != nil {
		k.mu.Unlock()
		return err
	}
	p := k.containers[id]
	delete(k.containers, id)
	k.mu.Unlock()
	if p != nil {
		p.kill()
		<-p.done
	}
	return nil
}

// FakeEgressd is an egressd a FakeKernel started.
type FakeEgressd struct {
	// NsPath is the namespace it runs in; Plan how it was started.
	NsPath string
	Plan   *EgressdPlan

	pid      int
	audit    *io.PipeWriter
	auditEnd chan struct{}
	done     chan struct{}
	err      error
	mu       sync.Mutex
	once     sync.Once
	isDone   bool
	stop     bool
	// The admin endpoint's state (Admin).
	source     string
	generation uint64
	held       int
	adminFail  map[string]int
}

func (e *FakeEgressd) Pid() int              { return e.pid }
func (e *FakeEgressd) Done() <-chan struct{} { return e.done }
func (e *FakeEgressd) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// Audit writes audit lines on its stdout, as egressd does.
func (e *FakeEgressd) Audit(lines ...string) {
	for _, l := range lines {
		_, _ = io.WriteString(e.audit, strings.TrimSuffix(l, "\n")+"\n")
	}
}

// AppendAudit implements EgressdProcess.
func (e *FakeEgressd) AppendAudit(line []byte) error {
	_, err := e.audit.Write(line)
	return err
}

// Exit ends it as a crash would, with err.
func (e *FakeEgressd) Exit(err error) { e.exit(err) }

func (e *FakeEgressd) exit(err error) {
	e.once.Do(func() {
		e.mu.Lock()
		e.err, e.isDone = err, true
		e.mu.Unlock()
		_ = e.audit.Close()
		close(e.done)
	})
}

func (e *FakeEgressd) stopped() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.isDone
}

// Stop ends it and waits for its audit stream to be read.
func (e *FakeEgressd) Stop() error {
	e.mu.Lock()
	e.stop = true
	e.mu.Unlock()
	e.exit(nil)
	<-e.auditEnd
	return nil
}

// Hold makes it hold n connections that no reset closes (a stuck
// handler): POST /reset then answers 500 and GET /state is not empty.
func (e *FakeEgressd) Hold(n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.held = n
}

// FailAdmin makes every request "METHOD /path" to its admin endpoint
// answer code from now on.
func (e *FakeEgressd) FailAdmin(request string, code int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.adminFail == nil {
		e.adminFail = map[string]int{}
	}
	e.adminFail[request] = code
}

// Admin answers as egressd's admin endpoint does: POST /reload reads
// policy.json from its directory (JSON, or 422) and puts it in force,
// POST /reset puts deny-everything in force (500 while something is
// held), GET /state says which and whether it holds anything. The
// answers of reset and state are the state (docs/design.md, "Admin
// endpoint").
func (e *FakeEgressd) Admin(ctx context.Context, method, path string) (int, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.isDone {
		return 0, nil, errors.New("egressd's admin endpoint: connection refused")
	}
	path, query, _ := strings.Cut(path, "?")
	if code, ok := e.adminFail[method+" "+path]; ok {
		return code, []byte(`{"error":"injected"}`), nil
	}
	code := http.StatusOK
	switch method + " " + path {
	case "POST /reload":
		data, err := os.ReadFile(filepath.Join(e.Plan.Dir, policyFile))
		if err != nil || !json.Valid(data) {
			return http.StatusUnprocessableEntity, []byte(`{"error":"policy.json:1:1: not a policy"}`), nil
		}
		e.source = "policy"
		e.generation++
		if query != "state=1" {
			return code, []byte("reloaded\n"), nil
		}
	case "POST /reset":
		e.source = "reset"
		e.generation++
		if e.held > 0 {
			code = http.StatusInternalServerError
		}
	case "GET /state":
	default:
		return http.StatusNotFound, []byte("404 page not found\n"), nil
	}
	body, _ := json.Marshal(map[string]any{"policy": map[string]any{"source": e.source, "generation": e.generation},
		"proxy": map[string]any{"tunnels": e.held}, "empty": e.held == 0})
	return code, body, nil
}

// fakeEgressdStarter is FakeKernel's EgressdStarter.
type fakeEgressdStarter struct{ k *FakeKernel }

func (f fakeEgressdStarter) Start(_ context.Context, nsPath string, p *EgressdPlan, audit func(io.Reader)) (EgressdProcess, error) {
	k := f.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("egressd.start " + nsPath); err != nil {
		return nil, fmt.Errorf("starting egressd: %w", err)
	}
	if !k.namespaceAt(nsPath) {
		return nil, fmt.Errorf("starting egressd: %s: no such namespace", nsPath)
	}
	if _, ok := k.mounts[filepath.Join(p.Dir, binaryName)]; !ok {
		return nil, fmt.Errorf("starting egressd: its binary is not bound at %s", filepath.Join(p.Dir, binaryName))
	}
	pr, pw := io.Pipe()
	e := &FakeEgressd{NsPath: nsPath, Plan: p, pid: 70000 + len(k.egressd), audit: pw, auditEnd: make(chan struct{}), done: make(chan struct{}),
		source: "policy", generation: 1}
	go func() {
		defer close(e.auditEnd)
		audit(pr)
		_ = pr.Close()
	}()
	k.egressd = append(k.egressd, e)
	return e, nil
}
