// Package dnsfilter is the sandbox's DNS resolver: it answers, forwards or
// refuses each query by the policy, filters the answers it forwards through
// the address guard, caches them, and keeps the table of DNS-learned
// addresses the transparent proxy consults for name-less TCP.
//
//	client query (UDP/TCP, redirected port 53)
//	   │
//	   ▼
//	rate limit per client IP ── over ──► REFUSED
//	one question, opcode QUERY, EDNS v0 ── else ──► FORMERR / NOTIMP / BADVERS
//	class IN; not ANY/AXFR/IXFR/meta ── else ──► REFUSED
//	name ≤ MaxNameLen ── else ──► REFUSED
//	Matcher.DecideNameAnyPort(name) ── deny ──► NXDOMAIN (or REFUSED: the matcher's dns_block_response), never forwarded
//	qtype in A AAAA CNAME MX SRV TXT ── else ──► NOERROR, no data (HTTPS/SVCB never forwarded)
//	   │ allowed
//	   ▼
//	upstreams of the same matcher (changed: cache emptied, new sockets)
//	   │
//	cache (name,qtype) ── miss ──► one fresh upstream query: new ID, one question,
//	   │                           class IN, lower-cased name, our EDNS size;
//	   │                           UDP over reused sockets, TCP on TC; SO_MARK
//	   ▼
//	filter with the CURRENT matcher (memoised per matcher):
//	   CNAME target blocked/invalid ──► whole answer denied (NXDOMAIN/REFUSED)
//	   A/AAAA through GuardAddr(addr, 0): guarded ones stripped; all stripped ──► NOERROR, no data
//	   │
//	   ├──► learned-address table: address → allowed names of the chain, until TTL
//	   ▼
//	reply: the client's question as asked, records for the canonical name,
//	TTLs counted down, truncated (TC=1) to the client's UDP buffer
//
// Every client query yields one audit record (those refused at --dns-rate:
// at most one per client per second), with its outcome and reason
// (audit.Reasons): an upstream that fails is an error (resolver-timeout,
// resolver-error; the client gets a bare SERVFAIL naming nobody), an
// allowed name asked for a type never forwarded is
// allow/qtype-not-forwarded. In report mode a name no rule allows is
// forwarded, answered and learned like an allowed one, audited
// would-deny/no-allow-rule (unless the guard or a CNAME refuses it then).
// Resolve is the same path for the proxy's own
// lookups; LearnedNames is what the proxy reads through its own one-method
// interface. dnsfilter never imports proxy.
//
// # Pooled reuse
//
// Between two tenants of a sandbox the resolver forgets the last one
// (Reset, reset.go) and proves it (State). What it holds of a tenant:
//
//	state                        where                 cleared by Reset
//	answer cache                 Server.cache          emptied; a lookup begun before never stores (gen)
//	learned-address table        Server.learned        emptied; a lookup begun before never learns (gen floor)
//	per-client rate buckets      Server.limiter        emptied (and with them the audit de-dup time)
//	upstream lookups in flight   Server.flight         cancelled (their context ends)
//	client TCP connections       resetState.conns      closed
//	replies being decided        resetState.gate       decided again under the policy now in force
//	packed replies               ttlSnap.packed        gone with the cached answers they hang on
//	audit records                Config.Audit          logged under the gate before Reset returns; the owner flushes
//
// A reply is written only under the gate, and only if no Reset began
// since its decision started; otherwise the query is decided again, under
// the policy in force (at most maxDecisions times, then SERVFAIL). So no
// answer decided under the last tenant's policy, or served from its cache,
// reaches a client once Reset has returned.
package dnsfilter
