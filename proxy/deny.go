package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/egressd/egressd/policy"
)

// Reasons egressd's proxy writes to the audit log besides the policy's own
// (allowed-by, blocked-by, no-allow-rule, invalid-name, guarded-address).
// Values are part of the audit format and must not change.
const (
	ReasonBadRequest   = "bad-request"         // malformed or ambiguous request head (A9, B7-B9)
	ReasonNotProxy     = "not-a-proxy-request" // origin-form request to the explicit listener (G3)
	ReasonHostMismatch = "host-mismatch"       // Host header ≠ absolute-URI host, or ≠ original port (A6)
	ReasonSNIMismatch  = "sni-mismatch"        // ClientHello SNI ≠ CONNECT host (A1)
	ReasonNoSNI        = "no-sni"              // TLS without SNI where a name is required (E1)
	ReasonECH          = "ech"                 // encrypted ClientHello (E2)
	ReasonBadHello     = "bad-client-hello"    // malformed, truncated, duplicated SNI (E3)
	ReasonSelf         = "self-connection"     // destination is one of egressd's own listeners (C6)
	ReasonTunnelLimit  = "tunnel-limit"        // MaxTunnels reached (G5)
	ReasonDestLimit    = "destination-limit"   // MaxTunnelsPerDest reached (G5)
	ReasonResolve      = "resolve-error"       // the resolver failed for an allowed name
	ReasonUpstream     = "upstream-error"      // dial or upstream I/O failed after an allow
	ReasonTimeout      = "timeout"             // header, hello or first bytes not complete (or not classified) in time
	ReasonUnidentified = "unidentified-stream" // h2c or bytes of no protocol egressd reads, where a name rule without a port admitted the address
)

// denial is a refusal. It is not a failure of egressd (a policy denial has
// its own type, so callers tell "blocked by rule X" from "upstream timed
// out"), and carries what a person needs to know why.
type denial struct {
	// status is the HTTP status for the explicit proxy and plain HTTP.
	status int
	// reason is a policy.Reason or one of the Reason* constants.
	reason string
	// decision is the matcher's verdict when a rule or the guard decided.
	decision policy.Decision
	// detail is the human explanation after the reason, if any.
	detail string
}

// denyDecision turns a matcher denial into a denial; for the address guard
// it names the address and its range.
func denyDecision(d policy.Decision, addr string) *denial {
	dn := &denial{status: http.StatusForbidden, reason: string(d.Reason), decision: d}
	if d.Reason == policy.ReasonGuardedAddress && d.Rule == nil && addr != "" {
		dn.detail = addr
	}
	return dn
}

func denyf(status int, reason, format string, args ...any) *denial {
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
		return d.reason + ": " + d.detail
	}
	return d.reason
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
		return d.decision.Rule.Source.String()
	}
	return ""
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

// sanitizeLine makes s safe for a header value and a one-line body: no
// control bytes, bounded length.
func sanitizeLine(s string) string {
	const max = 512
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < max; i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			fmt.Fprintf(&b, "\\x%02x", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// writeDenial answers a refused request: status line, X-Egressd-Denied
// carrying the reason, and the one-line body
// "egressd: denied <target>: <reason>". The connection is closed after it.
func writeDenial(c net.Conn, target string, d *denial) error {
	status, reason, body := denialParts(target, d)
	var b strings.Builder
	b.WriteString("HTTP/1.1 ")
	b.WriteString(strconv.Itoa(status))
	b.WriteByte(' ')
	b.WriteString(http.StatusText(status))
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
