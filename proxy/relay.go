package proxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The relay. Bytes move between the two *net.TCPConn by splice(2) through
// a pipe borrowed only while they are in flight (splice.go), never copied
// through user space. Wrapping either side (to count bytes, say) would
// lose that and double the CPU per byte (docs/design.md, "Performance
// notes"). So the relay hands the bare connections to the pipe pool's copy,
// counts from its return values, and watches idleness through TCP_INFO
// instead of per-read deadlines.

// relay is one bidirectional tunnel between client and upstream.
type relay struct {
	pipes            *pipePool
	client, upstream net.Conn
	down             int64
	downErr          error
	downDone         sync.WaitGroup
	// detached is set by detach before it closes upstream, so copyDown
	// leaves the client connection alone.
	detached atomic.Bool
}

// start starts the upstream→client direction at once (server-first
// protocols: SMTP banners, MySQL greetings); the caller finishes with run
// once the client side may flow. A relay is used once.
func (r *relay) start(pipes *pipePool, client, upstream net.Conn) *relay {
	r.pipes, r.client, r.upstream = pipes, client, upstream
	r.downDone.Add(1)
	go r.copyDown()
	return r
}

// copyDown copies upstream→client until upstream's end of stream, then
// half-closes the client.
func (r *relay) copyDown() {
	defer r.downDone.Done()
	r.down, r.downErr = r.pipes.copy(r.client, r.upstream)
	if r.detached.Load() {
		return
	}
	if r.downErr != nil {
		// Reset or closed: stop the other direction too.
		_ = r.client.Close()
		_ = r.upstream.Close()
		return
	}
	closeWrite(r.client)
}

// run writes prefix (the bytes peeked from the client) upstream and calls
// sent (prefix's buffer may be reused from then on), then copies
// client→upstream until the client's end of stream, waits for the other
// direction and closes the upstream. It returns the bytes each way. The
// client connection, half-closed both ways by then, is closed by its
// handler on return (runHandler): closing it here too made that second
// Close fail, and allocate its error, on every tunnel.
func (r *relay) run(prefix []byte, sent func()) (up, down int64, err error) {
	if len(prefix) > 0 {
		n, werr := r.upstream.Write(prefix)
		up += int64(n)
		if werr != nil {
			err = werr
		}
	}
	sent()
	if err == nil {
		var n int64
		n, err = r.pipes.copy(r.upstream, r.client)
		up += n
	}
	if err != nil {
		_ = r.client.Close()
		_ = r.upstream.Close()
	} else {
		closeWrite(r.upstream)
	}
	r.downDone.Wait()
	_ = r.upstream.Close()
	if err == nil {
		err = r.downErr
	}
	return up, r.down, err
}

// abort closes both sides and waits for the upstream→client copy. A nil
// relay (an inspected CONNECT has no tunnel) has nothing to close.
func (r *relay) abort() int64 {
	if r == nil {
		return 0
	}
	resetConn(r.client)
	_ = r.upstream.Close()
	r.downDone.Wait()
	return r.down
}

// detach ends the relay before any client byte went upstream, leaving the
// client connection open for another path, and reports whether nothing came
// down to the client either (only then may the connection be served anew).
func (r *relay) detach() (clean bool) {
	r.detached.Store(true)
	_ = r.upstream.Close()
	r.downDone.Wait()
	return r.down == 0
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// socketIdle returns how long c has neither received nor sent payload,
// from the kernel's TCP_INFO; ok is false when c is not a TCP socket.
func socketIdle(c net.Conn) (time.Duration, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || ierr != nil {
		return 0, false
	}
	ms := min(info.Last_data_recv, info.Last_data_sent)
	return time.Duration(ms) * time.Millisecond, true
}

// isTemporaryAcceptError reports accept errors that pass: out of file
// descriptors or buffers, a connection aborted before it was accepted.
func isTemporaryAcceptError(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED)
}
