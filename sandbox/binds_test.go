package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/policy"
)

// swapForLink replaces path with a symbolic link to target (relative, as
// a sandbox sharing the directory would make it), withNames after giving
// target the names path holds (empty files and directories, so the runtime
// finds every source it follows there); restore puts path back.
func swapForLink(t *testing.T, path, target string, withNames bool) (restore func()) {
	t.Helper()
	if withNames {
		mirror(t, path, target)
	}
	moved := path + ".moved"
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(filepath.Dir(path), target)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(rel, path); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.Remove(path); err != nil {
			t.Error(err)
		}
		if err := os.Rename(moved, path); err != nil {
			t.Error(err)
		}
	}
}

// mirror makes in dst every name src holds (directories and empty files).
func mirror(t *testing.T, src, dst string) {
	t.Helper()
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		d := filepath.Join(dst, e.Name())
		if e.IsDir() {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			mirror(t, filepath.Join(src, e.Name()), d)
		} else if _, err := os.Lstat(d); err != nil {
			if err := os.WriteFile(d, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestSwappedSourceCannotRedirectAMount: a sandbox sharing a directory
// with another swaps a path the launcher planned to bind (a protected
// path, a pinned directory on the way to one, a placeholder's directory,
// an exposed path, a volume) for a symbolic link to a host directory:
// before the placeholders are made, after the apply, or between the
// launcher's check and the runtime's mount (testHook), there and swapped
// back before the mounts are checked. The launch fails naming the path,
// the command never runs, nothing is made in the host directory, and its
// secret is never read (THREATS I5). A swap after the apply, when the
// runtime has made and the launcher checked every mount, redirects
// nothing: the command runs with the objects that were checked.
func TestSwappedSourceCannotRedirectAMount(t *testing.T) {
	rt := requireRunc(t)
	type stage int
	const (
		placeholders stage = iota // before the placeholders are made
		applied                   // after Apply, before Run
		created                   // between recording the sources and runc create
		createdBack               // the same, swapped back before the mounts are checked
	)
	cases := []struct {
		name  string
		stage stage
		swap  string // relative to the test's base directory
		dest  string // the mount it targets, inside the sandbox; "" for the exposed path
	}{
		{"protected read-only path", created, "ws/.git/hooks", "/sandbox/.git/hooks"},
		{"protected read-only path after apply", applied, "ws/.git/hooks", "/sandbox/.git/hooks"},
		{"protected read-only path swapped back", createdBack, "ws/.git/hooks", "/sandbox/.git/hooks"},
		{"pinned directory on the way", created, "ws/.git", "/sandbox/.git"},
		{"pinned directory swapped back", createdBack, "ws/.git", "/sandbox/.git"},
		{"placeholder's directory", placeholders, "ws/.git", "/sandbox/.git"},
		{"exposed path", created, "exposed", ""},
		{"exposed path after apply", applied, "exposed", ""},
		{"volume", created, "vol", "/mnt/vol"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			var b [8]byte
			_, _ = rand.Read(b[:])
			secret := "decoy-secret-" + hex.EncodeToString(b[:])
			decoy := filepath.Join(base, "decoy")
			for _, d := range []string{"ws/.git/hooks", "exposed", "vol", "decoy"} {
				if err := os.MkdirAll(filepath.Join(base, d), 0o777); err != nil {
					t.Fatal(err)
				}
			}
			for _, d := range []string{"ws", "ws/.git", "vol"} {
				if err := os.Chmod(filepath.Join(base, d), 0o777); err != nil { // the sandbox user writes them
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(decoy, "secret"), []byte(secret+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			exposed := filepath.Join(base, "exposed")
			dest := tc.dest
			if dest == "" {
				dest = exposed
			}
			p := resolveWith(t, "standard", "", policy.Setting{Key: "network.mode", Values: []string{"none"}},
				policy.Setting{Key: "filesystem.mount_cwd", Values: []string{"true"}},
				policy.Setting{Key: "filesystem.expose", Values: []string{exposed}},
				policy.Setting{Key: "filesystem.volumes", Values: []string{filepath.Join(base, "vol") + ":/mnt/vol:rw"}})
			// Where the sandbox would find the decoy: at the mount's
			// destination, or where the runtime followed the link to.
			probe := []string{dest + "/secret", filepath.Join(filepath.Dir(dest), "../decoy/secret"), "/decoy/secret",
				filepath.Join(filepath.Dir(dest), "decoy/secret")}
			args := []string{"sh", "-c", `echo ran-the-command; cat "$@" 2>/dev/null; grep decoy /proc/self/mountinfo`, "sh"}
			args = append(args, probe...)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			swapped := filepath.Join(base, tc.swap)
			restore := func() {}
			t.Cleanup(func() { restore() })
			swappedOnce := false
			testHook = func(stage string) {
				switch {
				case stage == "placeholders" && tc.stage == placeholders && !swappedOnce: // once: it runs per directory
					restore, swappedOnce = swapForLink(t, swapped, decoy, false), true
				case stage == "create" && tc.stage >= created:
					restore = swapForLink(t, swapped, decoy, true)
				case stage == "verify" && tc.stage == createdBack, stage == "verified" && tc.stage == created:
					restore()
					restore = func() {}
				}
			}
			defer func() { testHook = nil }()
			var stdout, stderr bytes.Buffer
			s, err := Create(ctx, Config{Profile: p, Runtime: rt, StateDir: testStateDir(t), WorkspaceDir: filepath.Join(base, "ws"), Args: args})
			if err == nil {
				if tc.stage == applied {
					restore = swapForLink(t, swapped, decoy, true)
				}
				_, err = s.Run(ctx, Stdio{Stdout: &stdout, Stderr: &stderr})
				restore()
				restore = func() {}
				if cerr := s.Close(); cerr != nil {
					t.Errorf("Close: %v", cerr)
				}
			}
			out := stdout.String() + stderr.String()
			if strings.Contains(out, secret) {
				t.Errorf("the command read the decoy: %q", out)
			}
			if tc.stage == applied {
				if err != nil || !strings.Contains(out, "ran-the-command") || strings.Contains(out, "decoy") {
					t.Errorf("%s swapped after the apply: %v, output %q; want the command run with the checked objects, no decoy", tc.swap, err, out)
				}
				return
			}
			if strings.Contains(out, "ran-the-command") {
				t.Errorf("the command ran: %q", out)
			}
			if ents, _ := os.ReadDir(decoy); tc.stage == placeholders && len(ents) != 1 {
				t.Errorf("the launch made %d entries in the decoy, want none", len(ents)-1)
			}
			if err == nil {
				t.Fatalf("the launch succeeded with %s swapped for a link; want it refused", tc.swap)
			}
			named := strconv.Quote(dest) // the mount whose source or destination changed
			if tc.stage == placeholders {
				// The directory a placeholder is made in: named by the
				// placeholder's refusal, or, when the swap is seen first
				// (the placeholder re-plan), by the plan's refusal of a
				// protected path that leads through a link.
				named = strconv.Quote(swapped)
				if strings.Contains(err.Error(), "is a symbolic link, which a mount cannot keep") {
					named = "/sandbox/.git"
				}
			}
			if !strings.Contains(err.Error(), named) {
				t.Errorf("error %q does not name %s", err, named)
			}
			t.Logf("refused: %v", err)
		})
	}
}
