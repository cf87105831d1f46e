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

// linkedEtcImage makes an image directory (--rootfs) whose programs are
// the host's (the run exposes /usr/bin, /usr/lib and /usr/lib64 read-only:
// bin, sbin, lib and lib64 are links into /usr, as on a merged-/usr host), whose etc has what the
// loader and the name service need, and whose etc/resolv.conf and
// etc/hosts are the symbolic links given.
func linkedEtcImage(t *testing.T, resolvConf, hosts string) string {
	t.Helper()
	img := t.TempDir()
	if err := os.Chmod(img, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"usr", "etc", "run", "tmp", "var"} {
		if err := os.Mkdir(filepath.Join(img, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, target := range map[string]string{"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64",
		"etc/resolv.conf": resolvConf, "etc/hosts": hosts} {
		if err := os.Symlink(target, filepath.Join(img, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"ld.so.cache", "ld.so.conf", "nsswitch.conf", "passwd", "group"} {
		data, err := os.ReadFile(filepath.Join("/etc", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(img, "etc", f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// awk and other alternatives are links through /etc/alternatives.
	alts, err := os.ReadDir("/etc/alternatives")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(img, "etc/alternatives"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range alts {
		if target, err := os.Readlink(filepath.Join("/etc/alternatives", a.Name())); err == nil {
			if err := os.Symlink(target, filepath.Join(img, "etc/alternatives", a.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	return img
}

// hostEtcLinked runs the launcher in a mount namespace of its own whose
// /etc is the machine's under a throwaway overlay (the machine's /etc is
// never written), with /etc/resolv.conf and /etc/hosts replaced by the
// symbolic links given: the host view of a host with systemd-resolved,
// resolvconf or NixOS.
func hostEtcLinked(t *testing.T, resolvConf, hosts string) []string {
	t.Helper()
	dir := t.TempDir()
	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := `set -e; mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc; ` +
		`ln -sfn "$3" /etc/resolv.conf; ln -sfn "$4" /etc/hosts; shift 4; exec "$@"`
	return []string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", upper, work, resolvConf, hosts}
}

// testLauncherResolvConfSymlinkStillPointsAtEgressd runs sandboxes whose
// /etc/resolv.conf and /etc/hosts are symbolic links, as on hosts with
// systemd-resolved, resolvconf or NixOS: relative, absolute, and to a file
// that does not exist, in the host view (bound read-only, or throwaway
// overlays for root) and in an image (--rootfs).
// Whatever the link, the sandbox reads the launcher's resolv.conf and
// hosts: dig, getent (the C library) and Python resolve an allowed name
// through egressd, a blocked name is denied, and the world's resolver never
// heard of it.
func testLauncherResolvConfSymlinkStillPointsAtEgressd(t *testing.T) {
	lw := newLauncherWorld(t)
	script := digScript +
		`echo rc=$(grep -c '^nameserver 127.0.0.1$' /etc/resolv.conf); echo hosts=$(getent hosts sandbox | cut -f1 -d' '); ` +
		`q allowed.test; q blocked.test; ` +
		`echo getent=$(getent ahostsv4 allowed.test | awk 'NR==1 {print $1}'); ` +
		`getent ahostsv4 blocked.test >/dev/null; echo getentblocked=$?; ` +
		sandboxPython + ` -c 'import socket
for n in ("allowed.test", "blocked.test"):
    try: print("py" + n.split(".")[0] + "=" + socket.getaddrinfo(n, 80, socket.AF_INET)[0][4][0])
    except socket.gaierror as e: print("py" + n.split(".")[0] + "=denied")'`
	for _, tc := range []struct{ name, resolvConf, hosts string }{
		{"relative", "../run/systemd/resolve/stub-resolv.conf", "../run/hosts"},
		{"absolute", "/run/resolvconf/resolv.conf", "/run/resolvconf/hosts"},
		{"missing", "/var/lib/nothere/resolv.conf", "/nix/store/0-hosts/etc/hosts"},
	} {
		// host-root: a user that may own files there gets the host's
		// system directories as throwaway overlays, not read-only binds.
		for _, view := range []string{"host", "host-root", "image"} {
			t.Run(view+"/"+tc.name, func(t *testing.T) {
				var o lopts
				args := []string{"--allow", "allowed.test", "--", "sh", "-c", script}
				switch view {
				case "host":
					o.wrap = hostEtcLinked(t, tc.resolvConf, tc.hosts)
				case "host-root":
					o.wrap = hostEtcLinked(t, tc.resolvConf, tc.hosts)
					args = append([]string{"--user", "0:0"}, args...)
				default:
					img := linkedEtcImage(t, tc.resolvConf, tc.hosts)
					args = append([]string{"--rootfs", img, "--expose", "/usr/bin", "--expose", "/usr/lib", "--expose", "/usr/lib64"}, args...)
				}
				r := lw.runWith(o, args...)
				if r.code != 0 {
					t.Fatalf("want exit 0\n%s", r)
				}
				for name, want := range map[string]string{"rc": "1", "hosts": "127.0.1.1", "getent": "203.0.113.10", "getentblocked": "2",
					"pyallowed": "203.0.113.10", "pyblocked": "denied"} {
					if got := marker(r.stdout, name); got != want {
						t.Errorf("%s=%q, want %q\n%s", name, got, want, r)
					}
				}
				for q, want := range map[string]string{"allowed.test": "status=NOERROR answer=203.0.113.10", "blocked.test": "status=NXDOMAIN answer=none"} {
					if !strings.Contains(r.stdout, q+" "+want) {
						t.Errorf("dig %s: want %s\n%s", q, want, r)
					}
				}
				if n := lw.w.DNSQueries("blocked.test"); n != 0 {
					t.Errorf("the world's resolver saw %d queries for blocked.test", n)
				}
			})
		}
	}
}
