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

	"github.com/egressd/egressd/policy"
)

// Protected paths: inside a host directory the sandbox may write (the
// workspace, a writable volume), the files that make a host run code when
// a person works there afterwards stay as they are (filesystem.protect).
//
// Each protected path gets a bind mount inside the sandbox:
//
//   - a path that exists is bound read-only onto itself: it cannot be
//     written, and as a mount point it cannot be removed, renamed or
//     replaced (rename(2) and unlink(2) refuse mount points: EBUSY);
//   - every directory on the way to it (.git for .git/hooks) is bound
//     onto itself, writable: also a mount point, so `mv .git .git2 && mkdir
//     .git` fails instead of leaving the protection behind on the moved
//     directory;
//   - a path that does not exist gets a placeholder made on the host: an
//     empty file (mode 0444) or, where the path is a directory or leads to
//     one, an empty directory (0555), bound read-only, so the sandbox
//     cannot create it either. Placeholders are shared by the sandboxes
//     that protect the same directory at once, and removed when the last
//     of them ends (see acquirePlaceholders);
//   - except a missing .git when the sandbox user is no host account (the
//     default): a repository the sandbox makes (`git init`) belongs to that
//     user, and git on the host refuses to use a repository another user
//     owns ("detected dubious ownership", safe.directory), as it refuses
//     the repositories the sandbox can make in any directory below the
//     workspace. A placeholder would only break git init and the tools
//     that then find an empty .git (go build's VCS stamping). Run as root
//     or as a host account, the sandbox's repository would be trusted, and
//     a missing .git gets its empty read-only directory. A host that sets
//     safe.directory = * trusts every repository: it must not, where
//     sandboxes write;
//   - a directory on the way that is a file (.git as a worktree's
//     "gitdir:" file) is bound read-only itself: nothing lies below it;
//   - a protected path that is a symbolic link, or leads through one, is
//     refused: a link's target can be changed by replacing the link, which
//     a mount cannot pin.
//
// Besides the profile's list, the git configuration the workspace's
// .git/config names is protected too: core.hooksPath (husky's .husky
// directory, in the worktree) and included files (include.path,
// includeIf.*.path) that lie inside the directory.
//
// What this does not cover: the repository's own code (a Makefile, a
// package.json script, a pre-commit configuration that git's hooks run)
// is the project's, changed by the sandbox like any source file, and runs
// when a person chooses to run it; other repositories the sandbox creates
// below the workspace belong to the sandbox's uid, which git on the host
// refuses to use (safe.directory).

// Ways a protected path is kept.
const (
	ProtectReadOnly    = "read-only"
	ProtectPinned      = "pinned"
	ProtectPlaceholder = "placeholder"
)

// ProtectedPath is one mount that keeps a protected path as it is.
type ProtectedPath struct {
	// Path is inside the sandbox.
	Path string `json:"path"`
	// Host is the same path on the host.
	Host string `json:"host"`
	// How is ProtectReadOnly, ProtectPinned or ProtectPlaceholder.
	How string `json:"how"`
	// Dir says a placeholder is a directory (else an empty file).
	Dir bool `json:"dir,omitempty"`
	// Entry is the protected path that asked for it, relative to Root.
	Entry string `json:"entry"`
	// Root is the workspace or volume (inside the sandbox) it belongs to,
	// and HostRoot the same directory on the host.
	Root     string `json:"root"`
	HostRoot string `json:"host_root"`
}

// PlanProtect plans the protected paths of one host directory hostDir,
// seen inside the sandbox at root: entries (filesystem.protect, effective)
// and the git configuration of hostDir/.git/config. gitRefusesOwner says
// what the sandbox creates belongs to no host account, so git on the host
// refuses a repository it makes: a missing .git is then left creatable. It
// reads the host and changes nothing.
func PlanProtect(hostDir, root string, entries []string, gitRefusesOwner bool) ([]ProtectedPath, error) {
	all := slices.Clone(entries)
	all = append(all, gitConfigPaths(hostDir)...)
	byPath := map[string]*ProtectedPath{}
	rank := map[string]int{ProtectPinned: 0, ProtectReadOnly: 1, ProtectPlaceholder: 1}
	put := func(pp ProtectedPath) {
		if prev, ok := byPath[pp.Path]; ok {
			if rank[prev.How] > rank[pp.How] || rank[prev.How] == rank[pp.How] && (prev.Dir || !pp.Dir) {
				return
			}
		}
		byPath[pp.Path] = &pp
	}
	for _, e := range all {
		rel := policy.ProtectID(e)
		wantDir := strings.HasSuffix(e, "/")
		comps := strings.Split(rel, "/")
		for i := range comps {
			sub := strings.Join(comps[:i+1], "/")
			last := i == len(comps)-1
			host := filepath.Join(hostDir, filepath.FromSlash(sub))
			pp := ProtectedPath{Path: path.Join(root, sub), Host: host, Entry: e, Root: root, HostRoot: hostDir}
			fi, err := os.Lstat(host)
			if errors.Is(err, fs.ErrNotExist) {
				if sub == ".git" && gitRefusesOwner {
					break
				}
				pp.How, pp.Dir = ProtectPlaceholder, !last || wantDir
				put(pp)
				break
			}
			if err != nil {
				return nil, fmt.Errorf("protecting %s in %s: %w", e, root, err)
			}
			if fi.Mode()&fs.ModeSymlink != 0 {
				return nil, fmt.Errorf("protecting %s in %s: %s is a symbolic link, which a mount cannot keep from being replaced; "+
					"make it a file or directory, or remove %q from filesystem.protect (filesystem.unprotect, where the floor allows)",
					e, root, pp.Path, e)
			}
			if last || !fi.IsDir() {
				pp.How = ProtectReadOnly
				put(pp)
				break
			}
			pp.How = ProtectPinned
			put(pp)
		}
	}
	var out []ProtectedPath
	for _, pp := range byPath {
		out = append(out, *pp)
	}
	slices.SortFunc(out, func(a, b ProtectedPath) int { return strings.Compare(a.Path, b.Path) })
	// What lies below a read-only path or a placeholder is covered by it.
	kept := out[:0]
	var cover string
	for _, pp := range out {
		if cover != "" && strings.HasPrefix(pp.Path, cover+"/") {
			continue
		}
		if pp.How != ProtectPinned {
			cover = pp.Path
		}
		kept = append(kept, pp)
	}
	return kept, nil
}

// gitDirEntries are what a git directory holds that makes git run code,
// or redirects it to what does: for a bare repository mounted as the
// workspace or a volume, where they lie at the top instead of in .git.
var gitDirEntries = []string{"hooks/", "config", "commondir", "config.worktree", "modules/", "worktrees/"}

// gitConfigPaths returns the protected paths the git configuration of
// hostDir names inside it: core.hooksPath and included files of
// .git/config, and, when hostDir is itself a git directory (a bare
// repository: HEAD, objects, refs), its gitDirEntries and what its own
// config names. A config that cannot be read adds nothing (the file
// itself is protected).
func gitConfigPaths(hostDir string) []string {
	var out []string
	gitDir := ".git"
	if isGitDir(hostDir) {
		out = append(out, gitDirEntries...)
		gitDir = ""
	}
	data, err := os.ReadFile(filepath.Join(hostDir, gitDir, "config"))
	if err != nil {
		return out
	}
	add := func(p string, dir bool, base string) {
		if p == "" || strings.HasPrefix(p, "~") {
			return
		}
		if filepath.IsAbs(p) {
			rel, err := filepath.Rel(hostDir, filepath.Clean(p))
			if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
				return
			}
			p = rel
		} else {
			p = path.Join(base, p)
		}
		p = path.Clean(filepath.ToSlash(p))
		if p == "." || p == ".." || strings.HasPrefix(p, "../") || p == "" {
			return
		}
		if dir {
			p += "/"
		}
		out = append(out, p)
	}
	section := ""
	for _, line := range lines(data) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			end := strings.Index(line, "]")
			if end < 0 {
				continue
			}
			head := strings.TrimSpace(line[1:end])
			name, _, _ := strings.Cut(head, " ")
			section = strings.ToLower(name)
			line = strings.TrimSpace(line[end+1:])
			if line == "" {
				continue
			}
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key = strings.ToLower(strings.TrimSpace(key))
		value = strings.TrimSpace(value)
		if i := strings.IndexAny(value, "#;"); i >= 0 && !strings.HasPrefix(value, `"`) {
			value = strings.TrimSpace(value[:i])
		}
		value = strings.Trim(value, `"`)
		switch {
		case section == "core" && key == "hookspath":
			add(value, true, "")
		case (section == "include" || section == "includeif") && key == "path":
			add(value, false, gitDir)
		}
	}
	return out
}

// isGitDir reports whether dir looks like a git directory: HEAD, objects/
// and refs/ (git's own test).
func isGitDir(dir string) bool {
	for name, wantDir := range map[string]bool{"HEAD": false, "objects": true, "refs": true} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() != wantDir {
			return false
		}
	}
	return true
}
