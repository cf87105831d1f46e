package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/netip"
	"net/textproto"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/policy"
)

// Attack review 1 (W2, W3, W4, placeholders): the attacks on HTTPS
// inspection that the first review found, each against a real TLS upstream
// on loopback through egressd's explicit proxy.

// awkwardSecret is a secret every escaping style spells differently.
const awkwardSecret = `sk-rev&iew<1234>ab/cd'e"f+g=h`

// reflections are the forms in which reflectKey sends the key back: what a
// JSON API (Go's, PHP's), a form or redirect, an HTML page and a debug
// endpoint write for it. The test looks for each in what the sandbox gets.
func reflections(key string) map[string]string {
	j, _ := json.Marshal(key) // Go: \u0026 \u003c \u003e, \"
	js := strings.Trim(string(j), `"`)
	return map[string]string{
		"json (Go)":            js,
		"json (PHP, \\/)":      strings.ReplaceAll(js, "/", `\/`),
		"json upper-case hex":  strings.NewReplacer(`\u003c`, `\u003C`, `\u003e`, `\u003E`).Replace(js),
		"url query escape":     url.QueryEscape(key),
		"url lower-case hex":   lowerHex(url.QueryEscape(key)),
		"url path escape":      url.PathEscape(key),
		"html":                 html.EscapeString(key),
		"literal":              key,
		"base64 basic (std)":   base64.StdEncoding.EncodeToString([]byte("user:" + key)),
		"base64 (url, align1)": base64.URLEncoding.EncodeToString([]byte("x" + key)),
	}
}

// reflectKey is an upstream that reflects the x-api-key it was sent in
// every form reflections lists: in a 103 Early Hints head, in headers, in
// the body (one byte per write and flush for the JSON form, so every form
// crosses reads), and in a trailer. /v1/malformed answers with a head
// net/http cannot parse, quoting the key, so the client's error text
// quotes it.
func reflectKey(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("X-Api-Key")
	if r.URL.Path == "/v1/malformed" {
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\n%s\r\n\r\n", url.QueryEscape(key))
		c.Close()
		return
	}
	forms := reflections(key)
	w.Header().Set("Link", "</hint?k="+forms["url query escape"]+">; rel=preload")
	w.WriteHeader(http.StatusEarlyHints)
	w.Header().Del("Link")
	w.Header().Set("Trailer", "X-Key-Trailer")
	w.Header().Set("X-Key-Url", forms["url path escape"])
	w.Header().Set("X-Key-Html", forms["html"])
	w.Header().Set("X-Key-"+forms["base64 (url, align1)"], "1") // net/http's canonical form changes its case
	rc := http.NewResponseController(w)
	for _, b := range []byte(`{"echo":"` + forms["json (Go)"] + `"}` + "\n") {
		w.Write([]byte{b})
		rc.Flush()
	}
	for name, f := range forms {
		fmt.Fprintf(w, "%s: [%s]\n", name, f)
	}
	w.Header().Set("X-Key-Trailer", forms["json (PHP, \\/)"])
}

// sandboxView is everything the sandbox received for one request: the
// 1xx heads, the head, the body and the trailers, as text.
func sandboxView(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	var early bytes.Buffer
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			fmt.Fprintf(&early, "%d %v\n", code, h)
			return nil
		}})
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	req.Header.Set("X-Api-Key", testPlaceholder)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, fmt.Sprintf("1xx:\n%s\nstatus: %s\nheader: %v\nbody:\n%s\ntrailer: %v", early.String(), resp.Status, resp.Header, body, resp.Trailer)
}

// W2: the credential host reflects the secret JSON-, URL-, HTML-escaped and
// in base64, in 1xx heads, headers, header names, the body (split across
// reads) and trailers; the sandbox sees none of it, over HTTP/1.1 and
// HTTP/2.
func TestSecretEscapedInJSONIsMasked(t *testing.T) {
	ih := newInspectHarness(t, func(c *Config) { c.Inspect.Secrets["MODEL_KEY"] = awkwardSecret })
	for _, h2 := range []bool{false, true} {
		status, view := sandboxView(t, ih.client(h2), ih.url("api.test", "/v1/reflect"))
		if status != 200 || !strings.Contains(view, `{"echo":"`) || !strings.Contains(view, "103") {
			t.Fatalf("http2=%v: status %d, want the reflection with its 103:\n%s", h2, status, view)
		}
		for name, f := range reflections(awkwardSecret) {
			if strings.HasPrefix(name, "base64") {
				// The characters that depend on the secret's bits alone are
				// masked; decoded (stars as zero bits), no 3 bytes of it remain.
				for _, b64 := range []string{f, strings.ReplaceAll(f, "=", "")} {
					// Header names are compared in lower case: net/http
					// rewrites their case.
					if strings.Contains(view, b64[2:len(b64)-2]) || strings.Contains(strings.ToLower(view), strings.ToLower(b64[2:len(b64)-2])) {
						t.Errorf("http2=%v: the secret reached the sandbox as %s (%s)", h2, name, b64)
					}
				}
				continue
			}
			if strings.Contains(view, f) || strings.Contains(strings.ToLower(view), strings.ToLower(f)) && name == "literal" {
				t.Errorf("http2=%v: the secret reached the sandbox as %s (%s):\n%s", h2, name, f, view)
			}
		}
		for _, line := range strings.Split(view, "\n") {
			if i := strings.Index(line, "base64 basic (std): ["); i >= 0 {
				enc := strings.TrimSuffix(line[i+len("base64 basic (std): ["):], "]")
				dec, _ := base64.StdEncoding.DecodeString(strings.ReplaceAll(enc, "*", "A"))
				for k := 0; k+3 <= len(awkwardSecret); k++ {
					if bytes.Contains(dec, []byte(awkwardSecret[k:k+3])) {
						t.Errorf("http2=%v: base64 reflection %q decodes to %q, which holds %q of the secret", h2, enc, dec, awkwardSecret[k:k+3])
						break
					}
				}
			}
		}
	}
	if got := ih.up.requests()[0].Header.Get("X-Api-Key"); got != awkwardSecret {
		t.Errorf("upstream got x-api-key %q, want the secret", got)
	}
}

// W2: an upstream error egressd quotes back (net/http's "malformed MIME
// header line: ...") does not carry the secret to the sandbox or the audit
// log.
func TestSecretQuotedInUpstreamErrorIsMasked(t *testing.T) {
	ih := newInspectHarness(t, func(c *Config) { c.Inspect.Secrets["MODEL_KEY"] = awkwardSecret })
	status, view := sandboxView(t, ih.client(false), ih.url("api.test", "/v1/malformed"))
	if status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502:\n%s", status, view)
	}
	esc := url.QueryEscape(awkwardSecret)
	if strings.Contains(view, esc) || strings.Contains(view, awkwardSecret) {
		t.Errorf("the refusal quotes the secret:\n%s", view)
	}
	if !strings.Contains(view, "malformed") {
		t.Errorf("the refusal does not say what the upstream did wrong:\n%s", view)
	}
	for _, r := range ih.audit.waitRecords(t, 1) {
		if s := fmt.Sprint(r); strings.Contains(s, esc) || strings.Contains(s, awkwardSecret) {
			t.Errorf("the secret is in an audit record: %s", s)
		}
	}
}

// W3: a request that asks the server to run another method than its own
// (override headers, a _method parameter or form field) is refused where
// method rules apply, inspected or plain HTTP; the upstream sees nothing.
func TestMethodOverrideCannotDodgeBlockMethods(t *testing.T) {
	ih := newInspectHarness(t)
	c := ih.client(false)
	for name, req := range map[string]func() *http.Request{
		"X-HTTP-Method-Override": func() *http.Request {
			r, _ := http.NewRequest("POST", ih.url("api.test", "/v1/messages"), nil)
			r.Header.Set("X-HTTP-Method-Override", "DELETE")
			return r
		},
		"X-HTTP-Method": func() *http.Request {
			r, _ := http.NewRequest("POST", ih.url("api.test", "/v1/messages"), nil)
			r.Header.Set("X-HTTP-Method", "DELETE")
			return r
		},
		"X-Method-Override lower case": func() *http.Request {
			r, _ := http.NewRequest("POST", ih.url("api.test", "/v1/messages"), nil)
			r.Header["x-method-override"] = []string{"PUT"}
			return r
		},
		"_method query": func() *http.Request {
			r, _ := http.NewRequest("POST", ih.url("api.test", "/v1/messages?a=1&%5Fmethod=DELETE"), nil)
			return r
		},
		"_method form field": func() *http.Request {
			r, _ := http.NewRequest("POST", ih.url("api.test", "/v1/messages"), strings.NewReader("a=1&_method=DELETE"))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return r
		},
		"_method multipart field": func() *http.Request {
			body := "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n"
			r, _ := http.NewRequest("POST", ih.url("api.test", "/v1/messages"), strings.NewReader(body))
			r.Header.Set("Content-Type", "multipart/form-data; boundary=b")
			return r
		},
	} {
		resp, err := c.Do(req())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(resp.Header.Get("X-Egressd-Denied"), string(audit.ReasonBadRequest)) {
			t.Errorf("%s: %d %q, want 400 bad-request", name, resp.StatusCode, resp.Header.Get("X-Egressd-Denied"))
		}
	}
	plain := newUpstreamHTTP(t)
	resp, _ := ih.request(fmt.Sprintf("POST http://api.test:%d/v1/messages HTTP/1.1\r\nHost: api.test:%d\r\nX-HTTP-Method-Override: DELETE\r\nContent-Length: 0\r\n\r\n", plain.port, plain.port))
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("plain HTTP with an override header: %d, want 400", resp.StatusCode)
	}
	for _, r := range append(ih.up.requests(), plain.requests()...) {
		// A form body is streamed as it passes: the head and the bytes
		// before the field may arrive, the field never.
		if b, _ := io.ReadAll(r.Body); r.Header.Get("X-Http-Method-Override") != "" || r.URL.RawQuery != "" || bytes.Contains(b, []byte("_method")) {
			t.Errorf("the upstream got the override: %s %s %v %q", r.Method, r.URL, r.Header, b)
		}
	}
	// Where no method rule applies, the header is the server's business.
	resp2, _ := doReq(t, c, "POST", ih.url("other.test", "/x"), map[string]string{"X-HTTP-Method-Override": "DELETE"})
	if resp2.StatusCode != 200 {
		t.Errorf("override header to other.test (no method rules): %d, want 200", resp2.StatusCode)
	}
}

// Placeholders: sent to another host in a common encoding (case changed,
// percent-escaped, base64 in Basic, as a header name) or in the body —
// split across reads — it is refused, inspected or plain HTTP, before the
// upstream gets the whole value.
func TestPlaceholderInAnyEncodingOrTheBodyIsRefused(t *testing.T) {
	ih := newInspectHarness(t)
	c := ih.client(false)
	b64 := base64.StdEncoding.EncodeToString([]byte(testPlaceholder + ":"))
	for name, hdr := range map[string]map[string]string{
		"upper case":   {"Authorization": "Bearer " + strings.ToUpper(testPlaceholder)},
		"url-escaped":  {"X-Key": strings.Replace(testPlaceholder, "-", "%2D", 1)},
		"base64 basic": {"Authorization": "Basic " + b64},
		"header name":  {testPlaceholder: "1"},
	} {
		resp, _ := doReq(t, c, "GET", ih.url("other.test", "/upload"), hdr)
		if resp.StatusCode != 403 || !strings.HasPrefix(resp.Header.Get("X-Egressd-Denied"), string(audit.ReasonPlaceholder)) {
			t.Errorf("%s: %d %q, want 403 credential-placeholder", name, resp.StatusCode, resp.Header.Get("X-Egressd-Denied"))
		}
	}
	// The body, streamed in small pieces so the placeholder crosses reads.
	pr, pw := io.Pipe()
	go func() {
		body := "data=" + url.QueryEscape(strings.ToLower(testPlaceholder)) + "&x=1"
		for i := 0; i < len(body); i += 5 {
			pw.Write([]byte(body[i:min(i+5, len(body))]))
			time.Sleep(time.Millisecond)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", ih.url("other.test", "/upload"), pr)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.HasPrefix(resp.Header.Get("X-Egressd-Denied"), string(audit.ReasonPlaceholder)) {
		t.Errorf("placeholder in a streamed body: %d %q, want 403 credential-placeholder", resp.StatusCode, resp.Header.Get("X-Egressd-Denied"))
	}
	// The upstream may see the head and the body's first bytes (streamed as
	// they pass), never the whole placeholder.
	receivedPlaceholder(t, ih.up.requests())
	plain := newUpstreamHTTP(t)
	body := "key=" + testPlaceholder
	resp2, _ := ih.request(fmt.Sprintf("POST http://other.test:%d/collect HTTP/1.1\r\nHost: other.test:%d\r\nContent-Length: %d\r\n\r\n%s", plain.port, plain.port, len(body), body))
	if resp2.StatusCode != 403 || !strings.HasPrefix(resp2.Header.Get("X-Egressd-Denied"), string(audit.ReasonPlaceholder)) {
		t.Errorf("plain HTTP body with the placeholder: %d %q", resp2.StatusCode, resp2.Header.Get("X-Egressd-Denied"))
	}
	receivedPlaceholder(t, plain.requests())
	// The placeholder to its own host passes.
	resp3, _ := doReq(t, c, "POST", ih.url("api.test", "/v1/messages"), map[string]string{"X-Api-Key": strings.ToUpper(testPlaceholder)})
	if resp3.StatusCode != 200 {
		t.Errorf("placeholder to its own host: %d", resp3.StatusCode)
	}
}

// W4: a CONNECT to an address an allow IP rule admits, with the SNI of the
// credential's host, never sends the request (or the credential) to that
// address: the name's own vetted resolution gets it; where no rule allows
// the name, it is refused.
func TestCredentialNeverSentToAnAddressOutsideTheNamesResolution(t *testing.T) {
	for _, tc := range []struct {
		name, allow string
		wantServed  bool
	}{
		{"name allowed", `"api.test:*", "127.0.0.1:*", "127.0.0.2:*"`, true},
		{"only the addresses allowed", `"127.0.0.1:*", "127.0.0.2:*"`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ih := newInspectHarnessWith(t, `version = 1
[network]
allow = [`+tc.allow+`]
[[network.inspect]]
host = "api.test"
[[network.credentials]]
host = "api.test"
header = "x-api-key"
secret = "MODEL_KEY"
`)
			// The impostor: same port, another address, a certificate for
			// api.test that verifies (the upstream's own CA).
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", ih.up.port))
			if err != nil {
				t.Skipf("cannot listen on 127.0.0.2:%d: %v", ih.up.port, err)
			}
			imp := &inspectUpstream{roots: ih.up.roots}
			srv := httptest.NewUnstartedServer(http.HandlerFunc(imp.serve))
			srv.Listener.Close()
			srv.Listener = ln
			srv.TLS = ih.up.srv.TLS.Clone()
			srv.Config.ErrorLog = log.New(io.Discard, "", 0)
			srv.StartTLS()
			t.Cleanup(srv.Close)

			conn, resp, _ := ih.connect(fmt.Sprintf("127.0.0.2:%d", ih.up.port))
			if resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %d", resp.StatusCode)
			}
			body, err := tlsGetWithKey(conn, "api.test", ih)
			if tc.wantServed && (err != nil || !strings.Contains(body, "upstream GET")) {
				t.Errorf("request through the IP CONNECT: %q %v, want it served by api.test's own address", body, err)
			}
			if !tc.wantServed && err == nil && strings.Contains(body, "upstream") {
				t.Errorf("request through the IP CONNECT of a name no rule allows was served: %q", body)
			}
			// The transparent path: a connection to 127.0.0.2 with the same
			// ClientHello.
			th := &transparentHarness{harness: ih.harness}
			th.p.origDst = func(net.Conn) (netip.AddrPort, error) { return th.orig.Load().(netip.AddrPort), nil }
			tln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			th.taddr = tln.Addr().String()
			go th.p.ServeTransparent(tln)
			body, err = tlsGetWithKey(th.dialTo(fmt.Sprintf("127.0.0.2:%d", ih.up.port)), "api.test", ih)
			if tc.wantServed && (err != nil || !strings.Contains(body, "upstream GET")) {
				t.Errorf("transparent request to 127.0.0.2: %q %v, want it served by api.test's own address", body, err)
			}
			if !tc.wantServed && err == nil && strings.Contains(body, "upstream") {
				t.Errorf("transparent request to 127.0.0.2 for a name no rule allows was served: %q", body)
			}
			for _, r := range imp.requests() {
				t.Errorf("the address outside api.test's resolution got %s %s with x-api-key %q", r.Method, r.URL, r.Header.Get("X-Api-Key"))
			}
			if tc.wantServed {
				if reqs := ih.up.requests(); len(reqs) != 2 || reqs[0].Header.Get("X-Api-Key") != testSecret || reqs[1].Header.Get("X-Api-Key") != testSecret {
					t.Errorf("api.test's own address got %d requests, want 2 with the key", len(reqs))
				}
			}
		})
	}
}

// tlsGetWithKey speaks TLS for serverName on c (trusting the inspection
// CA) and sends one GET with the placeholder key.
func tlsGetWithKey(c net.Conn, serverName string, ih *inspectHarness) (string, error) {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ih.ca.CertPEM())
	tc := tls.Client(c, &tls.Config{ServerName: serverName, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(tc, "GET /ip HTTP/1.1\r\nHost: %s\r\nX-Api-Key: %s\r\nConnection: close\r\n\r\n", serverName, testPlaceholder); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// receivedPlaceholder fails the test if a request body an upstream got
// holds the test placeholder in any form.
func receivedPlaceholder(t *testing.T, reqs []*http.Request) {
	t.Helper()
	for _, r := range reqs {
		b, _ := io.ReadAll(r.Body)
		if strings.Contains(strings.ToLower(policy.UnescapeLoose(string(b))), strings.ToLower(testPlaceholder)) {
			t.Errorf("the upstream got the placeholder: %s %s body %q", r.Method, r.URL, b)
		}
	}
}

// lowerHex writes the %XX escapes of s in lower case.
func lowerHex(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = bytes.ToLower(b[i+1 : i+2])[0], bytes.ToLower(b[i+2 : i+3])[0]
		}
	}
	return string(b)
}
