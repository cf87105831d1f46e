package audit

import (
	"slices"
	"strconv"
	"strings"
)

// The one vocabulary of egressd's decisions. Every record's "decision" is
// an Outcome and its "reason" a Reason; the metrics' "result" and
// "reason" labels, the proxy's X-Egressd-Denied header and the launcher's
// denial lines use the same words. docs/audit.md has one table of them,
// which a test (docs/vocab_test.go) holds equal to Reasons.

// Outcome is what became of a request: the record's "decision" field and
// the metrics' "result" label.
type Outcome string

const (
	// OutcomeAllow: egressd admitted the request (forwarded, relayed,
	// answered).
	OutcomeAllow Outcome = "allow"
	// OutcomeDeny: egressd refused it — the policy, a protocol check or a
	// limit. Nothing of it reached the destination.
	OutcomeDeny Outcome = "deny"
	// OutcomeError: the policy admitted it, but it could not be served —
	// the upstream resolver or the destination failed or did not answer,
	// or egressd lacks what the policy needs (an inspection CA, a
	// credential's secret). Not a denial.
	OutcomeError Outcome = "error"
	// OutcomeWouldDeny: report mode let the request through that its
	// reason (no-allow-rule, the one reason report mode relaxes) would
	// have refused in filtered mode. What happened next (forwarded,
	// failed) is as for an allow.
	OutcomeWouldDeny Outcome = "would-deny"
)

// Outcomes lists every outcome, in the order docs/audit.md has them.
var Outcomes = []Outcome{OutcomeAllow, OutcomeDeny, OutcomeError, OutcomeWouldDeny}

// Reason is why a request had its outcome: the record's "reason" field,
// the metrics' "reason" label, the X-Egressd-Denied header. The values are
// part of the audit format. The policy's five (policy.Reason) are spelt
// the same here.
type Reason string

// The policy's reasons, from every enforcement point.
const (
	ReasonAllowedBy      Reason = "allowed-by"
	ReasonBlockedBy      Reason = "blocked-by"
	ReasonNoAllowRule    Reason = "no-allow-rule"
	ReasonInvalidName    Reason = "invalid-name"
	ReasonGuardedAddress Reason = "guarded-address"
)

// The proxy's refusals besides the policy's (THREATS ids in brackets).
const (
	ReasonBadRequest     Reason = "bad-request"         // malformed or ambiguous request head (A9, B7-B9)
	ReasonNotProxy       Reason = "not-a-proxy-request" // origin-form request to the explicit listener (G3)
	ReasonHostMismatch   Reason = "host-mismatch"       // Host ≠ the URI's host, the original port, the tunnel's target or the TLS name (A2, A6)
	ReasonUnidentified   Reason = "unidentified-stream" // a stream naming no host where only a portless name rule admits the address (A5)
	ReasonSNIMismatch    Reason = "sni-mismatch"        // ClientHello SNI ≠ CONNECT host (A1)
	ReasonNoSNI          Reason = "no-sni"              // TLS without SNI where a name is required (E1)
	ReasonECH            Reason = "ech"                 // encrypted ClientHello (E2)
	ReasonBadHello       Reason = "bad-client-hello"    // malformed, truncated, duplicated SNI (E3)
	ReasonSelf           Reason = "self-connection"     // the destination is one of egressd's own listeners (C6)
	ReasonPlaceholder    Reason = "credential-placeholder"
	ReasonInspectChanged Reason = "inspection-changed" // a reload changed whether the name is inspected
)

// Refusals at a limit are named after the limit's flag (G5, D5).
const (
	ReasonMaxTunnels        Reason = "max-tunnels"          // --max-tunnels connections are open
	ReasonMaxTunnelsPerDest Reason = "max-tunnels-per-dest" // --max-tunnels-per-dest connections to this destination are open
	ReasonHeaderTimeout     Reason = "header-timeout"       // a head or first bytes not complete (or not classified) within --header-timeout
	ReasonDNSRate           Reason = "dns-rate"             // the client is over --dns-rate
	ReasonDNSMaxNameLen     Reason = "dns-max-name-len"     // the name is longer than --dns-max-name-len
)

// The resolver's refusals besides the policy's.
const (
	ReasonMalformed         Reason = "malformed"           // not one question, not opcode QUERY, bad EDNS
	ReasonQTypeRefused      Reason = "qtype-refused"       // ANY, zone transfers, meta types, a class other than IN
	ReasonQTypeNotForwarded Reason = "qtype-not-forwarded" // an allowed name, a type egressd never forwards: answered empty (allow)
)

// Failures after an allow (outcome error).
const (
	ReasonResolverTimeout Reason = "resolver-timeout"       // no upstream resolver answered in time
	ReasonResolverError   Reason = "resolver-error"         // the upstream resolvers failed (SERVFAIL, REFUSED, unreachable, a bad reply)
	ReasonNoAddresses     Reason = "no-addresses"           // an allowed name has no A or AAAA records
	ReasonUpstreamTimeout Reason = "upstream-timeout"       // connecting to or reading from the destination timed out
	ReasonUpstreamError   Reason = "upstream-error"         // connecting to the destination failed, or it broke the exchange
	ReasonUpstreamCert    Reason = "upstream-certificate"   // an inspected host's certificate does not verify
	ReasonCredentialUnset Reason = "credential-unavailable" // a credential's secret was not given to egressd
	ReasonInspectUnset    Reason = "inspection-unavailable" // a host is inspected but egressd has no CA
	ReasonShuttingDown    Reason = "shutting-down"          // egressd was shutting down (or resetting) when the request was decided
)

// ReasonInfo describes one reason: the outcome it always has, where it
// can occur, and what the client sees.
type ReasonInfo struct {
	Reason  Reason
	Outcome Outcome
	// Kinds are the record kinds it occurs in.
	Kinds []Kind
	// Status are the HTTP statuses a client of the proxy can get with it
	// (none: the connection is reset or the tunnel closed).
	Status []int
	// DNS is the answer a DNS client gets ("" where the reason is not
	// the resolver's).
	DNS string
}

var (
	allKinds   = []Kind{KindDNS, KindConnect, KindHTTP, KindTLS, KindTCP, KindHTTPS}
	proxyKinds = []Kind{KindConnect, KindHTTP, KindTLS, KindTCP}
	dialKinds  = []Kind{KindConnect, KindHTTP, KindTLS, KindTCP, KindHTTPS}
	nameKinds  = []Kind{KindConnect, KindHTTP, KindTLS, KindHTTPS}
)

const nxdomain = "NXDOMAIN (REFUSED with dns_block_response = \"refused\")"

// Reasons is every reason egressd writes, in the order of docs/audit.md's
// table.
var Reasons = []ReasonInfo{
	{ReasonAllowedBy, OutcomeAllow, allKinds, nil, "the upstream's answer, filtered"},
	{ReasonQTypeNotForwarded, OutcomeAllow, []Kind{KindDNS}, nil, "NOERROR, no records"},
	{ReasonBlockedBy, OutcomeDeny, allKinds, []int{403}, nxdomain},
	{ReasonNoAllowRule, OutcomeDeny, allKinds, []int{403}, nxdomain},
	{ReasonInvalidName, OutcomeDeny, []Kind{KindDNS, KindConnect, KindHTTP, KindTLS, KindHTTPS}, []int{400, 403}, nxdomain},
	{ReasonGuardedAddress, OutcomeDeny, []Kind{KindDNS, KindConnect, KindHTTP, KindTLS, KindTCP, KindHTTPS}, []int{403}, "NOERROR, no records"},
	{ReasonBadRequest, OutcomeDeny, []Kind{KindConnect, KindHTTP, KindTLS, KindTCP, KindHTTPS}, []int{400, 405, 431, 505}, ""},
	{ReasonNotProxy, OutcomeDeny, []Kind{KindHTTP}, []int{400}, ""},
	{ReasonHostMismatch, OutcomeDeny, []Kind{KindHTTP, KindHTTPS}, []int{400, 403, 421}, ""},
	{ReasonUnidentified, OutcomeDeny, []Kind{KindConnect, KindTCP}, nil, ""},
	{ReasonSNIMismatch, OutcomeDeny, []Kind{KindConnect}, nil, ""},
	{ReasonNoSNI, OutcomeDeny, []Kind{KindConnect, KindTLS, KindTCP}, nil, ""},
	{ReasonECH, OutcomeDeny, []Kind{KindConnect, KindTLS, KindTCP}, nil, ""},
	{ReasonBadHello, OutcomeDeny, []Kind{KindConnect, KindTLS, KindTCP}, nil, ""},
	{ReasonSelf, OutcomeDeny, proxyKinds, []int{403}, ""},
	{ReasonPlaceholder, OutcomeDeny, []Kind{KindHTTP, KindHTTPS}, []int{403}, ""},
	{ReasonInspectChanged, OutcomeDeny, []Kind{KindConnect, KindHTTP, KindTLS, KindHTTPS}, []int{503}, ""},
	{ReasonMaxTunnels, OutcomeDeny, []Kind{KindConnect, KindTCP}, []int{503}, ""},
	{ReasonMaxTunnelsPerDest, OutcomeDeny, proxyKinds, []int{503}, ""},
	{ReasonHeaderTimeout, OutcomeDeny, []Kind{KindConnect, KindHTTP, KindTLS, KindTCP}, []int{408}, ""},
	{ReasonDNSRate, OutcomeDeny, []Kind{KindDNS}, nil, "REFUSED"},
	{ReasonDNSMaxNameLen, OutcomeDeny, []Kind{KindDNS, KindConnect, KindHTTP, KindTLS, KindHTTPS}, []int{403}, "REFUSED"},
	{ReasonMalformed, OutcomeDeny, []Kind{KindDNS}, nil, "FORMERR, NOTIMP or BADVERS"},
	{ReasonQTypeRefused, OutcomeDeny, []Kind{KindDNS}, nil, "REFUSED"},
	{ReasonResolverTimeout, OutcomeError, []Kind{KindDNS, KindConnect, KindHTTP, KindTLS, KindHTTPS}, []int{504}, "SERVFAIL"},
	{ReasonResolverError, OutcomeError, []Kind{KindDNS, KindConnect, KindHTTP, KindTLS, KindHTTPS}, []int{502}, "SERVFAIL"},
	{ReasonNoAddresses, OutcomeError, nameKinds, []int{502}, ""},
	{ReasonUpstreamTimeout, OutcomeError, dialKinds, []int{504}, ""},
	{ReasonUpstreamError, OutcomeError, dialKinds, []int{502}, ""},
	{ReasonUpstreamCert, OutcomeError, []Kind{KindHTTPS}, []int{502}, ""},
	{ReasonCredentialUnset, OutcomeError, []Kind{KindHTTPS}, []int{503}, ""},
	{ReasonInspectUnset, OutcomeError, []Kind{KindConnect, KindTLS}, nil, ""},
	{ReasonShuttingDown, OutcomeError, []Kind{KindConnect, KindHTTP, KindTLS, KindTCP}, []int{503}, ""},
}

// outcomes maps each reason of Reasons to its outcome.
var outcomes = func() map[Reason]Outcome {
	m := make(map[Reason]Outcome, len(Reasons))
	for _, ri := range Reasons {
		m[ri.Reason] = ri.Outcome
	}
	return m
}()

// Info returns what Reasons says about r, and whether r is in it.
func (r Reason) Info() (ReasonInfo, bool) {
	i := slices.IndexFunc(Reasons, func(ri ReasonInfo) bool { return ri.Reason == r })
	if i < 0 {
		return ReasonInfo{}, false
	}
	return Reasons[i], true
}

// Outcome is the outcome a request with reason r has: allow for
// allowed-by and qtype-not-forwarded, error for a failure after an allow,
// deny for every refusal (and for a reason not in Reasons: fail closed).
func (r Reason) Outcome() Outcome {
	if o, ok := outcomes[r]; ok {
		return o
	}
	return OutcomeDeny
}

// OutcomeLetThrough is the outcome of a request let through with reason
// r: allow, or would-deny when report mode let it through only as a
// would-deny (policy.Decision.WouldDeny). The one exception to "a reason
// always has the same outcome": no-allow-rule is deny, or would-deny in
// report mode.
func (r Reason) OutcomeLetThrough(wouldDeny bool) Outcome {
	if wouldDeny {
		return OutcomeWouldDeny
	}
	return OutcomeAllow
}

// Escape returns s fit to print on one line wherever egressd or the
// launcher shows what a sandbox chose (a name, a path, a header): every
// byte outside printable ASCII escaped as \xNN (control bytes, DEL, and
// any non-ASCII byte, so no terminal escape, bidi override or line break
// gets through), cut at max bytes with "..." appended. max <= 0 means no
// cut.
func Escape(s string, max int) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			clean = false
			break
		}
	}
	if clean && (max <= 0 || len(s) <= max) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		n := 1
		if c < 0x20 || c > 0x7e {
			n = 4
		}
		if max > 0 && b.Len()+n > max {
			b.WriteString(Cut)
			break
		}
		if n == 4 {
			b.WriteString(`\x`)
			b.WriteString(strconv.FormatUint(uint64(c)>>4, 16))
			b.WriteString(strconv.FormatUint(uint64(c)&15, 16))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Cut marks where Escape cut a string.
const Cut = "..."

// Caps on what a sandbox chose, wherever it is printed or recorded.
const (
	// MaxTarget caps a target (name, IP literal, authority) and the lines
	// that carry one (the X-Egressd-Denied header, an audit "error").
	MaxTarget = 512
	// MaxPath caps a request path in an audit record.
	MaxPath = 256
)
