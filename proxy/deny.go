package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// denial is a request the proxy does not serve: a refusal (outcome deny)
// or a failure after an allow (outcome error; audit.Reason.Outcome tells
// which). It is not an error of egressd's own (a policy denial has its own
// type, so callers tell "blocked by rule X" from "upstream timed out"), and
// carries what a person needs to know why.
type denial struct {
	// status is the HTTP status for the explicit proxy and plain HTTP.
	status int
	// reason is a policy reason or another of audit.Reasons.
	reason audit.Reason
	// decision is the matcher's verdict when a rule or the guard decided.
	decision policy.Decision
	// detail is the human explanation after the reason, if any: for the
	// client and the audit record.
	detail string
	// internal, when set, replaces detail in the audit record: what the
	// operator may read but the sandbox must not (the upstream
	// resolvers' addresses and words).
	internal string
	// name is the name a stream to an address was decided on (a learned
	// name), for the record's "name".
	name string
	// addr is the address the guard or an IP rule refused, for the
	// record's "addrs" when nothing was dialled.
	addr netip.Addr
}

// denyDecision turns a matcher denial into a denial; for the address guard
// it names the address and its range.
func denyDecision(d policy.Decision, addr string) *denial {
	dn := &denial{status: http.StatusForbidden, reason: audit.Reason(d.Reason), decision: d}
	if d.Reason == policy.ReasonGuardedAddress && d.Rule == nil && addr != "" {
		dn.detail = addr
	}
	return dn
}

func denyf(status int, reason audit.Reason, format string, args ...any) *denial {
	return &denial{status: status, reason: reason, detail: fmt.Sprintf(format, args...)}
}

// text is the one-line explanation: "blocked-by *.evil.test (policy.toml:12)",
// "guarded-address 127.0.0.9 (loopback 127.0.0.0/8)", "sni-mismatch: ...".
func (d *denial) text() string {
	if d.decision.Reason != "" {
		s := d.decision.String()
		if d.detail != "" {
			s += " " + d.detail
		}
		return s
	}
	if d.detail != "" {
		return string(d.reason) + ": " + d.detail
	}
	return string(d.reason)
}

func (d *denial) Error() string { return "denied: " + d.text() }

// ruleText and ruleSource are the audit fields of the deciding rule.
func (d *denial) ruleText() string {
	if d.decision.Rule != nil {
		return d.decision.Rule.Text
	}
	return ""
}

func (d *denial) ruleSource() string {
	if d.decision.Rule != nil {
		return d.decision.Rule.SourceText()
	}
	return ""
}

// detailForAudit is the explanation beyond reason and rule, if any.
func (d *denial) detailForAudit() string {
	if d.internal != "" {
		return sanitizeLine(d.internal)
	}
	if d.detail == "" {
		return ""
	}
	return sanitizeLine(d.detail)
}

// asDenial unwraps a *denial from err.
func asDenial(err error) (*denial, bool) {
	var d *denial
	ok := errors.As(err, &d)
	return d, ok
}

// guardDetail names the guarded range of addr: "127.0.0.9 (loopback 127.0.0.0/8)".
func guardDetail(addr string, label string) string {
	if label == "" {
		return addr
	}
	return addr + " (" + label + ")"
}

// sanitizeLine makes s safe for a header value, a one-line body and an
// audit field: printable ASCII only, bounded length (audit.Escape).
func sanitizeLine(s string) string { return audit.Escape(s, audit.MaxTarget) }

// Caps of the status line's reason phrase.
const (
	maxPhraseTarget = 128
	maxPhrase       = 256
)

// writeDenial answers a refused request: the reason in the status line
// ("403 Forbidden by egressd: evil.test:443 not in the allow list", for
// the clients that show nothing else), X-Egressd-Denied carrying the
// reason and its rule, and the one-line body
// "egressd: denied <target>: <reason>". The connection is closed after it.
func writeDenial(c net.Conn, target string, d *denial) error {
	status, reason, body := denialParts(target, d)
	var b strings.Builder
	b.WriteString("HTTP/1.1 ")
	b.WriteString(strconv.Itoa(status))
	b.WriteByte(' ')
	b.WriteString(d.phrase(status, target))
	b.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nX-Egressd-Denied: ")
	b.WriteString(reason)
	b.WriteString("\r\nContent-Length: ")
	b.WriteString(strconv.Itoa(len(body)))
	b.WriteString("\r\nConnection: close\r\n\r\n")
	b.WriteString(body)
	_, err := c.Write([]byte(b.String()))
	return err
}

// denialParts are what every answer to a denial carries: the status, the
// reason (the X-Egressd-Denied header) and the body.
func denialParts(target string, d *denial) (status int, reason, body string) {
	reason = sanitizeLine(d.text())
	body = "egressd: denied " + sanitizeLine(target) + ": " + reason + "\n"
	if target == "" {
		body = "egressd: denied: " + reason + "\n"
	}
	status = d.status
	if status == 0 {
		status = http.StatusForbidden
	}
	return status, reason, body
}

// phrase is the status line's reason phrase: the status text, who answered
// and why in a few words, target escaped and cut — ASCII, no CR or LF,
// at most maxPhrase bytes.
func (d *denial) phrase(status int, target string) string {
	who := http.StatusText(status) + " (egressd): "
	if status == http.StatusForbidden {
		who = "Forbidden by egressd: "
	}
	what := d.summary()
	if target != "" {
		what = audit.Escape(target, maxPhraseTarget) + " " + what
	}
	return audit.Escape(who+what, maxPhrase)
}

// summary says in a few words why, after the target: "not in the allow
// list", "is blocked by *.evil.test".
func (d *denial) summary() string {
	switch d.reason {
	case audit.ReasonNoAllowRule:
		return "not in the allow list"
	case audit.ReasonBlockedBy:
		if r := d.ruleText(); r != "" {
			return "blocked by the rule " + r
		}
		return "blocked"
	case audit.ReasonInvalidName:
		return "is not a valid host name"
	case audit.ReasonGuardedAddress:
		if d.detail != "" {
			return "refused by the address guard: " + d.detail
		}
		return "refused by the address guard"
	}
	if s, ok := summaries[d.reason]; ok {
		return s
	}
	return string(d.reason)
}

// summaries are the few words of the other reasons.
var summaries = map[audit.Reason]string{
	audit.ReasonBadRequest:        "refused: a malformed or ambiguous request",
	audit.ReasonNotProxy:          "refused: not a proxy request",
	audit.ReasonHostMismatch:      "refused: the Host header names another target",
	audit.ReasonSelf:              "refused: egressd's own listener",
	audit.ReasonPlaceholder:       "refused: a credential's placeholder bound for another host",
	audit.ReasonInspectChanged:    "refused: a policy reload changed its inspection",
	audit.ReasonMaxTunnels:        "refused: too many open connections (--max-tunnels)",
	audit.ReasonMaxTunnelsPerDest: "refused: too many connections to one destination (--max-tunnels-per-dest)",
	audit.ReasonHeaderTimeout:     "refused: the request head did not arrive in time (--header-timeout)",
	audit.ReasonDNSMaxNameLen:     "refused: the name is longer than --dns-max-name-len",
	audit.ReasonResolverTimeout:   "could not be resolved: the upstream resolver did not answer",
	audit.ReasonResolverError:     "could not be resolved: the upstream resolver failed",
	audit.ReasonNoAddresses:       "has no addresses",
	audit.ReasonUpstreamTimeout:   "did not answer in time",
	audit.ReasonUpstreamError:     "failed: the connection or the exchange broke",
	audit.ReasonUpstreamCert:      "failed: its certificate does not verify",
	audit.ReasonCredentialUnset:   "failed: a credential's secret is not available",
	audit.ReasonShuttingDown:      "failed: egressd is shutting down",
}
