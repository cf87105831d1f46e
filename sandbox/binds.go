package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/sandbox/specconv"
)

// Every bind mount of a container is of the object the launcher checked
// (THREATS I5). The runtime takes a bind mount's source and destination as
// paths and resolves them when it mounts, following symbolic links; a
// path inside a directory another sandbox may write (a shared workspace or
// volume) can be swapped for a link to any host directory between the
// launcher's checks and the runtime's mount. So:
//
//  1. just before the runtime creates the container, each bind source is
//     opened without following a symbolic link (openat2
//     RESOLVE_NO_SYMLINKS; a protected path beneath its workspace's or
//     volume's directory, RESOLVE_BENEATH), its type checked, and held
//     open: its (device, inode) is the object the mount must show;
//  2. the runtime creates the container (`runc create`): every mount is
//     made, nothing of the command has run (the container's process is
//     the runtime's, waiting to exec);
//  3. each planned destination is opened in the container's own view
//     (/proc/PID/root, RESOLVE_IN_ROOT; below a directory a sandbox may
//     write, without following a link), and must be a mount's root
//     showing exactly the recorded object, one mount per destination,
//     read-only where planned read-only, nosuid and nodev;
//  4. only then is it started (`runc start`). Any mismatch destroys the
//     container and fails the launch, naming the path.

// BindMount is one bind mount of a container's spec, as the launcher checks
// it before and after the runtime mounts it.
type BindMount struct {
	// Dest is where the container sees it, Source the host path bound.
	Dest, Source string
	// ReadOnly: planned read-only.
	ReadOnly bool
	// Root is the host directory Source lies in and is opened beneath
	// (the workspace or volume of a protected path, or the launcher's
	// state directory); "" opens Source from /. Trusted says Root is the
	// launcher's own, opened following its links.
	Root    string
	Trusted bool
	// DestRoot, when not "", is a destination below which another sandbox
	// may change the tree (the workspace, a writable volume): Dest is
	// looked up below it without following a link.
	DestRoot string
	// Type is what Source must be: "dir", "file", or "" for either (or
	// the null device).
	Type string
}

// Bind source types.
const (
	sourceDir  = "dir"
	sourceFile = "file"
)

// Binds lists the container's bind mounts (every "bind" mount of its spec)
// for the runtime's check (Containers.Create). stateDir is the sandbox's
// state directory, whose files the launcher made itself.
func (c *ContainerPlan) Binds(stateDir string) []BindMount {
	writable := map[string]bool{} // destinations another sandbox may write below
	types := map[string]string{}
	protectedRoot := map[string]specconv.ProtectedPath{}
	for _, pp := range c.Protected {
		writable[pp.Root] = true
		protectedRoot[pp.Path] = pp
		switch {
		case pp.How == specconv.ProtectPinned, pp.How == specconv.ProtectPlaceholder && pp.Dir:
			types[pp.Path] = sourceDir
		case pp.How == specconv.ProtectPlaceholder:
			types[pp.Path] = sourceFile
		}
	}
	for _, m := range c.View.Mounts {
		if m.Kind == specconv.MountVolume && m.Writable {
			writable[m.Path] = true
		}
		if m.Kind == specconv.MountSystem {
			types[m.Path] = sourceDir
		}
	}
	var out []BindMount
	for _, m := range c.Spec.Mounts {
		if m.Type != "bind" {
			continue
		}
		b := BindMount{Dest: m.Destination, Source: m.Source, ReadOnly: hasOption(m, "ro"), Type: types[m.Destination]}
		if pp, ok := protectedRoot[m.Destination]; ok {
			b.Root = pp.HostRoot
		} else if stateDir != "" && strings.HasPrefix(m.Source, stateDir+"/") {
			b.Root, b.Trusted = stateDir, true
		}
		for d := range writable {
			if strings.HasPrefix(b.Dest, d+"/") && len(d) > len(b.DestRoot) {
				b.DestRoot = d
			}
		}
		out = append(out, b)
	}
	return out
}

func hasOption(m specs.Mount, opt string) bool {
	for _, o := range m.Options {
		if o == opt {
			return true
		}
	}
	return false
}

// boundObject is a bind source as recordBinds found it, held open.
type boundObject struct {
	BindMount
	fd       int
	dev, ino uint64
}

// boundObjects are a container's bind sources, held open from before the
// runtime mounts them until the container's mounts are verified.
type boundObjects []boundObject

// recordBinds opens and identifies every source of binds (see above). A
// source that is, or leads through, a symbolic link, or that is not of its
// planned type, is refused. Close what it returns.
func recordBinds(binds []BindMount) (_ boundObjects, err error) {
	var out boundObjects
	roots := map[string]int{}
	defer func() {
		for _, fd := range roots {
			unix.Close(fd)
		}
		if err != nil {
			out.Close()
		}
	}()
	for _, b := range binds {
		fd, err := openSource(b, roots)
		if err != nil {
			return nil, fmt.Errorf("checking the source of the sandbox's mount %q: %w", b.Dest, err)
		}
		out = append(out, boundObject{BindMount: b, fd: fd})
		o := &out[len(out)-1]
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, fmt.Errorf("checking the source of the sandbox's mount %q: %q: %w", b.Dest, b.Source, err)
		}
		o.dev, o.ino = st.Dev, st.Ino
		if err := checkType(b, st.Mode); err != nil {
			return nil, fmt.Errorf("checking the source of the sandbox's mount %q: %w", b.Dest, err)
		}
	}
	return out, nil
}

// openSource opens b's source (O_PATH): beneath its root, or from /,
// never through a symbolic link. roots caches the roots' descriptors.
func openSource(b BindMount, roots map[string]int) (int, error) {
	if b.Root == "" {
		return openNoLinks(unix.AT_FDCWD, b.Source, 0, b.Source)
	}
	rel, err := filepath.Rel(b.Root, b.Source)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return -1, fmt.Errorf("%q is not in %q", b.Source, b.Root)
	}
	rfd, ok := roots[b.Root]
	if !ok {
		if b.Trusted {
			rfd, err = unix.Open(b.Root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				err = fmt.Errorf("%q: %w", b.Root, err)
			}
		} else {
			rfd, err = openNoLinks(unix.AT_FDCWD, b.Root, unix.O_DIRECTORY, b.Root)
		}
		if err != nil {
			return -1, err
		}
		roots[b.Root] = rfd
	}
	return openNoLinks(rfd, rel, 0, b.Source)
}

// openNoLinks opens name (relative to dirfd: beneath it) with O_PATH and
// extra flags, refusing a symbolic link anywhere on the way; shown names
// the path in errors.
func openNoLinks(dirfd int, name string, flags uint64, shown string) (int, error) {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC | flags,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
	if dirfd != unix.AT_FDCWD {
		how.Resolve |= unix.RESOLVE_BENEATH
	}
	fd, err := openat2(dirfd, name, &how)
	switch {
	case err == nil:
		return fd, nil
	case errors.Is(err, unix.ELOOP):
		return -1, fmt.Errorf("%q is, or leads through, a symbolic link (it changed since the launch checked it: is another sandbox writing there?)", shown)
	case errors.Is(err, unix.EXDEV):
		return -1, fmt.Errorf("%q: it moved out of its directory (is another sandbox writing there?)", shown)
	default:
		return -1, fmt.Errorf("%q: %w", shown, err)
	}
}

// openat2 is unix.Openat2, tried again (a few times: it fails closed) when
// a rename or mount elsewhere on the machine raced a scoped lookup
// (EAGAIN) or a signal interrupted it.
func openat2(dirfd int, name string, how *unix.OpenHow) (fd int, err error) {
	for range 16 {
		fd, err = unix.Openat2(dirfd, name, how)
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
	return -1, err
}

// checkType refuses a source that is not of b's planned type.
func checkType(b BindMount, mode uint32) error {
	kind := mode & unix.S_IFMT
	switch {
	case b.Type == sourceDir && kind != unix.S_IFDIR:
		return fmt.Errorf("%q is no longer a directory (is another sandbox writing there?)", b.Source)
	case b.Type == sourceFile && kind != unix.S_IFREG:
		return fmt.Errorf("%q is no longer a regular file (is another sandbox writing there?)", b.Source)
	case kind == unix.S_IFDIR, kind == unix.S_IFREG:
		return nil
	case kind == unix.S_IFCHR && b.Source == os.DevNull:
		return nil
	}
	return fmt.Errorf("%q is neither a directory nor a regular file", b.Source)
}

// Close closes the sources' descriptors.
func (objs boundObjects) Close() {
	for _, o := range objs {
		if o.fd >= 0 {
			unix.Close(o.fd)
		}
	}
}

// verify checks the mounts of the created container whose process 1 is
// pid against the recorded sources (see above).
func (objs boundObjects) verify(pid int) error {
	if len(objs) == 0 {
		return nil
	}
	root, err := unix.Open(fmt.Sprintf("/proc/%d/root", pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("verifying the sandbox's mounts: opening its root: %w", err)
	}
	defer unix.Close(root)
	seen := map[uint64]string{}
	for _, o := range objs {
		if err := o.verifyIn(root, seen); err != nil {
			return fmt.Errorf("the sandbox's mount %q: %w; the container was destroyed before anything ran in it", o.Dest, err)
		}
	}
	return nil
}

// verifyIn checks o's destination in the container whose root is root;
// seen maps the mounts found so far to their destination.
func (o boundObject) verifyIn(root int, seen map[uint64]string) error {
	fd, err := openInContainer(root, o.Dest, o.DestRoot)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_INO|unix.STATX_MNT_ID, &stx); err != nil {
		return err
	}
	if dev := unix.Mkdev(stx.Dev_major, stx.Dev_minor); dev != o.dev || stx.Ino != o.ino {
		return fmt.Errorf("it shows another object than its source %q, which the launcher checked (the path was swapped while the runtime mounted it: is another sandbox writing there?)", o.Source)
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return errors.New("the kernel does not say whether it is a mount (statx STATX_ATTR_MOUNT_ROOT, Linux 5.8)")
	}
	if stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return errors.New("it is not a mount there: the runtime mounted it elsewhere (the path was swapped while the runtime mounted it: is another sandbox writing there?)")
	}
	if other, dup := seen[stx.Mnt_id]; dup {
		return fmt.Errorf("it is the same mount as %q", other)
	}
	seen[stx.Mnt_id] = o.Dest
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return err
	}
	flags := uint64(sfs.Flags)
	switch {
	case o.ReadOnly && flags&unix.ST_RDONLY == 0:
		return errors.New("it is writable, planned read-only")
	case flags&unix.ST_NOSUID == 0 || flags&unix.ST_NODEV == 0:
		return errors.New("it is not nosuid and nodev")
	}
	return nil
}

// openInContainer opens dest (O_PATH) in the container whose root is root:
// links are followed inside the container's root, but not below destRoot,
// a directory another sandbox may write.
func openInContainer(root int, dest, destRoot string) (int, error) {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	if destRoot == "" {
		fd, err := openat2(root, dest, &how)
		if err != nil {
			return -1, fmt.Errorf("opening it in the container: %w", err)
		}
		return fd, nil
	}
	dfd, err := openat2(root, destRoot, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC | unix.O_DIRECTORY, Resolve: how.Resolve})
	if err != nil {
		return -1, fmt.Errorf("opening %q in the container: %w", destRoot, err)
	}
	defer unix.Close(dfd)
	rel := strings.TrimPrefix(dest, destRoot+"/")
	fd, err := openNoLinks(dfd, path.Clean(rel), 0, dest)
	if err != nil {
		return -1, fmt.Errorf("opening it in the container: %w", err)
	}
	return fd, nil
}
