// Package audit writes egressd's decision records: one JSON object per line,
// one line per DNS query, connection or HTTP request. Field names are part of
// the public interface (docs/audit.md) and must not change.
package audit

import (
	"encoding/json"
	"io"
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

// Record is one decision. Zero-valued optional fields are omitted.
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
}

// Logger writes records as JSON lines. A nil *Logger discards everything, so
// callers need no nil checks. Safe for concurrent use.
type Logger struct {
	mu        sync.Mutex
	w         io.Writer
	sandboxID string
	now       func() time.Time
	failed    atomic.Uint64
}

// New returns a Logger writing to w, stamping every record with sandboxID.
func New(w io.Writer, sandboxID string) *Logger {
	return &Logger{w: w, sandboxID: sandboxID, now: time.Now}
}

// Log writes r as one line. Time and SandboxID are filled when empty. A
// write that fails is counted (WriteErrors), not returned: an audit sink
// that fails must not stop enforcement (every decision is still enforced).
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
	b, err := json.Marshal(&r)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	_, err = l.w.Write(b)
	l.mu.Unlock()
	if err != nil {
		l.failed.Add(1)
	}
}

// WriteErrors is the number of records whose write failed
// (egressd_audit_write_errors_total).
func (l *Logger) WriteErrors() uint64 {
	if l == nil {
		return 0
	}
	return l.failed.Load()
}
