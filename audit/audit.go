// Package audit writes egressd's decision records: one JSON object per line,
// one line per DNS query, connection or HTTP request. Field names are part of
// the public interface (docs/audit.md) and must not change.
//
// A Logger made by New writes each record as it is logged. One made by
// NewBuffered, the one egressd serve uses for the resolver and the proxy
// alike, never makes a decision wait for the sink:
//
//	Log ──encode (encode.go)──► pending batch ──flusher goroutine──► sink
//	      no reflection          flushed at FlushBytes, FlushInterval
//	                             after its first record, Flush and Close;
//	                             past MaxPending bytes new records are
//	                             dropped and counted (Dropped), never waited for
package audit

import (
	"bytes"
	"io"
	"math"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Kind is what was decided on.
type Kind string

const (
	KindDNS     Kind = "dns"
	KindConnect Kind = "connect" // explicit proxy CONNECT tunnel
	KindHTTP    Kind = "http"    // one plain-HTTP request (explicit or transparent)
	KindTLS     Kind = "tls"     // transparent connection decided on SNI
	KindTCP     Kind = "tcp"     // transparent connection with no name (learned address or IP rule)
	KindHTTPS   Kind = "https"   // one request inside an inspected TLS session (docs/inspection.md)
)

// Record is one decision. Zero-valued optional fields are omitted. A field
// added here must be added to AppendJSON (encode.go) too: the tests compare
// the two encodings field by field.
type Record struct {
	Time      time.Time `json:"time"`
	SandboxID string    `json:"sandbox_id,omitempty"`
	Kind      Kind      `json:"kind"`
	// Target is the name or IP literal the client asked for, normalised.
	Target string `json:"target"`
	// Name is the name a connection to an address was decided on (tcp:
	// a name learned from an allowed DNS answer for the address); empty
	// when that is Target, or no name decided.
	Name string `json:"name,omitempty"`
	// Port is the destination port (53 for DNS).
	Port uint16 `json:"port"`
	// QType is the DNS query type (dns only).
	QType string `json:"qtype,omitempty"`
	// Addrs are the addresses answered (dns) or dialled (others).
	Addrs []string `json:"addrs,omitempty"`
	// Decision is the outcome (vocab.go); Reason why (one of Reasons).
	Decision Outcome `json:"decision"`
	Reason   Reason  `json:"reason"`
	Rule     string  `json:"rule,omitempty"`
	Source   string  `json:"rule_source,omitempty"`
	// Client is the sandbox-side address of the client.
	Client string `json:"client,omitempty"`
	// Method and Path are the request's (https, and http to an inspected
	// host): the path control-escaped and capped at 256 bytes, its query
	// string dropped unless the inspect entry sets log_query.
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	// Status is the HTTP status the client got (https).
	Status int `json:"status,omitempty"`
	// Inspected marks a connection whose TLS egressd terminated (connect,
	// tls): its requests have records of kind https.
	Inspected bool `json:"inspected,omitempty"`
	// Credential names the secret whose header egressd added (https); never
	// its value.
	Credential string `json:"credential,omitempty"`
	// Error says more about the outcome: what failed (an error outcome:
	// the resolver's or the destination's words), the address or rule
	// behind a denial, or why an allowed connection ended early (closed
	// on a policy reload, idle). Never shown to the sandbox.
	Error string `json:"error,omitempty"`
	// BytesUp/BytesDown/DurationMS are set on the record written when a
	// connection ends.
	BytesUp    int64   `json:"bytes_up,omitempty"`
	BytesDown  int64   `json:"bytes_down,omitempty"`
	DurationMS float64 `json:"duration_ms,omitempty"`

	// AddrValues are addresses the writer renders into Target, Addrs and
	// Client. A record read back from JSON has only the text fields.
	AddrValues AddrValues `json:"-"`
}

// AddrValues say what a Record's Target, Addrs and Client say, as values,
// for a caller that holds addresses (the proxy): the writer renders them,
// so logging a record costs the caller no text (bench/README.md, Issue
// 13, third pass).
type AddrValues struct {
	// Target is written as "target" when Record.Target is empty.
	Target netip.Addr
	// Dialed are written in "addrs", as ip:port, after Record.Addrs.
	Dialed []netip.AddrPort
	// Client is written as "client" when Record.Client is empty.
	Client netip.AddrPort
}

// Equal reports whether v and o hold the same addresses. (go-cmp compares
// AddrValues with it, so a cmp.Diff of Records needs no option for
// netip's unexported fields.)
func (v AddrValues) Equal(o AddrValues) bool {
	return v.Target == o.Target && v.Client == o.Client && slices.Equal(v.Dialed, o.Dialed)
}

// BufferOptions configure a buffered Logger. Zero fields take the defaults.
type BufferOptions struct {
	// FlushBytes: a batch this large is written at once. Zero means 64 KiB.
	FlushBytes int
	// FlushInterval is the longest a record waits in the batch for more to
	// join it (when the sink keeps up): the most a SIGKILL can lose. Zero
	// means 100ms.
	FlushInterval time.Duration
	// MaxPending bounds the bytes waiting while the sink is slow; past it
	// new records are dropped and counted (Dropped), never waited for.
	// Zero means 4 MiB.
	MaxPending int
	// OnDrop, if set, is called by the flusher (never on the logging path)
	// with how many records were dropped since its last call, after a
	// batch that followed drops was written.
	OnDrop func(n uint64)
}

const (
	defaultFlushBytes    = 64 << 10
	defaultFlushInterval = 100 * time.Millisecond
	defaultMaxPending    = 4 << 20
)

// Logger writes records as JSON lines. A nil *Logger discards everything, so
// callers need no nil checks. Safe for concurrent use.
type Logger struct {
	w         io.Writer
	sandboxID string
	now       func() time.Time
	opts      BufferOptions
	buffered  bool

	// writeMu serialises writes to w (unbuffered Log, the flusher, Flush).
	writeMu sync.Mutex

	mu      sync.Mutex // guards the fields below
	pending []byte     // encoded records not yet handed to w
	spare   []byte     // the last batch's buffer, reused for the next
	closed  bool

	wake, full chan struct{} // cap 1: the batch got its first record / filled
	quit, done chan struct{}
	closeOnce  sync.Once

	dropped     atomic.Uint64
	dropsToldAt uint64 // flusher only
	failed      atomic.Uint64
}

// New returns a Logger that writes each record to w as it is logged (one
// Write per record, the caller waiting for it), stamping every record with
// sandboxID. For tools and tests; egressd serve uses NewBuffered.
func New(w io.Writer, sandboxID string) *Logger {
	return &Logger{w: w, sandboxID: sandboxID, now: time.Now}
}

// NewBuffered returns a Logger that batches records and writes them from its
// own goroutine, so that logging never waits for w: a batch is written when
// it reaches FlushBytes, FlushInterval after its first record, and on Flush
// and Close. When w is slower than the records come, up to MaxPending bytes
// wait; beyond that records are dropped and counted. Close writes what is
// pending and ends the goroutine; records logged after Close are written
// synchronously.
func NewBuffered(w io.Writer, sandboxID string, o BufferOptions) *Logger {
	if o.FlushBytes <= 0 {
		o.FlushBytes = defaultFlushBytes
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = defaultFlushInterval
	}
	if o.MaxPending <= 0 {
		o.MaxPending = defaultMaxPending
	}
	o.MaxPending = max(o.MaxPending, o.FlushBytes)
	l := &Logger{
		w: w, sandboxID: sandboxID, now: time.Now, opts: o, buffered: true,
		wake: make(chan struct{}, 1), full: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{}),
	}
	go l.flushLoop()
	return l
}

// recordScratch is the size of the pooled buffers records are encoded
// into.
const recordScratch = 1024

// Log writes r as one line. Time and SandboxID are filled when empty. A
// record that encoding/json could not encode (a time outside RFC 3339, a NaN
// duration) is written with those fields made representable rather than
// lost. Write errors are counted (Failed), not returned: an audit sink that
// fails must not stop enforcement.
func (l *Logger) Log(r Record) {
	if l == nil || l.w == nil {
		return
	}
	if r.Time.IsZero() {
		r.Time = l.now()
	}
	if r.SandboxID == "" {
		r.SandboxID = l.sandboxID
	}
	if !l.buffered {
		l.writeRecord(&r)
		return
	}
	// Encoded outside the lock into a pooled buffer (not one on the stack:
	// that would make the resolver's short-lived query goroutines grow
	// their stacks), then copied into the batch under it. Encoding under
	// the lock (about half a microsecond) made it the resolver's most
	// contended lock under load (bench/README.md, Issue 13).
	bp := recordBufs.Get().(*[]byte)
	b := l.encode((*bp)[:0], &r)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.writeNow(b)
		putRecordBuf(bp, b)
		return
	}
	n0 := len(l.pending)
	if n0+len(b) > l.opts.MaxPending {
		l.mu.Unlock()
		putRecordBuf(bp, b)
		l.dropped.Add(1)
		return
	}
	l.pending = append(l.pending, b...)
	full := len(l.pending) >= l.opts.FlushBytes
	l.mu.Unlock()
	putRecordBuf(bp, b)
	if n0 == 0 {
		signal(l.wake)
	}
	if full {
		signal(l.full)
	}
}

// encode appends r and a newline to b. A record encoding/json could not
// encode is encoded with those values replaced: the time by the logger's
// clock in UTC, a NaN or infinite duration by 0.
func (l *Logger) encode(b []byte, r *Record) []byte {
	out, err := r.AppendJSON(b)
	if err != nil {
		fixed := *r
		if _, err := fixed.Time.UTC().AppendText(nil); err != nil {
			fixed.Time = l.now()
		}
		fixed.Time = fixed.Time.UTC()
		if math.IsNaN(fixed.DurationMS) || math.IsInf(fixed.DurationMS, 0) {
			fixed.DurationMS = 0
		}
		out, _ = fixed.AppendJSON(b) // cannot fail: both causes are gone
	}
	return append(out, '\n')
}

// recordBufs are the buffers records are encoded into on the way to a
// write or to the batch.
var recordBufs = sync.Pool{New: func() any { b := make([]byte, 0, recordScratch); return &b }}

// writeRecord encodes r and writes it at once.
func (l *Logger) writeRecord(r *Record) {
	bp := recordBufs.Get().(*[]byte)
	b := l.encode((*bp)[:0], r)
	l.writeNow(b)
	putRecordBuf(bp, b)
}

// putRecordBuf gives bp back to recordBufs with b, what was encoded into
// it, as its storage, unless b grew too large to keep.
func putRecordBuf(bp *[]byte, b []byte) {
	if cap(b) <= 16*recordScratch {
		*bp = b[:0]
		recordBufs.Put(bp)
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (l *Logger) writeNow(b []byte) {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	if _, err := l.w.Write(b); err != nil {
		l.failed.Add(1)
	}
}

// flushLoop writes batches until Close: a batch waits up to FlushInterval
// after its first record, unless it fills first.
func (l *Logger) flushLoop() {
	defer close(l.done)
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-l.wake:
		case <-l.full:
		case <-l.quit:
			l.Flush()
			return
		}
		// The batch has its first record: give it one interval to fill,
		// unless it is full already (its signal may have been the one
		// taken above, or be pending).
		if !l.pendingFull() {
			t.Reset(l.opts.FlushInterval)
			select {
			case <-t.C:
			case <-l.full:
			case <-l.quit:
				t.Stop()
				l.Flush()
				return
			}
			t.Stop()
		}
		l.Flush()
	}
}

func (l *Logger) pendingFull() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.pending) >= l.opts.FlushBytes
}

// Flush writes every record logged before it was called. It waits for the
// sink. A nil or unbuffered Logger has nothing to flush.
func (l *Logger) Flush() {
	if l == nil || !l.buffered {
		return
	}
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	l.mu.Lock()
	batch := l.pending
	l.pending, l.spare = l.spare[:0], nil
	if l.pending == nil && len(batch) > 0 {
		l.pending = make([]byte, 0, 2*l.opts.FlushBytes)
	}
	l.mu.Unlock()
	if len(batch) == 0 {
		l.mu.Lock()
		l.spare = batch
		l.mu.Unlock()
		return
	}
	if _, err := l.w.Write(batch); err != nil {
		l.failed.Add(uint64(bytes.Count(batch, []byte{'\n'}))) // one line per record
	}
	if cap(batch) > 8*l.opts.FlushBytes {
		batch = nil // a burst's buffer is not kept for the quiet that follows
	}
	l.mu.Lock()
	l.spare = batch[:0]
	l.mu.Unlock()
	if d := l.dropped.Load(); d != l.dropsToldAt && l.opts.OnDrop != nil {
		l.opts.OnDrop(d - l.dropsToldAt)
		l.dropsToldAt = d
	}
}

// Close writes what is pending and stops the flusher; later records are
// written synchronously. Safe to call more than once, and on any Logger.
func (l *Logger) Close() {
	if l == nil || !l.buffered {
		return
	}
	l.closeOnce.Do(func() {
		close(l.quit)
		<-l.done
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		l.Flush() // anything logged between the last batch and closed
	})
}

// Dropped is how many records were not written because the sink was too
// slow (MaxPending was reached).
func (l *Logger) Dropped() uint64 {
	if l == nil {
		return 0
	}
	return l.dropped.Load()
}

// WriteErrors is the number of records whose write failed
// (egressd_audit_write_errors_total): every record of a batch whose write
// returned an error.
func (l *Logger) WriteErrors() uint64 {
	if l == nil {
		return 0
	}
	return l.failed.Load()
}
