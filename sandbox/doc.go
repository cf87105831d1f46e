// Package sandbox is one launcher sandbox's life: planned, applied, run,
// torn down, and reaped when its launcher died.
//
//	Config ──NewPlan──► Plan ──Apply(Kernel)──► Sandbox ──Run──► Result
//	         (pure:       │      │                 │
//	          reads the   │      ├ state dir + lock└─Close: teardown, on every way out
//	          host)       │      ├ Netns.Create
//	                      │      ├ at once: Firewall (rules, conntrack)
//	 launcher explain ◄───┘      │          uplink: Links + Firewall.InstallUplink
//	 (Plan.Explain)              │          egressd: files, bind, Egressd.Start
//	                             │          container: rootfs (FS), files, bundle
//	                             └ at Run: bind sources opened (no links),
//	                               runc create, every mount checked, runc start
//
// NewPlan turns the resolved profile and the launch's inputs into one Plan:
// the sandbox id and state directory, the network namespace, the firewall
// config, the uplink and its NAT, egressd's command line, policy snapshot
// and inspection files, and the container (package specconv: the host
// view, the user, the protected paths, the environment, seccomp and the
// OCI spec). It reads the host and changes nothing. Apply executes exactly
// that plan, and `launcher explain` prints it (Plan.Explain): the two
// never derive the same thing twice.
//
// Everything Apply, Close and Reap do to the machine goes through a Kernel
// of small interfaces — Namespaces, Links, the firewall's Netfilter,
// Containers (the OCI runtime), EgressdStarter, HostFS (mounts, owners) —
// so the lifecycle runs as any user on NewFakeKernel, failures injected
// step by step, and the privileged tests prove the same paths on the host
// (HostKernel).
//
// A sandbox's id (IDPrefix and 8 hex digits) names everything it makes:
// its namespace (NetnsDir/ID), its veth, its container, its state directory
// (DefaultStateDir/ID), its uplink chains. The state directory's lock is
// held for the sandbox's whole life, so a directory whose lock is free
// belongs to a launcher that died, and Reap removes what it left.
package sandbox
