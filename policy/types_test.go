package policy

import "testing"

// TestParseSourceReadsWhatStringWrites: a source handed over as text
// (serve --rule-sources) comes back as the same source.
func TestParseSourceReadsWhatStringWrites(t *testing.T) {
	for _, s := range []Source{
		Builtin("standard"),
		Flag("--block"),
		{Kind: SourceFile, File: "tenant.toml", Line: 7},
		{Kind: SourceFile, File: "/etc/egressd/a:b.toml", Line: 12},
		{Kind: SourceFile, File: "policy.toml"},
	} {
		got, err := ParseSource(s.String())
		if err != nil || got.String() != s.String() || got.Kind != s.Kind {
			t.Errorf("ParseSource(%q) = %+v, %v; want %+v", s.String(), got, err, s)
		}
	}
	if _, err := ParseSource(""); err == nil {
		t.Error("ParseSource(\"\") succeeded")
	}
}
