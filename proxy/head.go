package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strings"
)

// HTTP/1.x request heads, parsed strictly (RFC 9112; THREATS A6, A7, A9).
// net/http's server cannot be used for this: it deletes the Host header
// after reading an absolute-form request and silently resolves
// Content-Length + Transfer-Encoding, which are exactly the things a
// filtering proxy must see. So egressd reads heads itself and refuses what
// a lenient parser would guess at.

const (
	// maxHeadBytes bounds a request head (request line and headers).
	maxHeadBytes = 32 << 10
	// maxHeaderLines bounds the number of header fields.
	maxHeaderLines = 100
	// headReadBuffer is the bufio size for client connections; a single
	// head line longer than this is refused.
	headReadBuffer = 16 << 10
)

var (
	errHeadTooLarge = errors.New("request head too large")
)

// headError is a request head egressd refuses to interpret.
type headError struct{ msg string }

func (e *headError) Error() string { return "bad request: " + e.msg }

func badHead(format string, args ...any) error {
	return &headError{msg: fmt.Sprintf(format, args...)}
}

// requestHead is a parsed, validated request head.
type requestHead struct {
	method string
	target string // request-target as sent
	// proto is "HTTP/1.0", or "HTTP/1.1" for any later HTTP/1.x (RFC 9110
	// §2.5: answered as the highest minor version egressd speaks); for
	// another major version, the version as sent.
	proto string
	// major is the major version; a request other than HTTP/1 is refused
	// (505) before it is decided or forwarded.
	major int
	// fields are the head's header lines, each ending in CRLF, checked.
	fields string
	// header is the fields as an http.Header, for a request egressd
	// forwards; nil for a CONNECT, which is decided on its request line.
	header http.Header
	// host is the Host header value; hasHost says whether there was one.
	host    string
	hasHost bool
	// contentLength is the body length, or -1 when there is no
	// Content-Length (then chunked says whether there is a chunked body).
	contentLength int64
	chunked       bool
	// keepAlive: the client may send another request on this connection.
	keepAlive bool
	// expectContinue: the client waits for "100 Continue" before its body.
	expectContinue bool
}

// readRequestHead reads one request head from br: every line up to and
// including the empty line. Lines must end in CRLF and the head must fit in
// max bytes. On error it returns what it read. A head that is whole in br's
// buffer (nearly every head) is returned as a slice of the buffer, valid
// until the next read from br.
func readRequestHead(br *bufio.Reader, max int) ([]byte, error) {
	if head, ok := bufferedHead(br, max); ok {
		return head, nil
	}
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err != nil {
			switch {
			case errors.Is(err, bufio.ErrBufferFull):
				return head, errHeadTooLarge
			case len(head) > 0 && errors.Is(err, io.EOF):
				return head, badHead("connection closed inside the request head")
			}
			return head, err
		}
		if len(head) > max {
			return head, errHeadTooLarge
		}
		if len(line) < 2 || line[len(line)-2] != '\r' {
			return head, badHead("bare LF line ending")
		}
		if len(line) == 2 {
			return head, nil
		}
	}
}

// bufferedHead returns the head at the start of br's buffer, and consumes
// it, when the buffer holds all of it and it is well-formed (CRLF line
// ends, within max bytes); otherwise it consumes nothing and reports false,
// and the caller reads line by line (and says what is wrong, if anything).
func bufferedHead(br *bufio.Reader, max int) ([]byte, bool) {
	if br.Buffered() == 0 {
		if _, err := br.Peek(1); err != nil {
			return nil, false
		}
	}
	b, _ := br.Peek(min(br.Buffered(), max))
	for start := 0; start < len(b); {
		i := bytes.IndexByte(b[start:], '\n')
		if i < 0 {
			return nil, false
		}
		end := start + i + 1
		if i < 1 || b[end-2] != '\r' {
			return nil, false
		}
		if end-start == 2 { // the empty line
			_, _ = br.Discard(end)
			return b[:end], true
		}
		start = end
	}
	return nil, false
}

// parse parses a head read by readRequestHead into h.
//
// The head is checked field by field without a map; the framing and
// connection-level headers are found by name, case-insensitively, as
// http.Header's canonical keys would find them. Only a request that is
// forwarded (anything but CONNECT) gets its fields as an http.Header: a
// CONNECT is decided on its request line alone, so it costs one string
// (the head's text, which the method, target and Host are slices of) and
// no map (bench/README.md, Issue 13, third pass).
func (h *requestHead) parse(b []byte) error {
	*h = requestHead{contentLength: -1}
	if !bytes.HasSuffix(b, []byte("\r\n\r\n")) && !bytes.Equal(b, []byte("\r\n")) {
		return badHead("head does not end with an empty line")
	}
	text := string(b[:len(b)-2]) // every line with its CRLF; the strings below are slices of it
	if text == "" {
		return badHead("empty line instead of a request line")
	}
	n := strings.Count(text, "\r\n") // lines
	if strings.Count(text, "\r")+strings.Count(text, "\n") != 2*n {
		return badHead("bare CR or LF inside the head")
	}
	first, rest, _ := strings.Cut(text, "\r\n")
	if err := h.parseRequestLine(first); err != nil {
		return err
	}
	if n-1 > maxHeaderLines {
		return badHead("more than %d header fields", maxHeaderLines)
	}
	h.fields = rest
	var f headerCounts
	for rest != "" {
		var l string
		l, rest, _ = strings.Cut(rest, "\r\n")
		name, value, err := checkField(l)
		if err != nil {
			return err
		}
		f.count(h, name, value)
	}
	if err := h.interpret(&f); err != nil {
		return err
	}
	if h.method != http.MethodConnect {
		h.header = make(http.Header, n-1)
		for name, value := range h.eachField {
			key := textproto.CanonicalMIMEHeaderKey(name)
			h.header[key] = append(h.header[key], value)
		}
	}
	return nil
}

func (h *requestHead) parseRequestLine(l string) error {
	method, rest, ok1 := strings.Cut(l, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || strings.IndexByte(proto, ' ') >= 0 {
		return badHead("request line is not METHOD SP TARGET SP VERSION")
	}
	if method == "" || !isToken(method) {
		return badHead("bad method %q", method)
	}
	if target == "" {
		return badHead("empty request-target")
	}
	for i := 0; i < len(target); i++ {
		if c := target[i]; c < 0x21 || c > 0x7e {
			return badHead("byte %#02x in request-target", c)
		}
	}
	major, minor, ok := parseHTTPVersion(proto)
	if !ok {
		return badHead("unsupported protocol %q", proto)
	}
	switch {
	case major == 1 && minor == 0:
		proto = "HTTP/1.0"
	case major == 1:
		proto = "HTTP/1.1"
	}
	h.method, h.target, h.proto, h.major = method, target, proto, major
	return nil
}

// parseHTTPVersion parses "HTTP/" DIGIT "." DIGIT (RFC 9112 §2.3), the
// versions servers accept in a request line ("HTTP/1.9", "HTTP/2.0").
func parseHTTPVersion(s string) (major, minor int, ok bool) {
	if len(s) != len("HTTP/1.1") || s[:5] != "HTTP/" || s[6] != '.' {
		return 0, 0, false
	}
	if s[5] < '0' || s[5] > '9' || s[7] < '0' || s[7] > '9' {
		return 0, 0, false
	}
	return int(s[5] - '0'), int(s[7] - '0'), true
}

// checkField checks one header line and returns its name and its value
// without the surrounding blanks.
func checkField(l string) (name, value string, err error) {
	if l == "" {
		return "", "", badHead("empty header line")
	}
	if l[0] == ' ' || l[0] == '\t' {
		return "", "", badHead("obsolete line folding")
	}
	name, value, ok := strings.Cut(l, ":")
	if !ok {
		return "", "", badHead("header line without a colon")
	}
	if name == "" || !isToken(name) {
		return "", "", badHead("bad header name %q (no whitespace before the colon)", name)
	}
	value = strings.Trim(value, " \t")
	for i := 0; i < len(value); i++ {
		if c := value[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return "", "", badHead("control byte %#02x in header %s", c, name)
		}
	}
	return name, value, nil
}

// eachField yields the head's header fields in order (name as sent, value
// trimmed), as an iter.Seq2. They were checked by parse.
func (h *requestHead) eachField(yield func(name, value string) bool) {
	for rest := h.fields; rest != ""; {
		var l string
		l, rest, _ = strings.Cut(rest, "\r\n")
		name, value, _ := strings.Cut(l, ":")
		if !yield(name, strings.Trim(value, " \t")) {
			return
		}
	}
}

// headerCounts are the framing headers of a head, counted while its fields
// are checked: how many of each, and the first value.
type headerCounts struct {
	hosts, contentLengths, transferEncodings int
	contentLength, transferEncoding          string
}

// count notes one field; a header name is a token (checked), so
// strings.EqualFold compares it as http.Header's canonical key would.
func (f *headerCounts) count(h *requestHead, name, value string) {
	switch {
	case strings.EqualFold(name, "Host"):
		if f.hosts == 0 {
			h.host = value
		}
		f.hosts++
	case strings.EqualFold(name, "Content-Length"):
		if f.contentLengths == 0 {
			f.contentLength = value
		}
		f.contentLengths++
	case strings.EqualFold(name, "Transfer-Encoding"):
		if f.transferEncodings == 0 {
			f.transferEncoding = value
		}
		f.transferEncodings++
	}
}

// values returns every value of the header name, in order (for messages).
func (h *requestHead) values(name string) []string {
	var out []string
	for n, v := range h.eachField {
		if strings.EqualFold(n, name) {
			out = append(out, v)
		}
	}
	return out
}

// interpret checks framing and the connection-level headers.
func (h *requestHead) interpret(f *headerCounts) error {
	if f.hosts > 1 {
		h.host = ""
		return badHead("%d Host headers", f.hosts)
	}
	h.hasHost = f.hosts == 1
	hasCL, hasTE := f.contentLengths > 0, f.transferEncodings > 0
	if hasCL && hasTE {
		return badHead("both Content-Length and Transfer-Encoding (ambiguous framing)")
	}
	if hasCL {
		if f.contentLengths != 1 {
			return badHead("%d Content-Length headers", f.contentLengths)
		}
		n, ok := parseContentLength(f.contentLength)
		if !ok {
			return badHead("bad Content-Length %q", f.contentLength)
		}
		h.contentLength = n
	}
	if hasTE {
		if h.proto == "HTTP/1.0" {
			return badHead("Transfer-Encoding in an HTTP/1.0 request")
		}
		if f.transferEncodings != 1 || !strings.EqualFold(f.transferEncoding, "chunked") {
			return badHead("Transfer-Encoding %q (only a single \"chunked\" is accepted)", strings.Join(h.values("Transfer-Encoding"), ", "))
		}
		h.chunked = true
	}
	if h.method == http.MethodConnect && (hasCL || hasTE) {
		return badHead("CONNECT with a body")
	}
	h.keepAlive = h.proto == "HTTP/1.1"
	closes := false
	for name, v := range h.eachField {
		switch {
		case strings.EqualFold(name, "Connection"):
			for tok := range strings.SplitSeq(v, ",") {
				tok = strings.TrimSpace(tok)
				switch {
				case tok == "":
				case strings.EqualFold(tok, "close"):
					closes = true
				case strings.EqualFold(tok, "keep-alive"):
					if h.proto == "HTTP/1.0" {
						h.keepAlive = true
					}
				default:
					if !isToken(tok) {
						return badHead("bad Connection option %q", tok)
					}
				}
			}
		case strings.EqualFold(name, "Expect"):
			if strings.EqualFold(strings.TrimSpace(v), "100-continue") {
				h.expectContinue = true
			}
		}
	}
	// A 1.0 "Connection: keep-alive, close" still closes.
	if closes {
		h.keepAlive = false
	}
	return nil
}

// parseContentLength accepts 1*DIGIT, at most 18 digits (no sign, no
// spaces, no hex).
func parseContentLength(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func hasToken(v, token string) bool {
	for tok := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(strings.TrimSpace(tok), token) {
			return true
		}
	}
	return false
}

// isToken reports whether s is an RFC 9110 token.
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return s != ""
}

func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// hopHeaders are removed from every forwarded request and response (RFC
// 9110 §7.6.1), with every header the Connection header names. Upgrade
// and HTTP2-Settings go too: egressd does not let a plain-HTTP request turn
// into an opaque stream (h2c, WebSocket; THREATS A9). Every Proxy-* header
// is removed as well (see stripHopHeaders).
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding",
	"Upgrade", "Http2-Settings", "Expect",
}

// stripHopHeaders removes hop-by-hop headers, the headers named in
// Connection, and every Proxy-* header from h.
func stripHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				h.Del(tok)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
	for k := range h {
		if len(k) >= 6 && strings.EqualFold(k[:6], "Proxy-") {
			delete(h, k)
		}
	}
}
