package proxy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/egressd/egressd/policy"
)

// Authorities and request-targets. One strict parser produces the target
// that is decided on and the target that is dialled, so no URL-parser
// differential can sit between them (THREATS B7-B9).

// errBadAuthority wraps every authority rejected before the policy parser
// sees it.
var errBadAuthority = errors.New("bad authority")

// maxAuthorityLen is a 253-byte name, brackets or an IPv6 literal, ":" and
// five port digits, with room to spare; longer is refused unparsed.
const maxAuthorityLen = 300

// checkAuthorityBytes allows only the bytes a host[:port] can hold:
// letters, digits, '-', '.', '_' (names), ':' and brackets (ports, IPv6).
// This rejects NUL and every control byte, space, DEL, non-ASCII (IDNs
// arrive as punycode on the wire), '%' (no percent-decoding of hosts),
// '@' (userinfo), '\\' and every other delimiter.
func checkAuthorityBytes(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", errBadAuthority)
	}
	if len(s) > maxAuthorityLen {
		return fmt.Errorf("%w: %d bytes long", errBadAuthority, len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '.', c == '_', c == ':', c == '[', c == ']':
		case c == '@':
			return fmt.Errorf("%w: userinfo ('@') is not allowed", errBadAuthority)
		case c == '%':
			return fmt.Errorf("%w: percent-encoding is not allowed in a host", errBadAuthority)
		case c == '\\':
			return fmt.Errorf("%w: backslash in host", errBadAuthority)
		case c < 0x21 || c >= 0x7f:
			return fmt.Errorf("%w: byte %#02x in host", errBadAuthority, c)
		default:
			return fmt.Errorf("%w: %q in host", errBadAuthority, c)
		}
	}
	if strings.Count(s, "[") > 1 || strings.Count(s, "]") > 1 {
		return fmt.Errorf("%w: nested brackets", errBadAuthority)
	}
	return nil
}

// parseAuthority parses a CONNECT request-target (authority-form, RFC 9112
// §3.2.3): host ":" port with the port required. Names come back
// normalised, IP literals canonical.
func parseAuthority(s string) (policy.Target, error) {
	if err := checkAuthorityBytes(s); err != nil {
		return policy.Target{}, err
	}
	t, err := policy.ParseTarget(s, 0) // default port 0: a missing port is an error
	if err != nil {
		return policy.Target{}, err
	}
	return t, nil
}

// parseHostHeader parses a Host header value (or any host[:port]) with the
// same rules; a missing port becomes defaultPort.
func parseHostHeader(s string, defaultPort uint16) (policy.Target, error) {
	if err := checkAuthorityBytes(s); err != nil {
		return policy.Target{}, err
	}
	return policy.ParseTarget(s, defaultPort)
}

// parseAbsoluteTarget parses an absolute-form request-target of a
// forward-proxy request (RFC 9112 §3.2.2). Only "http://" is accepted
// ("https://" belongs in a CONNECT); userinfo, fragments and anything
// checkAuthorityBytes refuses are errors. It returns the target (port 80
// when absent) and the origin-form path-and-query to send upstream.
func parseAbsoluteTarget(s string) (policy.Target, string, error) {
	const scheme = "http://"
	if len(s) < len(scheme) || !strings.EqualFold(s[:len(scheme)], scheme) {
		if len(s) >= 8 && strings.EqualFold(s[:8], "https://") {
			return policy.Target{}, "", errors.New("https:// request-target: use CONNECT for HTTPS")
		}
		return policy.Target{}, "", errors.New("request-target is not absolute http:// (not a proxy request)")
	}
	rest := s[len(scheme):]
	if strings.IndexByte(rest, '#') >= 0 {
		return policy.Target{}, "", errors.New("fragment in request-target")
	}
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	auth, path := rest[:end], rest[end:]
	t, err := parseHostHeader(auth, 80)
	if err != nil {
		return policy.Target{}, "", err
	}
	switch {
	case path == "":
		path = "/"
	case path[0] == '?':
		path = "/" + path
	}
	return t, path, nil
}

// hostHeaderFor renders the Host header egressd sends upstream for t,
// leaving out the default port.
func hostHeaderFor(t policy.Target, defaultPort uint16) string {
	if t.Port != defaultPort {
		return t.String()
	}
	if t.Name != "" {
		return t.Name
	}
	if t.Addr.Is6() {
		return "[" + t.Addr.String() + "]"
	}
	return t.Addr.String()
}
