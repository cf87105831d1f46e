package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The relay's copy: splice(2) through a pipe, as io.Copy between two
// *net.TCPConn does, but with the pipe borrowed only while bytes are in
// flight. io.Copy's splice keeps a pipe (two file descriptors) for each
// direction for as long as the copy runs, so an idle tunnel held six
// descriptors and a proxy under a 20 000-descriptor limit ran out of them
// at 3 332 tunnels (docs/design.md, "Fixed limits"). Here a direction
// waits for its socket to be readable holding nothing, takes a pipe from a
// bounded pool, moves what is there (socket → pipe → socket, the bytes
// never copied through user space), and gives the pipe back as soon as the
// socket has nothing more: an idle tunnel holds its two sockets only, and
// the pipes in use never exceed the pool's bound. When every pipe is out,
// a direction moves its next chunk through a pooled user-space buffer
// instead (counted: egressd_proxy_relay_copied_chunks_total) and tries for
// a pipe again on the next one.

const (
	// maxSpliceChunk is the most one splice(2) moves, and the pipe size
	// asked for (as io.Copy's splice does).
	maxSpliceChunk = 1 << 20
	// copyChunk is the user-space buffer of a direction that found no pipe.
	copyChunk = 32 << 10
	// maxIdlePipes bounds the pipes kept open while unused.
	maxIdlePipes = 64
)

// pipe is a kernel pipe used to splice between two sockets.
type pipe struct{ r, w int }

func newPipe() (*pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	// A larger pipe moves more per call; a smaller one still works.
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, maxSpliceChunk)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

func (p *pipe) close() {
	_ = unix.Close(p.r)
	_ = unix.Close(p.w)
}

// pipePool hands out at most max pipes at a time and keeps a few idle ones.
type pipePool struct {
	max int

	mu    sync.Mutex
	idle  []*pipe
	inUse int
	// open is every pipe the pool has open, in use or idle (2 fds each).
	open int

	// spliced and copied count bytes moved by splice and through a buffer;
	// copiedChunks counts the chunks that found no free pipe.
	spliced, copied, copiedChunks atomic.Int64
}

func newPipePool(max int) *pipePool { return &pipePool{max: max} }

// get returns an empty pipe, or nil when max are in use (or the kernel
// would not make one).
func (pp *pipePool) get() *pipe {
	pp.mu.Lock()
	if n := len(pp.idle); n > 0 {
		p := pp.idle[n-1]
		pp.idle = pp.idle[:n-1]
		pp.inUse++
		pp.mu.Unlock()
		return p
	}
	if pp.open >= pp.max {
		pp.mu.Unlock()
		return nil
	}
	pp.open++
	pp.inUse++
	pp.mu.Unlock()
	p, err := newPipe()
	if err != nil {
		pp.mu.Lock()
		pp.open--
		pp.inUse--
		pp.mu.Unlock()
		return nil
	}
	return p
}

// put takes back an empty pipe; one that may hold bytes is closed.
func (pp *pipePool) put(p *pipe, empty bool) {
	pp.mu.Lock()
	pp.inUse--
	if empty && len(pp.idle) < maxIdlePipes {
		pp.idle = append(pp.idle, p)
		pp.mu.Unlock()
		return
	}
	pp.open--
	pp.mu.Unlock()
	p.close()
}

// stats returns the pipes in use and open now.
func (pp *pipePool) stats() (inUse, open int) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.inUse, pp.open
}

// closeIdle closes every idle pipe.
func (pp *pipePool) closeIdle() {
	pp.mu.Lock()
	idle := pp.idle
	pp.idle = nil
	pp.open -= len(idle)
	pp.mu.Unlock()
	for _, p := range idle {
		p.close()
	}
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyChunk); return &b }}

// copy moves src to dst until src's end of stream or an error, and returns
// the bytes moved: by splice between two TCP sockets, else by io.Copy.
func (pp *pipePool) copy(dst, src net.Conn) (int64, error) {
	d, ok1 := dst.(*net.TCPConn)
	s, ok2 := src.(*net.TCPConn)
	if !ok1 || !ok2 {
		n, err := io.Copy(dst, src)
		pp.copied.Add(n)
		return n, err
	}
	return pp.splice(d, s)
}

func (pp *pipePool) splice(dst, src *net.TCPConn) (written int64, err error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	// One state and two callbacks per copy, not per chunk.
	var (
		p      *pipe // held only while the socket has bytes to move
		n      int   // bytes in p
		serr   error
		noPipe bool
		out    int // bytes of n written to dst
	)
	defer func() {
		if p != nil {
			pp.put(p, true)
		}
	}()
	// fill waits for src to be readable holding no pipe: on EAGAIN the pipe
	// goes back before the wait, and a new one is taken after it.
	fill := func(fd uintptr) bool {
		if p == nil {
			if p = pp.get(); p == nil {
				noPipe = true
				return true
			}
		}
		for {
			var n64 int64
			n64, serr = unix.Splice(int(fd), nil, p.w, nil, maxSpliceChunk, unix.SPLICE_F_NONBLOCK)
			n = int(n64)
			if serr != unix.EINTR {
				break
			}
		}
		if serr == unix.EAGAIN {
			pp.put(p, true)
			p = nil
			return false
		}
		return true
	}
	// drain moves the n bytes in p to dst, waiting for it to take them.
	drain := func(fd uintptr) bool {
		for out < n {
			m, e := unix.Splice(p.r, nil, int(fd), nil, n-out, unix.SPLICE_F_NONBLOCK)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false
			case e != nil:
				serr = e
				return true
			}
			out += int(m)
		}
		return true
	}
	for {
		n, serr, noPipe = 0, nil, false
		rerr := srcRC.Read(fill)
		switch {
		case rerr != nil:
			return written, rerr
		case noPipe:
			m, cerr := copyOneChunk(dst, src)
			written += m
			pp.copied.Add(m)
			pp.copiedChunks.Add(1)
			if cerr != nil {
				if errors.Is(cerr, io.EOF) {
					return written, nil
				}
				return written, cerr
			}
			continue
		case errors.Is(serr, unix.EINVAL) && written == 0:
			// The kernel cannot splice these sockets: nothing was moved.
			pp.put(p, true)
			p = nil
			n, err := io.Copy(writerOnly{dst}, readerOnly{src})
			pp.copied.Add(n)
			return n, err
		case serr != nil:
			return written, os.NewSyscallError("splice", serr)
		case n == 0:
			return written, nil // src's end of stream
		}
		out = 0
		werr := dstRC.Write(drain)
		if werr == nil && serr != nil {
			werr = os.NewSyscallError("splice", serr)
		}
		written += int64(out)
		pp.spliced.Add(int64(out))
		if werr != nil {
			pp.put(p, false) // it may still hold bytes
			p = nil
			return written, werr
		}
	}
}

// copyOneChunk moves what src has now (up to copyChunk bytes, waiting for
// it) to dst through a pooled buffer. At src's end of stream it returns
// io.EOF.
func copyOneChunk(dst, src *net.TCPConn) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	n, err := src.Read(*bp)
	if n > 0 {
		if _, werr := dst.Write((*bp)[:n]); werr != nil {
			return 0, werr
		}
	}
	return int64(n), err
}

// readerOnly and writerOnly hide ReadFrom/WriteTo, so io.Copy uses a
// buffer (the kernel refused to splice).
type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }
