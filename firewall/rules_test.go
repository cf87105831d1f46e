package firewall

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/egressd/egressd/policy"
	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func uidPtr(u uint32) *uint32 { return &u }

// goldenConfigs are the configs whose rendered rules are pinned in testdata/.
var goldenConfigs = []struct {
	name string
	cfg  Config
}{
	{"filtered-mark", Config{
		Mode: policy.ModeFiltered, DNSPort: 5353, TransparentPort: 3129, ExplicitProxyPort: 3128,
		Mark: 0x2a,
	}},
	{"filtered-uid-fallback", Config{
		Mode: policy.ModeFiltered, DNSPort: 5353, TransparentPort: 3129, ExplicitProxyPort: 3128,
		ExemptUID: uidPtr(990),
	}},
	{"filtered-protected-ports", Config{
		Mode: policy.ModeFiltered, DNSPort: 5353, TransparentPort: 3129, ExplicitProxyPort: 3128,
		Mark: 0xe9d0, ExemptUID: uidPtr(990), UpstreamDNSPorts: []uint16{53, 5300},
		ProtectedPorts: []uint16{9090, 9091}, InboundTCPPorts: []uint16{9100},
	}},
	{"none", Config{Mode: policy.ModeNone}},
	{"none-ignores-filtered-fields", Config{Mode: policy.ModeNone, DNSPort: 5353, Mark: 7, ProtectedPorts: []uint16{9090}}},
}

// TestRulesGolden pins the exact rules each mode installs; a change to the
// firewall shows up as a reviewable diff of testdata/*.rules. Regenerate with
// go test ./firewall -run TestRulesGolden -update.
func TestRulesGolden(t *testing.T) {
	for _, tc := range goldenConfigs {
		t.Run(tc.name, func(t *testing.T) {
			v4, v6, err := Rules(tc.cfg)
			if err != nil {
				t.Fatalf("Rules: %v", err)
			}
			for _, g := range []struct {
				ext string
				got []byte
			}{{"v4", v4}, {"v6", v6}} {
				path := filepath.Join("testdata", tc.name+"."+g.ext+".rules")
				if *update {
					if err := os.WriteFile(path, g.got, 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("reading golden file (run with -update to create it): %v", err)
				}
				if diff := cmp.Diff(string(want), string(g.got)); diff != "" {
					t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
				}
			}
		})
	}
}

// TestNoneModeGoldenIgnoresFilteredFields: mode none is loopback only, so
// filtered-mode fields must not leak rules (an exemption or a redirect) into it.
func TestNoneModeGoldenIgnoresFilteredFields(t *testing.T) {
	a4, a6, err := Rules(Config{Mode: policy.ModeNone})
	if err != nil {
		t.Fatal(err)
	}
	b4, b6, err := Rules(goldenConfigs[4].cfg)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(a4)+string(a6), string(b4)+string(b6)); diff != "" {
		t.Errorf("none mode rules depend on ignored fields (-want +got):\n%s", diff)
	}
}

// TestRulesInvariants checks properties every rendered rule set must have,
// whatever the config: the ones the threat model depends on.
func TestRulesInvariants(t *testing.T) {
	for _, tc := range goldenConfigs {
		for _, f := range families {
			rs := buildRuleset(tc.cfg, f)
			out := rs[hook{"filter", "OUTPUT", ChainOutput}]
			in := rs[hook{"filter", "INPUT", ChainInput}]
			nat, hasNat := rs[hook{"nat", "OUTPUT", ChainOutput}]
			name := tc.name + "/" + f.String()

			// F4: the last OUTPUT rule rejects whatever the protocol.
			if last := out[len(out)-1]; !strings.HasPrefix(last, "-j REJECT") {
				t.Errorf("%s: last filter OUTPUT rule is %q, want a protocol-agnostic REJECT", name, last)
			}
			if last := in[len(in)-1]; last != "-j DROP" {
				t.Errorf("%s: last filter INPUT rule is %q, want -j DROP", name, last)
			}
			// F3: nothing accepts ICMP echo (8 / 128) anywhere.
			for _, r := range append(append([]string{}, out...), in...) {
				if strings.Contains(r, "icmp") && strings.HasSuffix(r, "ACCEPT") &&
					!strings.Contains(r, "--icmpv6-type 135") && !strings.Contains(r, "--icmpv6-type 136") && !strings.Contains(r, "--icmpv6-type 143") {
					t.Errorf("%s: rule %q accepts ICMP beyond neighbour discovery", name, r)
				}
			}
			// Every ACCEPT that is not loopback, conntrack, ND or exempt
			// would be a hole.
			for _, r := range out {
				if !strings.HasSuffix(r, "-j ACCEPT") {
					continue
				}
				switch {
				case r == "-m addrtype --dst-type LOCAL -j ACCEPT",
					// Established flows only in the reply direction: the
					// original direction of a flow out is egressd's (marked).
					r == "-m conntrack --ctstate ESTABLISHED --ctdir REPLY -j ACCEPT",
					r == "-m conntrack --ctstate RELATED -j ACCEPT",
					strings.Contains(r, "-m mark --mark 0x"),
					strings.Contains(r, "-m owner --uid-owner"),
					strings.Contains(r, "-m hl --hl-eq"):
				default:
					t.Errorf("%s: unexpected filter OUTPUT ACCEPT %q", name, r)
				}
				if (strings.Contains(r, "--mark") || strings.Contains(r, "--uid-owner")) &&
					!strings.HasPrefix(r, "-p tcp ") && !(strings.HasPrefix(r, "-p udp ") && strings.Contains(r, "--dport")) {
					t.Errorf("%s: exempt rule %q is broader than TCP and UDP to upstream DNS ports", name, r)
				}
			}
			if tc.cfg.Mode == policy.ModeNone {
				if hasNat {
					t.Errorf("%s: mode none has a nat chain", name)
				}
				continue
			}
			// D1/D2: UDP and TCP 53 are redirected before the loopback RETURN,
			// so 127.0.0.53:53 goes to egressd too; TCP redirect is last.
			idx := func(sub string) int {
				for i, r := range nat {
					if strings.Contains(r, sub) {
						return i
					}
				}
				return -1
			}
			udp53, tcp53, lo := idx("-p udp -m udp --dport 53 -j REDIRECT"), idx("-p tcp -m tcp --dport 53 -j REDIRECT"), idx("-m addrtype --dst-type LOCAL -j RETURN")
			if udp53 < 0 || tcp53 < 0 || lo < 0 || udp53 > lo || tcp53 > lo {
				t.Errorf("%s: nat must redirect udp and tcp 53 before the loopback RETURN: %q", name, nat)
			}
			if last := nat[len(nat)-1]; !strings.HasPrefix(last, "-p tcp -j REDIRECT") {
				t.Errorf("%s: last nat rule is %q, want the TCP redirect", name, last)
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Mode: policy.ModeFiltered, DNSPort: 5353, TransparentPort: 3129, Mark: 1}
	with := func(f func(c *Config)) Config {
		c := ok
		f(&c)
		return c
	}
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; nil means valid
	}{
		{"filtered ok", ok, nil},
		{"none ok with zero fields", Config{Mode: policy.ModeNone}, nil},
		{"uid fallback alone ok", with(func(c *Config) { c.Mark = 0; c.ExemptUID = uidPtr(990) }), nil},
		{"host refused", Config{Mode: policy.ModeHost}, []string{`mode "host"`, "no sandbox namespace"}},
		{"empty mode", Config{}, []string{"mode is empty"}},
		{"unknown mode", Config{Mode: "open"}, []string{`unknown mode "open"`}},
		{"no dns port", with(func(c *Config) { c.DNSPort = 0 }), []string{"DNSPort is required"}},
		{"no transparent port", with(func(c *Config) { c.TransparentPort = 0 }), []string{"TransparentPort is required"}},
		{"same dns and transparent", with(func(c *Config) { c.DNSPort = 3129 }), []string{"both 3129"}},
		{"explicit equals transparent", with(func(c *Config) { c.ExplicitProxyPort = 3129 }), []string{"ExplicitProxyPort and TransparentPort are both 3129"}},
		{"no exemption", with(func(c *Config) { c.Mark = 0 }), []string{"needs Mark"}},
		{"root uid", with(func(c *Config) { c.ExemptUID = uidPtr(0) }), []string{"ExemptUID 0"}},
		{"protected dns port", with(func(c *Config) { c.ProtectedPorts = []uint16{5353} }), []string{"ProtectedPorts contains DNSPort 5353"}},
		{"protected explicit port", with(func(c *Config) { c.ExplicitProxyPort = 3128; c.ProtectedPorts = []uint16{3128} }), []string{"ProtectedPorts contains ExplicitProxyPort 3128"}},
		{"protected duplicate", with(func(c *Config) { c.ProtectedPorts = []uint16{9090, 9090} }), []string{"lists port 9090 twice"}},
		{"protected zero", with(func(c *Config) { c.ProtectedPorts = []uint16{0} }), []string{"ProtectedPorts contains port 0"}},
		{"empty upstream list", with(func(c *Config) { c.UpstreamDNSPorts = []uint16{} }), []string{"UpstreamDNSPorts is empty"}},
		{"too many inbound", with(func(c *Config) { c.InboundTCPPorts = make([]uint16, 65) }), []string{"InboundTCPPorts has 65 ports"}},
		{"several problems at once", with(func(c *Config) { c.DNSPort = 0; c.Mark = 0 }), []string{"DNSPort is required", "needs Mark"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want error containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate error %q does not contain %q", err, w)
				}
			}
			// Every entry point refuses the config the same way.
			if _, _, rerr := Rules(tc.cfg); rerr == nil || rerr.Error() != err.Error() {
				t.Errorf("Rules error = %v, want %v", rerr, err)
			}
		})
	}
}
