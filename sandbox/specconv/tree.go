package specconv

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/egressd/egressd/policy"
	"golang.org/x/sys/unix"
)

// maxSymlinks is the kernel's limit on links followed in one lookup.
const maxSymlinks = 40

// resolve resolves p, a path inside the sandbox, in the tree the way the
// sandbox would see it: absolute symlinks start again at the root, and ".."
// never climbs above it. It returns the resolved path inside the sandbox
// (every component but a missing last one exists and is not a symlink) and
// the error of the first component that does not exist, if any. It reads
// only the tree; mounts the runtime adds are not there.
func (t Tree) resolve(p string) (string, error) {
	r, _, err := t.resolveRest(p)
	return r, err
}

// resolveRest is resolve, also returning what is left of the path after
// the first component that does not exist (the components after it, links
// not followed).
func (t Tree) resolveRest(p string) (string, []string, error) {
	if !path.IsAbs(p) {
		return "", nil, fmt.Errorf("%q is not an absolute path", p)
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
			return next, rest, err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if len(rest) > 0 && !fi.IsDir() && hasComponent(rest) {
				return next, nil, &fs.PathError{Op: "lookup", Path: next, Err: unix.ENOTDIR}
			}
			resolved = next
			continue
		}
		links++
		if links > maxSymlinks {
			return next, nil, &fs.PathError{Op: "lookup", Path: p, Err: unix.ELOOP}
		}
		target, err := t.readlink(next)
		if err != nil {
			return next, nil, err
		}
		if path.IsAbs(target) {
			resolved = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return resolved, nil, nil
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
