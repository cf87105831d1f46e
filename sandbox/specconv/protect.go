package specconv

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

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
	// Content is what a placeholder file holds: nothing, but where empty
	// would break the program that reads it (git takes an empty commondir
	// for an error, "." for the repository's own directory).
	Content string `json:"content,omitempty"`
}

// ProtectRoot is a host directory the sandbox may write: the workspace or
// a writable volume.
type ProtectRoot struct {
	// Host is the directory on the host (absolute, clean) and Path where
	// the sandbox sees it.
	Host, Path string
}

// ProtectOptions are what PlanProtectRoots plans from.
type ProtectOptions struct {
	// Roots are every host directory the sandbox may write.
	Roots []ProtectRoot
	// Entries are filesystem.protect (effective), relative to each root.
	Entries []string
	// GitRefusesOwner says what the sandbox creates belongs to no host
	// account, so git on the host refuses a repository it makes: a missing
	// git directory is then left creatable.
	GitRefusesOwner bool
	// Homes are the host accounts' home directories, which "~/" in a git
	// configuration may stand for. Nil: such paths are not followed.
	Homes []string
	// GitConfigs are the host's system and global git configurations
	// (/etc/gitconfig, each home's .gitconfig and .config/git/config),
	// which every repository reads: what they name inside a root is
	// protected too. Nil: none.
	GitConfigs []string
}

// PlanProtect plans the protected paths of one host directory hostDir,
// seen inside the sandbox at root (PlanProtectRoots with that one root).
func PlanProtect(hostDir, root string, entries []string, gitRefusesOwner bool) ([]ProtectedPath, error) {
	return PlanProtectRoots(ProtectOptions{Roots: []ProtectRoot{{Host: hostDir, Path: root}}, Entries: entries, GitRefusesOwner: gitRefusesOwner})
}

// PlanProtectRoots plans the protected paths of every host directory the
// sandbox may write: the entries in each, and what the git repositories
// of those directories read (gitScan) wherever it lies in one of them. A
// host path is protected in every root it lies in, so a volume that holds
// the workspace (or another volume's repository) keeps its files too. It
// reads the host and changes nothing.
func PlanProtectRoots(o ProtectOptions) ([]ProtectedPath, error) {
	roots := make([]protectRoot, len(o.Roots))
	for i, r := range o.Roots {
		roots[i] = protectRoot{ProtectRoot: r, real: r.Host}
		if real, err := filepath.EvalSymlinks(r.Host); err == nil {
			roots[i].real = real
		}
	}
	var wants []protectWant
	for _, r := range o.Roots {
		for _, e := range o.Entries {
			wants = append(wants, protectWant{host: filepath.Join(r.Host, filepath.FromSlash(policy.ProtectID(e))),
				dir: strings.HasSuffix(e, "/"), entry: e, root: r.Host})
		}
	}
	g := &gitScan{homes: o.Homes, gitDirs: map[string]bool{}, seen: map[string]bool{}}
	for _, r := range o.Roots {
		g.repository(r.Host, o.GitConfigs)
	}
	if g.err != nil {
		return nil, fmt.Errorf("protecting what git reads: %w", g.err)
	}
	wants = append(wants, g.wants...)

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
	for _, w := range wants {
		for _, r := range roots {
			if w.hooks && (w.host == r.Host || w.host == r.real) {
				return nil, fmt.Errorf("protecting what git reads: %s makes %s, which the sandbox writes, git's hooks directory: "+
					"every file in it would run; name a directory inside it", w.why, r.Path)
			}
			rel, ok := r.rel(w.host)
			if !ok {
				continue
			}
			if err := planWant(w, r, rel, g.gitDirs, o.GitRefusesOwner, put); err != nil {
				return nil, err
			}
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

// protectRoot is a ProtectRoot and its host directory with its links
// resolved.
type protectRoot struct {
	ProtectRoot
	real string
}

// rel returns host (an absolute clean host path) relative to the root,
// when it lies strictly inside: as it is, or with the links of the part
// that exists resolved (a path a git configuration spells through a link
// to the root). The root itself is a mount already.
func (r protectRoot) rel(host string) (string, bool) {
	for _, base := range []string{r.Host, r.real} {
		if rest, ok := strings.CutPrefix(host, base+"/"); ok && base != "/" {
			return filepath.ToSlash(rest), true
		}
	}
	if resolved := resolveExisting(host); resolved != host {
		if rest, ok := strings.CutPrefix(resolved, r.real+"/"); ok && r.real != "/" {
			return filepath.ToSlash(rest), true
		}
	}
	return "", false
}

// resolveExisting resolves the links of the longest part of p that
// exists, and keeps the rest as it is.
func resolveExisting(p string) string {
	rest := ""
	for dir := p; ; dir = filepath.Dir(dir) {
		if resolved, err := filepath.EvalSymlinks(dir); err == nil {
			return filepath.Join(resolved, rest)
		}
		if dir == "/" || dir == "." {
			return p
		}
		rest = filepath.Join(filepath.Base(dir), rest)
	}
}

// protectWant is one host path to protect.
type protectWant struct {
	host string
	// dir: a directory (a missing one gets an empty directory).
	dir bool
	// pin: a directory a path passes through ("hooks/.." in a git
	// configuration): kept from being replaced, as a directory on the
	// way is, not made read-only.
	pin bool
	// hooks: a hooks directory, every entry of which git runs; one that
	// is a whole root cannot be protected by a mount inside it.
	hooks bool
	// entry is the filesystem.protect entry that asked for it, in root;
	// "" for what git reads, whose setting why names.
	entry, root, why string
}

// planWant plans w in root r, where it is rel: every directory on the way
// pinned, the path itself read-only or a placeholder.
func planWant(w protectWant, r protectRoot, rel string, gitDirs map[string]bool, gitRefusesOwner bool, put func(ProtectedPath)) error {
	entry := w.entry
	if entry == "" || w.root != r.Host {
		entry = rel
		if w.dir {
			entry += "/"
		}
	}
	comps := strings.Split(rel, "/")
	for i := range comps {
		sub := strings.Join(comps[:i+1], "/")
		last := i == len(comps)-1
		host := filepath.Join(r.Host, filepath.FromSlash(sub))
		pp := ProtectedPath{Path: path.Join(r.Path, sub), Host: host, Entry: entry, Root: r.Path, HostRoot: r.Host}
		fi, err := os.Lstat(host)
		if errors.Is(err, fs.ErrNotExist) {
			if gitRefusesOwner && (path.Base(sub) == ".git" || gitDirs[host]) {
				return nil
			}
			pp.How, pp.Dir = ProtectPlaceholder, !last || w.dir || w.pin
			if !pp.Dir && path.Base(sub) == "commondir" {
				pp.Content = ".\n"
			}
			put(pp)
			return nil
		}
		if err != nil {
			return fmt.Errorf("protecting %s in %s: %w", entry, r.Path, err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if w.entry == "" {
				return fmt.Errorf("protecting %s in %s (%s names it): %s is a symbolic link, which a mount cannot keep from being replaced; "+
					"make it a file or directory", entry, r.Path, w.why, pp.Path)
			}
			return fmt.Errorf("protecting %s in %s: %s is a symbolic link, which a mount cannot keep from being replaced; "+
				"make it a file or directory, or remove %q from filesystem.protect (filesystem.unprotect, where the floor allows)",
				entry, r.Path, pp.Path, w.entry)
		}
		if last && !w.pin || !fi.IsDir() {
			pp.How = ProtectReadOnly
			put(pp)
			return nil
		}
		pp.How = ProtectPinned
		put(pp)
	}
	return nil
}

// gitDirEntries are what a git directory holds that makes git run code,
// or redirects it to what does: protected in every git directory a root
// holds but its own .git (whose entries the profile lists, as .git/hooks/).
var gitDirEntries = []string{"hooks/", "config", "commondir", "config.worktree", "info/attributes", "modules/", "worktrees/"}

// gitStateDirs are a git directory's state of a rebase, am, cherry-pick
// or revert in progress: its to-do list runs "exec" lines when the person
// who started it goes on (git rebase --continue). Protected where they
// exist: one the sandbox starts is its own (as a placeholder, every git
// rebase, on the host and in the sandbox, would refuse to start).
var gitStateDirs = []string{"rebase-merge", "rebase-apply", "sequencer"}

// maxIncludeDepth bounds how deep git configuration includes are
// followed: git itself refuses a chain deeper than 10 (MAX_INCLUDE_DEPTH),
// so a file further down is never read.
const maxIncludeDepth = 16

// gitScan finds what the git repositories of the roots read, wherever it
// lies: their git directories (the root's .git, the directory a .git file
// names, the root itself when it is a bare repository, the common
// directory of a linked worktree, linked worktrees' and submodules' git
// directories) and every configuration file they read, following
// include.path and includeIf.*.path (relative to the including file, as
// git does, whatever the condition), and in each the paths it runs code
// from: core.hooksPath and the programs of command settings
// (core.fsmonitor, core.sshCommand, filter.*.clean, alias.* "!..."). The
// planner then protects what of it lies in a root.
type gitScan struct {
	homes []string
	wants []protectWant
	// gitDirs are the git directories found, present or not.
	gitDirs map[string]bool
	seen    map[string]bool
	// err is the first file the scan could not read as git would.
	err error
}

func (g *gitScan) want(w protectWant) { g.wants = append(g.wants, w) }

// repository scans the repository of dir: dir itself when it is a bare
// repository, else its .git (a directory, or a file naming one).
func (g *gitScan) repository(dir string, globals []string) {
	found := false
	if isGitDir(dir) {
		g.gitDir(dir, dir, false)
		found = true
	}
	dotgit := filepath.Join(dir, ".git")
	g.gitDirs[dotgit] = true
	if fi, err := os.Lstat(dotgit); err == nil {
		switch {
		case fi.IsDir():
			g.gitDir(dotgit, dir, true)
			found = true
		case fi.Mode().IsRegular():
			if target := g.readGitfile(dotgit); target != "" {
				g.gitDir(target, dir, false)
				found = true
			}
		}
	}
	if found {
		for _, c := range globals {
			g.config(c, dir, "the host's git configuration "+c, 0)
		}
	}
}

// readGitfile returns the git directory a .git file names ("gitdir: X",
// relative to the file's directory), or "".
func (g *gitScan) readGitfile(p string) string {
	data := g.read(p)
	line, _, _ := strings.Cut(string(data), "\n")
	target, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), "gitdir:")
	target = strings.TrimSpace(target)
	if !ok || target == "" {
		return ""
	}
	return g.literal(target, filepath.Dir(p), "the .git file "+p)
}

// literal is the host path of p, a path git takes as it is (no "~"):
// absolute, or relative to base.
func (g *gitScan) literal(p, base, setting string) string {
	if filepath.IsAbs(p) {
		base = "/"
	}
	return g.join(base, p, setting)
}

// maxGitFile bounds a file of git's the scan reads: far above any
// configuration a person writes.
const maxGitFile = 16 << 20

// read returns the content of the regular file p, or nil when there is
// none. It never blocks on what is no regular file (a FIFO the sandbox
// made where a configuration is read), and a file too large to be a
// configuration fails the plan (it cannot be read as git would).
func (g *gitScan) read(p string) []byte {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	switch {
	case err != nil || !fi.Mode().IsRegular():
		return nil
	case fi.Size() > maxGitFile:
		g.fail(fmt.Errorf("reading %s, which git reads: larger than %d MiB", p, maxGitFile>>20))
		return nil
	}
	data, err := io.ReadAll(io.LimitReader(f, maxGitFile+1))
	if err != nil || len(data) > maxGitFile {
		g.fail(fmt.Errorf("reading %s, which git reads: %v", p, err))
		return nil
	}
	return data
}

func (g *gitScan) fail(err error) {
	if g.err == nil {
		g.err = err
	}
}

// gitDir scans the git directory gd, whose work tree is worktree (where a
// relative core.hooksPath or command starts; "" for none known). listed
// says the profile's entries hold its files already (a root's .git).
func (g *gitScan) gitDir(gd, worktree string, listed bool) {
	if g.seen["dir\x00"+gd] {
		return
	}
	g.seen["dir\x00"+gd] = true
	g.gitDirs[gd] = true
	why := "the git directory " + gd
	if !listed {
		for _, e := range gitDirEntries {
			g.want(protectWant{host: filepath.Join(gd, strings.TrimSuffix(e, "/")), dir: strings.HasSuffix(e, "/"), why: why})
		}
	}
	for _, s := range gitStateDirs {
		if fi, err := os.Lstat(filepath.Join(gd, s)); err == nil && fi.IsDir() {
			g.want(protectWant{host: filepath.Join(gd, s), dir: true, why: why})
		}
	}
	g.config(filepath.Join(gd, "config"), worktree, why, 0)
	g.config(filepath.Join(gd, "config.worktree"), worktree, why, 0)
	if c := strings.TrimSpace(string(g.read(filepath.Join(gd, "commondir")))); c != "" {
		g.gitDir(g.literal(c, gd, "the commondir of "+gd), worktree, false)
	}
	// Linked worktrees: worktrees/NAME/gitdir names the worktree's .git.
	if entries, err := os.ReadDir(filepath.Join(gd, "worktrees")); err == nil {
		for _, e := range entries {
			wd := filepath.Join(gd, "worktrees", e.Name())
			if !e.IsDir() {
				continue
			}
			wt := ""
			if p := strings.TrimSpace(string(g.read(filepath.Join(wd, "gitdir")))); filepath.IsAbs(p) {
				wt = filepath.Dir(filepath.Clean(p))
			}
			g.gitDir(wd, wt, false)
		}
	}
	g.modules(filepath.Join(gd, "modules"), 0)
}

// modules scans the submodules' git directories below dir (a name may
// hold slashes, and a submodule has its own modules/).
func (g *gitScan) modules(dir string, depth int) {
	if depth > 8 {
		return
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		sub := filepath.Join(dir, e.Name())
		if !isGitDir(sub) {
			g.modules(sub, depth+1)
			continue
		}
		wt := ""
		if data := g.read(filepath.Join(sub, "config")); data != nil {
			for _, kv := range parseGitConfig(data) {
				if kv.section == "core" && kv.key == "worktree" && kv.value != "" {
					wt = kv.value
					if !filepath.IsAbs(wt) {
						wt = filepath.Join(sub, wt)
					}
					wt = filepath.Clean(wt)
				}
			}
		}
		g.gitDir(sub, wt, false)
	}
}

// config scans the git configuration file f (protected itself where it
// lies in a root, present or not), depth includes down.
func (g *gitScan) config(f, worktree, why string, depth int) {
	key := "config\x00" + f + "\x00" + worktree
	if depth > maxIncludeDepth || g.seen[key] {
		return
	}
	g.seen[key] = true
	g.want(protectWant{host: f, why: why})
	data := g.read(f)
	if data == nil {
		return
	}
	for _, kv := range parseGitConfig(data) {
		setting := kv.name() + " in " + f
		switch {
		case (kv.section == "include" || kv.section == "includeif") && kv.key == "path":
			for _, p := range g.paths(kv.value, filepath.Dir(f), setting) {
				g.config(p, worktree, setting, depth+1)
			}
		case kv.section == "core" && kv.key == "hookspath":
			for _, p := range g.paths(kv.value, worktree, setting) {
				g.want(protectWant{host: p, dir: true, hooks: true, why: setting})
			}
		case isGitCommand(kv):
			for i, word := range commandWords(kv.value) {
				for _, p := range g.paths(word, worktree, setting) {
					if _, err := os.Lstat(p); i == 0 || err == nil {
						g.want(protectWant{host: p, why: setting})
					}
				}
			}
		}
	}
}

// paths returns the host paths a path in a git configuration stands for:
// an absolute path, one relative to base ("" when none is known), or
// "~/..." in every home. A component ".." undoes is pinned: git resolves
// the path through it, not around it.
func (g *gitScan) paths(p, base, setting string) []string {
	switch {
	case p == "":
		return nil
	case p == "~" || strings.HasPrefix(p, "~/"):
		var out []string
		for _, h := range g.homes {
			out = append(out, g.join(h, strings.TrimPrefix(p, "~"), setting))
		}
		return out
	case strings.HasPrefix(p, "~"):
		name, rest, _ := strings.Cut(p[1:], "/")
		if u, err := user.Lookup(name); err == nil && u.HomeDir != "" {
			return []string{g.join(u.HomeDir, rest, setting)}
		}
		return nil
	case strings.HasPrefix(p, "%(prefix)/"):
		return nil // git's own installation: a system directory
	case filepath.IsAbs(p):
		return []string{g.join("/", p, setting)}
	case base == "":
		return nil
	}
	return []string{g.join(base, p, setting)}
}

// join joins rel to base as the kernel resolves it, component by
// component, pinning each directory a ".." leaves.
func (g *gitScan) join(base, rel, setting string) string {
	cur := filepath.Clean(base)
	for _, c := range strings.Split(filepath.ToSlash(rel), "/") {
		switch c {
		case "", ".":
		case "..":
			g.want(protectWant{host: cur, pin: true, why: setting})
			cur = filepath.Dir(cur)
		default:
			cur = filepath.Join(cur, c)
		}
	}
	return cur
}

// gitCommands are the settings whose value is a command git runs (through
// the shell) without being asked to: "section.key", or "section.*.key" for
// one in a subsection.
var gitCommands = map[string]bool{
	"core.fsmonitor": true, "core.sshcommand": true, "core.editor": true, "core.pager": true,
	"core.askpass": true, "core.gitproxy": true, "sequence.editor": true, "diff.external": true,
	"diff.*.textconv": true, "diff.*.command": true, "merge.*.driver": true,
	"filter.*.clean": true, "filter.*.smudge": true, "filter.*.process": true,
	"credential.helper": true, "credential.*.helper": true, "gpg.program": true, "gpg.*.program": true,
	"interactive.difffilter": true, "uploadpack.packobjectshook": true,
	"sendemail.sendmailcmd": true, "sendemail.smtpserver": true,
	"difftool.*.cmd": true, "difftool.*.path": true, "mergetool.*.cmd": true, "mergetool.*.path": true,
	"web.browser": true, "browser.*.cmd": true, "browser.*.path": true,
}

// isGitCommand reports whether kv's value is a command git runs: a
// gitCommands setting, pager.* and an alias starting with "!".
func isGitCommand(kv gitConfigEntry) bool {
	switch {
	case kv.section == "alias":
		return strings.HasPrefix(strings.TrimSpace(kv.value), "!")
	case kv.section == "pager":
		return true
	case kv.sub != "":
		return gitCommands[kv.section+".*."+kv.key]
	}
	return gitCommands[kv.section+"."+kv.key]
}

// commandWords splits a shell command into the words that may name a
// file: split at blanks and shell operators, the "!" of an alias dropped,
// only words with a "/" (a path, not a program found in PATH) that are no
// option or URL. The first is the program when it is a path.
func commandWords(cmd string) []string {
	fields := strings.FieldsFunc(strings.TrimPrefix(strings.TrimSpace(cmd), "!"), func(r rune) bool {
		return strings.ContainsRune(" \t\n;|&(){}<>`'\"", r)
	})
	var out []string
	for i, f := range fields {
		if i > 0 && (!strings.Contains(f, "/") || strings.HasPrefix(f, "-") || strings.Contains(f, "://") || strings.ContainsAny(f, "=$*?[")) {
			continue
		}
		if i == 0 && !strings.Contains(f, "/") {
			out = append(out, "") // a program found in PATH
			continue
		}
		out = append(out, f)
	}
	return out
}

// gitConfigEntry is one setting of a git configuration file.
type gitConfigEntry struct {
	// section and key are lower case; sub is the subsection as written
	// (lower case in the old [section.sub] form).
	section, sub, key, value string
}

func (kv gitConfigEntry) name() string {
	if kv.sub != "" {
		return kv.section + "." + kv.sub + "." + kv.key
	}
	return kv.section + "." + kv.key
}

// parseGitConfig reads a git configuration file as git does: sections
// ([section], [section "sub"], [section.sub]), keys without a value,
// quoted values with escapes, continuation lines, comments. It stops at
// what git refuses (a malformed header), as git does.
func parseGitConfig(data []byte) []gitConfigEntry {
	s := string(data)
	var out []gitConfigEntry
	section, sub := "", ""
	skipLine := func(i int) int {
		if j := strings.IndexByte(s[i:], '\n'); j >= 0 {
			return i + j + 1
		}
		return len(s)
	}
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
			continue
		case c == '#' || c == ';':
			i = skipLine(i)
			continue
		case c == '[':
			var ok bool
			section, sub, i, ok = parseGitHeader(s, i+1)
			if !ok {
				return out
			}
			continue
		}
		j := i
		for j < len(s) && (isAlnum(s[j]) || s[j] == '-') {
			j++
		}
		if j == i {
			return out
		}
		kv := gitConfigEntry{section: section, sub: sub, key: strings.ToLower(s[i:j])}
		for j < len(s) && (s[j] == ' ' || s[j] == '\t') {
			j++
		}
		if j < len(s) && s[j] == '=' {
			kv.value, i = parseGitValue(s, j+1)
		} else {
			i = skipLine(j)
		}
		if section != "" {
			out = append(out, kv)
		}
	}
	return out
}

// parseGitHeader reads a section header after its "[": the section's
// name, the subsection, and where the header ends.
func parseGitHeader(s string, i int) (section, sub string, next int, ok bool) {
	j := i
	for j < len(s) && (isAlnum(s[j]) || s[j] == '-' || s[j] == '.') {
		j++
	}
	name := strings.ToLower(s[i:j])
	if dot := strings.IndexByte(name, '.'); dot >= 0 {
		name, sub = name[:dot], name[dot+1:]
	}
	if j < len(s) && s[j] == ']' {
		return name, sub, j + 1, name != ""
	}
	for j < len(s) && (s[j] == ' ' || s[j] == '\t') {
		j++
	}
	if j >= len(s) || s[j] != '"' || sub != "" {
		return "", "", len(s), false
	}
	var b strings.Builder
	for j++; j < len(s) && s[j] != '"'; j++ {
		if s[j] == '\n' {
			return "", "", len(s), false
		}
		if s[j] == '\\' && j+1 < len(s) {
			j++
		}
		b.WriteByte(s[j])
	}
	if j+1 >= len(s) || s[j+1] != ']' {
		return "", "", len(s), false
	}
	return name, b.String(), j + 2, name != ""
}

// parseGitValue reads a value after its "=": leading and trailing blanks
// dropped, blanks inside kept, quotes removed, \n \t \b \\ \" escapes and
// a backslash at the end of a line joining the next. It returns the value
// and where the next line starts.
func parseGitValue(s string, i int) (string, int) {
	var b strings.Builder
	quoted := false
	pending := ""
	for i < len(s) {
		c := s[i]
		switch {
		case c == '\n' && !quoted:
			return b.String(), i + 1
		case !quoted && (c == '#' || c == ';'):
			if j := strings.IndexByte(s[i:], '\n'); j >= 0 {
				return b.String(), i + j + 1
			}
			return b.String(), len(s)
		case !quoted && (c == ' ' || c == '\t' || c == '\r'):
			if b.Len() > 0 {
				pending += string(c)
			}
			i++
			continue
		}
		b.WriteString(pending)
		pending = ""
		switch c {
		case '\\':
			if i+1 >= len(s) {
				return b.String(), len(s)
			}
			switch e := s[i+1]; e {
			case '\n':
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'b':
				b.WriteByte('\b')
			default:
				b.WriteByte(e)
			}
			i += 2
		case '"':
			quoted = !quoted
			i++
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), len(s)
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

// isAlnum reports whether c is an ASCII letter or digit.
func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
