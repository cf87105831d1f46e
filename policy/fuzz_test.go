package policy

import (
	"errors"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/gobwas/glob"
)

var fuzzNameSeeds = []string{
	"github.com", "GitHub.COM.", "github.com..", "a..b", "", ".", "bücher.de",
	"xn--bcher-kva.de", "ｇithub.com", "gіthub.com", "127｡0｡0｡1", "0x7f000001",
	"127.1", "evil.example\x00.github.com", "a⒈com", "\u00ad.com", "ß.de",
	"_dmarc.example.com", "xn--github-.com", "例え.テスト", "a\xff.com",
	strings.Repeat("a", 63) + ".com", strings.Repeat("a.", 126) + "com",
}

// FuzzNormalizeName checks that the normaliser never panics, produces only
// [a-z0-9-_.] within the RFC 1035 limits, is idempotent, ignores ASCII case
// and one trailing dot, and never produces something that parses as an IP.
func FuzzNormalizeName(f *testing.F) {
	for _, s := range fuzzNameSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		n, ok := NormalizeName(raw)
		if !ok {
			if n != "" {
				t.Fatalf("NormalizeName(%q) = %q, false: want empty name when invalid", raw, n)
			}
			return
		}
		if n == "" || len(n) > maxNameLen {
			t.Fatalf("NormalizeName(%q) = %q: bad length", raw, n)
		}
		for i := 0; i < len(n); i++ {
			if !nameByte(n[i]) {
				t.Fatalf("NormalizeName(%q) = %q: byte %q outside [a-z0-9-_.]", raw, n, n[i])
			}
		}
		for _, l := range strings.Split(n, ".") {
			if l == "" || len(l) > maxLabelLen {
				t.Fatalf("NormalizeName(%q) = %q: bad label %q", raw, n, l)
			}
		}
		if _, isIP := ParseIP(n); isIP {
			t.Fatalf("NormalizeName(%q) = %q, which is an IP literal", raw, n)
		}
		if n2, ok2 := NormalizeName(n); !ok2 || n2 != n {
			t.Fatalf("not idempotent: NormalizeName(%q) = %q; NormalizeName(%q) = %q, %v", raw, n, n, n2, ok2)
		}
		if n2, ok2 := NormalizeName(strings.ToUpper(n) + "."); !ok2 || n2 != n {
			t.Fatalf("case or trailing dot changed the result: %q → %q, %v", n, n2, ok2)
		}
	})
}

// FuzzParseRule checks the pattern parser never panics, reports errors as
// *PatternError, and that an accepted rule covers itself and matches the
// name it was written for.
func FuzzParseRule(f *testing.F) {
	for _, s := range []string{
		"github.com", "*.github.com:443", ".github.com:8000-8100", "api-*.example.com:*",
		"**.example.com", "*", "203.0.113.0/24", "[2001:db8::1]:443", "::ffff:10.0.0.0/104",
		"*github.com", "http://x/", "github.com:0", "10.0.0.1/8", "a{b,c}*.x", "[[::1]]",
		"*.*.*.*.*.*.*.*.*.x", "a?c.x", "fe80::1%eth0", "127｡0｡0｡1", "*.ｇithub.com",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r, err := ParseRule(text, Flag("--allow"))
		if err != nil {
			var pe *PatternError
			if !errors.As(err, &pe) || pe.Text != text || pe.Msg == "" {
				t.Fatalf("ParseRule(%q): error %#v is not a filled-in *PatternError", text, err)
			}
			if r != nil {
				t.Fatalf("ParseRule(%q) returned a rule and an error", text)
			}
			return
		}
		if r.Text != text || r.Source != Flag("--allow") {
			t.Fatalf("ParseRule(%q): Text/Source not kept", text)
		}
		if !r.Covers(r) {
			t.Fatalf("ParseRule(%q): rule does not cover itself", text)
		}
		switch r.kind {
		case kindExact, kindApex:
			if n, ok := NormalizeName(r.name); !ok || n != r.name || !r.matchName(r.name) {
				t.Fatalf("ParseRule(%q): name %q not canonical or not matched", text, r.name)
			}
		case kindBelow:
			if n, ok := NormalizeName(r.name); !ok || n != r.name || r.matchName(r.name) || !r.matchName("x."+r.name) {
				t.Fatalf("ParseRule(%q): suffix %q wrong", text, r.name)
			}
		case kindPrefix:
			if r.prefix.Masked() != r.prefix || r.prefix.Addr().Is4In6() || r.prefix.Addr().Zone() != "" {
				t.Fatalf("ParseRule(%q): prefix %v not canonical", text, r.prefix)
			}
		case kindGlob, kindAny:
		default:
			t.Fatalf("ParseRule(%q): kind %d", text, r.kind)
		}
		if r.hasPort && (r.portLo == 0 || r.portLo > r.portHi) {
			t.Fatalf("ParseRule(%q): ports %d-%d", text, r.portLo, r.portHi)
		}
	})
}

// FuzzParseTarget checks the destination parser never panics, sets exactly
// one of Name and Addr, and that String parses back to the same target.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"github.com:443", "[2001:db8::1]:443", "203.0.113.7", "::1", "[github.com]:1", "a:0443", "127｡0｡0｡1:80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := ParseTarget(s, 443)
		if err != nil {
			if !errors.Is(err, ErrInvalidName) {
				t.Fatalf("ParseTarget(%q): %v does not wrap ErrInvalidName", s, err)
			}
			return
		}
		if (tg.Name != "") == tg.Addr.IsValid() || tg.Port == 0 {
			t.Fatalf("ParseTarget(%q) = %#v", s, tg)
		}
		back, err := ParseTarget(tg.String(), 1)
		if err != nil || back != tg {
			t.Fatalf("ParseTarget(%q) = %v; round trip gives %#v, %v", s, tg, back, err)
		}
	})
}

// fuzzReader turns fuzz bytes into choices.
type fuzzReader struct{ b []byte }

func (r *fuzzReader) next() int {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return int(c)
}

func (r *fuzzReader) pick(options []string) string { return options[r.next()%len(options)] }

var (
	fuzzLabels   = []string{"a", "b", "com", "github", "evil-github", "x_y", "xn--bcher-kva", "api-v1"}
	fuzzGlobBits = []string{"*", "**", "?", "a*", "*b", "api-*", "?i*"}
	fuzzPorts    = []string{"", ":443", ":80", ":8000-8100", ":*", ":22", ":1-443"}
	fuzzAddrs    = []string{
		"10.1.2.7", "10.0.0.0", "203.0.113.7", "198.51.100.1", "169.254.169.254", "127.0.0.1", "100.64.0.1",
		"2001:db8::1", "::1", "64:ff9b::a9fe:a9fe", "fd00:ec2::254", "fe80::1", "::ffff:10.1.2.7", "0.0.0.0", "::",
	}
)

func fuzzName(r *fuzzReader) string {
	n := 1 + r.next()%3
	labels := make([]string, n)
	for i := range labels {
		labels[i] = r.pick(fuzzLabels)
	}
	return strings.Join(labels, ".")
}

// fuzzPolicy builds a policy from the bytes: each rule is one shape from
// docs/design.md's table over a small vocabulary, so that names collide often.
// It also returns the names it used, from which queries are built.
func fuzzPolicy(r *fuzzReader) (NetworkPolicy, []string) {
	var n NetworkPolicy
	var used []string
	name := func() string {
		s := fuzzName(r)
		used = append(used, s)
		return s
	}
	count := r.next() % 12
	for i := 0; i < count; i++ {
		var text string
		switch r.next() % 16 {
		case 0, 1, 2:
			text = name()
		case 3, 4:
			text = "*." + name()
		case 5, 6:
			text = "." + name()
		case 7, 8, 9:
			text = r.pick(fuzzGlobBits) + "." + name()
		case 10, 11:
			text = name() + "." + r.pick(fuzzGlobBits) + "." + r.pick(fuzzLabels)
		case 12:
			text = name()
			if r.next()%4 == 0 {
				text = "*"
			}
		default:
			a := netip.MustParseAddr(r.pick(fuzzAddrs)).Unmap()
			bits := a.BitLen() - r.next()%(a.BitLen()+1)
			p, _ := a.Prefix(bits)
			text = p.String()
			if a.Is6() {
				text = "[" + text + "]"
			}
		}
		text += r.pick(fuzzPorts)
		rule, err := ParseRule(text, Source{Kind: SourceFile, File: "fuzz", Line: i + 1})
		if err != nil {
			continue // a shape the parser refuses (e.g. a numeric last label)
		}
		if r.next()%3 == 0 {
			n.Block = append(n.Block, rule)
		} else {
			n.Allow = append(n.Allow, rule)
		}
	}
	switch r.next() % 4 {
	case 1:
		n.DefaultPorts = []uint16{443}
	case 2:
		n.DefaultPorts = []uint16{22, 8000}
	}
	if r.next()%4 == 0 {
		n.Self = []netip.Addr{netip.MustParseAddr(r.pick(fuzzAddrs))}
	}
	return n, used
}

// fuzzQuery builds a name to decide: a rule's name with zero to two labels
// in front (hits, near misses and label-boundary cases), or a fresh one.
func fuzzQuery(r *fuzzReader, used []string) string {
	if len(used) == 0 || r.next()%4 == 0 {
		return fuzzName(r)
	}
	q := used[r.next()%len(used)]
	for k := r.next() % 3; k > 0; k-- {
		q = r.pick(fuzzLabels) + "." + q
	}
	if r.next()%8 == 0 {
		q = r.pick(fuzzLabels) + q // no dot: evil-github.com against github.com
	}
	return q
}

// FuzzMatcher is a differential test: for a random policy, name, address
// and port, the indexed Matcher must return exactly the decision (allow,
// reason and the very rule) of the naive linear reference in
// reference_test.go.
func FuzzMatcher(f *testing.F) {
	f.Add([]byte{5, 0, 3, 1, 2, 0, 1, 1, 3, 0, 2, 1, 1, 0, 4, 9, 9, 9}, "", uint16(443))
	f.Add([]byte{8, 1, 2, 3, 1, 0, 0, 2, 2, 3, 1, 1, 6, 0, 3, 0, 7, 1, 4, 2, 0, 1}, "api.github.com", uint16(80))
	f.Add([]byte{3, 3, 0, 2, 3, 2, 1, 4, 4, 2, 6, 3, 1, 5, 5, 1, 2}, "a.b.github.com.", uint16(0))
	f.Add([]byte{11, 6, 0, 3, 0, 1, 6, 5, 20, 4, 2, 7, 1, 0, 1, 1, 0, 2, 1, 3, 2}, "EVIL-github.com", uint16(8050))
	f.Fuzz(func(t *testing.T, data []byte, rawName string, port uint16) {
		r := &fuzzReader{b: data}
		pol, used := fuzzPolicy(r)
		m, err := NewMatcher(pol)
		if err != nil {
			t.Fatalf("NewMatcher: %v", err)
		}
		ref := newRefMatcher(pol)
		name := rawName
		if name == "" || r.next()%2 == 0 {
			name = fuzzQuery(r, used)
		}
		check := func(what string, got, want Decision) {
			t.Helper()
			if got != want {
				t.Fatalf("%s: matcher %+v (rule %v), reference %+v (rule %v)\npolicy allow=%v block=%v defaults=%v self=%v",
					what, got, got.Rule, want, want.Rule, fuzzRuleTexts(pol.Allow), fuzzRuleTexts(pol.Block), pol.DefaultPorts, pol.Self)
			}
		}
		check("DecideName("+name+")", m.DecideName(name, port), ref.DecideName(name, port))
		check("DecideNameAnyPort("+name+")", m.DecideNameAnyPort(name), ref.DecideName(name, 0))
		check("DecideNameRaw("+name+")", m.DecideNameRaw(name, port), ref.DecideNameRaw(name, port))
		addr := netip.MustParseAddr(r.pick(fuzzAddrs))
		if len(data) >= 4 && data[0]%5 == 0 {
			// An arbitrary address near the vocabulary.
			b := addr.AsSlice()
			b[len(b)-1] ^= data[1]
			b[len(b)/2] ^= data[2]
			addr, _ = netip.AddrFromSlice(b)
		}
		check("DecideAddr("+addr.String()+")", m.DecideAddr(addr, port), ref.DecideAddr(addr, port))
		check("GuardAddr("+addr.String()+")", m.GuardAddr(addr, port), ref.GuardAddr(addr, port))
	})
}

func fuzzRuleTexts(rules []*Rule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, r.Text)
	}
	return out
}

// FuzzGlob checks the Matcher's linear-time glob matcher against
// gobwas/glob (with '.' as separator) and a regexp translation, over a
// small alphabet so that matches are common.
func FuzzGlob(f *testing.F) {
	f.Add([]byte("*.a*b?"), []byte("ab.aab"))
	f.Add([]byte("**.a"), []byte("a.b.a"))
	f.Add([]byte("a?*.b"), []byte("aba.b"))
	f.Fuzz(func(t *testing.T, rawPat, rawName []byte) {
		const patAlphabet, nameAlphabet = "ab.*?", "ab."
		pat := make([]byte, 0, len(rawPat))
		wild := 0
		for _, c := range rawPat {
			c = patAlphabet[int(c)%len(patAlphabet)]
			if c == '*' || c == '?' {
				wild++
			}
			pat = append(pat, c)
		}
		name := make([]byte, 0, len(rawName))
		for _, c := range rawName {
			name = append(name, nameAlphabet[int(c)%len(nameAlphabet)])
		}
		p, n := string(pat), string(name)
		// The parser refuses "***" and more than 8 wildcards, and names are
		// at most 253 bytes; keep gobwas's backtracking cheap too.
		if wild == 0 || wild > maxGlobWildcards || strings.Contains(p, "***") || len(n) > 64 {
			return
		}
		g := compileGlob(p)
		got := g.match(n)
		if want := glob.MustCompile(p, '.').Match(n); got != want {
			t.Fatalf("glob %q, name %q: match = %v, gobwas/glob = %v", p, n, got, want)
		}
		if want := regexp.MustCompile(globToRegexp(p)).MatchString(n); got != want {
			t.Fatalf("glob %q, name %q: match = %v, regexp = %v", p, n, got, want)
		}
	})
}
