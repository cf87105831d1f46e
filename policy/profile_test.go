package policy

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// profileValues compares profiles by value: rules by text, sources ignored.
var profileValues = cmp.Options{
	cmp.Comparer(func(a, b *Rule) bool { return a.Text == b.Text }),
	cmp.Comparer(func(a, b *InspectRule) bool { return a.Text == b.Text }),
	cmp.Comparer(func(a, b *Credential) bool { return a.Text == b.Text && a.Placeholder == b.Placeholder }),
	cmpopts.IgnoreFields(Profile{}, "Sources"),
	cmpopts.IgnoreFields(Tmpfs{}, "Source"),
	cmpopts.EquateEmpty(),
	cmpopts.EquateComparable(netip.AddrPort{}),
}

func ruleTexts(rules []*Rule) []string {
	var texts []string
	for _, r := range rules {
		texts = append(texts, r.Text)
	}
	return texts
}

func mustBuiltin(t *testing.T, name string) *Profile {
	t.Helper()
	p, err := BuiltinProfile(name)
	if err != nil {
		t.Fatalf("BuiltinProfile(%q): %v", name, err)
	}
	return p
}

func TestBuiltinProfilesMatchTheDesignTable(t *testing.T) {
	type row struct {
		Mode      Mode
		ReadOnly  bool
		Tmpfs     int
		User      string
		NoNewPriv bool
		Caps      int
		Seccomp   string
		Pids      int64
		Memory    int64
		CPUs      float64
		Pass      []string
	}
	roTmpfs := 6
	want := map[string]row{
		"open":     {ModeHost, false, 0, "0:0", false, 0, SeccompUnconfined, 0, 0, 0, []string{"HOME", "LANG", "LC_ALL", "PATH", "TERM", "TZ"}},
		"standard": {ModeFiltered, false, 0, "2000000000:2000000000", true, 0, SeccompModerate, 256, 4 << 30, 2, []string{"LANG", "LC_ALL", "TERM", "TZ"}},
		"strict":   {ModeFiltered, true, roTmpfs, "2000000000:2000000000", true, 0, SeccompStrict, 128, 2 << 30, 1, []string{"LANG", "LC_ALL", "TERM", "TZ"}},
		"offline":  {ModeNone, true, roTmpfs, "2000000000:2000000000", true, 0, SeccompStrict, 128, 2 << 30, 1, nil},
	}
	if diff := cmp.Diff([]string{"open", "standard", "strict", "offline"}, BuiltinNames()); diff != "" {
		t.Errorf("BuiltinNames (-want +got):\n%s", diff)
	}
	for name, w := range want {
		p := mustBuiltin(t, name)
		got := row{p.Network.Mode, p.Filesystem.ReadOnly, len(p.Filesystem.Tmpfs), p.Process.User.String(),
			p.Process.NoNewPrivileges, len(p.Process.CapAdd), p.Process.Seccomp, p.Process.PidsLimit,
			p.Process.Memory, p.Process.CPUs, p.Env.Pass}
		if diff := cmp.Diff(w, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
		if p.Name != name {
			t.Errorf("%s: Name = %q", name, p.Name)
		}
		// Shared defaults.
		if diff := cmp.Diff([]uint16{80, 443}, p.Network.DefaultPorts); diff != "" {
			t.Errorf("%s default_ports (-want +got):\n%s", name, diff)
		}
		if p.Network.DNSBlockResponse != DNSNXDomain || p.Filesystem.Workspace != "/sandbox" || p.Filesystem.MountCwd ||
			p.Process.Timeout != 0 || len(p.Network.Block) != 0 || len(p.Commands.Allow)+len(p.Commands.Block) != 0 {
			t.Errorf("%s: shared defaults differ: %+v", name, p)
		}
	}
}

func TestStandardAllowListIsExact(t *testing.T) {
	want := []string{
		"github.com", "api.github.com", "raw.githubusercontent.com", "codeload.github.com",
		"objects.githubusercontent.com", "registry.npmjs.org", "pypi.org", "files.pythonhosted.org",
		"crates.io", "static.crates.io", "index.crates.io", "proxy.golang.org", "sum.golang.org",
		"rubygems.org", "registry-1.docker.io", "api.anthropic.com", "api.openai.com", "api.githubcopilot.com",
	}
	if diff := cmp.Diff(want, StandardAllow()); diff != "" {
		t.Errorf("StandardAllow (-want +got):\n%s", diff)
	}
	StandardAllow()[0] = "evil.example" // a caller's copy, not the profile's
	p := mustBuiltin(t, "standard")
	if diff := cmp.Diff(want, ruleTexts(p.Network.Allow)); diff != "" {
		t.Errorf("standard allow list (-want +got):\n%s", diff)
	}
	for _, r := range p.Network.Allow {
		if r.Source != Builtin("standard") {
			t.Errorf("rule %q has source %v, want builtin:standard", r.Text, r.Source)
		}
	}
	if got := mustBuiltin(t, "strict").Network.Allow; len(got) != 0 {
		t.Errorf("strict allows %v; its allow list is the tenant's alone", ruleTexts(got))
	}
}

func TestProfileAliasesResolveToTheirProfile(t *testing.T) {
	for alias, want := range map[string]string{
		"permissive": "open", "moderate": "standard", "restrictive": "offline",
		"open": "open", "standard": "standard", "strict": "strict", "offline": "offline",
	} {
		p := mustBuiltin(t, alias)
		if p.Name != want {
			t.Errorf("BuiltinProfile(%q).Name = %q, want %q", alias, p.Name, want)
		}
		if diff := cmp.Diff(mustBuiltin(t, want), p, profileValues); diff != "" {
			t.Errorf("alias %q differs from %q (-want +got):\n%s", alias, want, diff)
		}
		if src := p.SourceOf("process.memory"); src != Builtin(want) {
			t.Errorf("alias %q: source %v, want builtin:%s", alias, src, want)
		}
	}
	_, err := BuiltinProfile("stirct")
	if err == nil || !strings.Contains(err.Error(), `did you mean "strict"?`) {
		t.Errorf("unknown profile error = %v, want a did-you-mean", err)
	}
}

func TestBuiltinProfileReturnsAFreshCopy(t *testing.T) {
	a := mustBuiltin(t, "strict")
	a.Filesystem.Tmpfs[0].Options[0] = "changed"
	a.Env.Pass[0] = "CHANGED"
	a.Sources["process.memory"] = Flag("--x")
	b := mustBuiltin(t, "strict")
	if b.Filesystem.Tmpfs[0].Options[0] == "changed" || b.Env.Pass[0] == "CHANGED" || b.Sources["process.memory"] != Builtin("strict") {
		t.Error("changing one BuiltinProfile result changed the next")
	}
}

func TestEveryBuiltinValueHasAProvenance(t *testing.T) {
	for _, name := range BuiltinNames() {
		for _, e := range mustBuiltin(t, name).Explain() {
			if e.Source != "builtin:"+name {
				t.Errorf("%s: %s = %s has source %q", name, e.Field, e.Value, e.Source)
			}
		}
	}
}

// TestTOMLRoundTrips: `egressd profile show` prints a policy file that
// resolves back to the same profile, for every built-in and for a layered
// profile with flags.
func TestTOMLRoundTrips(t *testing.T) {
	var profiles []*Profile
	for _, name := range BuiltinNames() {
		profiles = append(profiles, mustBuiltin(t, name))
	}
	layered, _, err := Resolve(ResolveOptions{
		Files: []string{"testdata/valid/strict_tenant.toml", "testdata/layers/tenant.toml"},
		Overrides: []Setting{
			{Key: "env.set", Values: []string{`QUOTE=a "b" \c` + "\t"}},
			{Key: "process.timeout", Values: []string{"1h0m0.5s"}},
			{Key: "process.memory", Values: []string{"1536m"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	profiles = append(profiles, layered)
	forms, _, err := Resolve(ResolveOptions{Files: []string{"testdata/valid/aliases_and_forms.toml"}})
	if err != nil {
		t.Fatal(err)
	}
	profiles = append(profiles, forms)

	for _, p := range profiles {
		out, err := p.TOML()
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "show.toml")
		if err := os.WriteFile(file, out, 0o644); err != nil {
			t.Fatal(err)
		}
		back, warnings, err := Resolve(ResolveOptions{Files: []string{file}})
		if err != nil {
			t.Fatalf("%s: TOML output does not resolve: %v\n%s", p.Name, err, out)
		}
		if p.Sources["process.memory"].Kind == SourceBuiltin && len(warnings) != 0 {
			t.Errorf("%s: built-in profile's TOML output has warnings %v", p.Name, warnings)
		}
		if diff := cmp.Diff(p, back, profileValues); diff != "" {
			t.Errorf("%s: round trip (-want +got):\n%s\n%s", p.Name, diff, out)
		}
	}
}

func TestTOMLMarksValuesNotFromTheBase(t *testing.T) {
	p, _, err := Resolve(ResolveOptions{Overrides: []Setting{{Key: "process.cpus", Values: []string{"0.5"}, Source: Flag("--cpus")}}})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := p.TOML()
	if !strings.Contains(string(out), "cpus = 0.5 # flag:--cpus\n") {
		t.Errorf("flag value not marked:\n%s", out)
	}
	if strings.Contains(string(out), "# builtin:") {
		t.Errorf("base values should carry no comment:\n%s", out)
	}
}

func TestExplainRedactsEnvValues(t *testing.T) {
	p, _, err := Resolve(ResolveOptions{Overrides: []Setting{{Key: "env.set", Values: []string{"TOKEN=hunter2"}, Source: Flag("--env")}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range p.Explain() {
		if strings.Contains(e.Value, "hunter2") {
			t.Errorf("Explain leaks an env value: %+v", e)
		}
	}
	if got := FormatProvenance(p.Explain()); !strings.Contains(got, "env.set.TOKEN") || !strings.Contains(got, "flag:--env") {
		t.Errorf("Explain lacks the env entry:\n%s", got)
	}
}

func TestNetworkPolicyCarriesTheNetworkSection(t *testing.T) {
	p, _, err := Resolve(ResolveOptions{Files: []string{"testdata/valid/strict_tenant.toml"}})
	if err != nil {
		t.Fatal(err)
	}
	n := p.NetworkPolicy()
	if n.Mode != ModeFiltered || len(n.Allow) != 4 || len(n.Block) != 1 || len(n.DefaultPorts) != 2 {
		t.Errorf("NetworkPolicy = %+v", n)
	}
	m, err := NewMatcher(n)
	if err != nil {
		t.Fatalf("the matcher refuses a resolved profile: %v", err)
	}
	if d := m.DecideName("pypi.org", 443); !d.Allow || d.Rule.Source.File != "testdata/valid/strict_tenant.toml" || d.Rule.Source.Line != 8 {
		t.Errorf("pypi.org:443 → %v (%+v), want allowed by strict_tenant.toml:8", d, d.Rule)
	}
	if d := m.DecideName("metadata.internal.example.com", 443); d.Allow {
		t.Errorf("blocked name allowed: %v", d)
	}
}

func TestExpandHomeAndTmpfsDefaults(t *testing.T) {
	for in, want := range map[string]string{
		"~/.cache": "/home/sandbox/.cache", "~": "/home/sandbox", "/tmp": "/tmp", "~x/y": "~x/y",
	} {
		if got := ExpandHome(in, "/home/sandbox/"); got != want {
			t.Errorf("ExpandHome(%q) = %q, want %q", in, got, want)
		}
	}
	if m := (Tmpfs{Path: "/tmp"}).EffectiveMode(); m != 0o1777 {
		t.Errorf("/tmp default mode %o", m)
	}
	if m := (Tmpfs{Path: "~/.npm"}).EffectiveMode(); m != 0o700 {
		t.Errorf("~/.npm default mode %o", m)
	}
	tm := Tmpfs{Path: "/x", Size: 3 << 20, Mode: 0o755, Options: []string{"noexec"}}
	if got := tm.String(); got != "/x:size=3m,mode=755,noexec" {
		t.Errorf("Tmpfs.String = %q", got)
	}
}

func TestFormatSizeAndParseSizeAgree(t *testing.T) {
	for _, n := range []int64{1, 1023, 1 << 20, 3 << 30, 1536 << 20, 5 << 40, 1<<20 + 1} {
		for _, short := range []bool{false, true} {
			s := formatSize(n, short)
			back, err := parseSize(s)
			if err != nil || back != n {
				t.Errorf("parseSize(formatSize(%d)) = %q → %d, %v", n, s, back, err)
			}
		}
	}
	for in, want := range map[string]int64{"512m": 512 << 20, "4GiB": 4 << 30, "1.5g": 1536 << 20, "64 MB": 64 << 20, "100": 100, "2t": 2 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "m", "4 gigs", "1e3", "-1m", "99999999999t", "1.2.3m"} {
		if got, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", bad, got)
		}
	}
}
