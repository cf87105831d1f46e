package policyimport

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egressd/egressd/internal/golden"
	"github.com/egressd/egressd/policy"
)

// TestImportGolden imports every file under testdata/FORMAT/ and compares
// the policy and the warnings with FILE.golden. Each imported policy must
// pass `egressd validate` (policy.Validate on the written file).
func TestImportGolden(t *testing.T) {
	for _, f := range formats {
		files, err := filepath.Glob(filepath.Join("testdata", f.name, "*"))
		if err != nil {
			t.Fatal(err)
		}
		for _, file := range files {
			if strings.HasSuffix(file, ".golden") {
				continue
			}
			t.Run(f.name+"/"+filepath.Base(file), func(t *testing.T) {
				data, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				opts := Options{}
				if f.name == "smokescreen" {
					opts.Service = serviceFor(filepath.Base(file))
				}
				res, err := Import(f.name, filepath.Base(file), data, opts)
				var got string
				if err != nil {
					got = "error: " + err.Error() + "\n"
				} else {
					got = renderResult(res)
					checkValidates(t, res.Policy)
				}
				golden.Check(t, file+".golden", got)
			})
		}
	}
}

// serviceFor picks the smokescreen service a test file is imported for:
// "name@service.yaml" imports service; otherwise the default rule.
func serviceFor(base string) string {
	stem := strings.TrimSuffix(base, filepath.Ext(base))
	if _, svc, ok := strings.Cut(stem, "@"); ok {
		return svc
	}
	return ""
}

func renderResult(res *Result) string {
	var b strings.Builder
	b.Write(res.Policy)
	b.WriteString("---- warnings ----\n")
	for _, w := range res.Warnings {
		b.WriteString(w.String() + "\n")
	}
	if len(res.Validate) > 0 {
		b.WriteString("---- egressd validate ----\n")
		for _, w := range res.Validate {
			b.WriteString(w.String() + "\n")
		}
	}
	return b.String()
}

// checkValidates writes the policy and runs egressd's own validation on it.
func checkValidates(t *testing.T, pol []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "imported.toml")
	if err := os.WriteFile(path, pol, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := policy.Validate(path); err != nil {
		t.Errorf("the imported policy does not pass egressd validate:\n%v\n%s", err, pol)
	}
}

func TestImportRefusesBrokenSources(t *testing.T) {
	tests := []struct {
		format, name, data, want string
	}{
		{"isol8", "c.json", `{"network": {"whitelist": ["a"]}`, "c.json:1: unexpected end of JSON"},
		{"isol8", "c.json", "{\n \"network\": {\"whitelist\": \"^a$\"}}", "c.json:2: network.whitelist must be an array of strings, not a string"},
		{"isol8", "c.json", "{\"a\": 1,\n \"a\": 2}", `c.json:2: duplicate key "a" in the top level`},
		{"isol8", "c.json", `[1]`, "c.json:1: the file must hold an object, not an array"},
		{"isol8", "c.json", `{} {}`, "c.json:1: text after the end of the JSON value"},
		{"isol8", "c.json", `{"defaults": {"network": "open"}}`, `c.json:1: defaults.network must be "none", "host" or "filtered", not "open"`},
		{"agentkernel", "a.toml", "[security]\nprofile = 3\n", "a.toml:2: security.profile must be a string, not a number"},
		{"agentkernel", "a.toml", "[security]\nprofile = \"lax\"\n", `a.toml:2: security.profile must be "permissive", "moderate", "restrictive" or "custom", not "lax"`},
		{"agentkernel", "a.toml", "[security\n", "a.toml:1:"},
		{"smokescreen", "s.yaml", "version: v2\nservices: []\n", `s.yaml:1: version must be "v1"`},
		{"smokescreen", "s.yaml", "a: &a [*a]\n", "s.yaml"},
		{"sandbox-runtime", "s.json", `{"network": {"allowedDomains": "x"}}`, "s.json:1: network.allowedDomains must be an array of strings, not a string"},
		{"nosuch", "x", `{}`, `unknown format "nosuch"`},
	}
	for _, tt := range tests {
		_, err := Import(tt.format, tt.name, []byte(tt.data), Options{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s %q: err = %v, want it to contain %q", tt.format, tt.data, err, tt.want)
		}
	}
	var se *SourceError
	if _, err := Import("isol8", "c.json", []byte(`{`), Options{}); !errors.As(err, &se) {
		t.Errorf("a broken source: %T %v, want a *SourceError", err, err)
	}
	if _, err := Import("isol8", "c.json", []byte(`{}`), Options{Service: "x"}); err == nil {
		t.Error("--service with isol8 was accepted")
	}
}
