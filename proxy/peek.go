package proxy

import (
	"bytes"
	"errors"
	"net"
	"os"
	"time"

	"github.com/egressd/egressd/audit"
)

// Peeking at the first bytes a client sends. The bytes are read from the
// socket into a buffer (never through a wrapper left on the connection),
// judged, written upstream first, and the rest of the stream is spliced.

// streamKind is what the first bytes of a stream look like, which says how
// the stream is decided (see the table in doc.go).
type streamKind int

const (
	streamUnknown streamKind = iota // not enough bytes to tell yet
	streamTLS                       // a TLS handshake record: decided on the ClientHello's server_name
	streamHTTP                      // an HTTP/1 request line: decided on Host, per request
	streamH2C                       // the HTTP/2 prior-knowledge preface: names no host egressd reads
	streamOther                     // anything else: names no host
)

func (k streamKind) String() string {
	switch k {
	case streamTLS:
		return "TLS"
	case streamHTTP:
		return "HTTP/1"
	case streamH2C:
		return "h2c"
	case streamOther:
		return "other"
	}
	return "unknown"
}

// maxRequestLine bounds the first line read to classify a stream, and
// maxLeadingEmptyLines the CR/LF bytes looked past before it.
const (
	maxRequestLine       = 8 << 10
	maxLeadingEmptyLines = 16
)

// h2cPreface is the first line of the HTTP/2 connection preface (RFC 9113
// §3.4), which a client with prior knowledge sends instead of a request.
const h2cPreface = "PRI * HTTP/2.0"

// classify says what b, the first bytes of a stream, look like:
//
//   - TLS: the first byte starts a handshake record.
//   - HTTP: the first line (after up to 16 empty lines, which servers skip:
//     RFC 9112 §2.2) is a method token (any RFC 9110 token, any case), a
//     space or tab, and somewhere after it a space or tab and "HTTP/" in
//     any case; it ends in LF or CRLF. That is every request line a lenient
//     server might serve (any version, extra whitespace, bare LF), not only
//     the ones egressd's head parser accepts: the parser refuses the rest,
//     so nothing that looks like a request reaches a server undecided.
//     More than 16 empty lines are HTTP too (the parser refuses them).
//   - h2c: the first line is "PRI * HTTP/2.0".
//   - other: none of these can follow: the first byte is not a token byte
//     (binary protocols), the token is not followed by a space ("SSH-2.0-x",
//     "EHLO\r\n"), the line holds a control byte (git's pkt-line), it
//     ended without "HTTP/" ("EHLO x"), or no line end came within
//     maxRequestLine bytes (no request line egressd's parser accepts).
//     Other is relayed only where raw TCP is admitted, so where a name
//     admitted the address none of these reaches a server.
//   - unknown: more bytes are needed. A stream still unknown when its
//     first bytes are due is refused (see readFirst's callers), never
//     relayed. So a client whose whole first message is token bytes (and
//     spaces) without a line end, and that then waits for the server,
//     is refused: it could still become a request line.
func classify(b []byte) streamKind {
	if len(b) == 0 {
		return streamUnknown
	}
	if looksLikeTLS(b) {
		return streamTLS
	}
	if t := bytes.TrimLeft(b, "\r\n"); len(t) < len(b) {
		if len(b)-len(t) > maxLeadingEmptyLines {
			return streamHTTP
		}
		if len(t) == 0 {
			return streamUnknown
		}
		b = t
	}
	m := 0 // the method token
	for m < len(b) && m < maxRequestLine && isTchar(b[m]) {
		m++
	}
	switch {
	case m == maxRequestLine:
		return streamOther
	case m == len(b):
		return streamUnknown
	case m == 0 || b[m] != ' ' && b[m] != '\t':
		return streamOther
	}
	for i := m; i < len(b) && i < maxRequestLine; i++ {
		switch c := b[i]; {
		case c == '\n':
			line := b[:i]
			if line[len(line)-1] == '\r' {
				line = line[:len(line)-1]
			}
			if string(line) == h2cPreface {
				return streamH2C
			}
			if hasHTTPVersion(line[m:]) {
				return streamHTTP
			}
			return streamOther
		case c < 0x20 && c != '\t' && c != '\r', c == 0x7f:
			// No server reads a request line holding NUL or another
			// control byte: git's "0032git-upload-pack /x\0host=..." is
			// known at once, not held until the deadline.
			return streamOther
		}
	}
	if len(b) >= maxRequestLine {
		return streamOther
	}
	return streamUnknown
}

// hasHTTPVersion reports whether s holds a space or tab followed by
// "HTTP/" in any case.
func hasHTTPVersion(s []byte) bool {
	const lower, upper = "http/", "HTTP/"
	for i := 0; i+len(lower) < len(s); i++ {
		if s[i] != ' ' && s[i] != '\t' {
			continue
		}
		j := 0
		for j < len(lower) && (s[i+1+j] == lower[j] || s[i+1+j] == upper[j]) {
			j++
		}
		if j == len(lower) {
			return true
		}
	}
	return false
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

// awaitFirst waits up to idle for a stream's first bytes (a client may
// stay silent while a server-first protocol's server speaks), then up to
// header more for enough of them to classify. It returns the bytes read and
// the error that stopped it (nil when classify could tell).
func awaitFirst(c net.Conn, buf []byte, idle, header time.Duration) ([]byte, error) {
	if len(buf) == 0 {
		if cap(buf) == 0 {
			buf = make([]byte, 0, 4096)
		}
		_ = c.SetReadDeadline(time.Now().Add(idle))
		n, err := c.Read(buf[:cap(buf)])
		_ = c.SetReadDeadline(time.Time{})
		buf = buf[:n]
		if n == 0 {
			return buf, err
		}
	}
	return readFirst(c, buf, time.Now().Add(header))
}

// unclassified is the refusal of first bytes that were not classified in
// time (err is a timeout) or before the client closed: what cannot be
// identified is refused, never relayed. n is how many bytes came.
func unclassified(n int, err error, timeout time.Duration) *denial {
	if isTimeout(err) {
		return denyf(0, audit.ReasonHeaderTimeout,
			"the first %d bytes did not show a TLS ClientHello, an HTTP/1 request line or another protocol within %s; an unclassified stream is never relayed", n, timeout)
	}
	return denyf(0, audit.ReasonBadRequest, "connection ended after %d bytes, before they showed what protocol they are", n)
}

// isTimeout reports a deadline error.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// helloDenial turns a ClientHello failure into a denial.
func helloDenial(err error) *denial {
	switch {
	case errors.Is(err, errHelloECH):
		return denyf(0, audit.ReasonECH, "the ClientHello carries encrypted_client_hello; the real server name is hidden")
	case isTimeout(err):
		return denyf(0, audit.ReasonHeaderTimeout, "ClientHello not complete within the header timeout")
	}
	var he *helloError
	if errors.As(err, &he) {
		return denyf(0, audit.ReasonBadHello, "%s", he.msg)
	}
	return denyf(0, audit.ReasonBadHello, "connection ended inside the ClientHello: %v", err)
}
