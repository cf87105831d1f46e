package policy

import "testing"

// FuzzPlaceholderFor: whatever surrounds a placeholder (escapes cut in
// half, entities, stray backslashes), the placeholder inside is found, and
// decoding never panics or grows without bound.
func FuzzPlaceholderFor(f *testing.F) {
	for _, s := range []string{"", "%", `\u00`, "&#x", "&amp;", "%2", `\\`, "%25%32", "Basic ", "&#1114112;"} {
		f.Add(s, s)
	}
	m := inspectionMatcher(f, modelKeyPolicy)
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
