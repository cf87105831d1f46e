package sandbox

import (
	"context"
	"io"
	"net/netip"
	"syscall"
	"time"

	"github.com/egressd/egressd/firewall"
)

// Kernel is everything a sandbox's apply and teardown do to the machine,
// each part behind an interface of a few methods: the network namespaces,
// the uplink's links (netlink), the firewall and the uplink's NAT with
// conntrack (firewall.Netfilter), the OCI runtime, egressd's process, and
// the mounts and owners of the files the launcher makes for other ids.
// HostKernel is the machine's; NewFakeKernel an in-memory one, with which
// the whole life of a sandbox — create, a failure half-way, teardown on
// every way out, the reaping of what a crashed launcher left — runs as any
// user (the privileged tests prove the same paths on the real kernel).
type Kernel struct {
	Netns    Namespaces
	Links    Links
	Firewall *firewall.Firewall
	Runtime  Containers
	Egressd  EgressdStarter
	FS       HostFS
}

// HostKernel is the machine's kernel, as the launcher (root) drives it.
func HostKernel() *Kernel {
	return &Kernel{
		Netns:    hostNamespaces{},
		Links:    hostLinks{},
		Firewall: firewall.New(firewall.System()),
		Runtime:  hostContainers{},
		Egressd:  hostEgressd{},
		FS:       hostFS{},
	}
}

// NetNS is a named network namespace: bind-mounted at Path (NetnsDir/Name),
// identified by Dev and Ino (zero when nothing is there).
type NetNS struct {
	Name, Path string
	Dev, Ino   uint64
}

// Namespaces makes and removes the named network namespaces sandboxes live
// in.
type Namespaces interface {
	// Create makes the namespace name, bind-mounted at NetnsDir/name, with
	// its loopback up and nothing else.
	Create(name string) (NetNS, error)
	// Open returns the namespace of that name, for a sandbox a crashed
	// launcher left (zero Dev and Ino when there is none).
	Open(name string) NetNS
	// Exists reports whether anything is at NetnsDir/name.
	Exists(name string) bool
	// Remove kills every process still in ns, by pid, then unmounts and
	// removes its bind mount: the kernel frees the namespace, its links
	// (a veth pair with an end in it included, both ends) and its rules
	// with its last reference, in its own time. Idempotent.
	Remove(ns NetNS) error
	// Pids lists the processes whose network namespace is ns: a pooled
	// sandbox's reset proves that only its egressd is left (Pool).
	Pids(ns NetNS) []int
	// Sockets lists the TCP sockets of ns that are not listening, both
	// families, as "STATE LOCAL REMOTE" (/proc/net/tcp's hexadecimal
	// fields), and the UDP sockets holding unread datagrams: a pooled
	// sandbox's reset proves that no connection or query of the last
	// tenant is left, open, closing, or queued for egressd to take
	// (Pool). A namespace it cannot read is an error.
	Sockets(ns NetNS) ([]string, error)
}

// Links makes a filtered sandbox's uplink: a veth pair from the launcher's
// network namespace (launcherNS, a path; "" is the process's own) into the
// sandbox's.
type Links interface {
	// Taken lists the IPv4 prefixes of the launcher's namespace's
	// addresses and routes (default routes left out), so a /30 in use is
	// never picked.
	Taken(launcherNS string) ([]netip.Prefix, error)
	// AddVeth creates the pair: hostIf in the launcher's namespace with
	// address hostAddr (which claims the /30), its peer SandboxLink born in
	// the namespace at nsPath, IPv6 off on both ends. A link named hostIf
	// that exists already is an error, never taken over.
	AddVeth(launcherNS, hostIf string, hostAddr netip.Prefix, nsPath string) error
	// Raise gives the sandbox's end nsAddr, brings both ends up, routes the
	// sandbox's default via gateway, turns IPv4 forwarding on in the
	// launcher's namespace, and waits until both ends carry traffic.
	Raise(launcherNS, hostIf, nsPath string, nsAddr netip.Prefix, gateway netip.Addr) error
	// Down sets hostIf down, which stops its traffic at once; Delete
	// deletes it (both ends go; slow: the kernel waits for RCU grace
	// periods). A link that is gone is no error for either.
	Down(launcherNS, hostIf string) error
	Delete(launcherNS, hostIf string) error
	// Gone reports whether no link named hostIf is in the launcher's
	// namespace, waiting up to within for it to go (the kernel's cleanup
	// of a removed namespace takes its veth pair with it, in its own time;
	// a namespace something still references keeps it).
	Gone(launcherNS, hostIf string, within time.Duration) (bool, error)
}

// Containers runs containers with an OCI runtime.
type Containers interface {
	// Create creates the container id from bundle (Runtime.Create), with
	// its streams (a terminal or pipes, and a waiting init's request
	// pipe), and returns it created: its
	// process 1 waits, and nothing of the command runs before its Start.
	// Every bind mount of binds is of the object its source was when
	// Create began, or the container is destroyed and Create fails (the
	// host's: see BindMount).
	Create(ctx context.Context, rt *Runtime, id, bundle string, streams Streams, binds []BindMount) (Created, error)
	// Delete removes the container, killing what is left of it; one that
	// does not exist is no error.
	Delete(ctx context.Context, rt *Runtime, id string) error
}

// Created is a container Containers.Create made.
type Created interface {
	// Start starts the command (Container.Start) with its streams
	// connected to stdio; on error the container is destroyed and the
	// command never ran. Then Process's methods apply.
	Start(ctx context.Context, stdio Stdio) error
	// Destroy kills, reaps and deletes a container never started; after
	// Start it does nothing.
	Destroy(ctx context.Context) error
	Process
}

// Process is a started container's process 1.
type Process interface {
	// Wait waits for it to end (killing it when ctx ends first) and says
	// how it ended (Container.Wait).
	Wait(ctx context.Context) (Exit, error)
	// Signal sends it sig.
	Signal(sig syscall.Signal) error
}

// EgressdStarter starts a sandbox's egressd.
type EgressdStarter interface {
	// Start starts egressd as e says, inside the namespace at nsPath, and
	// returns once it serves (or failed: then the process it returns, if
	// any, still needs its Stop). Its audit stream (JSON lines) is handed
	// to audit, which reads it to its end.
	Start(ctx context.Context, nsPath string, e *EgressdPlan, audit func(io.Reader)) (EgressdProcess, error)
}

// EgressdProcess is a started egressd.
type EgressdProcess interface {
	Pid() int
	// Done is closed once it has exited, however; Err then says how.
	Done() <-chan struct{}
	Err() error
	// Stop ends it (SIGTERM, SIGKILL after a grace) and waits for it and
	// its audit stream. Idempotent.
	Stop() error
	// AppendAudit writes line at the end of its audit stream, after all
	// egressd wrote to it so far (a pooled sandbox's barrier: Pool).
	AppendAudit(line []byte) error
	// Admin sends one request to its admin endpoint (docs/design.md,
	// "Admin endpoint": POST /reload, POST /reset, GET /state) and
	// returns the status and body.
	Admin(ctx context.Context, method, path string) (int, []byte, error)
}

// HostFS is what of the host's file systems only root may change: mounts,
// and the owner of a file the launcher makes for another uid.
type HostFS interface {
	Mount(source, target, fstype string, flags uintptr, data string) error
	// Unmount fails with EINVAL where nothing is mounted.
	Unmount(target string, flags int) error
	// Lchown changes path's owner, not following a symbolic link.
	Lchown(path string, uid, gid int) error
}
