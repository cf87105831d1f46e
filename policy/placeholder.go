package policy

import (
	"encoding/base64"
	"strconv"
	"strings"
)

// A credential's placeholder is worthless anywhere but its own host, but a
// sandbox sending it elsewhere is the sign of a prompt-injected agent
// exfiltrating what it believes is its key (THREATS H1), so egressd refuses
// it and says so. The agent, or a library on its way, seldom sends the
// value byte for byte: it upper-cases it, percent-escapes it, puts it in a
// JSON or HTML document, base64-encodes it into "Authorization: Basic", or
// makes it a header name. PlaceholderFor sees those forms:
//
//   - case: the text is compared with ASCII case ignored;
//   - escapes: %XX (any case), \uXXXX, \xXX, \/, and HTML character
//     references (&#NN; &#xHH; &amp; &lt; &gt; &quot; &apos;) are decoded,
//     up to three times over (an escape of an escape), mixed freely;
//   - base64, standard and URL alphabets, at the three alignments a value
//     can have inside an encoded blob: the characters that depend on the
//     placeholder's bits alone (as written, case kept).
//
// Not seen: other encodings (hex, compression, encryption, splitting the
// value in two), which no bound on effort could enumerate; the allow list
// is the guarantee, this is the alarm.

// placeholderForm is how one credential's placeholder is recognised.
type placeholderForm struct {
	folded string   // the placeholder in lower case, found in decoded text
	base64 []string // its base64 cores, found in the raw text
}

func placeholderForms(creds []*Credential) []placeholderForm {
	out := make([]placeholderForm, len(creds))
	for i, c := range creds {
		out[i].folded = LowerASCII(c.Placeholder)
		seen := map[string]bool{}
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			for align := range 3 {
				data := append(make([]byte, align), c.Placeholder...)
				full := enc.EncodeToString(data)
				first, last := (8*align+5)/6, 8*len(data)/6-1
				if last-first+1 >= 6 && !seen[full[first:last+1]] {
					seen[full[first:last+1]] = true
					out[i].base64 = append(out[i].base64, full[first:last+1])
				}
			}
		}
	}
	return out
}

// PlaceholderFor returns a credential whose placeholder occurs in s, in
// any form the package comment lists, but whose host is not host (a
// placeholder on its way elsewhere), or nil.
func (m *Matcher) PlaceholderFor(host, s string) *Credential {
	if m == nil || len(m.credentials) == 0 || s == "" {
		return nil
	}
	decoded, didDecode := "", false
	for i, c := range m.credentials {
		if c.Host == host {
			continue
		}
		if strings.Contains(s, c.Placeholder) {
			return c
		}
		f := m.placeholders[i]
		for _, b := range f.base64 {
			if strings.Contains(s, b) {
				return c
			}
		}
		if !didDecode {
			decoded, didDecode = LowerASCII(UnescapeLoose(s)), true
		}
		if strings.Contains(decoded, f.folded) {
			return c
		}
	}
	return nil
}

// PlaceholderLen is the longest placeholder's length in any form
// PlaceholderFor sees, in bytes of the text sent: what a scan of a stream
// in windows must keep of one window for the next (0 without credentials).
func (m *Matcher) PlaceholderLen() int {
	n := 0
	for _, c := range m.Credentials() {
		n = max(n, 3*6*len(c.Placeholder)) // \u-escaped twice over is the longest form decoded
	}
	return n
}

// UnescapeLoose decodes, up to three times over, the escapes listed in
// PlaceholderFor's comment; what is not a complete escape stays as it is.
func UnescapeLoose(s string) string {
	for range 3 {
		if !strings.ContainsAny(s, `%\&`) {
			return s
		}
		d := unescapeOnce(s)
		if d == s {
			return s
		}
		s = d
	}
	return s
}

func unescapeOnce(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		case c == '\\' && i+1 < len(s):
			switch s[i+1] {
			case 'u':
				if i+5 < len(s) && isHex(s[i+2]) && isHex(s[i+3]) && isHex(s[i+4]) && isHex(s[i+5]) {
					v, _ := strconv.ParseUint(s[i+2:i+6], 16, 32)
					b.WriteRune(rune(v))
					i += 5
					continue
				}
			case 'x':
				if i+3 < len(s) && isHex(s[i+2]) && isHex(s[i+3]) {
					b.WriteByte(unhex(s[i+2])<<4 | unhex(s[i+3]))
					i += 3
					continue
				}
			case '/', '\\', '"', '\'':
				b.WriteByte(s[i+1])
				i++
				continue
			}
		case c == '&':
			if end := strings.IndexByte(s[i:min(len(s), i+10)], ';'); end > 1 {
				if r, ok := htmlReference(s[i+1 : i+end]); ok {
					b.WriteRune(r)
					i += end
					continue
				}
			}
		}
		b.WriteByte(c)
	}
	return b.String()
}

// htmlReference decodes the body of a character reference ("amp", "#38",
// "#x26").
func htmlReference(ref string) (rune, bool) {
	switch strings.ToLower(ref) {
	case "amp":
		return '&', true
	case "lt":
		return '<', true
	case "gt":
		return '>', true
	case "quot":
		return '"', true
	case "apos":
		return '\'', true
	}
	if len(ref) < 2 || ref[0] != '#' {
		return 0, false
	}
	base, digits := 10, ref[1:]
	if digits[0] == 'x' || digits[0] == 'X' {
		base, digits = 16, digits[1:]
	}
	v, err := strconv.ParseUint(digits, base, 21)
	if err != nil || v == 0 {
		return 0, false
	}
	return rune(v), true
}
