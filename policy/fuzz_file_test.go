package policy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParseFile: the policy file parser never panics on any input, every
// error it reports carries a position inside the input, and a file it
// accepts resolves to a profile whose TOML rendering parses back to the
// same values.
func FuzzParseFile(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*.toml")
	for _, s := range seeds {
		if data, err := os.ReadFile(s); err == nil {
			f.Add(data)
		}
	}
	for _, s := range []string{
		"", "version = 1", "version = 1\n[[filesystem.tmpfs]]\npath = \"/x\"\n",
		"version = 1\na.b.c = 1\n[a.b]\n", "version = 1\nx = [[[[]]]]\n", "version = 1\n[env]\nset = {}\n",
		"version = 1\r\n[network]\r\nallow = [\r\n\"a.example\",\r\n]\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "fuzz.toml"
		file, err := ParseFile(name, data)
		if err != nil {
			checkErrorPositions(t, name, data, err)
			return
		}
		p, _, err := ResolveFiles("", []*File{file}, nil, "")
		if err != nil {
			// Resolution errors (a profile conflict cannot happen with one
			// file; a capability that breaks filtering can) are positioned too.
			checkErrorPositions(t, name, data, err)
			return
		}
		out, err := p.TOML()
		if err != nil {
			t.Fatalf("TOML: %v", err)
		}
		back, err := ParseFile("show.toml", out)
		if err != nil {
			t.Fatalf("TOML output does not parse: %v\n%s", err, out)
		}
		p2, _, err := ResolveFiles("", []*File{back}, nil, "")
		if err != nil {
			t.Fatalf("TOML output does not resolve: %v\n%s", err, out)
		}
		if diff := cmp.Diff(p, p2, profileValues); diff != "" {
			t.Fatalf("round trip (-want +got):\n%s\n%s", diff, out)
		}
	})
}

// checkErrorPositions fails unless err is an ErrorList whose every entry
// names file and a line:col inside data.
func checkErrorPositions(t *testing.T, file string, data []byte, err error) {
	t.Helper()
	var list ErrorList
	if !errors.As(err, &list) || len(list) == 0 {
		t.Fatalf("error is %T, want a non-empty ErrorList: %v", err, err)
	}
	lines := bytes.Split(data, []byte("\n"))
	for _, e := range list {
		pos := e.Pos
		if pos.Kind != SourceFile || pos.File != file {
			t.Fatalf("error not in the file: %+v", e)
		}
		if pos.Line < 1 || pos.Line > len(lines) {
			t.Fatalf("line %d outside 1..%d: %v", pos.Line, len(lines), e)
		}
		if pos.Col < 1 || pos.Col > len(lines[pos.Line-1])+1 {
			t.Fatalf("column %d outside line %d of length %d: %v", pos.Col, pos.Line, len(lines[pos.Line-1]), e)
		}
		if e.Msg == "" {
			t.Fatalf("error without a message at %v", pos)
		}
	}
}
