package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testLauncherRootSandboxCannotReadHostKeysUnderEtc plants, under unique
// names, what a host keeps from its ordinary users in /etc (a 0600 key, a
// 0640 file, a 0700 directory) and a world-readable ssh host key, and
// reads them, and the host's world-readable package-index configuration,
// from a sandbox run as root and one run as the default user.
func testLauncherRootSandboxCannotReadHostKeysUnderEtc(t *testing.T) {
	lw := newLauncherWorld(t)
	tag := randomTag(t)
	dir := filepath.Join("/etc", tag+".d")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	secrets := map[string]os.FileMode{
		filepath.Join("/etc", tag+".key"):                         0o600,
		filepath.Join("/etc", tag+".conf"):                        0o640,
		filepath.Join(dir, "token"):                               0o644,
		filepath.Join("/etc/ssh", "ssh_host_"+tag+"_ed25519_key"): 0o644,
	}
	var paths []string
	for p, mode := range secrets {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		plantFile(t, p, "secret:"+tag, mode, 0, 0)
		paths = append(paths, p)
	}
	script := "for f in " + strings.Join(paths, " ") + "; do cat $f 2>/dev/null; done; echo; " +
		"ls " + dir + " 2>/dev/null; echo listed=$(ls " + dir + " 2>/dev/null | wc -l); "
	for i, f := range []string{"/etc/pip.conf", "/etc/npmrc", "/etc/gitconfig"} {
		if _, err := os.Stat(f); err == nil {
			script += "echo conf" + string(rune('0'+i)) + "=$(cat " + f + " 2>/dev/null | wc -c); "
		}
	}
	script += "echo uid=$(id -u)"
	for _, user := range [][]string{{"--user", "0:0"}, nil} {
		r := lw.run(append(user, "--", "sh", "-c", script)...)
		if r.code != 0 {
			t.Fatalf("%v: want exit 0\n%s", user, r)
		}
		if strings.Contains(r.stdout, "secret:"+tag) || strings.Contains(r.stdout, "token") {
			t.Errorf("%v: the sandbox read what /etc keeps from other users\n%s", user, r)
		}
		if v := marker(r.stdout, "listed"); v != "0" {
			t.Errorf("%v: the sandbox listed the host's 0700 directory: %s entries\n%s", user, v, r)
		}
		for i := range 3 {
			if v := marker(r.stdout, "conf"+string(rune('0'+i))); v != "" && v != "0" {
				t.Errorf("%v: the sandbox read %s bytes of the host's package-index or git configuration\n%s", user, v, r)
			}
		}
		if want := map[bool]string{true: "0", false: "2000000000"}[user != nil]; marker(r.stdout, "uid") != want {
			t.Errorf("%v: uid %q, want %s", user, marker(r.stdout, "uid"), want)
		}
	}
}
