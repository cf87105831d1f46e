package proxy

import (
	"bytes"
	"net/http"
	"net/textproto"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The request-head parser as it was before it stopped building an
// http.Header for every head (Issue 13, third pass), kept verbatim as the
// oracle of FuzzParseRequestHead (sameAsMapParser): the map-less parser
// must refuse exactly what this one refused, with the same words, and read
// the same request from what it accepts. Request-line parsing is shared
// (it did not change).

func parseRequestHeadWithMap(b []byte) (*requestHead, error) {
	if !bytes.HasSuffix(b, []byte("\r\n\r\n")) && !bytes.Equal(b, []byte("\r\n")) {
		return nil, badHead("head does not end with an empty line")
	}
	text := string(b[:len(b)-2]) // every line with its CRLF; the strings below are slices of it
	if text == "" {
		return nil, badHead("empty line instead of a request line")
	}
	n := strings.Count(text, "\r\n") // lines
	if strings.Count(text, "\r")+strings.Count(text, "\n") != 2*n {
		return nil, badHead("bare CR or LF inside the head")
	}
	first, rest, _ := strings.Cut(text, "\r\n")
	h := &requestHead{header: make(http.Header, n-1), contentLength: -1}
	if err := h.parseRequestLine(first); err != nil {
		return nil, err
	}
	if n-1 > maxHeaderLines {
		return nil, badHead("more than %d header fields", maxHeaderLines)
	}
	for rest != "" {
		var l string
		l, rest, _ = strings.Cut(rest, "\r\n")
		if err := h.mapAddField(l); err != nil {
			return nil, err
		}
	}
	if err := h.mapInterpret(); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *requestHead) mapAddField(l string) error {
	if l == "" {
		return badHead("empty header line")
	}
	if l[0] == ' ' || l[0] == '\t' {
		return badHead("obsolete line folding")
	}
	name, value, ok := strings.Cut(l, ":")
	if !ok {
		return badHead("header line without a colon")
	}
	if name == "" || !isToken(name) {
		return badHead("bad header name %q (no whitespace before the colon)", name)
	}
	value = strings.Trim(value, " \t")
	for i := 0; i < len(value); i++ {
		if c := value[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return badHead("control byte %#02x in header %s", c, name)
		}
	}
	key := textproto.CanonicalMIMEHeaderKey(name)
	h.header[key] = append(h.header[key], value)
	return nil
}

func (h *requestHead) mapInterpret() error {
	hdr := h.header
	if v := hdr["Host"]; len(v) > 1 {
		return badHead("%d Host headers", len(v))
	} else if len(v) == 1 {
		h.host, h.hasHost = v[0], true
	}
	cl, hasCL := hdr["Content-Length"]
	te, hasTE := hdr["Transfer-Encoding"]
	if hasCL && hasTE {
		return badHead("both Content-Length and Transfer-Encoding (ambiguous framing)")
	}
	if hasCL {
		if len(cl) != 1 {
			return badHead("%d Content-Length headers", len(cl))
		}
		n, ok := parseContentLength(cl[0])
		if !ok {
			return badHead("bad Content-Length %q", cl[0])
		}
		h.contentLength = n
	}
	if hasTE {
		if h.proto == "HTTP/1.0" {
			return badHead("Transfer-Encoding in an HTTP/1.0 request")
		}
		if len(te) != 1 || !strings.EqualFold(te[0], "chunked") {
			return badHead("Transfer-Encoding %q (only a single \"chunked\" is accepted)", strings.Join(te, ", "))
		}
		h.chunked = true
	}
	if h.method == http.MethodConnect && (hasCL || hasTE) {
		return badHead("CONNECT with a body")
	}
	h.keepAlive = h.proto == "HTTP/1.1"
	for _, v := range hdr["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			tok = strings.TrimSpace(tok)
			switch {
			case tok == "":
			case strings.EqualFold(tok, "close"):
				h.keepAlive = false
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
	}
	// A 1.0 "Connection: keep-alive, close" still closes.
	for _, v := range hdr["Connection"] {
		if hasToken(v, "close") {
			h.keepAlive = false
		}
	}
	for _, v := range hdr["Expect"] {
		if strings.EqualFold(strings.TrimSpace(v), "100-continue") {
			h.expectContinue = true
		}
	}
	return nil
}

// sameAsMapParser fails t unless parsing raw gives what the map-building
// parser gave: the same verdict and error text, the same request.
func sameAsMapParser(t *testing.T, raw []byte) {
	t.Helper()
	want, werr := parseRequestHeadWithMap(raw)
	var got requestHead
	gerr := got.parse(raw)
	if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
		t.Fatalf("%q: map parser %v, map-less parser %v", raw, werr, gerr)
	}
	if werr != nil {
		return
	}
	if got.method == http.MethodConnect {
		if got.header != nil {
			t.Fatalf("%q: a CONNECT got a header map", raw)
		}
		want.header = nil
	}
	got.fields = ""
	if diff := cmp.Diff(*want, got, cmp.AllowUnexported(requestHead{})); diff != "" {
		t.Fatalf("%q: (-map parser +map-less parser):\n%s", raw, diff)
	}
}
