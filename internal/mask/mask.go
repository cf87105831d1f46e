// Package mask replaces secret values with "***" in a stream: the
// launcher's copy of a sandbox's output, and egressd's copy of a response
// from a host it gave a credential to (docs/inspection.md). A secret split
// across writes is still found. The masker finds the strings it is given;
// Forms lists the escaped and encoded spellings of a secret a server
// commonly reflects it in (JSON, URL, HTML, base64), for callers that must
// mask those too, and Weakness says when a value's shape makes that
// unreliable.
package mask

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"sync"
)

// Mask is what a secret value becomes.
const Mask = "***"

// errMaskerClosed is returned by Write after Close.
var errMaskerClosed = errors.New("secret masker: write after close")

// NewWriter returns a writer that copies to w with every occurrence of any
// of secrets replaced by Mask, including one split across writes: the
// masker holds back a tail of at most (longest secret - 1) bytes that could
// still turn out to be the start of a secret, and writes it at the next
// Write that settles it, or at Close. Where secrets overlap, the leftmost
// occurrence wins, and of those starting at the same byte the longest.
// Empty secrets are ignored.
//
// Close flushes the tail; it does not close w. Write and Close may be
// called from several goroutines. Streams are masked separately: a secret
// whose first half goes to stdout and second half to stderr is not seen.
// Only the given strings are masked: pass Forms of a secret to mask its
// common encodings too (one character per line is never seen).
func NewWriter(w io.Writer, secrets []string) io.WriteCloser {
	m := &masker{w: w}
	for _, s := range secrets {
		if s != "" {
			m.secrets = append(m.secrets, []byte(s))
		}
	}
	// Longest first: the first match found at a position is the longest.
	slices.SortStableFunc(m.secrets, func(a, b []byte) int { return len(b) - len(a) })
	m.secrets = slices.CompactFunc(m.secrets, bytes.Equal)
	if len(m.secrets) > 0 {
		m.maxLen = len(m.secrets[0])
	}
	m.next = make([]int, len(m.secrets))
	return m
}

type masker struct {
	mu      sync.Mutex
	w       io.Writer
	secrets [][]byte // distinct, non-empty, longest first
	maxLen  int
	buf     []byte // held back: could be the start of a secret
	out     []byte // scratch for the masked output
	next    []int  // per secret: next occurrence in buf at or after the scan position, -1 none, -2 unknown
	err     error
	closed  bool
	// sameLength replaces a secret by as many '*' as it has bytes.
	sameLength bool
}

func (m *masker) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, errMaskerClosed
	}
	if m.err != nil {
		return 0, m.err
	}
	if len(m.secrets) == 0 {
		n, err := m.w.Write(p)
		m.err = err
		return n, err
	}
	m.buf = append(m.buf, p...)
	if err := m.flush(false); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close writes what is held back and stops the masker.
func (m *masker) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return m.err
	}
	m.closed = true
	if m.err != nil {
		return m.err
	}
	return m.flush(true)
}

// flush masks buf into out and writes it; unless final, a tail that may
// start a secret stays in buf.
func (m *masker) flush(final bool) error {
	m.out = maskInto(m.out[:0], &m.buf, m.secrets, m.maxLen, m.next, final, m.sameLength)
	if len(m.out) == 0 {
		return nil
	}
	if _, err := m.w.Write(m.out); err != nil {
		m.err = err
		return err
	}
	return nil
}

// maskInto appends the masked form of *buf to out. Unless final, the
// shortest suffix of *buf that could still begin a secret (so that a match
// starting there, or a longer match, depends on bytes not seen yet) is left
// in *buf; everything before it is settled.
func maskInto(out []byte, buf *[]byte, secrets [][]byte, maxLen int, next []int, final, sameLength bool) []byte {
	b := *buf
	for j := range next {
		next[j] = -2
	}
	i := 0
	for {
		// Leftmost complete match at or after i, longest at that position.
		mpos, mlen := -1, 0
		for j, s := range secrets {
			if next[j] == -2 || next[j] >= 0 && next[j] < i {
				if k := bytes.Index(b[i:], s); k >= 0 {
					next[j] = i + k
				} else {
					next[j] = -1
				}
			}
			if next[j] >= 0 && (mpos < 0 || next[j] < mpos) {
				mpos, mlen = next[j], len(s)
			}
		}
		// Leftmost position whose suffix is a proper prefix of a secret.
		ppos := -1
		if start := max(i, len(b)-(maxLen-1)); !final && (mpos < 0 || mpos >= start) {
		scan:
			for k := start; k < len(b); k++ {
				tail := b[k:]
				for _, s := range secrets {
					if len(tail) < len(s) && bytes.HasPrefix(s, tail) {
						ppos = k
						break scan
					}
				}
			}
		}
		if ppos >= 0 && (mpos < 0 || ppos <= mpos) {
			out = append(out, b[i:ppos]...)
			n := copy(b, b[ppos:])
			*buf = b[:n]
			return out
		}
		if mpos < 0 {
			out = append(out, b[i:]...)
			*buf = b[:0]
			return out
		}
		out = append(out, b[i:mpos]...)
		if sameLength {
			for range mlen {
				out = append(out, '*')
			}
		} else {
			out = append(out, Mask...)
		}
		i = mpos + mlen
	}
}

// String returns s with every secret replaced by Mask, with the
// masker's rules (for error messages and logs that might quote one).
func String(s string, secrets []string) string {
	var b bytes.Buffer
	m := NewWriter(&b, secrets)
	_, _ = m.Write([]byte(s))
	_ = m.Close()
	return b.String()
}

// NewReader returns a reader of src with every occurrence of any of
// secrets replaced by Mask, by NewWriter's rules. It returns what is
// settled as soon as src delivers it (a stream of events stays live); only
// a tail that could still begin a secret waits for the next read of src.
// src's error (io.EOF included) is returned once everything before it was.
func NewReader(src io.Reader, secrets []string) io.Reader {
	r := &reader{src: src, tmp: make([]byte, 32<<10)}
	r.w = NewWriter(&r.buf, secrets)
	return r
}

// NewSameLengthReader is NewReader, but each secret becomes as many '*' as
// it has bytes, so the stream keeps its length: a Content-Length, a
// WebSocket frame's length field stay true.
func NewSameLengthReader(src io.Reader, secrets []string) io.Reader {
	r := &reader{src: src, tmp: make([]byte, 32<<10)}
	w := NewWriter(&r.buf, secrets)
	w.(*masker).sameLength = true
	r.w = w
	return r
}

type reader struct {
	src io.Reader
	buf bytes.Buffer
	w   io.WriteCloser // masks into buf
	tmp []byte
	err error
}

func (r *reader) Read(p []byte) (int, error) {
	for r.buf.Len() == 0 {
		if r.err != nil {
			return 0, r.err
		}
		n, err := r.src.Read(r.tmp)
		if n > 0 {
			_, _ = r.w.Write(r.tmp[:n]) // into a bytes.Buffer: cannot fail
		}
		if err != nil {
			_ = r.w.Close()
			r.err = err
		}
	}
	return r.buf.Read(p)
}
