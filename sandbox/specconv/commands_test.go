package specconv

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/policy"
)

// commandRoot is a usrmerged root with alternatives, hard links, a
// multi-call binary and a non-executable file.
func commandRoot(t *testing.T) string {
	t.Helper()
	root := fakeRoot(t, map[string]string{
		"/usr/bin/curl":         "curl",
		"/usr/bin/wget":         "wget",
		"/usr/bin/perl":         "perl",
		"/usr/bin/git":          "git",
		"/usr/bin/python3.11":   "python",
		"/usr/bin/nc.openbsd":   "nc",
		"/usr/bin/busybox":      "busybox",
		"/usr/local/bin/curl":   "another curl",
		"/usr/bin/readme":       "not a program",
		"/opt/tools/bin/mytool": "tool",
		"/usr/share/doc/":       "",
		"/home/sandbox/":        "",
	}, map[string]string{
		"/bin":                 "usr/bin",
		"/sbin":                "usr/sbin",
		"/usr/bin/python3":     "python3.11",
		"/etc/alternatives/nc": "/bin/nc.openbsd",
		"/usr/bin/nc":          "/etc/alternatives/nc",
		"/usr/bin/ls":          "busybox",
		"/usr/bin/loop":        "loop",
	})
	if err := os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "usr/bin/perl"), filepath.Join(root, "usr/bin/perl5.36.0")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "usr/bin/readme"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestBlockedPathsMaskEveryWayToRunACommand checks that masking covers
// every PATH directory, symlinks (usrmerge, alternatives) and hard links.
func TestBlockedPathsMaskEveryWayToRunACommand(t *testing.T) {
	root := commandRoot(t)
	tests := []struct {
		name    string
		block   []string
		pathEnv string
		want    []string
	}{
		{"name in two PATH dirs", []string{"curl"}, "", []string{"/usr/bin/curl", "/usr/local/bin/curl"}},
		{"alternatives symlink chain masks the target", []string{"nc"}, "", []string{"/usr/bin/nc.openbsd"}},
		{"versioned interpreter", []string{"python3"}, "", []string{"/usr/bin/python3.11"}},
		{"hard link masked too", []string{"perl"}, "", []string{"/usr/bin/perl", "/usr/bin/perl5.36.0"}},
		{"multi-call binary masks the binary", []string{"ls"}, "", []string{"/usr/bin/busybox"}},
		{"absolute path through /bin symlink", []string{"/bin/wget"}, "", []string{"/usr/bin/wget"}},
		{"absolute path that does not exist is masked as given", []string{"/usr/bin/ncat"}, "", []string{"/usr/bin/ncat"}},
		{"name nowhere", []string{"socat"}, "", nil},
		{"extra PATH directory searched", []string{"mytool"}, "/opt/tools/bin:/usr/bin", []string{"/opt/tools/bin/mytool"}},
		{"extra directory not in PATH not searched", []string{"mytool"}, "", nil},
		{"several, deduplicated and sorted", []string{"wget", "curl", "/usr/bin/wget"}, "", []string{"/usr/bin/curl", "/usr/bin/wget", "/usr/local/bin/curl"}},
		{"directory is not a command", []string{"doc"}, "/usr/share", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := BlockedPaths(DirTree(root), tc.block, tc.pathEnv)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got)\n%s", d)
			}
		})
	}
}

func TestBlockedPathsRefusesBadEntries(t *testing.T) {
	root := commandRoot(t)
	for _, entry := range []string{"bin/curl", "..", ""} {
		if _, err := BlockedPaths(DirTree(root), []string{entry}, ""); err == nil {
			t.Errorf("BlockedPaths(%q) succeeded", entry)
		}
	}
	if _, err := BlockedPaths(DirTree(root), []string{"/usr/bin/loop"}, ""); err == nil {
		t.Error("a symlink loop was not an error")
	}
}

// TestAllowlistOnlyChecksTheLaunchedCommand covers commands.allowlist_only
// and the pre-launch block check.
func TestAllowlistOnlyChecksTheLaunchedCommand(t *testing.T) {
	root := commandRoot(t)
	user := User{UID: 100, GID: 100, Home: DefaultHome}
	profile := func(only bool, allow, block []string) *policy.Profile {
		p, err := policy.BuiltinProfile("strict")
		if err != nil {
			t.Fatal(err)
		}
		p.Commands = policy.CommandSettings{Allow: allow, Block: block, AllowlistOnly: only}
		p.Sources["commands.allowlist_only"] = policy.Source{Kind: policy.SourceFile, File: "tenant.toml", Line: 3, Col: 1}
		return p
	}
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	tests := []struct {
		name     string
		p        *policy.Profile
		args     []string
		env      []string
		want     []string // nil: denied
		wantDeny string
	}{
		{"allowed name runs by its checked path", profile(true, []string{"git"}, nil), []string{"git", "status"}, env,
			[]string{"/usr/bin/git", "status"}, ""},
		{"allowed by absolute path, launched by name", profile(true, []string{"/usr/bin/git"}, nil), []string{"git"}, env,
			[]string{"/usr/bin/git"}, ""},
		{"allowed by name, launched through /bin", profile(true, []string{"git"}, nil), []string{"/bin/git"}, env,
			[]string{"/bin/git"}, ""},
		{"symlink to an allowed file", profile(true, []string{"python3.11"}, nil), []string{"python3"}, env,
			[]string{"/usr/bin/python3"}, ""},
		{"hard link to an allowed file", profile(true, []string{"perl"}, nil), []string{"perl5.36.0"}, env,
			[]string{"/usr/bin/perl5.36.0"}, ""},
		{"PATH order decides which file runs", profile(true, []string{"/usr/bin/curl"}, nil), []string{"curl"}, env,
			nil, "not in commands.allow"},
		{"not in the list", profile(true, []string{"git"}, nil), []string{"wget"}, env, nil, "not in commands.allow (allowlist_only) (resolves to /usr/bin/wget) [tenant.toml:3]"},
		{"relative path cannot be checked", profile(true, []string{"git"}, nil), []string{"./git"}, env, nil, "relative path"},
		{"missing command cannot be checked", profile(true, []string{"git"}, nil), []string{"nope"}, env, nil, "not found"},
		{"not executable is not found", profile(true, []string{"/usr/bin/readme"}, nil), []string{"readme"}, env, nil, "not found"},
		{"block wins over allow", profile(true, []string{"curl"}, []string{"curl"}), []string{"curl"}, env, nil, "blocked by commands.block"},
		{"block through another name for the same file", profile(false, nil, []string{"python3"}), []string{"/usr/bin/python3.11"}, env, nil, "blocked by commands.block entry python3"},
		{"without allowlist_only args are unchanged", profile(false, nil, nil), []string{"wget", "-q"}, env, []string{"wget", "-q"}, ""},
		{"without allowlist_only an unknown command is the runtime's business", profile(false, nil, []string{"curl"}), []string{"nope"}, env, []string{"nope"}, ""},
		{"no PATH means the default PATH", profile(true, []string{"git"}, nil), []string{"git"}, nil, []string{"/usr/bin/git"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CheckCommand(tc.p, DirTree(root), user, tc.args, tc.env)
			if tc.wantDeny != "" {
				var de *CommandDeniedError
				if !errors.As(err, &de) {
					t.Fatalf("err = %v (%T), want a CommandDeniedError", err, err)
				}
				if !strings.Contains(err.Error(), tc.wantDeny) {
					t.Errorf("err = %q, want it to contain %q", err, tc.wantDeny)
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

// TestAllowlistOnlyRefusesShadowedPaths: a file the root shows under a
// path the sandbox mounts over is not the file that would run.
func TestAllowlistOnlyRefusesShadowedPaths(t *testing.T) {
	root := fakeRoot(t, map[string]string{"/sandbox/tool": "x", "/tmp/tool": "x", "/home/sandbox/.cache/tool": "x"}, nil)
	p, _ := policy.BuiltinProfile("strict")
	p.Commands = policy.CommandSettings{Allow: []string{"/sandbox/tool", "/tmp/tool", "/home/sandbox/.cache/tool"}, AllowlistOnly: true}
	for _, cmd := range []string{"/sandbox/tool", "/tmp/tool", "/home/sandbox/.cache/tool"} {
		_, err := CheckCommand(p, DirTree(root), User{UID: 100, GID: 100, Home: DefaultHome}, []string{cmd}, nil)
		if err == nil || !strings.Contains(err.Error(), "mounts over") {
			t.Errorf("CheckCommand(%s) err = %v, want refused as shadowed", cmd, err)
		}
	}
}
