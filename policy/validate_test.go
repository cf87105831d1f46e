package policy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// warningsFor resolves one file written from src and returns its warnings
// with the temp path replaced by p.toml.
func warningsFor(t *testing.T, src string) []string {
	t.Helper()
	paths := writePolicies(t, [2]string{"p.toml", src})
	warnings, err := Validate(paths[0])
	if err != nil {
		t.Fatalf("Validate: %v", err)
	}
	var out []string
	for _, w := range warnings {
		out = append(out, strings.ReplaceAll(w.String(), paths[0], "p.toml"))
	}
	return out
}

func TestValidateWarnsAboutRulesWithoutEffect(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string
	}{
		{
			name: "clean file",
			src:  "version = 1\n[network]\nallow = [\"a.example\"]\nblock = [\"b.example\"]\n",
		},
		{
			name: "allow shadowed by a wider block",
			src:  "version = 1\n[network]\nallow = [\"x.corp.example:443\", \"ok.example\"]\nblock = [\".corp.example\"]\n",
			want: []string{`p.toml:3:10: warning: allow "x.corp.example:443" has no effect: block ".corp.example" (p.toml:4:10) covers it, and block wins`},
		},
		{
			name: "block on other ports does not shadow",
			src:  "version = 1\n[network]\nallow = [\"a.example:443\"]\nblock = [\"a.example:80\"]\n",
		},
		{
			name: "blocking a built-in allow entry is how it is removed",
			src:  "version = 1\n[network]\nblock = [\"github.com\"]\n",
		},
		{
			name: "duplicate entry",
			src:  "version = 1\n[network]\nallow = [\"a.example\",\n  \"a.example\"]\n",
			want: []string{`p.toml:4:3: warning: network.allow entry "a.example" is listed twice (first at p.toml:3:10)`},
		},
		{
			name: "repeating a built-in entry is not a duplicate",
			src:  "version = 1\n[network]\nallow = [\"github.com\"]\n",
		},
		{
			name: "star in allow",
			src:  "version = 1\n[network]\nallow = [\"*\"]\n",
			want: []string{`p.toml:3:10: warning: network.allow "*" matches every name (the floors standard and strict refuse it)`},
		},
		{
			name: "star in block kills every allow, said once",
			src:  "version = 1\n[network]\nallow = [\"a.example\", \"b.example\"]\nblock = [\"*\"]\n",
			want: []string{`p.toml:4:10: warning: block "*" blocks every name, so no allow rule can take effect (filtered mode already denies what is not allowed)`},
		},
		{
			name: "allow IP rules lifting the address guard or wider than an allocation",
			src: "version = 1\n[network]\nallow = [\"203.0.113.0/24\", \"169.254.169.254:80\", \"8.0.0.0/5\",\n" +
				"  \"10.1.2.0/24\", \"10.0.0.0/8\", \"169.254.0.0/16\", \"[fd00::/64]:443\", \"0.0.0.0/0\", \"::/0\", \"127.0.0.1\"]\n",
			want: []string{
				`p.toml:3:28: warning: network.allow "169.254.169.254:80" lifts the address guard for metadata 169.254.169.254/32: the sandbox can reach those addresses (the floors standard and strict refuse it)`,
				// 8.0.0.0/5 holds 10.0.0.0/8 but lifts nothing there: only a rule
				// inside a guarded range lifts it.
				`p.toml:3:50: warning: network.allow "8.0.0.0/5" matches a range wider than an IANA allocation (/8): hosts of unrelated networks (the floors standard and strict refuse it)`,
				`p.toml:4:3: warning: network.allow "10.1.2.0/24" lifts the address guard for private 10.0.0.0/8: the sandbox can reach those addresses`,
				`p.toml:4:18: warning: network.allow "10.0.0.0/8" lifts the address guard for private 10.0.0.0/8 over more than one subnet (/24): the sandbox can reach those addresses (the floors standard and strict refuse it)`,
				`p.toml:4:32: warning: network.allow "169.254.0.0/16" lifts the address guard for link-local 169.254.0.0/16: the sandbox can reach those addresses (the floors standard and strict refuse it)`,
				`p.toml:4:50: warning: network.allow "[fd00::/64]:443" lifts the address guard for ula fc00::/7: the sandbox can reach those addresses`,
				`p.toml:4:69: warning: network.allow "0.0.0.0/0" matches every IPv4 address (the floors standard and strict refuse it)`,
				`p.toml:4:82: warning: network.allow "::/0" matches every IPv6 address (the floors standard and strict refuse it)`,
				`p.toml:4:90: warning: network.allow "127.0.0.1" lifts the address guard for loopback 127.0.0.0/8: the sandbox can reach those addresses (the floors standard and strict refuse it)`,
			},
		},
		{
			name: "every breadth class of name rules",
			src:  "version = 1\n[network]\nallow = [\n" + breadthClassRules + "]\n",
			want: breadthClassWarnings,
		},
		{
			name: "domain rules under none",
			src:  "version = 1\nprofile = \"offline\"\n[network]\nallow = [\"a.example\"]\n",
			want: []string{`p.toml:4:10: warning: allow "a.example" has no effect: network.mode = none (builtin:offline) allows no traffic at all`},
		},
		{
			name: "none over standard's list",
			src:  "version = 1\n[network]\nmode = \"none\"\n",
			want: []string{`p.toml:3:8: warning: network.mode = none: the 18 allow rules of builtin:standard have no effect`},
		},
		{
			name: "rules under host are not enforced",
			src:  "version = 1\n[network]\nmode = \"host\"\nblock = [\"169.254.169.254\"]\n",
			want: []string{
				`p.toml:3:8: warning: network.mode = host: the 18 rules of builtin:standard are not enforced`,
				`p.toml:4:10: warning: block "169.254.169.254" is not enforced: network.mode = host (p.toml:3:8) does not filter traffic`,
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, warningsFor(t, tc.src)); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

// breadthClassRules are one allow rule per line (lines 4 on, column 3) of
// every breadth class, the list first; breadthClassWarnings are
// their warnings.
const breadthClassRules = `  "**.",
  "?**",
  "*.*",
  "*.*.*",
  "*.com",
  ".com",
  "**.com",
  "*.co.uk",
  "foo*.com",
  "*.github.io",
  "*.amazonaws.com",
  "api.*",
  "*:443",
  "*.**",
  "?*",
  "*.*.com",
  "*.example.com",
  "api-*.example.com",
  ".github.com",
`

var breadthClassWarnings = func() []string {
	out := []string{}
	for i, w := range []string{
		`network.allow "**." matches every name`,
		`network.allow "?**" matches every name`,
		`network.allow "*.*" matches every name of 2 labels`,
		`network.allow "*.*.*" matches every name of 3 labels`,
		`network.allow "*.com" matches every name under the public suffix com`,
		`network.allow ".com" matches every name under the public suffix com`,
		`network.allow "**.com" matches every name under the public suffix com`,
		`network.allow "*.co.uk" matches every name under the public suffix co.uk`,
		`network.allow "foo*.com" matches names of different registrants under the public suffix com (fooa.com, foob.com)`,
		`network.allow "*.github.io" matches every name under the public suffix github.io`,
		`network.allow "*.amazonaws.com" matches every name under the public suffix s3.amazonaws.com`,
		`network.allow "api.*" matches names of more than one registrable domain (api.com, api.net)`,
		`network.allow "*:443" matches every name`,
		`network.allow "*.**" matches every name of 2 or more labels`,
		`network.allow "?*" matches every name of 1 label`,
		`network.allow "*.*.com" matches names of different registrants under the public suffix com (a.a.com, a.b.com)`,
	} {
		out = append(out, fmt.Sprintf("p.toml:%d:3: warning: %s (the floors standard and strict refuse it)", 4+i, w))
	}
	return out
}()

func TestValidateReturnsEveryErrorAsFileLineCol(t *testing.T) {
	paths := writePolicies(t, [2]string{"p.toml", "version = 1\n[process]\ncpus = \"x\"\nmemory = \"y\"\n"})
	_, err := Validate(paths[0])
	if err == nil {
		t.Fatal("accepted")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], paths[0]+":3:8: ") || !strings.HasPrefix(lines[1], paths[0]+":4:10: ") {
		t.Errorf("error output:\n%v", err)
	}
}
