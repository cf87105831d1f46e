package main

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/sandbox"
)

// Caps of what the launcher prints about a run's denials.
const (
	// maxSummary is how many denials the summary after a run lists; the
	// rest are counted ("and N more").
	maxSummary = 20
	// maxShownTarget caps a target, path or rule the sandbox chose, in a
	// denial line (egressd escapes them; the launcher cuts them shorter).
	maxShownTarget = 200
)

// denialWords renders denials for people, in the launcher's own words.
type denialWords struct {
	// resolvers are egressd's upstream resolvers, named when they fail
	// (the sandbox is never told them).
	resolvers []netip.AddrPort
}

// line renders one denied (or failed) destination: what, why, and what
// would allow it, or why nothing should:
//
//	denied evil.test:443 (no-allow-rule); allow it with --allow evil.test:443
//	denied x.evil.test:443 (blocked-by *.evil.test from policy.toml:7); a block rule wins over every allow: --allow cannot override it
//	error pypi.org:443 (resolver-timeout): the upstream resolver 192.0.2.53 did not answer; ...
//	would deny new.test:443 (no-allow-rule); report mode let it through: ...
func (w denialWords) line(d sandbox.Denial) string {
	target := shown(d.Target)
	dest := hostPort(target, d.Port)
	what := dest
	switch d.Kind {
	case audit.KindHTTPS:
		what = shown(d.Method) + " " + dest + shown(d.Path)
	case audit.KindDNS:
		what = target
	}
	why := string(d.Reason)
	if d.Rule != "" {
		why += " " + shown(d.Rule)
		if d.RuleSource != "" {
			why += " from " + d.RuleSource
		}
	}
	if d.Kind == audit.KindDNS {
		why = "DNS lookup: " + why
	}
	if d.Count > 1 {
		why += fmt.Sprintf(", %d times", d.Count)
	}
	verb := "denied"
	switch d.Outcome {
	case audit.OutcomeError:
		verb = "error"
	case audit.OutcomeWouldDeny:
		verb = "would deny"
	}
	allowTarget := dest
	if d.Kind == audit.KindDNS {
		allowTarget = target
	}
	return verb + " " + what + " (" + why + ")" + w.hint(d, allowTarget)
}

// hint says what would allow d, or that nothing should: one for every
// deny and error reason of audit.Reasons (TestEveryReasonHasAHint).
func (w denialWords) hint(d sandbox.Denial, allowTarget string) string {
	if d.Outcome == audit.OutcomeWouldDeny {
		return "; report mode let it through: in filtered mode allow it with --allow " + allowTarget +
			", or learn every one with egressd policy suggest over --audit-log"
	}
	if d.Kind == audit.KindHTTPS {
		if h := inspectHint(d); h != "" {
			return h
		}
	}
	switch d.Reason {
	case audit.ReasonNoAllowRule:
		return "; allow it with --allow " + allowTarget
	case audit.ReasonBlockedBy:
		return "; a block rule wins over every allow: --allow cannot override it"
	case audit.ReasonInvalidName:
		return "; not a valid host name, so no rule can allow it"
	case audit.ReasonGuardedAddress:
		addr := guardedAddr(d)
		if addr == "" {
			return "; it resolves to an address the guard refuses (private, loopback, link-local, ...): only an allow rule naming that IP lifts the guard"
		}
		if d.Port == 0 || d.Kind == audit.KindDNS {
			return "; it resolves to " + addr + ", which the address guard refuses: only an allow rule naming that IP lifts it, e.g. --allow " + addr
		}
		return "; it resolves to " + addr + ", which the address guard refuses: only an allow rule naming that IP lifts it, e.g. --allow " + hostPort(addr, d.Port)
	case audit.ReasonUnidentified:
		name := shown(d.Target)
		if d.Name != "" {
			name = shown(d.Name)
		}
		return "; the stream names no host egressd can check (not TLS with a server name, not HTTP/1), and a rule without a port admits " +
			name + " for TLS and HTTP only: to relay raw TCP there, name the port, --allow " + hostPort(name, d.Port)
	case audit.ReasonNoSNI:
		if _, err := netip.ParseAddr(d.Target); err == nil {
			return "; TLS without a server name: only an allow rule naming the address admits it, e.g. --allow " + hostPort(d.Target, d.Port)
		}
		return "; TLS without a server name in a tunnel to a name: nothing allows it (the client must send the name)"
	case audit.ReasonECH:
		return "; an encrypted ClientHello hides the server name, so egressd refuses it: nothing allows it (turn ECH off in the client)"
	case audit.ReasonSNIMismatch:
		return "; the TLS server name is not the CONNECT target (domain fronting): nothing allows it"
	case audit.ReasonHostMismatch:
		return "; the Host header names another host than the request was sent to: nothing allows it"
	case audit.ReasonBadRequest, audit.ReasonBadHello, audit.ReasonMalformed:
		return "; malformed or ambiguous, so egressd never forwards it: nothing allows it"
	case audit.ReasonNotProxy:
		return "; a plain request sent to the proxy as to a web server: use an absolute http:// URL or CONNECT; nothing to allow"
	case audit.ReasonSelf:
		return "; one of egressd's own listeners: nothing allows it"
	case audit.ReasonPlaceholder:
		return "; a credential's placeholder is only replaced on requests to its own host, and never sent anywhere else"
	case audit.ReasonInspectChanged:
		return "; a policy reload changed whether the name is inspected: a retry is decided under the new policy"
	case audit.ReasonMaxTunnels, audit.ReasonMaxTunnelsPerDest:
		return "; egressd's cap on open connections (" + string(d.Reason) + ") was reached: the sandbox held too many at once; nothing to allow"
	case audit.ReasonHeaderTimeout:
		return "; its request or first bytes did not arrive in time, and what egressd cannot identify is never relayed: nothing to allow"
	case audit.ReasonDNSRate:
		return "; the sandbox sent DNS queries faster than egressd's limit per client: nothing to allow"
	case audit.ReasonDNSMaxNameLen:
		return "; the name is longer than egressd's limit for names: nothing to allow"
	case audit.ReasonQTypeRefused:
		return "; a query type egressd never answers (ANY, zone transfers, meta types): nothing to allow"
	}
	return w.failureHint(d)
}

// failureHint says what to do about a failure after an allow: the policy
// allowed it; something upstream did not work.
func (w denialWords) failureHint(d sandbox.Denial) string {
	switch d.Reason {
	case audit.ReasonResolverTimeout:
		return ": " + w.resolverWords() + " did not answer; the policy allowed it, nothing to change there: check that the host reaches the resolver, or name another with --upstream-dns"
	case audit.ReasonResolverError:
		return ": " + w.resolverWords() + " could not resolve it (answered SERVFAIL or REFUSED, or could not be reached); the policy allowed it, nothing to change there: check the resolver, or name another with --upstream-dns"
	case audit.ReasonNoAddresses:
		return ": the name has no IPv4 or IPv6 address (the upstream resolver says it does not exist); the policy allowed it, nothing to change there"
	case audit.ReasonUpstreamTimeout:
		return ": " + dnsOrDest(d) + " did not answer in time; the policy allowed it, nothing to change there"
	case audit.ReasonUpstreamError:
		return ": connecting to " + dnsOrDest(d) + " failed, or it broke off the exchange; the policy allowed it, nothing to change there"
	case audit.ReasonUpstreamCert:
		return ": its certificate does not verify for the name; for a host with a private CA, give that CA with --inspect-upstream-ca"
	case audit.ReasonCredentialUnset:
		return ": the secret of its credential was not given; pass it with --secret NAME=VALUE"
	case audit.ReasonInspectUnset:
		return ": egressd has no inspection CA for an inspected host (a launcher fault: please report it)"
	case audit.ReasonShuttingDown:
		return ": the sandbox was stopping; nothing to change"
	}
	return ""
}

// resolverWords names egressd's upstream resolvers, in the launcher's
// words: "the upstream resolver 192.0.2.53", "the upstream resolvers
// 192.0.2.53 and 192.0.2.54".
func (w denialWords) resolverWords() string {
	var names []string
	for _, ap := range w.resolvers {
		if ap.Port() == 53 {
			names = append(names, ap.Addr().String())
		} else {
			names = append(names, ap.String())
		}
	}
	switch len(names) {
	case 0:
		return "the upstream resolver"
	case 1:
		return "the upstream resolver " + names[0]
	}
	return "the upstream resolvers " + strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// dnsOrDest names the destination of a failed connection: the address
// dialled when the record has one, else the target.
func dnsOrDest(d sandbox.Denial) string {
	if len(d.Addrs) > 0 {
		return strings.Join(d.Addrs, ", ")
	}
	return hostPort(shown(d.Target), d.Port)
}

// shown caps what the sandbox chose (egressd escaped it already; escaping
// again is harmless and covers a record that did not come from egressd).
func shown(s string) string { return audit.Escape(s, maxShownTarget) }

// guardedAddr picks the address a guarded-address denial is about.
func guardedAddr(d sandbox.Denial) string {
	if a, err := netip.ParseAddr(d.Target); err == nil {
		return a.String()
	}
	for _, s := range d.Addrs {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			return ap.Addr().String()
		}
		if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
			return a.String()
		}
	}
	return ""
}

func hostPort(host string, port uint16) string {
	if port == 0 {
		return host
	}
	if strings.Contains(host, ":") {
		return net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	return host + ":" + strconv.Itoa(int(port))
}

// inspectHint says what refused a request inside an inspected session.
func inspectHint(d sandbox.Denial) string {
	switch d.Reason {
	case audit.ReasonBlockedBy:
		return "; the inspect entry's block_methods and block_paths win over its allow rules"
	case audit.ReasonNoAllowRule:
		return "; the inspect entry's methods and paths do not include it"
	case audit.ReasonHostMismatch:
		return "; a request inside the TLS session of one name may not ask for another host"
	}
	return ""
}

// summary is the end-of-run list, at most maxSummary lines: "and N more"
// says where the rest are (the audit log, when there is one).
func (w denialWords) summary(ds []sandbox.Denial, auditLog string) []string {
	var lines []string
	for i, d := range ds {
		if i == maxSummary {
			more := fmt.Sprintf("and %d more", len(ds)-maxSummary)
			if auditLog != "" {
				more += "; see --audit-log " + auditLog
			} else {
				more += "; run with --audit-log FILE to keep every one"
			}
			return append(lines, more)
		}
		lines = append(lines, w.line(d))
	}
	return lines
}
