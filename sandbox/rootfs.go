package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/egressd/egressd/sandbox/specconv"
	"golang.org/x/sys/unix"
)

// Sizes of the tmpfs holding an overlay's upper layer. A read-only root's
// upper layer only receives the mount points the runtime creates; a
// writable root's holds whatever the workload writes, charged to the
// sandbox's memory cgroup (the workload's writes allocate the pages), so
// the memory limit bounds it.
const readOnlyUpperSize = 16 << 20

// Rootfs is a container root file system PrepareRootfs made.
type Rootfs struct {
	// Dir is the root: the runtime's root.path.
	Dir string
	// Overlays maps each writable system directory of the view (its Path
	// inside the sandbox) to the throwaway overlay made of it, which the
	// runtime binds instead of the host directory (SpecOptions.Binds).
	Overlays map[string]string
	// Cleanup unmounts and removes everything PrepareRootfs made (lazily
	// unmounting what is busy); it may be called more than once, and after
	// a partial failure.
	Cleanup func() error
}

// PrepareRootfs builds the container root file system of view v in
// stateDir (created, mode 0700, if missing) and returns it.
//
// Everything lives on a fresh tmpfs at stateDir/upper-tmpfs, so nothing the
// sandbox or the runtime writes reaches the host, and it all vanishes with
// the tmpfs. writable=false is for a profile with a read-only root: the
// spec's root.readonly makes the runtime remount the root read-only once
// it has created its mount points, and the tmpfs is small (16 MiB: it
// holds only mount points). With writable=true the tmpfs has the kernel's
// default size and its pages are charged to the writer's memory cgroup.
//
// The host view (v.Image == ""): the root is an empty directory on the
// tmpfs holding the view's links (/bin -> usr/bin); the runtime binds the
// view's host paths into it (BuildSpec). A writable system directory
// (ViewMount.Writable) gets a throwaway overlay (stateDir/view/NAME: the
// host directory below, an upper layer on the tmpfs), bound instead of the
// host directory, so writes to /usr land on the tmpfs.
//
// An image (v.Image, --rootfs): the root is an overlay at stateDir/rootfs,
// the image below and the upper layer on the tmpfs. The lower layer is one
// file system: mounts below the image appear as the empty directories they
// are mounted on.
//
// stateDir should be private to the launcher (not under the host's
// world-readable paths, or under /run, which every sandbox sees as a fresh
// tmpfs).
func PrepareRootfs(ctx context.Context, v *specconv.View, stateDir string, writable bool) (*Rootfs, error) {
	return prepareRootfs(ctx, hostFS{}, v, stateDir, writable)
}

// prepareRootfs is PrepareRootfs through fsys.
func prepareRootfs(ctx context.Context, fsys HostFS, v *specconv.View, stateDir string, writable bool) (*Rootfs, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lowerDir, stateDir, err := checkRootfsPaths(v, stateDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("preparing rootfs: %w", err)
	}
	b := &rootfsBuilder{fsys: fsys, upperMnt: filepath.Join(stateDir, "upper-tmpfs")}
	viewDir := filepath.Join(stateDir, "view")
	r := &Rootfs{Overlays: map[string]string{}}
	r.Cleanup = func() error {
		var errs []error
		for i := len(b.overlays) - 1; i >= 0; i-- {
			errs = append(errs, unmountAndRemove(fsys, b.overlays[i]))
		}
		if err := os.Remove(viewDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		errs = append(errs, unmountAndRemove(fsys, filepath.Join(stateDir, "rootfs")), unmountAndRemove(fsys, b.upperMnt))
		return errors.Join(errs...)
	}
	fail := func(err error) (*Rootfs, error) {
		if cerr := r.Cleanup(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
		}
		return nil, fmt.Errorf("preparing rootfs: %w", err)
	}
	if err := os.Mkdir(b.upperMnt, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("preparing rootfs: %s already exists (a previous sandbox not cleaned up?)", b.upperMnt)
		}
		return fail(err)
	}
	tmpfsOpts := "mode=0700"
	if !writable {
		tmpfsOpts += ",size=" + strconv.Itoa(readOnlyUpperSize)
	}
	if err := fsys.Mount("tmpfs", b.upperMnt, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, tmpfsOpts); err != nil {
		return fail(fmt.Errorf("mounting the upper tmpfs on %s: %w", b.upperMnt, err))
	}
	if v.Image != "" {
		r.Dir = filepath.Join(stateDir, "rootfs")
		if err := b.overlay("rootfs", lowerDir, r.Dir); err != nil {
			return fail(err)
		}
		b.overlays = b.overlays[:len(b.overlays)-1] // removed by Cleanup as rootfs
		return r, nil
	}
	r.Dir = filepath.Join(b.upperMnt, "root")
	if err := os.Mkdir(r.Dir, 0o755); err != nil {
		return fail(err)
	}
	for _, l := range v.Links {
		if err := os.Symlink(l.Target, filepath.Join(r.Dir, filepath.FromSlash(l.Path))); err != nil {
			return fail(err)
		}
	}
	for _, m := range v.Mounts {
		if m.Kind != specconv.MountSystem || !m.Writable {
			continue
		}
		if err := os.MkdirAll(viewDir, 0o700); err != nil {
			return fail(err)
		}
		dir := filepath.Join(viewDir, strings.TrimPrefix(m.Path, "/"))
		if err := b.overlay("view"+m.Path, m.Source, dir); err != nil {
			return fail(err)
		}
		r.Overlays[m.Path] = dir
	}
	return r, nil
}

// checkRootfsPaths checks the image and the state directory of a root to
// prepare, and returns them cleaned.
func checkRootfsPaths(v *specconv.View, stateDir string) (lowerDir, cleanState string, err error) {
	if v == nil {
		return "", "", errors.New("preparing rootfs: no view")
	}
	if !filepath.IsAbs(stateDir) || v.Image != "" && !filepath.IsAbs(v.Image) {
		return "", "", fmt.Errorf("preparing rootfs: image %q and state %q must be absolute paths", v.Image, stateDir)
	}
	lowerDir, stateDir = filepath.Clean(v.Image), filepath.Clean(stateDir)
	// Overlay options separate layers with ':' and options with ','.
	lowers := []string{stateDir}
	if v.Image != "" {
		lowers = append(lowers, lowerDir)
	}
	for _, m := range v.Mounts {
		if m.Kind == specconv.MountSystem && m.Writable {
			lowers = append(lowers, m.Source)
		}
	}
	for _, l := range lowers {
		if strings.ContainsAny(l, ",:\\\n") {
			return "", "", fmt.Errorf("preparing rootfs: path %q may not contain ',', ':', '\\' or newlines (overlay options)", l)
		}
	}
	if v.Image != "" {
		if st, err := os.Stat(lowerDir); err != nil {
			return "", "", fmt.Errorf("preparing rootfs: %w", err)
		} else if !st.IsDir() {
			return "", "", fmt.Errorf("preparing rootfs: %s is not a directory", lowerDir)
		}
		if stateDir == lowerDir || strings.HasPrefix(lowerDir, stateDir+"/") {
			return "", "", fmt.Errorf("preparing rootfs: state directory %s contains the lower layer %s", stateDir, lowerDir)
		}
	}
	return lowerDir, stateDir, nil
}

// rootfsBuilder mounts a root's overlays, their upper layers and work
// directories on the tmpfs at upperMnt.
type rootfsBuilder struct {
	fsys     HostFS
	upperMnt string
	overlays []string // mounted, in order
}

// overlay mounts an overlay of lower at dir, its upper layer and work
// directory on the tmpfs under name; the upper root takes the lower root's
// mode and owner, which become the overlay root's.
func (b *rootfsBuilder) overlay(name, lower, dir string) error {
	upper, work := filepath.Join(b.upperMnt, "upper", name), filepath.Join(b.upperMnt, "work", name)
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	st, err := os.Stat(lower)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner information", lower)
	}
	if err := os.Chmod(upper, st.Mode().Perm()); err != nil {
		return err
	}
	if err := b.fsys.Lchown(upper, int(sys.Uid), int(sys.Gid)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists (a previous sandbox not cleaned up?)", dir)
		}
		return err
	}
	data := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := b.fsys.Mount("overlay", dir, "overlay", unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
		_ = os.Remove(dir)
		return fmt.Errorf("mounting the overlay on %s (%s): %w", dir, data, err)
	}
	b.overlays = append(b.overlays, dir)
	return nil
}

// hostFS is the host's file systems (HostFS).
type hostFS struct{}

func (hostFS) Mount(source, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, target, fstype, flags, data)
}
func (hostFS) Unmount(target string, flags int) error { return unix.Unmount(target, flags) }
func (hostFS) Lchown(path string, uid, gid int) error { return os.Lchown(path, uid, gid) }

// unmountAndRemove unmounts everything mounted on dir (lazily if busy) and
// removes the directory. A directory that is gone or not mounted is fine.
func unmountAndRemove(fsys HostFS, dir string) error {
	for range 8 { // stacked mounts, each unmounted in turn
		err := fsys.Unmount(dir, 0)
		if err == nil {
			continue
		}
		if errors.Is(err, unix.EBUSY) {
			if err := fsys.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("unmounting %s: %w", dir, err)
			}
			continue
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break // not a mount point (any more), or gone
		}
		return fmt.Errorf("unmounting %s: %w", dir, err)
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}
