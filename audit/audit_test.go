package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
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
