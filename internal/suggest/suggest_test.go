package suggest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/internal/golden"
	"github.com/egressd/egressd/policy"
)

// run suggests from files and renders policy, notes and problems.
func run(t *testing.T, opts Options, files ...string) (out string, pol []byte) {
	t.Helper()
	s := New(opts)
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Read(filepath.Base(f), fh); err != nil {
			t.Fatal(err)
		}
		fh.Close()
	}
	p, notes := s.Policy()
	text, _, err := p.Render("suggested.toml")
	if err != nil {
		t.Fatalf("the suggested policy does not render: %v\n%s", err, p.Text())
	}
	checkValidates(t, text)
	var b strings.Builder
	b.Write(text)
	b.WriteString("---- notes ----\n")
	for _, n := range notes {
		b.WriteString(n + "\n")
	}
	b.WriteString("---- problems ----\n")
	for _, p := range s.Problems() {
		b.WriteString(p.String() + "\n")
	}
	return b.String(), text
}

func checkValidates(t *testing.T, pol []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "suggested.toml")
	if err := os.WriteFile(path, pol, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := policy.Validate(path); err != nil {
		t.Errorf("the suggested policy does not pass egressd validate:\n%v\n%s", err, pol)
	}
}

func TestSuggestGolden(t *testing.T) {
	out, _ := run(t, Options{}, "testdata/audit.log")
	golden.Check(t, "testdata/audit.golden", out)
}

func TestSuggestCollapse(t *testing.T) {
	out, _ := run(t, Options{Collapse: 3, Profile: "strict"}, "testdata/audit.log")
	golden.Check(t, "testdata/audit-collapse3.golden", out)
}

// TestSuggestBadLines: every unusable line is reported with its number,
// and the good lines around them are still used.
func TestSuggestBadLines(t *testing.T) {
	out, _ := run(t, Options{}, "testdata/bad.log")
	golden.Check(t, "testdata/bad.golden", out)
}

// TestCollapseThreshold: names collapse only when at least the threshold
// lie below one suffix; the deepest such suffix is used.
func TestCollapseThreshold(t *testing.T) {
	names := []string{"a.x.example.com", "b.x.example.com", "c.example.com", "solo.example.net", "one.other.org", "two.other.org"}
	tests := []struct {
		threshold int
		want      map[string]string
	}{
		{2, map[string]string{"a.x.example.com": "example.com", "b.x.example.com": "example.com", "c.example.com": "example.com",
			"one.other.org": "other.org", "two.other.org": "other.org"}},
		{3, map[string]string{"a.x.example.com": "example.com", "b.x.example.com": "example.com", "c.example.com": "example.com"}},
		{4, map[string]string{}},
	}
	for _, tt := range tests {
		got, _ := collapse(names, tt.threshold)
		for n, s := range got {
			if s == "" {
				delete(got, n)
			}
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("threshold %d (-want +got):\n%s", tt.threshold, diff)
		}
	}
	// Deepest first: two names under x.example.com, nothing else.
	got, _ := collapse([]string{"a.x.example.com", "b.x.example.com"}, 2)
	if got["a.x.example.com"] != "x.example.com" {
		t.Errorf("collapse picked %q, want the deepest suffix x.example.com", got["a.x.example.com"])
	}
}

// TestCollapseNeverOverPublicSuffix: names below a public suffix (ICANN's
// co.uk, or a private one such as github.io) are different owners' and are
// never collapsed into *.suffix, however many there are.
func TestCollapseNeverOverPublicSuffix(t *testing.T) {
	names := []string{"a.github.io", "b.github.io", "c.github.io", "shop.co.uk", "bank.co.uk", "mail.co.uk",
		"x.com", "y.com", "z.com", "bucket-a.s3.amazonaws.com", "bucket-b.s3.amazonaws.com"}
	into, notes := collapse(names, 2)
	for _, n := range names {
		if s := into[n]; s != "" {
			t.Errorf("%s collapsed into *.%s, a public suffix or above", n, s)
		}
	}
	for _, ps := range []string{"github.io", "co.uk", "com", "s3.amazonaws.com"} {
		if !strings.Contains(strings.Join(notes, "\n"), "below "+ps+" kept exact") {
			t.Errorf("no note says why the names below %s were kept exact: %q", ps, notes)
		}
	}
}

// FuzzSuggestNeverPanics: any bytes as an audit log give problems, never a
// panic, and a policy that egressd accepts.
func FuzzSuggestNeverPanics(f *testing.F) {
	for _, name := range []string{"testdata/audit.log", "testdata/bad.log"} {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, 0)
		f.Add(data, 2)
	}
	f.Fuzz(func(t *testing.T, data []byte, collapse int) {
		s := New(Options{Collapse: collapse % 5})
		if err := s.Read("fuzz.log", bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		p, _ := s.Policy()
		if _, _, err := p.Render("fuzz.toml"); err != nil {
			t.Fatalf("suggested policy refused: %v\n%s", err, p.Text())
		}
	})
}

func TestSuggestLongLine(t *testing.T) {
	long := `{"kind":"tls","target":"` + strings.Repeat("a", MaxLine) + `","port":443,"decision":"deny"}` + "\n" +
		`{"kind":"tls","target":"after.example.org","port":443,"decision":"deny","reason":"no-allow-rule"}` + "\n"
	s := New(Options{})
	if err := s.Read("long.log", strings.NewReader(long)); err != nil {
		t.Fatal(err)
	}
	if got := s.Problems(); len(got) != 1 || got[0].Line != 1 || !strings.Contains(got[0].Msg, "longer than") {
		t.Errorf("problems %v, want one for line 1 being too long", got)
	}
	p, _ := s.Policy()
	if !p.Has("network.allow", "after.example.org") {
		t.Errorf("the line after the long one was not used:\n%s", p.Text())
	}
}

// TestFailuresAreNeitherDenialsNorProblems: a request the policy allowed
// and the upstream then failed (outcome error) needs no rule: it is
// counted apart, never suggested, never a bad line.
func TestFailuresAreNeitherDenialsNorProblems(t *testing.T) {
	s := New(Options{})
	log := `{"time":"2026-01-01T00:00:00Z","kind":"tls","target":"pypi.org","port":443,"decision":"error","reason":"resolver-timeout"}
{"time":"2026-01-01T00:00:00Z","kind":"connect","target":"new.test","port":443,"decision":"deny","reason":"no-allow-rule"}
`
	if err := s.Read("audit.jsonl", strings.NewReader(log)); err != nil {
		t.Fatal(err)
	}
	if ps := s.Problems(); len(ps) != 0 {
		t.Errorf("problems: %v", ps)
	}
	p, _ := s.Policy()
	text := string(p.Text())
	if strings.Contains(text, "pypi.org") || !strings.Contains(text, "new.test") || !strings.Contains(text, "1 allowed but failed upstream") {
		t.Errorf("suggested:\n%s", text)
	}
}

// TestReportModeRawStreamIsLearnedByName: a would-deny of raw TCP to an
// address learned for a name (kind tcp, "name" set) becomes a rule for the
// name on its port, which admits raw TCP in filtered mode; without a name
// the address is allowed.
func TestReportModeRawStreamIsLearnedByName(t *testing.T) {
	s := New(Options{})
	log := `{"time":"2026-01-01T00:00:00Z","kind":"tcp","target":"203.0.113.7","name":"git.example","port":22,"decision":"would-deny","reason":"no-allow-rule"}
{"time":"2026-01-01T00:00:00Z","kind":"tcp","target":"203.0.113.8","port":5432,"decision":"would-deny","reason":"no-allow-rule"}
`
	if err := s.Read("audit.jsonl", strings.NewReader(log)); err != nil {
		t.Fatal(err)
	}
	p, _ := s.Policy()
	text := string(p.Text())
	for _, want := range []string{`"git.example:22"`, `"203.0.113.8:5432"`} {
		if !strings.Contains(text, want) {
			t.Errorf("suggested policy lacks %s:\n%s", want, text)
		}
	}
	if strings.Contains(text, "203.0.113.7") {
		t.Errorf("the learned address was suggested instead of its name:\n%s", text)
	}
}
