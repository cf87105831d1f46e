package specconv

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/egressd/egressd/policy"
	"github.com/google/go-cmp/cmp"
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
		"/repo/modules": "placeholder dir", "/repo/worktrees": "placeholder dir",
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
