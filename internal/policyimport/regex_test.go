package policyimport

import (
	"math/rand/v2"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/policy"
)

func TestTranslateRegex(t *testing.T) {
	tests := []struct {
		re   string
		want []string // nil with ok false: refused
		ok   bool
		ips  bool
	}{
		{re: `^api\.github\.com$`, want: []string{"api.github.com"}, ok: true},
		{re: `^API\.GitHub\.com$`, want: []string{"api.github.com"}, ok: true},
		{re: `^api[.]github[.]com$`, want: []string{"api.github.com"}, ok: true},
		{re: `.*\.example\.com$`, want: []string{"*.example.com"}, ok: true},
		{re: `^.*\.example\.com$`, want: []string{"*.example.com"}, ok: true},
		{re: `\.example\.com$`, want: []string{"*.example.com"}, ok: true},
		{re: `^.+\.example\.com$`, want: []string{"*.example.com"}, ok: true},
		{re: `^(.*\.)?example\.com$`, want: []string{".example.com"}, ok: true},
		{re: `(^|\.)example\.com$`, want: []string{".example.com"}, ok: true},
		{re: `^(api|uploads)\.github\.com$`, want: []string{"api.github.com", "uploads.github.com"}, ok: true},
		{re: `^[^.]+\.s3\.amazonaws\.com$`, want: []string{"?*.s3.amazonaws.com"}, ok: true},
		{re: `^api-[^.]*\.example\.com$`, want: []string{"api-*.example.com"}, ok: true},
		{re: `github\.com$`, want: []string{"**github.com"}, ok: true},
		{re: `^github\.com`, want: []string{"github.com**"}, ok: true},
		{re: `evil`, want: []string{"**evil**"}, ok: true},
		{re: `.*`, want: []string{"*"}, ok: true, ips: true},
		{re: ``, want: []string{"*"}, ok: true, ips: true},
		{re: `^10\.0\.0\.1$`, want: []string{"10.0.0.1"}, ok: true},
		{re: `^10\.`, want: []string{"10.**"}, ok: true, ips: true},
		{re: `^localhost$`, want: []string{"localhost"}, ok: true},
		{re: `^api\.github\.com:443$`, ok: true},  // a port is never in the host: matches nothing
		{re: `^a\.\.b$`, ok: true},                // an empty label: matches no valid name
		{re: `^1\.2\.3$`, ok: true},               // an invalid (numeric) name
		{re: `^api.github.com$`},                  // unescaped dots match any character
		{re: `^[a-z0-9-]+\.example\.com$`},        // leaves out '_', which * matches
		{re: `^[a-z]\.example\.com$`},             // one of several characters
		{re: `^a{2}\.example\.com$`},              // counted repeat (Simplify makes it aa: allowed)
		{re: `^.+github\.com$`},                   // .+ where empty leaves a valid name
		{re: `\bexample\b`},                       // word boundary
		{re: `^(a|b|c|d|e)(a|b|c|d|e)\.example$`}, // 25 alternatives
		{re: `^(unclosed`}, // not a regex
		{re: `^a^b$`},      // anchor in the middle
	}
	for _, tt := range tests {
		tr := TranslateRegex(tt.re)
		if tt.re == `^a{2}\.example\.com$` {
			// Simplify writes a{2} as aa: exact, so accepted.
			tt.ok, tt.want = true, []string{"aa.example.com"}
		}
		if (tr.Err == nil) != tt.ok {
			t.Errorf("%q: err = %v, want ok %v", tt.re, tr.Err, tt.ok)
			continue
		}
		if diff := cmp.Diff(tt.want, tr.Patterns); diff != "" {
			t.Errorf("%q: patterns (-want +got):\n%s", tt.re, diff)
		}
		if tr.IPs != tt.ips {
			t.Errorf("%q: IPs = %v, want %v", tt.re, tr.IPs, tt.ips)
		}
	}
}

// regexCorpus holds regexes of every shape the translator meets, accepted
// or refused.
var regexCorpus = []string{
	`^api\.github\.com$`, `.*\.example\.com$`, `\.example\.com$`, `^.+\.example\.com$`,
	`^(.*\.)?example\.com$`, `(^|\.)example\.com$`, `^(api|uploads)\.github\.com$`,
	`^[^.]+\.s3\.amazonaws\.com$`, `^api-[^.]*\.example\.com$`, `github\.com$`, `^github\.com`,
	`evil`, `.*`, `^10\.`, `^a\.[^.]*\.b\.[^.]+$`, `^(a|b)?\.?example\.com$`, `x.+\.com$`,
	`^.+\..+$`, `^[^.]*$`, `com$`, `^(www\.)?example\.(com|org)$`, `.*\..*\.example$`,
	`^a.*b\.c$`, `^.*-x\.example\.com$`, `^[Ee]xample\.com$`, `^.+$`, `^..+\.com$`,
	`^[^.]+$`, `^.+\.$`, `\..+\.`, `^example\.com\.?$`, `a\.b|c\.d`, `^.*\.?example\.com$`,
}

// TestRegexTranslationNeverWidens is the guarantee: for every valid host
// name, a translated pattern matches it only if the regex does (and, the
// translation being exact, whenever the regex does). A translation broader
// than its regex would let a sandbox reach what an isol8 whitelist denied,
// or slip past a blacklist entry.
func TestRegexTranslationNeverWidens(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, expr := range regexCorpus {
		tr := TranslateRegex(expr)
		if tr.Err != nil {
			continue
		}
		oracle := regexp.MustCompile(`(?i)` + expr)
		m := allowMatcher(t, tr.Patterns)
		names := probeNames(rng, expr, 3000)
		for _, name := range names {
			n, ok := policy.NormalizeName(name)
			if !ok {
				continue
			}
			got := m != nil && m.DecideName(n, 443).Allow
			want := oracle.MatchString(n)
			if got && !want {
				t.Errorf("%q → %v is BROADER: it matches %q, the regex does not", expr, tr.Patterns, n)
			}
			if want && !got && !(tr.IPs && looksIPv4(n)) {
				t.Errorf("%q → %v is narrower: it misses %q", expr, tr.Patterns, n)
			}
		}
		for _, a := range []string{"10.0.0.1", "1.2.3.4", "127.0.0.1"} {
			addr := netip.MustParseAddr(a)
			got := m != nil && m.DecideAddr(addr, 443).Allow
			if got && !oracle.MatchString(a) {
				t.Errorf("%q → %v is BROADER: it matches the address %s", expr, tr.Patterns, a)
			}
			if !got && oracle.MatchString(a) && !tr.IPs && !slices.ContainsFunc(tr.Patterns, func(p string) bool { return p == "*" }) {
				t.Errorf("%q → %v misses the address %s without saying so (IPs false)", expr, tr.Patterns, a)
			}
		}
	}
}

func looksIPv4(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

// allowMatcher compiles patterns as an allow list on every port.
func allowMatcher(t *testing.T, pats []string) *policy.Matcher {
	t.Helper()
	if len(pats) == 0 {
		return nil
	}
	var rules []*policy.Rule
	for _, p := range pats {
		r, err := policy.ParseRule(p+":*", policy.Source{})
		if strings.HasPrefix(p, "[") || strings.Count(p, ":") > 1 {
			r, err = policy.ParseRule(p, policy.Source{})
		}
		if err != nil {
			t.Fatalf("translation %q is not an egressd pattern: %v", p, err)
		}
		rules = append(rules, r)
	}
	m, err := policy.NewMatcher(policy.NetworkPolicy{Mode: policy.ModeFiltered, Allow: rules, DefaultPorts: []uint16{80, 443}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// probeNames makes names near the regex: its literal fragments glued with
// random labels, dots and the separators the regex itself uses.
func probeNames(rng *rand.Rand, expr string, n int) []string {
	frags := []string{"a", "b", "x", "com", "example", "github", "api", "s3", "-", "_", "1", "10", ".", "..", "evil", "www", "org"}
	var lit strings.Builder
	for _, c := range expr {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' {
			lit.WriteRune(c)
			continue
		}
		if lit.Len() > 0 {
			frags = append(frags, strings.ToLower(lit.String()))
			lit.Reset()
		}
	}
	if lit.Len() > 0 {
		frags = append(frags, strings.ToLower(lit.String()))
	}
	out := make([]string, 0, n+len(frags))
	for _, f := range frags {
		out = append(out, f, f+".com", "x."+f, f+"."+f)
	}
	for range n {
		var b strings.Builder
		for k := 1 + rng.IntN(5); k > 0; k-- {
			b.WriteString(frags[rng.IntN(len(frags))])
			if rng.IntN(2) == 0 {
				b.WriteByte('.')
			}
		}
		out = append(out, b.String())
	}
	return out
}

// FuzzRegexTranslationNeverWidens checks the guarantee on regexes and
// names the fuzzer chooses: where a translation exists, it matches a valid
// name exactly when the regex does.
func FuzzRegexTranslationNeverWidens(f *testing.F) {
	for _, re := range regexCorpus {
		f.Add(re, "api.github.com")
		f.Add(re, "a.example.com")
	}
	f.Fuzz(func(t *testing.T, expr, name string) {
		if len(expr) > 200 {
			return
		}
		tr := TranslateRegex(expr)
		if tr.Err != nil || len(tr.Patterns) == 0 {
			return
		}
		oracle, err := regexp.Compile(`(?i)` + expr)
		if err != nil {
			t.Fatalf("%q translated to %v but Go's regexp refuses it: %v", expr, tr.Patterns, err)
		}
		n, ok := policy.NormalizeName(name)
		if !ok {
			return
		}
		m := allowMatcher(t, tr.Patterns)
		got := m.DecideName(n, 443).Allow
		want := oracle.MatchString(n)
		if got && !want {
			t.Fatalf("%q → %v is BROADER: it matches %q, the regex does not", expr, tr.Patterns, n)
		}
		if want && !got && !(tr.IPs && looksIPv4(n)) {
			t.Fatalf("%q → %v is narrower: it misses %q", expr, tr.Patterns, n)
		}
	})
}
