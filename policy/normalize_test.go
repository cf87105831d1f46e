package policy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type normResult struct {
	Name string
	OK   bool
}

func TestNormalizeNameCanonicalisesOneFormPerName(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	name253 := strings.Repeat(label63+".", 3) + strings.Repeat("b", 61) // 3*64 + 61 = 253
	tests := []struct {
		name string
		in   string
		want normResult
	}{
		// B1 trailing dot.
		{"plain", "github.com", normResult{"github.com", true}},
		{"one trailing dot removed", "github.com.", normResult{"github.com", true}},
		{"two trailing dots refused", "github.com..", normResult{"", false}},
		{"only a dot", ".", normResult{"", false}},
		{"empty", "", normResult{"", false}},
		{"leading dot is an empty label", ".github.com", normResult{"", false}},
		{"empty label in the middle", "a..github.com", normResult{"", false}},
		// B2 case.
		{"upper case folded", "GitHub.COM", normResult{"github.com", true}},
		{"upper case and trailing dot", "EVIL.Example.", normResult{"evil.example", true}},
		// B6 IDN.
		{"U-label to A-label", "bücher.de", normResult{"xn--bcher-kva.de", true}},
		{"A-label kept", "xn--bcher-kva.de", normResult{"xn--bcher-kva.de", true}},
		{"A-label upper case folded", "XN--BCHER-KVA.de", normResult{"xn--bcher-kva.de", true}},
		{"cyrillic i homograph is a distinct name", "gіthub.com", normResult{"xn--gthub-n2e.com", true}},
		{"fullwidth g maps to ASCII per UTS-46", "ｇithub.com", normResult{"github.com", true}},
		{"fullwidth e maps to ASCII", "ｅvil.example", normResult{"evil.example", true}},
		{"ideographic full stop U+3002", "evil。example", normResult{"evil.example", true}},
		{"fullwidth full stop U+FF0E", "evil．example", normResult{"evil.example", true}},
		{"halfwidth ideographic full stop U+FF61", "evil｡example", normResult{"evil.example", true}},
		{"trailing U+3002 is the trailing dot", "github.com。", normResult{"github.com", true}},
		{"dot variants folding into an IP literal refused", "127｡0｡0｡1", normResult{"", false}},
		{"U+3002 folding into an IP literal refused", "169。254。169。254", normResult{"", false}},
		{"eszett non-transitional", "ß.de", normResult{"xn--zca.de", true}},
		{"japanese", "例え.テスト", normResult{"xn--r8jz45g.xn--zckzah", true}},
		{"fullwidth ACE prefix is checked as an A-label", "ｘｎ--bcher-kva.de", normResult{"xn--bcher-kva.de", true}},
		{"A-label decoding to ASCII refused", "xn--github-.com", normResult{"", false}},
		{"undecodable A-label refused", "xn--zz.com", normResult{"", false}},
		{"A-label of a mapped (non-canonical) U-label refused", "xn--ithub-dq33a.com", normResult{"", false}},
		{"circled digit with dot (STD3 disallowed) refused", "a⒈com", normResult{"", false}},
		{"label of only ignored code points is empty", "\u00ad.com", normResult{"", false}},
		{"zero-width joiner refused", "a\u200db.com", normResult{"", false}},
		{"fullwidth percent maps to a forbidden byte", "a％41.com", normResult{"", false}},
		{"fullwidth solidus refused", "a／b.com", normResult{"", false}},
		{"invalid UTF-8", "a\xff.com", normResult{"", false}},
		{"underscore in a Unicode name", "_dmarc.bücher.de", normResult{"_dmarc.xn--bcher-kva.de", true}},
		// B7 NUL and control characters.
		{"NUL before allowed suffix", "attacker.example\x00.github.com", normResult{"", false}},
		{"trailing NUL", "github.com\x00", normResult{"", false}},
		{"NUL with Unicode", "bücher\x00.de", normResult{"", false}},
		{"tab", "git\thub.com", normResult{"", false}},
		{"DEL", "git\x7fhub.com", normResult{"", false}},
		{"space", "github.com ", normResult{"", false}},
		{"newline", "github.com\n", normResult{"", false}},
		// B8 URL-parser differentials.
		{"percent", "%65vil.example", normResult{"", false}},
		{"encoded NUL", "evil.example%00.github.com", normResult{"", false}},
		{"userinfo", "github.com@evil.example", normResult{"", false}},
		{"backslash", "github.com\\@evil.example", normResult{"", false}},
		{"colon", "github.com:443", normResult{"", false}},
		{"slash", "github.com/x", normResult{"", false}},
		{"brackets", "[github.com]", normResult{"", false}},
		// B9 lengths and shapes.
		{"underscore allowed", "_acme-challenge.example.com", normResult{"_acme-challenge.example.com", true}},
		{"hyphens in positions 3-4 allowed", "r3---sn-abc.googlevideo.com", normResult{"r3---sn-abc.googlevideo.com", true}},
		{"63-byte label", label63 + ".com", normResult{label63 + ".com", true}},
		{"64-byte label refused", label63 + "a.com", normResult{"", false}},
		{"253-byte name", name253, normResult{name253, true}},
		{"253-byte name with trailing dot", name253 + ".", normResult{name253, true}},
		{"254-byte name refused", name253 + "b", normResult{"", false}},
		{"300-byte name refused", strings.Repeat("a.", 149) + "com", normResult{"", false}},
		{"huge Unicode input refused", strings.Repeat("ü", 2000) + ".de", normResult{"", false}},
		{"single label", "localhost", normResult{"localhost", true}},
		// C2 numeric forms.
		{"dotted quad", "127.0.0.1", normResult{"", false}},
		{"short form", "127.1", normResult{"", false}},
		{"integer", "2130706433", normResult{"", false}},
		{"hex integer", "0x7f000001", normResult{"", false}},
		{"hex integer upper case", "0X7F000001", normResult{"", false}},
		{"hex first octet", "0x7f.0.0.1", normResult{"", false}},
		{"octal", "0177.0.0.1", normResult{"", false}},
		{"leading zero", "010.0.0.1", normResult{"", false}},
		{"mixed short form", "169.254.43518", normResult{"", false}},
		{"numeric last label", "example.123", normResult{"", false}},
		{"bare 0x", "example.0x", normResult{"", false}},
		{"hex-looking last label without 0x is a name", "example.deadbeef", normResult{"example.deadbeef", true}},
		{"numeric inner labels allowed", "1.2.3.example.com", normResult{"1.2.3.example.com", true}},
		{"digit-led last label with letters allowed", "example.3com", normResult{"example.3com", true}},
		{"IPv6 literal is not a name", "::1", normResult{"", false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, ok := NormalizeName(tc.in)
			if diff := cmp.Diff(tc.want, normResult{n, ok}); diff != "" {
				t.Errorf("NormalizeName(%q) (-want +got):\n%s", tc.in, diff)
			}
			if ok {
				n2, ok2 := NormalizeName(n)
				if n2 != n || !ok2 {
					t.Errorf("not idempotent: NormalizeName(%q) = %q, %v", n, n2, ok2)
				}
			}
		})
	}
}

func TestNormalizeNameDoesNotAllocateForCanonicalNames(t *testing.T) {
	for _, in := range []string{"github.com", "a.b.c.github.com.", "_x-y.example.org"} {
		n := testing.AllocsPerRun(100, func() { NormalizeName(in) })
		if n != 0 {
			t.Errorf("NormalizeName(%q): %v allocs, want 0", in, n)
		}
	}
}

type ipResult struct {
	Addr netip.Addr
	OK   bool
}

func TestParseIPIsStrictAndCanonical(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		in   string
		want ipResult
	}{
		{"203.0.113.7", ipResult{a("203.0.113.7"), true}},
		{"2001:db8::1", ipResult{a("2001:db8::1"), true}},
		{"[2001:db8::1]", ipResult{a("2001:db8::1"), true}},
		{"2001:DB8:0:0::1", ipResult{a("2001:db8::1"), true}},
		{"::ffff:127.0.0.1", ipResult{a("127.0.0.1"), true}},
		{"[::ffff:169.254.169.254]", ipResult{a("169.254.169.254"), true}},
		{"::ffff:7f00:1", ipResult{a("127.0.0.1"), true}},
		{"::1", ipResult{a("::1"), true}},
		{"::169.254.169.254", ipResult{a("::a9fe:a9fe"), true}},
		{"[203.0.113.7]", ipResult{}},
		{"fe80::1%eth0", ipResult{}},
		{"[fe80::1%25eth0]", ipResult{}},
		{"127.1", ipResult{}},
		{"0177.0.0.1", ipResult{}},
		{"010.0.0.1", ipResult{}},
		{"0x7f.0.0.1", ipResult{}},
		{"2130706433", ipResult{}},
		{"0x7f000001", ipResult{}},
		{"127.0.0.1.", ipResult{}},
		{" 127.0.0.1", ipResult{}},
		{"127.0.0.1\x00", ipResult{}},
		{"127｡0｡0｡1", ipResult{}},
		{"[]", ipResult{}},
		{"", ipResult{}},
		{"[[::1]]", ipResult{}},
		{"256.0.0.1", ipResult{}},
		{"github.com", ipResult{}},
	}
	for _, tc := range tests {
		addr, ok := ParseIP(tc.in)
		if diff := cmp.Diff(tc.want, ipResult{addr, ok}, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
			t.Errorf("ParseIP(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}
