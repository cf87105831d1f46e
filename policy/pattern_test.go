package policy

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// describe renders the compiled form of a rule for table tests.
func describeRule(r *Rule) string {
	var s string
	switch r.kind {
	case kindExact:
		s = "exact " + r.name
	case kindBelow:
		s = "below " + r.name
	case kindApex:
		s = "apex " + r.name
	case kindGlob:
		s = "glob " + r.name
	case kindAny:
		s = "any"
	case kindPrefix:
		s = "ip " + r.prefix.String()
	default:
		s = fmt.Sprintf("kind(%d)", r.kind)
	}
	if r.hasPort {
		s += fmt.Sprintf(" port %d-%d", r.portLo, r.portHi)
	}
	return s
}

func TestParseRuleCompilesEveryPatternShape(t *testing.T) {
	tests := []struct{ in, want string }{
		// exact
		{"example.com", "exact example.com"},
		{"Example.COM.", "exact example.com"},
		{"bücher.de", "exact xn--bcher-kva.de"},
		{"ｇithub.com", "exact github.com"},
		{"_acme.example.com", "exact _acme.example.com"},
		{"localhost", "exact localhost"},
		// *.suffix
		{"*.example.com", "below example.com"},
		{"*.Example.com.", "below example.com"},
		{"*.bücher.de", "below xn--bcher-kva.de"},
		{"*.com", "below com"},
		// .suffix
		{".example.com", "apex example.com"},
		{".EXAMPLE.com", "apex example.com"},
		// globs
		{"api-*.example.com", "glob api-*.example.com"},
		{"API-*.Example.com", "glob api-*.example.com"},
		{"**.example.com", "glob **.example.com"},
		{"*.*.example.com", "glob *.*.example.com"},
		{"a?c.example.com", "glob a?c.example.com"},
		{"*-api.example.com", "glob *-api.example.com"},
		{"foo.*.example.com", "glob foo.*.example.com"},
		{"api-*.example.com.", "glob api-*.example.com"},
		// any
		{"*", "any"},
		{"*:443", "any port 443-443"},
		// IP literals and ranges
		{"203.0.113.7", "ip 203.0.113.7/32"},
		{"203.0.113.0/24", "ip 203.0.113.0/24"},
		{"2001:db8::/32", "ip 2001:db8::/32"},
		{"2001:DB8::1", "ip 2001:db8::1/128"},
		{"[2001:db8::1]", "ip 2001:db8::1/128"},
		{"::ffff:203.0.113.7", "ip 203.0.113.7/32"},
		{"::ffff:10.0.0.0/104", "ip 10.0.0.0/8"},
		{"0.0.0.0/0", "ip 0.0.0.0/0"},
		{"::/0", "ip ::/0"},
		// ports
		{"example.com:443", "exact example.com port 443-443"},
		{"example.com:8000-8100", "exact example.com port 8000-8100"},
		{"example.com:*", "exact example.com port 1-65535"},
		{"*.example.com:443", "below example.com port 443-443"},
		{".example.com:1-65535", "apex example.com port 1-65535"},
		{"api-*.example.com:8443", "glob api-*.example.com port 8443-8443"},
		{"203.0.113.7:22", "ip 203.0.113.7/32 port 22-22"},
		{"203.0.113.0/24:443", "ip 203.0.113.0/24 port 443-443"},
		{"[2001:db8::1]:443", "ip 2001:db8::1/128 port 443-443"},
		{"[2001:db8::/32]:443", "ip 2001:db8::/32 port 443-443"},
		{"[2001:db8::1]:*", "ip 2001:db8::1/128 port 1-65535"},
		{"example.com:65535", "exact example.com port 65535-65535"},
		{"example.com:1", "exact example.com port 1-1"},
		{"example.com:443-443", "exact example.com port 443-443"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			r, err := ParseRule(tc.in, Flag("--allow"))
			if err != nil {
				t.Fatalf("ParseRule(%q): %v", tc.in, err)
			}
			if diff := cmp.Diff(tc.want, describeRule(r)); diff != "" {
				t.Errorf("ParseRule(%q) (-want +got):\n%s", tc.in, diff)
			}
			if r.Text != tc.in || r.Source != Flag("--allow") {
				t.Errorf("Text/Source = %q/%v, want %q/%v", r.Text, r.Source, tc.in, Flag("--allow"))
			}
		})
	}
}

func TestParseRuleRefusesBadPatternsWithAHint(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		in string
		// msg and hint are substrings the error must contain.
		msg, hint string
	}{
		{"*github.com", "merely end in it", "did you mean `*.github.com`"},
		{"*GitHub.com", "merely end in it", "did you mean `*.github.com`"},
		{"http://x/", "hosts, not URLs", "did you mean `x`?"},
		{"https://github.com/foo", "hosts, not URLs", "did you mean `github.com`?"},
		{"github.com/foo", "cannot have a path", "did you mean `github.com`?"},
		{"github.com:0", "bad port `0`", "1-65535"},
		{"github.com:70000", "bad port `70000`", "1-65535"},
		{"github.com:100-50", "first port is above the last", "did you mean `50-100`?"},
		{"github.com:0443", "bad port `0443`", "1-65535"},
		{"github.com:+443", "bad port `+443`", "1-65535"},
		{"github.com:-1", "bad port ``", "1-65535"},
		{"github.com:", "empty port", "1-65535"},
		{"github.com:https", "bad port `https`", "1-65535"},
		{"github.com:443-", "bad port ``", "1-65535"},
		{"10.0.0.1/8", "host bits set", "did you mean `10.0.0.0/8`?"},
		{"2001:db8::1/32", "host bits set", "did you mean `2001:db8::/32`?"},
		{"10.0.0.0/33", "not a valid IP range", "canonical range"},
		{"010.0.0.0/8", "not a valid IP range", "canonical range"},
		{"fd00::/8:443", "not a valid IP range", "`[2001:db8::/32]:443`"},
		{"127.1", "not a canonical IP address", "without leading zeros"},
		{"0177.0.0.1", "not a canonical IP address", "without leading zeros"},
		{"0x7f000001", "not a canonical IP address", "without leading zeros"},
		{"2130706433", "not a canonical IP address", "without leading zeros"},
		{"example.123", "last label is a number", "IP rules"},
		{"127｡0｡0｡1", "not a canonical IP address", "127.0.0.1"},
		{"api-*.example.123", "last label is a number", "IP rules"},
		{"fe80::1%eth0", "zones are not allowed", "drop the `%zone`"},
		{"[fe80::1%eth0]:443", "zones are not allowed", "drop the `%zone`"},
		{"[github.com]:443", "only for IPv6", "did you mean `github.com:443`?"},
		{"[[::1]]:443", "nested brackets", ""},
		{"[::1", "unclosed '['", "[2001:db8::1]:443"},
		{"[::1]443", "after ']'", "[2001:db8::1]:443"},
		{"github.com]", "only for IPv6", "[2001:db8::1]:443"},
		{"2001:db8::zz", "not a valid IPv6 address", "zones are not allowed"},
		{"user@github.com", "'@'", "host name alone"},
		{"github.com\\evil", "'\\'", "host name alone"},
		{"%65vil.example", "'%'", "host name alone"},
		{"", "empty pattern", ""},
		{" github.com", "leading or trailing space", "did you mean `github.com`?"},
		{"git hub.com", "space or control", ""},
		{"github.com\x00", "space or control", ""},
		{"a..example.com", "empty label", ""},
		{"..example.com", "empty label", "did you mean `example.com`?"},
		{".", "empty name", ""},
		{"example.com..", "more than one trailing dot", "did you mean `example.com`?"},
		{long + ".com", "label longer than 63", ""},
		{strings.Repeat("a.", 127) + "com", "longer than 253", ""},
		{"exa$mple.com", "not allowed in a host name", ""},
		{"xn--zz.com", "not a valid A-label", ""},
		{"gi\u200dthub.com", "internationalised", ""},
		{":443", "empty host", ""},
		{"*.", "empty name", ""},
		{".*.example.com", "leading '.'", "`*.example.com`"},
		{"a[bc].example.com", "only for IPv6", ""},
		{"a{b,c}.example.com", "'{' is not allowed in a host name", ""},
		{"a{b,c}*.example.com", "'{' is not allowed in a glob", "`*`"},
		{"***.example.com", "`***`", "`**` across labels"},
		{"*.ex*mple.ç.com", "ASCII", "xn--"},
		{"*.*.*.*.*.*.*.*.*.example.com", "too many wildcards", "at most 8"},
		{"a*.." + "example.com", "empty label", ""},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			r, err := ParseRule(tc.in, Source{})
			if err == nil {
				t.Fatalf("ParseRule(%q) = %s, want an error", tc.in, describeRule(r))
			}
			var pe *PatternError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *PatternError: %v", err, err)
			}
			if pe.Text != tc.in {
				t.Errorf("PatternError.Text = %q, want %q", pe.Text, tc.in)
			}
			if !strings.Contains(pe.Msg, tc.msg) {
				t.Errorf("Msg = %q, want it to contain %q", pe.Msg, tc.msg)
			}
			if !strings.Contains(pe.Hint, tc.hint) {
				t.Errorf("Hint = %q, want it to contain %q", pe.Hint, tc.hint)
			}
			if !strings.HasPrefix(err.Error(), "`"+tc.in+"` is not a pattern: ") {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

func TestPatternErrorMessageReadsAsOneSentence(t *testing.T) {
	_, err := ParseRule("*github.com", Source{})
	want := "`*github.com` is not a pattern: `*` directly before a name also matches names that merely end in it (evilgithub.com); did you mean `*.github.com` (names below it) or `.github.com` (it and names below it)?"
	if diff := cmp.Diff(want, err.Error()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestRuleCovers(t *testing.T) {
	tests := []struct {
		r, o string
		want bool
	}{
		{"github.com", "github.com", true},
		{"github.com", "GitHub.com.", true},
		{"github.com", "api.github.com", false},
		{"github.com:443", "github.com", false},
		{"github.com", "github.com:443", true},
		{"github.com:*", "github.com:8000-8100", true},
		{"github.com:8000-8100", "github.com:8000-8001", true},
		{"github.com:8000-8100", "github.com:7999-8001", false},
		{".github.com", "github.com", true},
		{".github.com", "a.b.github.com", true},
		{".github.com", "*.github.com", true},
		{".github.com", ".api.github.com", true},
		{".github.com", "api-*.github.com", false},
		{".github.com", "notgithub.com", false},
		{"*.github.com", "github.com", false},
		{"*.github.com", ".github.com", false},
		{"*.github.com", "api.github.com", true},
		{"*.github.com", ".api.github.com", true},
		{"*.github.com", "*.github.com", true},
		{"*.github.com", "*.api.github.com", true},
		{"*.github.com", "evil-github.com", false},
		{"api-*.github.com", "api-v3.github.com", true},
		{"api-*.github.com", "api-*.github.com", true},
		{"api-*.github.com", "api-v*.github.com", false},
		{"*", "anything.example", true},
		{"*", "*.example.com", true},
		{"*", "api-*.example.com", true},
		{"*", "203.0.113.7", false},
		{"*:443", "github.com", false},
		{"203.0.113.0/24", "203.0.113.7", true},
		{"203.0.113.0/24", "203.0.113.0/25", true},
		{"203.0.113.0/25", "203.0.113.0/24", false},
		{"0.0.0.0/0", "::1", false},
		{"::/0", "2001:db8::1", true},
		{"203.0.113.0/24", "github.com", false},
		{"github.com", "203.0.113.7", false},
	}
	for _, tc := range tests {
		r, err := ParseRule(tc.r, Source{})
		if err != nil {
			t.Fatal(err)
		}
		o, err := ParseRule(tc.o, Source{})
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Covers(o); got != tc.want {
			t.Errorf("(%s).Covers(%s) = %v, want %v", tc.r, tc.o, got, tc.want)
		}
	}
	var nilRule *Rule
	if nilRule.Covers(nilRule) || nilRule.IsIP() {
		t.Error("nil rule must cover nothing and not be an IP rule")
	}
}

// TestGlobCannotBeMadeToBacktrack stops a decision-time denial of service:
// gobwas/glob's backtracking matcher needs seconds for these globs against
// a label of a's; the Matcher's matcher is linear in pattern × name.
func TestGlobCannotBeMadeToBacktrack(t *testing.T) {
	label := strings.Repeat("a", 62) + "c"
	names := []string{label, label + ".a", strings.Repeat("a.", 125) + "ac", strings.Repeat("aa.", 83) + "bc"}
	for _, pat := range []string{"*a*a*a*a*a*a*b*c", "*a?*a*a*a*a*b*c.a", "**a**a**b**c", "?*?*?*.**a"} {
		m := newTestMatcher(t, []string{pat}, nil)
		re := regexp.MustCompile(globToRegexp(pat))
		for _, n := range names {
			start := time.Now()
			for range 100 {
				if d := m.DecideName(n, 443); d.Allow != re.MatchString(n) {
					t.Fatalf("%s: %s for %s, regexp says %v", pat, d, n, re.MatchString(n))
				}
			}
			if el := time.Since(start) / 100; el > 2*time.Millisecond {
				t.Errorf("glob %q against %d-byte name: %v per decision", pat, len(n), el)
			}
		}
	}
}
