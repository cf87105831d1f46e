package specconv

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/policy"
)

// CommandDirs are the directories searched for a blocked command name, on
// top of the sandbox's PATH.
var CommandDirs = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// fileID identifies a file across links.
type fileID struct{ dev, ino uint64 }

type foundCmd struct {
	path string // resolved, inside the sandbox
	id   fileID
}

// BlockedPaths returns the paths inside the sandbox to mask for a block
// list (SpecOptions.MaskPaths), looked up in the tree the sandbox starts with.
//
// A name ("curl") is looked for in CommandDirs and the directories of
// pathEnv (a PATH value; "" means DefaultPath), following symlinks inside
// the tree (/bin -> usr/bin, /etc/alternatives): every file found is masked
// at its resolved path, so exec through any link to it fails too; so is
// every hard link to it in those directories (/usr/bin/perl5.36.0 for
// perl). An absolute path is masked at its resolved path, or as given when
// it does not exist (the runtime then creates an empty mount point, so the
// sandbox cannot create the file either). Masking applies to every process
// of the sandbox: "sh -c curl", "/usr/bin/curl" and "env curl" all fail
// with EACCES.
//
// Limits: masking hides files; it does not recognise programs. A copy of a
// blocked binary that the workload brings in (through the workspace, a
// writable root, or a tmpfs that allows exec) runs, and so does an
// interpreter doing the same job (python's urllib for curl). Masking a
// multi-call binary (busybox) masks all its applets. Pair a block list with
// a read-only root and noexec scratch space (the strict profile) for it to
// mean much; network reach is egressd's to enforce, not this list's.
func BlockedPaths(t Tree, block []string, pathEnv string) ([]string, error) {
	dirs := searchDirs(pathEnv, true)
	var paths []string
	ids := map[fileID]bool{}
	for _, entry := range block {
		found, err := findCommand(t, entry, dirs, false)
		if err != nil {
			return nil, fmt.Errorf("commands.block %q: %w", entry, err)
		}
		if len(found) == 0 && path.IsAbs(entry) {
			paths = append(paths, entry)
		}
		for _, f := range found {
			paths = append(paths, f.path)
			ids[f.id] = true
		}
	}
	if len(ids) > 0 {
		links, err := hardLinks(t, dirs, ids)
		if err != nil {
			return nil, err
		}
		paths = append(paths, links...)
	}
	slices.Sort(paths)
	return slices.Compact(paths), nil
}

// searchDirs is the absolute directories of pathEnv, plus CommandDirs if
// withDefaults, in order, without repeats.
func searchDirs(pathEnv string, withDefaults bool) []string {
	if pathEnv == "" {
		pathEnv = DefaultPath
	}
	var dirs []string
	for d := range strings.SplitSeq(pathEnv, ":") {
		if path.IsAbs(d) {
			dirs = append(dirs, path.Clean(d))
		}
	}
	if withDefaults {
		dirs = append(dirs, CommandDirs...)
	}
	var out []string
	for _, d := range dirs {
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// findCommand finds entry (a name or an absolute path) in t: every
// regular file it names in dirs (firstOnly: the first executable one, as
// exec would), or the file an absolute path resolves to. A missing file is
// no error; a lookup that fails otherwise (a symlink loop) is.
func findCommand(t Tree, entry string, dirs []string, firstOnly bool) ([]foundCmd, error) {
	var candidates []string
	switch {
	case path.IsAbs(entry):
		candidates = []string{path.Clean(entry)}
	case entry == "" || entry == "." || entry == ".." || strings.Contains(entry, "/"):
		return nil, fmt.Errorf("%q is not a command name or an absolute path", entry)
	default:
		for _, d := range dirs {
			candidates = append(candidates, path.Join(d, entry))
		}
	}
	var out []foundCmd
	for _, c := range candidates {
		f, ok, err := t.stat(c)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		if firstOnly {
			if f.mode&0o111 == 0 {
				continue
			}
			return []foundCmd{f.foundCmd}, nil
		}
		out = append(out, f.foundCmd)
	}
	return out, nil
}

type statResult struct {
	foundCmd
	mode fs.FileMode
}

// stat resolves p inside the tree; ok is false when p does not exist or
// is not a regular file.
func (t Tree) stat(p string) (statResult, bool, error) {
	r, err := t.resolve(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return statResult{}, false, nil
	}
	if err != nil {
		return statResult{}, false, fmt.Errorf("looking up %s: %w", p, err)
	}
	h := t.hostFile(r)
	if h == "" {
		return statResult{}, false, nil
	}
	fi, err := os.Lstat(h)
	if err != nil {
		return statResult{}, false, fmt.Errorf("looking up %s: %w", p, err)
	}
	if !fi.Mode().IsRegular() {
		return statResult{}, false, nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return statResult{}, false, fmt.Errorf("looking up %s: no inode information", p)
	}
	return statResult{foundCmd: foundCmd{path: r, id: fileID{uint64(st.Dev), st.Ino}}, mode: fi.Mode()}, true, nil
}

// hardLinks lists the files in dirs that are hard links to one of ids.
func hardLinks(t Tree, dirs []string, ids map[fileID]bool) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, d := range dirs {
		rd, err := t.resolve(d)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("looking up %s: %w", d, err)
		}
		if seen[rd] {
			continue
		}
		seen[rd] = true
		host := t.hostFile(rd)
		if host == "" {
			continue // a directory of the host view's own root: empty
		}
		entries, err := os.ReadDir(host)
		if err != nil {
			if errors.Is(err, unix.ENOTDIR) {
				continue
			}
			return nil, fmt.Errorf("listing %s: %w", d, err)
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(host, e.Name()), &st); err != nil {
				continue // gone since the listing
			}
			if st.Nlink > 1 && ids[fileID{uint64(st.Dev), st.Ino}] {
				out = append(out, path.Join(rd, e.Name()))
			}
		}
	}
	return out, nil
}

// CommandDeniedError is a launch the profile's [commands] section refuses.
// It is a policy decision, not a failure.
type CommandDeniedError struct {
	// Command is argv[0] as given.
	Command string
	// Path is where it resolved inside the sandbox, if it did.
	Path string
	// Reason says why, for a person.
	Reason string
	// Source is where the deciding setting came from.
	Source policy.Source
}

func (e *CommandDeniedError) Error() string {
	s := fmt.Sprintf("command %q refused: %s", e.Command, e.Reason)
	if e.Path != "" && e.Path != e.Command {
		s += " (resolves to " + e.Path + ")"
	}
	if src := e.Source.String(); src != "" {
		s += " [" + src + "]"
	}
	return s
}

// CheckCommand applies the profile's [commands] section to the command a
// launch runs, before the launch, and returns the arguments to run.
//
// argv[0] is looked up the way the runtime's exec would, in t and the
// PATH of env (DefaultPath if unset): a command that resolves to a blocked
// file (or is literally a blocked entry) is refused, whatever
// allowlist_only says; the masks from BlockedPaths stop it anyway, this
// gives a clear error instead of "permission denied".
//
// With commands.allowlist_only, argv[0] must resolve to a file that an
// entry of commands.allow also resolves to (the same file, through any
// symlink or hard link); a relative path, a command not found in t,
// or one under a path the sandbox mounts over (the workspace, /tmp, the
// home, tmpfs paths: their content is not what t shows) is refused.
// The returned argv[0] is then the absolute path that was checked, so the
// runtime runs exactly that file rather than searching PATH again.
// Without allowlist_only the arguments are returned unchanged.
//
// Limit: only the launched command is checked. What it runs in turn is
// not: an allowed shell or interpreter runs anything (blocked commands
// excepted, through masking). allowlist_only is a guard against launching
// the wrong tool, not a sandbox boundary.
func CheckCommand(p *policy.Profile, t Tree, user User, args, env []string) ([]string, error) {
	if len(args) == 0 || args[0] == "" {
		return nil, errors.New("checking the command: no command given")
	}
	argv0 := args[0]
	pathEnv := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathEnv = v
		}
	}
	deny := func(resolved, reason string, src policy.Source) error {
		return &CommandDeniedError{Command: argv0, Path: resolved, Reason: reason, Source: src}
	}
	for _, b := range p.Commands.Block {
		if b == argv0 {
			return nil, deny("", "blocked by commands.block", p.SourceOf("commands.block["+b+"]"))
		}
	}
	onlyAllowed := p.Commands.AllowlistOnly
	onlySrc := p.SourceOf("commands.allowlist_only")

	if !path.IsAbs(argv0) && strings.Contains(argv0, "/") {
		if onlyAllowed {
			return nil, deny("", "a relative path cannot be checked against commands.allow (allowlist_only); give a name or an absolute path", onlySrc)
		}
		return args, nil
	}
	lookup, found, err := lookupCommand(t, argv0, pathEnv)
	if err != nil {
		return nil, fmt.Errorf("checking the command: %w", err)
	}
	if found != nil {
		b, ok, err := sameCommand(t, p.Commands.Block, searchDirs(pathEnv, true), found.id)
		if err != nil {
			return nil, fmt.Errorf("commands.block %q: %w", b, err)
		}
		if ok {
			return nil, deny(found.path, "blocked by commands.block entry "+b, p.SourceOf("commands.block["+b+"]"))
		}
	}
	if !onlyAllowed {
		return args, nil
	}
	if found == nil {
		return nil, deny("", "not found in the sandbox's root file system, so it cannot be checked against commands.allow (allowlist_only)", onlySrc)
	}
	for _, s := range shadowedPaths(p, user) {
		for _, q := range []string{lookup, found.path} {
			if q == s || strings.HasPrefix(q, s+"/") {
				return nil, deny(found.path, "it lies under "+s+", which the sandbox mounts over, so the file checked is not the file that would run", onlySrc)
			}
		}
	}
	a, ok, err := sameCommand(t, p.Commands.Allow, searchDirs(pathEnv, true), found.id)
	if err != nil {
		return nil, fmt.Errorf("commands.allow %q: %w", a, err)
	}
	if !ok {
		return nil, deny(found.path, "not in commands.allow (allowlist_only)", onlySrc)
	}
	out := slices.Clone(args)
	out[0] = lookup
	return out, nil
}

// lookupCommand is where exec would find argv0 (an absolute path, or a
// name searched in pathEnv's directories): the path exec would be given
// and the file; found is nil when there is none.
func lookupCommand(t Tree, argv0, pathEnv string) (lookup string, found *foundCmd, err error) {
	if path.IsAbs(argv0) {
		f, ok, err := t.stat(argv0)
		if err != nil || !ok {
			return "", nil, err
		}
		return path.Clean(argv0), &f.foundCmd, nil
	}
	for _, d := range searchDirs(pathEnv, false) {
		f, ok, err := t.stat(path.Join(d, argv0))
		if err != nil {
			return "", nil, err
		}
		if ok && f.mode&0o111 != 0 {
			return path.Join(d, argv0), &f.foundCmd, nil
		}
	}
	return "", nil, nil
}

// sameCommand says which of names (commands.block or commands.allow
// entries), looked up in dirs, is the file id, if any; on an error, name
// is the entry that failed.
func sameCommand(t Tree, names, dirs []string, id fileID) (name string, ok bool, err error) {
	for _, n := range names {
		hits, err := findCommand(t, n, dirs, false)
		if err != nil {
			return n, false, err
		}
		for _, f := range hits {
			if f.id == id {
				return n, true, nil
			}
		}
	}
	return "", false, nil
}

// shadowedPaths are the sandbox paths whose content at run time is not
// what the root file system holds.
func shadowedPaths(p *policy.Profile, user User) []string {
	home := user.Home
	if home == "" {
		home = defaultHome(user.UID)
	}
	ws := p.Filesystem.Workspace
	if ws == "" {
		ws = "/sandbox"
	}
	out := []string{"/proc", "/sys", "/dev", "/tmp", "/var/tmp", "/run", ws}
	if !user.IsRoot() {
		out = append(out, home)
	}
	for _, t := range p.Filesystem.Tmpfs {
		out = append(out, policy.ExpandHome(t.Path, home))
	}
	return out
}
