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

// PrepareRootfs builds a container root file system over lowerDir (the host
// root "/" by default, or an image directory) and returns its path,
// stateDir/rootfs, and a cleanup that removes everything it created.
//
// The root is always an overlay: lowerDir is the lower layer, and the upper
// layer and overlay work directory live on a fresh tmpfs at
// stateDir/upper-tmpfs. Nothing the sandbox or the runtime writes reaches
// lowerDir; it all vanishes with the tmpfs. writable=false is for a profile
// with a read-only root: the spec's root.readonly makes the runtime remount
// the overlay read-only once it has created its mount points (that is why
// a plain read-only bind of lowerDir is not used: /sandbox, ~/.cache and a
// missing /etc/resolv.conf must be created as mount points, and a read-only
// bind refuses them while a writable one would create them on the host).
// The upper layer is then small (16 MiB). With writable=true the sandbox
// writes into the overlay freely; the tmpfs has the kernel's default size
// and its pages are charged to the writer's memory cgroup.
//
// An overlay's lower layer is one file system: mounts below lowerDir (the
// host's /proc, /sys, /dev, /run/netns, a separate /home or /boot) are not
// part of it, and appear as the empty directories they are mounted on. That
// is intended: the runtime mounts its own /proc, /sys and /dev, and a host
// mount never leaks into the sandbox by being under /. A host whose /usr is
// a separate file system needs --rootfs.
//
// stateDir is created (mode 0700) if missing; it should be private to the
// launcher (not under the host root's world-readable paths, or under /run,
// which every sandbox sees as a fresh tmpfs).
//
// cleanup unmounts the overlay and the tmpfs (falling back to a lazy
// unmount when busy) and removes the two directories; it may be called
// more than once, and after a partial failure.
func PrepareRootfs(ctx context.Context, lowerDir, stateDir string, writable bool) (rootfs string, cleanup func() error, err error) {
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	if !filepath.IsAbs(lowerDir) || !filepath.IsAbs(stateDir) {
		return "", nil, fmt.Errorf("preparing rootfs: lower %q and state %q must be absolute paths", lowerDir, stateDir)
	}
	lowerDir, stateDir = filepath.Clean(lowerDir), filepath.Clean(stateDir)
	// Overlay options separate layers with ':' and options with ','.
	if strings.ContainsAny(lowerDir, ",:\\\n") || strings.ContainsAny(stateDir, ",:\\\n") {
		return "", nil, fmt.Errorf("preparing rootfs: paths %q and %q may not contain ',', ':', '\\' or newlines (overlay options)", lowerDir, stateDir)
	}
	if st, err := os.Stat(lowerDir); err != nil {
		return "", nil, fmt.Errorf("preparing rootfs: %w", err)
	} else if !st.IsDir() {
		return "", nil, fmt.Errorf("preparing rootfs: %s is not a directory", lowerDir)
	}
	if stateDir == lowerDir || strings.HasPrefix(lowerDir, stateDir+"/") {
		return "", nil, fmt.Errorf("preparing rootfs: state directory %s contains the lower layer %s", stateDir, lowerDir)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return "", nil, fmt.Errorf("preparing rootfs: %w", err)
	}
	upperMnt := filepath.Join(stateDir, "upper-tmpfs")
	rootfs = filepath.Join(stateDir, "rootfs")
	cleanup = func() error {
		return errors.Join(
			unmountAndRemove(rootfs),
			unmountAndRemove(upperMnt),
		)
	}
	fail := func(err error) (string, func() error, error) {
		if cerr := cleanup(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", cerr))
		}
		return "", nil, fmt.Errorf("preparing rootfs: %w", err)
	}
	for _, d := range []string{upperMnt, rootfs} {
		if err := os.Mkdir(d, 0o700); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return "", nil, fmt.Errorf("preparing rootfs: %s already exists (a previous sandbox not cleaned up?)", d)
			}
			return fail(err)
		}
	}
	tmpfsOpts := "mode=0700"
	if !writable {
		tmpfsOpts += ",size=" + strconv.Itoa(readOnlyUpperSize)
	}
	if err := unix.Mount("tmpfs", upperMnt, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, tmpfsOpts); err != nil {
		return fail(fmt.Errorf("mounting the upper tmpfs on %s: %w", upperMnt, err))
	}
	upper, work := filepath.Join(upperMnt, "upper"), filepath.Join(upperMnt, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fail(err)
		}
	}
	// The upper root's mode and owner become the overlay root's.
	st, err := os.Stat(lowerDir)
	if err != nil {
		return fail(err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fail(fmt.Errorf("%s: no owner information", lowerDir))
	}
	if err := os.Chmod(upper, st.Mode().Perm()); err != nil {
		return fail(err)
	}
	if err := os.Lchown(upper, int(sys.Uid), int(sys.Gid)); err != nil {
		return fail(err)
	}
	data := "lowerdir=" + lowerDir + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", rootfs, "overlay", unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
		return fail(fmt.Errorf("mounting the overlay on %s (%s): %w", rootfs, data, err))
	}
	return rootfs, cleanup, nil
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

// resolveInRoot resolves p, a path inside the sandbox, against the
// directory root the way the sandbox would see it: absolute symlinks start
// again at root, and ".." never climbs above it. It returns the resolved
// path inside the sandbox (every component but a missing last one exists
// and is not a symlink) and the error of the first component that does not
// exist, if any. It reads only root's own tree; mounts the runtime adds are
// not there.
func resolveInRoot(root, p string) (string, error) {
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
		fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(next)))
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
		target, err := os.Readlink(filepath.Join(root, filepath.FromSlash(next)))
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
// otherwise (the ids need no passwd entry, and a host entry that happens to
// have the same uid, "messagebus" say, says nothing about the sandbox). A
// named user is looked up in rootfs's /etc/passwd, and its supplementary
// groups in /etc/group; a name that is not there is an error.
func ResolveUser(rootfs string, u policy.User) (User, error) {
	if u.Name == "" {
		return User{UID: u.UID, GID: u.GID, Home: defaultHome(u.UID)}, nil
	}
	pw, err := readInRoot(rootfs, "/etc/passwd")
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
		out, found = User{UID: uint32(uid), GID: uint32(gid), Home: home}, true
		break
	}
	if !found {
		return User{}, fmt.Errorf("user %q is not in the sandbox's /etc/passwd; use a numeric \"UID:GID\"", u.Name)
	}
	if out.Home == "/" {
		out.Home = defaultHome(out.UID)
	}
	gr, err := readInRoot(rootfs, "/etc/group")
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

// readInRoot reads a small file inside the sandbox's root, following
// symlinks inside it only.
func readInRoot(root, p string) ([]byte, error) {
	r, err := resolveInRoot(root, p)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(root, filepath.FromSlash(r)))
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
