package sandbox

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/policy"
)

// fakeRoot builds a small root file system: files map paths to content
// (mode 0755), links map paths to symlink targets.
func fakeRoot(t *testing.T, files map[string]string, links map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(p, "/") {
			continue
		}
		if err := os.WriteFile(full, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, target := range links {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, full); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestResolveInRootStaysInRoot checks that symlinks are followed inside
// the sandbox's root: an absolute link starts at the root, ".." stops at
// it, and loops end.
func TestResolveInRootStaysInRoot(t *testing.T) {
	root := fakeRoot(t, map[string]string{
		"/usr/bin/curl":       "x",
		"/usr/bin/nc.openbsd": "x",
		"/etc/passwd":         "root:x:0:0::/root:/bin/sh\n",
		"/home/u/":            "",
	}, map[string]string{
		"/bin":                 "usr/bin",
		"/etc/alternatives/nc": "/bin/nc.openbsd",
		"/usr/bin/nc":          "/etc/alternatives/nc",
		"/escape":              "../../../../etc/passwd",
		"/abs-escape":          "/../../etc/passwd",
		"/loop1":               "/loop2",
		"/loop2":               "/loop1",
		"/home/u/up":           "../../usr/bin",
	})
	tests := []struct {
		path, want string
		err        error
	}{
		{"/bin/curl", "/usr/bin/curl", nil},
		{"/usr/bin/nc", "/usr/bin/nc.openbsd", nil},
		{"/escape", "/etc/passwd", nil},
		{"/abs-escape", "/etc/passwd", nil},
		{"/home/u/up/curl", "/usr/bin/curl", nil},
		{"/bin/../bin/./curl", "/usr/bin/curl", nil},
		{"/bin/missing", "/usr/bin/missing", fs.ErrNotExist},
		{"/loop1", "", unix.ELOOP},
		{"/usr/bin/curl/x", "", unix.ENOTDIR},
	}
	for _, tc := range tests {
		got, err := resolveInRoot(root, tc.path)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("resolveInRoot(%s) err = %v, want %v", tc.path, err, tc.err)
			}
			if tc.want != "" && got != tc.want {
				t.Errorf("resolveInRoot(%s) = %q, want %q", tc.path, got, tc.want)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("resolveInRoot(%s) = %q, %v; want %q", tc.path, got, err, tc.want)
		}
	}
}

func TestResolveUser(t *testing.T) {
	root := fakeRoot(t, map[string]string{
		"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\n# comment\n" +
			"dev:x:1000:1000::/home/dev:/bin/bash\nbroken:x:abc:1::/:/bin/sh\nnohome:x:1001:1001:::/bin/sh\n",
		"/etc/group": "dev:x:1000:\ndocker:x:999:dev,other\nwheel:x:10: other , dev \n",
	}, nil)
	tests := []struct {
		name    string
		user    policy.User
		want    User
		wantErr string
	}{
		{"numeric", policy.User{UID: 100, GID: 100}, User{UID: 100, GID: 100, Home: DefaultHome}, ""},
		{"numeric root", policy.User{}, User{Home: "/root"}, ""},
		{"named with groups", policy.User{Name: "dev"}, User{UID: 1000, GID: 1000, AdditionalGids: []uint32{999, 10}, Home: "/home/dev"}, ""},
		{"named root", policy.User{Name: "root"}, User{Home: "/root"}, ""},
		{"no home", policy.User{Name: "nohome"}, User{UID: 1001, GID: 1001, Home: DefaultHome}, ""},
		{"unknown", policy.User{Name: "ghost"}, User{}, `user "ghost" is not in the sandbox's /etc/passwd`},
		{"malformed", policy.User{Name: "broken"}, User{}, "malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveUser(root, tc.user)
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

// TestPrepareRootfsNeverWritesTheHost mounts the overlay over the host
// root in both modes, writes through it, and checks the host file system
// is unchanged and cleanup leaves no mount and no directory behind.
func TestPrepareRootfsNeverWritesTheHost(t *testing.T) {
	requireRootForContainers(t)
	for _, writable := range []bool{false, true} {
		name := "read-only"
		if writable {
			name = "writable"
		}
		t.Run(name, func(t *testing.T) {
			dir := containerStateDir(t)
			rootfs, cleanup, err := PrepareRootfs(context.Background(), "/", dir, writable)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cleanup() })
			if rootfs != filepath.Join(dir, "rootfs") {
				t.Errorf("rootfs = %s", rootfs)
			}
			// The host's files are there...
			host, err := os.ReadFile("/etc/passwd")
			if err != nil {
				t.Fatal(err)
			}
			seen, err := os.ReadFile(filepath.Join(rootfs, "etc/passwd"))
			if err != nil || string(seen) != string(host) {
				t.Fatalf("rootfs /etc/passwd differs from the host's (%v)", err)
			}
			// ...but not the host's other mounts (/proc is empty).
			if entries, _ := os.ReadDir(filepath.Join(rootfs, "proc")); len(entries) != 0 {
				t.Errorf("rootfs /proc has %d entries: the host's /proc shows through", len(entries))
			}
			// Writes land in the overlay only.
			probe := "etc/" + containerTestID(t)
			if err := os.WriteFile(filepath.Join(rootfs, probe), []byte("x"), 0o644); err != nil {
				t.Fatalf("writing in the overlay: %v", err)
			}
			if err := os.WriteFile(filepath.Join(rootfs, "etc/passwd"), []byte("changed"), 0o644); err != nil {
				t.Fatalf("overwriting in the overlay: %v", err)
			}
			if _, err := os.Stat("/" + probe); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("host /%s exists after writing it in the overlay (%v)", probe, err)
			}
			if after, _ := os.ReadFile("/etc/passwd"); string(after) != string(host) {
				t.Fatal("host /etc/passwd changed") // would be a disaster; stop here
			}
			if len(mountsBelow(t, dir)) != 2 {
				t.Errorf("mounts under %s: %v, want the tmpfs and the overlay", dir, mountsBelow(t, dir))
			}
			if err := cleanup(); err != nil {
				t.Fatalf("cleanup: %v", err)
			}
			if err := cleanup(); err != nil {
				t.Errorf("second cleanup: %v", err)
			}
			if m := mountsBelow(t, dir); len(m) != 0 {
				t.Errorf("mounts left after cleanup: %v", m)
			}
			for _, d := range []string{"rootfs", "upper-tmpfs"} {
				if _, err := os.Stat(filepath.Join(dir, d)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s left after cleanup (%v)", d, err)
				}
			}
		})
	}
}

// TestPrepareRootfsCleanupUnmountsBusyMounts checks the lazy-unmount
// fallback: a process holding the rootfs open does not make cleanup fail.
func TestPrepareRootfsCleanupUnmountsBusyMounts(t *testing.T) {
	requireRootForContainers(t)
	dir := containerStateDir(t)
	rootfs, cleanup, err := PrepareRootfs(context.Background(), "/", dir, true)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(rootfs, "etc"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := cleanup(); err != nil {
		t.Fatalf("cleanup with a busy mount: %v", err)
	}
	if m := mountsBelow(t, dir); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}

func TestPrepareRootfsRefusesBadPaths(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	tests := []struct{ lower, state, want string }{
		{"relative", tmp, "absolute"},
		{"/", "relative", "absolute"},
		{"/a,b", tmp, "may not contain"},
		{"/", tmp + "/x:y", "may not contain"},
		{filepath.Join(tmp, "missing"), filepath.Join(tmp, "s"), "no such file"},
		{tmp, filepath.Dir(tmp), "contains the lower layer"},
	}
	for _, tc := range tests {
		_, _, err := PrepareRootfs(ctx, tc.lower, tc.state, false)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("PrepareRootfs(%q, %q) err = %v, want %q", tc.lower, tc.state, err, tc.want)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := PrepareRootfs(cancelled, "/", tmp, false); !errors.Is(err, context.Canceled) {
		t.Errorf("PrepareRootfs with a cancelled context: %v", err)
	}
}

// TestBlockedPathsThroughTheOverlay looks blocked commands up in a real
// overlay of the host root, where hard links must still be recognised
// (the overlay reports the lower layer's inode numbers).
func TestBlockedPathsThroughTheOverlay(t *testing.T) {
	requireRootForContainers(t)
	var want []string
	var perl unix.Stat_t
	if err := unix.Stat("/usr/bin/perl", &perl); err != nil || perl.Nlink < 2 {
		t.Skip("needs a hard-linked /usr/bin/perl on the host")
	}
	entries, err := os.ReadDir("/usr/bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		var st unix.Stat_t
		if unix.Lstat("/usr/bin/"+e.Name(), &st) == nil && st.Ino == perl.Ino && st.Dev == perl.Dev {
			want = append(want, "/usr/bin/"+e.Name())
		}
	}
	dir := containerStateDir(t)
	rootfs, cleanup, err := PrepareRootfs(context.Background(), "/", dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cleanup(); err != nil {
			t.Error(err)
		}
	}()
	got, err := BlockedPaths(rootfs, []string{"perl"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
}
