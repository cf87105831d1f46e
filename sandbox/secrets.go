package sandbox

import (
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/mask"
	"github.com/egressd/egressd/policy"
)

// SecretMask is what a secret value becomes in a sandbox's streamed output.
const SecretMask = mask.Mask

// MinSecretLength is the length under which a secret is weak: it is still
// masked (a secret never reaches the output whatever its length), but a
// short value also masks every innocent occurrence of those bytes ("1234"
// in any number), and a value that short can be guessed anyway. The
// launcher should warn about such values.
const MinSecretLength = 4

// CredentialWeakness says why egressd cannot reliably mask a credential's
// secret value in its host's responses ("" when it can): mask.Weakness.
func CredentialWeakness(value string) string { return mask.Weakness(value) }

// NewMasker returns a writer that copies to w with every occurrence of any
// of secrets replaced by SecretMask (mask.NewWriter: a secret split across
// writes included), in each form OutputForms lists. Close flushes what it
// held back; it does not close w.
func NewMasker(w io.Writer, secrets []string) io.WriteCloser {
	return mask.NewWriter(w, OutputForms(secrets))
}

// OutputForms are the spellings of secrets masked in a command's output:
// each value as given and in lower case (egressd's refusals quote a
// normalised name back to the command, which may print it), and the forms
// programs commonly print a value in — JSON, URL and HTML escapes, base64
// (mask.Forms). What a command encodes on purpose (its own cipher, a value
// split in pieces) is not recognised: masking keeps secrets out of logs
// by accident, it does not contain a command that holds them.
func OutputForms(secrets []string) []string {
	var all []string
	for _, s := range secrets {
		if s != "" {
			all = append(all, s, strings.ToLower(s))
		}
	}
	return mask.FormsOf(all)
}

// MaskSecrets returns s with every secret replaced by SecretMask.
func MaskSecrets(s string, secrets []string) string { return mask.String(s, secrets) }

// LineMasker masks a sandbox's secrets in what the launcher itself writes:
// its denial lines, warnings and errors, and the audit records it relays.
// Those carry targets egressd has transformed on the way, so besides each
// literal value it masks the forms egressd writes a value in — lower case
// (a DNS name is normalised), IDNA, control bytes escaped (\xNN), DNS
// presentation escapes (\DDD), URL escaping — and, where egressd cut a
// long field ("..."), a secret's beginning left at the cut.
type LineMasker struct {
	forms []string
}

// NewLineMasker returns the masker of secrets; with none, it changes
// nothing.
func NewLineMasker(secrets []string) *LineMasker {
	m := &LineMasker{}
	seen := map[string]bool{}
	add := func(f string) {
		if f != "" && !seen[f] {
			seen[f] = true
			m.forms = append(m.forms, f)
		}
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		for _, v := range []string{s, strings.ToLower(s)} {
			for _, f := range mask.Forms(v) {
				add(f)
			}
			add(audit.Escape(v, 0))
			add(dnsPresentation(v))
			add(url.PathEscape(v))
			add(url.QueryEscape(v))
		}
		if n, ok := policy.NormalizeName(s); ok {
			add(n)
		}
	}
	return m
}

// String returns s with every form of every secret masked.
func (m *LineMasker) String(s string) string {
	if m == nil || len(m.forms) == 0 {
		return s
	}
	s = mask.String(s, m.forms)
	body, cut := strings.CutSuffix(s, audit.Cut)
	if !cut {
		return s
	}
	for _, f := range m.forms {
		for k := min(len(f)-1, len(body)); k >= MinSecretLength; k-- {
			if strings.HasSuffix(body, f[:k]) {
				return body[:len(body)-k] + SecretMask + audit.Cut
			}
		}
	}
	return s
}

// Record masks every text field of r.
func (m *LineMasker) Record(r *audit.Record) {
	if m == nil || len(m.forms) == 0 {
		return
	}
	for _, f := range []*string{&r.SandboxID, &r.Target, &r.Name, &r.QType, &r.Rule, &r.Source, &r.Client, &r.Method, &r.Path, &r.Credential, &r.Error} {
		*f = m.String(*f)
	}
	for i := range r.Addrs {
		r.Addrs[i] = m.String(r.Addrs[i])
	}
}

// Writer returns a writer that masks each write to w as a whole: for
// writers of whole lines (the launcher's own), not for streams.
func (m *LineMasker) Writer(w io.Writer) io.Writer { return &lineMaskWriter{m: m, w: w} }

type lineMaskWriter struct {
	m *LineMasker
	w io.Writer
}

func (l *lineMaskWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(l.w, l.m.String(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// dnsPresentation is how a DNS library writes a label holding s: the
// special characters backslash-escaped, bytes outside printable ASCII as
// \DDD (miekg/dns, the query names egressd audits when they are invalid).
func dnsPresentation(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case strings.IndexByte(`"();@$\`, c) >= 0:
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x21 || c > 0x7e:
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
