package policy

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// parseErrors parses src as p.toml and returns its error lines.
func parseErrors(t *testing.T, src string) []string {
	t.Helper()
	_, err := ParseFile("p.toml", []byte(src))
	if err == nil {
		return nil
	}
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("ParseFile error is %T, want ErrorList: %v", err, err)
	}
	return strings.Split(list.Error(), "\n")
}

func TestParseFilePointsAtTheOffendingValue(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string
	}{
		{
			name: "unknown key with did-you-mean",
			src:  "version = 1\n[network]\n  alow = []\n",
			want: []string{`p.toml:3:3: unknown key "alow" in [network] (did you mean "allow"?)`},
		},
		{
			name: "key in the wrong section",
			src:  "version = 1\n[process]\nmode = \"none\"\n",
			want: []string{`p.toml:3:1: unknown key "mode" in [process] (mode belongs in [network])`},
		},
		{
			name: "key of two sections",
			src:  "version = 1\n[env]\nallow = []\n",
			want: []string{`p.toml:3:1: unknown key "allow" in [env] (allow belongs in [network] or [commands])`},
		},
		{
			name: "case typo",
			src:  "version = 1\n[network]\nMode = \"none\"\n",
			want: []string{`p.toml:3:1: unknown key "Mode" in [network] (did you mean "mode"?)`},
		},
		{
			name: "array element position",
			src:  "version = 1\n[network]\nallow = [\n  \"ok.example\",\n    \"*bad.example\",\n]\n",
			want: []string{"p.toml:5:5: network.allow: \"*bad.example\" is not a valid pattern: "},
		},
		{
			name: "array value position",
			src:  "version = 1\n[process]\npids_limit =   [1]\n",
			want: []string{"p.toml:3:16: process.pids_limit must be an integer, not an array (for example: pids_limit = 256; 0 means no limit)"},
		},
		{
			name: "nested value in an inline table",
			src:  "version = 1\n[filesystem]\ntmpfs = [{ path = \"/t\", mode = 777 }]\n",
			want: []string{`p.toml:3:32: filesystem.tmpfs: mode must be a string, not an integer (write the octal mode as a string: mode = "1777")`},
		},
		{
			name: "CRLF line endings",
			src:  "version = 1\r\n[process]\r\nmemory = \"lots\"\r\n",
			want: []string{`p.toml:3:10: process.memory: "lots" is not a size (use a number with a unit: "512m", "4GiB")`},
		},
		{
			name: "columns count bytes",
			src:  "version = 1\n[env]\nset = { A = \"É\", B = 1 }\n",
			want: []string{"p.toml:3:23: env.set: each entry must be a string, not an integer"},
		},
		{
			name: "version written as a string",
			src:  "version = \"1\"\n",
			want: []string{`p.toml:1:11: version must be an integer, not a string (write version = 1, a number)`},
		},
		{
			name: "integer overflow",
			src:  "version = 1\n[process]\npids_limit = 99999999999999999999\n",
			want: []string{"p.toml:3:14: integer 99999999999999999999 does not fit in 64 bits"},
		},
		{
			name: "errors in file order",
			src:  "version = 1\n[process]\ncpus = \"x\"\n[network]\nmode = 1\n[process.x]\n",
			want: []string{
				`p.toml:3:8: process.cpus must be a number, not a string (for example: cpus = 1.5; 0 means no limit)`,
				`p.toml:5:8: network.mode must be "none", "filtered", "report" or "host", not an integer (for example: mode = "filtered")`,
				`p.toml:6:1: unknown key "x" in [process] (keys of [process] are user, allow_host_user, pids_limit, memory, cpus, timeout, no_new_privileges, cap_add, seccomp)`,
			},
		},
		{
			name: "unknown profile",
			src:  "version = 1\nprofile = \"paranoid\"\n",
			want: []string{`p.toml:2:11: unknown profile "paranoid" (built-in profiles are "moderate", "offline", "open", "permissive", "restrictive", "standard" or "strict")`},
		},
		{
			name: "upstream IPv6 with port needs brackets",
			src:  "version = 1\n[network]\nupstream_dns = [\"2001:db8::1::53\"]\n",
			want: []string{`p.toml:3:17: network.upstream_dns: "2001:db8::1::53" is not an IP address or IP:port (put an IPv6 address with a port in brackets: "[2001:db8::53]:53")`},
		},
		{
			name: "empty default ports",
			src:  "version = 1\n[network]\ndefault_ports = []\n",
			want: []string{`p.toml:3:17: network.default_ports must list at least one port (to allow no port by default, give every allow rule its port ("example.com:443"))`},
		},
		{
			name: "array of tables where strings belong",
			src:  "version = 1\n[[network.allow]]\nx = 1\n",
			want: []string{`p.toml:2:1: network.allow must be an array, not an array of tables ([[...]]) (for example: allow = ["example.com", "*.example.com:443"])`},
		},
		{
			name: "file too large",
			src:  "version = 1\n" + strings.Repeat("#", MaxFileSize),
			want: []string{"p.toml:1:1: policy file is 1048588 bytes, more than the limit of 1048576"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := parseErrors(t, tc.src)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%s", len(got), len(tc.want), strings.Join(got, "\n"))
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Errorf("error %d:\n got %s\nwant %s…", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// TestTOMLStructureErrorsAreRefused: what TOML forbids is refused with the
// place of both definitions, never silently merged.
func TestTOMLStructureErrorsAreRefused(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"duplicate key", "version = 1\nversion = 1\n", `p.toml:2:1: duplicate key "version" (first set at line 1, column 1)`},
		{"duplicate key in inline table", "version = 1\n[env]\nset = { A = \"1\", A = \"2\" }\n", `p.toml:3:18: duplicate key "A" (first set at line 3, column 9)`},
		{"duplicate dotted key", "version = 1\nprocess.cpus = 1\nprocess.cpus = 2\n", `p.toml:3:9: duplicate key "process.cpus" (first set at line 2, column 9)`},
		{"table twice", "version = 1\n[env]\n[env]\n", `p.toml:3:1: table [env] defined twice (first defined at line 2, column 1; put all its keys under one header)`},
		{"header after dotted keys", "version = 1\nenv.pass = []\n[env]\n", `p.toml:3:1: table [env] was already created by a dotted key (first set at line 2, column 1)`},
		{"dotted key into a header table", "version = 1\n[env.set]\n[env]\nset.A = \"x\"\n", `p.toml:4:1: table set is defined by a [header] and cannot be extended with a dotted key (first defined at line 2, column 1; put the key under that header)`},
		{"extend inline table", "version = 1\nenv = { pass = [] }\n[env.set]\n", `p.toml:3:2: table env was written inline ({ ... }) and cannot be extended (first set at line 2, column 1)`},
		{"value then table", "version = 1\nnetwork = 1\n[network]\n", `p.toml:3:1: key network is already an integer, not a table (first set at line 2, column 1)`},
		{"array of tables onto a static array", "version = 1\nfilesystem.tmpfs = []\n[[filesystem.tmpfs]]\n", `p.toml:3:1: [[filesystem.tmpfs]] adds to an array of tables, but filesystem.tmpfs is already an array (first set at line 2, column 12)`},
		{"syntax error at end of input", "version = 1\n[network", `p.toml:2:8: TOML syntax error: `},
		{"unterminated string", "version = 1\n[network]\nmode = \"none\n", `p.toml:3:13: TOML syntax error: `},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := parseErrors(t, tc.src)
			if len(got) != 1 || !strings.HasPrefix(got[0], tc.want) {
				t.Errorf("got\n%s\nwant one error starting\n%s", strings.Join(got, "\n"), tc.want)
			}
		})
	}
}

func TestParseFileAcceptsEveryTOMLSpelling(t *testing.T) {
	src := `version = 0x1
profile = 'standard'
process = { pids_limit = 1_000, memory = 1073741824, cpus = 1.5e0 }

[network]
"mode" = """filtered"""
allow = [
  # a comment inside the array
  "example.com", 'literal.example',
]

[[filesystem.tmpfs]]
path = "/scratch"
size = 0o10000000000

[env.set]
"QUOTED" = "v"
`
	f, err := ParseFile("p.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := ResolveFiles("", []*File{f}, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	got := []any{p.Process.PidsLimit, p.Process.Memory, p.Process.CPUs, p.Network.Mode,
		ruleTexts(p.Network.Allow)[18:], p.Filesystem.Tmpfs[0].Size, p.Env.Set["QUOTED"], f.Profile}
	want := []any{int64(1000), int64(1 << 30), 1.5, ModeFiltered,
		[]string{"example.com", "literal.example"}, int64(1 << 30), "v", "standard"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestSettingsAreCheckedLikeFileValues: a flag value passes the same
// decoders as the same key in a file, with the flag as its position.
func TestSettingsAreCheckedLikeFileValues(t *testing.T) {
	good := []Setting{
		{Key: "network.mode", Values: []string{"none"}, Source: Flag("--net")},
		{Key: "filesystem.read_only", Values: []string{"true"}, Source: Flag("--read-only")},
		{Key: "process.pids_limit", Values: []string{"64"}, Source: Flag("--pids-limit")},
		{Key: "process.cpus", Values: []string{"0.5"}, Source: Flag("--cpus")},
		{Key: "process.memory", Values: []string{"1g"}, Source: Flag("--memory")},
		{Key: "process.cap_add", Values: []string{"net_bind_service"}, Source: Flag("--cap-add")},
		{Key: "filesystem.tmpfs", Values: []string{"/scratch:size=64m,noexec"}, Source: Flag("--tmpfs")},
		{Key: "env.set", Values: []string{"A=1", "B=x=y"}, Source: Flag("--env")},
		{Key: "network.default_ports", Values: []string{"443"}},
	}
	p, _, err := Resolve(ResolveOptions{Overrides: good})
	if err != nil {
		t.Fatal(err)
	}
	got := []any{p.Network.Mode, p.Filesystem.ReadOnly, p.Process.PidsLimit, p.Process.CPUs, p.Process.Memory,
		p.Process.CapAdd, p.Filesystem.Tmpfs[0].String(), p.Env.Set, p.Network.DefaultPorts,
		p.SourceOf("network.mode").String(), p.SourceOf("network.default_ports").String(),
		p.SourceOf("filesystem.tmpfs[/scratch]").String(), p.SourceOf("env.set.B").String()}
	want := []any{ModeNone, true, int64(64), 0.5, int64(1 << 30),
		[]string{"CAP_NET_BIND_SERVICE"}, "/scratch:size=64m,noexec", map[string]string{"A": "1", "B": "x=y"}, []uint16{443},
		"flag:--net", "flag:--network.default_ports", "flag:--tmpfs", "flag:--env"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}

	bad := []Setting{
		{Key: "filesystem.read_only", Values: []string{"maybe"}, Source: Flag("--read-only")},
		{Key: "env.set", Values: []string{"NOVALUE"}, Source: Flag("--env")},
		{Key: "network.allow", Values: []string{"ok.example", "bad..example"}, Source: Flag("--allow")},
		{Key: "profile", Values: []string{"open"}, Source: Flag("--profile")},
		{Key: "network.upstream_dns", Values: []string{"0.0.0.0"}, Source: Flag("--dns")},
	}
	_, _, err = Resolve(ResolveOptions{Overrides: bad})
	wantErr := []string{
		`flag:--read-only: filesystem.read_only must be true or false, not "maybe"`,
		`flag:--env: env.set: "NOVALUE" has no '=' (write NAME=value)`,
		`flag:--allow: network.allow: "bad..example" is not a valid pattern: `,
		`flag:--profile: unknown setting "profile" (the base profile is ResolveOptions.Profile)`,
		`flag:--dns: network.upstream_dns: "0.0.0.0" is not a unicast address`,
	}
	var list ErrorList
	if !errors.As(err, &list) || len(list) != len(wantErr) {
		t.Fatalf("got %v, want %d errors", err, len(wantErr))
	}
	for i, e := range list {
		if !strings.HasPrefix(e.Error(), wantErr[i]) {
			t.Errorf("error %d:\n got %s\nwant %s…", i, e.Error(), wantErr[i])
		}
	}
}

func TestValueDecoders(t *testing.T) {
	cases := []struct {
		name, line string
		check      func(p *Profile) any
		want       any
		err        string
	}{
		{"user uid only", `process.user = "1000"`, func(p *Profile) any { return p.Process.User }, User{UID: 1000, GID: 1000}, ""},
		{"user uid:gid", `process.user = "1000:50"`, func(p *Profile) any { return p.Process.User }, User{UID: 1000, GID: 50}, ""},
		{"user integer", `process.user = 7`, func(p *Profile) any { return p.Process.User }, User{UID: 7, GID: 7}, ""},
		{"user name", `process.user = "nobody"`, func(p *Profile) any { return p.Process.User }, User{Name: "nobody"}, ""},
		{"user too big", `process.user = "4294967295"`, nil, nil, "is not a user"},
		{"user bad gid", `process.user = "1:x"`, nil, nil, `group "x" is not a numeric gid`},
		{"timeout zero int", `process.timeout = 0`, func(p *Profile) any { return p.Process.Timeout.String() }, "0s", ""},
		{"timeout zero string", `process.timeout = "0"`, func(p *Profile) any { return p.Process.Timeout.String() }, "0s", ""},
		{"timeout negative", `process.timeout = "-1s"`, nil, nil, "must not be negative"},
		{"memory zero is no limit", `process.memory = "0"`, func(p *Profile) any { return p.Process.Memory }, int64(0), ""},
		{"memory negative", `process.memory = -1`, nil, nil, "must not be negative"},
		{"cpus nan", `process.cpus = nan`, nil, nil, "is out of range"},
		{"cpus int", `process.cpus = 3`, func(p *Profile) any { return p.Process.CPUs }, 3.0, ""},
		{"pids zero is no limit", `process.pids_limit = 0`, func(p *Profile) any { return p.Process.PidsLimit }, int64(0), ""},
		{"pids negative", `process.pids_limit = -5`, nil, nil, "process.pids_limit must not be negative (0 means no limit)"},
		{"seccomp path", `process.seccomp = "/etc/s.json"`, func(p *Profile) any { return p.Process.Seccomp }, "/etc/s.json", ""},
		{"seccomp case", `process.seccomp = "STRICT"`, func(p *Profile) any { return p.Process.Seccomp }, "strict", ""},
		{"seccomp unclean path", `process.seccomp = "/etc/../s.json"`, nil, nil, `did you mean "/s.json"?`},
		{"cap normalised", `process.cap_add = ["cap_kill", "Kill"]`, func(p *Profile) any { return p.Process.CapAdd }, []string{"CAP_KILL"}, ""},
		{"upstream v4 default port", `network.upstream_dns = ["192.0.2.1", "192.0.2.1:53"]`, func(p *Profile) any { return len(p.Network.UpstreamDNS) }, 1, ""},
		{"upstream mapped v6", `network.upstream_dns = ["[::ffff:192.0.2.1]:5353"]`, func(p *Profile) any { return p.Network.UpstreamDNS[0].String() }, "192.0.2.1:5353", ""},
		{"upstream zone", `network.upstream_dns = ["fe80::1%eth0"]`, nil, nil, "IPv6 zones are not allowed"},
		{"upstream port zero", `network.upstream_dns = ["192.0.2.1:0"]`, nil, nil, "has port 0"},
		{"workspace root", `filesystem.workspace = "/"`, nil, nil, "mounting over / is not allowed"},
		{"workspace unclean", `filesystem.workspace = "/a/./b/"`, nil, nil, `did you mean "/a/b"?`},
		{"tmpfs home", `filesystem.tmpfs = ["~"]`, nil, nil, "whole home directory"},
		{"tmpfs home unclean", `filesystem.tmpfs = ["~/a/../b"]`, nil, nil, `did you mean "~/b"?`},
		{"tmpfs bad mode", `filesystem.tmpfs = ["/t:mode=999"]`, nil, nil, `mode "999" is not an octal mode`},
		{"tmpfs dev", `filesystem.tmpfs = ["/dev/shm"]`, nil, nil, "mounting over /dev is not allowed"},
		{"command name", `commands.block = ["curl", "/usr/bin/wget"]`, func(p *Profile) any { return p.Commands.Block }, []string{"curl", "/usr/bin/wget"}, ""},
		{"command dotdot", `commands.block = [".."]`, nil, nil, "is not a command name or path"},
		{"env value NUL", "env.set.A = \"a\\u0000b\"", nil, nil, "NUL byte"},
		{"dns response", `network.dns_block_response = "REFUSED"`, func(p *Profile) any { return p.Network.DNSBlockResponse }, DNSRefused, ""},
		{"expose", `filesystem.expose = ["/opt/toolchains", "/srv/data"]`, func(p *Profile) any { return p.Filesystem.Expose }, []string{"/opt/toolchains", "/srv/data"}, ""},
		{"expose relative", `filesystem.expose = ["opt/x"]`, nil, nil, `host path "opt/x" is not absolute`},
		{"expose unclean", `filesystem.expose = ["/opt//x/"]`, nil, nil, `did you mean "/opt/x"?`},
		{"expose the host", `filesystem.expose = ["/"]`, nil, nil, "host path / is never given to a sandbox: it is the whole host"},
		{"expose root's home", `filesystem.expose = ["/root"]`, nil, nil, "it is root's home"},
		{"expose root's keys", `filesystem.expose = ["/root/.ssh"]`, nil, nil, "hidden entry of root's home"},
		{"expose every home", `filesystem.expose = ["/home"]`, nil, nil, "every user's home"},
		{"expose a home", `filesystem.expose = ["/home/alice"]`, nil, nil, "it is a user's home"},
		{"expose a home's config", `filesystem.expose = ["/home/alice/.config/gh"]`, nil, nil, "hidden entry of a user's home"},
		{"expose a project in a home", `filesystem.expose = ["/home/alice/src/lib", "/root/src"]`, func(p *Profile) any { return p.Filesystem.Expose }, []string{"/home/alice/src/lib", "/root/src"}, ""},
		{"expose a socket dir", `filesystem.expose = ["/var/run/docker.sock"]`, nil, nil, "runtime state and sockets"},
		{"expose devices", `filesystem.expose = ["/dev/kvm"]`, nil, nil, "kernel interfaces and devices"},
		{"volume", `filesystem.volumes = ["/srv/a:~/.claude", "/srv/b:/data:ro"]`, func(p *Profile) any { return p.Filesystem.Volumes },
			[]Volume{{Host: "/srv/a", Path: "~/.claude"}, {Host: "/srv/b", Path: "/data", ReadOnly: true}}, ""},
		{"volume etc", `filesystem.volumes = ["/etc/app:/app"]`, nil, nil, "host's configuration"},
		{"volume no target", `filesystem.volumes = ["/srv/a"]`, nil, nil, `is not HOST:PATH[:rw|ro]`},
		{"volume bad mode", `filesystem.volumes = ["/srv/a:/a:rx"]`, nil, nil, `mode "rx" is not rw or ro`},
		{"volume over home", `filesystem.volumes = ["/srv/a:~"]`, nil, nil, "whole home directory"},
		{"volume over proc", `filesystem.volumes = ["/srv/a:/proc/x"]`, nil, nil, "mounting over /proc is not allowed"},
		{"protect", `filesystem.protect = [".tool/", "bin/setup"]`, func(p *Profile) any { return p.Filesystem.EffectiveProtect()[len(DefaultProtect()):] },
			[]string{".tool/", "bin/setup"}, ""},
		{"protect twice with and without slash", `filesystem.protect = [".idea", ".claude"]`, func(p *Profile) any { return len(p.Filesystem.Protect) }, len(DefaultProtect()), ""},
		{"unprotect", `filesystem.unprotect = [".idea"]`, func(p *Profile) any { return slices.Contains(p.Filesystem.EffectiveProtect(), ".idea/") }, false, ""},
		{"protect absolute", `filesystem.protect = ["/sandbox/.envrc"]`, nil, nil, "is not a relative path"},
		{"protect escapes", `filesystem.protect = ["../x"]`, nil, nil, "is not a clean path inside the workspace"},
		{"protect pattern", `filesystem.protect = ["*.sh"]`, nil, nil, "is a pattern"},
		{"allow host user", `process.allow_host_user = true`, func(p *Profile) any { return p.Process.AllowHostUser }, true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := ParseFile("p.toml", []byte("version = 1\n"+tc.line+"\n"))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p, _, err := ResolveFiles("", []*File{f}, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, tc.check(p)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestErrorFormats(t *testing.T) {
	e := &Error{Pos: Source{Kind: SourceFile, File: "a.toml", Line: 3, Col: 7}, Msg: "bad", Hint: "fix it"}
	if got := e.Error(); got != "a.toml:3:7: bad (fix it)" {
		t.Errorf("Error() = %q", got)
	}
	list := ErrorList{e, {Pos: Flag("--x"), Msg: "worse"}}
	if got := list.Error(); got != "a.toml:3:7: bad (fix it)\nflag:--x: worse" {
		t.Errorf("ErrorList.Error() = %q", got)
	}
	var one *Error
	if !errors.As(error(list), &one) || one != e {
		t.Error("errors.As does not find an *Error in an ErrorList")
	}
	w := Warning{Source: Source{Kind: SourceFile, File: "a.toml", Line: 1, Col: 2}, Msg: "hm"}
	if got := w.String(); got != "a.toml:1:2: warning: hm" {
		t.Errorf("Warning.String() = %q", got)
	}
}

func TestDidYouMeanOnlySuggestsNearMisses(t *testing.T) {
	known := []string{"allow", "block", "mode", "default_ports"}
	for in, want := range map[string]string{
		"alow": "allow", "blokc": "block", "MODE": "mode", "default_port": "default_ports",
		"zzz": "", "x": "", strings.Repeat("a", 200): "",
	} {
		if got := didYouMean(in, known); got != want {
			t.Errorf("didYouMean(%q) = %q, want %q", in, got, want)
		}
	}
}
