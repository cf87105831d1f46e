package specconv

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egressd/egressd/policy"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
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
		got, err := DirTree(root).resolve(tc.path)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("resolve(%s) err = %v, want %v", tc.path, err, tc.err)
			}
			if tc.want != "" && got != tc.want {
				t.Errorf("resolve(%s) = %q, want %q", tc.path, got, tc.want)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("resolve(%s) = %q, %v; want %q", tc.path, got, err, tc.want)
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
		{"named with groups", policy.User{Name: "dev"}, User{UID: 1000, GID: 1000, AdditionalGids: []uint32{999, 10}, Home: "/home/dev", Name: "dev"}, ""},
		{"named root", policy.User{Name: "root"}, User{Home: "/root", Name: "root"}, ""},
		{"no home", policy.User{Name: "nohome"}, User{UID: 1001, GID: 1001, Home: DefaultHome, Name: "nohome"}, ""},
		{"unknown", policy.User{Name: "ghost"}, User{}, `user "ghost" is not in the sandbox's /etc/passwd`},
		{"malformed", policy.User{Name: "broken"}, User{}, "malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveUser(DirTree(root), tc.user)
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
