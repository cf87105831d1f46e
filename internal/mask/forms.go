package mask

import (
	"encoding/base64"
	"fmt"
	"strings"
	"unicode/utf8"
)

// A server that reflects a secret seldom does so byte for byte when the
// value holds anything but letters and digits: a JSON encoder writes
// "sk-a&b" as "sk-a\u0026b", a form or a redirect URL as "sk-a%26b", an HTML
// page as "sk-a&amp;b", and a debug endpoint may echo a header in base64.
// Forms lists the spellings a masker must look for besides the literal
// value. It enumerates the escaping styles of common encoders rather than
// decoding the stream, so the masker stays a plain multi-string search that
// keeps its streaming rules (a form split across reads is still found).
//
// Covered, each in upper- and lower-case hex where hex appears:
//
//   - JSON and JavaScript string escapes: `"` and `\` always; any
//     combination of <>& and U+2028/U+2029 (Go, Rails), ' and " as \u0027
//     \u0022 (PHP's JSON_HEX_*), / as \/ (PHP), and every non-ASCII
//     character as \uXXXX with surrogate pairs (Python's ensure_ascii, PHP).
//   - URL escapes with the safe sets of url.QueryEscape/PathEscape,
//     encodeURIComponent, encodeURI, Python's quote, and "only letters and
//     digits", a space as "+" or "%20".
//   - HTML and XML character references in the styles of Go, Python, PHP,
//     XML, and all-numeric (decimal, hex).
//   - base64, standard and URL alphabets, at the three alignments a value
//     can have inside an encoded blob ("Basic " + base64("user:" + secret)):
//     the characters that depend on the secret's bits alone, so at most the
//     two characters that straddle the value at either end (under 6 bits of
//     it each) stay visible.
//
// Not covered: mixtures of styles within one value beyond those above,
// escapes applied twice, hex, base64 wrapped across lines, compression
// other than gzip (the caller decodes gzip), and any transformation a
// server invents. Weakness says when a value's shape makes the list
// unreliable.
func Forms(secret string) []string {
	if secret == "" {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	add := func(f string) {
		if f != "" && !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	add(secret)
	for opt := range jsonAll {
		add(jsonEscape(secret, jsonOpt(opt)))
	}
	for _, safe := range urlSafeSets {
		for _, plus := range []bool{false, true} {
			for _, upper := range []bool{true, false} {
				add(urlEscape(secret, safe, plus, upper))
			}
		}
	}
	for _, style := range htmlStyles {
		add(htmlEscape(secret, style))
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
		for align := range 3 {
			add(base64Core(secret, align, enc))
		}
	}
	return out
}

// FormsOf is Forms of every secret, without duplicates.
func FormsOf(secrets []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range secrets {
		for _, f := range Forms(s) {
			if !seen[f] {
				seen[f] = true
				out = append(out, f)
			}
		}
	}
	return out
}

// MinSecretLength is the length under which Weakness calls a secret
// unreliable to mask.
const MinSecretLength = 16

// Weakness says why masking secret (Forms) is unreliable, or "" when it is
// not: too short (its base64 cores are short enough to occur by chance in
// innocent text, and the value is guessable), or holding whitespace or
// control bytes (servers fold, trim or re-wrap such values).
func Weakness(secret string) string {
	switch {
	case len(secret) < MinSecretLength:
		return fmt.Sprintf("it is %d bytes long, less than %d: its encoded forms are short enough to mask innocent text, and a value that short is guessable", len(secret), MinSecretLength)
	case strings.ContainsFunc(secret, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return "it holds whitespace or control characters, which servers fold, trim or re-wrap out of the forms egressd masks"
	case !utf8.ValidString(secret):
		return "it is not valid UTF-8, so its JSON and HTML escapes are not well defined"
	}
	return ""
}

// jsonOpt is a set of optional JSON escapes.
type jsonOpt uint8

const (
	jsonHTML     jsonOpt  = 1 << iota // < > & U+2028 U+2029 as \u00XX (Go, Rails)
	jsonQuotes                        // ' and " as \u0027 \u0022 (PHP JSON_HEX_APOS, JSON_HEX_QUOT)
	jsonSlash                         // / as \/ (PHP's default)
	jsonNonASCII                      // every non-ASCII character as \uXXXX (Python, PHP)
	jsonUpper                         // hex digits in upper case
	jsonAll      = 1 << 5             // number of combinations
)

func jsonEscape(s string, opt jsonOpt) string {
	hexDigits := "0123456789abcdef"
	if opt&jsonUpper != 0 {
		hexDigits = "0123456789ABCDEF"
	}
	var b strings.Builder
	u := func(r rune) {
		b.WriteString(`\u`)
		for shift := 12; shift >= 0; shift -= 4 {
			b.WriteByte(hexDigits[(r>>shift)&0xf])
		}
	}
	for _, r := range s {
		switch {
		case r == '"' && opt&jsonQuotes != 0, r == '\'' && opt&jsonQuotes != 0:
			u(r)
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			u(r)
		case (r == '<' || r == '>' || r == '&' || r == 0x2028 || r == 0x2029) && opt&jsonHTML != 0:
			u(r)
		case r == '/' && opt&jsonSlash != 0:
			b.WriteString(`\/`)
		case r >= 0x80 && opt&jsonNonASCII != 0:
			if r > 0xffff {
				r -= 0x10000
				u(0xd800 + (r>>10)&0x3ff)
				u(0xdc00 + r&0x3ff)
			} else {
				u(r)
			}
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// urlSafeSets are the bytes common URL encoders leave as they are besides
// ASCII letters and digits.
var urlSafeSets = []string{
	"-._~",                 // RFC 3986 unreserved: url.QueryEscape, PHP rawurlencode
	"-._~!'()*",            // JavaScript encodeURIComponent
	"-._~$&+,;=:@",         // url.PathEscape
	"-._~/",                // Python urllib.parse.quote
	"-._~;,/?:@&=+$#!'()*", // JavaScript encodeURI
	"-_.*",                 // Java URLEncoder, PHP urlencode ("+" for space)
	"-._~!$&'()*+,;=:@/?",  // RFC 3986 query characters left as they are
	"",                     // only letters and digits
}

func urlEscape(s, safe string, plus, upper bool) string {
	hexDigits := "0123456789abcdef"
	if upper {
		hexDigits = "0123456789ABCDEF"
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
			b.WriteByte(c)
		case c == ' ' && plus:
			b.WriteByte('+')
		case c < 0x80 && c != ' ' && strings.IndexByte(safe, c) >= 0:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xf])
		}
	}
	return b.String()
}

// htmlStyles are character reference styles: for each of & < > " ', what
// it becomes ("" leaves it as it is).
var htmlStyles = [][5]string{
	{"&amp;", "&lt;", "&gt;", "", ""},                  // minimal
	{"&amp;", "&lt;", "&gt;", "&#34;", "&#39;"},        // Go html.EscapeString, html/template
	{"&amp;", "&lt;", "&gt;", "&quot;", "&#x27;"},      // Python html.escape
	{"&amp;", "&lt;", "&gt;", "&quot;", "&#039;"},      // PHP htmlspecialchars
	{"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"},      // XML
	{"&amp;", "&lt;", "&gt;", "&quot;", "&#39;"},       // Ruby CGI.escapeHTML, Jinja
	{"&#38;", "&#60;", "&#62;", "&#34;", "&#39;"},      // numeric, decimal
	{"&#x26;", "&#x3c;", "&#x3e;", "&#x22;", "&#x27;"}, // numeric, hex
	{"&#x26;", "&#x3C;", "&#x3E;", "&#x22;", "&#x27;"},
	{"&amp;", "&lt;", "&gt;", "&quot;", ""}, // quotes only "
}

func htmlEscape(s string, style [5]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		k := strings.IndexByte(`&<>"'`, s[i])
		if k >= 0 && style[k] != "" {
			b.WriteString(style[k])
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// base64Core is the part of the base64 encoding of secret, placed align
// bytes after a 3-byte boundary of the encoded data, that depends on the
// secret's bits alone: character i covers bits [6i, 6i+6) of the data,
// and the secret occupies bits [8·align, 8·(align+len)).
func base64Core(secret string, align int, enc *base64.Encoding) string {
	data := append(make([]byte, align), secret...)
	full := enc.WithPadding(base64.NoPadding).EncodeToString(data)
	first := (8*align + 5) / 6
	last := (8*(align+len(secret)))/6 - 1
	if last < first || last >= len(full) {
		return ""
	}
	core := full[first : last+1]
	if len(core) < 4 {
		return "" // too short to mean anything; Weakness warns about such secrets
	}
	return core
}
