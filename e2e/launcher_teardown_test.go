package e2e

import (
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/egressd/egressd/e2e/fakenet"
	"github.com/egressd/egressd/sandbox"
)

// TestHostileUpstreamThatStopsAcknowledgingLeavesNoVethOfAFinishedSandbox:
// an allowed upstream stops acknowledging (here a DROP in the world) after
// the sandbox's client sent its last bytes, so egressd's relay closes its
// upstream socket with bytes unacknowledged: the socket lives on as an
// orphan in the sandbox's namespace, retransmitting for minutes, and keeps
// the namespace alive after the launcher removed its bind mount. The
// sandbox's veth must not stay with it, up, addressed and routed in the
// launcher's namespace with the uplink's chains gone: when `launcher run`
// returns, no link, address, route or rule of the sandbox is left
// (THREATS F6; found by review 3).
func TestHostileUpstreamThatStopsAcknowledgingLeavesNoVethOfAFinishedSandbox(t *testing.T) {
	fakenet.RequireRoot(t)
	lw := newLauncherWorld(t)
	ap := netip.MustParseAddrPort("203.0.113.10:9000")
	ln, err := lw.w.ListenTCP(ap)
	if err != nil {
		t.Fatal(err)
	}
	drop := []string{"INPUT", "-p", "tcp", "-d", "203.0.113.10", "--dport", "9000", "-j", "DROP"}
	// Registered after newLauncherWorld's cleanup: runs before its check
	// that the world's rules are as they were.
	t.Cleanup(func() { lw.w.Run(t, "iptables", append([]string{"-D"}, drop...)...) })
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		// From here on, nothing the sandbox's side sends is acknowledged.
		if _, _, code := lw.w.Run(t, "iptables", append([]string{"-I"}, drop...)...); code != 0 {
			t.Errorf("iptables -I %v failed", drop)
			return
		}
		_ = c.(interface{ CloseWrite() error }).CloseWrite()
		<-stop // the upstream stays silent until the test ends
	}()
	t.Cleanup(func() { ln.Close() })
	script := `
import socket, ssl
ctx = ssl.create_default_context()
o = ssl.MemoryBIO()
tls = ctx.wrap_bio(ssl.MemoryBIO(), o, server_hostname="allowed.test")
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
c = socket.create_connection(("203.0.113.10", 9000), timeout=10)
c.sendall(o.read())  # a ClientHello naming allowed.test: egressd relays it
while c.recv(4096): pass
c.sendall(b"x" * 4096)
c.shutdown(socket.SHUT_WR)
print("sent")
`
	r := lw.run("--allow", "allowed.test:9000", "--", sandboxPython, "-c", script)
	if r.code != 0 || !strings.Contains(r.stdout, "sent") {
		t.Fatalf("the sandbox's client did not run to its end\n%s", r)
	}
	// At once: the launcher returns only when its sandbox's plumbing is gone.
	out, _, _ := lw.w.Run(t, "ip", "-o", "addr", "show")
	var left []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, " "+sandbox.IDPrefix) {
			left = append(left, strings.Join(strings.Fields(l)[:4], " "))
		}
	}
	routes, _, _ := lw.w.Run(t, "ip", "route", "show")
	for _, l := range strings.Split(routes, "\n") {
		if strings.Contains(l, " "+sandbox.IDPrefix) {
			left = append(left, "route "+l)
		}
	}
	if len(left) > 0 {
		t.Errorf("when launcher run returned, its sandbox's veth was still in the launcher's namespace, addressed and routed:\n%s", strings.Join(left, "\n"))
	}
}
