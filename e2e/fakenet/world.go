package fakenet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The fake internet's fixed addresses. All are documentation ranges (RFC 5737, RFC 3849), so
// nothing real can answer them even if a packet escaped.
var (
	// DNS4 and DNS6 run the authoritative DNS server, on port 53, UDP and TCP.
	DNS4 = netip.MustParseAddr("203.0.113.53")
	DNS6 = netip.MustParseAddr("2001:db8::53")

	// Host4, Host4b and Host6 are the default hosts: each runs HTTP on 80, HTTPS on 443, and TCP
	// and UDP echo on 7. WithHosts and AddHost make more.
	Host4  = netip.MustParseAddr("203.0.113.10")
	Host4b = netip.MustParseAddr("198.51.100.10")
	Host6  = netip.MustParseAddr("2001:db8::10")

	// LinkPrefix4 and LinkPrefix6 hold the sandbox links: sandbox k gets 192.0.2.4k/30 (world
	// side .4k+1, sandbox side .4k+2) and 2001:db8:ffff:k::/64 (::1 world, ::2 sandbox). They
	// cannot be hosts.
	LinkPrefix4 = netip.MustParsePrefix("192.0.2.0/24")
	LinkPrefix6 = netip.MustParsePrefix("2001:db8:ffff::/48")
)

// Ports of the standard servers.
const (
	PortDNS   = 53
	PortHTTP  = 80
	PortHTTPS = 443
	PortEcho  = 7
)

// maxSandboxes is how many sandboxes one world holds at once (the /30s of LinkPrefix4).
const maxSandboxes = 64

// testHook, when set by this package's tests, is called at each stage of Start and may fail it,
// to prove that teardown copes with a half-built world.
var testHook func(stage string) error

func hook(stage string) error {
	if testHook == nil {
		return nil
	}
	return testHook(stage)
}

// Option configures Start.
type Option func(*config)

type config struct {
	hosts []netip.Addr
}

// WithHosts adds hosts besides Host4, Host4b and Host6: each address gets the standard
// servers (HTTP 80, HTTPS 443, echo 7/tcp and 7/udp). Any unicast address outside the link
// prefixes will do, private and link-local ones included (a fake 169.254.169.254 or 10.0.0.1
// lets a test see, at the application layer, whether a guard let a connection through).
func WithHosts(addrs ...netip.Addr) Option {
	return func(c *config) { c.hosts = append(c.hosts, addrs...) }
}

// World is the fake internet: a network namespace with no route anywhere but to the addresses it
// holds and to its sandboxes, and the servers on those addresses. It forwards (so it answers a
// packet it cannot route with ICMP unreachable, and sandboxes reach one another), but it has no
// link to any other namespace. Its methods are safe for concurrent use.
type World struct {
	NetNS

	nlMu    sync.Mutex
	nl      *netlink.Handle
	loIndex int

	ca     *testCA
	caDir  string
	caFile string
	reg    registries

	dns        *dnsServer
	dnsServers []*dns.Server
	web        *http.Server
	wg         sync.WaitGroup // every serving goroutine

	mu           sync.Mutex
	closed       bool
	hosts        []netip.Addr
	addrs        map[netip.Addr]bool // addresses added to lo
	closers      []io.Closer         // listeners, closed at teardown
	conns        map[net.Conn]struct{}
	tcpAccepted  map[netip.AddrPort]int
	udpReceived  map[netip.AddrPort]int
	httpLog      []HTTPRequest
	httpCounts   map[string]int
	serverErrors []string
	sandboxes    map[*Sandbox]struct{}
	slots        [maxSandboxes]bool

	closeOnce sync.Once
	closeErr  error
}

// Start builds a world for the test and tears it down when the test ends (t.Cleanup), whether
// it passed or not. It skips the test when not root, and fails it if the world cannot be
// built. Call it from the test's goroutine.
func Start(t testing.TB, opts ...Option) *World {
	t.Helper()
	RequireRoot(t)
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	w := &World{
		dns:         newDNSServer(),
		addrs:       make(map[netip.Addr]bool),
		conns:       make(map[net.Conn]struct{}),
		tcpAccepted: make(map[netip.AddrPort]int),
		udpReceived: make(map[netip.AddrPort]int),
		httpCounts:  make(map[string]int),
		sandboxes:   make(map[*Sandbox]struct{}),
	}
	t.Cleanup(func() {
		// Report only if this call did the teardown: an earlier Close returned its error.
		w.closeOnce.Do(func() {
			w.closeErr = w.close()
			if w.closeErr != nil {
				t.Errorf("fakenet: tearing down world %s: %v", w.name, w.closeErr)
			}
		})
	})
	if err := w.start(cfg); err != nil {
		t.Fatalf("fakenet: starting world: %v", err)
	}
	return w
}

func (w *World) start(cfg config) error {
	hosts := append([]netip.Addr{Host4, Host4b, Host6}, cfg.hosts...)
	for i, h := range hosts {
		if err := checkHostAddr(h); err != nil {
			return err
		}
		hosts[i] = h.Unmap()
	}

	dir, err := os.MkdirTemp("", "fakenet-ca-")
	if err != nil {
		return fmt.Errorf("creating CA directory: %w", err)
	}
	w.caDir = dir
	// Readable by any user, so a sandboxed non-root process can be pointed at it.
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}

	ns, err := createNetNS(UniqueName("w"))
	if err != nil {
		return fmt.Errorf("creating the world namespace: %w", err)
	}
	w.NetNS = *ns
	if err := hook("netns"); err != nil {
		return err
	}

	w.ca, err = newTestCA(w.name)
	if err != nil {
		return err
	}
	w.caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(w.caFile, w.ca.certPEM, 0o644); err != nil {
		return fmt.Errorf("writing CA file: %w", err)
	}

	w.nl, err = netlink.NewHandleAt(w.handle)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", w.name, err)
	}
	if err := w.Do(setWorldSysctls); err != nil {
		return fmt.Errorf("sysctls in %s: %w", w.name, err)
	}
	if err := w.setupLinks(); err != nil {
		return fmt.Errorf("links in %s: %w", w.name, err)
	}
	if err := hook("links"); err != nil {
		return err
	}

	w.web = &http.Server{
		Handler: http.HandlerFunc(w.serveHTTP),
		TLSConfig: &tls.Config{
			GetCertificate: w.ca.getCertificate,
			MinVersion:     tls.VersionTLS12,
			// Listing h2 here makes HTTP/2 set up whichever of Serve and ServeTLS runs first.
			// Without it, a plain Serve that wins the race leaves the server offering h2 in
			// ALPN with no handler for it, and h2 connections close right after the handshake.
			NextProtos: []string{"h2", "http/1.1"},
		},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       30 * time.Second,
		ErrorLog:          log.New(errorLogWriter{w}, "", 0),
	}
	// Plain HTTP serves HTTP/1.x and HTTP/2 with prior knowledge (h2c), as real front ends do:
	// a test of an h2c bypass needs a server that would answer it.
	w.web.Protocols = new(http.Protocols)
	w.web.Protocols.SetHTTP1(true)
	w.web.Protocols.SetHTTP2(true)
	w.web.Protocols.SetUnencryptedHTTP2(true)
	if err := w.startDNS(); err != nil {
		return err
	}
	for _, h := range hosts {
		if err := w.AddHost(h); err != nil {
			return err
		}
	}
	return hook("servers")
}

// setWorldSysctls runs inside the world. Forwarding on: a host (forwarding off) silently drops
// a packet it has no route for, so a sandbox's connect to the real internet would hang; a
// router answers with ICMP network unreachable, and the connect fails at once. ICMP errors are
// not rate-limited, so that holds for the hundredth attempt too. No duplicate address
// detection, so IPv6 addresses work the moment they are added (here, and on links a launcher
// running in the world adds later).
func setWorldSysctls() error {
	for _, s := range []struct{ path, val string }{
		{"/proc/sys/net/ipv4/ip_forward", "1"},
		{"/proc/sys/net/ipv6/conf/all/forwarding", "1"},
		{"/proc/sys/net/ipv4/icmp_ratelimit", "0"},
		{"/proc/sys/net/ipv6/icmp/ratelimit", "0"},
		{"/proc/sys/net/ipv6/conf/all/accept_dad", "0"},
		{"/proc/sys/net/ipv6/conf/default/accept_dad", "0"},
	} {
		if err := os.WriteFile(s.path, []byte(s.val), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// setupLinks brings up the world's loopback, which carries every host and DNS address. (A
// dummy interface would do as well, but not every kernel has the module; lo is always there.)
func (w *World) setupLinks() error {
	w.nlMu.Lock()
	defer w.nlMu.Unlock()
	lo, err := w.nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	if err := w.nl.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	w.loIndex = lo.Attrs().Index
	return nil
}

// checkHostAddr refuses addresses that cannot be a host of the world.
func checkHostAddr(a netip.Addr) error {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return errors.New("host address: the zero netip.Addr")
	case a.Zone() != "":
		return fmt.Errorf("host address %s: zones are not supported", a)
	case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback(), a.IsLinkLocalUnicast() && a.Is6(),
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("host address %s: not a unicast address a host can have", a)
	case LinkPrefix4.Contains(a), LinkPrefix6.Contains(a):
		return fmt.Errorf("host address %s: inside the sandbox link prefixes %s, %s", a, LinkPrefix4, LinkPrefix6)
	}
	return nil
}

// ensureAddr puts a on the world's lo (as a /32 or /128: the address alone, no prefix route)
// unless it is there already or is a loopback address.
func (w *World) ensureAddr(a netip.Addr) error {
	a = a.Unmap()
	if a.IsLoopback() {
		return nil
	}
	w.mu.Lock()
	have := w.addrs[a]
	w.mu.Unlock()
	if have {
		return nil
	}
	if err := addAddr(w.nl, &w.nlMu, w.loIndex, netip.PrefixFrom(a, a.BitLen())); err != nil {
		return err
	}
	w.mu.Lock()
	w.addrs[a] = true
	w.mu.Unlock()
	return nil
}

// addAddr adds p to a link, without duplicate address detection; an address that is there
// already is not an error.
func addAddr(h *netlink.Handle, mu *sync.Mutex, linkIndex int, p netip.Prefix) error {
	mu.Lock()
	defer mu.Unlock()
	link, err := h.LinkByIndex(linkIndex)
	if err != nil {
		return fmt.Errorf("link %d: %w", linkIndex, err)
	}
	addr := &netlink.Addr{
		IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		Flags: unix.IFA_F_NODAD,
	}
	if err := h.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding %s to %s: %w", p, link.Attrs().Name, err)
	}
	return nil
}

func (w *World) startDNS() error {
	if err := w.ensureAddr(DNS4); err != nil {
		return err
	}
	if err := w.ensureAddr(DNS6); err != nil {
		return err
	}
	for _, a := range []netip.Addr{DNS4, DNS6} {
		ap := netip.AddrPortFrom(a, PortDNS)
		pc, err := w.listenUDP(ap)
		if err != nil {
			return err
		}
		if err := w.serveDNS(&dns.Server{PacketConn: pc}); err != nil {
			return err
		}
		ln, err := w.ListenTCP(ap)
		if err != nil {
			return err
		}
		if err := w.serveDNS(&dns.Server{Listener: ln}); err != nil {
			return err
		}
	}
	return nil
}

// acceptQueries lets every message but a response reach the handler (the default also turns
// away several questions, and extra records, before the handler could log them).
func acceptQueries(dh dns.Header) dns.MsgAcceptAction {
	const qr = 1 << 15
	if dh.Bits&qr != 0 {
		return dns.MsgIgnore
	}
	return dns.MsgAccept
}

// serveDNS starts srv and waits until it serves, so a Shutdown at teardown cannot miss it.
func (w *World) serveDNS(srv *dns.Server) error {
	srv.Handler = w.dns
	srv.MsgAcceptFunc = acceptQueries
	srv.DecorateReader = func(r dns.Reader) dns.Reader {
		return countingReader{Reader: r, count: w.countUDP}
	}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		errc <- srv.ActivateAndServe()
	}()
	select {
	case <-started:
	case err := <-errc:
		return fmt.Errorf("starting DNS server: %w", err)
	case <-time.After(5 * time.Second):
		return errors.New("starting DNS server: not serving after 5s")
	}
	w.mu.Lock()
	w.dnsServers = append(w.dnsServers, srv)
	w.mu.Unlock()
	return nil
}

// AddHost gives addr the standard servers (HTTP 80, HTTPS 443, echo 7/tcp and 7/udp), adding
// the address to the world first. Adding a host twice is not an error. It fails for the
// addresses WithHosts refuses.
func (w *World) AddHost(addr netip.Addr) error {
	if err := checkHostAddr(addr); err != nil {
		return err
	}
	addr = addr.Unmap()
	w.mu.Lock()
	dup := slices.Contains(w.hosts, addr)
	w.mu.Unlock()
	if dup {
		return nil
	}
	httpLn, err := w.ListenTCP(netip.AddrPortFrom(addr, PortHTTP))
	if err != nil {
		return err
	}
	httpsLn, err := w.ListenTCP(netip.AddrPortFrom(addr, PortHTTPS))
	if err != nil {
		return err
	}
	echoLn, err := w.ListenTCP(netip.AddrPortFrom(addr, PortEcho))
	if err != nil {
		return err
	}
	echoPC, err := w.listenUDP(netip.AddrPortFrom(addr, PortEcho))
	if err != nil {
		return err
	}
	w.goServe(func() { _ = w.web.Serve(httpLn) })
	w.goServe(func() { _ = w.web.ServeTLS(httpsLn, "", "") })
	w.goServe(func() { w.serveEchoTCP(echoLn) })
	w.goServe(func() { w.serveEchoUDP(echoPC) })
	w.mu.Lock()
	w.hosts = append(w.hosts, addr)
	w.mu.Unlock()
	return nil
}

func (w *World) goServe(fn func()) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		fn()
	}()
}

// Hosts lists the addresses that run the standard servers.
func (w *World) Hosts() []netip.Addr {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.hosts)
}

// ListenTCP opens a TCP listener inside the world on ap (adding the address to the world if
// needed; port 0 picks one), for a test's own server: an SSH-like banner, a fake metadata
// service, a slow upstream. Its accepted connections count in TCPAccepted. The world closes it
// at teardown if the test has not.
func (w *World) ListenTCP(ap netip.AddrPort) (net.Listener, error) {
	if err := w.ensureAddr(ap.Addr()); err != nil {
		return nil, err
	}
	var ln net.Listener
	err := w.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", ap.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on tcp %s in %s: %w", ap, w.name, err)
	}
	key, _ := netip.ParseAddrPort(ln.Addr().String())
	cl := &countingListener{Listener: ln, w: w, key: unmapAP(key)}
	if err := w.track(cl); err != nil {
		return nil, err
	}
	return cl, nil
}

// ListenUDP opens a UDP socket inside the world on ap, like ListenTCP; datagrams it reads
// count in UDPReceived.
func (w *World) ListenUDP(ap netip.AddrPort) (net.PacketConn, error) {
	pc, err := w.listenUDP(ap)
	if err != nil {
		return nil, err
	}
	return &countingPacketConn{UDPConn: pc, w: w}, nil
}

func (w *World) listenUDP(ap netip.AddrPort) (*net.UDPConn, error) {
	if err := w.ensureAddr(ap.Addr()); err != nil {
		return nil, err
	}
	var pc *net.UDPConn
	err := w.Do(func() error {
		var err error
		pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on udp %s in %s: %w", ap, w.name, err)
	}
	if err := w.track(pc); err != nil {
		return nil, err
	}
	return pc, nil
}

// track registers c to be closed at teardown; after teardown started, it closes c instead.
func (w *World) track(c io.Closer) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		c.Close()
		return errors.New("world is torn down")
	}
	w.closers = append(w.closers, c)
	return nil
}

func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

type countingListener struct {
	net.Listener
	w   *World
	key netip.AddrPort
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.w.mu.Lock()
		l.w.tcpAccepted[l.key]++
		l.w.mu.Unlock()
	}
	return c, err
}

type countingPacketConn struct {
	*net.UDPConn
	w *World
}

func (c *countingPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, addr, err := c.UDPConn.ReadFrom(p)
	if err == nil {
		c.w.countUDP(c.LocalAddr())
	}
	return n, addr, err
}

func (w *World) countUDP(local net.Addr) {
	ap, err := netip.ParseAddrPort(local.String())
	if err != nil {
		return
	}
	w.mu.Lock()
	w.udpReceived[unmapAP(ap)]++
	w.mu.Unlock()
}

func (w *World) serveEchoTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. EMFILE; do not spin
			continue
		}
		w.mu.Lock()
		if w.closed {
			w.mu.Unlock()
			c.Close()
			return
		}
		w.conns[c] = struct{}{}
		w.mu.Unlock()
		w.goServe(func() { w.echoConn(c) })
	}
}

func (w *World) echoConn(c net.Conn) {
	defer func() {
		c.Close()
		w.mu.Lock()
		delete(w.conns, c)
		w.mu.Unlock()
	}()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	_, _ = io.Copy(c, c)
}

func (w *World) serveEchoUDP(pc *net.UDPConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		w.countUDP(pc.LocalAddr())
		_, _ = pc.WriteToUDPAddrPort(buf[:n], from)
	}
}

func (w *World) logHTTP(r HTTPRequest) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.httpCounts[canonHost(r.Host)]++
	if len(w.httpLog) < maxLogEntries {
		w.httpLog = append(w.httpLog, r)
	}
}

// canonHost lower-cases a Host header and drops its port, brackets and trailing dot.
func canonHost(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// SetRecords makes the DNS server answer name with rrs from now on, replacing what it had;
// with no rrs, name is removed and answered NXDOMAIN. name may be a wildcard, "*.example.test",
// which answers every name below example.test that has no entry of its own. Names are compared
// case-insensitively, with or without the trailing dot.
func (w *World) SetRecords(name string, rrs ...Record) {
	w.dns.set(name, rrs)
}

// DNSQueries counts the questions for name that reached the DNS server (any type, UDP or TCP,
// any case, with or without the trailing dot). Zero proves that a query never left the sandbox.
func (w *World) DNSQueries(name string) int {
	return w.dns.queries(name)
}

// DNSLog lists the questions the DNS server received, oldest first (the first 65536 are kept).
func (w *World) DNSLog() []DNSQuery {
	return w.dns.snapshot()
}

// HTTPRequests counts the requests the HTTP and HTTPS servers received whose Host header names
// host (case-insensitive; port, brackets and trailing dot ignored).
func (w *World) HTTPRequests(host string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.httpCounts[canonHost(host)]
}

// HTTPLog lists the requests the HTTP and HTTPS servers received, oldest first (the first
// 65536 are kept).
func (w *World) HTTPLog() []HTTPRequest {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.httpLog)
}

// TCPAccepted counts the TCP connections accepted on ap (any listener of the world: DNS,
// HTTP, HTTPS, echo, or one from ListenTCP), whether or not anything was sent on them.
func (w *World) TCPAccepted(ap netip.AddrPort) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.tcpAccepted[unmapAP(ap)]
}

// UDPReceived counts the UDP datagrams read on ap (DNS, echo, or a socket from ListenUDP).
func (w *World) UDPReceived(ap netip.AddrPort) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.udpReceived[unmapAP(ap)]
}

// ServerErrors lists what the HTTP(S) servers logged, TLS handshake failures mostly ("remote
// error: tls: unknown certificate authority" when a client did not trust the world's CA).
func (w *World) ServerErrors() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.serverErrors)
}

// ResetCounters empties the DNS and HTTP logs and every counter (not the DNS table), for a
// test that reuses one world across cases.
func (w *World) ResetCounters() {
	w.dns.reset()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.httpLog = nil
	w.serverErrors = nil
	clear(w.httpCounts)
	clear(w.tcpAccepted)
	clear(w.udpReceived)
}

// CAFile is the path of the world's CA certificate (PEM), for curl --cacert, openssl -CAfile,
// SSL_CERT_FILE, REQUESTS_CA_BUNDLE. It is readable by every user and removed at teardown.
func (w *World) CAFile() string { return w.caFile }

// CAPEM is the world's CA certificate in PEM.
func (w *World) CAPEM() []byte { return slices.Clone(w.ca.certPEM) }

// CertPool is a fresh pool holding only the world's CA, for a Go client's tls.Config.RootCAs.
func (w *World) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(w.ca.cert)
	return p
}

// Close tears the world down: its sandboxes, its servers, processes left inside it (killed and
// reported), its namespace and its CA file. Start arranges it with t.Cleanup; calling it earlier
// is allowed, and calling it again returns the first result.
func (w *World) Close() error {
	w.closeOnce.Do(func() { w.closeErr = w.close() })
	return w.closeErr
}

func (w *World) close() error {
	var errs []error
	w.mu.Lock()
	w.closed = true
	sandboxes := make([]*Sandbox, 0, len(w.sandboxes))
	for s := range w.sandboxes {
		sandboxes = append(sandboxes, s)
	}
	w.mu.Unlock()
	for _, s := range sandboxes {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}

	if w.web != nil {
		_ = w.web.Close()
	}
	w.mu.Lock()
	dnsServers := w.dnsServers
	closers := w.closers
	conns := make([]net.Conn, 0, len(w.conns))
	for c := range w.conns {
		conns = append(conns, c)
	}
	w.mu.Unlock()
	for _, s := range dnsServers {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.ShutdownContext(ctx)
		cancel()
	}
	for _, c := range closers {
		_ = c.Close()
	}
	for _, c := range conns {
		_ = c.Close()
	}
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		errs = append(errs, errors.New("servers did not stop within 5s"))
	}

	if w.nl != nil {
		w.nlMu.Lock()
		w.nl.Close()
		w.nl = nil
		w.nlMu.Unlock()
	}
	if err := w.destroy(); err != nil {
		errs = append(errs, err)
	}
	if w.caDir != "" {
		if err := os.RemoveAll(w.caDir); err != nil {
			errs = append(errs, fmt.Errorf("removing CA directory: %w", err))
		}
	}
	return errors.Join(errs...)
}
