package firewall

// Privileged tests: each builds its own throwaway pair of network namespaces,
// a sandbox ("egt-fw-XXXXXX") and a world ("egt-fw-XXXXXX-w") joined by a
// veth, so a packet that escapes the rules really arrives somewhere the test
// can see. Nothing is sent anywhere else. Both namespaces are removed when the
// test ends, and the root namespace's iptables are compared before and after.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/internal/privtest"
	"github.com/egressd/egressd/policy"
)

const (
	dnsPort         = 10053
	transparentPort = 10080
	explicitPort    = 10081
	protectedPort   = 10090
	testMark        = 0x2a

	sandboxV4 = "203.0.113.2"
	worldV4   = "203.0.113.9"
	sandboxV6 = "2001:db8::2"
	worldV6   = "2001:db8::9"
)

var privCfg = Config{
	Mode: policy.ModeFiltered, DNSPort: dnsPort, TransparentPort: transparentPort,
	ExplicitProxyPort: explicitPort, Mark: testMark, ProtectedPorts: []uint16{protectedPort},
}

func requireRoot(t testing.TB) {
	t.Helper()
	privtest.Require(t, "creates network namespaces and runs iptables in them")
}

// run executes a command (always by absolute path or from the system dirs,
// so tests that change PATH still work) and fails the test on error.
func run(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// saveRules returns iptables-save and ip6tables-save output (of the root
// namespace if ns is "", else of ns) without comments and counters.
func saveRules(t testing.TB, ns string) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"/usr/sbin/iptables-save", "/usr/sbin/ip6tables-save"} {
		args := []string{tool}
		if ns != "" {
			args = append([]string{"/usr/sbin/ip", "netns", "exec", ns}, args...)
		}
		for _, line := range strings.Split(run(t, args...), "\n") {
			if line != "" && !strings.HasPrefix(line, "#") {
				b.WriteString(counters.ReplaceAllString(line, "[0:0]") + "\n")
			}
		}
	}
	return b.String()
}

type testNS struct {
	name, path   string // the sandbox
	world, wpath string // the fake outside
}

// newTestNS creates the sandbox and world namespaces, addresses both
// families on the veth between them, and registers their removal and the
// root-namespace check.
func newTestNS(t testing.TB) *testNS {
	t.Helper()
	requireRoot(t)
	root := saveRules(t, "")
	t.Cleanup(func() {
		if diff := cmp.Diff(root, saveRules(t, "")); diff != "" {
			t.Errorf("root namespace iptables changed (-before +after):\n%s", diff)
		}
	})
	var id [3]byte
	if _, err := rand.Read(id[:]); err != nil {
		t.Fatal(err)
	}
	ns := &testNS{name: "egt-fw-" + hex.EncodeToString(id[:])}
	ns.world = ns.name + "-w"
	ns.path, ns.wpath = "/var/run/netns/"+ns.name, "/var/run/netns/"+ns.world
	for _, n := range []string{ns.name, ns.world} {
		run(t, "/usr/sbin/ip", "netns", "add", n)
		t.Cleanup(func() {
			if out, err := exec.Command("/usr/sbin/ip", "netns", "del", n).CombinedOutput(); err != nil {
				t.Errorf("removing netns %s: %v: %s", n, err, out)
			}
		})
	}
	ip := func(ns string, args ...string) { run(t, append([]string{"/usr/sbin/ip", "-n", ns}, args...)...) }
	ip(ns.name, "link", "set", "lo", "up")
	ip(ns.world, "link", "set", "lo", "up")
	ip(ns.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns.world)
	ip(ns.name, "addr", "add", sandboxV4+"/24", "dev", "eth0")
	ip(ns.name, "addr", "add", sandboxV6+"/64", "dev", "eth0", "nodad")
	ip(ns.world, "addr", "add", worldV4+"/24", "dev", "eth0")
	ip(ns.world, "addr", "add", worldV6+"/64", "dev", "eth0", "nodad")
	ip(ns.name, "link", "set", "eth0", "up")
	ip(ns.world, "link", "set", "eth0", "up")
	return ns
}

func (ns *testNS) install(t testing.TB, cfg Config) {
	t.Helper()
	if err := Install(context.Background(), ns.path, cfg); err != nil {
		t.Fatalf("Install: %v", err)
	}
}

// in runs fn inside a namespace and fails the test on error.
func in(t testing.TB, path string, fn func() error) {
	t.Helper()
	if err := inNetns(path, fn); err != nil {
		t.Fatal(err)
	}
}

func markControl(mark uint32) func(string, string, syscall.RawConn) error {
	if mark == 0 {
		return nil
	}
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return err
		}
		return serr
	}
}

// dial connects from inside the namespace at path (the socket is created
// there, so it stays there whichever thread uses it later).
func dial(path, network, addr string, mark uint32, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNetns(path, func() error {
		var err error
		d := net.Dialer{Timeout: timeout, Control: markControl(mark)}
		c, err = d.Dial(network, addr)
		return err
	})
	return c, err
}

// acceptor listens on addr inside the namespace and delivers accepted
// connections on the channel until the test ends.
func acceptor(t testing.TB, path, addr string) <-chan net.Conn {
	t.Helper()
	var l net.Listener
	in(t, path, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	ch := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case ch <- c:
			default:
				c.Close()
			}
		}
	}()
	t.Cleanup(func() { l.Close() })
	return ch
}

type datagram struct {
	data []byte
	from netip.AddrPort
}

// udpServer listens on addr inside the namespace, records every datagram and,
// if echo is set, answers it with "ok:" + the payload.
func udpServer(t testing.TB, path, addr string, echo bool) <-chan datagram {
	t.Helper()
	var pc *net.UDPConn
	in(t, path, func() error {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		pc = c.(*net.UDPConn)
		return nil
	})
	ch := make(chan datagram, 16)
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			// Record before answering: a test that counts after reading
			// the answer must find the datagram counted.
			select {
			case ch <- datagram{slices.Clone(buf[:n]), from}:
			default:
			}
			if echo {
				pc.WriteToUDPAddrPort(append([]byte("ok:"), buf[:n]...), from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close() })
	return ch
}

func expectConn(t testing.TB, ch <-chan net.Conn, what string) net.Conn {
	t.Helper()
	select {
	case c := <-ch:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(3 * time.Second):
		t.Fatalf("%s: no connection arrived", what)
		return nil
	}
}

func expectNoConn(t testing.TB, ch <-chan net.Conn, what string) {
	t.Helper()
	select {
	case c := <-ch:
		t.Errorf("%s: a connection from %s arrived", what, c.RemoteAddr())
		c.Close()
	case <-time.After(200 * time.Millisecond):
	}
}

func expectNoDatagram(t testing.TB, ch <-chan datagram, what string) {
	t.Helper()
	select {
	case d := <-ch:
		t.Errorf("%s: a datagram %q from %s arrived", what, d.data, d.from)
	case <-time.After(300 * time.Millisecond):
	}
}

// originalDst reads SO_ORIGINAL_DST (IP6T_SO_ORIGINAL_DST for IPv6) from a
// redirected connection: the destination before the REDIRECT.
func originalDst(t testing.TB, c net.Conn) netip.AddrPort {
	t.Helper()
	const soOriginalDst = 80 // SO_ORIGINAL_DST == IP6T_SO_ORIGINAL_DST
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().(*net.TCPAddr)
	var (
		ap   netip.AddrPort
		serr error
	)
	err = raw.Control(func(fd uintptr) {
		if local.IP.To4() == nil {
			var sa unix.RawSockaddrInet6
			l := uint32(unsafe.Sizeof(sa))
			_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IPV6, soOriginalDst, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0)
			if e != 0 {
				serr = e
				return
			}
			port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
			ap = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
			return
		}
		var sa unix.RawSockaddrInet4
		l := uint32(unsafe.Sizeof(sa))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, soOriginalDst, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
			return
		}
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		ap = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		t.Fatalf("getsockopt SO_ORIGINAL_DST: %v", err)
	}
	return ap
}

func hostPort(host string, port int) string { return net.JoinHostPort(host, fmt.Sprint(port)) }

// TestExecFromLockedThreadRunsInTargetNetns proves the mechanism the package
// rests on: a process exec'd from the locked thread after setns lives in the
// target namespace, not the caller's.
func TestExecFromLockedThreadRunsInTargetNetns(t *testing.T) {
	ns := newTestNS(t)
	var st unix.Stat_t
	if err := unix.Stat(ns.path, &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)
	var got []byte
	in(t, ns.path, func() error {
		var err error
		got, err = exec.Command("/usr/bin/readlink", "/proc/self/ns/net").Output()
		return err
	})
	if g := strings.TrimSpace(string(got)); g != want {
		t.Errorf("child's netns = %s, want %s", g, want)
	}
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if self == want {
		t.Errorf("the test process itself ended up in the sandbox namespace")
	}
}

// TestNetnsNeverLeaksIntoTheProcess: after many operations in a sandbox
// namespace, no thread of the process (the main thread above all, which
// /proc/self/ns/net and /proc/self/net follow) is left inside it.
func TestNetnsNeverLeaksIntoTheProcess(t *testing.T) {
	ns := newTestNS(t)
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(ns.path, &st); err != nil {
		t.Fatal(err)
	}
	sandbox := fmt.Sprintf("net:[%d]", st.Ino)
	done := make(chan struct{})
	for range 4 { // keep the scheduler busy, so the main thread looks for work
		go func() {
			for {
				select {
				case <-done:
					return
				default:
					runtime.Gosched()
				}
			}
		}()
	}
	for range 300 {
		in(t, ns.path, func() error { return nil })
	}
	close(done)
	if got, _ := os.Readlink("/proc/self/ns/net"); got != self {
		t.Fatalf("/proc/self/ns/net = %s after the calls, want %s (the main thread entered the sandbox)", got, self)
	}
	// Threads that ran fn exit when their goroutine ends; give them a moment.
	deadline := time.Now().Add(3 * time.Second)
	for {
		var inside []string
		tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
		for _, task := range tasks {
			if l, err := os.Readlink(task); err == nil && l == sandbox {
				inside = append(inside, task)
			}
		}
		if len(inside) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("threads still in the sandbox namespace: %q", inside)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestInstallThenVerifyPasses for every mode, and Verify against another
// config fails: it really compares.
func TestInstallThenVerifyPasses(t *testing.T) {
	uidCfg := privCfg
	uidCfg.ExemptUID = uidPtr(65534)
	uidCfg.InboundTCPPorts = []uint16{8080}
	for name, cfg := range map[string]Config{"filtered": privCfg, "filtered-uid-inbound": uidCfg, "none": testNone} {
		t.Run(name, func(t *testing.T) {
			ns := newTestNS(t)
			ns.install(t, cfg)
			if err := Verify(context.Background(), ns.path, cfg); err != nil {
				t.Fatalf("Verify after Install: %v", err)
			}
			other := privCfg
			other.DNSPort = 1053
			var drift *DriftError
			if err := Verify(context.Background(), ns.path, other); !errors.As(err, &drift) {
				t.Fatalf("Verify against another config: %v, want a *DriftError", err)
			}
		})
	}
}

// TestInstallFreshIsWhatInstallPuts: the one-batch install into a new
// namespace leaves exactly what Install would (Verify passes), in both modes,
// and still closes what predates it (ping sockets off).
func TestInstallFreshIsWhatInstallPuts(t *testing.T) {
	for name, cfg := range map[string]Config{"filtered": privCfg, "none": testNone} {
		t.Run(name, func(t *testing.T) {
			ns := newTestNS(t)
			if err := InstallFresh(context.Background(), ns.path, cfg); err != nil {
				t.Fatal(err)
			}
			if err := Verify(context.Background(), ns.path, cfg); err != nil {
				t.Fatalf("Verify after InstallFresh: %v", err)
			}
		})
	}
}

// TestInstallTwiceIsIdempotent: a second Install (and a mode switch back and
// forth) leaves exactly the state of the first.
func TestInstallTwiceIsIdempotent(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	first := saveRules(t, ns.name)
	ns.install(t, privCfg)
	if diff := cmp.Diff(first, saveRules(t, ns.name)); diff != "" {
		t.Errorf("second Install changed the namespace (-first +second):\n%s", diff)
	}
	ns.install(t, testNone)
	if err := Verify(context.Background(), ns.path, testNone); err != nil {
		t.Errorf("Verify(none) after switching: %v", err)
	}
	ns.install(t, privCfg)
	if diff := cmp.Diff(first, saveRules(t, ns.name)); diff != "" {
		t.Errorf("filtered → none → filtered differs from the first install (-first +last):\n%s", diff)
	}
	for _, jump := range []string{"-A OUTPUT -j EGRESSD-OUTPUT", "-A INPUT -j EGRESSD-INPUT"} {
		// filter OUTPUT, nat OUTPUT (both families) and filter INPUT (both).
		want := 4
		if strings.Contains(jump, "INPUT") {
			want = 2
		}
		if n := strings.Count(first, jump+"\n"); n != want {
			t.Errorf("%q appears %d times, want %d", jump, n, want)
		}
	}
}

// TestOutboundTCPIsRedirectedToTransparentListener: a plain connect to an
// outside address, IPv4 or IPv6, lands on egressd's transparent port with the
// original destination readable (THREATS G4: no proxy env to remove), and
// nothing reaches the outside.
func TestOutboundTCPIsRedirectedToTransparentListener(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	for _, tc := range []struct{ listen, world, target string }{
		{hostPort("127.0.0.1", transparentPort), hostPort(worldV4, 443), hostPort(worldV4, 443)},
		{hostPort("::1", transparentPort), hostPort(worldV6, 443), hostPort(worldV6, 443)},
	} {
		t.Run(tc.target, func(t *testing.T) {
			tp := acceptor(t, ns.path, tc.listen)
			world := acceptor(t, ns.wpath, tc.world)
			c, err := dial(ns.path, "tcp", tc.target, 0, 3*time.Second)
			if err != nil {
				t.Fatalf("connect to %s: %v", tc.target, err)
			}
			defer c.Close()
			got := expectConn(t, tp, "transparent listener")
			if od := originalDst(t, got); od.String() != tc.target {
				t.Errorf("SO_ORIGINAL_DST = %s, want %s", od, tc.target)
			}
			expectNoConn(t, world, "world")
		})
	}
}

// TestDNSToAnyAddressIsRedirectedToResolver (THREATS D1, D2): UDP and TCP to
// port 53 of any address, loopback included, reach egressd's resolver.
func TestDNSToAnyAddressIsRedirectedToResolver(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	res4 := udpServer(t, ns.path, hostPort("127.0.0.1", dnsPort), true)
	res6 := udpServer(t, ns.path, hostPort("::1", dnsPort), true)
	world4 := udpServer(t, ns.wpath, hostPort(worldV4, 53), true)
	world6 := udpServer(t, ns.wpath, hostPort(worldV6, 53), true)
	for _, target := range []string{
		hostPort(worldV4, 53), hostPort("127.0.0.1", 53), hostPort("127.0.0.53", 53), hostPort(sandboxV4, 53),
		hostPort(worldV6, 53), hostPort("::1", 53),
	} {
		t.Run("udp "+target, func(t *testing.T) {
			c, err := dial(ns.path, "udp", target, 0, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("q")); err != nil {
				t.Fatalf("write: %v", err)
			}
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != "ok:q" {
				t.Fatalf("read = %q, %v; want the resolver's answer", buf[:n], err)
			}
		})
	}
	// Every query went to the resolver of its family, none to the world.
	if got := len(res4) + len(res6); got != 6 {
		t.Errorf("resolver got %d queries, want 6", got)
	}
	expectNoDatagram(t, world4, "world UDP/53")
	expectNoDatagram(t, world6, "world UDP/53 (IPv6)")

	for _, tc := range []struct{ listen, target string }{
		{hostPort("127.0.0.1", dnsPort), hostPort(worldV4, 53)},
		{hostPort("::1", dnsPort), hostPort(worldV6, 53)},
	} {
		t.Run("tcp "+tc.target, func(t *testing.T) {
			res := acceptor(t, ns.path, tc.listen)
			world := acceptor(t, ns.wpath, tc.target)
			c, err := dial(ns.path, "tcp", tc.target, 0, 3*time.Second)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer c.Close()
			got := expectConn(t, res, "resolver TCP listener")
			if od := originalDst(t, got); od.String() != tc.target {
				t.Errorf("SO_ORIGINAL_DST = %s, want %s", od, tc.target)
			}
			expectNoConn(t, world, "world TCP/53")
		})
	}
}

// TestUDPToOtherPortsIsRejected (THREATS F2): QUIC, NTP, WireGuard... any UDP
// that is not DNS fails at once on a connected socket and never leaves.
func TestUDPToOtherPortsIsRejected(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	for _, target := range []string{hostPort(worldV4, 443), hostPort(worldV4, 123), hostPort(worldV6, 443)} {
		t.Run(target, func(t *testing.T) {
			world := udpServer(t, ns.wpath, target, true)
			c, err := dial(ns.path, "udp", target, 0, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// The REJECT drops the datagram in OUTPUT, so the send fails with
			// EPERM; its ICMP error then makes the next read fail with
			// ECONNREFUSED, as from a closed port.
			if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.EPERM) {
				t.Errorf("write: %v, want EPERM", err)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 16)); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("read: %v, want ECONNREFUSED", err)
			}
			expectNoDatagram(t, world, "world")
		})
	}
}

// TestICMPEchoCannotLeave (THREATS F3): Install closes ping sockets with
// ping_group_range "1 0"; if someone widened the range again, echo requests
// are still rejected, and Verify reports the widened range.
func TestICMPEchoCannotLeave(t *testing.T) {
	ns := newTestNS(t)
	widen := func() {
		run(t, "/usr/sbin/ip", "netns", "exec", ns.name, "/usr/sbin/sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
	}
	widen()
	ns.install(t, privCfg)

	type pingCase struct {
		domain, proto int
		sa            unix.Sockaddr
		echo          byte
	}
	cases := map[string]pingCase{
		"IPv4": {unix.AF_INET, unix.IPPROTO_ICMP, &unix.SockaddrInet4{Addr: netip.MustParseAddr(worldV4).As4()}, 8},
		"IPv6": {unix.AF_INET6, unix.IPPROTO_ICMPV6, &unix.SockaddrInet6{Addr: netip.MustParseAddr(worldV6).As16()}, 128},
	}
	for name, pc := range cases {
		in(t, ns.path, func() error {
			fd, err := unix.Socket(pc.domain, unix.SOCK_DGRAM, pc.proto)
			if err == nil {
				unix.Close(fd)
				return fmt.Errorf("%s ping socket opened after Install; want EACCES", name)
			}
			if !errors.Is(err, unix.EACCES) {
				return fmt.Errorf("%s ping socket: %v, want EACCES", name, err)
			}
			return nil
		})
	}

	widen()
	var drift *DriftError
	if err := Verify(context.Background(), ns.path, privCfg); !errors.As(err, &drift) || !strings.Contains(err.Error(), "ping_group_range") {
		t.Errorf("Verify with a widened ping_group_range: %v", err)
	}
	for name, pc := range cases {
		t.Run(name, func(t *testing.T) {
			in(t, ns.path, func() error {
				fd, err := unix.Socket(pc.domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, pc.proto)
				if err != nil {
					return fmt.Errorf("ping socket with the range widened: %v", err)
				}
				defer unix.Close(fd)
				if err := unix.Connect(fd, pc.sa); err != nil {
					return fmt.Errorf("connect: %v", err)
				}
				unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
				echo := []byte{pc.echo, 0, 0, 0, 0, 0, 0, 1, 's', 'e', 'c', 'r', 'e', 't'}
				_, werr := unix.Write(fd, echo)
				buf := make([]byte, 128)
				n, rerr := unix.Read(fd, buf)
				t.Logf("send: %v; receive: %d bytes, %v", werr, n, rerr)
				if rerr == nil && n > 0 {
					t.Errorf("received %x: the echo request left the namespace", buf[:n])
				}
				if werr == nil && rerr == nil {
					t.Errorf("neither send nor receive failed")
				}
				return nil
			})
		})
	}
}

// TestMarkedSocketBypassesRedirect: egressd's own (marked) sockets reach the
// outside directly, TCP and UDP to port 53, but not other UDP.
func TestMarkedSocketBypassesRedirect(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	for _, tc := range []struct{ listen, target string }{
		{hostPort("127.0.0.1", transparentPort), hostPort(worldV4, 443)},
		{hostPort("::1", transparentPort), hostPort(worldV6, 443)},
	} {
		t.Run("tcp "+tc.target, func(t *testing.T) {
			tp := acceptor(t, ns.path, tc.listen)
			world := acceptor(t, ns.wpath, tc.target)
			c, err := dial(ns.path, "tcp", tc.target, testMark, 3*time.Second)
			if err != nil {
				t.Fatalf("marked connect: %v", err)
			}
			defer c.Close()
			got := expectConn(t, world, "world")
			if want := c.LocalAddr().String(); got.RemoteAddr().String() != want {
				t.Errorf("world saw %s, want the sandbox's %s", got.RemoteAddr(), want)
			}
			expectNoConn(t, tp, "transparent listener")
		})
	}
	for _, tc := range []struct {
		target string
		pass   bool
	}{{hostPort(worldV4, 53), true}, {hostPort(worldV6, 53), true}, {hostPort(worldV4, 123), false}} {
		t.Run("udp "+tc.target, func(t *testing.T) {
			world := udpServer(t, ns.wpath, tc.target, true)
			c, err := dial(ns.path, "udp", tc.target, testMark, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, werr := c.Write([]byte("m"))
			if !tc.pass {
				if !errors.Is(werr, syscall.EPERM) {
					t.Errorf("marked UDP to %s: write %v, want EPERM (exemption is TCP and DNS only)", tc.target, werr)
				}
				expectNoDatagram(t, world, "world")
				return
			}
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 16)
			if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ok:m" {
				t.Fatalf("marked DNS to the world: read %q, %v", buf[:n], err)
			}
		})
	}
}

// TestUIDFallbackExemptsOnlyThatUID: with ExemptUID, that uid's connections
// go out directly while another uid's are redirected (THREATS G2: the
// fallback, weaker than a mark).
func TestUIDFallbackExemptsOnlyThatUID(t *testing.T) {
	ns := newTestNS(t)
	cfg := privCfg
	cfg.Mark = 0
	cfg.ExemptUID = uidPtr(65534)
	ns.install(t, cfg)
	tp := acceptor(t, ns.path, hostPort("127.0.0.1", transparentPort))
	world := acceptor(t, ns.wpath, hostPort(worldV4, 443))
	connectAs := func(uid uint32) {
		t.Helper()
		in(t, ns.path, func() error {
			cmd := exec.Command("/usr/bin/nc", "-z", "-w", "2", worldV4, "443")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("nc as uid %d: %v: %s", uid, err, out)
			}
			return nil
		})
	}
	connectAs(65534)
	expectConn(t, world, "world, from the exempt uid")
	expectNoConn(t, tp, "transparent listener, from the exempt uid")
	connectAs(65533)
	expectConn(t, tp, "transparent listener, from another uid")
	expectNoConn(t, world, "world, from another uid")
}

// TestProtectedLoopbackPortRefusesUnmarked (THREATS G3): egressd's admin port
// answers only marked sockets, at any local address; the explicit proxy port
// stays open.
func TestProtectedLoopbackPortRefusesUnmarked(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	admin := acceptor(t, ns.path, hostPort("", protectedPort)) // all addresses, both families
	proxy := acceptor(t, ns.path, hostPort("", explicitPort))
	for _, host := range []string{"127.0.0.1", "::1", sandboxV4, sandboxV6} {
		t.Run(host, func(t *testing.T) {
			if _, err := dial(ns.path, "tcp", hostPort(host, protectedPort), 0, 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("unmarked connect to admin port: %v, want ECONNREFUSED", err)
			}
			c, err := dial(ns.path, "tcp", hostPort(host, protectedPort), testMark, 2*time.Second)
			if err != nil {
				t.Fatalf("marked connect to admin port: %v", err)
			}
			c.Close()
			expectConn(t, admin, "admin listener, marked")
			c, err = dial(ns.path, "tcp", hostPort(host, explicitPort), 0, 2*time.Second)
			if err != nil {
				t.Fatalf("unmarked connect to the explicit proxy: %v", err)
			}
			c.Close()
			expectConn(t, proxy, "explicit proxy")
		})
	}
	expectNoConn(t, admin, "admin listener")
}

// TestDirectConnectToTransparentPortIsRefused: only redirected connections
// reach the transparent listener, so it never sees itself as the original
// destination.
func TestDirectConnectToTransparentPortIsRefused(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	tp := acceptor(t, ns.path, hostPort("", transparentPort))
	for _, host := range []string{"127.0.0.1", "::1", sandboxV4} {
		if _, err := dial(ns.path, "tcp", hostPort(host, transparentPort), 0, 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("direct connect to %s: %v, want ECONNREFUSED", hostPort(host, transparentPort), err)
		}
	}
	expectNoConn(t, tp, "transparent listener")
	c, err := dial(ns.path, "tcp", hostPort(worldV4, 443), 0, 2*time.Second)
	if err != nil {
		t.Fatalf("redirected connect: %v", err)
	}
	c.Close()
	expectConn(t, tp, "transparent listener, redirected")
}

// TestNothingListeningFailsClosed (THREATS G5): with egressd gone, TCP is
// refused at once and DNS gets an error; nothing reaches the outside.
func TestNothingListeningFailsClosed(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	world4 := acceptor(t, ns.wpath, hostPort(worldV4, 443))
	world6 := acceptor(t, ns.wpath, hostPort(worldV6, 443))
	worldDNS := udpServer(t, ns.wpath, hostPort(worldV4, 53), true)
	for _, target := range []string{hostPort(worldV4, 443), hostPort(worldV6, 443)} {
		start := time.Now()
		if _, err := dial(ns.path, "tcp", target, 0, 3*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("connect to %s with no transparent listener: %v, want ECONNREFUSED", target, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("connect to %s took %v to fail; want fast failure", target, d)
		}
	}
	c, err := dial(ns.path, "udp", hostPort(worldV4, 53), 0, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("q"))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 16)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("DNS with no resolver: %v, want ECONNREFUSED", err)
	}
	expectNoConn(t, world4, "world")
	expectNoConn(t, world6, "world (IPv6)")
	expectNoDatagram(t, worldDNS, "world DNS")
}

// TestInboundConnectionsAreDropped: nobody outside can open a connection into
// the sandbox (and read data back through the ESTABLISHED rule), unless the
// port is listed in InboundTCPPorts.
func TestInboundConnectionsAreDropped(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	acceptor(t, ns.path, hostPort("", 8080))
	for _, host := range []string{sandboxV4, sandboxV6} {
		if c, err := dial(ns.wpath, "tcp", hostPort(host, 8080), 0, 500*time.Millisecond); err == nil {
			c.Close()
			t.Errorf("world connected to the sandbox at %s", host)
		}
	}
	cfg := privCfg
	cfg.InboundTCPPorts = []uint16{8080}
	ns.install(t, cfg)
	for _, host := range []string{sandboxV4, sandboxV6} {
		c, err := dial(ns.wpath, "tcp", hostPort(host, 8080), 0, 2*time.Second)
		if err != nil {
			t.Errorf("world connect to listed inbound port at %s: %v", host, err)
			continue
		}
		c.Close()
	}
}

// TestInstallCutsFlowsThatPredateIt (THREATS G7): a TCP connection and a UDP
// flow opened while the namespace had no rules of ours (a pooled namespace
// between Flush and Install) cannot carry data out after Install, although
// conntrack tracks them as ESTABLISHED.
func TestInstallCutsFlowsThatPredateIt(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	if err := Flush(context.Background(), ns.path); err != nil {
		t.Fatal(err)
	}
	// Someone else's conntrack rule keeps connection tracking on in the
	// namespace (a namespace with no rule at all does not track, and then
	// there is no entry to outlive anything).
	for _, tool := range []string{"/usr/sbin/iptables", "/usr/sbin/ip6tables"} {
		run(t, "/usr/sbin/ip", "netns", "exec", ns.name, tool, "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	}
	world := acceptor(t, ns.wpath, hostPort(worldV4, 443))
	worldUDP := udpServer(t, ns.wpath, hostPort(worldV4, 5000), true) // a reply makes the flow ESTABLISHED

	tcp, err := dial(ns.path, "tcp", hostPort(worldV4, 443), 0, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	peer := expectConn(t, world, "world, before Install")
	if _, err := tcp.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	peer.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := peer.Read(buf); err != nil || string(buf[:n]) != "before" {
		t.Fatalf("before Install the flow must work: %q, %v", buf[:n], err)
	}
	udp, err := dial(ns.path, "udp", hostPort(worldV4, 5000), 0, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	udp.Write([]byte("before"))
	udp.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := udp.Read(buf); err != nil || string(buf[:n]) != "ok:before" {
		t.Fatalf("before Install the UDP flow must work: %q, %v", buf[:n], err)
	}
	<-worldUDP

	tracked := run(t, "/usr/sbin/ip", "netns", "exec", ns.name, "/usr/sbin/conntrack", "-L")
	for _, flow := range []string{"dport=443", "dport=5000"} {
		if !strings.Contains(tracked, flow) {
			t.Fatalf("precondition: conntrack does not track the %s flow:\n%s", flow, tracked)
		}
	}

	ns.install(t, privCfg)

	tcp.Write([]byte("after"))
	peer.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := peer.Read(buf); err == nil && n > 0 {
		t.Errorf("world received %q over a connection that predates Install", buf[:n])
	}
	udp.Write([]byte("after"))
	expectNoDatagram(t, worldUDP, "world, UDP flow that predates Install")
}

// TestVerifyDetectsTamperedRules: deleting a rule, inserting a rule before our
// jump, or deleting the jump, by hand, makes Verify fail; Install repairs it.
func TestVerifyDetectsTamperedRules(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	tests := []struct {
		name   string
		tamper []string
		want   string
	}{
		{"dns redirect deleted", []string{"/usr/sbin/iptables", "-t", "nat", "-D", ChainOutput, "2"},
			"-A EGRESSD-OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 10053"},
		{"accept inserted before the jump", []string{"/usr/sbin/ip6tables", "-I", "OUTPUT", "1", "-j", "ACCEPT"},
			"IPv6 filter OUTPUT: first reference to our chains is rule 2"},
		{"jump deleted", []string{"/usr/sbin/iptables", "-D", "INPUT", "-j", ChainInput},
			"IPv4 filter INPUT: no jump to EGRESSD-INPUT"},
		{"reject rule deleted", []string{"/usr/sbin/ip6tables", "-D", ChainOutput, "-j", "REJECT", "--reject-with", "icmp6-adm-prohibited"},
			"- -A EGRESSD-OUTPUT -j REJECT --reject-with icmp6-adm-prohibited"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			run(t, append([]string{"/usr/sbin/ip", "netns", "exec", ns.name}, tc.tamper...)...)
			err := Verify(context.Background(), ns.path, privCfg)
			var drift *DriftError
			if !errors.As(err, &drift) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Verify after tampering: %v; want a DriftError mentioning %q", err, tc.want)
			}
			ns.install(t, privCfg)
			if err := Verify(context.Background(), ns.path, privCfg); err != nil {
				t.Fatalf("Verify after repairing Install: %v", err)
			}
		})
	}
	// The foreign ACCEPT survived the repair, after our jump.
	out := run(t, "/usr/sbin/ip", "netns", "exec", ns.name, "/usr/sbin/ip6tables", "-S", "OUTPUT")
	if want := "-A OUTPUT -j EGRESSD-OUTPUT\n-A OUTPUT -j ACCEPT\n"; !strings.Contains(out, want) {
		t.Errorf("ip6tables OUTPUT after repair:\n%s\nwant it to contain:\n%s", out, want)
	}
}

// TestFlushRemovesOnlyOurChains: Flush returns the namespace to exactly its
// state before Install, foreign rules and chains included; flushing again, or
// a namespace that never had our rules, is not an error.
func TestFlushRemovesOnlyOurChains(t *testing.T) {
	ns := newTestNS(t)
	ctx := context.Background()
	if err := Flush(ctx, ns.path); err != nil {
		t.Fatalf("Flush of a namespace without our rules: %v", err)
	}
	for _, tool := range []string{"/usr/sbin/iptables", "/usr/sbin/ip6tables"} {
		ipt := func(args ...string) {
			run(t, append([]string{"/usr/sbin/ip", "netns", "exec", ns.name, tool}, args...)...)
		}
		ipt("-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT")
		ipt("-N", "FOREIGN")
		ipt("-A", "FOREIGN", "-j", "RETURN")
		ipt("-A", "INPUT", "-j", "FOREIGN")
		ipt("-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9998", "-j", "RETURN")
	}
	before := saveRules(t, ns.name)
	ns.install(t, privCfg)
	if err := Flush(ctx, ns.path); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if diff := cmp.Diff(before, saveRules(t, ns.name)); diff != "" {
		t.Errorf("Flush did not restore the state before Install (-before +after):\n%s", diff)
	}
	if err := Flush(ctx, ns.path); err != nil {
		t.Fatalf("second Flush: %v", err)
	}
	if diff := cmp.Diff(before, saveRules(t, ns.name)); diff != "" {
		t.Errorf("second Flush changed the namespace (-before +after):\n%s", diff)
	}
}

// conntrackCount returns the number of conntrack entries of a family in the
// namespace, as conntrack-tools lists them.
func conntrackCount(t testing.TB, ns, family string) int {
	t.Helper()
	cmd := exec.Command("/usr/sbin/ip", "netns", "exec", ns, "/usr/sbin/conntrack", "-L", "-f", family)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Run(); err != nil {
		t.Fatalf("conntrack -L -f %s: %v", family, err)
	}
	return strings.Count(stdout.String(), "\n")
}

// TestFlushEmptiesConntrack: after Flush no flow of the last tenant, of either
// family, is left in the namespace's conntrack table.
func TestFlushEmptiesConntrack(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	udpServer(t, ns.path, hostPort("127.0.0.1", dnsPort), true)
	udpServer(t, ns.path, hostPort("::1", dnsPort), true)
	udpServer(t, ns.wpath, hostPort(worldV4, 53), true)
	for _, tc := range []struct {
		target string
		mark   uint32
	}{{hostPort(worldV4, 53), 0}, {hostPort(worldV6, 53), 0}, {hostPort(worldV4, 53), testMark}} {
		c, err := dial(ns.path, "udp", tc.target, tc.mark, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("q"))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 16)); err != nil {
			t.Fatalf("DNS to %s: %v", tc.target, err)
		}
		c.Close()
	}
	n4, n6 := conntrackCount(t, ns.name, "ipv4"), conntrackCount(t, ns.name, "ipv6")
	if n4 == 0 || n6 == 0 {
		t.Fatalf("conntrack has %d IPv4 and %d IPv6 entries before Flush; the test needs both", n4, n6)
	}
	// The pool's count (netlink) sees what the conntrack tool sees.
	if n, err := System().CountConntrack(ns.path); err != nil || n != n4+n6 {
		t.Errorf("CountConntrack = %d, %v; the conntrack tool counts %d IPv4 and %d IPv6", n, err, n4, n6)
	}
	if err := Flush(context.Background(), ns.path); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if n4, n6 := conntrackCount(t, ns.name, "ipv4"), conntrackCount(t, ns.name, "ipv6"); n4 != 0 || n6 != 0 {
		t.Errorf("conntrack has %d IPv4 and %d IPv6 entries after Flush, want none", n4, n6)
	}
	if n, err := System().CountConntrack(ns.path); err != nil || n != 0 {
		t.Errorf("CountConntrack after Flush = %d, %v; want 0", n, err)
	}
}

// TestInstallFailsClosedWithoutIP6tables (THREATS F1): with no ip6tables,
// Install refuses and leaves the namespace untouched, instead of installing
// IPv4 only.
func TestInstallFailsClosedWithoutIP6tables(t *testing.T) {
	ns := newTestNS(t)
	before := saveRules(t, ns.name)
	dir := t.TempDir()
	for _, tool := range []string{"iptables", "iptables-restore", "iptables-save"} {
		target, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, tool)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	err := Install(context.Background(), ns.path, privCfg)
	if err == nil || !strings.Contains(err.Error(), "ip6tables") || !strings.Contains(err.Error(), "never one family alone") {
		t.Fatalf("Install without ip6tables: %v, want an error naming ip6tables", err)
	}
	if diff := cmp.Diff(before, saveRules(t, ns.name)); diff != "" {
		t.Errorf("failed Install changed the namespace (-before +after):\n%s", diff)
	}
}

// TestRootNamespaceIptablesUntouched: a whole life cycle in a sandbox
// namespace leaves the root namespace's rules byte for byte as they were
// (every test also checks this in its cleanup).
func TestRootNamespaceIptablesUntouched(t *testing.T) {
	requireRoot(t)
	before := saveRules(t, "")
	ns := newTestNS(t)
	ctx := context.Background()
	ns.install(t, privCfg)
	if err := Verify(ctx, ns.path, privCfg); err != nil {
		t.Fatal(err)
	}
	if err := Flush(ctx, ns.path); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, saveRules(t, "")); diff != "" {
		t.Errorf("root namespace iptables changed (-before +after):\n%s", diff)
	}
}

// benchNS creates a bare namespace with loopback up, for benchmarks.
func benchNS(b *testing.B) (name, path string) {
	b.Helper()
	var id [3]byte
	rand.Read(id[:])
	name = "egt-fw-b" + hex.EncodeToString(id[:])
	run(b, "/usr/sbin/ip", "netns", "add", name)
	run(b, "/usr/sbin/ip", "-n", name, "link", "set", "lo", "up")
	return name, "/var/run/netns/" + name
}

func reportMedian(b *testing.B, ds []time.Duration) {
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, "ms-median")
	b.ReportMetric(float64(ds[len(ds)-1].Microseconds())/1000, "ms-max")
}

// cpuTime returns the CPU time (user+system) used so far by this process and
// its waited-for children (the iptables tools): a figure that, unlike wall
// time, does not grow when other work shares the machine.
func cpuTime() time.Duration {
	var total time.Duration
	for _, who := range []int{unix.RUSAGE_SELF, unix.RUSAGE_CHILDREN} {
		var ru unix.Rusage
		unix.Getrusage(who, &ru)
		total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return total
}

func reportCPU(b *testing.B, cpu time.Duration) {
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// BenchmarkInstall: Install into a fresh namespace each time (run with
// -benchtime=20x for the median of 20).
func BenchmarkInstall(b *testing.B) {
	requireRoot(b)
	ctx := context.Background()
	var (
		ds  []time.Duration
		cpu time.Duration
	)
	for range b.N {
		b.StopTimer()
		name, path := benchNS(b)
		b.StartTimer()
		start, c0 := time.Now(), cpuTime()
		if err := Install(ctx, path, privCfg); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
		cpu += cpuTime() - c0
		b.StopTimer()
		run(b, "/usr/sbin/ip", "netns", "del", name)
		b.StartTimer()
	}
	reportMedian(b, ds)
	reportCPU(b, cpu)
}

// BenchmarkReinstallVerify: the pooled-reuse path, Install over the old rules
// then Verify, in one namespace.
func BenchmarkReinstallVerify(b *testing.B) {
	requireRoot(b)
	ctx := context.Background()
	name, path := benchNS(b)
	defer run(b, "/usr/sbin/ip", "netns", "del", name)
	if err := Install(ctx, path, privCfg); err != nil {
		b.Fatal(err)
	}
	var ds []time.Duration
	c0 := cpuTime()
	for range b.N {
		start := time.Now()
		if err := Install(ctx, path, privCfg); err != nil {
			b.Fatal(err)
		}
		if err := Verify(ctx, path, privCfg); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
	}
	reportCPU(b, cpuTime()-c0)
	reportMedian(b, ds)
}

// BenchmarkVerify and BenchmarkFlush time the other two operations.
func BenchmarkVerify(b *testing.B) {
	requireRoot(b)
	ctx := context.Background()
	name, path := benchNS(b)
	defer run(b, "/usr/sbin/ip", "netns", "del", name)
	if err := Install(ctx, path, privCfg); err != nil {
		b.Fatal(err)
	}
	var ds []time.Duration
	c0 := cpuTime()
	for range b.N {
		start := time.Now()
		if err := Verify(ctx, path, privCfg); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
	}
	reportCPU(b, cpuTime()-c0)
	reportMedian(b, ds)
}

func BenchmarkFlush(b *testing.B) {
	requireRoot(b)
	ctx := context.Background()
	name, path := benchNS(b)
	defer run(b, "/usr/sbin/ip", "netns", "del", name)
	var (
		ds  []time.Duration
		cpu time.Duration
	)
	for range b.N {
		b.StopTimer()
		if err := Install(ctx, path, privCfg); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start, c0 := time.Now(), cpuTime()
		if err := Flush(ctx, path); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
		cpu += cpuTime() - c0
	}
	reportMedian(b, ds)
	reportCPU(b, cpu)
}

// TestSandboxCannotReuseEgressdsUpstreamUDPFlow: a sandbox process shares
// egressd's namespace, so it can read the source port of one of egressd's
// upstream DNS sockets in /proc/net/udp and, once egressd closes it, bind
// that port and send to the same resolver. The conntrack entry is still
// ESTABLISHED, so NAT never sees the packet (no REDIRECT); only filter
// stands in the way, and it must: established flows are accepted in the
// reply direction only.
func TestSandboxCannotReuseEgressdsUpstreamUDPFlow(t *testing.T) {
	ns := newTestNS(t)
	ns.install(t, privCfg)
	world := udpServer(t, ns.wpath, hostPort(worldV4, 53), true)

	// egressd's marked upstream query and its answer make the flow ESTABLISHED.
	up, err := dial(ns.path, "udp", hostPort(worldV4, 53), testMark, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	local := up.LocalAddr().String()
	if _, err := up.Write([]byte("egressd")); err != nil {
		t.Fatal(err)
	}
	_ = up.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := up.Read(make([]byte, 64)); err != nil {
		t.Fatalf("egressd's marked query got no answer (the test cannot judge the attack): %v", err)
	}
	<-world // the marked query arrived
	up.Close()

	// The sandbox takes over the source port, unmarked.
	var c net.Conn
	in(t, ns.path, func() error {
		d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.MustParseAddrPort(local))}
		var err error
		c, err = d.Dial("udp", hostPort(worldV4, 53))
		return err
	})
	defer c.Close()
	_, _ = c.Write([]byte("tunnel"))
	expectNoDatagram(t, world, "resolver, from the sandbox on egressd's old flow")
}
