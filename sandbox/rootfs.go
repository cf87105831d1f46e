package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/policy"
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
func PrepareRootfs(ctx context.Context, v *View, stateDir string, writable bool) (*Rootfs, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if v == nil {
		return nil, errors.New("preparing rootfs: no view")
	}
	if !filepath.IsAbs(stateDir) || v.Image != "" && !filepath.IsAbs(v.Image) {
		return nil, fmt.Errorf("preparing rootfs: image %q and state %q must be absolute paths", v.Image, stateDir)
	}
	lowerDir, stateDir := filepath.Clean(v.Image), filepath.Clean(stateDir)
	// Overlay options separate layers with ':' and options with ','.
	lowers := []string{stateDir}
	if v.Image != "" {
		lowers = append(lowers, lowerDir)
	}
	for _, m := range v.Mounts {
		if m.Kind == MountSystem && m.Writable {
			lowers = append(lowers, m.Source)
		}
	}
	for _, l := range lowers {
		if strings.ContainsAny(l, ",:\\\n") {
			return nil, fmt.Errorf("preparing rootfs: path %q may not contain ',', ':', '\\' or newlines (overlay options)", l)
		}
	}
	if v.Image != "" {
		if st, err := os.Stat(lowerDir); err != nil {
			return nil, fmt.Errorf("preparing rootfs: %w", err)
		} else if !st.IsDir() {
			return nil, fmt.Errorf("preparing rootfs: %s is not a directory", lowerDir)
		}
		if stateDir == lowerDir || strings.HasPrefix(lowerDir, stateDir+"/") {
			return nil, fmt.Errorf("preparing rootfs: state directory %s contains the lower layer %s", stateDir, lowerDir)
		}
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("preparing rootfs: %w", err)
	}
	upperMnt := filepath.Join(stateDir, "upper-tmpfs")
	viewDir := filepath.Join(stateDir, "view")
	r := &Rootfs{Overlays: map[string]string{}}
	var overlays []string // mounted, in order
	r.Cleanup = func() error {
		var errs []error
		for i := len(overlays) - 1; i >= 0; i-- {
			errs = append(errs, unmountAndRemove(overlays[i]))
		}
		if err := os.Remove(viewDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		errs = append(errs, unmountAndRemove(filepath.Join(stateDir, "rootfs")), unmountAndRemove(upperMnt))
		return errors.Join(errs...)
	}
	fail := func(err error) (*Rootfs, error) {
		if cerr := r.Cleanup(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
		}
		return nil, fmt.Errorf("preparing rootfs: %w", err)
	}
	if err := os.Mkdir(upperMnt, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("preparing rootfs: %s already exists (a previous sandbox not cleaned up?)", upperMnt)
		}
		return fail(err)
	}
	tmpfsOpts := "mode=0700"
	if !writable {
		tmpfsOpts += ",size=" + strconv.Itoa(readOnlyUpperSize)
	}
	if err := unix.Mount("tmpfs", upperMnt, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, tmpfsOpts); err != nil {
		return fail(fmt.Errorf("mounting the upper tmpfs on %s: %w", upperMnt, err))
	}
	// overlay mounts an overlay of lower at dir, its upper layer and work
	// directory on the tmpfs under name; the upper root takes the lower
	// root's mode and owner, which become the overlay root's.
	overlay := func(name, lower, dir string) error {
		upper, work := filepath.Join(upperMnt, "upper", name), filepath.Join(upperMnt, "work", name)
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
		if err := os.Lchown(upper, int(sys.Uid), int(sys.Gid)); err != nil {
			return err
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s already exists (a previous sandbox not cleaned up?)", dir)
			}
			return err
		}
		data := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
		if err := unix.Mount("overlay", dir, "overlay", unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
			_ = os.Remove(dir)
			return fmt.Errorf("mounting the overlay on %s (%s): %w", dir, data, err)
		}
		overlays = append(overlays, dir)
		return nil
	}
	if v.Image != "" {
		r.Dir = filepath.Join(stateDir, "rootfs")
		if err := overlay("rootfs", lowerDir, r.Dir); err != nil {
			return fail(err)
		}
		overlays = overlays[:len(overlays)-1] // removed by Cleanup as rootfs
		return r, nil
	}
	r.Dir = filepath.Join(upperMnt, "root")
	if err := os.Mkdir(r.Dir, 0o755); err != nil {
		return fail(err)
	}
	for _, l := range v.Links {
		if err := os.Symlink(l.Target, filepath.Join(r.Dir, filepath.FromSlash(l.Path))); err != nil {
			return fail(err)
		}
	}
	for _, m := range v.Mounts {
		if m.Kind != MountSystem || !m.Writable {
			continue
		}
		if err := os.MkdirAll(viewDir, 0o700); err != nil {
			return fail(err)
		}
		dir := filepath.Join(viewDir, strings.TrimPrefix(m.Path, "/"))
		if err := overlay("view"+m.Path, m.Source, dir); err != nil {
			return fail(err)
		}
		r.Overlays[m.Path] = dir
	}
	return r, nil
}

// unmountAndRemove unmounts everything mounted on dir (lazily if busy) and
// removes the directory. A directory that is gone or not mounted is fine.
func unmountAndRemove(dir string) error {
	for range 8 { // stacked mounts, each unmounted in turn
		err := unix.Unmount(dir, 0)
		if err == nil {
			continue
		}
		if errors.Is(err, unix.EBUSY) {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
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

// maxSymlinks is the kernel's limit on links followed in one lookup.
const maxSymlinks = 40

// resolve resolves p, a path inside the sandbox, in the tree the way the
// sandbox would see it: absolute symlinks start again at the root, and ".."
// never climbs above it. It returns the resolved path inside the sandbox
// (every component but a missing last one exists and is not a symlink) and
// the error of the first component that does not exist, if any. It reads
// only the tree; mounts the runtime adds are not there.
func (t Tree) resolve(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("%q is not an absolute path", p)
	}
	resolved := "/"
	rest := strings.Split(p, "/")
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = path.Dir(resolved)
			continue
		}
		next := path.Join(resolved, c)
		fi, err := t.lstat(next)
		if err != nil {
			return next, err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if len(rest) > 0 && !fi.IsDir() && hasComponent(rest) {
				return next, &fs.PathError{Op: "lookup", Path: next, Err: unix.ENOTDIR}
			}
			resolved = next
			continue
		}
		links++
		if links > maxSymlinks {
			return next, &fs.PathError{Op: "lookup", Path: p, Err: unix.ELOOP}
		}
		target, err := t.readlink(next)
		if err != nil {
			return next, err
		}
		if path.IsAbs(target) {
			resolved = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return resolved, nil
}

func hasComponent(parts []string) bool {
	for _, c := range parts {
		if c != "" && c != "." {
			return true
		}
	}
	return false
}

// ResolveUser turns a profile's user into ids and a home directory. A
// numeric user is taken as given, with home /root for uid 0 and DefaultHome
// otherwise (the ids need no passwd entry: the sandbox gets one). A named
// user is looked up in the tree's /etc/passwd, and its supplementary groups
// in /etc/group; a name that is not there is an error.
func ResolveUser(t Tree, u policy.User) (User, error) {
	if u.Name == "" {
		return User{UID: u.UID, GID: u.GID, Home: defaultHome(u.UID)}, nil
	}
	pw, err := t.readFile("/etc/passwd")
	if err != nil {
		return User{}, fmt.Errorf("looking up user %q: %w", u.Name, err)
	}
	var out User
	found := false
	for _, f := range colonRecords(pw, 7) {
		if f[0] != u.Name {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return User{}, fmt.Errorf("looking up user %q: malformed /etc/passwd entry", u.Name)
		}
		home := path.Clean("/" + f[5])
		out, found = User{UID: uint32(uid), GID: uint32(gid), Home: home, Name: u.Name}, true
		break
	}
	if !found {
		return User{}, fmt.Errorf("user %q is not in the sandbox's /etc/passwd; use a numeric \"UID:GID\"", u.Name)
	}
	if out.Home == "/" {
		out.Home = defaultHome(out.UID)
	}
	gr, err := t.readFile("/etc/group")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return User{}, fmt.Errorf("looking up groups of %q: %w", u.Name, err)
	}
	for _, f := range colonRecords(gr, 4) {
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil || uint32(gid) == out.GID {
			continue
		}
		for m := range strings.SplitSeq(f[3], ",") {
			if strings.TrimSpace(m) == u.Name {
				out.AdditionalGids = append(out.AdditionalGids, uint32(gid))
				break
			}
		}
	}
	return out, nil
}

// readFile reads a small file inside the tree, following symlinks inside
// it only.
func (t Tree) readFile(p string) ([]byte, error) {
	r, err := t.resolve(p)
	if err != nil {
		return nil, err
	}
	h := t.hostFile(r)
	if h == "" {
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	f, err := os.Open(h)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() > 16<<20 {
		return nil, fmt.Errorf("%s is not a regular file of sensible size", p)
	}
	return io.ReadAll(io.LimitReader(f, 16<<20))
}

// colonRecords splits passwd/group-style lines into at least n fields.
func colonRecords(data []byte, n int) [][]string {
	var out [][]string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < n {
			continue
		}
		out = append(out, f)
	}
	return out
}
