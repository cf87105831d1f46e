package e2e

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// Attack review 1: the ways around the protected-path list (a file the
// protected .git/config includes by way of another, a .git file's git
// directory, agents' and editors' settings the list did not name) and the
// host's credentials under /etc that a sandbox run as root could read.
// Every verdict is read on the host: what its own git ran, what the
// sandbox printed of a file.

// hostGit runs git on the host, in dir, as the person who works there
// after the sandbox: root, with no global or system configuration.
func hostGit(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.email=person@host.test", "-c", "user.name=person"}, args...)...)
	cmd.Env = append(cleanEnv(), "HOME="+t.TempDir(), "GIT_CONFIG_NOSYSTEM=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// testLauncherNestedGitIncludeCannotSetAHook: .git/config includes the
// tracked project.gitconfig, which includes local.gitconfig. The sandbox
// writes core.hooksPath into local.gitconfig and a pre-commit hook into
// its own directory; the host's next git commit must not run it.
func testLauncherNestedGitIncludeCannotSetAHook(t *testing.T) {
	lw := newLauncherWorld(t)
	if out, err := hostGit(t, lw.ws, "init", "-q"); err != nil {
		t.Fatalf("git init: %v: %s", err, out)
	}
	if out, err := hostGit(t, lw.ws, "config", "include.path", "../project.gitconfig"); err != nil {
		t.Fatalf("git config: %v: %s", err, out)
	}
	for name, body := range map[string]string{"project.gitconfig": "[include]\n\tpath = local.gitconfig\n", "local.gitconfig": "# personal settings\n"} {
		if err := os.WriteFile(filepath.Join(lw.ws, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	makeWritableByAll(t, lw.ws)
	pwned := filepath.Join(t.TempDir(), "pwned")
	script := `cd /sandbox
printf '[core]\n\thooksPath = evilhooks\n' >> local.gitconfig; echo local=$?
printf '[include]\n\tpath = evil.gitconfig\n' >> project.gitconfig; echo project=$?
mkdir -p evilhooks && printf '#!/bin/sh\ntouch ` + pwned + `\n' > evilhooks/pre-commit && chmod 755 evilhooks/pre-commit; echo planted=$?
echo work > work.txt; echo work=$?`
	r := lw.run("--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	for m, ok := range map[string]bool{"local": false, "project": false, "planted": true, "work": true} {
		if v := marker(r.stdout, m); (v == "0") != ok {
			t.Errorf("%s: exit %q, want success=%v\n%s", m, v, ok, r)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(lw.ws, "local.gitconfig")); string(got) != "# personal settings\n" {
		t.Errorf("the sandbox changed local.gitconfig on the host:\n%s", got)
	}
	// The person commits the sandbox's work on the host.
	if out, err := hostGit(t, lw.ws, "add", "work.txt"); err != nil {
		t.Fatalf("git add on the host: %v: %s", err, out)
	}
	if out, err := hostGit(t, lw.ws, "commit", "-q", "-m", "the sandbox's work"); err != nil {
		t.Errorf("git commit on the host: %v: %s", err, out)
	}
	if _, err := os.Stat(pwned); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the host's git commit ran the sandbox's hook (%v)", err)
	}
}

// testLauncherGitfileTargetInsideTheWorkspaceIsProtected: the workspace's
// .git is a file naming its git directory .gd inside the workspace (git
// init --separate-git-dir). The sandbox plants a hook and a
// core.fsmonitor there and tries to move the directory away; git still
// works in the sandbox, and the host's git runs nothing of it.
func testLauncherGitfileTargetInsideTheWorkspaceIsProtected(t *testing.T) {
	lw := newLauncherWorld(t)
	if out, err := hostGit(t, lw.ws, "init", "-q", "--separate-git-dir", filepath.Join(lw.ws, ".gd")); err != nil {
		t.Fatalf("git init: %v: %s", err, out)
	}
	// Relative, as it reads the same inside the sandbox.
	if err := os.WriteFile(filepath.Join(lw.ws, ".git"), []byte("gitdir: .gd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	config, err := os.ReadFile(filepath.Join(lw.ws, ".gd", "config"))
	if err != nil {
		t.Fatal(err)
	}
	makeWritableByAll(t, lw.ws)
	pwned := filepath.Join(t.TempDir(), "pwned")
	script := `cd /sandbox
printf '#!/bin/sh\ntouch ` + pwned + `\n' > .gd/hooks/pre-commit; echo hook=$?
printf '[core]\n\tfsmonitor = touch ` + pwned + `\n' >> .gd/config; echo config=$?
mv .gd .gd-moved; echo mvgd=$?
mv .gd/hooks .gd/hooks-moved; echo mvhooks=$?
echo ok > normal.txt
git -c safe.directory='*' add normal.txt && git -c safe.directory='*' -c user.email=agent@sandbox.test -c user.name=agent commit -q -m work; echo commit=$?`
	r := lw.run("--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	for m, ok := range map[string]bool{"hook": false, "config": false, "mvgd": false, "mvhooks": false, "commit": true} {
		if v := marker(r.stdout, m); (v == "0") != ok {
			t.Errorf("%s: exit %q, want success=%v\n%s", m, v, ok, r)
		}
	}
	if after, _ := os.ReadFile(filepath.Join(lw.ws, ".gd", "config")); !bytes.Equal(after, config) {
		t.Errorf("the sandbox changed .gd/config on the host:\n%s", after)
	}
	if err := os.WriteFile(filepath.Join(lw.ws, "host.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"status", "-s"}, {"add", "host.txt"}, {"commit", "-q", "-m", "host"}} {
		if out, err := hostGit(t, lw.ws, args...); err != nil {
			t.Errorf("git %s on the host: %v: %s", args[0], err, out)
		}
	}
	if _, err := os.Stat(pwned); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the host's git ran what the sandbox planted in .gd (%v)", err)
	}
	if out, _ := hostGit(t, lw.ws, "log", "--format=%s"); out != "host\nwork\n" {
		t.Errorf("the host's history: %q, want the sandbox's commit and the host's", out)
	}
}

// testLauncherAgentEditorAndShellSettingsCannotBeCreated: the settings
// of AI agents, editors and shells that run programs when a person opens
// the directory cannot be created, nor git's info/attributes; a rebase
// works in the sandbox, and on the host after it (no rebase state is
// held where none was), and nothing is left behind.
func testLauncherAgentEditorAndShellSettingsCannotBeCreated(t *testing.T) {
	lw := newLauncherWorld(t)
	if out, err := hostGit(t, lw.ws, "init", "-q", "-b", "main"); err != nil {
		t.Fatalf("git init: %v: %s", err, out)
	}
	for _, step := range [][]string{{"add", "ca.pem"}, {"commit", "-q", "-m", "one"}, {"branch", "side"}, {"commit", "-q", "--allow-empty", "-m", "two"}} {
		if out, err := hostGit(t, lw.ws, step...); err != nil {
			t.Fatalf("git %s: %v: %s", step[0], err, out)
		}
	}
	makeWritableByAll(t, lw.ws)
	before := listDir(t, lw.ws)
	planted := map[string]string{
		"cursor": ".cursor/mcp.json", "gemini": ".gemini/settings.json", "continue": ".continue/config.yaml",
		"amazonq": ".amazonq/mcp.json", "roo": ".roo/mcp.json", "aider": ".aider.conf.yml", "zed": ".zed/settings.json",
		"devcontainer": ".devcontainer/devcontainer.json", "dirlocals": ".dir-locals.el", "nvimlua": ".nvim.lua",
		"nvimrc": ".nvimrc", "exrc": ".exrc", "zshenv": ".zshenv", "zlogin": ".zlogin", "bashlogin": ".bash_login",
		"attributes": ".git/info/attributes",
	}
	script := "cd /sandbox\n"
	for m, p := range planted {
		script += "mkdir -p $(dirname " + p + ") 2>/dev/null; echo evil > " + p + "; echo " + m + "=$?\n"
	}
	script += `git -c safe.directory='*' -c user.email=a@sandbox.test -c user.name=a rebase -q side && git -c safe.directory='*' rebase -q main; echo rebase=$?`
	r := lw.run("--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	for m := range planted {
		if v := marker(r.stdout, m); v == "0" || v == "" {
			t.Errorf("%s (%s): exit %q, want a failure\n%s", m, planted[m], v, r)
		}
	}
	if v := marker(r.stdout, "rebase"); v != "0" {
		t.Errorf("git rebase in the sandbox: exit %q, want success\n%s", v, r)
	}
	if after := listDir(t, lw.ws); !slices.Equal(after, before) {
		t.Errorf("workspace after the run: %v, want %v", after, before)
	}
	for _, name := range []string{"info/attributes", "rebase-merge", "rebase-apply"} {
		if _, err := os.Lstat(filepath.Join(lw.ws, ".git", name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf(".git/%s is on the host after the run (%v)", name, err)
		}
	}
	if out, err := hostGit(t, lw.ws, "rebase", "-q", "side"); err != nil {
		t.Errorf("git rebase on the host after the sandbox ran: %v: %s", err, out)
	}
}
