package fakenet

import (
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRegistriesServeRealClients: pip, npm, git and curl fetch the probe
// package, repository and event stream from the world's handler (here on
// loopback, trusting the test CA by flag), so an e2e failure through
// egressd is egressd's, not the fake registry's. Clients not installed are
// skipped one by one.
func TestRegistriesServeRealClients(t *testing.T) {
	ca, err := newTestCA("registries")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	w := &World{caDir: dir, httpCounts: map[string]int{}}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(w.serveHTTP))
	srv.TLS = &tls.Config{GetCertificate: ca.getCertificate}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	base := "https://localhost:" + port
	run := func(t *testing.T, tool string, env []string, args ...string) string {
		t.Helper()
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
		cmd := exec.Command(tool, args...)
		cmd.Dir = t.TempDir()
		cmd.Env = append(os.Environ(), append([]string{"HOME=" + cmd.Dir}, env...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	t.Run("pip", func(t *testing.T) {
		// requests lets REQUESTS_CA_BUNDLE override pip's own setting.
		out := run(t, "python3", []string{"PIP_CERT=" + caFile, "REQUESTS_CA_BUNDLE=" + caFile, "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_FIND_LINKS="},
			"-m", "pip", "download", "--no-deps", "--index-url", base+"/simple/", "-d", ".", ProbePackage)
		if !strings.Contains(out, "Saved") && !strings.Contains(out, "egressd_probe") {
			t.Errorf("pip: %s", out)
		}
	})
	t.Run("npm", func(t *testing.T) {
		out := run(t, "npm", []string{"NODE_EXTRA_CA_CERTS=" + caFile, "npm_config_cafile=" + caFile, "npm_config_registry=" + base + "/", "npm_config_update_notifier=false"},
			"pack", ProbePackage)
		if !strings.Contains(out, "egressd-probe-1.0.0.tgz") {
			t.Errorf("npm pack: %s", out)
		}
	})
	t.Run("git", func(t *testing.T) {
		run(t, "git", []string{"GIT_SSL_CAINFO=" + caFile}, "clone", "-q", base+ProbeRepo, "probe")
	})
	t.Run("sse", func(t *testing.T) {
		start := time.Now()
		out := run(t, "curl", nil, "-sSN", "--cacert", caFile, base+"/sse?n=3&every=300ms")
		if strings.Count(out, "data: event") != 3 || time.Since(start) < 600*time.Millisecond {
			t.Errorf("sse: %q after %v", out, time.Since(start))
		}
	})
}
