package policy

import (
	"encoding/base64"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/gobwas/glob"
	"github.com/google/go-cmp/cmp"
)

// inspectionOf resolves a policy file text and returns its matcher.
func inspectionMatcher(t testing.TB, text string) *Matcher {
	t.Helper()
	f, err := ParseFile("p.toml", []byte(text))
	if err != nil {
		t.Fatalf("parsing:\n%v", err)
	}
	p, _, err := ResolveFiles("", []*File{f}, nil, "")
	if err != nil {
		t.Fatalf("resolving:\n%v", err)
	}
	m, err := NewMatcher(p.NetworkPolicy())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

const inspectPolicy = `version = 1
profile = "strict"
[network]
allow = ["api.model.test", "*.git.test", "other.test"]

[[network.inspect]]
host = "api.model.test"
methods = ["GET", "POST"]
paths = ["/v1/messages", "/v1/models/*", "/v1/batches/**"]
block_paths = ["/v1/models/secret"]

[[network.inspect]]
host = "*.git.test:443"
block_methods = ["DELETE", "PUT"]

[[network.inspect]]
host = ".model.test"
block_methods = ["PATCH"]

[[network.credentials]]
host = "api.model.test"
header = "x-api-key"
secret = "MODEL_KEY"
`

func TestInspectionDecidesEveryRequestBlockWins(t *testing.T) {
	m := inspectionMatcher(t, inspectPolicy)
	for _, tc := range []struct {
		name, host   string
		port         uint16
		method, path string
		want         string // "" = not inspected; "allow"; or the decision string's start
	}{
		{"path allowed", "api.model.test", 443, "POST", "/v1/messages", "allow"},
		{"method case folded", "api.model.test", 443, "post", "/v1/messages", "allow"},
		{"path not listed", "api.model.test", 443, "GET", "/v1/files", `no-allow-rule paths ["/v1/messages", "/v1/models/*", "/v1/batches/**"]`},
		{"star stays in a segment", "api.model.test", 443, "GET", "/v1/models/a/b", "no-allow-rule paths"},
		{"star matches one segment", "api.model.test", 443, "GET", "/v1/models/claude", "allow"},
		{"double star crosses segments", "api.model.test", 443, "GET", "/v1/batches/a/b/c", "allow"},
		{"block wins over allow", "api.model.test", 443, "GET", "/v1/models/secret", `blocked-by block_paths "/v1/models/secret"`},
		{"method not listed", "api.model.test", 443, "DELETE", "/v1/messages", `no-allow-rule methods ["GET", "POST"]`},
		{"second matching entry's block", "api.model.test", 443, "PATCH", "/v1/messages", `blocked-by block_methods "PATCH"`},
		{"wildcard host", "x.git.test", 443, "GET", "/any", "allow"},
		{"wildcard host block", "x.git.test", 443, "delete", "/any", `blocked-by block_methods "DELETE"`},
		{"port limited entry", "x.git.test", 8443, "DELETE", "/any", ""},
		{"not inspected", "other.test", 443, "DELETE", "/", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := m.Inspection(tc.host, tc.port)
			if (in != nil) != (tc.want != "") || m.Inspects(tc.host, tc.port) != (in != nil) {
				t.Fatalf("Inspection(%s, %d) = %v, Inspects = %v; want inspected %v", tc.host, tc.port, in, m.Inspects(tc.host, tc.port), tc.want != "")
			}
			if in == nil {
				return
			}
			d := in.Decide(tc.method, tc.path)
			if tc.want == "allow" {
				if !d.Allow || d.Reason != ReasonAllowedBy {
					t.Fatalf("Decide(%s %s) = %s, want allow", tc.method, tc.path, d)
				}
				return
			}
			if d.Allow || !strings.HasPrefix(d.String(), tc.want) {
				t.Fatalf("Decide(%s %s) = %s, want %s...", tc.method, tc.path, d, tc.want)
			}
			if !strings.Contains(d.String(), "(p.toml:") {
				t.Errorf("decision %s does not say where the rule was written", d)
			}
		})
	}
	in := m.Inspection("api.model.test", 443)
	if got := in.Credentials; len(got) != 1 || got[0].Header != "X-Api-Key" || got[0].Placeholder != "egressd-placeholder-MODEL_KEY" {
		t.Errorf("credentials = %+v", got)
	}
	if in.Label() != "api.model.test" || !in.HasPathRules() || in.LogQuery() {
		t.Errorf("label %q, path rules %v, log query %v", in.Label(), in.HasPathRules(), in.LogQuery())
	}
}

func TestPlaceholderOnItsWayElsewhereIsFound(t *testing.T) {
	m := inspectionMatcher(t, inspectPolicy)
	if c := m.PlaceholderFor("other.test", "Bearer egressd-placeholder-MODEL_KEY"); c == nil || c.Host != "api.model.test" {
		t.Errorf("placeholder sent to other.test: got %v", c)
	}
	if c := m.PlaceholderFor("api.model.test", "egressd-placeholder-MODEL_KEY"); c != nil {
		t.Errorf("placeholder sent to its own host reported: %v", c)
	}
	if c := m.PlaceholderFor("other.test", "nothing here"); c != nil {
		t.Errorf("no placeholder, got %v", c)
	}
}

// TestCanonicalPathRefusesWhatServersReadDifferently: every spelling a
// server could resolve to another path than the one judged is refused,
// and escapes that mean the same byte are brought to one form.
func TestCanonicalPathRefusesWhatServersReadDifferently(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/", "/"},
		{"/v1/messages", "/v1/messages"},
		{"/v1/messages/", "/v1/messages/"},
		{"/v1/%66iles", "/v1/files"},
		{"/a%7eb%2Dc", "/a~b-c"},
		{"/a%2bb", "/a%2Bb"},
		{"/q%20r", "/q%20r"},
		{"/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="},
		{"*", "*"},
		{"/v1/%2e%2e/files", ""},
		{"/v1/../files", ""},
		{"/v1/./files", ""},
		{"/v1/.", ""},
		{"//v1/files", ""},
		{"/v1//files", ""},
		{"/v1%2ffiles", ""},
		{"/v1%5Cfiles", ""},
		{"/v1\\files", ""},
		{"/v1/files;x", ""},
		{"/v1/..;/files", ""},
		{"/a%00", ""},
		{"/a%zz", ""},
		{"/a%4", ""},
		{"/a b", ""},
		{"/a\x7f", ""},
		{"/\xc3\xa9", ""},
		{"/a\"b", ""},
		{"v1/files", ""},
		{"", ""},
		{"/" + strings.Repeat("a", MaxPathLen), ""},
	} {
		got, err := CanonicalPath(tc.in)
		if tc.want == "" {
			if err == nil || !errors.Is(err, ErrAmbiguousPath) {
				t.Errorf("CanonicalPath(%q) = %q, %v; want ErrAmbiguousPath", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("CanonicalPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestFlagInspectIsAHostOnlyEntry(t *testing.T) {
	p, _, err := Resolve(ResolveOptions{Profile: "strict", Overrides: []Setting{
		{Key: "network.allow", Values: []string{"api.model.test"}},
		{Key: "network.inspect", Values: []string{"api.model.test"}, Source: Flag("--inspect")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []Provenance{{Field: "network.inspect", Value: `{ host = "api.model.test" }`, Source: "flag:--inspect"}}
	var got []Provenance
	for _, e := range p.Explain() {
		if e.Field == "network.inspect" {
			got = append(got, e)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("explain (-want +got):\n%s", diff)
	}
	// The rendered profile parses back to the same entries.
	text, err := p.TOML()
	if err != nil {
		t.Fatal(err)
	}
	f, err := ParseFile("show.toml", text)
	if err != nil {
		t.Fatalf("profile show output does not parse:\n%v\n%s", err, text)
	}
	p2, _, err := ResolveFiles("", []*File{f}, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(p2.Network.Inspect) != 1 || p2.Network.Inspect[0].Text != p.Network.Inspect[0].Text {
		t.Errorf("round trip: %v", p2.Network.Inspect)
	}
}

// TestInspectionNeverLoosensTheFloor: inspect and credentials entries are
// restrictions, so no floor refuses them, and they allow nothing.
func TestInspectionNeverLoosensTheFloor(t *testing.T) {
	f, err := ParseFile("p.toml", []byte(inspectPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ResolveFiles("", []*File{f}, nil, "strict"); err != nil {
		t.Fatalf("floor strict refused inspection entries: %v", err)
	}
	m := inspectionMatcher(t, `version = 1
profile = "strict"
[[network.inspect]]
host = "unlisted.test"
`)
	if d := m.DecideName("unlisted.test", 443); d.Allow {
		t.Errorf("an inspect entry allowed its host: %s", d)
	}
}

// FuzzCanonicalPath drives CanonicalPath with arbitrary request paths: it
// never panics, what it returns is canonical (a fixed point) and holds
// none of the constructs it refuses.
func FuzzCanonicalPath(f *testing.F) {
	for _, s := range []string{"/", "/v1/%66iles", "/a/../b", "//x", "/a%2fb", "/a;b", "/%2e%2E/", "*", "/a%7E"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := CanonicalPath(raw)
		if err != nil {
			return
		}
		again, err := CanonicalPath(c)
		if err != nil || again != c {
			t.Fatalf("CanonicalPath(%q) = %q, but that is not canonical: %q, %v", raw, c, again, err)
		}
		if c == "*" {
			return
		}
		for _, bad := range []string{"//", "/./", "/../", ";", "\\", "%2F", "%5C", "%00"} {
			if strings.Contains(c+"/", bad) && !(bad == "//" && strings.HasSuffix(c, "/")) {
				t.Fatalf("CanonicalPath(%q) = %q holds %q", raw, c, bad)
			}
		}
		if strings.HasSuffix(c, "/.") || strings.HasSuffix(c, "/..") {
			t.Fatalf("CanonicalPath(%q) = %q ends in a dot segment", raw, c)
		}
	})
}

// FuzzPathPattern checks the path matcher against gobwas/glob with '/' as
// the separator and against a regexp translation.
func FuzzPathPattern(f *testing.F) {
	f.Add([]byte("/a/*b?"), []byte("/a/ab"))
	f.Add([]byte("/**/a"), []byte("/a/b/a"))
	f.Fuzz(func(t *testing.T, rawPat, rawPath []byte) {
		const patAlphabet, pathAlphabet = "ab/*?", "ab/"
		pat := []byte{'/'}
		for _, c := range rawPat {
			pat = append(pat, patAlphabet[int(c)%len(patAlphabet)])
		}
		path := []byte{'/'}
		for _, c := range rawPath {
			path = append(path, pathAlphabet[int(c)%len(pathAlphabet)])
		}
		pp, err := ParsePathPattern(string(pat))
		if err != nil || len(path) > 64 {
			return
		}
		got := pp.Match(string(path))
		if want := glob.MustCompile(string(pat), '/').Match(string(path)); got != want {
			t.Fatalf("pattern %q, path %q: Match = %v, gobwas/glob = %v", pat, path, got, want)
		}
		re := regexp.MustCompile(strings.NewReplacer(`\.`, "[.]").Replace(globToRegexp(strings.ReplaceAll(string(pat), "/", "."))))
		if want := re.MatchString(strings.ReplaceAll(string(path), "/", ".")); got != want {
			t.Fatalf("pattern %q, path %q: Match = %v, regexp = %v", pat, path, got, want)
		}
	})
}

// TestBlockPathTrailingSlashAndCaseRefused: block_paths refuse the
// spellings common servers route to the blocked handler (a trailing slash,
// another case), whichever side carries the slash; allow lists stay exact.
// Attack review 1, W3.
func TestBlockPathTrailingSlashAndCaseRefused(t *testing.T) {
	m := inspectionMatcher(t, `version = 1
[network]
allow = ["api.model.test"]
[[network.inspect]]
host = "api.model.test"
block_paths = ["/v1/admin", "/v1/files/*", "/v1/Keys/"]
block_methods = ["DELETE"]
[[network.inspect]]
host = "api.model.test"
paths = ["/v1/**", "/Docs"]
`)
	in := m.Inspection("api.model.test", 443)
	for _, p := range []string{"/v1/admin", "/v1/admin/", "/V1/admin", "/v1/ADMIN", "/V1/ADMIN/", "/v1/%41dmin",
		"/v1/files/x", "/v1/files/x/", "/v1/files/", "/v1/FILES/x", "/v1/keys", "/v1/KEYS/", "/v1/Keys"} {
		cp, err := CanonicalPath(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if d := in.Decide("GET", cp); d.Allow || d.Reason != ReasonBlockedBy {
			t.Errorf("GET %s (canonical %s): %v, want blocked-by", p, cp, d)
		}
	}
	for _, p := range []string{"/v1/admin.json", "/v1/administrator", "/v1/files2/x", "/v1/messages", "/v1/messages/"} {
		if d := in.Decide("GET", p); !d.Allow {
			t.Errorf("GET %s: %v, want allowed (no block rule names it)", p, d)
		}
	}
	// Allow rules are exact: another case of an allowed path is not allowed.
	for _, p := range []string{"/docs", "/Docs/", "/V1/messages"} {
		if d := in.Decide("GET", p); d.Allow || d.Reason != ReasonNoAllowRule {
			t.Errorf("GET %s: %v, want no-allow-rule (allow lists are exact)", p, d)
		}
	}
	if d := in.Decide("delete", "/v1/messages"); d.Allow {
		t.Errorf("delete (lower case): %v, want blocked-by", d)
	}
	if !in.HasMethodRules() {
		t.Error("HasMethodRules = false with block_methods set")
	}
}

// TestPlaceholderInAnyCommonEncodingIsSeen: a placeholder on its way to
// another host is recognised in the forms a client or an agent commonly
// gives it: case changed, percent-, JSON- or HTML-escaped (mixed, twice
// over), base64 inside Basic credentials, at any alignment. Attack review 1.
func TestPlaceholderInAnyCommonEncodingIsSeen(t *testing.T) {
	m := inspectionMatcher(t, modelKeyPolicy)
	ph := "egressd-placeholder-MODEL_KEY"
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for name, s := range map[string]string{
		"literal":          ph,
		"lower":            strings.ToLower(ph),
		"mixed case":       "EGRESSD-PLACEHOLDER-model_key",
		"url-escaped part": "egressd%2Dplaceholder-MODEL_KEY",
		"url-escaped all":  "%65%67%72%65%73%73%64%2d%70%6c%61%63%65%68%6f%6c%64%65%72%2d%4d%4f%44%45%4c%5f%4b%45%59",
		"url twice":        "egressd%252Dplaceholder%252DMODEL_KEY",
		"json":             `{"k":"egressd\u002dplaceholder\u002DMODEL_KEY"}`,
		"html":             "egressd&#45;placeholder&#x2d;MODEL&#95;KEY",
		"base64 basic":     "Basic " + b64(ph+":"),
		"base64 user":      "Basic " + b64("u:"+ph),
		"base64 align 2":   b64("ab" + ph + "zz"),
		"base64 url":       base64.URLEncoding.EncodeToString([]byte("??" + ph)),
		"in a query":       "/collect?x=1&key=egressd-placeholder-model_key",
	} {
		if c := m.PlaceholderFor("evil.test", s); c == nil {
			t.Errorf("placeholder sent as %s (%q) to another host is not seen", name, s)
		}
		if c := m.PlaceholderFor("api.model.test", s); c != nil {
			t.Errorf("placeholder as %s to its own host refused", name)
		}
	}
	for _, s := range []string{"egressd-placeholder-MODEL", "egressd-placeholder-OTHER_KEY", "Basic " + b64("user:pass"), ""} {
		if c := m.PlaceholderFor("evil.test", s); c != nil {
			t.Errorf("%q taken for the placeholder", s)
		}
	}
}

// modelKeyPolicy inspects api.model.test with one credential, MODEL_KEY.
const modelKeyPolicy = `version = 1
[network]
allow = ["api.model.test"]
[[network.inspect]]
host = "api.model.test"
[[network.credentials]]
host = "api.model.test"
header = "x-api-key"
secret = "MODEL_KEY"
`
