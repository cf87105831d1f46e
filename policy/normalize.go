package policy

import (
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Name limits (RFC 1035, in presentation form without the trailing dot).
const (
	maxNameLen  = 253
	maxLabelLen = 63
	// maxRawNameLen bounds the input the slow (Unicode) path will look at:
	// UTS-46 maps a rune of up to 4 bytes to at least one byte or to nothing
	// (ignored code points), so anything much longer cannot be a name and
	// is refused before any work is spent on it.
	maxRawNameLen = 4 * (maxNameLen + 2)
)

// idnaProfile is the single IDNA profile used for rules and requests alike:
// UTS-46 lookup mapping (non-transitional, so ß stays ß), STD3 ASCII rules,
// the Bidi rule and the ContextJ joiner rules. CheckHyphens is off, as in
// WHATWG URL and every browser, so real names such as
// r3---sn-abc.googlevideo.com stay valid. Lengths are checked by us.
//
// It is only ever applied to one non-ASCII label at a time, or to an ASCII
// label carrying the ACE prefix "xn--"; ASCII labels are handled by
// NormalizeName itself, which is how '_' (refused by STD3 rules) stays valid
// in ordinary ASCII labels.
var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.Transitional(false),
	idna.CheckHyphens(false),
	idna.VerifyDNSLength(false),
)

// nameByte reports whether c may appear in a normalised name.
func nameByte(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.'
}

// NormalizeName returns the canonical form of a host name: ASCII lower case,
// one trailing dot removed, every Unicode label converted to its A-label
// (punycode) with UTS-46 lookup mapping — so "ｇithub.com" (fullwidth g)
// becomes "github.com" while "gіthub.com" (Cyrillic і) becomes a distinct
// "xn--…" name — and the dot variants U+3002, U+FF0E and U+FF61 read as '.'.
//
// ok is false, and the name must be denied as invalid, for: an empty name,
// an empty label (including two trailing dots), a label over 63 bytes, a
// name over 253 bytes, any byte outside [a-z0-9-_.] after mapping (NUL,
// control characters, space, '%', '@', '\', ':', '/', brackets, …), invalid
// UTF-8, a label refused by IDNA (disallowed code points, Bidi or joiner
// violations, an "xn--" label that is not the canonical A-label of a valid
// U-label), and a last label that is a number in any inet_aton spelling
// (all digits, or "0x" followed by hex digits). The last rule means that
// every IP-address-like string — "127.0.0.1", "127.1", "2130706433",
// "0x7f000001", "0177.0.0.1", and "127｡0｡0｡1" after mapping — is refused as
// a name rather than silently becoming an address; IP literals are parsed by
// ParseIP instead.
//
// NormalizeName is idempotent, and for input that is already canonical and
// has no "xn--" label it returns its argument without allocating.
func NormalizeName(raw string) (name string, ok bool) {
	if len(raw) > maxRawNameLen {
		return "", false
	}
	fast := true
	for i := 0; i < len(raw); i++ {
		if !nameByte(raw[i]) {
			fast = false
			break
		}
	}
	if !fast {
		return normalizeSlow(raw)
	}
	s := raw
	s = strings.TrimSuffix(s, ".")
	if !canonicalName(s) {
		return "", false
	}
	return s, true
}

// normalizeSlow handles input with upper-case ASCII or non-ASCII runes.
func normalizeSlow(raw string) (string, bool) {
	if !utf8.ValidString(raw) {
		return "", false
	}
	var b strings.Builder
	b.Grow(len(raw))
	for _, r := range raw {
		switch {
		case r == '.', r == '\u3002', r == '\uff0e', r == '\uff61':
			// IDEOGRAPHIC FULL STOP, FULLWIDTH FULL STOP and HALFWIDTH
			// IDEOGRAPHIC FULL STOP are label separators under UTS-46.
			b.WriteByte('.')
		case r < utf8.RuneSelf:
			c := byte(r)
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if !nameByte(c) {
				return "", false
			}
			b.WriteByte(c)
		default:
			b.WriteRune(r)
		}
	}
	s := b.String()
	s = strings.TrimSuffix(s, ".")
	out := make([]byte, 0, len(s))
	for i := 0; ; {
		j := strings.IndexByte(s[i:], '.')
		end := len(s)
		if j >= 0 {
			end = i + j
		}
		label := s[i:end]
		if isASCII(label) {
			out = append(out, label...)
		} else {
			a, err := idnaProfile.ToASCII(label)
			if err != nil || a == "" || strings.IndexByte(a, '.') >= 0 {
				return "", false
			}
			out = append(out, a...)
		}
		if j < 0 {
			break
		}
		out = append(out, '.')
		i = end + 1
	}
	name := string(out)
	// The result must be a fixed point of the fast path: that is what makes
	// NormalizeName idempotent and rules and requests meet on one string.
	if !canonicalName(name) {
		return "", false
	}
	return name, true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// canonicalName reports whether s (no trailing dot) is a canonical name:
// bytes in [a-z0-9-_.], labels of 1-63 bytes, at most 253 bytes, a last
// label that is not a number, and every "xn--" label a valid canonical
// A-label. It allocates only for "xn--" labels.
func canonicalName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			if !nameByte(s[i]) {
				return false
			}
			continue
		}
		label := s[start:i]
		if len(label) == 0 || len(label) > maxLabelLen {
			return false
		}
		if strings.HasPrefix(label, "xn--") && !validALabel(label) {
			return false
		}
		if i == len(s) && numericLabel(label) {
			return false
		}
		start = i + 1
	}
	return true
}

// validALabel reports whether label (lower-case, "xn--" prefix) is the
// canonical A-label of a valid U-label under idnaProfile. "xn--github-"
// (which decodes to plain ASCII "github") and undecodable punycode fail.
func validALabel(label string) bool {
	a, err := idnaProfile.ToASCII(label)
	return err == nil && a == label
}

// numericLabel reports whether label is a number as inet_aton reads one:
// decimal (octal with a leading 0 is still all digits) or hexadecimal with a
// 0x prefix. Such a last label makes a name an IP address in some parser
// (WHATWG URL "ends in a number"), so it is never a valid name.
func numericLabel(label string) bool {
	if len(label) >= 2 && label[0] == '0' && (label[1] == 'x' || label[1] == 'X') {
		for i := 2; i < len(label); i++ {
			c := label[i]
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(label); i++ {
		if label[i] < '0' || label[i] > '9' {
			return false
		}
	}
	return len(label) > 0
}

// ParseIP parses a strict IP literal: a dotted quad without leading zeros or
// short forms, or an IPv6 address without a zone, optionally in brackets
// (brackets only around IPv6). An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
// is returned as the IPv4 address, so every later comparison and the guard
// see one form.
func ParseIP(raw string) (netip.Addr, bool) {
	s := raw
	bracketed := false
	if len(s) >= 2 && s[0] == '[' && s[len(s)-1] == ']' {
		s = s[1 : len(s)-1]
		bracketed = true
	}
	if s == "" || strings.IndexByte(s, '%') >= 0 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	if bracketed && !a.Is6() {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// canonAddr returns addr in the form the matcher compares: IPv4-mapped IPv6
// unmapped. ok is false for the zero Addr and for addresses with a zone.
func canonAddr(addr netip.Addr) (netip.Addr, bool) {
	if !addr.IsValid() || addr.Zone() != "" {
		return netip.Addr{}, false
	}
	return addr.Unmap(), true
}
