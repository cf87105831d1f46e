// Package fakenet is the fake internet that egressd's end-to-end tests run against: a network
// namespace (the "world") that holds a handful of documentation-range addresses and real servers
// on them, and has no route anywhere else, plus sandbox namespaces wired into it.
//
//	 test process (caller's namespace: nothing of fakenet appears here)
//	   │ servers run in-process; their sockets were made inside the world
//	   ▼
//	┌─ world  egt-w-<pid>-<rand> ────────────────────────────────────────────┐
//	│ lo: 203.0.113.53  2001:db8::53   DNS 53/udp+tcp (table, log)           │
//	│     203.0.113.10  198.51.100.10  2001:db8::10  (+ AddHost)             │
//	│                 HTTP 80, HTTPS 443 (test CA, any SNI), echo 7/tcp+udp  │
//	│ no default route: anything else → "network unreachable" / ICMP error   │
//	│ (a router: forwarding on, so sandboxes also reach one another)         │
//	│ egt-s0 192.0.2.1/30 2001:db8:ffff::1/64                                │
//	└────┼───────────────────────────────────────────────────────────────────┘
//	     │ veth
//	┌─ sandbox  egt-s-<pid>-<rand> ──────────────────────┐
//	│ eth0 192.0.2.2/30 2001:db8:ffff::2/64              │
//	│ default via 192.0.2.1, ::/0 via 2001:db8:ffff::1   │
//	└────────────────────────────────────────────────────┘
//
// A test starts a world with Start (torn down by t.Cleanup, pass or fail), fills the DNS table
// with SetRecords, makes sandboxes with NewSandbox (or runs a launcher inside the world with
// World.Exec and lets it make its own), and then scores at the application layer: the DNS
// server counts each question per name (DNSQueries), the HTTP(S) servers answer with a JSON body
// naming the Host and SNI they saw (ParseReply, HTTPLog; plain HTTP serves HTTP/1.x and h2c with
// prior knowledge), and every listener counts what reached it (TCPAccepted, UDPReceived). A bare
// TCP connect proves nothing when a redirect to a proxy would accept it too; zero queries, zero
// requests, zero connections at the real server does.
//
// Commands run inside a namespace through `nsenter --net=PATH` (NetNS.Exec, NetNS.Run), and Go
// code through NetNS.Do and NetNS.DialContext. Everything needs root; without it Start skips.
package fakenet
