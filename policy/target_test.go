package policy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseTargetAcceptsEveryDestinationForm(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		in   string
		want Target
		str  string
	}{
		{"github.com", Target{Name: "github.com", Port: 443}, "github.com:443"},
		{"github.com:80", Target{Name: "github.com", Port: 80}, "github.com:80"},
		{"GitHub.COM.:443", Target{Name: "github.com", Port: 443}, "github.com:443"},
		{"bücher.de:8443", Target{Name: "xn--bcher-kva.de", Port: 8443}, "xn--bcher-kva.de:8443"},
		{"ｇithub.com", Target{Name: "github.com", Port: 443}, "github.com:443"},
		{"_srv.example.com:65535", Target{Name: "_srv.example.com", Port: 65535}, "_srv.example.com:65535"},
		{"203.0.113.7", Target{Addr: a("203.0.113.7"), Port: 443}, "203.0.113.7:443"},
		{"203.0.113.7:80", Target{Addr: a("203.0.113.7"), Port: 80}, "203.0.113.7:80"},
		{"[2001:db8::1]:443", Target{Addr: a("2001:db8::1"), Port: 443}, "[2001:db8::1]:443"},
		{"[2001:DB8::1]", Target{Addr: a("2001:db8::1"), Port: 443}, "[2001:db8::1]:443"},
		{"2001:db8::1", Target{Addr: a("2001:db8::1"), Port: 443}, "[2001:db8::1]:443"},
		{"[::ffff:127.0.0.1]:80", Target{Addr: a("127.0.0.1"), Port: 80}, "127.0.0.1:80"},
		{"::ffff:169.254.169.254", Target{Addr: a("169.254.169.254"), Port: 443}, "169.254.169.254:443"},
		{"[::1]:1", Target{Addr: a("::1"), Port: 1}, "[::1]:1"},
	}
	for _, tc := range tests {
		got, err := ParseTarget(tc.in, 443)
		if err != nil {
			t.Errorf("ParseTarget(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
			t.Errorf("ParseTarget(%q) (-want +got):\n%s", tc.in, diff)
		}
		if s := got.String(); s != tc.str {
			t.Errorf("ParseTarget(%q).String() = %q, want %q", tc.in, s, tc.str)
		}
	}
}

func TestParseTargetRefusesMalformedDestinations(t *testing.T) {
	long := strings.Repeat("a", 64)
	for _, in := range []string{
		"",
		":443",
		"github.com:",
		"github.com:0",
		"github.com:0443",
		"github.com:+443",
		"github.com:-12",
		"github.com:91337",
		"github.com:https",
		"github.com:443 extra",
		"github.com :443",
		"[github.com]:443",
		"[[github.com]]:443",
		"[[::1]]:443",
		"[203.0.113.7]:443",
		"[::1]443",
		"[::1",
		"[fe80::1%eth0]:443",
		"fe80::1%eth0",
		"2001:db8::1:443:x",
		"a..github.com:443",
		".github.com:443",
		"github.com..:443",
		long + ".com:443",
		"attacker.example\x00.github.com:443",
		"evil.example%00.github.com:443",
		"github.com@evil.example:443",
		"github.com\\@evil.example",
		"127｡0｡0｡1:80",
		"127.1:80",
		"0x7f000001:80",
		"2130706433",
		"0177.0.0.1",
		"010.0.0.1:80",
		"169.254.43518",
	} {
		got, err := ParseTarget(in, 443)
		if err == nil {
			t.Errorf("ParseTarget(%q) = %+v, want an error", in, got)
			continue
		}
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ParseTarget(%q) error %v does not wrap ErrInvalidName", in, err)
		}
	}
	if _, err := ParseTarget("github.com", 0); !errors.Is(err, ErrInvalidName) {
		t.Errorf("missing port with default 0: %v, want ErrInvalidName", err)
	}
}

func TestTargetStringWithoutPort(t *testing.T) {
	for _, tc := range []struct {
		t    Target
		want string
	}{
		{Target{Name: "github.com"}, "github.com"},
		{Target{Addr: netip.MustParseAddr("2001:db8::1")}, "2001:db8::1"},
		{Target{Addr: netip.MustParseAddr("203.0.113.7")}, "203.0.113.7"},
		{Target{}, ""},
	} {
		if got := tc.t.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.t, got, tc.want)
		}
	}
}
