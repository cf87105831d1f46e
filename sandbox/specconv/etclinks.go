package specconv

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
)

// The generated files (/etc/resolv.conf, /etc/hosts, /etc/passwd,
// /etc/group, the trust bundle's paths) are bind-mounted over the root's
// own. On many hosts and images some of those paths are symbolic links
// (systemd-resolved's /etc/resolv.conf -> ../run/systemd/resolve/
// stub-resolv.conf, resolvconf's /run/resolvconf/resolv.conf, NixOS's
// /etc/static/... -> /nix/store/..., a distribution's CA bundle). A mount
// cannot go on a link: the runtime follows it, inside the container's root,
// and mounts where it leads; and what it leads to may be covered by a
// mount made after it (the sandbox's /run tmpfs), or lie in a host
// directory the sandbox sees read-only, where the file cannot be made.
//
// So the plan follows the links itself, in the root the sandbox will have
// (Tree.resolve: ".." never climbs above it, an absolute link starts again
// at it), and the file is mounted where they lead, the destination every
// reader of the link reaches; the link stays as it is. Where that is
// decides whether it may be:
//
//   - on the launcher's own file systems: a scratch tmpfs of the sandbox
//     (/run, /tmp, ...; made empty for this sandbox and mounted before the
//     file, a path sorting after its mount), or the root itself where no
//     mount covers it (the host view's root is the sandbox's own tmpfs, an
//     image's root its own overlay). The runtime makes the missing
//     directories and file there; nothing of the host is touched;
//   - on an existing regular file in a host directory the sandbox sees
//     read-only (a system directory, an exposed path): mounted over it, as
//     a destination that is no link is mounted over the host's file;
//   - anywhere else the launch is refused, naming the link: a file missing
//     in a read-only host directory cannot be made there, and a directory
//     a sandbox may write (the workspace, a writable volume) is never a
//     generated file's destination (another sandbox could swap what lies
//     there; the runtime would create files on the host).
//
// The mounts are then verified where they are (THREATS I5): the planned
// destination has no link on the way, and lies on what the launcher made.

// LinkedFile is a generated file's destination that is, or lies beyond, a
// symbolic link in the sandbox's root.
type LinkedFile struct {
	// Path is the destination (/etc/resolv.conf).
	Path string `json:"path"`
	// Target is where the links lead inside the sandbox, resolved in its
	// root; its missing tail, if any, is kept as named.
	Target string `json:"target"`
	// Exists: the root has a regular file at Target.
	Exists bool `json:"exists"`
}

// linkedFiles returns those of dests (generated files' destinations) that
// are, or lie beyond, a symbolic link in the tree, each with where it
// leads. A destination whose links cannot be followed (a loop, a file on
// the way) is an error; one that leads to something other than a regular
// file too.
func linkedFiles(t Tree, dests []string) (map[string]LinkedFile, error) {
	out := map[string]LinkedFile{}
	for _, d := range dests {
		target, exists, err := t.resolveTarget(d)
		if err != nil {
			return nil, fmt.Errorf("placing the sandbox's %s: %w", d, err)
		}
		if exists {
			fi, err := t.lstat(target)
			if err != nil {
				return nil, fmt.Errorf("placing the sandbox's %s: %w", d, err)
			}
			if !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("placing the sandbox's %s: %s in the sandbox's root is %s, not a regular file the launcher's file could be mounted over",
					d, describeLink(d, target), fileKind(fi.Mode()))
			}
		}
		if target != d {
			out[d] = LinkedFile{Path: d, Target: target, Exists: exists}
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// resolveTarget is resolve for a path that may not exist: the resolved
// path with its missing tail, if any, joined on (the runtime makes it), and
// whether it exists.
func (t Tree) resolveTarget(p string) (target string, exists bool, err error) {
	resolved, rest, err := t.resolveRest(p)
	switch {
	case err == nil:
		return resolved, true, nil
	case errors.Is(err, fs.ErrNotExist):
		return path.Join(append([]string{resolved}, rest...)...), false, nil
	default:
		return "", false, err
	}
}

// describeLink says where dest leads, for errors.
func describeLink(dest, target string) string {
	if dest == target {
		return dest
	}
	return fmt.Sprintf("%s (a symbolic link, or beyond one) leads to %s, which", dest, target)
}

// fileKind names the type of m for errors.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	default:
		return "a special file"
	}
}

// placeFile returns where the generated file of destination dest is
// mounted (see above): dest itself, or where its links lead when that lies
// on the launcher's own file systems or on an existing file in a read-only
// host directory. Call it once the scratch mounts and the workspace are
// planned.
func (ms *mountSet) placeFile(dest string, links map[string]LinkedFile) (string, error) {
	l, ok := links[dest]
	if !ok {
		return dest, nil
	}
	if err := checkMountTarget(l.Target); err != nil {
		return "", fmt.Errorf("the sandbox's %s: it leads to %s: %w", dest, l.Target, err)
	}
	under, kind := ms.mountHolding(l.Target)
	switch kind {
	case holderScratch, holderRoot:
		return l.Target, nil
	case holderReadOnly:
		if l.Exists {
			return l.Target, nil
		}
		return "", fmt.Errorf("the sandbox's %s is a symbolic link to %s, which does not exist in %s, a host directory the sandbox sees read-only: "+
			"the launcher's %s cannot be made there; give the sandbox an image with a regular file or a link into /run (--rootfs)",
			dest, l.Target, under, path.Base(dest))
	default:
		return "", fmt.Errorf("the sandbox's %s is a symbolic link to %s, which lies in %s, a directory a sandbox may write: "+
			"the launcher never mounts its %s there; give the sandbox an image with a regular file or a link into /run (--rootfs)",
			dest, l.Target, under, path.Base(dest))
	}
}

// What holds a path of the sandbox (mountHolding).
const (
	holderRoot     = "root"      // no mount: the root itself
	holderScratch  = "scratch"   // a tmpfs the launcher makes for the sandbox
	holderReadOnly = "read-only" // a host directory the sandbox cannot change
	holderWritable = "writable"  // a host directory a sandbox may write
)

// mountHolding returns the planned mount p lies in (the deepest) and what
// it is.
func (ms *mountSet) mountHolding(p string) (mount, kind string) {
	for d := range ms.tmpfs {
		if isAncestorOrSelf(d, p) && len(d) > len(mount) {
			mount, kind = d, holderScratch
		}
	}
	for d, m := range ms.byDest {
		if !isAncestorOrSelf(d, p) || len(d) <= len(mount) {
			continue
		}
		mount, kind = d, holderReadOnly
		if m.m.Type != "bind" {
			kind = holderScratch
		} else if ms.volumeAt[d] || !slices.Contains(m.m.Options, "ro") && !ms.systemAt[d] {
			kind = holderWritable
		}
	}
	if mount == "" {
		return "/", holderRoot
	}
	return mount, kind
}

// generatedFile is a generated /etc file: its host path and its
// destination.
type generatedFile struct{ src, dst string }

// etcFiles are the generated /etc files opts names.
func etcFiles(opts SpecOptions) []generatedFile {
	var out []generatedFile
	for _, f := range []generatedFile{
		{opts.ResolvConf, "/etc/resolv.conf"}, {opts.Hosts, "/etc/hosts"},
		{opts.Passwd, "/etc/passwd"}, {opts.Group, "/etc/group"},
	} {
		if f.src != "" {
			out = append(out, f)
		}
	}
	return out
}

// generatedDests are the destinations of the generated files opts names.
func generatedDests(opts SpecOptions) []string {
	var out []string
	for _, f := range etcFiles(opts) {
		out = append(out, f.dst)
	}
	if opts.TrustBundle != "" {
		out = append(out, opts.TrustPaths...)
	}
	return out
}
