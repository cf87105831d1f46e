package main

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/internal/privtest"
	"github.com/egressd/egressd/policy"
)

func u32(v uint32) *uint32 { return &v }

func TestFirewallFlagsBecomeTheConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want firewall.Config
	}{
		{"defaults match serve's listeners", []string{"--mark", "0x4547"}, firewall.Config{
			Mode: policy.ModeFiltered, DNSPort: defaultDNSPort, TransparentPort: defaultTransparentPort,
			ExplicitProxyPort: defaultProxyPort, Mark: 0x4547}},
		{"pod sidecar with the uid fallback", []string{"--exempt-uid", "1337", "--dns-port", "15053", "--admin-port", "9901,9902",
			"--upstream-dns-port", "53", "--upstream-dns-port", "5353", "--inbound-port", "8080", "--proxy-port", "0"},
			firewall.Config{Mode: policy.ModeFiltered, DNSPort: 15053, TransparentPort: defaultTransparentPort,
				ExemptUID: u32(1337), ProtectedPorts: []uint16{9901, 9902}, UpstreamDNSPorts: []uint16{53, 5353}, InboundTCPPorts: []uint16{8080}}},
		{"mode none ignores the rest", []string{"--mode", "none", "--mark", "7"}, firewall.Config{Mode: policy.ModeNone}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, o := newFirewallFlags("install", os.Stderr)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			got, err := o.config()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestFirewallBadFlagsAreUsageErrorsThatNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"install"}, "--exempt-uid"},
		{[]string{"install", "--mark", "1", "--dns-port", "70000"}, "--dns-port 70000"},
		{[]string{"install", "--exempt-uid", "0"}, "ExemptUID 0"},
		{[]string{"install", "--exempt-uid", "egressd"}, "numeric uid"},
		{[]string{"install", "--mark", "1", "--admin-port", "15001"}, "--admin-port"},
		{[]string{"install", "--mark", "1", "--mode", "host"}, `mode "host"`},
		{[]string{"verify", "--mark", "1", "--dry-run"}, "-dry-run"},
		{[]string{"remove", "--mark", "1"}, "-mark"},
		{[]string{"install", "--mark", "1", "extra"}, `unexpected argument "extra"`},
		{[]string{"reinstall"}, `unknown operation "reinstall"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, _, errOut := runCLI(t, append([]string{"firewall"}, tc.args...)...)
			if code != exitUsage || !strings.Contains(errOut, tc.want) {
				t.Errorf("code %d (want %d), stderr %q (want %q in it)", code, exitUsage, errOut, tc.want)
			}
		})
	}
}

// TestFirewallDryRunPrintsTheLaunchersRules: the dry run is firewall.Rules,
// the very batches the launcher installs for the same config.
func TestFirewallDryRunPrintsTheLaunchersRules(t *testing.T) {
	code, out, errOut := runCLI(t, "firewall", "install", "--dry-run", "--exempt-uid", "1337", "--dns-port", "15053", "--admin-port", "9901")
	if code != exitOK {
		t.Fatalf("code %d: %s", code, errOut)
	}
	v4, v6, err := firewall.Rules(firewall.Config{Mode: policy.ModeFiltered, DNSPort: 15053, TransparentPort: defaultTransparentPort,
		ExplicitProxyPort: defaultProxyPort, ExemptUID: u32(1337), ProtectedPorts: []uint16{9901}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(v4)+string(v6), out); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestFirewallWithoutNetAdminSaysSo(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root holds CAP_NET_ADMIN; the e2e pod test runs this as the workload's uid")
	}
	code, _, errOut := runCLI(t, "firewall", "verify", "--mark", "1")
	if code != exitFail || !strings.Contains(errOut, "needs CAP_NET_ADMIN") {
		t.Errorf("code %d, stderr %q; want %d and a word about CAP_NET_ADMIN", code, errOut, exitFail)
	}
}

// TestFirewallInstallIsIdempotentAndVerifyShowsTampering runs the command
// against a throwaway namespace: install twice (one copy of the rules),
// verify clean, delete a rule behind its back, verify fails naming the rule,
// install repairs it, remove takes it out.
func TestFirewallInstallIsIdempotentAndVerifyShowsTampering(t *testing.T) {
	privtest.Require(t, "creates a network namespace and runs iptables in it")
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := "egt-fwcli-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns := "/run/netns/" + name
	flags := []string{"--netns", ns, "--exempt-uid", "1337", "--dns-port", "15053", "--admin-port", "9901"}
	fw := func(op string, extra ...string) (int, string) {
		t.Helper()
		code, out, errOut := runCLI(t, append(append([]string{"firewall", op}, flags...), extra...)...)
		return code, out + errOut
	}
	netnsRun := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", name}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	for i := 0; i < 2; i++ {
		if code, out := fw("install"); code != exitOK || !strings.Contains(out, "installed and verified") {
			t.Fatalf("install #%d: code %d\n%s", i+1, code, out)
		}
	}
	if n := strings.Count(netnsRun("iptables", "-S", "OUTPUT"), "-j "+firewall.ChainOutput); n != 1 {
		t.Errorf("after two installs OUTPUT jumps to %s %d times, want once", firewall.ChainOutput, n)
	}
	if code, out := fw("verify"); code != exitOK {
		t.Fatalf("verify after install: code %d\n%s", code, out)
	}
	// A verify with other flags than the install is a difference too.
	if code, out := fw("verify", "--dns-port", "15054"); code != exitFail || !strings.Contains(out, "--to-ports 15054") {
		t.Errorf("verify with another DNS port: code %d, want %d and the rule in the diff\n%s", code, exitFail, out)
	}

	netnsRun("ip6tables", "-D", firewall.ChainOutput, "-p", "tcp", "-m", "addrtype", "--dst-type", "LOCAL", "-m", "tcp", "--dport", "9901", "-j", "REJECT", "--reject-with", "tcp-reset")
	code, out := fw("verify")
	if code != exitFail || !strings.Contains(out, "- -A EGRESSD-OUTPUT -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 9901 -j REJECT --reject-with tcp-reset") ||
		!strings.Contains(out, "IPv6") {
		t.Errorf("verify after deleting the IPv6 admin-port rule: code %d, want %d and the rule as a - line\n%s", code, exitFail, out)
	}
	if code, out := fw("install"); code != exitOK {
		t.Fatalf("install over the tampered rules: code %d\n%s", code, out)
	}
	if code, out := fw("verify"); code != exitOK {
		t.Errorf("verify after the repair: code %d\n%s", code, out)
	}

	code, rmOut, errOut := runCLI(t, "firewall", "remove", "--netns", ns)
	if code != exitOK {
		t.Fatalf("remove: code %d\n%s%s", code, rmOut, errOut)
	}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if s := netnsRun(tool); strings.Contains(s, "EGRESSD") {
			t.Errorf("%s after remove still names our chains:\n%s", tool, s)
		}
	}
	if code, out := fw("verify"); code != exitFail || !strings.Contains(out, "chain missing") {
		t.Errorf("verify after remove: code %d, want %d and \"chain missing\"\n%s", code, exitFail, out)
	}
}
