package proxy

import (
	"bufio"
	"io"
	"sync"
)

// A connection's buffers — the 16 KiB reader its request heads are read
// through, the 4 KiB buffer its first bytes are peeked into — come from
// pools and go back as soon as the connection no longer reads through them:
// a tunnel that relays holds neither (BenchmarkConnectTunnel). They are
// the handler goroutine's own (no lock).
//
// A buffer that something other than the handler may still read after the
// handler is done is never pooled again: a plain-HTTP request body is read
// through the head reader by the transport's goroutines, and an inspected
// session reads the peeked bytes through net/http's; pooling those could
// hand one connection's bytes to another. cc.shareBuffers marks that case.

// peekBufSize is the capacity of a connection's first-bytes buffer; a
// ClientHello that does not fit grows onto the heap (readHello).
const peekBufSize = 4096

var (
	headReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, headReadBuffer) }}
	peekBufs    = sync.Pool{New: func() any { b := make([]byte, peekBufSize); return &b }}
)

// headReader returns a pooled reader of r for cc's request heads, giving
// back the one cc held before.
func (cc *clientConn) headReader(r io.Reader) *bufio.Reader {
	cc.releaseHeadReader()
	br := headReaders.Get().(*bufio.Reader)
	br.Reset(r)
	cc.br = br
	return br
}

// releaseHeadReader gives cc's head reader back to the pool (unless it may
// still be read by another goroutine).
func (cc *clientConn) releaseHeadReader() {
	if cc.br == nil {
		return
	}
	if !cc.shared {
		cc.br.Reset(nil)
		headReaders.Put(cc.br)
	}
	cc.br = nil
}

// peekBuf returns cc's empty first-bytes buffer (capacity peekBufSize).
func (cc *clientConn) peekBuf() []byte {
	if cc.peek == nil {
		cc.peek = peekBufs.Get().(*[]byte)
	}
	return (*cc.peek)[:0]
}

// releasePeekBuf gives cc's first-bytes buffer back to the pool: its bytes
// were sent upstream (or judged and refused). Slices of it must not be used
// afterwards.
func (cc *clientConn) releasePeekBuf() {
	if cc.peek == nil {
		return
	}
	if !cc.shared {
		peekBufs.Put(cc.peek)
	}
	cc.peek = nil
}

// shareBuffers marks cc's buffers as read by other goroutines too: they
// are left to the collector instead of going back to the pools.
func (cc *clientConn) shareBuffers() { cc.shared = true }

// releaseBuffers gives back every buffer cc still holds; the handler calls
// it when the connection ends.
func (cc *clientConn) releaseBuffers() {
	cc.releaseHeadReader()
	cc.releasePeekBuf()
}
