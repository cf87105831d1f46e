package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/http"
	"os"
	"time"
)

// Peeking at the first bytes a client sends. The bytes are read from the
// socket into a buffer (never through a wrapper left on the connection),
// judged, written upstream first, and the rest of the stream is spliced.

// streamKind is what the first bytes of a stream look like.
type streamKind int

const (
	streamUnknown streamKind = iota // not enough bytes to tell
	streamTLS                       // a TLS handshake record
	streamHTTP                      // an HTTP/1.x request line
	streamOther                     // anything else
)

// maxMethodLen bounds the method token looked for when classifying, and
// maxRequestLine the request line read to see its HTTP version.
const (
	maxMethodLen   = 16
	maxRequestLine = 8 << 10
)

// classify says what b, the first bytes of a stream, look like: TLS when
// it starts with a handshake record; HTTP when its first line is an
// upper-case method of 3-16 letters, a space, and ends in " HTTP/1.1" or
// " HTTP/1.0" (so "EHLO x" from an SMTP client is not HTTP); other
// otherwise. Unknown means more bytes are needed.
// maxLeadingEmptyLines bounds the CR/LF bytes classify looks past.
const maxLeadingEmptyLines = 16

func classify(b []byte) streamKind {
	if len(b) == 0 {
		return streamUnknown
	}
	if looksLikeTLS(b) {
		return streamTLS
	}
	// Servers skip empty lines before a request line (RFC 9112 §2.2), so
	// leading CR/LF must not hide a request from the HTTP path; past a
	// few, call it HTTP and let the strict head parser refuse it.
	if t := bytes.TrimLeft(b, "\r\n"); len(t) < len(b) {
		if len(b)-len(t) > maxLeadingEmptyLines {
			return streamHTTP
		}
		if len(t) == 0 {
			return streamUnknown
		}
		b = t
	}
	sp := -1
	for i := 0; i < len(b) && i <= maxMethodLen; i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			continue
		}
		if c == ' ' && i >= 3 {
			sp = i
			break
		}
		return streamOther
	}
	if sp < 0 {
		if len(b) > maxMethodLen {
			return streamOther
		}
		return streamUnknown
	}
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		if len(b) >= maxRequestLine {
			return streamOther
		}
		return streamUnknown
	}
	// A bare LF ends the line too: servers accept it (RFC 9112 §2.2).
	line := bytes.TrimSuffix(bytes.TrimSuffix(b[:nl+1], []byte("\n")), []byte("\r"))
	if bytes.HasSuffix(line, []byte(" HTTP/1.1")) || bytes.HasSuffix(line, []byte(" HTTP/1.0")) {
		return streamHTTP
	}
	return streamOther
}

// readFirst reads from c, appending to buf, until classify can tell, the
// deadline passes or c fails. It returns the bytes read and the error that
// stopped it (nil when classify could tell).
func readFirst(c net.Conn, buf []byte, deadline time.Time) ([]byte, error) {
	_ = c.SetReadDeadline(deadline)
	defer c.SetReadDeadline(time.Time{})
	for classify(buf) == streamUnknown {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, max(len(buf), 512))...)[:len(buf)]
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// readHello reads until buf holds a complete ClientHello (bounded by
// maxHelloBytes) or the deadline passes. It returns the bytes read and the
// parsed hello, or an error: errHelloECH, a *helloError, or the read error
// (a timeout means the hello was not complete in time).
func readHello(c net.Conn, buf []byte, deadline time.Time) ([]byte, clientHello, error) {
	_ = c.SetReadDeadline(deadline)
	defer c.SetReadDeadline(time.Time{})
	for {
		h, err := parseClientHello(buf)
		if !errors.Is(err, errHelloIncomplete) {
			return buf, h, err
		}
		if len(buf) >= maxHelloBytes {
			return buf, clientHello{}, badHello("no complete ClientHello in %d bytes", len(buf))
		}
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(max(2*cap(buf), 4096), maxHelloBytes))
			copy(nb, buf)
			buf = nb
		}
		n, rerr := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if rerr != nil {
			if _, err := parseClientHello(buf); !errors.Is(err, errHelloIncomplete) {
				continue // the last read completed (or broke) it
			}
			return buf, clientHello{}, rerr
		}
	}
}

// readHead reads until buf holds a complete request head (bounded by
// maxHeadBytes) or the deadline passes, and parses it.
func readHead(c net.Conn, buf []byte, deadline time.Time) ([]byte, *requestHead, error) {
	_ = c.SetReadDeadline(deadline)
	defer c.SetReadDeadline(time.Time{})
	for {
		if i := bytes.Index(buf, []byte("\r\n\r\n")); i >= 0 {
			br := bufio.NewReaderSize(bytes.NewReader(buf[:i+4]), headReadBuffer)
			raw, err := readRequestHead(br, maxHeadBytes)
			if err != nil {
				return buf, nil, err
			}
			h, err := parseRequestHead(raw)
			return buf, h, err
		}
		if len(buf) >= maxHeadBytes {
			return buf, nil, errHeadTooLarge
		}
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(max(2*cap(buf), 4096), maxHeadBytes))
			copy(nb, buf)
			buf = nb
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return buf, nil, err
		}
	}
}

// isTimeout reports a deadline error.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// helloDenial turns a ClientHello failure into a denial.
func helloDenial(err error) *denial {
	switch {
	case errors.Is(err, errHelloECH):
		return denyf(http.StatusForbidden, ReasonECH, "the ClientHello carries encrypted_client_hello; the real server name is hidden")
	case isTimeout(err):
		return denyf(http.StatusForbidden, ReasonBadHello, "ClientHello not complete within the header timeout")
	}
	var he *helloError
	if errors.As(err, &he) {
		return denyf(http.StatusForbidden, ReasonBadHello, "%s", he.msg)
	}
	return denyf(http.StatusForbidden, ReasonBadHello, "connection ended inside the ClientHello: %v", err)
}
