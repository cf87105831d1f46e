// Command proxybench measures egressd's proxy against a direct loopback
// connection and a minimal splice relay (the ceiling), side by side in one
// run: bulk throughput and new tunnels per second with added latency.
// See README.md for how to run it (run.sh) and the figures.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/minrelay"
	"github.com/egressd/egressd/internal/sockopt"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/proxy"
)

var (
	bulkBytes   = flag.Int64("bulk-bytes", 512<<20, "bytes per bulk transfer")
	rounds      = flag.Int("rounds", 5, "bulk rounds per path (median reported)")
	rateDur     = flag.Duration("rate-dur", time.Second, "duration of one connection-rate round")
	rateRounds  = flag.Int("rate-rounds", 3, "connection-rate rounds per path (median reported)")
	workers     = flag.Int("workers", 4, "concurrent clients in the connection-rate test")
	transparent = flag.Bool("transparent", false, "also measure the transparent path (run inside run.sh's netns with its REDIRECT rules)")
	only        = flag.String("only", "", "measure only paths whose name contains this")
	mark        = flag.Uint("mark", 0x1e5, "SO_MARK of egressd's and the relay's upstream sockets (transparent mode)")
	procs       = flag.Bool("procs", false, "run the CONNECT relay and egressd each in a process of its own, and report each one's CPU per 1000 new tunnels")
	smokescreen = flag.String("smokescreen", "", "path of a smokescreen binary: measure it too, as a CONNECT proxy in a process of its own (implies -procs)")
	serve       = flag.String("serve", "", "internal: serve one CONNECT proxy (relay or egressd) on loopback, print its address, run until stdin closes")
)

const (
	egressdTPort = 15001           // REDIRECT target for egressdTAddr
	relayTPort   = 15002           // REDIRECT target for relayTAddr
	egressdTAddr = "198.51.100.30" // transparent destinations (run.sh puts them on lo)
	relayTAddr   = "198.51.100.31"
	sinkTPort    = 9000
)

// path is one way from a client to the sink.
type path struct {
	name string
	// dial returns a connection that carries payload to the sink.
	dial func() (net.Conn, error)
	// pid is the process that does the path's proxying when it has one to
	// itself (-procs): its CPU per new tunnel is reported. 0: in this
	// process.
	pid int
	// noBulk: the bulk test cannot run through it. smokescreen (goproxy)
	// closes a tunnel when the client half-closes, so the sink's count
	// after the client's end of stream never comes back.
	noBulk bool
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	if *serve != "" {
		serveChild(*serve)
		return
	}
	sink := startSink("127.0.0.1:0")
	sinkAddr := sink.Addr().String()

	relay, relayPID := "", 0
	explicit, egressdPID := "", 0
	var p *proxy.Proxy
	if *procs || *smokescreen != "" {
		relay, relayPID = startChild("relay")
		explicit, egressdPID = startChild("egressd")
	} else {
		relay = startRelayConnect()
		p, explicit = startEgressd()
	}
	if *transparent && p == nil {
		p, _ = startEgressd() // the transparent path is measured in this process
	}

	paths := []path{
		{name: "direct", dial: func() (net.Conn, error) { return net.Dial("tcp", sinkAddr) }},
		{name: "relay-connect (io.Copy splice)", dial: func() (net.Conn, error) { return dialConnect(relay, sinkAddr) }, pid: relayPID},
		{name: "egressd-connect", dial: func() (net.Conn, error) { return dialConnect(explicit, sinkAddr) }, pid: egressdPID},
	}
	if *smokescreen != "" {
		addr, pid := startSmokescreen(*smokescreen)
		paths = append(paths, path{name: "smokescreen-connect", dial: func() (net.Conn, error) { return dialConnect(addr, sinkAddr) }, pid: pid, noBulk: true})
	}
	if *transparent {
		startSink(net.JoinHostPort(egressdTAddr, fmt.Sprint(sinkTPort)))
		startSink(net.JoinHostPort(relayTAddr, fmt.Sprint(sinkTPort)))
		startRelayTransparent(fmt.Sprintf("127.0.0.1:%d", relayTPort))
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", egressdTPort))
		check(err)
		go p.ServeTransparent(ln)
		paths = append(paths,
			path{name: "relay-transparent (splice)", dial: func() (net.Conn, error) { return net.Dial("tcp", net.JoinHostPort(relayTAddr, fmt.Sprint(sinkTPort))) }},
			path{name: "egressd-transparent", dial: func() (net.Conn, error) {
				return net.Dial("tcp", net.JoinHostPort(egressdTAddr, fmt.Sprint(sinkTPort)))
			}},
		)
	}
	var sel []path
	for _, pa := range paths {
		if strings.Contains(pa.name, *only) {
			sel = append(sel, pa)
		}
	}

	if *rounds == 0 {
		*rounds = 0
	}
	fmt.Printf("bulk: %d MiB per transfer, median of %d rounds (paths interleaved per round)\n", *bulkBytes>>20, *rounds)
	bulk := make(map[string][]float64)
	for r := 0; r < *rounds; r++ {
		for _, pa := range sel {
			if !pa.noBulk {
				bulk[pa.name] = append(bulk[pa.name], bulkOnce(pa))
			}
		}
	}
	fmt.Printf("%-32s %12s %10s\n", "path", "MiB/s", "vs relay")
	for _, pa := range sel {
		if len(bulk[pa.name]) == 0 {
			continue
		}
		m := median(bulk[pa.name])
		fmt.Printf("%-32s %12.0f %10s\n", pa.name, m, ratio(m, bulk, pa.name))
	}

	if *rateRounds == 0 {
		return
	}
	fmt.Printf("\nnew tunnels: %d workers, %s per round, median of %d rounds; latency = dial..first byte back\n", *workers, *rateDur, *rateRounds)
	type rateRes struct {
		rate     float64
		p50, p99 time.Duration
	}
	rates := make(map[string][]rateRes)
	// CPU of a path's own process over all its rounds, and its tunnels.
	cpu := make(map[string]time.Duration)
	tunnels := make(map[string]int64)
	for r := 0; r < *rateRounds; r++ {
		for _, pa := range sel {
			var c0 time.Duration
			if pa.pid != 0 {
				c0 = processCPU(pa.pid)
			}
			rt, p50, p99, n := rateOnce(pa)
			if pa.pid != 0 {
				time.Sleep(50 * time.Millisecond) // the proxy's side of the last tunnels
				cpu[pa.name] += processCPU(pa.pid) - c0
				tunnels[pa.name] += n
			}
			rates[pa.name] = append(rates[pa.name], rateRes{rt, p50, p99})
		}
	}
	direct50 := time.Duration(0)
	fmt.Printf("%-32s %12s %10s %10s %10s %14s %12s %10s\n", "path", "conn/s", "vs relay", "p50", "p99", "p50 added", "CPU-ms/1000", "vs relay")
	cpuPer1000 := make(map[string][]float64)
	for _, pa := range sel {
		if tunnels[pa.name] > 0 {
			cpuPer1000[pa.name] = []float64{float64(cpu[pa.name].Milliseconds()) / float64(tunnels[pa.name]) * 1000}
		}
	}
	rateMedians := make(map[string][]float64)
	for _, pa := range sel {
		for _, x := range rates[pa.name] {
			rateMedians[pa.name] = append(rateMedians[pa.name], x.rate)
		}
	}
	for _, pa := range sel {
		rs := rates[pa.name]
		slices.SortFunc(rs, func(a, b rateRes) int { return cmp.Compare(a.rate, b.rate) })
		mid := rs[len(rs)/2]
		if pa.name == "direct" {
			direct50 = mid.p50
		}
		added := "-"
		if direct50 > 0 && pa.name != "direct" {
			added = (mid.p50 - direct50).Round(time.Microsecond).String()
		}
		cpuText, cpuRatio := "-", ""
		if c := cpuPer1000[pa.name]; len(c) > 0 {
			cpuText, cpuRatio = fmt.Sprintf("%.0f", c[0]), ratio(c[0], cpuPer1000, pa.name)
		}
		fmt.Printf("%-32s %12.0f %10s %10s %10s %14s %12s %10s\n", pa.name, mid.rate, ratio(mid.rate, rateMedians, pa.name),
			mid.p50.Round(time.Microsecond), mid.p99.Round(time.Microsecond), added, cpuText, cpuRatio)
	}
	if len(cpuPer1000) > 0 {
		fmt.Println("(CPU-ms/1000: user+system time of the path's own process over all its rate rounds, per 1000 tunnels)")
	}
	if p != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	}
}

// ratio compares v with the minimal relay of the same kind.
func ratio(v float64, all map[string][]float64, name string) string {
	ref := "relay-connect (io.Copy splice)"
	if strings.Contains(name, "transparent") {
		ref = "relay-transparent (splice)"
	}
	if name == ref || len(all[ref]) == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f%%", 100*v/median(all[ref]))
}

// bulkOnce sends bulkBytes through pa and returns MiB/s, timed until the
// sink confirms it received everything.
func bulkOnce(pa path) float64 {
	c, err := pa.dial()
	check(err)
	defer c.Close()
	buf := make([]byte, 256<<10)
	buf[0] = 'B'
	start := time.Now()
	for left := *bulkBytes; left > 0; {
		n := min(left, int64(len(buf)))
		w, err := c.Write(buf[:n])
		check(err)
		left -= int64(w)
	}
	check(c.(*net.TCPConn).CloseWrite())
	var got [8]byte
	_, err = io.ReadFull(c, got[:])
	check(err)
	el := time.Since(start)
	if n := int64(binary.BigEndian.Uint64(got[:])); n != *bulkBytes {
		log.Fatalf("%s: sink got %d bytes, sent %d", pa.name, n, *bulkBytes)
	}
	return float64(*bulkBytes) / (1 << 20) / el.Seconds()
}

// rateOnce opens connections through pa from several workers for rateDur:
// each sends one byte and waits for it to come back. It returns the rate,
// the latencies' p50 and p99, and the number of connections.
func rateOnce(pa path) (float64, time.Duration, time.Duration, int64) {
	var (
		mu    sync.Mutex
		lats  []time.Duration
		count atomic.Int64
		wg    sync.WaitGroup
	)
	deadline := time.Now().Add(*rateDur)
	start := time.Now()
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			b := []byte{echoByte}
			for time.Now().Before(deadline) {
				t0 := time.Now()
				c, err := pa.dial()
				check(err)
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, err = c.Write(b)
				check(err)
				_, err = io.ReadFull(c, b)
				check(err)
				local = append(local, time.Since(t0))
				_ = c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT pile-up on the client side
				c.Close()
				count.Add(1)
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	slices.Sort(lats)
	p := func(q float64) time.Duration { return lats[min(len(lats)-1, int(q*float64(len(lats))))] }
	return float64(count.Load()) / el.Seconds(), p(0.50), p(0.99), count.Load()
}

// echoByte asks the sink for an echo. It is a control byte, which cannot
// start an HTTP request line, so egressd classifies the stream at once: a
// lone letter could still become "GET / HTTP/1.1" and would be held until
// the line shows what it is.
const echoByte = 0x01

// startSink serves two requests: 'B' bulk (count bytes to EOF, answer the
// count; the zeros after the 'B' show at once that it is no request line)
// and echoByte (answer one byte).
func startSink(addr string) net.Listener {
	ln, err := net.Listen("tcp", addr)
	check(err)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 256<<10)
				n, err := c.Read(buf[:1])
				if err != nil || n != 1 {
					return
				}
				if buf[0] == echoByte {
					_, _ = c.Write(buf[:1])
					_, _ = io.Copy(io.Discard, c) // until the client closes
					return
				}
				total := int64(1)
				for {
					n, err := c.Read(buf)
					total += int64(n)
					if err != nil {
						break
					}
				}
				var out [8]byte
				binary.BigEndian.PutUint64(out[:], uint64(total))
				_, _ = c.Write(out[:])
			}()
		}
	}()
	return ln
}

// startEgressd runs egressd's proxy with an explicit listener; the policy
// allows the loopback sink and the transparent destinations by IP rule. As
// egressd serve runs it, the metrics are registered and every decision goes
// through the batched audit writer (into /dev/null: its encoding and its
// writes, no disk).
func startEgressd() (*proxy.Proxy, string) {
	var np policy.NetworkPolicy
	for _, text := range []string{"127.0.0.1:*", egressdTAddr + ":*"} {
		r, err := policy.ParseRule(text, policy.Flag("--allow"))
		check(err)
		np.Allow = append(np.Allow, r)
	}
	m, err := policy.NewMatcher(np)
	check(err)
	var live policy.Live
	live.Store(m)
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	check(err)
	cfg := proxy.Config{Policy: &live, Logger: slog.New(slog.DiscardHandler), MaxTunnels: -1, MaxTunnelsPerDest: -1,
		Audit: audit.NewBuffered(null, "proxybench", audit.BufferOptions{}), Metrics: metrics.NewRegistry()}
	if *transparent {
		cfg.Mark = uint32(*mark)
	}
	p, err := proxy.New(cfg)
	check(err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	go p.ServeExplicit(ln)
	return p, ln.Addr().String()
}

// dialConnect opens a CONNECT tunnel to target through the proxy at addr.
func dialConnect(addr, target string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	var head []byte
	buf := make([]byte, 256)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		n, err := c.Read(buf)
		if err != nil {
			c.Close()
			return nil, err
		}
		head = append(head, buf[:n]...)
	}
	// "HTTP/1.1 200 Connection established" (egressd, the relay) or
	// "HTTP/1.0 200 OK" (smokescreen, through goproxy).
	if len(head) < 12 || !bytes.HasPrefix(head, []byte("HTTP/1.")) || string(head[8:12]) != " 200" {
		c.Close()
		return nil, fmt.Errorf("CONNECT: %q", head)
	}
	return c, nil
}

// startRelayConnect is the ceiling for the explicit path: the least a
// CONNECT proxy can do (internal/minrelay).
func startRelayConnect() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	go minrelay.ServeConnect(ln)
	return ln.Addr().String()
}

// startRelayTransparent is the ceiling for the transparent path: original
// destination, dial, io.Copy both ways.
func startRelayTransparent(addr string) {
	ln, err := net.Listen("tcp", addr)
	check(err)
	d := net.Dialer{Control: sockopt.MarkControl(uint32(*mark))}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				orig, err := origDst4(c.(*net.TCPConn))
				if err != nil {
					c.Close()
					return
				}
				up, err := d.Dial("tcp", orig.String())
				if err != nil {
					c.Close()
					return
				}
				minrelay.Join(c.(*net.TCPConn), up.(*net.TCPConn))
			}()
		}
	}()
}

func origDst4(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var sa [16]byte
	var serr error
	err = raw.Control(func(fd uintptr) {
		l := uint32(len(sa))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, 80, uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, serr
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), binary.BigEndian.Uint16(sa[2:4])), nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func check(err error) {
	if err != nil && !errors.Is(err, syscall.EINTR) {
		log.Fatal(err)
	}
}

// serveChild is the -serve mode: one CONNECT proxy in this process, its
// address on stdout, until stdin closes (the parent ended).
func serveChild(name string) {
	var addr string
	switch name {
	case "relay":
		addr = startRelayConnect()
	case "egressd":
		_, addr = startEgressd()
	default:
		log.Fatalf("-serve %q: want relay or egressd", name)
	}
	fmt.Println(addr)
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// startChild runs this program with -serve name and returns the address
// it serves and its pid. The child ends when this process does (its stdin
// closes).
func startChild(name string) (string, int) {
	cmd := exec.Command(os.Args[0], "-serve", name)
	return startProxyProcess(cmd, func(out *bufio.Reader) string {
		line, err := out.ReadString('\n')
		check(err)
		return strings.TrimSpace(line)
	})
}

// startSmokescreen runs stripe/smokescreen on a free loopback port,
// allowed to reach the loopback sink (it refuses private ranges unless
// told), its request log (one JSON line per request, its decision record)
// into /dev/null, and returns its address and pid.
func startSmokescreen(bin string) (string, int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--listen-ip", "127.0.0.1", "--listen-port", strconv.Itoa(port), "--allow-range", "127.0.0.1/32")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return startProxyProcess(cmd, func(*bufio.Reader) string {
		for i := 0; ; i++ {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
				return addr
			}
			if i == 100 {
				log.Fatalf("smokescreen did not listen on %s: %v", addr, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// startProxyProcess starts cmd with its stdin a pipe this process holds
// open (a child of ours ends when it closes; smokescreen is killed with
// this process: Pdeathsig) and returns what ready reads from its stdout.
func startProxyProcess(cmd *exec.Cmd, ready func(*bufio.Reader) string) (string, int) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	check(err)
	stdout, err := cmd.StdoutPipe()
	check(err)
	cmd.Stderr = nil // smokescreen's request log: discarded (/dev/null)
	check(cmd.Start())
	children = append(children, stdin)
	return ready(bufio.NewReader(stdout)), cmd.Process.Pid
}

// children are the stdin pipes of the proxy processes: held open for the
// life of this process.
var children []io.WriteCloser

// processCPU is pid's user+system time so far (/proc/pid/stat, in clock
// ticks of 10 ms).
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	check(err)
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, err := strconv.ParseInt(f[11], 10, 64)
	check(err)
	stime, err := strconv.ParseInt(f[12], 10, 64)
	check(err)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
