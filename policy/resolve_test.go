package policy

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// writePolicies writes name → contents into a temp dir and returns the paths
// in the order given.
func writePolicies(t *testing.T, files ...[2]string) []string {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for _, f := range files {
		p := filepath.Join(dir, f[0])
		if err := os.WriteFile(p, []byte(f[1]), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

func TestLayeringMergesListsByUnionAndScalarsByLastLayer(t *testing.T) {
	paths := writePolicies(t,
		[2]string{"a.toml", `version = 1
profile = "strict"
[network]
allow = ["a.example", "shared.example"]
default_ports = [443]
[process]
memory = "1g"
cpus = 0.5
cap_add = ["KILL"]
[env]
pass = ["A"]
set = { X = "from-a", Y = "a" }
[commands]
block = ["nc"]
`},
		[2]string{"b.toml", `version = 1
[network]
allow = ["shared.example", "b.example"]
default_ports = [8443]
[process]
memory = "1536m"
cap_add = ["CHOWN", "KILL"]
[env]
pass = ["B", "A"]
set = { X = "from-b" }
[commands]
block = ["wget"]
`})
	p, warnings, err := Resolve(ResolveOptions{
		Files: paths,
		Overrides: []Setting{
			{Key: "network.allow", Values: []string{"c.example"}, Source: Flag("--allow")},
			{Key: "process.cpus", Values: []string{"0.25"}, Source: Flag("--cpus")},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	a, b := paths[0], paths[1]
	type got struct {
		Allow              []string
		Ports              []uint16
		Memory             int64
		CPUs               float64
		Caps, Pass, Blocks []string
		Set                map[string]string
		Src                map[string]string
	}
	src := func(key string) string { return p.SourceOf(key).String() }
	want := got{
		Allow:  []string{"a.example", "shared.example", "b.example", "c.example"},
		Ports:  []uint16{8443},
		Memory: 1536 << 20,
		CPUs:   0.25,
		Caps:   []string{"CAP_KILL", "CAP_CHOWN"},
		Pass:   []string{"LANG", "LC_ALL", "TERM", "TZ", "A", "B"},
		Blocks: []string{"nc", "wget"},
		Set:    map[string]string{"X": "from-b", "Y": "a"},
		Src: map[string]string{
			"profile":                       a + ":2",
			"network.allow[shared.example]": a + ":4",
			"network.allow[c.example]":      "flag:--allow",
			"network.default_ports":         b + ":4",
			"process.memory":                b + ":6",
			"process.cpus":                  "flag:--cpus",
			"process.pids_limit":            "builtin:strict",
			"process.cap_add[CAP_KILL]":     a + ":9",
			"env.set.X":                     b + ":10",
			"env.set.Y":                     a + ":12",
		},
	}
	g := got{ruleTexts(p.Network.Allow), p.Network.DefaultPorts, p.Process.Memory, p.Process.CPUs,
		p.Process.CapAdd, p.Env.Pass, p.Commands.Block, p.Env.Set, map[string]string{}}
	for k := range want.Src {
		g.Src[k] = src(k)
	}
	if diff := cmp.Diff(want, g); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// The rule keeps its first source too, for decisions.
	for _, r := range p.Network.Allow {
		if r.Text == "shared.example" && (r.Source.File != a || r.Source.Line != 4) {
			t.Errorf("shared.example source = %v, want %s:4", r.Source, a)
		}
	}
	var dups []string
	for _, w := range warnings {
		if strings.Contains(w.Msg, "listed twice") {
			dups = append(dups, w.String())
		}
	}
	if len(dups) != 3 { // shared.example, CAP_KILL, A
		t.Errorf("duplicate warnings = %q, want 3", dups)
	}
}

// TestNoLayerCanRemoveABlock: a block written anywhere stays, whatever later
// files and flags allow, and the compiled matcher denies the name.
func TestNoLayerCanRemoveABlock(t *testing.T) {
	paths := writePolicies(t,
		[2]string{"operator.toml", "version = 1\n[network]\nblock = [\"*.paste.example\"]\n"},
		[2]string{"tenant.toml", "version = 1\n[network]\nallow = [\"x.paste.example\"]\nblock = []\n"})
	p, warnings, err := Resolve(ResolveOptions{
		Files: paths,
		Overrides: []Setting{
			{Key: "network.allow", Values: []string{"y.paste.example:443", "*"}, Source: Flag("--allow")},
			{Key: "network.block", Values: nil, Source: Flag("--block")},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"*.paste.example"}, ruleTexts(p.Network.Block)); diff != "" {
		t.Errorf("block list (-want +got):\n%s", diff)
	}
	m, err := NewMatcher(p.NetworkPolicy())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"x.paste.example", "y.paste.example"} {
		d := m.DecideName(name, 443)
		if d.Allow || d.Reason != ReasonBlockedBy || d.Rule.Source.File != paths[0] {
			t.Errorf("%s → %v, want blocked by %s", name, d, paths[0])
		}
	}
	shadowed := 0
	for _, w := range warnings {
		if strings.Contains(w.Msg, "block wins") {
			shadowed++
		}
	}
	if shadowed != 2 {
		t.Errorf("want a shadowed warning for each tenant allow of a blocked name, got %v", warnings)
	}
}

func TestBaseProfileIsNamedOnce(t *testing.T) {
	paths := writePolicies(t,
		[2]string{"strict.toml", "version = 1\nprofile = \"strict\"\n"},
		[2]string{"open.toml", "version = 1\nprofile = \"open\"\n"},
		[2]string{"none.toml", "version = 1\n"},
		[2]string{"alias.toml", "version = 1\nprofile = \"moderate\"\n"},
		[2]string{"standard.toml", "version = 1\nprofile = \"standard\"\n"})
	strict, open, none, alias, standard := paths[0], paths[1], paths[2], paths[3], paths[4]
	cases := []struct {
		name    string
		profile string
		files   []string
		want    string // profile name, or an error prefix
	}{
		{"default", "", []string{none}, "standard"},
		{"file chooses", "", []string{none, strict}, "strict"},
		{"launch chooses", "offline", []string{none}, "offline"},
		{"alias equals its profile", "", []string{alias, standard}, "standard"},
		{"launch alias and file agree", "restrictive", nil, "offline"},
		{"files disagree", "", []string{strict, open}, open + `:2:11: profile "open" conflicts with profile "strict" named at ` + strict + ":2:11"},
		{"launch and file disagree", "open", []string{strict}, strict + `:2:11: profile "strict" conflicts with profile "open" named at flag:--profile`},
		{"unknown launch profile", "stirct", nil, `flag:--profile: unknown profile "stirct" (did you mean "strict"?)`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, _, err := Resolve(ResolveOptions{Profile: tc.profile, Files: tc.files})
			got := ""
			if err != nil {
				got = err.Error()
			} else {
				got = p.Name
			}
			if !strings.HasPrefix(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestCapabilitiesThatBypassFilteringAreRefused: NET_ADMIN and friends would
// let the sandbox rewrite its firewall or forge egressd's socket mark
// (NET_RAW: SO_MARK since Linux 5.17).
func TestCapabilitiesThatBypassFilteringAreRefused(t *testing.T) {
	for _, c := range []string{"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_BPF"} {
		if !slices.Contains(filterBreakingCaps, c) {
			t.Errorf("%s is not refused in filtered mode", c)
		}
	}
	for _, c := range filterBreakingCaps {
		_, _, err := Resolve(ResolveOptions{Overrides: []Setting{{Key: "process.cap_add", Values: []string{c}, Source: Flag("--cap-add")}}})
		if err == nil || !strings.Contains(err.Error(), "flag:--cap-add: process.cap_add "+c+" would let the sandbox bypass") {
			t.Errorf("%s under filtered: err = %v", c, err)
		}
		for _, mode := range []string{"host", "none"} {
			_, _, err := Resolve(ResolveOptions{Overrides: []Setting{
				{Key: "process.cap_add", Values: []string{c}},
				{Key: "network.mode", Values: []string{mode}},
			}})
			if err != nil {
				t.Errorf("%s under %s: %v", c, mode, err)
			}
		}
	}
}

func TestResolveReportsEveryFileInOrder(t *testing.T) {
	paths := writePolicies(t,
		[2]string{"1.toml", "version = 1\n[network]\nmode = \"x\"\nallow = [1]\n"},
		[2]string{"2.toml", "[process]\ncpus = -1\n"})
	missing := filepath.Join(t.TempDir(), "missing.toml")
	_, _, err := Resolve(ResolveOptions{
		Files:     []string{paths[0], missing, paths[1]},
		Overrides: []Setting{{Key: "network.mode", Values: []string{"y"}, Source: Flag("--net")}},
	})
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("err = %v", err)
	}
	var where []string
	for _, e := range list {
		where = append(where, positionString(e.Pos))
	}
	want := []string{paths[0] + ":3:8", paths[0] + ":4:10", missing, paths[1] + ":1:1", paths[1] + ":2:8", "flag:--net"}
	if diff := cmp.Diff(want, where); diff != "" {
		t.Errorf("error positions (-want +got):\n%s\n%v", diff, err)
	}
	if !strings.Contains(list[2].Error(), "cannot open policy file: no such file or directory") {
		t.Errorf("missing file error = %q", list[2].Error())
	}
}

func TestPolicyFileLargerThanTheLimitIsRefused(t *testing.T) {
	paths := writePolicies(t, [2]string{"big.toml", "version = 1\n" + strings.Repeat("# padding\n", MaxFileSize/10+1)})
	_, err := Validate(paths[0])
	if err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Errorf("err = %v", err)
	}
}

func TestLaterTmpfsEntryKeepsEarlierRestrictions(t *testing.T) {
	p, _, err := Resolve(ResolveOptions{
		Profile:   "strict",
		Overrides: []Setting{{Key: "filesystem.tmpfs", Values: []string{"/tmp:size=2g,noexec"}, Source: Flag("--tmpfs")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := p.Filesystem.Tmpfs[0]
	if got.String() != "/tmp:size=2g,mode=1777,nodev,noexec,nosuid" || got.Source != Flag("--tmpfs") {
		t.Errorf("/tmp = %s from %v", got, got.Source)
	}
}

func TestResolveFilesMatchesResolve(t *testing.T) {
	paths := writePolicies(t, [2]string{"a.toml", "version = 1\nprofile = \"strict\"\n[network]\nallow = [\"a.example\"]\n"})
	data, _ := os.ReadFile(paths[0])
	f, err := ParseFile(paths[0], data)
	if err != nil {
		t.Fatal(err)
	}
	over := []Setting{{Key: "process.memory", Values: []string{"1g"}}}
	p1, _, err1 := Resolve(ResolveOptions{Files: paths, Overrides: over, Floor: "strict"})
	p2, _, err2 := ResolveFiles("", []*File{f}, over, "strict")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if diff := cmp.Diff(p1, p2, cmp.Comparer(func(a, b *Rule) bool { return a.Text == b.Text && a.Source == b.Source })); diff != "" {
		t.Errorf("(-Resolve +ResolveFiles):\n%s", diff)
	}
}
