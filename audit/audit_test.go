package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestOneLinePerRecordWithConstantFieldNames(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, "job-1")
	l.now = func() time.Time { return time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC) }
	l.Log(Record{Kind: KindConnect, Target: "github.com", Port: 443, Decision: "allow", Reason: "allowed-by",
		Rule: "github.com", Source: "builtin:standard", Addrs: []string{"203.0.113.10"}, BytesUp: 10, BytesDown: 20, DurationMS: 1.5})
	l.Log(Record{Kind: KindDNS, Target: "evil.test", Port: 53, QType: "A", Decision: "deny", Reason: "no-allow-rule"})
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2: %q", len(lines), buf.String())
	}
	want := `{"time":"2026-11-22T08:00:00Z","sandbox_id":"job-1","kind":"connect","target":"github.com","port":443,"addrs":["203.0.113.10"],"decision":"allow","reason":"allowed-by","rule":"github.com","rule_source":"builtin:standard","bytes_up":10,"bytes_down":20,"duration_ms":1.5}`
	if lines[0] != want {
		t.Errorf("line 1:\n got %s\nwant %s", lines[0], want)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &m); err != nil {
		t.Fatal(err)
	}
	for _, absent := range []string{"rule", "bytes_up", "error", "addrs"} {
		if _, ok := m[absent]; ok {
			t.Errorf("empty field %q written: %s", absent, lines[1])
		}
	}
}

func TestNilLoggerDiscards(t *testing.T) {
	var l *Logger
	l.Log(Record{Kind: KindDNS}) // must not panic
}

func TestConcurrentRecordsNeverInterleave(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, "")
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				l.Log(Record{Kind: KindTCP, Target: strings.Repeat("x", 200), Decision: "deny"})
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 1000 {
		t.Fatalf("got %d lines, want 1000", len(lines))
	}
	for i, line := range lines {
		if !json.Valid([]byte(line)) {
			t.Fatalf("line %d is not one JSON object: %q", i, line)
		}
	}
}

// lockedBuffer is a sink safe for the flusher's writes; block, when set,
// holds every Write until it is closed.
type lockedBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
	block  chan struct{}
}

func (s *lockedBuffer) Write(b []byte) (int, error) {
	if s.block != nil {
		<-s.block
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.buf.Write(b)
}

func (s *lockedBuffer) lines(t *testing.T) []string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := strings.Split(strings.TrimRight(s.buf.String(), "\n"), "\n")
	if len(out) == 1 && out[0] == "" {
		return nil
	}
	for i, l := range out {
		if !json.Valid([]byte(l)) {
			t.Fatalf("line %d is not one JSON object: %q", i, l)
		}
	}
	return out
}

func TestBufferedLoggerLosesNothingOnClose(t *testing.T) {
	sink := &lockedBuffer{}
	l := NewBuffered(sink, "job-1", BufferOptions{FlushBytes: 1 << 10, FlushInterval: time.Hour})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				l.Log(Record{Kind: KindDNS, Target: fmt.Sprintf("g%d-%d.test", g, i), Decision: "deny", Reason: "no-allow-rule"})
			}
		})
	}
	wg.Wait()
	l.Close()
	lines := sink.lines(t)
	if len(lines) != 4000 || l.Dropped() != 0 {
		t.Fatalf("%d lines written, %d dropped; want 4000 and 0", len(lines), l.Dropped())
	}
	if sink.writes >= 4000/2 {
		t.Errorf("%d writes for 4000 records: not batched", sink.writes)
	}
	// Records of one goroutine keep their order.
	last := map[string]int{}
	for _, line := range lines {
		var r Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		var g, i int
		if _, err := fmt.Sscanf(r.Target, "g%d-%d.test", &g, &i); err != nil {
			t.Fatal(err)
		}
		if prev, ok := last[fmt.Sprint(g)]; ok && i != prev+1 {
			t.Fatalf("goroutine %d: record %d after %d", g, i, prev)
		}
		last[fmt.Sprint(g)] = i
		if r.SandboxID != "job-1" {
			t.Fatalf("sandbox_id %q", r.SandboxID)
		}
	}
	// After Close, records are written at once.
	l.Log(Record{Kind: KindTCP, Decision: "deny"})
	if n := len(sink.lines(t)); n != 4001 {
		t.Errorf("after Close: %d lines, want 4001", n)
	}
	l.Close() // twice is fine
}

func TestBufferedLoggerFlushesAfterTheInterval(t *testing.T) {
	sink := &lockedBuffer{}
	l := NewBuffered(sink, "", BufferOptions{FlushInterval: 20 * time.Millisecond})
	defer l.Close()
	l.Log(Record{Kind: KindDNS, Decision: "allow"})
	deadline := time.Now().Add(5 * time.Second)
	for len(sink.lines(t)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a lone record was not written within 5s of an interval of 20ms")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBufferedLoggerWritesAFullBatchAtOnce(t *testing.T) {
	sink := &lockedBuffer{}
	l := NewBuffered(sink, "", BufferOptions{FlushBytes: 4 << 10, FlushInterval: time.Hour})
	defer l.Close()
	for range 100 { // about 10 KiB
		l.Log(Record{Kind: KindDNS, Target: strings.Repeat("x", 60), Decision: "allow"})
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(sink.lines(t)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a batch over FlushBytes was not written (the interval is an hour)")
		}
		time.Sleep(5 * time.Millisecond)
	}
	l.Flush()
	if n := len(sink.lines(t)); n != 100 {
		t.Fatalf("after Flush: %d lines, want 100", n)
	}
}

// TestSlowSinkNeverBlocksADecision: a sink that does not return must not
// hold up Log; what does not fit is dropped and counted, the rest written
// once the sink moves again.
func TestSlowSinkNeverBlocksADecision(t *testing.T) {
	sink := &lockedBuffer{block: make(chan struct{})}
	var toldDrops atomic.Uint64
	l := NewBuffered(sink, "", BufferOptions{FlushBytes: 1 << 10, FlushInterval: time.Millisecond, MaxPending: 16 << 10,
		OnDrop: func(n uint64) { toldDrops.Add(n) }})
	const n = 5000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range n {
			l.Log(Record{Kind: KindConnect, Target: "slow.test", Decision: "deny", Reason: "no-allow-rule"})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Log blocked on a sink that does not return")
	}
	if l.Dropped() == 0 {
		t.Fatal("nothing dropped: 5000 records cannot fit in 16 KiB")
	}
	close(sink.block)
	l.Close()
	written := uint64(len(sink.lines(t)))
	if written+l.Dropped() != n {
		t.Fatalf("%d written + %d dropped != %d logged", written, l.Dropped(), n)
	}
	if toldDrops.Load() != l.Dropped() {
		t.Errorf("OnDrop was told %d drops, Dropped says %d", toldDrops.Load(), l.Dropped())
	}
}

func TestUnrepresentableRecordIsRepairedNotLost(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, "")
	l.now = func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }
	l.Log(Record{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), Kind: KindTCP, Decision: "allow", DurationMS: math.NaN()})
	want := `{"time":"2026-01-02T03:04:05Z","kind":"tcp","target":"","port":0,"decision":"allow","reason":""}` + "\n"
	if buf.String() != want {
		t.Fatalf("got  %s\nwant %s", buf.String(), want)
	}
}

func TestLogDoesNotAllocate(t *testing.T) {
	l := NewBuffered(io.Discard, "job", BufferOptions{FlushInterval: time.Hour})
	defer l.Close()
	r := Record{Time: time.Now(), Kind: KindConnect, Target: "api.github.com", Port: 443, Addrs: []string{"203.0.113.10:443"},
		Decision: "allow", Reason: "allowed-by", Rule: "*.github.com", Source: "builtin:standard", Client: "127.0.0.1:40000", DurationMS: 1.5}
	l.Log(r)
	l.Flush()
	if n := testing.AllocsPerRun(1000, func() { l.Log(r) }); n != 0 {
		t.Errorf("Log allocates %.1f times per record", n)
	}
}

func BenchmarkLog(b *testing.B) {
	r := Record{Kind: KindDNS, Target: "www.example.test", Port: 53, QType: "A", Addrs: []string{"198.51.100.1"},
		Decision: "allow", Reason: "allowed-by", Rule: "*.example.test", Source: "flag:--allow", Client: "127.0.0.1"}
	f, err := os.Create(filepath.Join(b.TempDir(), "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.Run("unbuffered", func(b *testing.B) {
		l := New(f, "bench")
		b.ReportAllocs()
		for b.Loop() {
			l.Log(r)
		}
	})
	b.Run("buffered", func(b *testing.B) {
		// MaxPending large enough that the tight loop, which the flusher
		// must preempt to run, drops nothing: this is the cost of a record written.
		l := NewBuffered(f, "bench", BufferOptions{MaxPending: 256 << 20})
		b.ReportAllocs()
		for b.Loop() {
			l.Log(r)
		}
		l.Close()
		b.ReportMetric(float64(l.Dropped())/float64(b.N), "dropped/op")
	})
	b.Run("buffered-parallel", func(b *testing.B) {
		// Many goroutines logging at once, as the resolver's query
		// goroutines do: the batch lock is held only for the copy.
		l := NewBuffered(f, "bench", BufferOptions{MaxPending: 256 << 20})
		b.ReportAllocs()
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Log(r)
			}
		})
		l.Close()
		b.ReportMetric(float64(l.Dropped())/float64(b.N), "dropped/op")
	})
}
