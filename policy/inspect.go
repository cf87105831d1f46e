package policy

import (
	"errors"
	"fmt"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// HTTPS inspection (docs/inspection.md). Two lists of tables in [network]:
//
//	[[network.inspect]]            hosts whose HTTPS egressd terminates, with
//	host = "api.example.com"       per-request rules: methods and paths that
//	methods = ["GET", "POST"]      are allowed, and block_methods and
//	paths = ["/v1/messages"]       block_paths that are refused (block wins)
//	block_paths = ["/v1/files/**"]
//
//	[[network.credentials]]        a header egressd sets on requests to one
//	host = "api.example.com"       inspected host, from a secret the sandbox
//	header = "x-api-key"           never holds (it sees the placeholder)
//	secret = "EXAMPLE_API_KEY"
//
// Inspection only ever restricts: a host is reached only if the allow list
// allows it, inspected or not, and every inspect entry that matches it adds
// its own conditions (a request must satisfy all of them). So the security
// floor has nothing to compare: an inspected host is never looser than the
// same host uninspected.

// Limits of the inspection schema.
const (
	// MaxPathLen is the longest request path a path rule is matched
	// against; a longer one is refused where path rules apply.
	MaxPathLen = 8192
	// maxPathPatternLen bounds a path pattern (a request path is matched
	// in O(pattern × path) steps).
	maxPathPatternLen = 256
	// maxInspectList bounds each of methods, paths, block_methods,
	// block_paths.
	maxInspectList = 256
	// DefaultPlaceholderPrefix starts the placeholder a sandbox sees in
	// place of a credential's secret, unless the entry sets its own.
	DefaultPlaceholderPrefix = "egressd-placeholder-"
)

// InspectRule is one [[network.inspect]] entry.
type InspectRule struct {
	// Host is the name pattern (ParseRule syntax, never an IP rule) whose
	// TLS egressd terminates. Without a port it applies on every port the
	// allow list opens for the name.
	Host *Rule
	// Methods, if not empty, are the only methods allowed (upper case;
	// requests are compared case-insensitively).
	Methods []string
	// Paths, if not empty, are the only request paths allowed.
	Paths []*PathPattern
	// BlockMethods and BlockPaths are refused, whatever Methods and Paths
	// allow (block wins).
	BlockMethods []string
	BlockPaths   []*PathPattern
	// LogQuery keeps the query string in audit records; by default it is
	// dropped (it often carries tokens).
	LogQuery bool
	// Text is the entry as one inline TOML table: its identity when layers
	// merge, and how explain and GET /policy show it.
	Text string
	// Source is where the entry was written.
	Source Source
}

// HasPathRules reports whether the entry matches request paths, so that
// paths must be canonical (CanonicalPath) to be judged.
func (r *InspectRule) HasPathRules() bool { return len(r.Paths)+len(r.BlockPaths) > 0 }

// PathPattern is one request path pattern: a path starting with "/" where
// `*` matches within one segment, `**` across segments and `?` one byte of
// a segment. It is canonical (CanonicalPath) as written, so it compares
// with canonical request paths byte for byte.
type PathPattern struct {
	// Text is the pattern as written.
	Text    string
	literal bool
	glob    globPattern
	// folded is the pattern in lower case (itself when it has no upper
	// case), for MatchBlock.
	folded *PathPattern
}

// Match reports whether the canonical path p matches.
func (pp *PathPattern) Match(p string) bool {
	if pp.literal {
		return p == pp.Text
	}
	if len(p) > MaxPathLen {
		return false
	}
	var sa, sb [256]bool
	a, b := sa[:], sb[:]
	if len(p)+1 > len(a) {
		a, b = make([]bool, len(p)+1), make([]bool, len(p)+1)
	}
	return pp.glob.matchSep(p, '/', a, b)
}

// Credential is one [[network.credentials]] entry.
type Credential struct {
	// Host is the one name (normalised, no wildcard) whose requests get the
	// header.
	Host string
	// Header is the header set on each allowed request to Host, replacing
	// any the sandbox sent (canonical form, "X-Api-Key").
	Header string
	// Secret names the secret whose value the header carries: a secret the
	// launcher holds (--secret-env, --secret) or egressd serve was given
	// (--secret-file, --secret-env). Its value never enters the sandbox.
	Secret string
	// Prefix goes before the secret in the header value ("Bearer ").
	Prefix string
	// Placeholder is what the sandbox's variable named Secret holds:
	// DefaultPlaceholderPrefix + Secret unless the entry sets its own. A
	// request carrying it to another host is refused.
	Placeholder string
	// Text is the entry as one inline TOML table (no secret in it).
	Text string
	// Source is where the entry was written.
	Source Source
}

// RequestDecision is the verdict on one request inside an inspected
// session.
type RequestDecision struct {
	Allow bool
	// Reason is allowed-by, blocked-by or no-allow-rule.
	Reason Reason
	// Rule is the inspect entry that refused the request; nil for an allow.
	Rule *InspectRule
	// Key is the entry's key that decided ("block_paths", "methods", ...)
	// and Value what it held that decided: the blocked method or path
	// pattern, or the list that does not include the request.
	Key, Value string
}

// String renders "blocked-by block_paths "/v1/files" (policy.toml:9)" or
// "no-allow-rule methods ["GET", "POST"] (policy.toml:9)".
func (d RequestDecision) String() string {
	if d.Rule == nil {
		return string(d.Reason)
	}
	s := string(d.Reason) + " " + d.Key + " " + d.Value
	if src := d.Rule.Source.String(); src != "" {
		s += " (" + src + ")"
	}
	return s
}

// RuleText is the audit "rule" of a refusal: `block_paths "/v1/files"`.
func (d RequestDecision) RuleText() string {
	if d.Rule == nil {
		return ""
	}
	return d.Key + " " + d.Value
}

// Inspection is how the HTTPS of one name and port is inspected: every
// inspect entry that matches it, and the credentials for the name.
type Inspection struct {
	Name string
	Port uint16
	// Rules are the matching inspect entries, in the order written.
	Rules []*InspectRule
	// Credentials are the headers set on this name's requests.
	Credentials []*Credential
}

// Label is a bounded name for metrics: the host pattern of the first
// matching entry ("api.example.com", "*.github.com").
func (in *Inspection) Label() string {
	if len(in.Rules) == 0 {
		return ""
	}
	return in.Rules[0].Host.Text
}

// HasPathRules reports whether any entry matches paths, so that request
// paths must pass CanonicalPath before Decide.
func (in *Inspection) HasPathRules() bool {
	return slices.ContainsFunc(in.Rules, (*InspectRule).HasPathRules)
}

// HasMethodRules reports whether any entry decides methods (methods or
// block_methods), so that a request asking the server to run another
// method than its own (X-HTTP-Method-Override and the like) must be
// refused: the method decided is the one the server runs.
func (in *Inspection) HasMethodRules() bool {
	return slices.ContainsFunc(in.Rules, func(r *InspectRule) bool { return len(r.Methods)+len(r.BlockMethods) > 0 })
}

// LogQuery reports whether audit records keep query strings (any entry
// says so).
func (in *Inspection) LogQuery() bool {
	return slices.ContainsFunc(in.Rules, func(r *InspectRule) bool { return r.LogQuery })
}

// Decide decides one request: any entry's block_methods or block_paths
// refuse it (block wins; methods compared case-insensitively, paths by
// PathPattern.MatchBlock: case and one trailing slash ignored), then every
// entry's methods and paths that are not empty must include it (paths
// exactly). path must be canonical (CanonicalPath) when HasPathRules.
// Decide is pure; it allocates only for a path with upper-case letters
// when block paths apply.
func (in *Inspection) Decide(method, path string) RequestDecision {
	for _, r := range in.Rules {
		for _, m := range r.BlockMethods {
			if strings.EqualFold(m, method) {
				return RequestDecision{Reason: ReasonBlockedBy, Rule: r, Key: "block_methods", Value: tomlString(m)}
			}
		}
		for _, pp := range r.BlockPaths {
			if pp.MatchBlock(path) {
				return RequestDecision{Reason: ReasonBlockedBy, Rule: r, Key: "block_paths", Value: tomlString(pp.Text)}
			}
		}
	}
	for _, r := range in.Rules {
		if len(r.Methods) > 0 && !slices.ContainsFunc(r.Methods, func(m string) bool { return strings.EqualFold(m, method) }) {
			return RequestDecision{Reason: ReasonNoAllowRule, Rule: r, Key: "methods", Value: tomlStringList(r.Methods)}
		}
		if len(r.Paths) > 0 && !slices.ContainsFunc(r.Paths, func(pp *PathPattern) bool { return pp.Match(path) }) {
			texts := make([]string, len(r.Paths))
			for i, pp := range r.Paths {
				texts[i] = pp.Text
			}
			return RequestDecision{Reason: ReasonNoAllowRule, Rule: r, Key: "paths", Value: tomlStringList(texts)}
		}
	}
	return RequestDecision{Allow: true, Reason: ReasonAllowedBy}
}

// Inspection returns how name:port is inspected, or nil when no inspect
// entry matches (its TLS is spliced, not terminated). name must be
// normalised. A nil Matcher inspects nothing.
func (m *Matcher) Inspection(name string, port uint16) *Inspection {
	if m == nil || len(m.inspect) == 0 || name == "" {
		return nil
	}
	var in *Inspection
	for _, r := range m.inspect {
		if !r.Host.matchName(name) || !r.Host.portsMatch(port, nil, true) {
			continue
		}
		if in == nil {
			in = &Inspection{Name: name, Port: port, Credentials: m.CredentialsFor(name)}
		}
		in.Rules = append(in.Rules, r)
	}
	return in
}

// Inspects reports whether any inspect entry matches name on port.
func (m *Matcher) Inspects(name string, port uint16) bool {
	if m == nil {
		return false
	}
	for _, r := range m.inspect {
		if r.Host.matchName(name) && r.Host.portsMatch(port, nil, true) {
			return true
		}
	}
	return false
}

// CredentialsFor returns the credentials for the normalised name.
func (m *Matcher) CredentialsFor(name string) []*Credential {
	if m == nil {
		return nil
	}
	var out []*Credential
	for _, c := range m.credentials {
		if c.Host == name {
			out = append(out, c)
		}
	}
	return out
}

// Credentials returns every credential of the policy.
func (m *Matcher) Credentials() []*Credential {
	if m == nil {
		return nil
	}
	return slices.Clone(m.credentials)
}

// ErrAmbiguousPath is wrapped by CanonicalPath's errors.
var ErrAmbiguousPath = errors.New("ambiguous request path")

// CanonicalPath returns the canonical form of a request path (the part of
// an origin-form request-target before '?'), the one form path rules are
// matched against and the one egressd sends upstream: percent-escapes of
// unreserved characters decoded, other escapes in upper-case hex. A path a
// server could read as another path is refused (ErrAmbiguousPath) instead
// of guessed at: an escaped '/' or '\', a NUL, a '\' or ';' (servers that
// strip ";params" or treat '\' as '/'), a "." or ".." segment (escaped or
// not), an empty segment ("//") anywhere but the end, bytes outside RFC
// 3986's path characters, or a path over MaxPathLen. "*" (OPTIONS *) is
// returned as it is.
func CanonicalPath(raw string) (string, error) {
	bad := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("%w: %s", ErrAmbiguousPath, fmt.Sprintf(format, args...))
	}
	if raw == "*" {
		return raw, nil
	}
	if raw == "" || raw[0] != '/' {
		return bad("the path does not start with /")
	}
	if len(raw) > MaxPathLen {
		return bad("the path is %d bytes long, more than %d", len(raw), MaxPathLen)
	}
	var b strings.Builder
	b.Grow(len(raw))
	segStart := 0 // index in b of the current segment's first byte
	endSegment := func(last bool) error {
		seg := b.String()[segStart:]
		switch {
		case seg == "." || seg == "..":
			return fmt.Errorf("%w: a %q segment", ErrAmbiguousPath, seg)
		case seg == "" && !last:
			return fmt.Errorf("%w: an empty segment (//)", ErrAmbiguousPath)
		}
		return nil
	}
	b.WriteByte('/')
	segStart = 1
	for i := 1; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '/':
			if err := endSegment(false); err != nil {
				return "", err
			}
			b.WriteByte('/')
			segStart = b.Len()
		case c == '%':
			if i+2 >= len(raw) || !isHex(raw[i+1]) || !isHex(raw[i+2]) {
				return bad("a %% not followed by two hex digits")
			}
			v := unhex(raw[i+1])<<4 | unhex(raw[i+2])
			i += 2
			switch {
			case v == '/' || v == '\\':
				return bad("an escaped %q (%%%02X)", v, v)
			case v == 0:
				return bad("an escaped NUL (%%00)")
			case unreserved(v):
				b.WriteByte(v)
			default:
				fmt.Fprintf(&b, "%%%02X", v)
			}
		case c == ';' || c == '\\':
			return bad("a %q in the path", c)
		case unreserved(c) || strings.IndexByte("!$&'()*+,=:@", c) >= 0:
			b.WriteByte(c)
		default:
			return bad("byte %#02x in the path", c)
		}
	}
	if err := endSegment(true); err != nil {
		return "", err
	}
	return b.String(), nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// unreserved is RFC 3986's unreserved set: ALPHA DIGIT - . _ ~
func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// ParsePathPattern parses one path pattern of an inspect entry.
func ParsePathPattern(text string) (*PathPattern, error) {
	if len(text) > maxPathPatternLen {
		return nil, fmt.Errorf("longer than %d bytes", maxPathPatternLen)
	}
	if strings.Contains(text, "***") {
		return nil, errors.New("`***` is not a wildcard: use `*` inside one segment or `**` across segments")
	}
	// The wildcards are not path bytes: check the rest as a path, with each
	// wildcard standing in for a plain segment character.
	probe := strings.NewReplacer("*", "x", "?", "x").Replace(text)
	canon, err := CanonicalPath(probe)
	if err != nil || text == "*" {
		if text == "*" {
			return nil, errors.New(`"*" alone is not a path; use "/**" for every path`)
		}
		msg := strings.TrimPrefix(err.Error(), ErrAmbiguousPath.Error()+": ")
		return nil, errors.New(msg)
	}
	if canon != probe {
		return nil, errors.New("not in canonical form: write escapes of letters, digits and -._~ as the characters themselves, and other escapes in upper-case hex")
	}
	wild := strings.Count(text, "*") + strings.Count(text, "?")
	if wild > maxGlobWildcards {
		return nil, fmt.Errorf("more than %d wildcards", maxGlobWildcards)
	}
	pp := compilePathPattern(text, wild == 0)
	pp.folded = pp
	if lower := LowerASCII(text); lower != text {
		pp.folded = compilePathPattern(lower, wild == 0)
	}
	return pp, nil
}

func compilePathPattern(text string, literal bool) *PathPattern {
	if literal {
		return &PathPattern{Text: text, literal: true}
	}
	return &PathPattern{Text: text, glob: compileGlob(text)}
}

// MatchBlock reports whether the canonical path p matches the pattern as a
// block rule does: ASCII case ignored on both sides, and with or without
// one trailing slash ("/v1/admin" blocks "/v1/admin/", "/V1/Admin"). Common
// servers route those spellings to one handler (Express and ASP.NET match
// routes case-insensitively and ignore a trailing slash by default, Rails
// and Spring before 6 ignore the slash, servers on case-insensitive file
// systems ignore case), so a block that missed them would be dodged by a
// spelling. Allow rules (Match) stay exact: a spelling they
// do not list is refused, which fails closed.
func (pp *PathPattern) MatchBlock(p string) bool {
	f := pp.folded
	if f == nil {
		f = pp
	}
	lp := LowerASCII(p)
	if f.Match(lp) {
		return true
	}
	if len(lp) > 1 && lp[len(lp)-1] == '/' {
		return f.Match(lp[:len(lp)-1])
	}
	return lp != "*" && f.Match(lp+"/")
}

// LowerASCII returns s with ASCII upper-case letters in lower case (other
// bytes, UTF-8 included, stay, so indexes into s carry over); it allocates
// only when s has one.
func LowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// tokenByte is RFC 9110's tchar.
func tokenByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenByte(s[i]) {
			return false
		}
	}
	return true
}

func tomlStringList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = tomlString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// inspectKeys and credentialKeys are the keys of the two tables.
var (
	inspectKeys    = []string{"host", "methods", "paths", "block_methods", "block_paths", "log_query"}
	credentialKeys = []string{"host", "header", "secret", "prefix", "placeholder"}
)

// decodeInspect decodes an inspect entry: a table, or a host pattern string
// (`inspect = ["api.example.com"]`, the --inspect flag) for an entry
// without rules.
func decodeInspect(d *decoder, f *field, v *tval) (any, bool) {
	var hostVal *tval
	switch v.kind {
	case tString:
		hostVal = v
	case tTable:
		hostVal = v.m["host"]
		if hostVal == nil {
			d.errorf(v.pos, `for example: { host = "api.example.com", paths = ["/v1/messages"] }`, "%s: entry has no host", f.key)
			return nil, false
		}
	default:
		d.invalid(f, v)
		return nil, false
	}
	ok := true
	ir := &InspectRule{Source: v.pos}
	if hostVal.kind != tString {
		d.errorf(hostVal.pos, `for example: host = "api.example.com"`, "%s: host must be a string, not %s", f.key, describeValue(hostVal))
		return nil, false
	}
	r, err := ParseRule(hostVal.str, hostVal.pos)
	if err != nil {
		var pe *PatternError
		if errors.As(err, &pe) {
			d.errorf(hostVal.pos, pe.Hint, "%s: host %q is not a valid pattern: %s", f.key, hostVal.str, pe.Msg)
		} else {
			d.errorf(hostVal.pos, "", "%s: host: %v", f.key, err)
		}
		return nil, false
	}
	if r.IsIP() {
		d.errorf(hostVal.pos, "inspection checks each request's Host against the TLS name; name the host", "%s: host %q is an IP rule", f.key, hostVal.str)
		return nil, false
	}
	ir.Host = r
	if v.kind == tTable {
		for _, k := range v.keys {
			e := v.m[k]
			switch k {
			case "host":
			case "methods", "block_methods":
				list, good := decodeMethods(d, f, k, e)
				ok = ok && good
				if k == "methods" {
					ir.Methods = list
				} else {
					ir.BlockMethods = list
				}
			case "paths", "block_paths":
				list, good := decodePaths(d, f, k, e)
				ok = ok && good
				if k == "paths" {
					ir.Paths = list
				} else {
					ir.BlockPaths = list
				}
			case "log_query":
				if e.kind != tBool {
					d.errorf(e.pos, "for example: log_query = true", "%s: log_query must be true or false, not %s", f.key, describeValue(e))
					ok = false
				}
				ir.LogQuery = e.b
			default:
				d.unknownTableKey(f, e, k, inspectKeys)
				ok = false
			}
		}
	}
	if !ok {
		return nil, false
	}
	ir.Text = ir.render()
	return ir, true
}

func decodeMethods(d *decoder, f *field, key string, v *tval) ([]string, bool) {
	if v.kind != tArray || v.arrayOfTables {
		d.errorf(v.pos, `for example: `+key+` = ["GET", "POST"]`, "%s: %s must be an array of method names, not %s", f.key, key, describeValue(v))
		return nil, false
	}
	if len(v.elems) > maxInspectList {
		d.errorf(v.pos, "", "%s: %s has %d entries, more than the limit of %d", f.key, key, len(v.elems), maxInspectList)
		return nil, false
	}
	var out []string
	ok := true
	for _, e := range v.elems {
		if e.kind != tString || !isToken(e.str) {
			d.errorf(e.pos, `a method is a token such as "GET", "POST", "DELETE"`, "%s: %s: %s is not an HTTP method", f.key, key, describeElem(e))
			ok = false
			continue
		}
		m := strings.ToUpper(e.str)
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out, ok
}

func decodePaths(d *decoder, f *field, key string, v *tval) ([]*PathPattern, bool) {
	if v.kind != tArray || v.arrayOfTables {
		d.errorf(v.pos, `for example: `+key+` = ["/v1/messages", "/repos/acme/**"]`, "%s: %s must be an array of path patterns, not %s", f.key, key, describeValue(v))
		return nil, false
	}
	if len(v.elems) > maxInspectList {
		d.errorf(v.pos, "", "%s: %s has %d entries, more than the limit of %d", f.key, key, len(v.elems), maxInspectList)
		return nil, false
	}
	var out []*PathPattern
	ok := true
	for _, e := range v.elems {
		if e.kind != tString {
			d.errorf(e.pos, `a path pattern is a string such as "/v1/messages" or "/repos/acme/*"`, "%s: %s: each entry must be a string, not %s", f.key, key, describeValue(e))
			ok = false
			continue
		}
		pp, err := ParsePathPattern(e.str)
		if err != nil {
			d.errorf(e.pos, "a path starting with /; `*` matches inside one segment, `**` across segments, `?` one byte", "%s: %s: %q is not a path pattern: %v", f.key, key, e.str, err)
			ok = false
			continue
		}
		if !slices.ContainsFunc(out, func(o *PathPattern) bool { return o.Text == pp.Text }) {
			out = append(out, pp)
		}
	}
	return out, ok
}

// describeElem renders a list element for messages.
func describeElem(v *tval) string {
	if v.kind == tString {
		return strconv.Quote(v.str)
	}
	return describeValue(v)
}

// render is the entry as one inline TOML table, keys in schema order and
// empty ones left out.
func (r *InspectRule) render() string {
	parts := []string{"host = " + tomlString(r.Host.Text)}
	paths := func(l []*PathPattern) []string {
		out := make([]string, len(l))
		for i, p := range l {
			out[i] = p.Text
		}
		return out
	}
	if len(r.Methods) > 0 {
		parts = append(parts, "methods = "+tomlStringList(r.Methods))
	}
	if len(r.Paths) > 0 {
		parts = append(parts, "paths = "+tomlStringList(paths(r.Paths)))
	}
	if len(r.BlockMethods) > 0 {
		parts = append(parts, "block_methods = "+tomlStringList(r.BlockMethods))
	}
	if len(r.BlockPaths) > 0 {
		parts = append(parts, "block_paths = "+tomlStringList(paths(r.BlockPaths)))
	}
	if r.LogQuery {
		parts = append(parts, "log_query = true")
	}
	return "{ " + strings.Join(parts, ", ") + " }"
}

// hopHeaders are headers a credential may not set: they frame or route the
// request, or belong to one hop.
var hopHeaders = []string{"Connection", "Content-Length", "Content-Type", "Host", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Expect"}

// decodeCredential decodes a credentials entry.
func decodeCredential(d *decoder, f *field, v *tval) (any, bool) {
	if v.kind != tTable {
		d.invalid(f, v)
		return nil, false
	}
	c := &Credential{Source: v.pos}
	ok := true
	str := func(e *tval, k, example string) (string, bool) {
		if e.kind != tString {
			d.errorf(e.pos, "for example: "+example, "%s: %s must be a string, not %s", f.key, k, describeValue(e))
			return "", false
		}
		return e.str, true
	}
	placeholderSet := false
	for _, k := range v.keys {
		e := v.m[k]
		switch k {
		case "host":
			s, good := str(e, k, `host = "api.example.com"`)
			if !good {
				ok = false
				continue
			}
			n, valid := NormalizeName(s)
			if !valid || strings.ContainsAny(s, "*?:") {
				d.errorf(e.pos, "a credential goes to exactly one host: write its name, without wildcard or port", "%s: host %q is not a host name", f.key, s)
				ok = false
				continue
			}
			c.Host = n
		case "header":
			s, good := str(e, k, `header = "x-api-key"`)
			if !good {
				ok = false
				continue
			}
			canon := textproto.CanonicalMIMEHeaderKey(s)
			switch {
			case !isToken(s):
				d.errorf(e.pos, `for example: header = "Authorization"`, "%s: header %q is not a header name", f.key, s)
				ok = false
			case slices.Contains(hopHeaders, canon) || strings.HasPrefix(canon, "Proxy-"):
				d.errorf(e.pos, "credentials go in an authentication header such as Authorization or x-api-key", "%s: header %q frames or routes the request and cannot carry a credential", f.key, s)
				ok = false
			}
			c.Header = canon
		case "secret":
			s, good := str(e, k, `secret = "EXAMPLE_API_KEY"`)
			if !good {
				ok = false
				continue
			}
			if !ValidEnvName(s) {
				d.errorf(e.pos, "the secret's name is also the variable the sandbox sees its placeholder in: letters, digits and _", "%s: secret %q is not a variable name", f.key, s)
				ok = false
			}
			c.Secret = s
		case "prefix":
			s, good := str(e, k, `prefix = "Bearer "`)
			if !good {
				ok = false
				continue
			}
			if !headerValueOK(s) {
				d.errorf(e.pos, "", "%s: prefix holds a control character or invalid UTF-8", f.key)
				ok = false
			}
			c.Prefix = s
		case "placeholder":
			s, good := str(e, k, `placeholder = "sk-placeholder"`)
			if !good {
				ok = false
				continue
			}
			if len(s) < 8 || !headerValueOK(s) || strings.ContainsAny(s, " \t") {
				d.errorf(e.pos, "at least 8 printable characters without spaces, so it is recognised wherever the sandbox sends it", "%s: placeholder %q cannot be used", f.key, s)
				ok = false
			}
			c.Placeholder, placeholderSet = s, true
		default:
			d.unknownTableKey(f, e, k, credentialKeys)
			ok = false
		}
	}
	for _, k := range []string{"host", "header", "secret"} {
		if _, has := v.m[k]; !has {
			d.errorf(v.pos, `for example: { host = "api.example.com", header = "x-api-key", secret = "EXAMPLE_API_KEY" }`, "%s: entry has no %s", f.key, k)
			ok = false
		}
	}
	if !ok {
		return nil, false
	}
	if !placeholderSet {
		c.Placeholder = DefaultPlaceholderPrefix + c.Secret
	}
	parts := []string{"host = " + tomlString(c.Host), "header = " + tomlString(v.m["header"].str), "secret = " + tomlString(c.Secret)}
	if c.Prefix != "" {
		parts = append(parts, "prefix = "+tomlString(c.Prefix))
	}
	if placeholderSet {
		parts = append(parts, "placeholder = "+tomlString(c.Placeholder))
	}
	c.Text = "{ " + strings.Join(parts, ", ") + " }"
	return c, true
}

// headerValueOK reports whether s can be part of a header value.
func headerValueOK(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// checkInspection refuses what cannot work: a credential for a host no
// inspect entry terminates, two credentials setting one header of one
// host, and a credential's secret that env.pass or env.set would also put
// into the sandbox.
func checkInspection(p *Profile) ErrorList {
	var errs ErrorList
	n := p.Network
	for i, c := range n.Credentials {
		inspected := slices.ContainsFunc(n.Inspect, func(r *InspectRule) bool { return r.Host.matchName(c.Host) })
		if !inspected {
			errs = append(errs, &Error{Pos: c.Source,
				Msg:  fmt.Sprintf("network.credentials for %s: %s is not inspected, so egressd cannot add a header to its requests", c.Host, c.Host),
				Hint: fmt.Sprintf("add [[network.inspect]] with host = %q", c.Host)})
		}
		for _, o := range n.Credentials[:i] {
			if o.Host == c.Host && o.Header == c.Header {
				errs = append(errs, &Error{Pos: c.Source,
					Msg:  fmt.Sprintf("network.credentials: header %s of %s is already set by the entry at %s", c.Header, c.Host, positionString(o.Source)),
					Hint: "keep one entry per host and header"})
			}
		}
	}
	// The secrets' variables, after the entries themselves.
	for _, c := range n.Credentials {
		if slices.Contains(p.Env.Pass, c.Secret) {
			errs = append(errs, &Error{Pos: p.Sources[elemKey("env.pass", c.Secret)],
				Msg:  fmt.Sprintf("env.pass %s would give the sandbox the secret that network.credentials (%s) keeps out of it", c.Secret, positionString(c.Source)),
				Hint: "remove it from env.pass: the sandbox gets the placeholder " + strconv.Quote(c.Placeholder)})
		}
		if _, set := p.Env.Set[c.Secret]; set {
			errs = append(errs, &Error{Pos: p.Sources["env.set."+c.Secret],
				Msg:  fmt.Sprintf("env.set %s conflicts with network.credentials (%s), which gives the sandbox a placeholder in that variable", c.Secret, positionString(c.Source)),
				Hint: "remove it from env.set"})
		}
	}
	return errs
}

// analyseInspection warns about inspect entries that can have no effect:
// every entry when the mode filters nothing, and an entry for a name no
// allow rule allows (inspection never allows a host).
func (r *resolver) analyseInspection() {
	n := r.p.Network
	modeSrc := positionString(r.p.Sources["network.mode"])
	if !n.Mode.Proxied() {
		for _, ir := range n.Inspect {
			r.warn(ir.Source, "inspect %q has no effect: network.mode = %s (%s) sends nothing through egressd", ir.Host.Text, n.Mode, modeSrc)
		}
		for _, c := range n.Credentials {
			r.warn(c.Source, "credentials for %s have no effect: network.mode = %s (%s) sends nothing through egressd", c.Host, n.Mode, modeSrc)
		}
		return
	}
	if len(n.Inspect) == 0 {
		return
	}
	m, err := NewMatcher(r.p.NetworkPolicy())
	if err != nil {
		return
	}
	for _, ir := range n.Inspect {
		if ir.Host.kind == kindExact && !m.DecideNameAnyPort(ir.Host.name).Allow {
			r.warn(ir.Source, "inspect %q has no effect: no allow rule allows %s (inspection restricts a host, it never allows one)", ir.Host.Text, ir.Host.name)
		}
	}
}
