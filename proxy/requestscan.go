package proxy

import (
	"bytes"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// What a request carries besides its line that policy must see: a
// credential's placeholder on its way to another host (in a header name or
// value, the target, or the body), and a request to run another method
// than the one egressd decided (method-override headers, a `_method`
// parameter), where method rules apply.

// methodOverrideHeaders are the headers through which common frameworks
// let a request name the method the server runs (Express's
// method-override, Rails' Rack::MethodOverride, Laravel, Spring's
// HiddenHttpMethodFilter through _method, Google and Microsoft APIs).
var methodOverrideHeaders = []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}

// maxBodyScan bounds the request body bytes scanned for a placeholder or a
// `_method` form field: what follows passes unscanned.
const maxBodyScan = 1 << 20

// methodOverrideDenial refuses a request, to a host whose method rules
// apply, that asks the server to run another method: any method-override
// header, or a `_method` query parameter. Refused rather than stripped:
// the client meant another method than the one egressd would decide, and
// a refusal says so, where a silently changed request would do something
// else than asked. (A `_method` form field in the body is the body scan's.)
func methodOverrideDenial(in *policy.Inspection, host string, h http.Header, target string) *denial {
	if in == nil || !in.HasMethodRules() {
		return nil
	}
	for _, k := range methodOverrideHeaders {
		if _, ok := h[k]; ok {
			return overrideRefused(host, k+" header")
		}
	}
	if _, q, ok := strings.Cut(target, "?"); ok && queryHasMethod(q) {
		return overrideRefused(host, "_method parameter")
	}
	return nil
}

func overrideRefused(host, what string) *denial {
	return denyf(http.StatusBadRequest, audit.ReasonBadRequest,
		"a %s in a request to %s, whose methods egressd decides: a server honouring it would run a method egressd did not decide; send that method itself", what, host)
}

// queryHasMethod reports whether a query string (or a form body) has a
// `_method` key, however escaped or cased.
func queryHasMethod(q string) bool {
	for _, kv := range strings.Split(q, "&") {
		k, _, _ := strings.Cut(kv, "=")
		if dk, err := url.QueryUnescape(k); err == nil {
			k = dk
		}
		if strings.EqualFold(strings.TrimSpace(k), "_method") {
			return true
		}
	}
	return false
}

// placeholderDenial refuses a request that carries a credential's
// placeholder (in its target, a header name or value) to any host but the
// credential's own: the sandbox, or whatever drives it, sending its key
// elsewhere. policy.Matcher.PlaceholderFor sees the common encodings.
func placeholderDenial(m *policy.Matcher, host, target string, h http.Header) *denial {
	if c := m.PlaceholderFor(host, target); c != nil {
		return placeholderRefused(c, host)
	}
	for k, vs := range h {
		if c := m.PlaceholderFor(host, k); c != nil {
			return placeholderRefused(c, host)
		}
		for _, v := range vs {
			if c := m.PlaceholderFor(host, v); c != nil {
				return placeholderRefused(c, host)
			}
		}
	}
	return nil
}

func placeholderRefused(c *policy.Credential, host string) *denial {
	return denyf(http.StatusForbidden, audit.ReasonPlaceholder, "the placeholder of secret %s (for %s) sent to %s", c.Secret, c.Host, host)
}

// scanRequestBody wraps body so that its first maxBodyScan bytes are
// checked as they pass: a placeholder of a credential for another host
// than host, and, when method rules apply to a form POST, a `_method`
// field. A find fails the read with the denial, before the bytes that
// complete it are handed on, so the upstream never receives the whole
// value. It returns body itself when there is nothing to look for.
func scanRequestBody(body io.ReadCloser, m *policy.Matcher, in *policy.Inspection, host, method string, h http.Header) io.ReadCloser {
	if body == nil || body == http.NoBody {
		return body
	}
	s := &bodyScan{ReadCloser: body, m: m, host: host}
	for _, c := range m.Credentials() {
		if c.Host != host {
			s.placeholders = true
			break
		}
	}
	if in != nil && in.HasMethodRules() && method == http.MethodPost {
		switch ct, _, _ := mime.ParseMediaType(h.Get("Content-Type")); ct {
		case "application/x-www-form-urlencoded":
			s.form = true
		case "multipart/form-data":
			s.multipart = true
		}
	}
	if !s.placeholders && !s.form && !s.multipart {
		return body
	}
	s.keep = max(m.PlaceholderLen(), 64)
	return s
}

// bodyScan is a request body scanned in windows: each read is checked
// together with the last keep bytes before it, so a value split across
// reads is seen whole.
type bodyScan struct {
	io.ReadCloser
	m               *policy.Matcher
	host            string
	placeholders    bool
	form, multipart bool
	keep            int
	window          []byte
	scanned         int64
	err             error
}

func (s *bodyScan) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.ReadCloser.Read(p)
	if n > 0 && s.scanned < maxBodyScan {
		first := s.scanned == 0
		s.scanned += int64(n)
		s.window = append(s.window, p[:n]...)
		if dn := s.check(first); dn != nil {
			s.err = dn
			return 0, dn
		}
		if len(s.window) > s.keep {
			s.window = append(s.window[:0], s.window[len(s.window)-s.keep:]...)
		}
	}
	return n, err
}

func (s *bodyScan) check(first bool) *denial {
	w := s.window
	if s.placeholders {
		if c := s.m.PlaceholderFor(s.host, string(w)); c != nil {
			return placeholderRefused(c, s.host)
		}
	}
	lw := bytes.ToLower(w)
	if s.form {
		// A key at the body's start or after '&', escaped or not.
		if first && (bytes.HasPrefix(lw, []byte("_method=")) || bytes.HasPrefix(lw, []byte("%5fmethod="))) ||
			bytes.Contains(lw, []byte("&_method=")) || bytes.Contains(lw, []byte("&%5fmethod=")) {
			return overrideRefused(s.host, "_method form field")
		}
	}
	if s.multipart && (bytes.Contains(lw, []byte(`name="_method"`)) || bytes.Contains(lw, []byte(`name=_method`))) {
		return overrideRefused(s.host, "_method form field")
	}
	return nil
}
