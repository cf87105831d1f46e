package proxy

import (
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// BenchmarkRelayBulk moves 64 MiB per iteration from a client through one
// relay direction to a sink, on loopback, with the relay's copy (a pipe
// borrowed while bytes are in flight) and with io.Copy (Go's splice, a pipe
// held for the whole copy) in the same run. Besides MB/s it reports the
// process's CPU (user+system, client and sink included: the same for both)
// per GiB moved.
func BenchmarkRelayBulk(b *testing.B) {
	pool := newPipePool(defaultMaxPipes)
	for _, bc := range []struct {
		name string
		copy func(dst, src net.Conn) (int64, error)
	}{
		{"borrowed-pipe", pool.copy},
		{"io.Copy", func(dst, src net.Conn) (int64, error) { return io.Copy(dst, src) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			const size = 64 << 20
			b.SetBytes(size)
			cpu0 := processCPU(b)
			for b.Loop() {
				relayOnce(b, bc.copy, size)
			}
			cpu := processCPU(b) - cpu0
			b.ReportMetric(cpu.Seconds()*1000/(float64(b.N)*size/(1<<30)), "CPU-ms/GiB")
		})
	}
}

// relayOnce sends size bytes client → relay → sink and waits for the sink
// to have read them all.
func relayOnce(tb testing.TB, copyFn func(dst, src net.Conn) (int64, error), size int) {
	front, back := tcpPair(tb)
	up, sink := tcpPair(tb)
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, sink)
		sink.Close()
		done <- n
	}()
	go func() {
		buf := make([]byte, 256<<10)
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := front.Write(buf); err != nil {
				break
			}
		}
		front.Close()
	}()
	n, err := copyFn(up, back)
	up.Close()
	back.Close()
	if got := <-done; err != nil || n != int64(size) || got != int64(size) {
		tb.Fatalf("relayed %d, sink read %d of %d: %v", n, got, size, err)
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (client, server *net.TCPConn) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		tb.Fatal(err)
	}
	s, err := ln.AcceptTCP()
	if err != nil {
		tb.Fatal(err)
	}
	return c, s
}

// processCPU is the process's user+system CPU time so far.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestShutdownClosesThePipes: the relay's idle pipes are descriptors the
// process keeps; Shutdown closes them with everything else.
func TestShutdownClosesThePipes(t *testing.T) {
	p, err := New(Config{Policy: policyOf(t)})
	if err != nil {
		t.Fatal(err)
	}
	a, b := p.pipes.get(), p.pipes.get()
	if a == nil || b == nil {
		t.Fatal("no pipe from an empty pool")
	}
	p.pipes.put(a, true)
	p.pipes.put(b, true)
	if _, open := p.pipes.stats(); open != 2 {
		t.Fatalf("%d pipes open, want the 2 given back", open)
	}
	if err := p.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if inUse, open := p.pipes.stats(); inUse != 0 || open != 0 {
		t.Errorf("after Shutdown: %d pipes in use, %d open; want none", inUse, open)
	}
}
