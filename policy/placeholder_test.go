package policy

import (
	"strings"
	"testing"
)

// FuzzPlaceholderFor: whatever surrounds a placeholder (escapes cut in
// half, entities, stray backslashes), the placeholder inside is found, and
// decoding never panics or grows without bound.
func FuzzPlaceholderFor(f *testing.F) {
	for _, s := range []string{"", "%", `\u00`, "&#x", "&amp;", "%2", `\\`, "%25%32", "Basic ", "&#1114112;"} {
		f.Add(s, s)
	}
	m := placeholderMatcher(f)
	f.Fuzz(func(t *testing.T, before, after string) {
		s := before + "egressd-placeholder-MODEL_KEY" + after
		if c := m.PlaceholderFor("evil.test", s); c == nil {
			t.Fatalf("the placeholder in %q is not found", s)
		}
		if d := UnescapeLoose(before + after); len(d) > 4*len(before+after)+4 {
			t.Fatalf("UnescapeLoose(%q) grew to %d bytes", before+after, len(d))
		}
	})
}

// placeholderMatcher is a matcher with one credential for api.model.test.
func placeholderMatcher(tb testing.TB) *Matcher {
	tb.Helper()
	f, err := ParseFile("p.toml", []byte(`version = 1
[network]
allow = ["api.model.test"]
[[network.inspect]]
host = "api.model.test"
[[network.credentials]]
host = "api.model.test"
header = "x-api-key"
secret = "MODEL_KEY"
`))
	if err != nil {
		tb.Fatal(err)
	}
	p, _, err := ResolveFiles("", []*File{f}, nil, "")
	if err != nil {
		tb.Fatal(err)
	}
	m, err := NewMatcher(p.NetworkPolicy())
	if err != nil {
		tb.Fatal(err)
	}
	if !strings.HasPrefix(m.Credentials()[0].Placeholder, DefaultPlaceholderPrefix) {
		tb.Fatal("unexpected placeholder")
	}
	return m
}
