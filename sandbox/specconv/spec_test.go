package specconv

import (
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/pid1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// goldenOptions are fixed launch inputs, so a spec depends on its profile.
func goldenOptions(t *testing.T, p *policy.Profile) SpecOptions {
	t.Helper()
	user := User{UID: p.Process.User.UID, GID: p.Process.User.GID, Home: defaultHome(p.Process.User.UID)}
	env, err := BuildEnv(p, user.Home, "", []string{"TERM=xterm", "LANG=C.UTF-8", "PATH=/host/bin", "HOME=/root", "AWS_SECRET_ACCESS_KEY=x"},
		[]string{"CI=1"}, "http://127.0.0.1:3128")
	if err != nil {
		t.Fatal(err)
	}
	opts := SpecOptions{
		Args:        []string{"/bin/sh", "-c", "echo hello"},
		Env:         env,
		Hostname:    "egt-golden",
		RootfsDir:   "/run/egressd/egt-golden/upper-tmpfs/root",
		User:        user,
		CgroupsPath: "egressd/egt-golden",
		Seccomp:     SeccompEnv{Arch: "amd64", Kernel: [2]uint64{6, 1}},
		Passwd:      "/run/egressd/egt-golden/etc/passwd",
		Group:       "/run/egressd/egt-golden/etc/group",
		HiddenPaths: HiddenEtcPaths,
	}
	// The host view of a merged-/usr host: /etc and /usr (links are in the
	// root itself), each a throwaway overlay under a writable root for a
	// user that may own files there (root).
	for _, d := range []string{"/etc", "/usr"} {
		b := ViewMount{Path: d, Source: d, Kind: MountSystem, Origin: "the host view (" + p.Name + ")"}
		if !p.Filesystem.ReadOnly && user.UID == 0 {
			b.Source, b.Writable = "/run/egressd/egt-golden/view"+d, true
		}
		opts.Binds = append(opts.Binds, b)
	}
	if p.Network.Mode == policy.ModeFiltered {
		opts.NetNSPath = "/run/netns/egt-golden"
		opts.ResolvConf = "/run/egressd/egt-golden/resolv.conf"
		opts.Hosts = "/run/egressd/egt-golden/hosts"
	}
	return opts
}

func builtin(t *testing.T, name string) *policy.Profile {
	t.Helper()
	p, err := policy.BuiltinProfile(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProfileToSpecGolden renders each built-in profile and a few custom
// ones to an OCI spec and compares with testdata/spec-*.json (-update
// rewrites them).
func TestProfileToSpecGolden(t *testing.T) {
	customSeccomp, err := filepath.Abs("testdata/seccomp/oci-style.json")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		build  func(t *testing.T) *policy.Profile
		modify func(*SpecOptions)
	}{
		{"open", func(t *testing.T) *policy.Profile { return builtin(t, "open") }, nil},
		{"standard", func(t *testing.T) *policy.Profile { return builtin(t, "standard") }, nil},
		{"strict", func(t *testing.T) *policy.Profile { return builtin(t, "strict") }, nil},
		{"offline", func(t *testing.T) *policy.Profile { return builtin(t, "offline") }, nil},
		{"cap-add", func(t *testing.T) *policy.Profile {
			p := builtin(t, "standard")
			p.Process.CapAdd = []string{"CAP_NET_BIND_SERVICE", "CAP_CHOWN"}
			return p
		}, nil},
		{"custom-seccomp", func(t *testing.T) *policy.Profile {
			p := builtin(t, "strict")
			p.Process.Seccomp = customSeccomp
			return p
		}, nil},
		{"blocked-commands", func(t *testing.T) *policy.Profile {
			p := builtin(t, "strict")
			p.Commands.Block = []string{"curl", "wget"}
			return p
		}, func(o *SpecOptions) {
			o.MaskPaths = []string{"/usr/bin/wget", "/usr/bin/curl", "/usr/local/bin/curl"}
		}},
		{"mount-cwd", func(t *testing.T) *policy.Profile {
			p := builtin(t, "offline")
			p.Filesystem.MountCwd = true
			p.Filesystem.Workspace = "/work"
			p.Filesystem.Tmpfs = []policy.Tmpfs{{Path: "/tmp", Size: 1 << 30, Options: []string{"noexec"}}, {Path: "~/.cache"}}
			return p
		}, func(o *SpecOptions) {
			o.WorkspaceDir = "/home/dev/project"
			o.Cwd = "/work/src"
			o.Protected = []ProtectedPath{
				{Path: "/work/.git", Host: "/home/dev/project/.git", How: ProtectPinned, Entry: ".git/hooks/", Root: "/work"},
				{Path: "/work/.git/config", Host: "/home/dev/project/.git/config", How: ProtectReadOnly, Entry: ".git/config", Root: "/work"},
				{Path: "/work/.git/hooks", Host: "/home/dev/project/.git/hooks", How: ProtectReadOnly, Entry: ".git/hooks/", Root: "/work"},
				{Path: "/work/.envrc", Host: "/home/dev/project/.envrc", How: ProtectPlaceholder, Entry: ".envrc", Root: "/work"},
			}
		}},
		{"volumes", func(t *testing.T) *policy.Profile { return builtin(t, "strict") }, func(o *SpecOptions) {
			o.Binds = append(o.Binds,
				ViewMount{Path: "/home/sandbox/.claude", Source: "/srv/agents/42/claude", Kind: MountVolume, Writable: true, Origin: "filesystem.volumes /srv/agents/42/claude:~/.claude:rw (p.toml:3)"},
				ViewMount{Path: "/home/sandbox/.config/gh", Source: "/srv/agents/42/gh", Kind: MountVolume, Origin: "filesystem.volumes /srv/agents/42/gh:~/.config/gh:ro (p.toml:3)"},
				ViewMount{Path: "/opt/toolchains", Source: "/opt/toolchains", Kind: MountExpose, Origin: "filesystem.expose (p.toml:4)"},
			)
			o.Protected = []ProtectedPath{{Path: "/home/sandbox/.claude/.git", Host: "/srv/agents/42/claude/.git", How: ProtectPlaceholder, Dir: true, Entry: ".git/hooks/", Root: "/home/sandbox/.claude"}}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.build(t)
			opts := goldenOptions(t, p)
			if tc.modify != nil {
				tc.modify(&opts)
			}
			spec, err := BuildSpec(p, opts)
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.MarshalIndent(spec, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := filepath.Join("testdata", "spec-"+tc.name+".json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if d := cmp.Diff(string(want), string(got)); d != "" {
				t.Errorf("%s differs (-want +got); run with -update if intended\n%s", golden, d)
			}
			// The same inputs give the same spec.
			again, _ := BuildSpec(p, opts)
			if d := cmp.Diff(spec, again); d != "" {
				t.Errorf("BuildSpec is not deterministic:\n%s", d)
			}
		})
	}
}

func mountAt(s *specs.Spec, dest string) *specs.Mount {
	for i := range s.Mounts {
		if s.Mounts[i].Destination == dest {
			return &s.Mounts[i]
		}
	}
	return nil
}

// TestSpecGuarantees checks, for every built-in profile, the properties the
// design promises whatever the profile.
func TestSpecGuarantees(t *testing.T) {
	for _, name := range policy.BuiltinNames() {
		t.Run(name, func(t *testing.T) {
			p := builtin(t, name)
			s, err := BuildSpec(p, goldenOptions(t, p))
			if err != nil {
				t.Fatal(err)
			}
			if s.Process.Capabilities == nil {
				t.Fatal("no capabilities struct: runc would keep all of root's capabilities")
			}
			if n := len(s.Process.Capabilities.Bounding) + len(s.Process.Capabilities.Effective) + len(s.Process.Capabilities.Ambient); n != 0 {
				t.Errorf("capabilities kept without cap_add: %+v", s.Process.Capabilities)
			}
			for _, ns := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace, specs.CgroupNamespace} {
				if !slices.ContainsFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == ns }) {
					t.Errorf("no %s namespace", ns)
				}
			}
			if slices.ContainsFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.UserNamespace }) {
				t.Error("a user namespace")
			}
			tmp := mountAt(s, "/tmp")
			if tmp == nil || tmp.Type != "tmpfs" || !slices.Contains(tmp.Options, "noexec") || !slices.Contains(tmp.Options, "nosuid") || !slices.Contains(tmp.Options, "nodev") {
				t.Errorf("/tmp = %+v, want a noexec,nosuid,nodev tmpfs", tmp)
			}
			for _, hidden := range []string{"/run", "/var/tmp"} {
				if m := mountAt(s, hidden); m == nil || m.Type != "tmpfs" {
					t.Errorf("%s does not hide the host's (THREATS F5: host sockets)", hidden)
				}
			}
			ws := mountAt(s, "/sandbox")
			if ws == nil || slices.Contains(ws.Options, "noexec") || slices.Contains(ws.Options, "ro") {
				t.Errorf("workspace = %+v, want writable and executable", ws)
			}
			if sys := mountAt(s, "/sys"); sys == nil || !slices.Contains(sys.Options, "ro") {
				t.Error("/sys is not read-only")
			}
			if !slices.Contains(s.Linux.MaskedPaths, "/proc/kcore") || !slices.Contains(s.Linux.ReadonlyPaths, "/proc/sys") {
				t.Error("runc's default masked/read-only paths missing")
			}
			if s.Root.Readonly != p.Filesystem.ReadOnly {
				t.Errorf("root read-only %v, profile says %v", s.Root.Readonly, p.Filesystem.ReadOnly)
			}
			if s.Process.NoNewPrivileges != p.Process.NoNewPrivileges {
				t.Errorf("no_new_privileges %v, profile says %v", s.Process.NoNewPrivileges, p.Process.NoNewPrivileges)
			}
			if (s.Linux.Seccomp == nil) != (p.Process.Seccomp == policy.SeccompUnconfined) {
				t.Errorf("seccomp %v for %q", s.Linux.Seccomp != nil, p.Process.Seccomp)
			}
			if m := s.Linux.Resources.Memory; p.Process.Memory > 0 && (m == nil || *m.Limit != p.Process.Memory || *m.Swap != *m.Limit) {
				t.Errorf("memory %+v, want limit = memory+swap = %d", m, p.Process.Memory)
			}
			if p.Process.PidsLimit <= 0 && s.Linux.Resources.Pids != nil {
				t.Error("a pids limit without one in the profile")
			}
		})
	}
}

func TestSpecNetworkModes(t *testing.T) {
	tests := []struct {
		mode    policy.Mode
		netns   string
		wantNS  *specs.LinuxNamespace
		wantErr string
	}{
		{policy.ModeFiltered, "/run/netns/x", &specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/run/netns/x"}, ""},
		{policy.ModeFiltered, "", nil, "network mode filtered needs the sandbox's network namespace"},
		{policy.ModeNone, "", &specs.LinuxNamespace{Type: specs.NetworkNamespace}, ""},
		{policy.ModeNone, "/run/netns/y", &specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/run/netns/y"}, ""},
		{policy.ModeHost, "", nil, ""},
		{policy.ModeHost, "/run/netns/z", nil, "network mode host shares the host's network namespace"},
		{policy.ModeNone, "relative", nil, "not an absolute clean path"},
		{"wifi", "", nil, `unknown network mode "wifi"`},
	}
	for _, tc := range tests {
		t.Run(string(tc.mode)+"/"+tc.netns, func(t *testing.T) {
			p := builtin(t, "strict")
			p.Network.Mode = tc.mode
			opts := goldenOptions(t, builtin(t, "offline"))
			opts.NetNSPath = tc.netns
			s, err := BuildSpec(p, opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got *specs.LinuxNamespace
			for i, n := range s.Linux.Namespaces {
				if n.Type == specs.NetworkNamespace {
					got = &s.Linux.Namespaces[i]
				}
			}
			if d := cmp.Diff(tc.wantNS, got); d != "" {
				t.Errorf("network namespace (-want +got)\n%s", d)
			}
		})
	}
}

func TestSpecCapAddForNonRootIsAmbient(t *testing.T) {
	p := builtin(t, "standard")
	p.Process.CapAdd = []string{"net_bind_service"}
	opts := goldenOptions(t, p)
	s, err := BuildSpec(p, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"CAP_NET_BIND_SERVICE"}
	c := s.Process.Capabilities
	for name, got := range map[string][]string{"bounding": c.Bounding, "effective": c.Effective, "permitted": c.Permitted, "inheritable": c.Inheritable, "ambient": c.Ambient} {
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("%s (-want +got)\n%s", name, d)
		}
	}
	opts.User = User{Home: "/root"}
	s, _ = BuildSpec(p, opts)
	if len(s.Process.Capabilities.Ambient) != 0 || len(s.Process.Capabilities.Inheritable) != 0 {
		t.Errorf("root gets ambient/inheritable capabilities: %+v", s.Process.Capabilities)
	}
	p.Process.CapAdd = []string{"CAP_TELEPORT"}
	if _, err := BuildSpec(p, opts); err == nil {
		t.Error("an unknown capability was accepted")
	}
}

func TestSpecResources(t *testing.T) {
	tests := []struct {
		name string
		pr   policy.ProcessSettings
		want *specs.LinuxResources
	}{
		{"none", policy.ProcessSettings{}, &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Access: "rwm"}}}},
		{"negative pids is no limit", policy.ProcessSettings{PidsLimit: -1}, &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Access: "rwm"}}}},
		{"all", policy.ProcessSettings{PidsLimit: 64, Memory: 1 << 30, CPUs: 1.5}, &specs.LinuxResources{
			Devices: []specs.LinuxDeviceCgroup{{Access: "rwm"}},
			Pids:    &specs.LinuxPids{Limit: ptr(int64(64))},
			Memory:  &specs.LinuxMemory{Limit: ptr(int64(1 << 30)), Swap: ptr(int64(1 << 30))},
			CPU:     &specs.LinuxCPU{Quota: ptr(int64(150000)), Period: ptr(uint64(100000))},
		}},
		{"tiny cpu share gets the kernel minimum", policy.ProcessSettings{CPUs: 0.001}, &specs.LinuxResources{
			Devices: []specs.LinuxDeviceCgroup{{Access: "rwm"}},
			CPU:     &specs.LinuxCPU{Quota: ptr(int64(1000)), Period: ptr(uint64(100000))},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, buildResources(tc.pr)); d != "" {
				t.Errorf("(-want +got)\n%s", d)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestSpecRefusesBadInput: inputs that would weaken or confuse the sandbox
// are errors, never a spec.
func TestSpecRefusesBadInput(t *testing.T) {
	tests := []struct {
		name    string
		profile func(*policy.Profile)
		opts    func(*SpecOptions)
		want    string
	}{
		{"no command", nil, func(o *SpecOptions) { o.Args = nil }, "no command to run"},
		{"relative rootfs", nil, func(o *SpecOptions) { o.RootfsDir = "rootfs" }, "rootfs"},
		{"env without =", nil, func(o *SpecOptions) { o.Env = []string{"FOO"} }, "not NAME=VALUE"},
		{"mount_cwd without a directory", func(p *policy.Profile) { p.Filesystem.MountCwd = true }, nil, "mount_cwd is set but no workspace directory"},
		{"workspace is the host root", nil, func(o *SpecOptions) { o.WorkspaceDir = "/" }, "other than /"},
		{"workspace over /proc", func(p *policy.Profile) { p.Filesystem.Workspace = "/proc/self" }, nil, "mounting over /proc"},
		{"tmpfs over /", func(p *policy.Profile) { p.Filesystem.Tmpfs = []policy.Tmpfs{{Path: "/"}} }, nil, "mounting over / is not allowed"},
		{"tmpfs twice", func(p *policy.Profile) {
			p.Filesystem.Tmpfs = append(p.Filesystem.Tmpfs, policy.Tmpfs{Path: "~/.cache"})
		}, nil, "both mount /home/sandbox/.cache"},
		{"tmpfs over home", func(p *policy.Profile) { p.Filesystem.Tmpfs = []policy.Tmpfs{{Path: "~"}} }, nil, "mounts over the user's home"},
		{"tmpfs at the workspace", func(p *policy.Profile) { p.Filesystem.Tmpfs = []policy.Tmpfs{{Path: "/sandbox"}} }, nil, "both mount /sandbox"},
		{"bad tmpfs option", func(p *policy.Profile) { p.Filesystem.Tmpfs = []policy.Tmpfs{{Path: "/x", Options: []string{"exec"}}} }, nil, `option "exec"`},
		{"bad hostname", nil, func(o *SpecOptions) { o.Hostname = "-bad" }, "not a host name"},
		{"masked mount point", nil, func(o *SpecOptions) { o.MaskPaths = []string{"/tmp"} }, "also a mount point"},
		{"masked /proc", nil, func(o *SpecOptions) { o.MaskPaths = []string{"/proc/1/exe"} }, "mounting over /proc"},
		{"relative resolv.conf", nil, func(o *SpecOptions) { o.ResolvConf = "resolv.conf" }, "not an absolute clean path"},
		{"seccomp file missing", func(p *policy.Profile) { p.Process.Seccomp = "/nonexistent.json" }, nil, "seccomp profile /nonexistent.json"},
		{"no seccomp setting", func(p *policy.Profile) { p.Process.Seccomp = "" }, nil, "no seccomp profile given"},
		{"relative cwd", nil, func(o *SpecOptions) { o.Cwd = "src" }, "working directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := builtin(t, "strict")
			if tc.profile != nil {
				tc.profile(p)
			}
			opts := goldenOptions(t, p)
			if tc.opts != nil {
				tc.opts(&opts)
			}
			_, err := BuildSpec(p, opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := BuildSpec(nil, SpecOptions{}); err == nil {
		t.Error("nil profile accepted")
	}
}

// TestSpecTmpfsMerge: a profile's /tmp keeps the baseline noexec; home
// paths are owned by the sandbox user and sorted under the home.
func TestSpecTmpfsMerge(t *testing.T) {
	p := builtin(t, "strict")
	s, err := BuildSpec(p, goldenOptions(t, p))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"nodev", "noexec", "nosuid", "mode=1777", "size=536870912"}, mountAt(s, "/tmp").Options); d != "" {
		t.Errorf("/tmp options (-want +got)\n%s", d)
	}
	if d := cmp.Diff([]string{"nodev", "nosuid", "mode=700", "size=536870912", "uid=2000000000", "gid=2000000000"}, mountAt(s, "/home/sandbox/.cache").Options); d != "" {
		t.Errorf("~/.cache options (-want +got)\n%s", d)
	}
	var order []string
	for _, m := range s.Mounts {
		order = append(order, m.Destination)
	}
	home, cache := slices.Index(order, "/home/sandbox"), slices.Index(order, "/home/sandbox/.cache")
	if home < 0 || cache < home {
		t.Errorf("home mounted after a path under it: %v", order)
	}
}

func TestBuildEnv(t *testing.T) {
	caller := []string{"TERM=xterm-256color", "LANG=C.UTF-8", "PATH=/host/bin", "HOME=/root", "GITHUB_TOKEN=ghp_x", "EMPTY=", "NOEQUALS"}
	profile := func(name string, mod func(*policy.Profile)) *policy.Profile {
		p := builtin(t, name)
		if mod != nil {
			mod(p)
		}
		return p
	}
	tests := []struct {
		name    string
		p       *policy.Profile
		extra   []string
		proxy   string
		want    []string
		wantErr string
	}{
		{"standard passes only its names, sets PATH and HOME for the sandbox", profile("standard", nil), nil, "",
			[]string{"HOME=/home/sandbox", "LANG=C.UTF-8", "PATH=" + DefaultPath, "TERM=xterm-256color"}, ""},
		{"offline passes nothing", profile("offline", nil), nil, "http://127.0.0.1:3128",
			[]string{"HOME=/home/sandbox", "PATH=" + DefaultPath}, ""},
		{"open passes the host PATH and HOME", profile("open", nil), nil, "",
			[]string{"HOME=/root", "LANG=C.UTF-8", "PATH=/host/bin", "TERM=xterm-256color"}, ""},
		{"filtered adds the proxy variables", profile("strict", nil), nil, "http://127.0.0.1:3128",
			[]string{"HOME=/home/sandbox", "HTTPS_PROXY=http://127.0.0.1:3128", "HTTP_PROXY=http://127.0.0.1:3128", "LANG=C.UTF-8",
				"NO_PROXY=localhost,127.0.0.1,::1", "PATH=" + DefaultPath, "TERM=xterm-256color",
				"http_proxy=http://127.0.0.1:3128", "https_proxy=http://127.0.0.1:3128", "no_proxy=localhost,127.0.0.1,::1"}, ""},
		{"env.set then --env, later wins; bare --env copies", profile("offline", func(p *policy.Profile) {
			p.Env.Set = map[string]string{"MODE": "ci", "LEVEL": "1"}
		}), []string{"LEVEL=2", "GITHUB_TOKEN", "UNSET_VAR", "EMPTY"}, "",
			[]string{"EMPTY=", "GITHUB_TOKEN=ghp_x", "HOME=/home/sandbox", "LEVEL=2", "MODE=ci", "PATH=" + DefaultPath}, ""},
		{"proxy variables win over --env", profile("strict", func(p *policy.Profile) { p.Env.Pass = nil }), []string{"HTTPS_PROXY=http://evil:1"}, "http://127.0.0.1:3128",
			[]string{"HOME=/home/sandbox", "HTTPS_PROXY=http://127.0.0.1:3128", "HTTP_PROXY=http://127.0.0.1:3128",
				"NO_PROXY=localhost,127.0.0.1,::1", "PATH=" + DefaultPath,
				"http_proxy=http://127.0.0.1:3128", "https_proxy=http://127.0.0.1:3128", "no_proxy=localhost,127.0.0.1,::1"}, ""},
		{"--env with a bad name", profile("strict", nil), []string{"1BAD=x"}, "", nil, `--env "1BAD=x"`},
		{"--env with an empty name", profile("strict", nil), []string{"=x"}, "", nil, `--env "=x"`},
		{"--env with NUL", profile("strict", nil), []string{"A=b\x00c"}, "", nil, "--env"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			home := DefaultHome
			if tc.p.Process.User.IsRoot() {
				home = "/root"
			}
			got, err := BuildEnv(tc.p, home, "", caller, tc.extra, tc.proxy)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got)\n%s", d)
			}
		})
	}
}

func TestEtcFiles(t *testing.T) {
	rc, hosts, err := EtcFiles(netip.MustParseAddr("::ffff:10.200.0.2"), "box-1")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff("# generated by egressd: the sandbox's only resolver\nnameserver 10.200.0.2\n", string(rc)); d != "" {
		t.Errorf("resolv.conf (-want +got)\n%s", d)
	}
	if d := cmp.Diff("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tbox-1\n", string(hosts)); d != "" {
		t.Errorf("hosts (-want +got)\n%s", d)
	}
	if _, _, err := EtcFiles(netip.Addr{}, "x"); err == nil {
		t.Error("no nameserver accepted")
	}
	if _, _, err := EtcFiles(netip.MustParseAddr("fe80::1%eth0"), "x"); err == nil {
		t.Error("a zoned nameserver accepted")
	}
	if _, _, err := EtcFiles(netip.MustParseAddr("127.0.0.1"), "bad host\nname"); err == nil {
		t.Error("a hostname with a newline accepted")
	}
}

// TestSpecInitAndTerminal: with an init the command runs as its child, the
// init bound read-only (and executable) at pid1.Path with nothing else of
// the spec changed; a terminal sets process.terminal and its size.
func TestSpecInitAndTerminal(t *testing.T) {
	p := builtin(t, "strict")
	plain, err := BuildSpec(p, goldenOptions(t, p))
	if err != nil {
		t.Fatal(err)
	}
	opts := goldenOptions(t, p)
	opts.Init = "/usr/local/bin/launcher"
	opts.Terminal = &pid1.WindowSize{Rows: 40, Cols: 120}
	s, err := BuildSpec(p, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]string{pid1.Path, "-winsize=40x120", "--"}, plain.Process.Args...)
	if diff := cmp.Diff(want, s.Process.Args); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	m := mountAt(s, pid1.Path)
	if m == nil || m.Source != opts.Init || m.Type != "bind" {
		t.Fatalf("init mount = %+v", m)
	}
	for _, o := range []string{"ro", "nosuid", "nodev"} {
		if !slices.Contains(m.Options, o) {
			t.Errorf("init mount lacks %s: %v", o, m.Options)
		}
	}
	if slices.Contains(m.Options, "noexec") {
		t.Errorf("init mount is noexec: %v", m.Options)
	}
	if !s.Process.Terminal || s.Process.ConsoleSize == nil || *s.Process.ConsoleSize != (specs.Box{Height: 40, Width: 120}) {
		t.Errorf("terminal %v size %+v, want a 40x120 terminal", s.Process.Terminal, s.Process.ConsoleSize)
	}
	// Everything else is the spec without an init.
	s.Process.Args, s.Process.Terminal, s.Process.ConsoleSize = plain.Process.Args, false, nil
	s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == pid1.Path })
	if diff := cmp.Diff(plain, s); diff != "" {
		t.Errorf("the init changed more than args and one mount (-without +with):\n%s", diff)
	}

	opts.Init = "relative/launcher"
	if _, err := BuildSpec(p, opts); err == nil || !strings.Contains(err.Error(), "not an absolute clean path") {
		t.Errorf("a relative init path: %v", err)
	}
	opts.Init = "/usr/local/bin/launcher"
	opts.MaskPaths = []string{pid1.Path}
	if _, err := BuildSpec(p, opts); err == nil || !strings.Contains(err.Error(), pid1.Path) {
		t.Errorf("a blocked command masking the init: %v", err)
	}
}
