package sandbox

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/egressd/egressd/firewall"
)

func TestPickPrefixSkipsEveryRangeInUse(t *testing.T) {
	pfx := netip.MustParsePrefix
	subnet := pfx("10.200.0.0/16")
	for _, tc := range []struct {
		name    string
		subnet  netip.Prefix
		taken   []netip.Prefix
		start   uint64
		want    string
		wantErr string
	}{
		{name: "empty namespace takes the start", subnet: subnet, start: 0, want: "10.200.0.0/30"},
		{name: "start is an index of /30s", subnet: subnet, start: 3, want: "10.200.0.12/30"},
		{name: "another sandbox's /30 is skipped", subnet: subnet, taken: []netip.Prefix{pfx("10.200.0.0/30")}, want: "10.200.0.4/30"},
		{name: "an address inside a candidate makes it taken", subnet: subnet, taken: []netip.Prefix{pfx("10.200.0.5/32")}, start: 1, want: "10.200.0.8/30"},
		{name: "a route over the range is skipped whole", subnet: subnet, taken: []netip.Prefix{pfx("10.200.0.0/24")}, want: "10.200.1.0/30"},
		{name: "wraps around past the end", subnet: pfx("10.9.0.0/28"), taken: []netip.Prefix{pfx("10.9.0.12/30")}, start: 3, want: "10.9.0.0/30"},
		{name: "start beyond the range wraps", subnet: pfx("10.9.0.0/28"), start: 6, want: "10.9.0.8/30"},
		{name: "unrelated ranges do not matter", subnet: subnet, taken: []netip.Prefix{pfx("10.0.0.0/16"), pfx("192.168.1.0/24")}, want: "10.200.0.0/30"},
		{name: "subnet given unmasked", subnet: pfx("10.9.0.7/29"), want: "10.9.0.0/30"},
		{name: "full subnet", subnet: pfx("10.9.0.0/29"), taken: []netip.Prefix{pfx("10.9.0.0/30"), pfx("10.9.0.4/30")}, wantErr: "has no free /30"},
		{name: "a covering route fills it", subnet: subnet, taken: []netip.Prefix{pfx("10.0.0.0/8")}, wantErr: "give another with --subnet"},
		{name: "IPv6 refused", subnet: pfx("fd00::/64"), wantErr: "want an IPv4 prefix"},
		{name: "smaller than a /30 refused", subnet: pfx("10.9.0.0/31"), wantErr: "want an IPv4 prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pickPrefix(tc.subnet, tc.taken, tc.start)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("pickPrefix: %v (%v), want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("pickPrefix = %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestUplinkAddrs(t *testing.T) {
	h, n := uplinkAddrs(netip.MustParsePrefix("10.200.3.8/30"))
	if h.String() != "10.200.3.9" || n.String() != "10.200.3.10" {
		t.Errorf("uplinkAddrs = %s, %s; want 10.200.3.9, 10.200.3.10", h, n)
	}
}

func requireRootNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and iptables rules")
	}
	for _, tool := range []string{"iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
}

// testNetNS makes a namespace named like a sandbox's and removes it when
// the test ends.
func testNetNS(t *testing.T) *netNS {
	t.Helper()
	ns, err := createNetNS(newID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.destroy(); err != nil {
			t.Errorf("destroying %s: %v", ns.name, err)
		}
	})
	return ns
}

// inNS runs a command in ns and returns its output.
func inNS(t *testing.T, ns *netNS, name string, args ...string) string {
	t.Helper()
	var out []byte
	err := ns.do(func() error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), ns.name, err, out)
	}
	return string(out)
}

// TestUplinkSetupAndRemoveLeaveNothing builds an uplink from a throwaway
// "launcher" namespace into a sandbox namespace, proves traffic crosses it
// (and only IPv4: no IPv6 address on either end), then removes it and
// finds the launcher's namespace as it was.
func TestUplinkSetupAndRemoveLeaveNothing(t *testing.T) {
	requireRootNetns(t)
	host := testNetNS(t)
	sb := testNetNS(t)
	before := inNS(t, host, "iptables-save") + inNS(t, host, "ip", "-o", "link")
	u := newUplink(sb.name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := host.do(func() error { return u.setup(ctx, sb, netip.MustParsePrefix("10.201.0.0/29"), t.TempDir()) })
	if err != nil {
		_ = host.do(func() error { return u.remove(ctx) })
		t.Fatalf("setup: %v", err)
	}

	saved := inNS(t, host, "iptables-save")
	for _, want := range []string{
		"-A FORWARD -j " + u.fwdChain, "-A POSTROUTING -j " + u.natChain,
		"-A " + u.natChain + " -s " + u.prefix.String() + " ! -o " + u.hostIf + " -j MASQUERADE",
	} {
		if !strings.Contains(saved, want+"\n") {
			t.Errorf("launcher namespace lacks %q:\n%s", want, saved)
		}
	}
	if fwd := strings.TrimSpace(inNS(t, host, "cat", "/proc/sys/net/ipv4/ip_forward")); fwd != "1" {
		t.Errorf("ip_forward = %s in the launcher's namespace, want 1", fwd)
	}
	if got := inNS(t, sb, "ip", "-6", "addr", "show", "dev", SandboxLink); strings.Contains(got, "inet6") {
		t.Errorf("the sandbox's %s has an IPv6 address:\n%s", SandboxLink, got)
	}
	if got := inNS(t, host, "ip", "-6", "addr", "show", "dev", u.hostIf); strings.Contains(got, "inet6") {
		t.Errorf("the launcher's %s has an IPv6 address:\n%s", u.hostIf, got)
	}
	if got := inNS(t, sb, "ip", "route"); !strings.HasPrefix(got, "default via "+u.hostAddr.String()+" dev "+SandboxLink) {
		t.Errorf("sandbox routes:\n%s\nwant the default via %s", got, u.hostAddr)
	}

	// A TCP connection from the sandbox to a listener on the launcher's
	// end: the link is up and routed.
	var ln net.Listener
	if err := host.do(func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(u.hostAddr, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	var got []byte
	if err := sb.do(func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		var buf bytes.Buffer
		_, err = buf.ReadFrom(c)
		got = buf.Bytes()
		return err
	}); err != nil || string(got) != "hello" {
		t.Errorf("sandbox → launcher over the uplink: %q, %v", got, err)
	}

	if err := host.do(func() error { return u.remove(ctx) }); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if err := host.do(func() error { return u.remove(ctx) }); err != nil {
		t.Errorf("second remove: %v", err)
	}
	after := inNS(t, host, "iptables-save") + inNS(t, host, "ip", "-o", "link")
	if normaliseSave(after) != normaliseSave(before) {
		t.Errorf("the launcher's namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	sh, err := sb.handle()
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	links, _ := sh.LinkList()
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			t.Errorf("the sandbox still has link %s", l.Attrs().Name)
		}
	}
}

// normaliseSave drops iptables-save's comments, counters, and the empty
// tables and built-in chains that merely using iptables-nft creates.
func normaliseSave(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		switch {
		case line == "", strings.HasPrefix(line, "#"), strings.HasPrefix(line, "*"), line == "COMMIT":
			continue
		case strings.HasPrefix(line, ":") && strings.Contains(line, " ACCEPT "):
			continue
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// TestUplinkRefusesANameInUse: a leftover link with the sandbox's name is
// never taken over.
func TestUplinkRefusesANameInUse(t *testing.T) {
	requireRootNetns(t)
	host := testNetNS(t)
	sb := testNetNS(t)
	u := newUplink(sb.name)
	err := host.do(func() error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = u.hostIf
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "squatter"}); err != nil {
			return err
		}
		return u.setup(context.Background(), sb, DefaultSubnet, t.TempDir())
	})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("setup over an existing link: %v, want an error saying it exists", err)
	}
}

// TestUplinkRemoveAfterPartialSetup: whatever part of the chains exists is
// removed, and what does not is not an error.
func TestUplinkRemoveAfterPartialSetup(t *testing.T) {
	requireRootNetns(t)
	host := testNetNS(t)
	u := newUplink(newID())
	u.prefix = netip.MustParsePrefix("10.200.0.0/30")
	ctx := context.Background()
	// Only the filter half, as if the nat table had failed.
	rules, err := firewall.UplinkRules(u.nat())
	if err != nil {
		t.Fatal(err)
	}
	half := strings.SplitAfter(string(rules), "COMMIT\n")[0]
	err = host.do(func() error {
		if err := firewall.System().Restore(ctx, "", firewall.IPv4, []byte(half)); err != nil {
			return err
		}
		return u.remove(ctx)
	})
	if err != nil {
		t.Fatalf("remove after a partial setup: %v", err)
	}
	if saved := inNS(t, host, "iptables-save"); strings.Contains(saved, "EGS-") {
		t.Errorf("chains left:\n%s", saved)
	}
	if err := host.do(func() error { return u.remove(ctx) }); err != nil {
		t.Errorf("remove with nothing there: %v", err)
	}
}
