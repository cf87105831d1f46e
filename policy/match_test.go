package policy

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// dec is a Decision with the rule reduced to its text, for diffs.
type dec struct {
	Allow  bool
	Reason Reason
	Rule   string
}

func summarize(d Decision) dec {
	s := dec{Allow: d.Allow, Reason: d.Reason}
	if d.Rule != nil {
		s.Rule = d.Rule.Text
	}
	return s
}

func wantAllowed(rule string) dec { return dec{Allow: true, Reason: ReasonAllowedBy, Rule: rule} }
func wantBlocked(rule string) dec { return dec{Reason: ReasonBlockedBy, Rule: rule} }
func wantGuarded() dec            { return dec{Reason: ReasonGuardedAddress} }
func wantInvalid() dec            { return dec{Reason: ReasonInvalidName} }
func wantNoRule() dec             { return dec{Reason: ReasonNoAllowRule} }
func wantGuardPass() dec          { return dec{Allow: true, Reason: ReasonAllowedBy} }
func parseRules(t testing.TB, texts []string, src Source) []*Rule {
	t.Helper()
	var rules []*Rule
	for i, text := range texts {
		s := src
		s.Line = i + 1
		r, err := ParseRule(text, s)
		if err != nil {
			t.Fatalf("ParseRule(%q): %v", text, err)
		}
		rules = append(rules, r)
	}
	return rules
}

func newTestMatcher(t testing.TB, allow, block []string) *Matcher {
	t.Helper()
	m, err := NewMatcher(NetworkPolicy{
		Mode:  ModeFiltered,
		Allow: parseRules(t, allow, Source{Kind: SourceFile, File: "allow.toml"}),
		Block: parseRules(t, block, Source{Kind: SourceFile, File: "block.toml"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type probe struct {
	host string
	port uint16
	want dec
}

// decideProbe decides an IP literal with DecideAddr and anything else with
// DecideName, and checks Decide(ParseTarget(...)) agrees.
func decideProbe(t *testing.T, m *Matcher, p probe) {
	t.Helper()
	var got Decision
	if a, ok := ParseIP(p.host); ok {
		got = m.DecideAddr(a, p.port)
	} else {
		got = m.DecideName(p.host, p.port)
	}
	if diff := cmp.Diff(p.want, summarize(got)); diff != "" {
		t.Errorf("decide %q port %d (-want +got):\n%s", p.host, p.port, diff)
	}
	// The same destination through ParseTarget and Decide.
	hostport := p.host
	if strings.Contains(p.host, ":") {
		hostport = "[" + p.host + "]"
	}
	tg, err := ParseTarget(hostport+":"+strconv.Itoa(int(p.port)), 0)
	if err != nil {
		if p.want.Reason != ReasonInvalidName {
			t.Errorf("ParseTarget(%q): %v, want a target", hostport, err)
		}
		return
	}
	if diff := cmp.Diff(p.want, summarize(m.Decide(tg))); diff != "" {
		t.Errorf("Decide(%v) (-want +got):\n%s", tg, diff)
	}
}

func TestDecideFollowsThePatternTable(t *testing.T) {
	tests := []struct {
		name         string
		allow, block []string
		probes       []probe
	}{
		{
			name:  "exact name matches only itself (B3, B4)",
			allow: []string{"github.com"},
			probes: []probe{
				{"github.com", 443, wantAllowed("github.com")},
				{"GitHub.COM", 443, wantAllowed("github.com")},
				{"github.com.", 443, wantAllowed("github.com")},
				{"api.github.com", 443, wantNoRule()},
				{"notgithub.com", 443, wantNoRule()},
				{"github.comx", 443, wantNoRule()},
				{"evil-github.com", 443, wantNoRule()},
				{"github.com.evil.com", 443, wantNoRule()},
				{"github.co", 443, wantNoRule()},
				{"ithub.com", 443, wantNoRule()},
				{"github.com..", 443, wantInvalid()},
				{"attacker.example\x00.github.com", 443, wantInvalid()},
				{"github.com\x00", 443, wantInvalid()},
			},
		},
		{
			name:  "*.suffix matches strictly below at any depth, never the apex (B3, B4, B5)",
			allow: []string{"*.github.com"},
			probes: []probe{
				{"api.github.com", 443, wantAllowed("*.github.com")},
				{"a.b.c.github.com", 443, wantAllowed("*.github.com")},
				{"API.GitHub.com.", 443, wantAllowed("*.github.com")},
				{"github.com", 443, wantNoRule()},
				{"evil-github.com", 443, wantNoRule()},
				{"notgithub.com", 443, wantNoRule()},
				{"github.com.evil.com", 443, wantNoRule()},
				{"api.github.com.evil.com", 443, wantNoRule()},
				{"apigithub.com", 443, wantNoRule()},
				{"api.github.comx", 443, wantNoRule()},
				{"evil.example\x00.github.com", 443, wantInvalid()},
				{".github.com", 443, wantInvalid()},
			},
		},
		{
			name:  ".suffix matches the apex and everything below",
			allow: []string{".github.com"},
			probes: []probe{
				{"github.com", 443, wantAllowed(".github.com")},
				{"api.github.com", 443, wantAllowed(".github.com")},
				{"a.b.github.com", 443, wantAllowed(".github.com")},
				{"notgithub.com", 443, wantNoRule()},
				{"github.comx", 443, wantNoRule()},
				{"github.com.evil.com", 443, wantNoRule()},
			},
		},
		{
			name:  "glob: * within one label, ** across labels",
			allow: []string{"api-*.example.com", "**.deep.test", "a?c.q.test", "foo.*.mid.test"},
			probes: []probe{
				{"api-v1.example.com", 443, wantAllowed("api-*.example.com")},
				{"API-V1.example.com", 443, wantAllowed("api-*.example.com")},
				{"api-.example.com", 443, wantAllowed("api-*.example.com")},
				{"api-v1.x.example.com", 443, wantNoRule()},
				{"x.api-v1.example.com", 443, wantNoRule()},
				{"api.example.com", 443, wantNoRule()},
				{"api-v1.example.com.evil.com", 443, wantNoRule()},
				{"a.deep.test", 443, wantAllowed("**.deep.test")},
				{"a.b.c.deep.test", 443, wantAllowed("**.deep.test")},
				{"deep.test", 443, wantNoRule()},
				{"notdeep.test", 443, wantNoRule()},
				{"abc.q.test", 443, wantAllowed("a?c.q.test")},
				{"ac.q.test", 443, wantNoRule()},
				{"a.c.q.test", 443, wantNoRule()},
				{"foo.x.mid.test", 443, wantAllowed("foo.*.mid.test")},
				{"foo.x.y.mid.test", 443, wantNoRule()},
			},
		},
		{
			name:  "* matches every name but never an IP",
			allow: []string{"*"},
			probes: []probe{
				{"anything.example", 443, wantAllowed("*")},
				{"localhost", 80, wantAllowed("*")},
				{"anything.example", 22, wantNoRule()},
				{"203.0.113.7", 443, wantNoRule()},
				{"2001:db8::1", 443, wantNoRule()},
				{"127.0.0.1", 443, wantNoRule()},
				{"0x7f000001", 443, wantInvalid()},
				{"127｡0｡0｡1", 443, wantInvalid()},
			},
		},
		{
			name:  "IP and CIDR rules match addresses only",
			allow: []string{"203.0.113.7", "198.51.100.0/24", "2001:db8::/32", "[2001:db8:1::1]:8443"},
			probes: []probe{
				{"203.0.113.7", 443, wantAllowed("203.0.113.7")},
				{"::ffff:203.0.113.7", 443, wantAllowed("203.0.113.7")},
				{"203.0.113.8", 443, wantNoRule()},
				{"198.51.100.200", 80, wantAllowed("198.51.100.0/24")},
				{"198.51.101.1", 80, wantNoRule()},
				{"2001:db8::1", 443, wantAllowed("2001:db8::/32")},
				{"2001:db8:1::1", 8443, wantAllowed("[2001:db8:1::1]:8443")},
				{"2001:db8:1::1", 443, wantAllowed("2001:db8::/32")},
				{"2001:db9::1", 443, wantNoRule()},
				{"203.0.113.7", 22, wantNoRule()},
			},
		},
		{
			name:  "ports: portless allow = default ports, explicit constraints, :*",
			allow: []string{"web.test", "ssh.test:22", "range.test:8000-8100", "all.test:*", "*.sub.test:8443"},
			probes: []probe{
				{"web.test", 80, wantAllowed("web.test")},
				{"web.test", 443, wantAllowed("web.test")},
				{"web.test", 8080, wantNoRule()},
				{"web.test", 22, wantNoRule()},
				{"ssh.test", 22, wantAllowed("ssh.test:22")},
				{"ssh.test", 443, wantNoRule()},
				{"range.test", 8000, wantAllowed("range.test:8000-8100")},
				{"range.test", 8100, wantAllowed("range.test:8000-8100")},
				{"range.test", 7999, wantNoRule()},
				{"range.test", 8101, wantNoRule()},
				{"all.test", 1, wantAllowed("all.test:*")},
				{"all.test", 65535, wantAllowed("all.test:*")},
				{"a.sub.test", 8443, wantAllowed("*.sub.test:8443")},
				{"a.sub.test", 443, wantNoRule()},
			},
		},
		{
			name:  "portless block blocks every port; ported block only its ports",
			allow: []string{"*:*"},
			block: []string{"evil.test", "mail.test:25", "hi.test:1024-65535"},
			probes: []probe{
				{"evil.test", 443, wantBlocked("evil.test")},
				{"evil.test", 22, wantBlocked("evil.test")},
				{"evil.test", 65535, wantBlocked("evil.test")},
				{"mail.test", 25, wantBlocked("mail.test:25")},
				{"mail.test", 587, wantAllowed("*:*")},
				{"hi.test", 1024, wantBlocked("hi.test:1024-65535")},
				{"hi.test", 1023, wantAllowed("*:*")},
			},
		},
		{
			name:  "block wins over any allow however specific (B5)",
			allow: []string{"api.evil.test:443", "*.evil.test", ".good.test", "secret.good.test", "*", "203.0.113.7"},
			block: []string{"*.evil.test", "secret.good.test", "203.0.113.0/24"},
			probes: []probe{
				{"api.evil.test", 443, wantBlocked("*.evil.test")},
				{"x.y.evil.test", 443, wantBlocked("*.evil.test")},
				{"evil.test", 443, wantAllowed("*")},
				{"secret.good.test", 443, wantBlocked("secret.good.test")},
				{"SECRET.good.test.", 443, wantBlocked("secret.good.test")},
				{"other.good.test", 443, wantAllowed(".good.test")},
				{"203.0.113.7", 443, wantBlocked("203.0.113.0/24")},
			},
		},
		{
			name:  "block * kills every name, not IPs",
			allow: []string{"github.com", "203.0.113.7"},
			block: []string{"*"},
			probes: []probe{
				{"github.com", 443, wantBlocked("*")},
				{"203.0.113.7", 443, wantAllowed("203.0.113.7")},
			},
		},
		{
			name:   "empty policy denies everything",
			probes: []probe{{"github.com", 443, wantNoRule()}, {"203.0.113.7", 443, wantNoRule()}},
		},
		{
			name:  "invalid names are denied before any rule (step 1)",
			allow: []string{"*"},
			block: []string{},
			probes: []probe{
				{"", 443, wantInvalid()},
				{"a..b", 443, wantInvalid()},
				{strings.Repeat("a", 64) + ".com", 443, wantInvalid()},
				{strings.Repeat("a.", 127) + "com", 443, wantInvalid()},
				{"example.123", 443, wantInvalid()},
				{"2130706433", 443, wantInvalid()},
				{"0177.0.0.1", 443, wantInvalid()},
				{"127.1", 443, wantInvalid()},
				{"evil%2eexample", 443, wantInvalid()},
				{"github.com@evil.example", 443, wantInvalid()},
				{"a b.com", 443, wantInvalid()},
			},
		},
		{
			name:  "IDN: rules and requests meet on the A-label",
			allow: []string{"bücher.de", "github.com", "*.例え.テスト"},
			probes: []probe{
				{"bücher.de", 443, wantAllowed("bücher.de")},
				{"xn--bcher-kva.de", 443, wantAllowed("bücher.de")},
				{"BÜCHER.de", 443, wantAllowed("bücher.de")},
				{"ｇithub.com", 443, wantAllowed("github.com")},
				{"ＧＩＴＨＵＢ。ｃｏｍ", 443, wantAllowed("github.com")},
				{"gіthub.com", 443, wantNoRule()},
				{"xn--gthub-n2e.com", 443, wantNoRule()},
				{"a.xn--r8jz45g.xn--zckzah", 443, wantAllowed("*.例え.テスト")},
			},
		},
		{
			name:  "IDN block rule catches every spelling",
			allow: []string{"*"},
			block: []string{"ｅvil.example", "xn--gthub-n2e.com"},
			probes: []probe{
				{"evil.example", 443, wantBlocked("ｅvil.example")},
				{"EVIL.example.", 443, wantBlocked("ｅvil.example")},
				{"evil。example", 443, wantBlocked("ｅvil.example")},
				{"gіthub.com", 443, wantBlocked("xn--gthub-n2e.com")},
				{"github.com", 443, wantAllowed("*")},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMatcher(t, tc.allow, tc.block)
			for _, p := range tc.probes {
				decideProbe(t, m, p)
			}
		})
	}
}

func TestDecideReportsTheMostSpecificRuleThenTheFirstWritten(t *testing.T) {
	m := newTestMatcher(t,
		[]string{"*", "api-*.github.com", ".com", ".github.com", "*.github.com", "api.github.com:443", "api.github.com", "*.api.github.com", "203.0.113.0/24", "203.0.113.0/25", "203.0.113.7", "203.0.113.7"},
		nil)
	for _, p := range []probe{
		{"api.github.com", 443, wantAllowed("api.github.com:443")}, // exact, first written that fits the port
		{"api.github.com", 80, wantAllowed("api.github.com")},
		{"v1.api.github.com", 443, wantAllowed("*.api.github.com")}, // longest suffix
		{"api-v1.github.com", 443, wantAllowed(".github.com")},      // suffix before glob; .x written before *.x
		{"github.com", 443, wantAllowed(".github.com")},
		{"gitlab.com", 443, wantAllowed(".com")},
		{"example.org", 443, wantAllowed("*")},
		{"203.0.113.7", 443, wantAllowed("203.0.113.7")}, // longest prefix; first of two equal rules
		{"203.0.113.8", 443, wantAllowed("203.0.113.0/25")},
		{"203.0.113.200", 443, wantAllowed("203.0.113.0/24")},
	} {
		decideProbe(t, m, p)
	}
	// The first written of two identical rules is reported.
	d := m.DecideAddr(netip.MustParseAddr("203.0.113.7"), 443)
	if d.Rule == nil || d.Rule.Source.Line != 11 {
		t.Errorf("reported %v from %v, want the rule on line 11", d.Rule, d.Rule.Source)
	}
}

func TestDecideDefaultPortsComeFromThePolicy(t *testing.T) {
	m, err := NewMatcher(NetworkPolicy{
		Allow:        parseRules(t, []string{"web.test", "ported.test:443", "203.0.113.7"}, Source{}),
		DefaultPorts: []uint16{8080},
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeFiltered {
		t.Errorf("zero Mode compiled to %q, want filtered", m.Mode())
	}
	for _, p := range []probe{
		{"web.test", 8080, wantAllowed("web.test")},
		{"web.test", 443, wantNoRule()},
		{"web.test", 80, wantNoRule()},
		{"ported.test", 443, wantAllowed("ported.test:443")},
		{"203.0.113.7", 8080, wantAllowed("203.0.113.7")},
		{"203.0.113.7", 443, wantNoRule()},
	} {
		decideProbe(t, m, p)
	}
}

func TestDecideNameAnyPortAnswersForDNS(t *testing.T) {
	m := newTestMatcher(t,
		[]string{"web.test", "ssh.test:22", "both.test", "portblocked.test", "allports.test"},
		[]string{"evil.test", "portblocked.test:443", "allports.test:*"})
	tests := []struct {
		name string
		want dec
	}{
		{"web.test", wantAllowed("web.test")},
		{"ssh.test", wantAllowed("ssh.test:22")},
		{"evil.test", wantBlocked("evil.test")},
		{"unknown.test", wantNoRule()},
		// A block on one port leaves port 80 open: the name resolves.
		{"portblocked.test", wantAllowed("portblocked.test")},
		// `:*` blocks every port, like a portless block.
		{"allports.test", wantBlocked("allports.test:*")},
		{"bad..name", wantInvalid()},
	}
	for _, tc := range tests {
		if diff := cmp.Diff(tc.want, summarize(m.DecideNameAnyPort(tc.name))); diff != "" {
			t.Errorf("DecideNameAnyPort(%q) (-want +got):\n%s", tc.name, diff)
		}
	}
}

func TestNilMatcherAndModeNoneDenyEverything(t *testing.T) {
	var nilM *Matcher
	none, err := NewMatcher(NetworkPolicy{Mode: ModeNone, Allow: parseRules(t, []string{"*", "0.0.0.0/0", "::/0"}, Source{})})
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*Matcher{"nil": nilM, "none": none} {
		t.Run(name, func(t *testing.T) {
			if m.Mode() != ModeNone {
				t.Errorf("Mode() = %q", m.Mode())
			}
			addr := netip.MustParseAddr("203.0.113.7")
			for what, d := range map[string]Decision{
				"DecideName":        m.DecideName("github.com", 443),
				"DecideNameAnyPort": m.DecideNameAnyPort("github.com"),
				"DecideAddr":        m.DecideAddr(addr, 443),
				"GuardAddr":         m.GuardAddr(addr, 443),
				"Decide":            m.Decide(Target{Name: "github.com", Port: 443}),
			} {
				if diff := cmp.Diff(wantNoRule(), summarize(d)); diff != "" {
					t.Errorf("%s (-want +got):\n%s", what, diff)
				}
			}
		})
	}
}

func TestDecideRefusesMalformedTargets(t *testing.T) {
	m := newTestMatcher(t, []string{"*:*", "0.0.0.0/0:*"}, nil)
	a := netip.MustParseAddr("203.0.113.7")
	for _, tg := range []Target{
		{},
		{Name: "github.com"},                   // port 0
		{Addr: a},                              // port 0
		{Name: "github.com", Addr: a, Port: 1}, // both
		{Name: "a..b", Port: 443},
		{Addr: netip.MustParseAddr("fe80::1%eth0"), Port: 443},
	} {
		if diff := cmp.Diff(wantInvalid(), summarize(m.Decide(tg))); diff != "" {
			t.Errorf("Decide(%#v) (-want +got):\n%s", tg, diff)
		}
	}
	if diff := cmp.Diff(wantInvalid(), summarize(m.DecideAddr(netip.Addr{}, 443))); diff != "" {
		t.Errorf("DecideAddr(zero) (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantInvalid(), summarize(m.GuardAddr(netip.MustParseAddr("fe80::1%eth0"), 443))); diff != "" {
		t.Errorf("GuardAddr(zoned) (-want +got):\n%s", diff)
	}
}

func TestNewMatcherRefusesBrokenPolicies(t *testing.T) {
	good := parseRules(t, []string{"github.com"}, Source{})
	tests := []struct {
		name string
		n    NetworkPolicy
		want string
	}{
		{"nil allow rule", NetworkPolicy{Allow: []*Rule{good[0], nil}}, "allow rule 1 is nil"},
		{"nil block rule", NetworkPolicy{Block: []*Rule{nil}}, "block rule 0 is nil"},
		{"rule not from ParseRule", NetworkPolicy{Allow: []*Rule{{Text: "github.com"}}}, "not made by ParseRule"},
		{"unknown mode", NetworkPolicy{Mode: "open"}, `unknown mode "open"`},
		{"default port 0", NetworkPolicy{DefaultPorts: []uint16{443, 0}}, "default port 0"},
		{"invalid self", NetworkPolicy{Self: []netip.Addr{{}}}, "self address 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewMatcher(tc.n)
			if err == nil || m != nil {
				t.Fatalf("NewMatcher = %v, %v; want an error", m, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestDecisionStringNamesRuleAndSource(t *testing.T) {
	m := newTestMatcher(t, []string{"github.com"}, []string{"*.evil.test"})
	if got, want := m.DecideName("x.evil.test", 443).String(), "blocked-by *.evil.test (block.toml:1)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, want := m.DecideName("github.com", 443).String(), "allowed-by github.com (allow.toml:1)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestHotPathsDoNotAllocate(t *testing.T) {
	allow := []string{"github.com", "*.github.com", ".pypi.org", "api-*.example.com", "203.0.113.0/24", "10.1.2.0/24:5432"}
	block := []string{"evil.github.com", "198.51.100.0/24"}
	m := newTestMatcher(t, allow, block)
	v4 := netip.MustParseAddr("203.0.113.7")
	priv := netip.MustParseAddr("10.1.2.7")
	v6 := netip.MustParseAddr("2001:db8::1")
	cases := map[string]func(){
		"DecideName exact":      func() { m.DecideName("github.com", 443) },
		"DecideName suffix":     func() { m.DecideName("a.b.c.github.com", 443) },
		"DecideName glob":       func() { m.DecideName("api-v2.example.com", 443) },
		"DecideName miss":       func() { m.DecideName("nothing.here.example.org", 443) },
		"DecideName block":      func() { m.DecideName("evil.github.com", 443) },
		"DecideNameAnyPort":     func() { m.DecideNameAnyPort("www.pypi.org") },
		"DecideAddr":            func() { m.DecideAddr(v4, 443) },
		"DecideAddr guard lift": func() { m.DecideAddr(priv, 5432) },
		"GuardAddr public":      func() { m.GuardAddr(v6, 443) },
		"GuardAddr lifted":      func() { m.GuardAddr(priv, 5432) },
		"GuardAddr guarded":     func() { m.GuardAddr(netip.MustParseAddr("169.254.169.254"), 80) },
		"GuardedRange":          func() { GuardedRange(priv) },
	}
	for name, f := range cases {
		if n := testing.AllocsPerRun(200, f); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", name, n)
		}
	}
}

func TestLiveHoldsTheMatcherInForce(t *testing.T) {
	var l Live
	if d := l.Current().DecideName("github.com", 443); d.Allow {
		t.Fatalf("empty Live allowed: %v", d)
	}
	l.Store(newTestMatcher(t, []string{"github.com"}, nil))
	if d := l.Current().DecideName("github.com", 443); !d.Allow {
		t.Fatalf("stored matcher denied: %v", d)
	}
}

// A raw stream (no SNI, no Host) is allowed only by a rule that names its
// port: default_ports admit a name for TLS and HTTP, which carry it. The
// answer does not depend on which matching rule is more specific or
// written first.
func TestDecideNameRawNeedsARuleNamingThePort(t *testing.T) {
	m := newTestMatcher(t,
		[]string{"web.test", "ssh.test:22", "both.test", "both.test:443", "*.wide.test:*", "exact.wide.test", "range.test:8000-8100", "*.blocked.test:22"},
		[]string{"x.blocked.test"})
	tests := []struct {
		name   string
		port   uint16
		byName dec // DecideName
		raw    dec // DecideNameRaw
	}{
		{"web.test", 443, wantAllowed("web.test"), wantNoRule()},
		{"web.test", 80, wantAllowed("web.test"), wantNoRule()},
		{"web.test", 22, wantNoRule(), wantNoRule()},
		{"web.test", 0, wantAllowed("web.test"), wantNoRule()},
		{"ssh.test", 22, wantAllowed("ssh.test:22"), wantAllowed("ssh.test:22")},
		{"SSH.test.", 22, wantAllowed("ssh.test:22"), wantAllowed("ssh.test:22")},
		{"ssh.test", 443, wantNoRule(), wantNoRule()},
		{"ssh.test", 0, wantAllowed("ssh.test:22"), wantAllowed("ssh.test:22")},
		// Written first, the portless rule reports the name decision; the
		// rule naming 443 still admits raw.
		{"both.test", 443, wantAllowed("both.test"), wantAllowed("both.test:443")},
		{"both.test", 80, wantAllowed("both.test"), wantNoRule()},
		// A more specific portless rule does not hide a wider rule naming
		// the port.
		{"exact.wide.test", 443, wantAllowed("exact.wide.test"), wantAllowed("*.wide.test:*")},
		{"a.wide.test", 5432, wantAllowed("*.wide.test:*"), wantAllowed("*.wide.test:*")},
		{"range.test", 8080, wantAllowed("range.test:8000-8100"), wantAllowed("range.test:8000-8100")},
		{"range.test", 443, wantNoRule(), wantNoRule()},
		// Block wins on both questions.
		{"x.blocked.test", 22, wantBlocked("x.blocked.test"), wantBlocked("x.blocked.test")},
		{"y.blocked.test", 22, wantAllowed("*.blocked.test:22"), wantAllowed("*.blocked.test:22")},
		{"a..test", 22, wantInvalid(), wantInvalid()},
		{"203.0.113.7", 22, wantInvalid(), wantInvalid()},
	}
	for _, tc := range tests {
		if diff := cmp.Diff(tc.byName, summarize(m.DecideName(tc.name, tc.port))); diff != "" {
			t.Errorf("DecideName(%q, %d) (-want +got):\n%s", tc.name, tc.port, diff)
		}
		if diff := cmp.Diff(tc.raw, summarize(m.DecideNameRaw(tc.name, tc.port))); diff != "" {
			t.Errorf("DecideNameRaw(%q, %d) (-want +got):\n%s", tc.name, tc.port, diff)
		}
	}
	var none *Matcher
	if d := none.DecideNameRaw("ssh.test", 22); d.Allow {
		t.Errorf("nil Matcher: DecideNameRaw allowed: %v", d)
	}
	if n := testing.AllocsPerRun(100, func() { m.DecideNameRaw("exact.wide.test", 443) }); n != 0 {
		t.Errorf("DecideNameRaw allocates %v times per call", n)
	}
}
