package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/egressd/egressd/e2e/fakenet"
	"github.com/egressd/egressd/sandbox"
)

// forgedMarkScript connects to other.test's address with egressd's socket
// mark set, which the sandbox firewall exempts from every rule, and sends
// a request for other.test, which no rule allows.
var forgedMarkScript = fmt.Sprintf(`
import socket
s = socket.socket()
try:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, %d)
    print("mark=set")
except OSError as e:
    print("mark=" + (e.strerror or str(e)))
s.settimeout(3)
try:
    s.connect(("198.51.100.10", 80))
    s.sendall(b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
    print("reply=" + s.recv(200).decode(errors="replace").split("\r\n")[0])
except OSError as e:
    print("reply=" + type(e).__name__)
`, sandbox.DefaultMark)

// TestNetRawCannotForgeEgressdsMark: since Linux 5.17, CAP_NET_RAW is
// enough to set SO_MARK (before, only CAP_NET_ADMIN), and the sandbox
// firewall exempts egressd's mark, a public constant, from every rule. A
// filtered sandbox must therefore never hold CAP_NET_RAW: the launcher
// refuses it.
func TestNetRawCannotForgeEgressdsMark(t *testing.T) {
	fakenet.RequireRoot(t)
	launcherBinary(t)
	if left := launcherLeftovers(t); len(left) > 0 {
		t.Fatalf("leftovers before the test ran (not ours; refusing to judge): %v", left)
	}
	lw := newLauncherWorld(t)
	for _, args := range [][]string{
		{"--cap-add", "NET_RAW"},
		{"--cap-add", "CAP_NET_RAW", "--seccomp", "unconfined"},
		{"--profile", "strict", "--cap-add", "net_raw"},
	} {
		r := lw.run(append(args, "--allow", "allowed.test", "--", sandboxPython, "-c", forgedMarkScript)...)
		t.Logf("%v: %s", args, r)
		if r.code != 125 || !strings.Contains(r.stderr, "process.cap_add CAP_NET_RAW would let the sandbox bypass egressd's filtering") {
			t.Errorf("%v: want exit 125 and CAP_NET_RAW refused\n%s", args, r)
		}
	}
	if n := lw.w.HTTPRequests("other.test"); n != 0 {
		t.Errorf("world served %d requests for other.test to a sandbox with a forged mark", n)
	}
	if n := worldHTTPTo(lw.w, netip.MustParseAddr("198.51.100.10")); n != 0 {
		t.Errorf("world served %d requests on 198.51.100.10", n)
	}
	if left := launcherLeftovers(t); len(left) > 0 {
		t.Errorf("the test left behind: %v", left)
	}

}
