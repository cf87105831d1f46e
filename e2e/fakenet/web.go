package fakenet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxBytesPath bounds /bytes/N.
const maxBytesPath = 1 << 30

// HTTPRequest is what an HTTP or HTTPS server of the world saw: the log entry, and the JSON body
// of every default reply, so a test scores at the application layer ("honesty rule": a TCP
// connect that a redirect-to-proxy accepted proves nothing; a body naming the Host and SNI the
// real server saw does).
type HTTPRequest struct {
	Server    string         `json:"server"`     // always "fakenet"
	Time      time.Time      `json:"-"`          // when it arrived (in the log only, not in the reply body)
	Scheme    string         `json:"scheme"`     // "http" or "https"
	Host      string         `json:"host"`       // the Host header (or :authority) exactly as received, port included if sent
	SNI       string         `json:"sni"`        // TLS server name; "" for plain HTTP or a ClientHello without SNI
	ALPN      string         `json:"alpn"`       // negotiated protocol ("h2", "http/1.1", or "")
	Method    string         `json:"method"`     // GET, POST, ...
	URI       string         `json:"uri"`        // the request target as sent (origin form, or absolute form from a proxy-style client)
	Proto     string         `json:"proto"`      // "HTTP/1.1", "HTTP/2.0"
	BodyBytes int64          `json:"body_bytes"` // request body length read (at most 1 MiB is read)
	Local     netip.AddrPort `json:"local"`      // server address the connection arrived on
	Remote    netip.AddrPort `json:"remote"`     // the client as the server saw it
	// Header is every request header as received (Host aside), so a test
	// sees what a proxy added: an API that reflects the key it was given.
	Header http.Header `json:"header,omitempty"`
}

// ParseReply decodes the JSON body of a fakenet HTTP(S) reply (what curl prints, or an
// http.Response body). It fails on anything that is not one, so an error page from a proxy can
// never pass for the real server's answer.
func ParseReply(body []byte) (HTTPRequest, error) {
	var r HTTPRequest
	if err := json.Unmarshal(body, &r); err != nil {
		return HTTPRequest{}, fmt.Errorf("not a fakenet reply: %w (body %q)", err, truncate(body, 200))
	}
	if r.Server != "fakenet" {
		return HTTPRequest{}, fmt.Errorf("not a fakenet reply: server %q (body %q)", r.Server, truncate(body, 200))
	}
	return r, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// serveHTTP answers every request on the world's HTTP and HTTPS listeners:
//
//	/bytes/N          N bytes of 'x' (N ≤ 1 GiB), for throughput and large-body tests
//	/redirect?to=URL  302 to URL, for cross-host redirect tests
//	/sse, /simple/…, /git/…, …  server-sent events and a package for pip, npm and git (registries.go)
//	anything else     200 with the HTTPRequest as JSON (its headers included: an API that reflects the key it got)
//
// Every reply carries X-Fakenet-Host and X-Fakenet-SNI headers.
func (w *World) serveHTTP(rw http.ResponseWriter, r *http.Request) {
	req := HTTPRequest{
		Server: "fakenet",
		Time:   time.Now(),
		Scheme: "http",
		Host:   r.Host,
		Method: r.Method,
		URI:    r.RequestURI,
		Proto:  r.Proto,
		Header: r.Header.Clone(),
	}
	if r.TLS != nil {
		req.Scheme = "https"
		req.SNI = r.TLS.ServerName
		req.ALPN = r.TLS.NegotiatedProtocol
	}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		req.Local, _ = netip.ParseAddrPort(a.String())
	}
	req.Remote, _ = netip.ParseAddrPort(r.RemoteAddr)
	if r.Body != nil {
		// Counted, and kept for the handlers that read it (git's POSTs).
		var body bytes.Buffer
		req.BodyBytes, _ = io.Copy(&body, io.LimitReader(r.Body, 1<<20))
		r.Body = io.NopCloser(io.MultiReader(&body, r.Body))
	}
	w.logHTTP(req)

	h := rw.Header()
	h.Set("X-Fakenet-Host", r.Host)
	h.Set("X-Fakenet-SNI", req.SNI)

	if w.serveRegistry(rw, r) {
		return
	}
	switch {
	case strings.HasPrefix(r.URL.Path, "/bytes/"):
		n, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/bytes/"), 10, 64)
		if err != nil || n < 0 || n > maxBytesPath {
			http.Error(rw, "fakenet: /bytes/N wants 0 <= N <= 1073741824", http.StatusBadRequest)
			return
		}
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.Copy(rw, io.LimitReader(xReader{}, n))
	case r.URL.Path == "/redirect":
		to := r.URL.Query().Get("to")
		if u, err := url.Parse(to); err != nil || u.Scheme == "" || u.Host == "" {
			http.Error(rw, "fakenet: /redirect wants ?to=<absolute URL>", http.StatusBadRequest)
			return
		}
		http.Redirect(rw, r, to, http.StatusFound)
	default:
		body, _ := json.Marshal(req)
		h.Set("Content-Type", "application/json")
		_, _ = rw.Write(append(body, '\n'))
	}
}

// xReader is an endless stream of 'x'.
type xReader struct{}

func (xReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

// errorLogWriter keeps the HTTP servers' error log lines (TLS handshake failures, mostly).
type errorLogWriter struct{ w *World }

func (e errorLogWriter) Write(p []byte) (int, error) {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	if len(e.w.serverErrors) < maxLogEntries {
		e.w.serverErrors = append(e.w.serverErrors, strings.TrimSpace(string(p)))
	}
	return len(p), nil
}
