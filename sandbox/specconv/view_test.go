package specconv

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/policy"
)

// fakeHost is a host root with system directories (merged /usr), users'
// and services' data beside them, and ssh host keys.
func fakeHost(t *testing.T) string {
	t.Helper()
	return fakeRoot(t, map[string]string{
		"/usr/bin/sh":                    "x",
		"/usr/local/go/bin/go":           "x",
		"/etc/passwd":                    "root:x:0:0:root:/root:/bin/sh\n",
		"/etc/ssh/ssh_host_ed25519_key":  "secret",
		"/etc/ssh/ssh_host_rsa_key":      "secret",
		"/etc/ssh/ssh_host_rsa_key.pub":  "public",
		"/etc/ssh/ssh_config":            "",
		"/home/alice/notes":              "private",
		"/srv/tenant/data":               "other tenant",
		"/opt/tool/bin/tool":             "x",
		"/root/.ssh/id_ed25519":          "secret",
		"/var/log/syslog":                "logs",
		"/work/other-project/Makefile":   "x",
		"/sbin.real/":                    "",
		"/lib64/ld-linux-x86-64.so.2":    "x",
		"/usr/lib/x86_64-linux-gnu/libc": "x",
	}, map[string]string{"/bin": "usr/bin", "/lib": "usr/lib", "/sbin": "sbin.real"})
}

func TestPlanViewShowsOnlyTheSystemDirectories(t *testing.T) {
	host := fakeHost(t)
	for _, profile := range []string{"strict", "standard"} {
		p := builtin(t, profile)
		writable := profile == "standard" // as for a root user under a writable root
		v, err := PlanView(p, ViewOptions{HostRoot: host, SystemWritable: writable})
		if err != nil {
			t.Fatal(err)
		}
		want := &View{
			Links: []ViewLink{{"/bin", "usr/bin"}, {"/lib", "usr/lib"}, {"/sbin", "sbin.real"}},
			Mounts: []ViewMount{
				{Path: "/etc", Source: filepath.Join(host, "etc"), Kind: MountSystem, Writable: writable, Origin: "the host view (" + profile + ")"},
				{Path: "/lib64", Source: filepath.Join(host, "lib64"), Kind: MountSystem, Writable: writable, Origin: "the host view (" + profile + ")"},
				{Path: "/usr", Source: filepath.Join(host, "usr"), Kind: MountSystem, Writable: writable, Origin: "the host view (" + profile + ")"},
			},
		}
		want.Hidden = append(slices.Clone(HiddenEtcPaths), "/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key")
		slices.Sort(want.Hidden)
		if d := cmp.Diff(want, v); d != "" {
			t.Errorf("%s: view (-want +got)\n%s", profile, d)
		}
		// What the sandbox finds: the system directories through their
		// links, nothing of the rest of the host.
		tree := v.Tree()
		for p, wantErr := range map[string]error{
			"/bin/sh": nil, "/usr/local/go/bin/go": nil, "/lib64/ld-linux-x86-64.so.2": nil,
			"/home/alice/notes": fs.ErrNotExist, "/srv/tenant/data": fs.ErrNotExist, "/opt/tool/bin/tool": fs.ErrNotExist,
			"/root/.ssh/id_ed25519": fs.ErrNotExist, "/var/log/syslog": fs.ErrNotExist, "/work/other-project/Makefile": fs.ErrNotExist,
			"/sbin.real": fs.ErrNotExist,
		} {
			_, ok, err := tree.stat(p)
			switch {
			case err != nil:
				t.Errorf("%s: stat %s: %v", profile, p, err)
			case wantErr == nil && !ok:
				t.Errorf("%s: %s not found in the view", profile, p)
			case wantErr != nil && ok:
				t.Errorf("%s: %s is in the view", profile, p)
			}
		}
	}
}

func TestPlanViewAddsExposedPathsAndVolumes(t *testing.T) {
	host := fakeHost(t)
	tool := filepath.Join(t.TempDir(), "toolchains")
	vol := filepath.Join(t.TempDir(), "claude")
	for _, d := range []string{filepath.Join(tool, "bin"), vol} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(tool, "bin", "cc"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link-to-tool")
	if err := os.Symlink(tool, link); err != nil {
		t.Fatal(err)
	}
	p := builtin(t, "strict")
	p.Filesystem.Expose = []string{link}
	p.Filesystem.Volumes = []policy.Volume{{Host: vol, Path: "~/.claude"}, {Host: vol, Path: "/data", ReadOnly: true}}
	v, err := PlanView(p, ViewOptions{HostRoot: host, Home: DefaultHome})
	if err != nil {
		t.Fatal(err)
	}
	var got []ViewMount
	for _, m := range v.Mounts {
		if m.Kind != MountSystem {
			m.Origin = ""
			got = append(got, m)
		}
	}
	want := []ViewMount{
		{Path: "/data", Source: vol, Kind: MountVolume},
		{Path: "/home/sandbox/.claude", Source: vol, Kind: MountVolume, Writable: true},
		{Path: link, Source: tool, Kind: MountExpose}, // bound from where the link leads
	}
	slices.SortFunc(want, func(a, b ViewMount) int { return strings.Compare(a.Path, b.Path) })
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("mounts (-want +got)\n%s", d)
	}
	tree := v.Tree()
	if _, ok, err := tree.stat(link + "/bin/cc"); !ok || err != nil {
		t.Errorf("the exposed toolchain is not in the view: %v", err)
	}
	if _, ok, _ := tree.stat("/opt/tool/bin/tool"); ok {
		t.Error("exposing one path showed another")
	}
}

// TestHostPathsNoSandboxMaySee: expose, volumes and the workspace refuse
// the host's secrets and other users' data however they are named.
func TestHostPathsNoSandboxMaySee(t *testing.T) {
	base := t.TempDir()
	home := filepath.Join(base, "home", "alice")
	state := filepath.Join(base, "run", "egressd-launcher")
	for _, d := range []string{filepath.Join(home, ".ssh"), filepath.Join(home, "project"), state, filepath.Join(base, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sneaky := filepath.Join(base, "data", "innocent")
	if err := os.Symlink(filepath.Join(home, ".ssh"), sneaky); err != nil {
		t.Fatal(err)
	}
	o := ViewOptions{StateDir: state, Homes: []string{"/", home, "/nonexistent"}}
	for _, tc := range []struct{ path, want string }{
		{"/", "it is the whole host"},
		{"/etc", "the host's configuration"},
		{"/proc/1", "kernel interfaces"},
		{"/run/docker.sock", "runtime state and sockets"},
		{home, "is, or holds, the home directory"},
		{filepath.Dir(home), "is, or holds, the home directory"},
		{filepath.Join(home, ".ssh"), "hidden entry of the home directory"},
		{sneaky, "hidden entry of the home directory"},
		{state, "launcher's state directory"},
		{filepath.Dir(state), "launcher's state directory"},
		{filepath.Join(base, "missing"), "no such file or directory"},
		{filepath.Join(home, "project"), ""},
		{filepath.Join(base, "data"), ""},
	} {
		got, err := checkHostPath(tc.path, "test", o)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want it allowed", tc.path, err)
		case tc.want == "" && got != tc.path:
			t.Errorf("%s resolved to %s", tc.path, got)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error containing %q", tc.path, err, tc.want)
		}
	}
}

func TestPlanViewRefusesMountsItCannotKeep(t *testing.T) {
	host := fakeHost(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		expose []string
		vols   []policy.Volume
		o      ViewOptions
		want   string
	}{
		{"expose inside the view", []string{"/usr/local/go"}, nil, ViewOptions{}, "the host view shows /usr read-only already"},
		{"volume inside the view", nil, []policy.Volume{{Host: dir, Path: "/usr/local/data"}}, ViewOptions{}, "inside the host view's /usr"},
		{"volume inside the workspace", nil, []policy.Volume{{Host: dir, Path: "/sandbox/data"}},
			ViewOptions{Workspace: "/sandbox", WorkspaceDir: dir}, "inside the workspace /sandbox"},
		{"two volumes at one path", nil, []policy.Volume{{Host: dir, Path: "/data"}, {Host: dir, Path: "/data", ReadOnly: true}}, ViewOptions{}, "both mount /data"},
		{"volume over /proc", nil, []policy.Volume{{Host: dir, Path: "/proc/x"}}, ViewOptions{}, "mounting over /proc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := builtin(t, "strict")
			p.Filesystem.Expose, p.Filesystem.Volumes = tc.expose, tc.vols
			tc.o.HostRoot, tc.o.Home = host, DefaultHome
			_, err := PlanView(p, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
	// An image replaces the view: a volume may go anywhere in it.
	p := builtin(t, "strict")
	p.Filesystem.Volumes = []policy.Volume{{Host: dir, Path: "/usr/local/data"}}
	v, err := PlanView(p, ViewOptions{HostRoot: host, Image: host})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Links) != 0 || len(v.Hidden) != 0 || len(v.Mounts) != 1 {
		t.Errorf("an image's view: %+v", v)
	}
}

func TestSandboxPathHasUserAndToolchainDirs(t *testing.T) {
	host := fakeHost(t)
	v, err := PlanView(builtin(t, "strict"), ViewOptions{HostRoot: host})
	if err != nil {
		t.Fatal(err)
	}
	got := SandboxPath("/home/sandbox", v.Tree())
	want := "/home/sandbox/.local/bin:/home/sandbox/.cargo/bin:/home/sandbox/go/bin:" + DefaultPath + ":/usr/local/go/bin"
	if got != want {
		t.Errorf("PATH\n got %s\nwant %s", got, want)
	}
	// Without the toolchain in the view, its directory is not on PATH.
	empty := t.TempDir()
	if got := SandboxPath("/root", DirTree(empty)); got != "/root/.local/bin:/root/.cargo/bin:/root/go/bin:"+DefaultPath {
		t.Errorf("PATH of an empty tree: %s", got)
	}
}

func TestTreeOfTheViewReportsMissingEntries(t *testing.T) {
	v, err := PlanView(builtin(t, "strict"), ViewOptions{HostRoot: fakeHost(t)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Tree().readFile("/srv/tenant/data")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("reading outside the view: %v, want not exist", err)
	}
	if _, err := v.Tree().readFile("/"); err == nil {
		t.Error("reading the view's own root as a file succeeded")
	}
}

// TestHostViewHidesWhatEtcKeepsFromOtherUsers (THREATS I1): whatever its
// name, a file of /etc other users may not read (0600, 0640) and a
// directory they may not list are hidden, since a sandbox run as root
// would read them; named world-readable credential files too; what every
// user may read stays.
func TestHostViewHidesWhatEtcKeepsFromOtherUsers(t *testing.T) {
	host := fakeRoot(t, map[string]string{
		"/etc/hosts":                        "",
		"/etc/pip.conf":                     "[global]\nindex-url = https://user:token@pypi.example/simple\n",
		"/etc/gitconfig":                    "[credential]\n\thelper = store\n",
		"/etc/ssh/ssh_config":               "",
		"/etc/ssh/ca_key":                   "",
		"/etc/ssh/ca_key.pub":               "",
		"/etc/app/token":                    "0600",
		"/etc/app/group-only.conf":          "0640",
		"/etc/app/public.conf":              "",
		"/etc/gitlab-runner/config.toml":    "",
		"/etc/vendor-secrets/inner/key.pem": "",
		"/etc/listable-only/file":           "",
	}, map[string]string{"/etc/link-to-token": "app/token"})
	for p, mode := range map[string]os.FileMode{
		"/etc/app/token": 0o600, "/etc/app/group-only.conf": 0o640,
		"/etc/vendor-secrets": 0o700 | os.ModeDir, "/etc/listable-only": 0o750 | os.ModeDir,
	} {
		if err := os.Chmod(filepath.Join(host, p), mode); err != nil {
			t.Fatal(err)
		}
	}
	v, err := PlanView(builtin(t, "standard"), ViewOptions{HostRoot: host})
	if err != nil {
		t.Fatal(err)
	}
	hidden := map[string]bool{}
	for _, h := range v.Hidden {
		hidden[h] = true
	}
	for p, want := range map[string]bool{
		"/etc/app/token": true, "/etc/app/group-only.conf": true, "/etc/vendor-secrets": true, "/etc/listable-only": true,
		"/etc/pip.conf": true, "/etc/gitconfig": true, "/etc/gitlab-runner": true, "/etc/ssh/ca_key": true,
		"/etc/hosts": false, "/etc/app/public.conf": false, "/etc/ssh/ssh_config": false, "/etc/ssh/ca_key.pub": false,
		"/etc/app": false, "/etc/link-to-token": false, "/etc/vendor-secrets/inner": false, // a link is not followed; below a hidden directory is hidden with it
	} {
		if hidden[p] != want {
			t.Errorf("%s hidden = %v, want %v", p, hidden[p], want)
		}
	}
}
