package fakenet

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// What real clients need, offline, under any name the DNS table points at
// a host (pypi.org, registry.npmjs.org, a git host): one package each, and
// server-sent events. Every path answers on every HTTP and HTTPS host, like
// the rest of serveHTTP.
//
//	/simple/egressd-probe/                        pip's simple index (PEP 503)
//	/packages/egressd_probe-1.0.0-py3-none-any.whl  the wheel it links to
//	/egressd-probe                                npm's packument
//	/egressd-probe/-/egressd-probe-1.0.0.tgz      the tarball it links to
//	/-/npm/v1/security/advisories/bulk            npm audit: no advisories
//	/git/probe.git/...                            a git repository (git http-backend, smart HTTP)
//	/sse?n=N&every=D                              N server-sent events, one every D (default 5, 200ms)
const (
	// ProbePackage is the package pip and npm install from the world.
	ProbePackage = "egressd-probe"
	// ProbeRepo is the git repository's path; its main branch has one file,
	// README, holding ProbeReadme.
	ProbeRepo   = "/git/probe.git"
	ProbeReadme = "fakenet probe repository\n"

	wheelName = "egressd_probe-1.0.0-py3-none-any.whl"
	tgzName   = "egressd-probe-1.0.0.tgz"
)

// registries builds the packages once per world.
type registries struct {
	once      sync.Once
	wheel     []byte
	wheelHash string
	tgz       []byte
	err       error

	gitOnce sync.Once
	git     http.Handler
	gitErr  error
}

func (rg *registries) build() error {
	rg.once.Do(func() {
		if rg.wheel, rg.err = buildWheel(); rg.err != nil {
			return
		}
		sum := sha256.Sum256(rg.wheel)
		rg.wheelHash = hex.EncodeToString(sum[:])
		rg.tgz, rg.err = buildTgz()
	})
	return rg.err
}

// serveRegistry answers the registry paths; it reports false for any other.
func (w *World) serveRegistry(rw http.ResponseWriter, r *http.Request) bool {
	p := r.URL.Path
	rg := &w.reg
	switch {
	case p == "/sse":
		serveSSE(rw, r)
	case p == "/simple/"+ProbePackage+"/" || p == "/simple/"+ProbePackage:
		if err := rg.build(); err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return true
		}
		rw.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(rw, "<!DOCTYPE html>\n<html><body>\n<a href=\"/packages/%s#sha256=%s\">%s</a>\n</body></html>\n", wheelName, rg.wheelHash, wheelName)
	case p == "/packages/"+wheelName:
		if err := rg.build(); err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return true
		}
		rw.Header().Set("Content-Type", "application/octet-stream")
		_, _ = rw.Write(rg.wheel)
	case p == "/"+ProbePackage:
		if err := rg.build(); err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return true
		}
		sha1sum := sha1.Sum(rg.tgz)
		sha512sum := sha512.Sum512(rg.tgz)
		doc := map[string]any{
			"name":      ProbePackage,
			"dist-tags": map[string]string{"latest": "1.0.0"},
			"versions": map[string]any{"1.0.0": map[string]any{
				"name": ProbePackage, "version": "1.0.0",
				"dist": map[string]string{
					"tarball":   "https://" + r.Host + "/" + ProbePackage + "/-/" + tgzName,
					"shasum":    hex.EncodeToString(sha1sum[:]),
					"integrity": "sha512-" + base64.StdEncoding.EncodeToString(sha512sum[:]),
				},
			}},
		}
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(doc)
	case p == "/"+ProbePackage+"/-/"+tgzName:
		if err := rg.build(); err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return true
		}
		rw.Header().Set("Content-Type", "application/octet-stream")
		_, _ = rw.Write(rg.tgz)
	case strings.HasPrefix(p, "/-/npm/v1/security/"):
		rw.Header().Set("Content-Type", "application/json")
		_, _ = rw.Write([]byte("{}\n"))
	case strings.HasPrefix(p, "/git/"):
		h, err := rg.gitHandler(w.caDir)
		if err != nil {
			http.Error(rw, "fakenet: git: "+err.Error(), http.StatusServiceUnavailable)
			return true
		}
		h.ServeHTTP(rw, r)
	default:
		return false
	}
	return true
}

// serveSSE sends n events ("data: event I"), one every d, flushing each.
func serveSSE(rw http.ResponseWriter, r *http.Request) {
	n, every := 5, 200*time.Millisecond
	if v, err := strconv.Atoi(r.URL.Query().Get("n")); err == nil && v > 0 && v <= 1000 {
		n = v
	}
	if v, err := time.ParseDuration(r.URL.Query().Get("every")); err == nil && v >= 0 && v <= 10*time.Second {
		every = v
	}
	rw.Header().Set("Content-Type", "text/event-stream")
	rw.Header().Set("Cache-Control", "no-cache")
	rc := http.NewResponseController(rw)
	for i := range n {
		if i > 0 {
			select {
			case <-time.After(every):
			case <-r.Context().Done():
				return
			}
		}
		if _, err := fmt.Fprintf(rw, "data: event %d\n\n", i); err != nil {
			return
		}
		_ = rc.Flush()
	}
}

// buildWheel makes a pure-Python wheel of ProbePackage 1.0.0.
func buildWheel() ([]byte, error) {
	files := []struct{ name, body string }{
		{"egressd_probe/__init__.py", "VERSION = \"1.0.0\"\n"},
		{"egressd_probe-1.0.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: egressd-probe\nVersion: 1.0.0\nSummary: fakenet probe package\n"},
		{"egressd_probe-1.0.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: fakenet\nRoot-Is-Purelib: true\nTag: py3-none-any\n"},
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	var record strings.Builder
	for _, f := range files {
		w, err := zw.Create(f.name)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write([]byte(f.body)); err != nil {
			return nil, err
		}
		sum := sha256.Sum256([]byte(f.body))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", f.name, base64.RawURLEncoding.EncodeToString(sum[:]), len(f.body))
	}
	record.WriteString("egressd_probe-1.0.0.dist-info/RECORD,,\n")
	w, err := zw.Create("egressd_probe-1.0.0.dist-info/RECORD")
	if err != nil {
		return nil, err
	}
	if _, err := w.Write([]byte(record.String())); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// buildTgz makes the npm tarball of ProbePackage 1.0.0.
func buildTgz() ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, f := range []struct{ name, body string }{
		{"package/package.json", `{"name":"egressd-probe","version":"1.0.0","main":"index.js"}` + "\n"},
		{"package/index.js", "module.exports = 'egressd-probe';\n"},
	} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// gitHandler makes the probe repository (under dir, removed with the
// world) on first use and serves it with git http-backend.
func (rg *registries) gitHandler(dir string) (http.Handler, error) {
	rg.gitOnce.Do(func() {
		git, err := exec.LookPath("git")
		if err != nil {
			rg.gitErr = fmt.Errorf("git is not installed: %w", err)
			return
		}
		execPath, err := exec.Command(git, "--exec-path").Output()
		if err != nil {
			rg.gitErr = fmt.Errorf("git --exec-path: %w", err)
			return
		}
		root := filepath.Join(dir, "git")
		bare := filepath.Join(root, strings.TrimPrefix(ProbeRepo, "/git/"))
		env := append(os.Environ(), "GIT_AUTHOR_NAME=fakenet", "GIT_AUTHOR_EMAIL=fakenet@example.test",
			"GIT_COMMITTER_NAME=fakenet", "GIT_COMMITTER_EMAIL=fakenet@example.test", "GIT_CONFIG_NOSYSTEM=1", "HOME="+root)
		run := func(stdin string, args ...string) (string, error) {
			cmd := exec.Command(git, args...)
			cmd.Env, cmd.Stdin = env, strings.NewReader(stdin)
			out, err := cmd.Output()
			if err != nil {
				return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
			}
			return strings.TrimSpace(string(out)), nil
		}
		steps := func() error {
			if _, err := run("", "init", "-q", "--bare", bare); err != nil {
				return err
			}
			blob, err := run(ProbeReadme, "--git-dir", bare, "hash-object", "-w", "--stdin")
			if err != nil {
				return err
			}
			tree, err := run("100644 blob "+blob+"\tREADME\n", "--git-dir", bare, "mktree")
			if err != nil {
				return err
			}
			commit, err := run("", "--git-dir", bare, "commit-tree", tree, "-m", "probe")
			if err != nil {
				return err
			}
			if _, err := run("", "--git-dir", bare, "update-ref", "refs/heads/main", commit); err != nil {
				return err
			}
			_, err = run("", "--git-dir", bare, "symbolic-ref", "HEAD", "refs/heads/main")
			return err
		}
		if err := steps(); err != nil {
			rg.gitErr = err
			return
		}
		rg.git = &cgi.Handler{
			Path: filepath.Join(strings.TrimSpace(string(execPath)), "git-http-backend"),
			Root: "/git",
			Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1", "HOME=" + root},
		}
	})
	return rg.git, rg.gitErr
}
