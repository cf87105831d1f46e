package mask

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"html"
	"io"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// encoders are what common servers write a reflected value as.
func encoders(s string) map[string]string {
	goJSON, _ := json.Marshal(s)
	var plain bytes.Buffer
	enc := json.NewEncoder(&plain)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	ascii := strconv.QuoteToASCII(s) // Python's ensure_ascii for the BMP
	return map[string]string{
		"json (Go)":               strings.Trim(string(goJSON), `"`),
		"json (no HTML escapes)":  strings.Trim(strings.TrimSpace(plain.String()), `"`),
		"json (PHP \\/)":          strings.ReplaceAll(strings.Trim(string(goJSON), `"`), "/", `\/`),
		"json (ASCII only)":       strings.Trim(ascii, `"`),
		"url.QueryEscape":         url.QueryEscape(s),
		"url.PathEscape":          url.PathEscape(s),
		"url.QueryEscape, %20":    strings.ReplaceAll(url.QueryEscape(s), "+", "%20"),
		"url lower-case hex":      lowerHex(url.QueryEscape(s)),
		"html.EscapeString":       html.EscapeString(s),
		"html (Python)":           strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#x27;").Replace(s),
		"base64":                  base64.StdEncoding.EncodeToString([]byte(s)),
		"base64 after 1 byte":     base64.StdEncoding.EncodeToString([]byte("u" + s)),
		"base64 after 2 bytes":    base64.StdEncoding.EncodeToString([]byte("u:" + s + "tail")),
		"base64 url after 1 byte": base64.URLEncoding.EncodeToString([]byte("?" + s + "?")),
	}
}

// W2 (attack review 1): a secret the upstream reflects in a common
// encoding never survives the same-length reader, whatever the read
// boundaries, and what is around it stays as it was.
func TestSecretInCommonEncodingsIsMaskedAcrossReads(t *testing.T) {
	for _, secret := range []string{`sk-rev&iew<1234>abcd`, `key/with "quotes" 'and' spaces é+=?`, "sk-ant-api03-AbCdEfGhIjKlMnOp_qrstuv-wxyz"} {
		forms := Forms(secret)
		for name, enc := range encoders(secret) {
			in := "before<" + enc + ">after"
			for _, chunk := range []int{1, 3, 7, 64} {
				got, err := io.ReadAll(NewSameLengthReader(&chunked{s: in, n: chunk}, forms))
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != len(in) {
					t.Errorf("%s of %q, reads of %d: length %d, want %d", name, secret, chunk, len(got), len(in))
				}
				if !strings.HasPrefix(string(got), "before<") || !strings.HasSuffix(string(got), ">after") {
					t.Errorf("%s of %q: the text around it changed: %q", name, secret, got)
				}
				if strings.HasPrefix(name, "base64") {
					// Only the characters straddling the secret's ends
					// stay: decoded with '*' as zero bits, no 3 bytes of
					// it are left.
					mid := strings.TrimSuffix(strings.TrimPrefix(string(got), "before<"), ">after")
					dec, _ := base64.URLEncoding.DecodeString(strings.NewReplacer("*", "A", "+", "-", "/", "_").Replace(mid))
					for k := 0; k+3 <= len(secret); k++ {
						if bytes.Contains(dec, []byte(secret[k:k+3])) {
							t.Errorf("%s of %q, reads of %d: %q still decodes to %q of it", name, secret, chunk, got, secret[k:k+3])
							break
						}
					}
					continue
				}
				if want := "before<" + strings.Repeat("*", len(enc)) + ">after"; string(got) != want {
					t.Errorf("%s of %q, reads of %d: got %q, want %q", name, secret, chunk, got, want)
				}
			}
		}
	}
}

// chunked reads s n bytes at a time.
type chunked struct {
	s string
	n int
}

func (c *chunked) Read(p []byte) (int, error) {
	if c.s == "" {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), c.n)], c.s)
	c.s = c.s[k:]
	return k, nil
}

func TestFormsOfAPlainKeyAreFew(t *testing.T) {
	// Letters, digits and -_ have no escapes: the literal, its URL form
	// with '-' escaped, and the base64 cores.
	if n := len(Forms("sk-ant-api03-AbCdEfGhIjKlMnOp_qrstuv")); n > 10 {
		t.Errorf("%d forms for a plain key: %q", n, Forms("sk-ant-api03-AbCdEfGhIjKlMnOp_qrstuv"))
	}
	if Forms("") != nil {
		t.Error("forms of an empty secret")
	}
}

func TestWeaknessNamesUnreliableSecrets(t *testing.T) {
	for s, weak := range map[string]bool{
		"short":                         true,
		"sk-0123456789abcdef":           false,
		"with a space in it, long":      true,
		"tab\there-and-long-enough-x":   true,
		"\xff\xfe-not-utf8-long-enough": true,
		"sk-ant-api03-AbCdEfGhIjKlMnOp": false,
	} {
		if got := Weakness(s) != ""; got != weak {
			t.Errorf("Weakness(%q) = %q, want weak=%v", s, Weakness(s), weak)
		}
	}
}

// BenchmarkMaskerForms is the same-length reader over 1 MiB of JSON with
// the literal secret (baseline) and with all its forms.
func BenchmarkMaskerForms(b *testing.B) {
	const secret = `sk-rev&iew<1234>abcd-0123456789`
	data := bytes.Repeat([]byte(`{"id":"msg_0123456789","content":[{"type":"text","text":"hello world"}]},`), 1<<20/72)
	for _, c := range []struct {
		name    string
		secrets []string
	}{{"literal", []string{secret}}, {"forms", Forms(secret)}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				_, _ = io.Copy(io.Discard, NewSameLengthReader(bytes.NewReader(data), c.secrets))
			}
		})
	}
}

// lowerHex writes the %XX escapes of s in lower case.
func lowerHex(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = bytes.ToLower(b[i+1 : i+2])[0], bytes.ToLower(b[i+2 : i+3])[0]
		}
	}
	return string(b)
}
