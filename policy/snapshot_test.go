package policy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSourceOfIsStringsInverse(t *testing.T) {
	for _, src := range []Source{
		{},
		Builtin("standard"),
		Flag("--allow"),
		{Kind: SourceFile, File: "policy.toml", Line: 12, Col: 3},
		{Kind: SourceFile, File: "/etc/egressd/tenant.toml", Line: 7},
		{Kind: SourceFile, File: "no-line.toml"},
		{Kind: SourceFile, File: "odd:name:3.toml", Line: 4},
		{Kind: SourceFile, File: "builtin:looks-like.toml", Line: 9},
	} {
		s := src.String()
		if got := sourceOf(s).String(); got != s {
			t.Errorf("sourceOf(%q).String() = %q", s, got)
		}
	}
	// The kind comes back too, where the string says it: the resolver
	// treats built-in rules apart (no warnings about them).
	want := []Source{Builtin("strict"), Flag("--block"), {Kind: SourceFile, File: "t.toml", Line: 7}, {Kind: SourceFile, File: "x:07"}}
	for i, s := range []string{"builtin:strict", "flag:--block", "t.toml:7", "x:07"} {
		if d := cmp.Diff(want[i], sourceOf(s)); d != "" {
			t.Errorf("sourceOf(%q) (-want +got):\n%s", s, d)
		}
	}
}

func FuzzParseSource(f *testing.F) {
	for _, s := range []string{"", "a.toml:1", "builtin:", "flag:--x", "x:0", "x:01", ":5", "a:b:c:12", "x:+3", "x:99999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got := sourceOf(s).String(); got != s {
			t.Fatalf("sourceOf(%q).String() = %q", s, got)
		}
	})
}

// writeSnapshot writes entries as a snapshot file and returns its path.
func writeSnapshot(t *testing.T, entries []Provenance) string {
	t.Helper()
	data, err := MarshalSnapshot(entries)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "snapshot.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSnapshotGivesBackTheResolvedPolicy: a snapshot of a resolved profile,
// read on its own, resolves to the same values with the same sources, for
// every built-in, the layered test policies and flags: the launcher's
// handoff to egressd loses nothing and keeps every rule's origin.
func TestSnapshotGivesBackTheResolvedPolicy(t *testing.T) {
	type launch struct {
		name    string
		opts    ResolveOptions
		section []string
	}
	var cases []launch
	for _, name := range BuiltinNames() {
		cases = append(cases, launch{"builtin " + name, ResolveOptions{Profile: name}, []string{"network"}})
		cases = append(cases, launch{"builtin " + name + ", every field", ResolveOptions{Profile: name}, nil})
	}
	valid, _ := filepath.Glob("testdata/valid/*.toml")
	for _, f := range valid {
		cases = append(cases, launch{f, ResolveOptions{Files: []string{f}}, nil})
	}
	cases = append(cases, launch{"operator, tenant, flags", ResolveOptions{
		Files: []string{"testdata/layers/operator.toml", "testdata/layers/tenant.toml"},
		Overrides: []Setting{
			{Key: "network.allow", Values: []string{"pypi.org", "203.0.113.7:8443"}, Source: Flag("--allow")},
			{Key: "network.block", Values: []string{"*.evil.test"}, Source: Flag("--block")},
			{Key: "network.upstream_dns", Values: []string{"192.0.2.53"}, Source: Flag("--upstream-dns")},
			{Key: "env.set", Values: []string{"A=1"}, Source: Flag("--env")},
		},
	}, nil})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, _, err := Resolve(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			want := p.Snapshot(tc.section...)
			q, _, err := Resolve(ResolveOptions{Files: []string{writeSnapshot(t, want)}})
			if err != nil {
				t.Fatalf("reading the snapshot back: %v", err)
			}
			if d := cmp.Diff(want, q.Snapshot(tc.section...)); d != "" {
				t.Errorf("snapshot read back (-want +got):\n%s", d)
			}
			// The rules themselves, not only their rendering: the
			// matcher decides with the same rules from the same sources.
			for i, list := range [][2][]*Rule{{p.Network.Allow, q.Network.Allow}, {p.Network.Block, q.Network.Block}} {
				if len(list[0]) != len(list[1]) {
					t.Fatalf("list %d: %d rules, read back %d", i, len(list[0]), len(list[1]))
				}
				for j := range list[0] {
					a, b := list[0][j], list[1][j]
					if a.Text != b.Text || a.Source.String() != b.Source.String() || a.Source.Kind != b.Source.Kind {
						t.Errorf("rule %d: %q from %v, read back %q from %v", j, a.Text, a.Source, b.Text, b.Source)
					}
				}
			}
		})
	}
}

// TestSnapshotOfGetPolicyReadsBack: what GET /policy shows, the inspection
// CA's line included, is a snapshot.
func TestSnapshotOfGetPolicyReadsBack(t *testing.T) {
	p, _, err := Resolve(ResolveOptions{Files: []string{"testdata/valid/inspect.toml"}})
	if err != nil {
		t.Fatal(err)
	}
	shown := append(p.Explain(), Provenance{Field: FieldInspectCA, Value: `"ab12"`, Source: "/etc/egressd/ca.pem"})
	data, err := json.MarshalIndent(shown, "", "  ") // GET /policy's encoding
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	q, _, err := Resolve(ResolveOptions{Files: []string{path}})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(p.Explain(), q.Explain()); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestSnapshotErrorsSayWhere(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
	}{
		{"not a list", `{"field": "profile"}`, `s.json:1:1: policy snapshot: not a JSON list`},
		{"unknown field", "[\n  {\"field\": \"network.alow\", \"value\": \"\\\"a.test\\\"\", \"source\": \"t.toml:3\"}\n]", `s.json:2:3: unknown field "network.alow" (did you mean "network.allow"?)`},
		{"unknown key in an entry", "[\n{\"field\": \"network.allow\", \"value\": \"\\\"a.test\\\"\", \"src\": \"x\"}]", `s.json:2:1: policy snapshot: json: unknown field "src"`},
		{"bad rule", "[\n\n  {\"field\": \"network.allow\", \"value\": \"\\\"*github.com\\\"\", \"source\": \"t.toml:3\"}]", `s.json:3:3: `},
		{"not TOML", `[{"field": "network.allow", "value": "a.test", "source": ""}]`, `s.json:1:2: network.allow: value "a.test": `},
		{"two lines", `[{"field": "network.allow", "value": "\"a\"\n", "source": ""}]`, `a snapshot value is one line of TOML`},
		{"cut short", `[{"field": "profile", "value": "\"strict\"", "source": ""}`, `policy snapshot: the list is cut short`},
		{"trailing data", `[] []`, `s.json:1:4: policy snapshot: data after the list`},
		{"unknown profile", `[{"field": "profile", "value": "\"lax\"", "source": ""}]`, `unknown profile "lax"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFile("s.json", []byte(tc.data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
