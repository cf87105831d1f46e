package main

import (
	"bytes"
	"context"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeRefusesTCPWithoutAToken: the API on TCP without a bearer token
// would let anyone who reaches the port run commands; the server refuses to
// start, before it needs root or touches anything.
func TestServeRefusesTCPWithoutAToken(t *testing.T) {
	var out, errOut bytes.Buffer
	code := launcher(context.Background(), []string{"serve", "--listen", "tcp:127.0.0.1:0"}, nil, &out, &errOut)
	if code != exitLauncher || !strings.Contains(errOut.String(), "TCP needs --token-file") {
		t.Errorf("exit %d, stderr %q; want %d and a line saying TCP needs --token-file", code, errOut.String(), exitLauncher)
	}
}

// TestServeRefusesABadTokenFile: a token others can read, an empty one or
// one with white space inside is refused with what to do.
func TestServeRefusesABadTokenFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		want          string
	}{
		{"readable by others", "tok3n-value\n", 0o644, "chmod 600"},
		{"empty", " \n", 0o600, "is empty"},
		{"two words", "one two\n", 0o600, "white space inside"},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
		if err := os.WriteFile(path, []byte(tc.content), tc.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, tc.mode); err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		code := launcher(context.Background(), []string{"serve", "--listen", "tcp:127.0.0.1:0", "--token-file", path}, nil, &out, &errOut)
		if code != exitLauncher || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want %q", tc.name, code, errOut.String(), tc.want)
		}
	}
	path := filepath.Join(dir, "good")
	if err := os.WriteFile(path, []byte("  tok3n-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, err := readToken(path); err != nil || tok != "tok3n-value" {
		t.Errorf("readToken = %q, %v; want tok3n-value", tok, err)
	}
}

// TestListenUnixReplacesOnlyAStaleSocket: the socket is made 0600; a path
// that is a file, or a socket a live server accepts on, is refused; a
// socket nothing accepts on (a crashed server's) is replaced.
func TestListenUnixReplacesOnlyAStaleSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "serve-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")

	ln, err := listenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if _, err := listenUnix(sock); err == nil || !strings.Contains(err.Error(), "another server is listening") {
		t.Errorf("second listener on a live socket: %v", err)
	}
	// A crashed server's socket: the file stays, nothing accepts.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln, err = listenUnix(sock)
	if err != nil {
		t.Fatalf("a stale socket was not replaced: %v", err)
	}
	ln.Close()

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUnix(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listening over a regular file: %v", err)
	}
	if data, _ := os.ReadFile(file); string(data) != "precious" {
		t.Errorf("the regular file was changed: %q", data)
	}
}

// TestSystemdUnitFlagsAreTheLaunchers: every flag the unit passes exists
// and parses, and its cleanup and its server use the same state directory.
func TestSystemdUnitFlagsAreTheLaunchers(t *testing.T) {
	data, err := os.ReadFile("../../deploy/systemd/launcher-serve.service")
	if err != nil {
		t.Fatal(err)
	}
	var cleanupDir, serveDir string
	for _, line := range strings.Split(string(data), "\n") {
		key, val, ok := strings.Cut(line, "=")
		if !ok || (key != "ExecStart" && key != "ExecStartPre") {
			continue
		}
		val = strings.NewReplacer("${UPSTREAM_DNS}", "", "$SERVE_FLAGS", "").Replace(val)
		args := strings.Fields(val)
		if len(args) < 2 || args[0] != "/usr/local/bin/launcher" {
			t.Fatalf("%s runs %q, want /usr/local/bin/launcher", key, val)
		}
		var fs *flag.FlagSet
		var stateDir func() string
		switch args[1] {
		case "serve":
			var f *serveFlags
			fs, f = newServeFlags()
			stateDir = func() string { return f.stateDir }
		case "cleanup":
			var dir *string
			fs, dir = newCleanupFlags()
			stateDir = func() string { return *dir }
		default:
			t.Fatalf("%s runs launcher %s", key, args[1])
		}
		if err := fs.Parse(args[2:]); err != nil || fs.NArg() != 0 {
			t.Errorf("%s: launcher %s refuses its flags: %v (left: %v)", key, args[1], err, fs.Args())
		}
		if args[1] == "serve" {
			serveDir = stateDir()
		} else {
			cleanupDir = stateDir()
		}
	}
	if cleanupDir == "" || cleanupDir != serveDir {
		t.Errorf("ExecStartPre cleans %q, the server keeps its sandboxes in %q", cleanupDir, serveDir)
	}
}

// TestServeFloorDefaultsToStandard: a server given no floor refuses what is
// below standard (its clients could otherwise ask for the open profile:
// the host's network, uid 0); the operator lifts it only by naming one.
func TestServeFloorDefaultsToStandard(t *testing.T) {
	t.Setenv("EGRESSD_SECURITY_FLOOR", "")
	for _, tc := range []struct {
		args []string
		env  string
		want string
	}{
		{nil, "", "standard"},
		{[]string{"--floor", "open"}, "", "open"},
		{[]string{"--floor", "strict"}, "", "strict"},
		{nil, "strict", "strict"},
	} {
		t.Setenv("EGRESSD_SECURITY_FLOOR", tc.env)
		fs, f := newServeFlags()
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if got := f.floor(); got != tc.want {
			t.Errorf("%v with EGRESSD_SECURITY_FLOOR=%q: floor %q, want %q", tc.args, tc.env, got, tc.want)
		}
	}
}
