package specconv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/policy"
)

func planOf(pps []ProtectedPath) map[string]string {
	out := map[string]string{}
	for _, pp := range pps {
		how := pp.How
		if pp.How == ProtectPlaceholder {
			how += map[bool]string{true: " dir", false: " file"}[pp.Dir]
		}
		out[pp.Path] = how
	}
	return out
}

func TestPlanProtectKeepsGitHooksAndConfigFromAnyRoute(t *testing.T) {
	ws := fakeRoot(t, map[string]string{
		"/.git/HEAD":                    "ref: refs/heads/main\n",
		"/.git/config":                  "[core]\n\thooksPath = .husky\n[include]\n\tpath = ../team.gitconfig\n[includeIf \"gitdir:x\"]\n\tpath = \"/etc/gitconfig\"\n",
		"/.git/hooks/pre-commit.sample": "",
		"/.husky/pre-commit":            "",
		"/.vscode/settings.json":        "{}",
		"/src/main.go":                  "",
	}, nil)
	pps, err := PlanProtect(ws, "/sandbox", policy.DefaultProtect(), true)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"/sandbox/.git":                 ProtectPinned,
		"/sandbox/.git/config":          ProtectReadOnly,
		"/sandbox/.git/hooks":           ProtectReadOnly,
		"/sandbox/.git/commondir":       "placeholder file",
		"/sandbox/.git/config.worktree": "placeholder file",
		"/sandbox/.git/modules":         "placeholder dir",
		"/sandbox/.git/worktrees":       "placeholder dir",
		"/sandbox/.husky":               ProtectReadOnly,    // core.hooksPath
		"/sandbox/team.gitconfig":       "placeholder file", // include.path, relative to .git
		"/sandbox/.gitmodules":          "placeholder file",
		"/sandbox/.gitconfig":           "placeholder file",
		"/sandbox/.bashrc":              "placeholder file",
		"/sandbox/.bash_profile":        "placeholder file",
		"/sandbox/.profile":             "placeholder file",
		"/sandbox/.zshrc":               "placeholder file",
		"/sandbox/.zprofile":            "placeholder file",
		"/sandbox/.envrc":               "placeholder file",
		"/sandbox/.vscode":              ProtectReadOnly,
		"/sandbox/.idea":                "placeholder dir",
		"/sandbox/.mcp.json":            "placeholder file",
		"/sandbox/.claude":              "placeholder dir",
		"/sandbox/.git/info":            "placeholder dir",
		"/sandbox/.bash_login":          "placeholder file",
		"/sandbox/.zshenv":              "placeholder file",
		"/sandbox/.zlogin":              "placeholder file",
		"/sandbox/.zed":                 "placeholder dir",
		"/sandbox/.dir-locals.el":       "placeholder file",
		"/sandbox/.nvim.lua":            "placeholder file",
		"/sandbox/.nvimrc":              "placeholder file",
		"/sandbox/.exrc":                "placeholder file",
		"/sandbox/.devcontainer":        "placeholder dir",
		"/sandbox/.cursor":              "placeholder dir",
		"/sandbox/.gemini":              "placeholder dir",
		"/sandbox/.continue":            "placeholder dir",
		"/sandbox/.amazonq":             "placeholder dir",
		"/sandbox/.roo":                 "placeholder dir",
		"/sandbox/.aider.conf.yml":      "placeholder file",
	}
	if d := cmp.Diff(want, planOf(pps)); d != "" {
		t.Errorf("plan (-want +got)\n%s", d)
	}
	for _, pp := range pps {
		if pp.Host != filepath.Join(ws, strings.TrimPrefix(pp.Path, "/sandbox/")) || pp.Root != "/sandbox" {
			t.Errorf("%s: host %s root %s", pp.Path, pp.Host, pp.Root)
		}
	}
}

func TestPlanProtectCoversWhatLiesBelowAMissingOrFileAncestor(t *testing.T) {
	// No .git, a sandbox user that is a host account (or root): one
	// read-only empty directory keeps every git path (and git init) out.
	entries := []string{".git/hooks/", ".git/config", ".git/commondir", ".claude/settings.json"}
	pps, err := PlanProtect(t.TempDir(), "/w", entries, false)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string]string{"/w/.git": "placeholder dir", "/w/.claude": "placeholder dir"}, planOf(pps)); d != "" {
		t.Errorf("missing .git (-want +got)\n%s", d)
	}
	// A sandbox user git on the host refuses: its repository cannot harm
	// the host, so git init stays possible.
	pps, err = PlanProtect(t.TempDir(), "/w", entries, true)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string]string{"/w/.claude": "placeholder dir"}, planOf(pps)); d != "" {
		t.Errorf("missing .git, user of no host account (-want +got)\n%s", d)
	}
	// .git as a worktree's gitdir file: the file itself is kept.
	ws := fakeRoot(t, map[string]string{"/.git": "gitdir: /elsewhere\n"}, nil)
	pps, err = PlanProtect(ws, "/w", []string{".git/hooks/", ".git/config"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string]string{"/w/.git": ProtectReadOnly}, planOf(pps)); d != "" {
		t.Errorf("gitdir file (-want +got)\n%s", d)
	}
}

// TestPlanProtectFindsABareRepository: a bare repository mounted as the
// workspace or a volume keeps its hooks and config at the top.
func TestPlanProtectFindsABareRepository(t *testing.T) {
	repo := fakeRoot(t, map[string]string{
		"/HEAD": "ref: refs/heads/main\n", "/objects/pack/": "", "/refs/heads/": "",
		"/config": "[core]\n\tbare = true\n\thooksPath = custom-hooks\n", "/hooks/update.sample": "",
	}, nil)
	pps, err := PlanProtect(repo, "/repo", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"/repo/hooks": ProtectReadOnly, "/repo/config": ProtectReadOnly, "/repo/custom-hooks": "placeholder dir",
		"/repo/commondir": "placeholder file", "/repo/config.worktree": "placeholder file",
		"/repo/modules": "placeholder dir", "/repo/worktrees": "placeholder dir", "/repo/info": "placeholder dir",
	}
	if d := cmp.Diff(want, planOf(pps)); d != "" {
		t.Errorf("bare repository (-want +got)\n%s", d)
	}
}

func TestPlanProtectRefusesSymbolicLinks(t *testing.T) {
	ws := fakeRoot(t, map[string]string{"/dotfiles/bashrc": ""}, map[string]string{"/.bashrc": "dotfiles/bashrc", "/.git": "/elsewhere"})
	for _, e := range []string{".bashrc", ".git/hooks/"} {
		_, err := PlanProtect(ws, "/w", []string{e}, true)
		if err == nil || !strings.Contains(err.Error(), "is a symbolic link") {
			t.Errorf("%s: %v, want a refusal", e, err)
		}
	}
}

// writeTree writes files (a path ending in "/" is a directory) below dir.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, body := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestNestedGitIncludeCannotSetAHook (THREATS I3): .git/config includes
// a tracked file that includes another, relative to itself, as git reads
// them; a cycle and an includeIf of any condition too. Every file of the
// chain is protected (the sandbox would write core.hooksPath into the
// last one), and so are the hooks directory and the programs the chain
// names.
func TestNestedGitIncludeCannotSetAHook(t *testing.T) {
	ws := t.TempDir()
	writeTree(t, ws, map[string]string{
		".git/HEAD":   "ref: refs/heads/main\n",
		".git/config": "[core]\n\tbare = false\n[include]\n\tpath = ../project.gitconfig\n",
		"project.gitconfig": "[include]\n\tpath = local.gitconfig\n" +
			"[includeIf \"onbranch:main\"]\n\tpath = conf/branch.gitconfig ; a comment\n",
		"local.gitconfig":       "[Include]\n  Path = \"../" + filepath.Base(ws) + "/project.gitconfig\"\n", // a cycle
		"conf/branch.gitconfig": "[core]\n\thooksPath = tools/hooks\n\tfsmonitor = ./tools/fsmon \\\n --flag\n[include]\n\tpath = deeper/missing.gitconfig\n",
		"tools/fsmon":           "#!/bin/sh\n",
		"conf/deeper/":          "",
		"src/main.go":           "",
	})
	pps, err := PlanProtect(ws, "/sandbox", policy.DefaultProtect(), true)
	if err != nil {
		t.Fatal(err)
	}
	wantInPlan(t, pps, map[string]string{
		"/sandbox/project.gitconfig":                    ProtectReadOnly,
		"/sandbox/local.gitconfig":                      ProtectReadOnly,
		"/sandbox/conf":                                 ProtectPinned,
		"/sandbox/conf/branch.gitconfig":                ProtectReadOnly,
		"/sandbox/conf/deeper":                          ProtectPinned,
		"/sandbox/conf/deeper/missing.gitconfig":        "placeholder file",
		"/sandbox/tools":                                ProtectPinned,
		"/sandbox/tools/hooks":                          "placeholder dir", // core.hooksPath, relative to the work tree
		"/sandbox/tools/fsmon":                          ProtectReadOnly,   // core.fsmonitor's program
		"/sandbox/.git":                                 ProtectPinned,
		"/sandbox/src":                                  "",
		"/sandbox/src/main.go":                          "",
		"/sandbox/" + filepath.Base(ws):                 "",
		"/sandbox/conf/deeper/missing.gitconfig/nested": "",
	})

	// A chain deeper than git follows is followed as far as git does.
	deep := t.TempDir()
	files := map[string]string{".git/HEAD": "", ".git/objects/": "", ".git/refs/": "", ".git/config": "[include]\n\tpath = ../c0\n"}
	for i := range maxIncludeDepth + 4 {
		files[fmt.Sprintf("c%d", i)] = fmt.Sprintf("[include]\n\tpath = c%d\n", i+1)
	}
	writeTree(t, deep, files)
	pps, err = PlanProtect(deep, "/w", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	got := planOf(pps)
	for i := range 11 { // git's MAX_INCLUDE_DEPTH is 10
		if got[fmt.Sprintf("/w/c%d", i)] != ProtectReadOnly {
			t.Errorf("c%d, %d includes down, is not protected", i, i+1)
		}
	}
}

// TestGitCommandProgramsInTheWorkspaceAreProtected (THREATS I3): the
// settings that run a program (a filter, a diff driver, an alias, the
// ssh command) keep the program they name when it lies in a writable
// directory; a program found in PATH, options and URLs are no paths.
func TestGitCommandProgramsInTheWorkspaceAreProtected(t *testing.T) {
	ws := t.TempDir()
	writeTree(t, ws, map[string]string{
		".git/HEAD": "",
		".git/config": "[filter \"x\"]\n\tclean = bin/clean --arg\n\tsmudge = cat\n" +
			"[diff \"pdf\"]\n\ttextconv = sh scripts/conv.sh\n" +
			"[alias]\n\tup = \"!./scripts/up.sh && git push\"\n\tst = status -s ./not/a/program\n" +
			"[core]\n\tsshCommand = /usr/bin/ssh -F ./ssh/config\n\tpager = less -R\n" +
			"[remote \"origin\"]\n\turl = ../upstream/repo.git\n",
		"scripts/conv.sh": "", "scripts/up.sh": "", "ssh/config": "",
	})
	pps, err := PlanProtect(ws, "/w", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	wantInPlan(t, pps, map[string]string{
		"/w/bin":             "placeholder dir", // the program: held even when missing
		"/w/scripts/conv.sh": ProtectReadOnly,   // an argument that exists
		"/w/scripts/up.sh":   ProtectReadOnly,
		"/w/ssh/config":      ProtectReadOnly,
		"/w/not":             "", // an alias that runs git, not a program
		"/w/upstream":        "", // a URL, no command
	})
}

// TestGitfileTargetInsideTheWorkspaceIsProtected (THREATS I3): .git is a
// file naming the real git directory inside the workspace (git init
// --separate-git-dir, a linked worktree of a repository in the
// workspace): that directory keeps its hooks, config and what redirects
// them, the common directory of a linked worktree too, and the config
// chain each reads.
func TestGitfileTargetInsideTheWorkspaceIsProtected(t *testing.T) {
	ws := t.TempDir()
	writeTree(t, ws, map[string]string{
		".git":        "gitdir: .gd\n",
		".gd/HEAD":    "ref: refs/heads/main\n",
		".gd/config":  "[core]\n\tbare = false\n[include]\n\tpath = ../team.gitconfig\n",
		".gd/refs/":   "",
		".gd/objects": "",
		".gd/hooks/":  "",
		// A linked worktree of a repository kept in the workspace.
		"wt/.git":                          "gitdir: ../main/.git/worktrees/wt\n",
		"main/.git/HEAD":                   "",
		"main/.git/objects/":               "",
		"main/.git/refs/":                  "",
		"main/.git/config":                 "[core]\n\thooksPath = .husky\n",
		"main/.git/worktrees/wt/HEAD":      "",
		"main/.git/worktrees/wt/gitdir":    "/nowhere/wt/.git\n",
		"main/.git/worktrees/wt/commondir": "../..\n",
	})
	pps, err := PlanProtectRoots(ProtectOptions{
		Roots:   []ProtectRoot{{Host: ws, Path: "/sandbox"}, {Host: filepath.Join(ws, "wt"), Path: "/wt"}},
		Entries: policy.DefaultProtect(), GitRefusesOwner: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	wantInPlan(t, pps, map[string]string{
		"/sandbox/.git":                ProtectReadOnly,
		"/sandbox/.gd":                 ProtectPinned,
		"/sandbox/.gd/hooks":           ProtectReadOnly,
		"/sandbox/.gd/config":          ProtectReadOnly,
		"/sandbox/.gd/commondir":       "placeholder file",
		"/sandbox/.gd/config.worktree": "placeholder file",
		"/sandbox/.gd/info":            "placeholder dir",
		"/sandbox/.gd/modules":         "placeholder dir",
		"/sandbox/.gd/worktrees":       "placeholder dir",
		"/sandbox/team.gitconfig":      "placeholder file",
		"/wt/.git":                     ProtectReadOnly,
		"/sandbox/wt/.git":             ProtectReadOnly, // the same file, through the workspace
		"/sandbox/main/.git/worktrees": ProtectReadOnly,
		"/sandbox/main/.git/hooks":     "placeholder dir",
		"/sandbox/main/.git/config":    ProtectReadOnly,
		"/sandbox/main/.git/commondir": "placeholder file",
		"/sandbox/main/.git/info":      "placeholder dir",
		"/wt/.husky":                   "placeholder dir", // hooksPath of the common config, in the worktree that runs it
		"/sandbox/wt/.husky":           "placeholder dir",
	})
	for _, pp := range pps {
		if strings.HasSuffix(pp.Path, "/commondir") && pp.Content != ".\n" {
			t.Errorf("%s: placeholder holds %q; git takes an empty commondir for an error", pp.Path, pp.Content)
		}
	}
}

// TestGitDirInAnotherWritableDirectoryIsProtected (THREATS I3): the
// workspace's .git names a git directory outside it, in a writable
// volume: it is protected there. One outside every writable directory is
// not the sandbox's to change, and gets nothing.
func TestGitDirInAnotherWritableDirectoryIsProtected(t *testing.T) {
	ws, vol, elsewhere := t.TempDir(), t.TempDir(), t.TempDir()
	writeTree(t, vol, map[string]string{"repo.git/HEAD": "", "repo.git/objects/": "", "repo.git/refs/": "", "repo.git/hooks/": "", "repo.git/config": ""})
	writeTree(t, elsewhere, map[string]string{"other.git/HEAD": "", "other.git/objects/": "", "other.git/refs/": "", "other.git/config": ""})
	writeTree(t, ws, map[string]string{".git": "gitdir: " + filepath.Join(vol, "repo.git") + "\n", "sub/.git": "gitdir: " + filepath.Join(elsewhere, "other.git") + "\n"})
	pps, err := PlanProtectRoots(ProtectOptions{
		Roots:   []ProtectRoot{{Host: ws, Path: "/sandbox"}, {Host: vol, Path: "/data"}},
		Entries: policy.DefaultProtect(), GitRefusesOwner: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	wantInPlan(t, pps, map[string]string{
		"/sandbox/.git":            ProtectReadOnly,
		"/data/repo.git/hooks":     ProtectReadOnly,
		"/data/repo.git/config":    ProtectReadOnly,
		"/data/repo.git/commondir": "placeholder file",
		"/data/repo.git/info":      "placeholder dir",
		"/data/repo.git":           ProtectPinned,
		"/data/.git":               "", // missing, and git refuses what the sandbox makes
	})
	for _, pp := range pps {
		if strings.HasPrefix(pp.Host, elsewhere) {
			t.Errorf("%s: protected outside every writable directory (%s)", pp.Path, pp.Host)
		}
	}
}

// TestWritableDirectoryHoldingTheWorkspaceKeepsItsProtection (THREATS
// I3): a volume whose host directory holds the workspace's reaches the
// workspace's .git through another path: protected there too.
func TestWritableDirectoryHoldingTheWorkspaceKeepsItsProtection(t *testing.T) {
	vol := t.TempDir()
	ws := filepath.Join(vol, "project")
	writeTree(t, ws, map[string]string{".git/HEAD": "", ".git/hooks/": "", ".git/config": ""})
	pps, err := PlanProtectRoots(ProtectOptions{
		Roots:   []ProtectRoot{{Host: ws, Path: "/sandbox"}, {Host: vol, Path: "/data"}},
		Entries: []string{".git/hooks/", ".git/config"}, GitRefusesOwner: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	got := planOf(pps)
	for _, p := range []string{"/sandbox/.git/hooks", "/data/project/.git/hooks", "/data/project/.git/config"} {
		if got[p] != ProtectReadOnly {
			t.Errorf("%s: %q, want read-only", p, got[p])
		}
	}
}

// TestGitStateOfARebaseInProgressIsProtectedWhereItExists (THREATS I3):
// a rebase the host has in progress keeps its to-do list (its exec lines
// run on git rebase --continue); where none is, none is held, so git
// rebase works in the sandbox and on the host while it runs.
func TestGitStateOfARebaseInProgressIsProtectedWhereItExists(t *testing.T) {
	ws := t.TempDir()
	writeTree(t, ws, map[string]string{".git/HEAD": "", ".git/config": "", ".git/rebase-merge/git-rebase-todo": "exec make\n"})
	pps, err := PlanProtect(ws, "/w", policy.DefaultProtect(), true)
	if err != nil {
		t.Fatal(err)
	}
	got := planOf(pps)
	if got["/w/.git/rebase-merge"] != ProtectReadOnly || got["/w/.git/rebase-apply"] != "" || got["/w/.git/sequencer"] != "" {
		t.Errorf("rebase-merge %q, rebase-apply %q, sequencer %q; want read-only, none, none",
			got["/w/.git/rebase-merge"], got["/w/.git/rebase-apply"], got["/w/.git/sequencer"])
	}
}

func TestParseGitConfigReadsWhatGitReads(t *testing.T) {
	in := "# comment\n[core]\n\thooksPath = \"a b\" # trailing\n\tbare\n" +
		"[includeIf \"gitdir:/x/\"]\n\tpath = y\\\nz ; comment\n" +
		"[Section.Sub]\n\tKey = v\\t\\\"q\\\"  \n[s \"quoted \\\" sub\"] k = inline\n" +
		"[broken\n\tpath = never\n"
	want := []gitConfigEntry{
		{section: "core", key: "hookspath", value: "a b"},
		{section: "core", key: "bare"},
		{section: "includeif", sub: "gitdir:/x/", key: "path", value: "yz"},
		{section: "section", sub: "sub", key: "key", value: "v\t\"q\""},
		{section: "s", sub: "quoted \" sub", key: "k", value: "inline"},
	}
	if d := cmp.Diff(want, parseGitConfig([]byte(in)), cmp.AllowUnexported(gitConfigEntry{})); d != "" {
		t.Errorf("parse (-want +got)\n%s", d)
	}
}

// TestFIFOWhereGitReadsDoesNotHangThePlan: a repository the sandbox made
// may hold a FIFO where a configuration or .git file is read; the next
// launch's plan must not wait on it forever.
func TestFIFOWhereGitReadsDoesNotHangThePlan(t *testing.T) {
	included, own := t.TempDir(), t.TempDir()
	writeTree(t, included, map[string]string{".git/HEAD": "", ".git/config": "[include]\n\tpath = ../fifo\n"})
	writeTree(t, own, map[string]string{".git/HEAD": ""})
	for _, p := range []string{filepath.Join(included, ".git/commondir"), filepath.Join(included, "fifo"), filepath.Join(own, ".git/config")} {
		if err := unix.Mkfifo(p, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	for _, ws := range []string{included, own} {
		done := make(chan error, 1)
		go func() {
			_, err := PlanProtect(ws, "/w", policy.DefaultProtect(), true)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the plan is still reading a FIFO after 10s", ws)
		}
	}
}

// wantInPlan checks how pps keep the paths of want ("" for not at all).
func wantInPlan(t *testing.T, pps []ProtectedPath, want map[string]string) {
	t.Helper()
	got := planOf(pps)
	for p, how := range want {
		if got[p] != how {
			t.Errorf("%s: %q, want %q", p, got[p], how)
		}
	}
}

// TestHooksPathThatIsTheWholeWorkspaceIsRefused (THREATS I3):
// core.hooksPath = . makes every file at the workspace's top a hook the
// host runs, which no mount inside it can keep: the launch is refused.
func TestHooksPathThatIsTheWholeWorkspaceIsRefused(t *testing.T) {
	ws := t.TempDir()
	writeTree(t, ws, map[string]string{".git/HEAD": "", ".git/config": "[core]\n\thooksPath = .\n"})
	_, err := PlanProtect(ws, "/w", policy.DefaultProtect(), true)
	if err == nil || !strings.Contains(err.Error(), "core.hookspath in "+filepath.Join(ws, ".git/config")+" makes /w") {
		t.Errorf("PlanProtect: %v, want a refusal naming the setting", err)
	}
}
