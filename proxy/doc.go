// Package proxy is egressd's TCP/HTTP enforcement point: the explicit proxy
// (CONNECT and absolute-form plain HTTP, for clients with HTTP_PROXY set)
// and the transparent listener (every other TCP connection of the sandbox,
// redirected by the firewall). Both ask the same policy.Matcher as the DNS
// side and dial only addresses they vetted.
//
//	explicit listener ──► head parser ─┬─ CONNECT host:port ─► decide ─► dial ─► 200 ─► peek: ClientHello SNI == host? ─► splice
//	                                   └─ GET http://h/ ────► decide (Host == h) ─► transport (pool keyed by vetted origin)
//	transparent listener ─► SO_ORIGINAL_DST ─► peek first bytes
//	                                   ├─ TLS  ─► decide SNI @ orig port ─► dial SNI's vetted addrs ─► splice
//	                                   ├─ HTTP ─► per request: decide Host ─► transport
//	                                   ├─ TLS, no SNI ─► IP rule only ─► dial orig ─► splice
//	                                   └─ other ─► learned address or IP rule ─► dial orig ─► splice
//	  TLS to an inspected name (either listener) ─► terminate ─► per request: Host, methods/paths, credentials ─► upstream TLS
//	dialer: name ─► Resolver ─► GuardAddr + self check per address ─► connect to that netip.AddrPort (SO_MARK set)
//
// # Decisions worth knowing
//
//   - Non-TLS bytes in an allowed CONNECT tunnel pass: the decision on
//     host:port is made before the sniff (THREATS A5). A tunnel that starts
//     with a TLS handshake record must carry a complete, well-formed
//     ClientHello whose single server_name equals the CONNECT host; no SNI
//     is accepted only when the CONNECT target is an IP literal an allow IP
//     rule admits (then a SNI, if any, must not be blocked). ECH hellos are
//     refused (E2). Inner Host / HTTP/2 :authority inside spliced TLS is not
//     seen: the residual risk is the set of names served by the same front
//     end (A2, A8), unless the name is inspected (below).
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
//     through if the raw-TCP rule allows its address (server-first
//     protocols); its first bytes are still judged when they come, so
//     waiting does not skip the name check. First bytes that could still
//     become an HTTP request line (an upper-case token so far) are waited
//     for up to HeaderTimeout; a request line must end in " HTTP/1.x" to
//     count as HTTP ("EHLO x" is not). A TLS record is recognised by its
//     first byte, so the SNI check cannot be skipped by pausing.
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
// One record per decision. A denial is written when it happens. An allowed
// CONNECT tunnel, transparent connection or plain-HTTP request is written
// once, when it ends, with bytes up/down and duration; if a check after the
// allow refuses it (SNI mismatch, ECH, guarded address), the record is the
// denial instead. An allowed connection that failed afterwards (resolver,
// dial, closed on policy reload) keeps decision "allow" and says why in
// "error".
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
package proxy
