package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrInvalidName is wrapped by every ParseTarget error: the host or port of
// a destination is not one egressd will decide on (reason invalid-name).
var ErrInvalidName = errors.New("invalid destination")

// Target is a destination to decide on. Exactly one of Name and Addr is set.
type Target struct {
	// Name is a normalised host name (see NormalizeName), or empty.
	Name string
	// Addr is a canonical IP address (IPv4-mapped addresses as IPv4, no
	// zone), or the zero Addr.
	Addr netip.Addr
	// Port is 1-65535; 0 only in a Target not made by ParseTarget, and
	// Matcher.Decide denies it.
	Port uint16
}

// String renders the target as host:port: "github.com:443",
// "203.0.113.7:80", "[2001:db8::1]:443"; without ":port" when Port is 0.
func (t Target) String() string {
	host := t.Name
	if t.Name == "" && t.Addr.IsValid() {
		host = t.Addr.String()
		if t.Addr.Is6() {
			if t.Port == 0 {
				return host
			}
			host = "[" + host + "]"
		}
	}
	if t.Port == 0 {
		return host
	}
	return host + ":" + strconv.Itoa(int(t.Port))
}

// ParseTarget parses a destination as it appears in a CONNECT authority, a
// Host header or a flag: "host", "host:port", "IPv4", "IPv4:port",
// "[IPv6]", "[IPv6]:port" or a bare "IPv6" (no port possible then). A
// missing port becomes defaultPort. The port is strict decimal 1-65535 (no
// sign, no leading zero, no spaces). Names are normalised with NormalizeName
// and IP literals with ParseIP; a host that is neither — including
// "127｡0｡0｡1", "127.1", "0x7f000001", brackets around a name, an empty host —
// is an error wrapping ErrInvalidName. It never turns a name into an address.
func ParseTarget(s string, defaultPort uint16) (Target, error) {
	host, portText, hasPort, err := splitTarget(s)
	if err != nil {
		return Target{}, fmt.Errorf("parsing destination %q: %w", s, err)
	}
	port := defaultPort
	if hasPort {
		p, ok := parsePort(portText)
		if !ok {
			return Target{}, fmt.Errorf("parsing destination %q: %w: bad port %q (want 1-65535)", s, ErrInvalidName, portText)
		}
		port = p
	}
	if port == 0 {
		return Target{}, fmt.Errorf("parsing destination %q: %w: missing port", s, ErrInvalidName)
	}
	if a, ok := ParseIP(host); ok {
		return Target{Addr: a, Port: port}, nil
	}
	if strings.HasPrefix(host, "[") || strings.Contains(host, ":") {
		return Target{}, fmt.Errorf("parsing destination %q: %w: not an IPv6 address", s, ErrInvalidName)
	}
	n, ok := NormalizeName(host)
	if !ok {
		return Target{}, fmt.Errorf("parsing destination %q: %w: bad host name", s, ErrInvalidName)
	}
	return Target{Name: n, Port: port}, nil
}

// splitTarget separates host and port. The host keeps its brackets, so
// ParseIP can insist they surround an IPv6 address.
func splitTarget(s string) (host, port string, hasPort bool, err error) {
	if s == "" {
		return "", "", false, fmt.Errorf("%w: empty host", ErrInvalidName)
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", false, fmt.Errorf("%w: unclosed '['", ErrInvalidName)
		}
		host, rest := s[:end+1], s[end+1:]
		switch {
		case rest == "":
			return host, "", false, nil
		case rest[0] == ':':
			return host, rest[1:], true, nil
		}
		return "", "", false, fmt.Errorf("%w: unexpected text after ']'", ErrInvalidName)
	}
	switch strings.Count(s, ":") {
	case 0:
		return s, "", false, nil
	case 1:
		i := strings.IndexByte(s, ':')
		return s[:i], s[i+1:], true, nil
	}
	return s, "", false, nil // a bare IPv6 address, or garbage ParseIP refuses
}
