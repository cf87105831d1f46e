package execapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/egressd/egressd/sandbox"
)

// The stream (POST /v1/execute/stream) is NDJSON: one JSON object a line,
// each with its "type":
//
//	{"type":"stdout","data":"..."}      output as it comes, secrets masked
//	{"type":"stderr","data":"..."}
//	{"type":"denial","denial":{...}}    a destination denied, once each
//	{"type":"exit", ...Summary}         the last line of a run that ended
//	{"type":"error","error":"..."}      the last line of one that failed
const ndjson = "application/x-ndjson"

// Event types of the stream.
const (
	EventStdout = "stdout"
	EventStderr = "stderr"
	EventDenial = "denial"
	EventExit   = "exit"
	EventError  = "error"
)

// Event is one line of the stream. Exactly the fields of its Type are set.
type Event struct {
	Type   string  `json:"type"`
	Data   string  `json:"data,omitempty"`
	Denial *Denied `json:"denial,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// exitEvent is the exit line: the type and the Summary's fields.
type exitEvent struct {
	Type string `json:"type"`
	Summary
}

// streamer writes the stream's lines, each whole and flushed at once.
type streamer struct {
	mu  sync.Mutex
	w   http.ResponseWriter
	rc  *http.ResponseController
	enc *json.Encoder
	err error // the first write error: the client went away
}

func newStreamer(w http.ResponseWriter) *streamer {
	w.Header().Set("Content-Type", ndjson)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	st := &streamer{w: w, rc: http.NewResponseController(w), enc: json.NewEncoder(w)}
	st.enc.SetEscapeHTML(false)
	_ = st.rc.Flush()
	return st
}

func (st *streamer) send(v any) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.err != nil {
		return
	}
	if st.err = st.enc.Encode(v); st.err == nil {
		st.err = st.rc.Flush()
	}
}

// streamOut is one output stream of the command: capped at max bytes,
// each chunk sent as an event, a UTF-8 character split across chunks
// held back until it is whole.
type streamOut struct {
	st        *streamer
	typ       string
	mu        sync.Mutex
	max, n    int64
	truncated bool
	tail      []byte
}

// Write never fails: a client that went away ends the execution through
// its context, not by breaking the command's pipe.
func (o *streamOut) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	keep := p
	if room := o.max - o.n; int64(len(keep)) > room {
		o.truncated = true
		keep = keep[:max(room, 0)]
	}
	o.n += int64(len(keep))
	if len(keep) == 0 {
		return len(p), nil
	}
	data := append(o.tail, keep...)
	k := utf8Tail(data)
	o.tail = append([]byte(nil), data[len(data)-k:]...)
	if len(data) > k {
		o.st.send(Event{Type: o.typ, Data: string(data[:len(data)-k])})
	}
	return len(p), nil
}

// close sends what was held back.
func (o *streamOut) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.tail) > 0 {
		o.st.send(Event{Type: o.typ, Data: string(o.tail)})
		o.tail = nil
	}
}

func (s *Server) runStream(ctx context.Context, w http.ResponseWriter, pr *prepared, wait time.Duration) {
	st := newStreamer(w)
	stdout := &streamOut{st: st, typ: EventStdout, max: s.opts.MaxOutputBytes}
	stderr := &streamOut{st: st, typ: EventStderr, max: s.opts.MaxOutputBytes}
	job, closeStreams := pr.job(stdout, stderr)
	live := newLiveDenials(st, pr)
	job.OnDenial = live.add
	start := time.Now()
	out, err := s.opts.Executor.Execute(ctx, job)
	took := time.Since(start)
	live.close()
	closeStreams()
	stdout.close()
	stderr.close()
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, ErrShuttingDown) {
			s.metrics.result(resultCanceled)
			st.send(Event{Type: EventError, Error: pr.mask(oneLine(err.Error()))})
			return
		}
		s.metrics.result(resultError)
		msg := pr.mask(oneLine(err.Error()))
		s.opts.Logger.Warn("execution failed", "sandbox", out.SandboxID, "error", msg, "duration_ms", took.Milliseconds())
		st.send(Event{Type: EventError, Error: msg})
		return
	}
	sum := pr.summary(out, took)
	sum.Truncated = stdout.truncated || stderr.truncated
	s.finished(sum, took, wait)
	st.send(exitEvent{Type: EventExit, Summary: sum})
}

// maxLiveDenials is how many denial events may wait for a slow client;
// past it they are dropped from the stream (the exit event lists them
// all).
const maxLiveDenials = 256

// liveDenials passes denials to the stream from the goroutine that reads
// egressd's audit records, which must never wait for the client: the
// events queue here and a goroutine of their own sends them.
type liveDenials struct {
	pr   *prepared
	mu   sync.Mutex
	ch   chan Denied
	done chan struct{}
}

func newLiveDenials(st *streamer, pr *prepared) *liveDenials {
	l := &liveDenials{pr: pr, ch: make(chan Denied, maxLiveDenials), done: make(chan struct{})}
	go l.sendDenials(st, l.ch)
	return l
}

func (l *liveDenials) sendDenials(st *streamer, ch <-chan Denied) {
	defer close(l.done)
	for d := range ch {
		st.send(Event{Type: EventDenial, Denial: &d})
	}
}

// add queues d, or drops it when the client is that far behind; after
// close it does nothing.
func (l *liveDenials) add(d sandbox.Denial) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ch == nil {
		return
	}
	select {
	case l.ch <- l.pr.denied(d):
	default:
	}
}

// close ends the queue once every queued event was sent.
func (l *liveDenials) close() {
	l.mu.Lock()
	ch := l.ch
	l.ch = nil
	l.mu.Unlock()
	if ch != nil {
		close(ch)
	}
	<-l.done
}
