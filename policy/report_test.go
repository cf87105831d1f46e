package policy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// wouldDeny is a decision with WouldDeny kept, for diffs.
type wouldDeny struct {
	Allow, WouldDeny bool
	Reason           Reason
	Rule             string
}

func summarizeReport(d Decision) wouldDeny {
	s := wouldDeny{Allow: d.Allow, WouldDeny: d.WouldDeny, Reason: d.Reason}
	if d.Rule != nil {
		s.Rule = d.Rule.Text
	}
	return s
}

func newReportMatcher(t *testing.T, allow, block []string) *Matcher {
	t.Helper()
	m, err := NewMatcher(NetworkPolicy{
		Mode:  ModeReport,
		Allow: parseRules(t, allow, Source{Kind: SourceFile, File: "allow.toml"}),
		Block: parseRules(t, block, Source{Kind: SourceFile, File: "block.toml"}),
		Self:  []netip.Addr{netip.MustParseAddr("198.51.100.77")},
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestReportModeRelaxesOnlyNoAllowRule: in report mode a name or address
// no allow rule admits is let through as a would-deny; a block rule, an
// invalid name and the address guard (metadata, loopback, private,
// egressd's own address) still refuse, and raw TCP is let through only
// where the rule learned from it (name:PORT) would admit it.
func TestReportModeRelaxesOnlyNoAllowRule(t *testing.T) {
	m := newReportMatcher(t, []string{"pypi.org", "ssh.example.com:22"}, []string{"*.evil.test", "203.0.113.66"})
	would := wouldDeny{Allow: true, WouldDeny: true, Reason: ReasonNoAllowRule}
	deny := func(r Reason, rule string) wouldDeny { return wouldDeny{Reason: r, Rule: rule} }
	allow := func(rule string) wouldDeny { return wouldDeny{Allow: true, Reason: ReasonAllowedBy, Rule: rule} }
	addr := netip.MustParseAddr
	for _, tc := range []struct {
		what string
		got  Decision
		want wouldDeny
	}{
		{"an allowed name", m.DecideName("pypi.org", 443), allow("pypi.org")},
		{"a name no rule allows", m.DecideName("new.example", 443), would},
		{"a name no rule allows, in DNS", m.DecideNameAnyPort("new.example"), would},
		{"an allowed name on another port", m.DecideName("pypi.org", 8443), would},
		{"a blocked name", m.DecideName("x.evil.test", 443), deny(ReasonBlockedBy, "*.evil.test")},
		{"a blocked name, in DNS", m.DecideNameAnyPort("x.evil.test"), deny(ReasonBlockedBy, "*.evil.test")},
		{"an invalid name", m.DecideName("a..b", 443), deny(ReasonInvalidName, "")},
		{"raw TCP to a name no rule allows, port 22", m.DecideNameRaw("git.example", 22), would},
		{"raw TCP to a name no rule allows, default port 443", m.DecideNameRaw("git.example", 443), deny(ReasonNoAllowRule, "")},
		{"raw TCP to a portless allowed name, port 443", m.DecideNameRaw("pypi.org", 443), deny(ReasonNoAllowRule, "")},
		{"raw TCP to a name allowed on its port", m.DecideNameRaw("ssh.example.com", 22), allow("ssh.example.com:22")},
		{"an address no rule names", m.DecideAddr(addr("203.0.113.7"), 443), would},
		{"a blocked address", m.DecideAddr(addr("203.0.113.66"), 443), deny(ReasonBlockedBy, "203.0.113.66")},
		{"the metadata address", m.DecideAddr(addr("169.254.169.254"), 80), deny(ReasonGuardedAddress, "")},
		{"loopback", m.DecideAddr(addr("127.0.0.1"), 80), deny(ReasonGuardedAddress, "")},
		{"private", m.DecideAddr(addr("10.0.0.5"), 443), deny(ReasonGuardedAddress, "")},
		{"IPv4-mapped loopback", m.DecideAddr(addr("::ffff:127.0.0.1"), 80), deny(ReasonGuardedAddress, "")},
		{"egressd's own address", m.DecideAddr(addr("198.51.100.77"), 3128), deny(ReasonGuardedAddress, "")},
		{"the guard on a name's address", m.GuardAddr(addr("169.254.169.254"), 443), deny(ReasonGuardedAddress, "")},
		{"Decide with a name", m.Decide(Target{Name: "new.example", Port: 443}), would},
		{"Decide with a guarded address", m.Decide(Target{Addr: addr("127.0.0.1"), Port: 443}), deny(ReasonGuardedAddress, "")},
	} {
		if diff := cmp.Diff(tc.want, summarizeReport(tc.got)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.what, diff)
		}
	}
	if got := m.Mode(); got != ModeReport {
		t.Errorf("Mode() = %s, want report", got)
	}
}

// TestFilteredModeNeverWouldDenies: the same requests in filtered mode are
// plain denials; nothing outside report mode sets WouldDeny.
func TestFilteredModeNeverWouldDenies(t *testing.T) {
	for _, mode := range []Mode{ModeFiltered, ModeHost, ModeNone} {
		m, err := NewMatcher(NetworkPolicy{Mode: mode, Allow: parseRules(t, []string{"pypi.org"}, Source{})})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range []Decision{m.DecideName("new.example", 443), m.DecideNameAnyPort("new.example"),
			m.DecideNameRaw("new.example", 22), m.DecideAddr(netip.MustParseAddr("203.0.113.7"), 443)} {
			if d.Allow || d.WouldDeny {
				t.Errorf("mode %s: %+v, want a denial", mode, d)
			}
		}
	}
}

// TestReportModeParsesAndIsProxied: network.mode = "report" in a file and
// --net report as a flag; the mode goes through egressd like filtered.
func TestReportModeParsesAndIsProxied(t *testing.T) {
	paths := writePolicies(t, [2]string{"policy.toml", "version = 1\nprofile = \"open\"\n[network]\nmode = \"report\"\nallow = [\"pypi.org\"]\n"})
	p, warnings, err := Resolve(ResolveOptions{Files: paths})
	if err != nil {
		t.Fatal(err)
	}
	if p.Network.Mode != ModeReport || p.SourceOf("network.mode").Line != 4 {
		t.Errorf("mode %s from %s, want report from line 4", p.Network.Mode, p.SourceOf("network.mode"))
	}
	if !hasWarning(warnings, ReportModeMeaning) {
		t.Errorf("warnings %v: want one saying what report mode means", warnings)
	}
	p, _, err = Resolve(ResolveOptions{Profile: "open", Overrides: []Setting{{Key: "network.mode", Values: []string{"report"}, Source: Flag("--net")}}})
	if err != nil || p.Network.Mode != ModeReport {
		t.Fatalf("--net report: mode %v, err %v", p.Network.Mode, err)
	}
	for mode, want := range map[Mode]bool{ModeFiltered: true, ModeReport: true, ModeNone: false, ModeHost: false} {
		if mode.Proxied() != want {
			t.Errorf("%s.Proxied() = %v", mode, !want)
		}
	}
	// Capabilities that undo the firewall are refused as in filtered mode.
	_, _, err = Resolve(ResolveOptions{Profile: "open", Overrides: []Setting{
		{Key: "network.mode", Values: []string{"report"}, Source: Flag("--net")},
		{Key: "process.cap_add", Values: []string{"NET_ADMIN"}, Source: Flag("--cap-add")}}})
	if err == nil || !strings.Contains(err.Error(), `bypass egressd's filtering (network.mode = "report" from flag:--net)`) {
		t.Errorf("report mode with NET_ADMIN: err %v", err)
	}
}

func hasWarning(ws []Warning, text string) bool {
	for _, w := range ws {
		if strings.Contains(w.Msg, text) {
			return true
		}
	}
	return false
}

// TestFloorRefusesReportModeUnlessItAllowsUnfilteredNetwork: report mode
// lets every name through, so only the open floor (or none) accepts it;
// the refusal names the value, its source, what it means and what to do.
func TestFloorRefusesReportModeUnlessItAllowsUnfilteredNetwork(t *testing.T) {
	net := []Setting{{Key: "network.mode", Values: []string{"report"}, Source: Flag("--net")}}
	for _, floor := range []string{"standard", "strict", "offline", "moderate"} {
		_, _, err := Resolve(ResolveOptions{Profile: "strict", Overrides: net, Floor: floor})
		var fe *FloorError
		if !errors.As(err, &fe) {
			t.Fatalf("floor %s: err %v, want a FloorError", floor, err)
		}
		want := `network.mode "report" (flag:--net) ` + ReportFloorRefusal
		if fe.Violations[0].String() != want {
			t.Errorf("floor %s: violation\n%s\nwant\n%s", floor, fe.Violations[0], want)
		}
	}
	for _, floor := range []string{"", "open", "permissive"} {
		if _, _, err := Resolve(ResolveOptions{Profile: "open", Overrides: net, Floor: floor}); err != nil {
			t.Errorf("floor %q refused report mode: %v", floor, err)
		}
	}
	// Report is looser than filtered, stricter than host.
	if _, _, err := Resolve(ResolveOptions{Profile: "strict", Overrides: []Setting{{Key: "network.mode", Values: []string{"host"}}}, Floor: "standard"}); err == nil {
		t.Error("floor standard accepted mode host")
	}
}
