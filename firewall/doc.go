// Package firewall owns the iptables and ip6tables rules of one sandbox
// network namespace: Rules renders them, Install puts them in, Verify proves
// they are there exactly, Flush takes them out (and empties conntrack). It
// also owns the launcher's side of a sandbox's uplink: the NAT and FORWARD
// chains of one veth (Uplink; Firewall.InstallUplink, RemoveUplink).
//
// Everything reaches the kernel through one seam, Netfilter (listings,
// restore batches, conntrack, sysctls, in a namespace named by its path):
// System is the kernel's, NewFake an in-memory one that interprets the
// batches strictly, for this package's tests and other packages' (the
// launcher's lifecycle runs on it as non-root). The package-level functions
// act through System; New(nf) gives a Firewall acting through any other.
//
// The rules live in chains the project owns, so nothing else in the
// namespace is ever edited; one jump per chain, as rule 1 of its built-in
// chain, hooks them in. Filtered mode, for each family:
//
//	nat OUTPUT ─► EGRESSD-OUTPUT
//	    exempt (SO_MARK, or the fallback uid)  → RETURN
//	    udp/tcp dport 53, any address          → REDIRECT DNSPort
//	    local destination                      → RETURN
//	    tcp                                    → REDIRECT TransparentPort
//
//	filter OUTPUT ─► EGRESSD-OUTPUT
//	    exempt tcp, exempt udp to UpstreamDNSPorts → ACCEPT
//	    local, tcp to a ProtectedPort              → REJECT tcp-reset
//	    local, tcp to TransparentPort, not DNAT    → REJECT tcp-reset
//	    local destination (incl. redirected)       → ACCEPT
//	    ESTABLISHED (reply direction), RELATED     → ACCEPT
//	    (IPv6) neighbour discovery, MLD report     → ACCEPT
//	    tcp → REJECT tcp-reset; udp → REJECT port-unreachable;
//	    anything else (ICMP echo, SCTP, ...) → REJECT admin-prohibited
//
//	filter INPUT ─► EGRESSD-INPUT
//	    in lo, RELATED,ESTABLISHED, (IPv6) ND, InboundTCPPorts → ACCEPT
//	    anything else → DROP
//
// Mode none keeps only loopback (the filter chains, reduced) and has no nat
// chain. Egressd dead means the redirect hits a closed port: connections get
// a reset and DNS an ICMP error, nothing leaves (fail closed).
//
// Choices worth knowing:
//   - Exempt traffic is limited to TCP and UDP to the upstream resolvers:
//     egressd needs nothing else, and a bug in it (or a process that became
//     the fallback uid) then still cannot ping or send other UDP.
//   - Inbound connections are dropped unless listed: otherwise anyone who can
//     route to the namespace could connect in and read data back through the
//     ESTABLISHED rule.
//   - Install flushes conntrack after the rules are in: the ESTABLISHED rule
//     then only matches flows that were judged NEW by these rules (THREATS G7).
//   - ping_group_range "1 0" (set by Install, or found set where /proc/sys is
//     read-only, as in a container) stops ICMP ping sockets in the
//     namespace for both families; the REJECT of ICMP echo is the second wall.
//   - No IPv4-only fallback: without ip6tables, Install fails (THREATS F1).
//   - "Stays in the namespace" means a LOCAL destination address (addrtype),
//     not "-o lo": the filter hook still sees the uplink as output device
//     for a redirected packet, but its rewritten destination (127.0.0.1, ::1)
//     is local. The namespace's own uplink addresses are local too, so the
//     protected ports are closed there as well.
//   - IPv6 keeps neighbour solicitations/advertisements (hop limit 255, so
//     link-only) and MLDv2 reports; router advertisements are dropped, so the
//     uplink must be configured statically (as the launcher does).
//   - Flush leaves ping_group_range at "1 0": closed is the safe default.
//
// Operations on one namespace must not run concurrently (the caller owns the
// namespace's life cycle); different namespaces are independent.
//
// How System runs inside a namespace: each operation runs on a fresh OS
// thread that is locked, enters the namespace with setns and is never
// unlocked, so the runtime throws the thread away afterwards (the namespace
// "" is the calling thread's own: the uplink's chains go there). go-iptables
// and iptables-restore are exec'd from that thread and inherit its
// namespace; the conntrack flush and the sysctl write are done from it
// directly. IPv4 and IPv6 run in parallel; Install reads both families'
// built-in chains before it sends either batch. Rules are applied with one `iptables-restore
// --noflush` per family (each table a single commit), because every iptables
// exec costs milliseconds.
package firewall
