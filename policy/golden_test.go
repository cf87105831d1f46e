package policy

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// updateGolden regenerates testdata/**/*.golden: go test ./policy -run Golden -update
var updateGolden = flag.Bool("update", false, "rewrite the golden files of the policy tests")

// checkGolden compares got with the golden file, or rewrites it under -update.
func checkGolden(t *testing.T, golden, got string) {
	t.Helper()
	if *updateGolden {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", golden, diff)
	}
}

// renderResolution is the golden form of a resolution: the error output as
// `egressd validate` prints it, the warnings, and the resolved profile with
// provenance.
func renderResolution(p *Profile, warnings []Warning, err error) string {
	var b strings.Builder
	if err != nil {
		b.WriteString("# error\n")
		b.WriteString(err.Error())
		b.WriteString("\n")
	}
	if len(warnings) > 0 {
		b.WriteString("# warnings\n")
		for _, w := range warnings {
			b.WriteString(w.String())
			b.WriteString("\n")
		}
	}
	if p != nil {
		b.WriteString("# profile\n")
		b.WriteString(FormatProvenance(p.Explain()))
	}
	return b.String()
}

// TestGoldenValidFiles: every valid policy file resolves, and its resolved
// profile, provenance and warnings are exactly the golden ones.
func TestGoldenValidFiles(t *testing.T) {
	files, _ := filepath.Glob("testdata/valid/*.toml")
	if len(files) == 0 {
		t.Fatal("no testdata/valid/*.toml")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			p, warnings, err := Resolve(ResolveOptions{Files: []string{file}})
			if err != nil {
				t.Fatalf("a valid file was refused:\n%v", err)
			}
			checkGolden(t, strings.TrimSuffix(file, ".toml")+".golden", renderResolution(p, warnings, nil))
		})
	}
}

// TestGoldenBrokenFiles: every broken policy file is refused by Validate with
// exactly the golden `file:line:col: message (hint)` lines.
func TestGoldenBrokenFiles(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*.toml")
	if len(files) == 0 {
		t.Fatal("no testdata/invalid/*.toml")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			warnings, err := Validate(file)
			if err == nil {
				t.Fatalf("a broken file was accepted")
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, want ErrorList: %v", err, err)
			}
			for _, e := range list {
				if e.Pos.File != file || e.Pos.Line < 1 || e.Pos.Col < 1 {
					t.Errorf("error without a position in %s: %+v", file, e)
				}
			}
			checkGolden(t, strings.TrimSuffix(file, ".toml")+".golden", renderResolution(nil, warnings, err))
		})
	}
}

// TestGoldenLayering: several layers (files and flags) resolve with the
// golden values, provenance, warnings and refusals.
func TestGoldenLayering(t *testing.T) {
	layers := func(names ...string) []string {
		for i, n := range names {
			names[i] = "testdata/layers/" + n
		}
		return names
	}
	cases := []struct {
		name string
		opts ResolveOptions
	}{
		{
			// Operator then tenant then flags: union of lists, later scalars win,
			// every value with its source; the operator's block survives the
			// tenant's allow of the same host.
			name: "operator_tenant_flags",
			opts: ResolveOptions{
				Files: layers("operator.toml", "tenant.toml"),
				Overrides: []Setting{
					{Key: "network.allow", Values: []string{"cdn.tenant.example", "pastebin.com"}, Source: Flag("--allow")},
					{Key: "process.cpus", Values: []string{"1"}, Source: Flag("--cpus")},
					{Key: "env.set", Values: []string{"RUN_ID=42"}, Source: Flag("--env")},
				},
			},
		},
		{
			// No flag can take a block away: block wins over the flag's allow.
			name: "block_cannot_be_removed",
			opts: ResolveOptions{
				Files: layers("operator.toml"),
				Overrides: []Setting{
					{Key: "network.allow", Values: []string{"pastebin.com", "x.evil.example:443"}, Source: Flag("--allow")},
					{Key: "network.block", Values: []string{}, Source: Flag("--block")},
				},
			},
		},
		{
			name: "floor_standard_refuses_loose_file",
			opts: ResolveOptions{Files: layers("loose.toml"), Floor: "standard"},
		},
		{
			name: "floor_strict_refuses_standard_and_flags",
			opts: ResolveOptions{
				Overrides: []Setting{
					{Key: "network.mode", Values: []string{"host"}, Source: Flag("--net")},
					{Key: "process.memory", Values: []string{"8g"}, Source: Flag("--memory")},
				},
				Floor: "strict",
			},
		},
		{
			name: "floor_standard_custom_seccomp_and_named_user",
			opts: ResolveOptions{Files: layers("custom_seccomp.toml"), Floor: "moderate"},
		},
		{
			name: "profile_conflict",
			opts: ResolveOptions{Files: layers("wants_strict.toml", "wants_open.toml")},
		},
		{
			name: "flag_values_get_file_checks",
			opts: ResolveOptions{
				Overrides: []Setting{
					{Key: "network.allow", Values: []string{"*github.com"}, Source: Flag("--allow")},
					{Key: "process.pids_limit", Values: []string{"lots"}, Source: Flag("--pids-limit")},
					{Key: "process.memroy", Values: []string{"1g"}, Source: Flag("--memory")},
					{Key: "process.cap_add", Values: []string{"NET_RAWW"}, Source: Flag("--cap-add")},
					{Key: "network.mode", Values: []string{"none", "host"}, Source: Flag("--net")},
				},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, warnings, err := Resolve(tc.opts)
			checkGolden(t, filepath.Join("testdata", "layers", tc.name+".golden"), renderResolution(p, warnings, err))
		})
	}
}
