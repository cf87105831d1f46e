package sandbox

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/egressd/egressd/sandbox/specconv"
	"golang.org/x/sys/unix"
)

// The protected paths' placeholders live on the host for as long as a
// sandbox protects their directory. Sandboxes that share a workspace or a
// volume share its placeholders: one made by a sandbox that ends first is
// another's mount point, and removing it would take the other's
// protection with it (unlinking a mount point detaches its mounts in every
// mount namespace). So each protected host directory has a record in the
// launcher's state directory, protect-HASH.json, changed only under the
// lock protect-HASH.lock, that lists its placeholders and the sandboxes
// using them (their state directories); the last one to leave removes the
// placeholders. A sandbox is alive while its state directory's lock is
// held (Create holds it for the sandbox's life); one that died is dropped
// from every record by the next launch that looks, and by Reap, which
// also releases it (its own placeholders.json names its directories).

// placeholderShare is one protected directory's record.
type placeholderShare struct {
	Root string `json:"root"`
	// Users are the state directories of the sandboxes protecting Root.
	Users []string `json:"users"`
	// Paths are the placeholders made in Root, by any of them.
	Paths []string `json:"paths"`
}

// sandboxShares is a sandbox's placeholders.json: the protected
// directories whose records name it.
type sandboxShares struct {
	Roots []string `json:"roots"`
}

const placeholdersFile = "placeholders.json"

// errProtectedChanged says a protected path planned as existing was gone
// when the sandbox registered as a user of its directory.
var errProtectedChanged = errors.New("a protected path changed since it was planned")

func shareFiles(stateRoot, root string) (lock, record string) {
	sum := sha256.Sum256([]byte(root))
	base := filepath.Join(stateRoot, "protect-"+hex.EncodeToString(sum[:8]))
	return base + ".lock", base + ".json"
}

// withShare runs fn on the record of root, locked, and writes back what fn
// leaves (removing the record when it lists no user).
func withShare(stateRoot, root string, fn func(*placeholderShare) error) error {
	if err := os.MkdirAll(stateRoot, 0o711); err != nil {
		return err
	}
	lockPath, recPath := shareFiles(stateRoot, root)
	lock, err := lockRemovable(lockPath)
	if err != nil {
		return err
	}
	defer lock.Close()
	sh := &placeholderShare{Root: root}
	if data, err := os.ReadFile(recPath); err == nil {
		if err := json.Unmarshal(data, sh); err != nil || sh.Root != root {
			return fmt.Errorf("reading %s: not the record of %s (%v)", recPath, root, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	ferr := fn(sh)
	if len(sh.Users) == 0 && len(sh.Paths) == 0 {
		// The lock file goes too, while held: a launcher waiting on it
		// finds it gone once it has it, and takes a new one.
		for _, p := range []string{recPath, lockPath} {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return errors.Join(ferr, err)
			}
		}
		return ferr
	}
	data, _ := json.Marshal(sh)
	tmp := recPath + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return errors.Join(ferr, err)
	}
	return errors.Join(ferr, os.Rename(tmp, recPath))
}

// lockRemovable opens and locks the file at path (created if missing), like
// lockFile, for a lock file its holder may remove: it returns once it holds
// the lock on the file that is at path (one removed while this waited for
// it is let go, and the new one taken).
func lockRemovable(path string) (*os.File, error) {
	for range 100 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		if err := flockWait(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		var held, there unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &there) == nil && held.Dev == there.Dev && held.Ino == there.Ino {
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("locking %s: it keeps being replaced", path)
}

// alive reports whether the sandbox with state directory dir holds its
// lock (a launcher or Reap has it).
func alive(dir string) bool {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// acquirePlaceholders registers the sandbox with state directory dir as a
// user of every directory pps protect (stateRoot holds the records), and
// makes the placeholders that are missing. A path something else made
// since it was planned is left alone (bound read-only all the same). A
// path planned as existing that is gone (another sandbox's placeholder,
// removed when it ended between this one's plan and now) makes it return
// errProtectedChanged: the plan no longer holds, and is made again.
func acquirePlaceholders(stateRoot, dir string, pps []specconv.ProtectedPath) error {
	byRoot := map[string][]specconv.ProtectedPath{}
	var roots []string
	for _, pp := range pps {
		root := pp.HostRoot
		if _, ok := byRoot[root]; !ok {
			roots = append(roots, root)
		}
		byRoot[root] = append(byRoot[root], pp)
	}
	if len(roots) == 0 {
		return nil
	}
	data, _ := json.Marshal(sandboxShares{Roots: roots})
	if err := os.WriteFile(filepath.Join(dir, placeholdersFile), data, 0o600); err != nil {
		return fmt.Errorf("recording the protected directories: %w", err)
	}
	for _, root := range roots {
		err := withShare(stateRoot, root, func(sh *placeholderShare) error {
			for _, pp := range byRoot[root] {
				if pp.How == specconv.ProtectPlaceholder {
					continue
				}
				if _, err := os.Lstat(pp.Host); errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("%w: %s", errProtectedChanged, pp.Host)
				}
			}
			if !slices.Contains(sh.Users, dir) {
				sh.Users = append(sh.Users, dir)
			}
			if testHook != nil {
				testHook("placeholders")
			}
			for _, pp := range byRoot[root] {
				if pp.How != specconv.ProtectPlaceholder {
					continue
				}
				made, err := makePlaceholder(pp)
				if err != nil {
					return err
				}
				if made && !slices.Contains(sh.Paths, pp.Host) {
					sh.Paths = append(sh.Paths, pp.Host)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// sharedWith lists, for each directory pps protect, the other live
// sandboxes (their ids) whose records say they use it too: sandboxes
// sharing a writable directory can change what each other finds there.
func sharedWith(stateRoot, dir string, pps []specconv.ProtectedPath) map[string][]string {
	out := map[string][]string{}
	for _, pp := range pps {
		if _, done := out[pp.HostRoot]; done {
			continue
		}
		out[pp.HostRoot] = nil
		_, recPath := shareFiles(stateRoot, pp.HostRoot)
		data, err := os.ReadFile(recPath)
		if err != nil {
			continue
		}
		var sh placeholderShare
		if json.Unmarshal(data, &sh) != nil || sh.Root != pp.HostRoot {
			continue
		}
		for _, u := range sh.Users {
			if u != dir && alive(u) {
				out[pp.HostRoot] = append(out[pp.HostRoot], filepath.Base(u))
			}
		}
	}
	return out
}

// makePlaceholder makes pp's placeholder; made is false when the path
// exists already. It is made through its directory opened beneath the
// protected directory without following a link (another sandbox sharing
// the directory may swap a path for one), never by path.
func makePlaceholder(pp specconv.ProtectedPath) (made bool, err error) {
	parent, name, err := openParent(pp.HostRoot, pp.Host)
	if err != nil {
		return false, fmt.Errorf("protecting %s in %s: making its placeholder: %w", pp.Entry, pp.Root, err)
	}
	defer unix.Close(parent)
	mode := uint32(0o444)
	var fd int
	if pp.Dir {
		mode = 0o555
		err = unix.Mkdirat(parent, name, mode)
		if err == nil {
			fd, err = openNoLinksFlags(parent, name, unix.O_RDONLY|unix.O_DIRECTORY)
		}
	} else {
		fd, err = openNoLinksFlags(parent, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL)
		if err == nil {
			_, err = unix.Write(fd, []byte(pp.Content))
		}
	}
	switch {
	case errors.Is(err, unix.EEXIST):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("protecting %s in %s: making its placeholder %q: %w", pp.Entry, pp.Root, pp.Host, err)
	}
	defer unix.Close(fd)
	if err := unix.Fchmod(fd, mode); err != nil { // exactly, whatever the umask
		return true, fmt.Errorf("protecting %s: %w", pp.Entry, err)
	}
	return true, nil
}

// openParent opens the directory of p (a path in root, root excluded)
// beneath root, without following a link anywhere, and returns it with
// p's last name.
func openParent(root, p string) (fd int, name string, err error) {
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return -1, "", fmt.Errorf("%q is not in %q", p, root)
	}
	rfd, err := openNoLinks(unix.AT_FDCWD, root, unix.O_DIRECTORY, root)
	if err != nil {
		return -1, "", err
	}
	defer unix.Close(rfd)
	fd, err = openNoLinks(rfd, filepath.Dir(rel), unix.O_DIRECTORY, filepath.Dir(p))
	return fd, filepath.Base(rel), err
}

// openNoLinksFlags opens name in the directory dirfd with flags (not
// O_PATH), never following a link (O_NOFOLLOW; O_CREAT files mode 0).
func openNoLinksFlags(dirfd int, name string, flags int) (int, error) {
	return openat2(dirfd, name, &unix.OpenHow{Flags: uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
}

// releasePlaceholders takes the sandbox with state directory dir out of
// the records of the directories it protected (its placeholders.json),
// drops users that are no longer alive, and removes a directory's
// placeholders when no user is left: each only if it is still what the
// launcher made (an empty read-only directory, or a read-only file no
// longer than its content); anything else is reported and left alone.
func releasePlaceholders(stateRoot, dir string) error {
	data, err := os.ReadFile(filepath.Join(dir, placeholdersFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the protected directories: %w", err)
	}
	var mine sandboxShares
	if err := json.Unmarshal(data, &mine); err != nil {
		return fmt.Errorf("reading the protected directories: %w", err)
	}
	var errs []error
	for _, root := range mine.Roots {
		errs = append(errs, withShare(stateRoot, root, func(sh *placeholderShare) error {
			sh.Users = slices.DeleteFunc(sh.Users, func(u string) bool { return u == dir || !alive(u) })
			if len(sh.Users) > 0 {
				return nil
			}
			var left []string
			var errs []error
			// Deepest first: a placeholder may lie in another's directory.
			slices.SortFunc(sh.Paths, func(a, b string) int { return strings.Compare(b, a) })
			for _, p := range sh.Paths {
				if err := removePlaceholder(sh.Root, p); err != nil {
					errs = append(errs, err)
					left = append(left, p)
				}
			}
			sh.Paths = left
			return errors.Join(errs...)
		}))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, placeholdersFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// removePlaceholder removes the placeholder p made in the protected
// directory root, if it is still what the launcher made; through its
// directory opened beneath root without following a link, never by path.
func removePlaceholder(root, p string) error {
	parent, name, err := openParent(root, p)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing placeholder %q: %w; left in place", p, err)
	}
	defer unix.Close(parent)
	var st unix.Stat_t
	err = unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing placeholder %q: %w", p, err)
	}
	perm := st.Mode & 0o7777
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFDIR && perm == 0o555:
		err = unix.Unlinkat(parent, name, unix.AT_REMOVEDIR) // fails, as it should, when not empty
	case st.Mode&unix.S_IFMT == unix.S_IFREG && perm == 0o444 && st.Size <= 2:
		err = unix.Unlinkat(parent, name, 0)
	default:
		err = errors.New("it changed since the launch made it; left in place")
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing placeholder %q: %w", p, err)
	}
	return nil
}
