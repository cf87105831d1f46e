package proxy

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/minrelay"
	"github.com/egressd/egressd/policy"
)

// BenchmarkConnectTunnel opens one CONNECT tunnel per iteration, end to end
// on loopback: the client connects, sends CONNECT, reads the 200, sends one
// byte, reads the echo back and closes. The proxy runs as egressd serve runs
// it (metrics registered, the batched audit writer on, here into
// io.Discard); the minimal splice relay of bench/proxy is measured beside
// it. Besides the usual figures of the whole process (client and echo server
// included), each path reports what it alone allocates per tunnel — its
// B/op and allocs/op less those of a direct client→server connection
// measured in the same run — as B/tunnel and allocs/tunnel, and the
// process's CPU (user+system, client and echo server included) and GC
// cycles per 1000 tunnels.
func BenchmarkConnectTunnel(b *testing.B) {
	sink := startEchoSink(b)
	direct := func() (net.Conn, error) { return net.Dial("tcp", sink) }
	base := directCost(b, direct)

	b.Run("relay", func(b *testing.B) {
		relay := startMinimalRelay(b)
		benchTunnels(b, base, func() (net.Conn, error) { return dialCONNECT(relay, sink) }, func() {})
	})
	b.Run("egressd", func(b *testing.B) { benchEgressdTunnels(b, base, sink, 0) })
	// As egressd runs in a sandbox: every upstream socket marked (needs
	// CAP_NET_ADMIN), which net.Dialer paid for with a Control callback.
	b.Run("egressd-marked", func(b *testing.B) {
		if os.Geteuid() != 0 {
			b.Skip("setting SO_MARK needs CAP_NET_ADMIN (run as root)")
		}
		benchEgressdTunnels(b, base, sink, 0x13d0) // a mark no rule on this host uses
	})
}

// benchEgressdTunnels runs BenchmarkConnectTunnel's egressd path, its
// upstream sockets marked with mark (0: none).
func benchEgressdTunnels(b *testing.B, base tunnelCost, sink string, mark uint32) {
	var np policy.NetworkPolicy
	r, err := policy.ParseRule("127.0.0.1:*", policy.Flag("--allow"))
	if err != nil {
		b.Fatal(err)
	}
	np.Allow = append(np.Allow, r)
	m, err := policy.NewMatcher(np)
	if err != nil {
		b.Fatal(err)
	}
	var live policy.Live
	live.Store(m)
	al := audit.NewBuffered(io.Discard, "bench", audit.BufferOptions{})
	defer al.Close()
	p, err := New(Config{Policy: &live, Logger: slog.New(slog.DiscardHandler), MaxTunnels: -1, MaxTunnelsPerDest: -1,
		Audit: al, Metrics: metrics.NewRegistry(), Mark: mark})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go p.ServeExplicit(ln)
	defer p.Shutdown(b.Context())
	benchTunnels(b, base, func() (net.Conn, error) { return dialCONNECT(ln.Addr().String(), sink) }, func() {
		for p.OpenTunnels() > 0 { // every handler has written its record and let go
			time.Sleep(time.Millisecond)
		}
	})
}

// tunnelCost is what one tunnel allocated, on average.
type tunnelCost struct{ bytes, allocs float64 }

// oneTunnel sends a byte through a fresh connection and reads it back.
func oneTunnel(tb testing.TB, dial func() (net.Conn, error)) {
	c, err := dial()
	if err != nil {
		tb.Fatal(err)
	}
	b := []byte{0x01} // a control byte: no request line, classified at once
	if _, err := c.Write(b); err != nil {
		tb.Fatal(err)
	}
	if _, err := io.ReadFull(c, b); err != nil {
		tb.Fatal(err)
	}
	c.Close()
}

// measure runs n tunnels and returns what they allocated on average, after
// settle (waiting for the proxy's side to finish) and a pause for the echo
// server's goroutines.
func measure(tb testing.TB, n int, dial func() (net.Conn, error), settle func()) tunnelCost {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		oneTunnel(tb, dial)
	}
	settle()
	time.Sleep(20 * time.Millisecond)
	runtime.ReadMemStats(&after)
	return tunnelCost{float64(after.TotalAlloc-before.TotalAlloc) / float64(n), float64(after.Mallocs-before.Mallocs) / float64(n)}
}

// directCost is what a direct connection to the echo server allocates
// (client and server sides): the part of every path that is not the proxy.
func directCost(tb testing.TB, direct func() (net.Conn, error)) tunnelCost {
	measure(tb, 200, direct, func() {}) // warm up
	return measure(tb, 2000, direct, func() {})
}

func benchTunnels(b *testing.B, base tunnelCost, dial func() (net.Conn, error), settle func()) {
	measure(b, 200, dial, settle) // warm up: pools, first-use allocations
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	cpu0 := processCPU(b)
	for b.Loop() {
		oneTunnel(b, dial)
	}
	b.StopTimer()
	settle()
	cpu := processCPU(b) - cpu0
	time.Sleep(20 * time.Millisecond)
	runtime.ReadMemStats(&after)
	n := float64(b.N)
	b.ReportMetric(cpu.Seconds()*1000/n*1000, "CPU-ms/1000")
	b.ReportMetric(float64(after.NumGC-before.NumGC)/n*1000, "GCs/1000")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/n-base.bytes, "B/tunnel")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n-base.allocs, "allocs/tunnel")
}

// startEchoSink answers the first byte of every connection with itself and
// then reads until the client closes.
func startEchoSink(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err != nil {
					return
				}
				if _, err := c.Write(b[:]); err != nil {
					return
				}
				_, _ = c.Read(b[:]) // until the client closes
			}()
		}
	}()
	return ln.Addr().String()
}

// startMinimalRelay is bench/proxy's ceiling (internal/minrelay).
func startMinimalRelay(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go minrelay.ServeConnect(ln)
	return ln.Addr().String()
}

// dialCONNECT opens a tunnel to target through the proxy at addr.
func dialCONNECT(addr, target string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
		c.Close()
		return nil, err
	}
	var head [128]byte
	n := 0
	for !bytes.HasSuffix(head[:n], []byte("\r\n\r\n")) {
		if n == len(head) {
			c.Close()
			return nil, fmt.Errorf("CONNECT answer over %d bytes: %q", len(head), head[:n])
		}
		m, err := c.Read(head[n:])
		if err != nil {
			c.Close()
			return nil, err
		}
		n += m
	}
	if !bytes.HasPrefix(head[:n], []byte("HTTP/1.1 200 ")) {
		c.Close()
		return nil, fmt.Errorf("CONNECT answered %q", head[:n])
	}
	return c, nil
}
