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
	"github.com/egressd/egressd/sandbox/specconv"
)

// TestPrepareRootfsNeverWritesTheHost prepares the host view in both modes
// and an image: the root holds only the view's links (the runtime binds the
// rest), a writable root's system directories are overlays whose writes
// never reach the host, and cleanup leaves no mount and no directory.
func TestPrepareRootfsNeverWritesTheHost(t *testing.T) {
	requireRootForContainers(t)
	for _, tc := range []struct{ name, profile, image string }{
		{"read-only host view", "strict", ""},
		{"writable host view", "standard", ""},
		{"image", "standard", "/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := policy.BuiltinProfile(tc.profile)
			if err != nil {
				t.Fatal(err)
			}
			writable := !p.Filesystem.ReadOnly
			v, err := specconv.PlanView(p, specconv.ViewOptions{Image: tc.image, SystemWritable: writable})
			if err != nil {
				t.Fatal(err)
			}
			dir := containerStateDir(t)
			r, err := PrepareRootfs(context.Background(), v, dir, writable)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r.Cleanup() })
			if r.Dir != specconv.RootfsDir(v, dir) {
				t.Errorf("rootfs = %s, want %s", r.Dir, specconv.RootfsDir(v, dir))
			}
			wantMounts := 2 // the tmpfs and the image's overlay
			if tc.image == "" {
				var names, want []string
				entries, _ := os.ReadDir(r.Dir)
				for _, e := range entries {
					names = append(names, "/"+e.Name())
				}
				for _, l := range v.Links {
					want = append(want, l.Path)
				}
				if d := cmp.Diff(want, names); d != "" {
					t.Errorf("the root holds (-want +got):\n%s", d)
				}
				wantMounts = 1
				for _, m := range v.Mounts {
					if m.Kind != specconv.MountSystem {
						continue
					}
					switch {
					case !writable && r.Overlays[m.Path] != "":
						t.Errorf("an overlay of %s under a read-only root", m.Path)
					case writable && r.Overlays[m.Path] != specconv.OverlayDir(dir, m.Path):
						t.Errorf("overlay of %s at %q, want %s", m.Path, r.Overlays[m.Path], specconv.OverlayDir(dir, m.Path))
					case writable:
						wantMounts++
					}
				}
			}
			switch {
			case tc.image != "":
				overlayKeepsTheHost(t, filepath.Join(r.Dir, "etc"))
			case writable:
				overlayKeepsTheHost(t, r.Overlays["/etc"])
			}
			if m := mountsBelow(t, dir); len(m) != wantMounts {
				t.Errorf("mounts under %s: %v, want %d", dir, m, wantMounts)
			}
			if err := r.Cleanup(); err != nil {
				t.Fatalf("cleanup: %v", err)
			}
			if err := r.Cleanup(); err != nil {
				t.Errorf("second cleanup: %v", err)
			}
			if m := mountsBelow(t, dir); len(m) != 0 {
				t.Errorf("mounts left after cleanup: %v", m)
			}
			for _, d := range []string{"rootfs", "upper-tmpfs", "view"} {
				if _, err := os.Stat(filepath.Join(dir, d)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s left after cleanup (%v)", d, err)
				}
			}
		})
	}
}

// overlayKeepsTheHost checks etc, an overlay of the host's /etc, shows the
// host's files and keeps writes to itself.
func overlayKeepsTheHost(t *testing.T, etc string) {
	t.Helper()
	host, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	if seen, err := os.ReadFile(filepath.Join(etc, "passwd")); err != nil || string(seen) != string(host) {
		t.Fatalf("the overlay's /etc/passwd differs from the host's (%v)", err)
	}
	probe := containerTestID(t)
	if err := os.WriteFile(filepath.Join(etc, probe), []byte("x"), 0o644); err != nil {
		t.Fatalf("writing in the overlay: %v", err)
	}
	if err := os.WriteFile(filepath.Join(etc, "passwd"), []byte("changed"), 0o644); err != nil {
		t.Fatalf("overwriting in the overlay: %v", err)
	}
	if _, err := os.Stat("/etc/" + probe); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("host /etc/%s exists after writing it in the overlay (%v)", probe, err)
	}
	if after, _ := os.ReadFile("/etc/passwd"); string(after) != string(host) {
		t.Fatal("host /etc/passwd changed") // would be a disaster; stop here
	}
}

// TestPrepareRootfsCleanupUnmountsBusyMounts checks the lazy-unmount
// fallback: a process holding an overlay open does not make cleanup fail.
func TestPrepareRootfsCleanupUnmountsBusyMounts(t *testing.T) {
	requireRootForContainers(t)
	dir := containerStateDir(t)
	p, _ := policy.BuiltinProfile("standard")
	v, err := specconv.PlanView(p, specconv.ViewOptions{SystemWritable: true})
	if err != nil {
		t.Fatal(err)
	}
	r, err := PrepareRootfs(context.Background(), v, dir, true)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(r.Overlays["/etc"], "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := r.Cleanup(); err != nil {
		t.Fatalf("cleanup with a busy mount: %v", err)
	}
	if m := mountsBelow(t, dir); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}

func TestPrepareRootfsRefusesBadPaths(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	tests := []struct {
		v           *specconv.View
		state, want string
	}{
		{&specconv.View{Image: "relative"}, tmp, "absolute"},
		{&specconv.View{}, "relative", "absolute"},
		{&specconv.View{Image: "/a,b"}, tmp, "may not contain"},
		{&specconv.View{}, tmp + "/x:y", "may not contain"},
		{&specconv.View{Image: filepath.Join(tmp, "missing")}, filepath.Join(tmp, "s"), "no such file"},
		{&specconv.View{Image: tmp}, filepath.Dir(tmp), "contains the lower layer"},
		{nil, tmp, "no view"},
	}
	for _, tc := range tests {
		_, err := PrepareRootfs(ctx, tc.v, tc.state, false)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("PrepareRootfs(%+v, %q) err = %v, want %q", tc.v, tc.state, err, tc.want)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := PrepareRootfs(cancelled, &specconv.View{}, tmp, false); !errors.Is(err, context.Canceled) {
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
	r, err := PrepareRootfs(context.Background(), &specconv.View{Image: "/"}, dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := r.Cleanup(); err != nil {
			t.Error(err)
		}
	}()
	got, err := specconv.BlockedPaths(specconv.DirTree(r.Dir), []string{"perl"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
}

// TestPrepareRootfsOnTheFakeKernel prepares the read-only and writable host
// views and an image through the fake kernel's file systems, as any user:
// the planned root and overlays are made, each mount failing in turn
// fails the preparation with what it was mounting, and cleanup (or the
// failure) leaves no mount and no directory.
func TestPrepareRootfsOnTheFakeKernel(t *testing.T) {
	for _, tc := range []struct{ name, profile, image string }{
		{"read-only host view", "strict", ""},
		{"writable host view", "standard", ""},
		{"image", "standard", "/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := policy.BuiltinProfile(tc.profile)
			if err != nil {
				t.Fatal(err)
			}
			writable := tc.name != "read-only host view"
			v, err := specconv.PlanView(p, specconv.ViewOptions{Image: tc.image, SystemWritable: writable})
			if err != nil {
				t.Fatal(err)
			}
			k := NewFakeKernel()
			dir := filepath.Join(t.TempDir(), "egs-0000f00d")
			if err := os.Mkdir(dir, 0o711); err != nil {
				t.Fatal(err)
			}
			r, err := prepareRootfs(context.Background(), k.Kernel.FS, v, dir, writable)
			if err != nil {
				t.Fatal(err)
			}
			if r.Dir != specconv.RootfsDir(v, dir) {
				t.Errorf("rootfs = %s, want %s", r.Dir, specconv.RootfsDir(v, dir))
			}
			for path, d := range r.Overlays {
				if d != specconv.OverlayDir(dir, path) {
					t.Errorf("overlay of %s at %s, want %s", path, d, specconv.OverlayDir(dir, path))
				}
			}
			var mounts []string
			for _, op := range k.Ops() {
				if strings.HasPrefix(op, "fs.mount ") {
					mounts = append(mounts, op)
				}
			}
			if writable && len(mounts) < 2 {
				t.Errorf("a writable root with mounts %q: want the tmpfs and an overlay", mounts)
			}
			if err := r.Cleanup(); err != nil {
				t.Fatal(err)
			}
			if left := k.Leftovers(); len(left) > 0 {
				t.Errorf("left %q", left)
			}
			if left := listNames(t, dir); len(left) != 0 {
				t.Errorf("left in the state directory: %v", left)
			}
			for _, failing := range mounts {
				k := NewFakeKernel()
				k.Fail = func(op string) error {
					if op == failing {
						return unix.EPERM
					}
					return nil
				}
				_, err := prepareRootfs(context.Background(), k.Kernel.FS, v, dir, writable)
				if err == nil || !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "mounting") {
					t.Errorf("%s failing: %v", failing, err)
				}
				if left := k.Leftovers(); len(left) > 0 {
					t.Errorf("%s failing left %q", failing, left)
				}
				if left := listNames(t, dir); len(left) != 0 {
					t.Errorf("%s failing left in the state directory: %v", failing, left)
				}
			}
		})
	}
	if _, err := prepareRootfs(context.Background(), NewFakeKernel().Kernel.FS, nil, t.TempDir(), false); err == nil {
		t.Error("a root of no view")
	}
}
