package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
)

// The upstream dialer replaces net.Dialer.DialContext on the tunnel path;
// these tests hold it to what net's dial did: it reaches IPv4 and IPv6,
// sets the mark, TCP_NODELAY and keep-alive, gives up at the timeout or on
// cancellation with net's errors, and leaves no descriptor behind.

func listenLoopback(t *testing.T, network, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("no %s loopback here: %v", network, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// fullBacklog returns a loopback address whose listener's accept queue is
// full: the kernel drops further SYNs, so a connect to it stays in its
// handshake until the dialer gives up.
func fullBacklog(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
	for i := 0; ; i++ { // fill the queue: connects complete until it is full
		c, err := net.DialTimeout("tcp", ap.String(), 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
		if i == 16 {
			t.Fatal("the accept queue never filled")
		}
	}
	return ap
}

func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(es)
}

func TestUpstreamDialReachesIPv4AndIPv6(t *testing.T) {
	for _, tc := range []struct {
		name, network, addr string
		mapped              bool // dial the IPv4 address IPv4-mapped
	}{
		{"ipv4", "tcp4", "127.0.0.1:0", false},
		{"ipv6", "tcp6", "[::1]:0", false},
		{"ipv4-mapped", "tcp4", "127.0.0.1:0", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ap := listenLoopback(t, tc.network, tc.addr)
			dial := ap
			if tc.mapped {
				dial = netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
			}
			d := upstreamDialer{timeout: 5 * time.Second, keepAlive: 30 * time.Second}
			c, err := d.dial(context.Background(), dial)
			if err != nil {
				t.Fatalf("dial %s: %v", dial, err)
			}
			defer c.Close()
			tc, ok := c.(*net.TCPConn)
			if !ok {
				t.Fatalf("dial returned %T, want *net.TCPConn (the relay's splice path needs it)", c)
			}
			if got := tc.RemoteAddr().(*net.TCPAddr).AddrPort(); got != ap {
				t.Errorf("RemoteAddr = %s, want %s", got, ap)
			}
			if la := tc.LocalAddr().(*net.TCPAddr); la.Port == 0 || !la.IP.IsLoopback() {
				t.Errorf("LocalAddr = %s, want a loopback address with its ephemeral port", la)
			}
			rc, err := tc.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			opts := map[string]int{}
			rc.Control(func(fd uintptr) {
				opts["SO_KEEPALIVE"], _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
				opts["TCP_KEEPIDLE"], _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
				opts["TCP_NODELAY"], _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
			})
			want := map[string]int{"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 30, "TCP_NODELAY": 1}
			for k, v := range want {
				if opts[k] != v {
					t.Errorf("%s = %d, want %d", k, opts[k], v)
				}
			}
		})
	}
}

func TestUpstreamDialRefusedIsNetsErrorAndLeaksNoFD(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close() // nothing listens there now
	d := upstreamDialer{timeout: 5 * time.Second}
	before := openFDs(t)
	for range 20 {
		_, err = d.dial(context.Background(), ap)
		if err == nil {
			t.Fatalf("dial %s succeeded with nothing listening", ap)
		}
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors %d after 20 refused dials, %d before", after, before)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "dial" {
		t.Errorf("error %v (%T), want a dial *net.OpError", err, err)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("error %v, want ECONNREFUSED in its chain", err)
	}
	if isTimeoutErr(err) {
		t.Errorf("a refusal counts as a timeout: %v", err)
	}
}

func TestUpstreamDialGivesUpAtTheTimeout(t *testing.T) {
	ap := fullBacklog(t)
	d := upstreamDialer{timeout: 300 * time.Millisecond}
	before := openFDs(t)
	start := time.Now()
	c, err := d.dial(context.Background(), ap)
	took := time.Since(start)
	if err == nil {
		c.Close()
		t.Skip("the kernel answered a SYN to a full accept queue; cannot hold a handshake open here")
	}
	if !isTimeoutErr(err) {
		t.Errorf("error %v, want a timeout (the proxy answers 504 upstream-timeout for it)", err)
	}
	if took < 250*time.Millisecond || took > 5*time.Second {
		t.Errorf("gave up after %v, want about the 300ms timeout", took)
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors %d after a timed-out dial, %d before", after, before)
	}
}

func TestUpstreamDialEndsWhenTheTunnelIsCancelled(t *testing.T) {
	ap := fullBacklog(t)
	d := upstreamDialer{timeout: 30 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	c, err := d.dial(ctx, ap)
	if err == nil {
		c.Close()
		t.Skip("the kernel answered a SYN to a full accept queue; cannot hold a handshake open here")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a cancelled dial ended after %v, want at once", took)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled in its chain", err)
	}
}

func TestUpstreamDialSetsTheMark(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("setting SO_MARK needs CAP_NET_ADMIN (run as root)")
	}
	ap := listenLoopback(t, "tcp4", "127.0.0.1:0")
	d := upstreamDialer{mark: 0x2a5, timeout: 5 * time.Second}
	c, err := d.dial(context.Background(), ap)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var gerr error
	rc.Control(func(fd uintptr) { mark, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK) })
	if gerr != nil || mark != 0x2a5 {
		t.Errorf("SO_MARK = %#x (%v), want 0x2a5", mark, gerr)
	}
}
