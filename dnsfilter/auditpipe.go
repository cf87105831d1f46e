package dnsfilter

import (
	"sync"

	"github.com/egressd/egressd/audit"
)

// auditQueueLen bounds the records waiting for the audit writer; when it is
// full, queries wait (back-pressure: no record is ever dropped).
const auditQueueLen = 4096

// auditPipe hands audit records to one long-lived goroutine that encodes and
// writes them. The UDP server runs every query on a fresh goroutine, whose
// small stack grows (and is copied) on the deep JSON encoding path: moving
// the encoding off the query path measured ~10 points of bare-server
// throughput (bench/dns). Before start and after stop, records are written
// synchronously, so nothing is lost whatever the order of calls.
type auditPipe struct {
	log *audit.Logger

	mu   sync.RWMutex // held for reading by senders, for writing by start/stop
	ch   chan auditItem
	done chan struct{}
}

// auditItem is a record to write, or (flushed set) a marker the writer
// closes when it reaches it.
type auditItem struct {
	rec     audit.Record
	flushed chan struct{}
}

// send logs r, through the writer goroutine when it runs.
func (p *auditPipe) send(r audit.Record) {
	p.mu.RLock()
	if p.ch != nil {
		p.ch <- auditItem{rec: r}
		p.mu.RUnlock()
		return
	}
	p.mu.RUnlock()
	p.log.Log(r)
}

// flush waits until every record sent before it is written.
func (p *auditPipe) flush() {
	p.mu.RLock()
	if p.ch == nil {
		p.mu.RUnlock()
		return
	}
	f := make(chan struct{})
	p.ch <- auditItem{flushed: f}
	p.mu.RUnlock()
	<-f
}

// start runs the writer goroutine until stop.
func (p *auditPipe) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ch != nil || p.log == nil {
		return
	}
	p.ch = make(chan auditItem, auditQueueLen)
	p.done = make(chan struct{})
	go p.writeAudit(p.ch, p.done)
}

// stop makes later sends synchronous and waits until every queued record is
// written.
func (p *auditPipe) stop() {
	p.mu.Lock()
	ch, done := p.ch, p.done
	p.ch = nil
	p.mu.Unlock()
	if ch == nil {
		return
	}
	close(ch)
	<-done
}

func (p *auditPipe) writeAudit(ch <-chan auditItem, done chan<- struct{}) {
	defer close(done)
	for it := range ch {
		if it.flushed != nil {
			close(it.flushed)
			continue
		}
		p.log.Log(it.rec)
	}
}
