package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// adminState is the part of GET /state (and POST /reset) these tests read.
type adminState struct {
	Policy struct {
		Source     string `json:"source"`
		Generation uint64 `json:"generation"`
	} `json:"policy"`
	DNS struct {
		CacheEntries     int `json:"cache_entries"`
		LearnedAddresses int `json:"learned_addresses"`
	} `json:"dns"`
	Proxy struct {
		ExplicitConnections    int `json:"explicit_connections"`
		TransparentConnections int `json:"transparent_connections"`
	} `json:"proxy"`
	Empty bool `json:"empty"`
}

func (e *egressd) adminState(method, path string) (int, adminState, string) {
	e.t.Helper()
	code, body := e.admin(method, path)
	var st adminState
	if code == http.StatusOK {
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			e.t.Fatalf("%s %s: %v\n%s", method, path, err, body)
		}
	}
	return code, st, body
}

// TestResetLeavesNothingOfTenantAForTenantB plays a pooled sandbox's
// release and acquire against a real egressd behind the real firewall:
// tenant A holds a CONNECT tunnel, a transparent raw TCP connection to an
// address its DNS answer taught egressd, and a cached answer; POST /reset;
// then tenant B, whose policy allows the same names, gets none of it: the
// connections are closed (scored at the client and the fake server), its
// query goes upstream afresh, and raw TCP to the address A learned is
// refused until B resolves the name itself.
func TestResetLeavesNothingOfTenantAForTenantB(t *testing.T) {
	t.Parallel()
	e := newEnv(t, basePolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Tenant A.
	tunnel, err := e.dialProxyTLS(ctx, "keep.test:443", "keep.test")
	if err != nil {
		t.Fatalf("tunnel to keep.test: %v", err)
	}
	defer tunnel.Close()
	tunnelBR := bufio.NewReader(tunnel)
	if reply, err := getOn(tunnel, tunnelBR, "keep.test", 5*time.Second); err != nil || reply.SNI != "keep.test" {
		t.Fatalf("request on tenant A's tunnel: %+v %v", reply, err)
	}
	if d := e.dig("echo.test"); !slices.Equal(d.answers, []string{"A 203.0.113.10"}) {
		t.Fatalf("dig echo.test as tenant A: %s", d)
	}
	echo, err := e.s.DialContext(ctx, "tcp", ap(host4, 7).String())
	if err != nil {
		t.Fatalf("raw TCP to the echo server as tenant A: %v", err)
	}
	defer echo.Close()
	if got := echoOnce(echo, "tenant-a\n"); got != "tenant-a\n" {
		t.Fatalf("echo as tenant A: %q", got)
	}
	queriesA := e.w.DNSQueries("echo.test")
	code, st, body := e.adminState(http.MethodGet, "/state")
	if code != http.StatusOK || st.Empty || st.DNS.LearnedAddresses == 0 || st.Proxy.ExplicitConnections != 1 || st.Proxy.TransparentConnections != 1 {
		t.Fatalf("GET /state as tenant A: %d\n%s", code, body)
	}

	// Release: POST /reset.
	reset := time.Now()
	code, st, body = e.adminState(http.MethodPost, "/reset")
	if code != http.StatusOK || !st.Empty || st.Policy.Source != "reset" {
		t.Errorf("POST /reset: %d\n%s", code, body)
	}
	t.Logf("POST /reset answered in %s", time.Since(reset).Round(time.Millisecond))
	for name, c := range map[string]net.Conn{"CONNECT tunnel": tunnel, "transparent connection": echo} {
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 64)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("tenant A's %s is still open after the reset (read: %v)", name, err)
		}
	}
	if d := e.dig("echo.test"); d.status != "NXDOMAIN" || e.w.DNSQueries("echo.test") != queriesA {
		t.Errorf("dig echo.test between tenants: %s, upstream saw %d queries (was %d); want NXDOMAIN, none forwarded",
			d, e.w.DNSQueries("echo.test"), queriesA)
	}

	// Acquire: tenant B's policy (the same names) through POST /reload.
	e.writePolicy(basePolicy)
	if code, body := e.admin(http.MethodPost, "/reload"); code != http.StatusOK {
		t.Fatalf("POST /reload of tenant B's policy: %d %s", code, body)
	}
	if _, st, body := e.adminState(http.MethodGet, "/state"); st.Policy.Source != "policy" || st.DNS.CacheEntries != 0 || st.DNS.LearnedAddresses != 0 {
		t.Errorf("GET /state of tenant B before it did anything:\n%s", body)
	}
	accepted := e.w.TCPAccepted(ap(host4, 7))
	if p := e.probeTCP(ap(host4, 7), "tenant-b\n"); !refusedFast(p, "tenant-b\n") {
		t.Errorf("raw TCP to the address tenant A learned, before tenant B resolved it: want a refusal, got %+v", p)
	}
	if n := e.w.TCPAccepted(ap(host4, 7)); n != accepted {
		t.Errorf("the echo server accepted %d connections from tenant B before it resolved echo.test", n-accepted)
	}
	if d := e.dig("echo.test"); d.status != "NOERROR" || e.w.DNSQueries("echo.test") != queriesA+1 {
		t.Errorf("dig echo.test as tenant B: %s, upstream saw %d queries (was %d); want a fresh upstream query",
			d, e.w.DNSQueries("echo.test"), queriesA)
	}
	if p := e.probeTCP(ap(host4, 7), "tenant-b\n"); p.Reply != "tenant-b\n" {
		t.Errorf("raw TCP to echo.test after tenant B resolved it: want the echo, got %+v", p)
	}
	if v := e.metric("egressd_resets_total"); v != 1 {
		t.Errorf("egressd_resets_total = %v, want 1", v)
	}
}

// TestLauncherSandboxCannotReachEgressdsAdminSocket: in launcher mode the
// admin endpoint (POST /reset, POST /reload, GET /state) is a unix socket
// in egressd's own state directory. The sandbox shares egressd's network
// namespace, so /proc/net/unix shows it the socket's path; it must still
// not be able to connect to it: the path is in no mount of the container.
func TestLauncherSandboxCannotReachEgressdsAdminSocket(t *testing.T) {
	t.Parallel()
	lw := newLauncherWorld(t)
	const script = `
import json, socket
out = {"paths": [], "connected": [], "errors": []}
with open("/proc/net/unix") as f:
    for line in f.read().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[7].endswith("admin.sock"):
            out["paths"].append(parts[7])
for p in out["paths"]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(p)
        s.sendall(b"POST /reset HTTP/1.0\r\n\r\n")
        out["connected"].append(p + ": " + s.recv(200).decode("latin-1"))
    except Exception as e:
        out["errors"].append(type(e).__name__)
    finally:
        s.close()
print(json.dumps(out))
`
	r := lw.run("--allow", "allowed.test", "--", sandboxPython, "-c", script)
	if r.code != 0 {
		t.Fatalf("launcher run: %s", r)
	}
	var got struct {
		Paths     []string `json:"paths"`
		Connected []string `json:"connected"`
		Errors    []string `json:"errors"`
	}
	line := strings.TrimSpace(r.stdout)
	if i := strings.LastIndex(line, "\n"); i >= 0 {
		line = line[i+1:]
	}
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatalf("probe output: %v\n%s", err, r)
	}
	if len(got.Paths) == 0 {
		t.Fatalf("the sandbox saw no admin socket in /proc/net/unix; the probe proves nothing:\n%s", r)
	}
	if len(got.Connected) != 0 {
		t.Errorf("the sandbox connected to egressd's admin socket: %q", got.Connected)
	}
	for _, e := range got.Errors {
		if e != "FileNotFoundError" {
			t.Errorf("connecting to the admin socket failed with %s, want FileNotFoundError (not mounted)", e)
		}
	}
}
