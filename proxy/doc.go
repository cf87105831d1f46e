// Package proxy is egressd's TCP/HTTP enforcement point: the explicit proxy
// (CONNECT and absolute-form plain HTTP, for clients with HTTP_PROXY set)
// and the transparent listener (every other TCP connection of the sandbox,
// redirected by the firewall). Both ask the same policy.Matcher as the DNS
// side and dial only addresses they vetted.
//
//	explicit listener ──► head parser ─┬─ CONNECT host:port ─► decide ─► dial ─► 200 ─► peek: ClientHello SNI == host? ─► splice
//	                                   └─ GET http://h/ ────► decide (Host == h) ─► transport (pool keyed by vetted origin)
//	transparent listener ─► SO_ORIGINAL_DST ─► classify first bytes
//	                                   ├─ TLS  ─► decide SNI @ orig port ─► dial SNI's vetted addrs ─► splice
//	                                   ├─ HTTP/1 ─► per request: decide Host ─► transport
//	                                   ├─ TLS, no SNI ─► IP rule only ─► dial orig ─► splice
//	                                   ├─ h2c, other ─► raw admitted? (port rule or IP rule) ─► dial orig ─► splice
//	                                   └─ unclassified at the deadline ─► refused
//	CONNECT tunnel (after 200) ─► classify first bytes: the same table, with the CONNECT target as the name
//	  TLS to an inspected name (either listener) ─► terminate ─► per request: Host, methods/paths, credentials ─► upstream TLS
//	dialer: name ─► Resolver ─► GuardAddr + self check per address ─► connect to that netip.AddrPort (SO_MARK set)
//
// # How each stream is decided: decide or refuse
//
// A stream is relayed only on a name it carries and egressd decides, or
// where the policy admits raw TCP to its destination explicitly. The first
// bytes say which kind it is (classify in peek.go):
//
//	stream (first bytes)          decided on                              otherwise
//	TLS (a handshake record)      the ClientHello's one server_name, at   no SNI: only an address an allow IP
//	                              the port; transparent: dialled at the   rule names (IP CONNECT target); ECH,
//	                              name's own vetted addresses; CONNECT:   malformed, truncated, SNI ≠ CONNECT
//	                              must equal the CONNECT host             host: refused
//	HTTP/1 (token method in any   each request's Host (transparent: at    refused: 400 unparseable (bare LF,
//	case, SP, ..., "HTTP/x.y")    the original port; CONNECT tunnel:      odd spacing), 403 Host not allowed
//	                              must name the CONNECT target; explicit: or ≠ target, 505 a version other
//	                              absolute URI == Host); forwarded as     than HTTP/1.x ("HTTP/2.0", the h2c
//	                              HTTP/1.1, Upgrade removed               preface after an Upgrade)
//	h2c ("PRI * HTTP/2.0")        not decided: no per-stream :authority   raw admitted: relayed; else refused
//	                              check                                   (unidentified-stream)
//	other (SSH, SMTP, binary)     nothing: it names no host               raw admitted: relayed; else refused
//	                                                                      (unidentified-stream, no-allow-rule)
//	unclassified when due         nothing                                 refused (timeout), never relayed
//
// Raw TCP is admitted explicitly, never by default_ports: on the
// transparent listener when the original address was learned from an
// allowed DNS answer for a name that a rule naming the port allows
// (policy.Matcher.DecideNameRaw: `ssh.example.com:22`, `:8000-8100`, `:*`)
// and passes the guard, or when an allow IP rule names the address; in a
// CONNECT tunnel when the target is an IP literal (an allow IP rule admitted
// it) or a name a rule naming the port allows. A portless rule admits its
// name for TLS and HTTP only, which carry the name: a shared front end
// serves other sites at the same address, so bytes that name no host could
// be for any of them.
//
// "When due": HeaderTimeout after the connection was accepted, or, for a
// connection let through silent (server-first), after its first byte. Bytes
// that could still become a request line (token bytes and spaces, no line
// end yet) are waited for until then; a line holding a control byte (git's
// pkt-line), a token not followed by a space ("SSH-2.0-x"), or a line
// without "HTTP/" ("EHLO x") is known at once. So a client whose whole
// first message is such a prefix and that then waits for the server is
// refused.
//
// h2c with prior knowledge is refused rather than decided stream by
// stream: that would mean terminating HTTP/2 (HPACK, CONTINUATION,
// multiplexed streams, flow control) in the enforcement point and
// re-originating every stream, for a mode clients hardly use towards the
// internet (curl --http2-prior-knowledge, plaintext gRPC). Clients of plain
// http:// URLs speak HTTP/1.1, and h2 over TLS is decided on its SNI. Where
// raw TCP is admitted (plaintext gRPC to `grpc.internal:50051`), h2c is
// relayed like any other bytes.
//
// Plain HTTP inside an allowed CONNECT tunnel is decided per request rather
// than refused: clients such as Node's fetch through undici's ProxyAgent
// tunnel http:// URLs with CONNECT, and the per-request path is the one
// absolute-form and transparent HTTP already take. Each request must be
// origin-form and its Host must name the CONNECT target (else 403
// host-mismatch); a CONNECT inside the tunnel is refused (405).
//
// # Decisions worth knowing
//
//   - The host:port decision of a CONNECT is made before the first bytes
//     are seen (THREATS A5). A tunnel that starts with a TLS handshake
//     record must carry a complete, well-formed ClientHello whose single
//     server_name equals the CONNECT host; no SNI is accepted only when the
//     CONNECT target is an IP literal an allow IP rule admits (then a SNI,
//     if any, must not be blocked). ECH hellos are refused (E2). Inner Host
//     / HTTP/2 :authority inside spliced TLS is not seen: the residual
//     risk is the set of names served by the same front end (A2, A8),
//     unless the name is inspected (below).
//   - The proxy answers 200 to a CONNECT only after the upstream dial
//     succeeded, so dial failures are a readable 502/504. Bytes the client
//     sent before the 200 are judged with the rest of its first bytes and
//     never forwarded before.
//   - On the transparent listener, TLS without SNI is allowed only to an
//     address an allow IP rule names, as on the explicit path (THREATS E1).
//     A learned address is not enough: a shared front end serves other
//     names on that address.
//     HTTP after empty lines or with bare-LF line ends, and HTTP that
//     arrives after the server-first wait, still takes the per-request
//     HTTP path.
//   - On the transparent listener, a name no rule allows (SNI or Host) to
//     an original address an allow IP rule names is allowed to that address
//     (the IP rule allows the address whatever it serves); a blocked name
//     is refused regardless.
//   - A transparent connection that sends nothing for 300 ms is let
//     through if raw TCP to its address is admitted (server-first
//     protocols); its first bytes are still judged when they come, so
//     waiting does not skip the name check. A TLS record is recognised by
//     its first byte, so the SNI check cannot be skipped by pausing.
//   - Upgrade, HTTP2-Settings and the headers Connection names are removed
//     from every forwarded request, and an upstream 101 is answered 502, so
//     no decided request turns into an opaque stream (h2c, WebSocket:
//     THREATS A9); a "PRI * HTTP/2.0" sent after an Upgrade attempt is
//     refused (505) like any non-HTTP/1 request line.
//   - net/http's server is not used for the explicit listener, nor
//     goproxy on top of it: net/http deletes the Host header of an
//     absolute-form request and silently resolves Content-Length plus
//     Transfer-Encoding, the two things A6 and A9 need to see. Heads are
//     parsed here (head.go) and bodies framed with net/http's chunked
//     reader; upstream requests go through an http.Transport whose only
//     dialer is the vetted one.
//   - HTTPS inspection (inspect.go, docs/inspection.md): for a name a
//     [[network.inspect]] entry matches, an allowed TLS stream is
//     terminated with a certificate from the inspection CA instead of being
//     spliced, and each request inside is decided: Host/:authority must be
//     the TLS name, the entry's methods and paths rules apply on the
//     canonical path, credentials are set and their secrets masked in the
//     response. It is served with net/http and httputil.ReverseProxy, not
//     goproxy's MITM loop (measured: unbounded request heads, dropped
//     connections on upstream errors; see inspect.go). Plain HTTP to an
//     inspected host obeys the same rules; a credential's placeholder in
//     any request egressd sees is refused unless it goes to its own host.
//
// # Audit
//
// One record per decision, in the one vocabulary (audit.Outcome,
// audit.Reason; docs/audit.md). A denial is written when it happens. In
// report mode a request the matcher lets through only as a would-deny
// (policy.Decision.WouldDeny) is relayed and recorded like an allow, with
// decision "would-deny" and reason no-allow-rule; every other refusal
// stands. An
// allowed CONNECT tunnel, transparent connection or plain-HTTP request is
// written once, when it ends, with bytes up/down and duration. A check
// after the allow that refuses it (SNI mismatch, ECH, every address
// guarded, a blocked CNAME target) makes the record a deny with that
// reason; a resolver or dial failure before anything was relayed makes it
// an error (resolver-timeout, upstream-error, ...), naming the rule that
// allowed it. A connection that ends early after it was relayed (closed on
// policy reload, idle, the upstream broke off) keeps decision "allow" and
// says why in "error". A CONNECT tunnel that carries plain HTTP writes one
// http record per request and, when it ends, its connect record without
// bytes. What the client is told (status line, X-Egressd-Denied, body)
// never names the upstream resolvers; the record's "error" does.
//
// # Metrics
//
//	egressd_proxy_decisions_total{kind,result,reason}
//	egressd_proxy_open_tunnels
//	egressd_proxy_bytes_total{direction}
//	egressd_proxy_dial_duration_seconds{result}
//	egressd_proxy_limit_refusals_total{limit}
//	egressd_proxy_inspected_requests_total{host,result,reason}
//	egressd_proxy_inspect_handshake_failures_total{host}
//
// # Relay
//
// Tunnels are spliced: io.Copy between the two *net.TCPConn, bytes counted
// from its return values, idleness read from TCP_INFO by one watchdog, so
// no wrapper ever hides a *net.TCPConn (docs/design.md, "Performance
// notes").
//
// # Pooled reuse
//
// Between two tenants of a sandbox the proxy closes everything of the last
// one (Reset, reset.go) and proves it (State). What it holds of a tenant:
//
//	state                                   where                     cleared by Reset
//	client connections (CONNECT tunnels,    Proxy.conns               closed (reset), each one's upstream
//	  transparent, keep-alive HTTP,                                   too; an undecided one is refused
//	  inspected sessions)                                             (clientConn.decided sees closedBy)
//	pooled upstream HTTP connections        Proxy.transport           closed (idle ones at once, the rest
//	                                                                  with their requests)
//	inspected sessions' upstream pools      inspectSession.transport  closed with their session
//	per-destination slots                   Proxy.perDest             released by the closed handlers
//	splice pipes                            Proxy.pipes               returned empty by the relays; idle ones closed
//	503 answers to connections past         Proxy.refusing            end within a second; waited for
//	  max_tunnels
//
// The inspection CA's minted certificates belong to the inspection
// configuration in force (SetInspect), not to the proxy; the daemon puts a
// new one in force with every policy.
package proxy
