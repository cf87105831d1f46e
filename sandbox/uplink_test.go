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
	"github.com/egressd/egressd/internal/nsthread"
	"github.com/egressd/egressd/internal/privtest"
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
	privtest.Require(t, "creates network namespaces, veths and iptables rules")
	for _, tool := range []string{"iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
}

// uplinkSandbox is a sandbox of namespace sb with nothing but an uplink
// plan, from the launcher namespace launcher (a throwaway one: the test's
// own stays untouched).
func uplinkSandbox(t *testing.T, launcher, sb NetNS, subnet netip.Prefix) *Sandbox {
	u := planUplink(sb.Name, subnet)
	u.LauncherNetns = launcher.Path
	return &Sandbox{k: HostKernel(), plan: &Plan{StateRoot: t.TempDir(), Netns: sb.Path, Uplink: u}}
}

// testNetNS makes a namespace named like a sandbox's and removes it when
// the test ends.
func testNetNS(t *testing.T) NetNS {
	t.Helper()
	ns, err := hostNamespaces{}.Create(newID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := (hostNamespaces{}).Remove(ns); err != nil {
			t.Errorf("removing %s: %v", ns.Name, err)
		}
	})
	return ns
}

// in runs fn on a thread inside ns.
func in(ns NetNS, fn func() error) error { return nsthread.InNetns(ns.Path, fn) }

// inNS runs a command in ns and returns its output.
func inNS(t *testing.T, ns NetNS, name string, args ...string) string {
	t.Helper()
	var out []byte
	err := in(ns, func() error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), ns.Name, err, out)
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
	s := uplinkSandbox(t, host, sb, netip.MustParsePrefix("10.201.0.0/29"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.setupUplink(ctx); err != nil {
		if s.up != nil {
			_ = s.removeUplink(ctx, s.up, false)
		}
		t.Fatalf("setup: %v", err)
	}
	u := s.up
	hostAddr, _ := uplinkAddrs(u.prefix)

	saved := inNS(t, host, "iptables-save")
	for _, want := range []string{
		"-A FORWARD -j " + u.plan.ForwardChain, "-A POSTROUTING -j " + u.plan.NATChain,
		"-A " + u.plan.NATChain + " -s " + u.prefix.String() + " ! -o " + u.plan.Link + " -j MASQUERADE",
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
	if got := inNS(t, host, "ip", "-6", "addr", "show", "dev", u.plan.Link); strings.Contains(got, "inet6") {
		t.Errorf("the launcher's %s has an IPv6 address:\n%s", u.plan.Link, got)
	}
	if got := inNS(t, sb, "ip", "route"); !strings.HasPrefix(got, "default via "+hostAddr.String()+" dev "+SandboxLink) {
		t.Errorf("sandbox routes:\n%s\nwant the default via %s", got, hostAddr)
	}

	// A TCP connection from the sandbox to a listener on the launcher's
	// end: the link is up and routed.
	var ln net.Listener
	if err := in(host, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(hostAddr, 0).String())
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
	if err := in(sb, func() error {
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

	if err := s.removeUplink(ctx, u, false); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if err := s.removeUplink(ctx, u, false); err != nil {
		t.Errorf("second remove: %v", err)
	}
	after := inNS(t, host, "iptables-save") + inNS(t, host, "ip", "-o", "link")
	if normaliseSave(after) != normaliseSave(before) {
		t.Errorf("the launcher's namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	sh, err := netnsHandle(sb.Path)
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
	s := uplinkSandbox(t, host, sb, DefaultSubnet)
	err := in(host, func() error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = s.plan.Uplink.Link
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "squatter"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.setupUplink(context.Background()); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("setup over an existing link: %v, want an error saying it exists", err)
	}
}

// TestUplinkRemoveAfterPartialSetup: whatever part of the chains exists is
// removed, and what does not is not an error.
func TestUplinkRemoveAfterPartialSetup(t *testing.T) {
	requireRootNetns(t)
	host := testNetNS(t)
	s := uplinkSandbox(t, host, NetNS{Name: newID()}, DefaultSubnet)
	u := &uplink{plan: s.plan.Uplink, prefix: netip.MustParsePrefix("10.200.0.0/30")}
	ctx := context.Background()
	// Only the filter half, as if the nat table had failed.
	rules, err := firewall.UplinkRules(u.plan.nat(u.prefix))
	if err != nil {
		t.Fatal(err)
	}
	half := strings.SplitAfter(string(rules), "COMMIT\n")[0]
	if err := firewall.System().Restore(ctx, host.Path, firewall.IPv4, []byte(half)); err != nil {
		t.Fatal(err)
	}
	if err := s.removeUplink(ctx, u, false); err != nil {
		t.Fatalf("remove after a partial setup: %v", err)
	}
	if saved := inNS(t, host, "iptables-save"); strings.Contains(saved, "EGS-") {
		t.Errorf("chains left:\n%s", saved)
	}
	if err := s.removeUplink(ctx, u, false); err != nil {
		t.Errorf("remove with nothing there: %v", err)
	}
}

// TestUplinkGoesWithTheNamespace: once the sandbox's namespace is removed,
// the kernel removes the veth pair on its own; removeUplink waits for that
// (vethGoneWait) rather than deleting the link itself, then removes the
// chains: when it returns, the launcher's namespace is as it was. In the
// second round something still holds the namespace (as an orphaned socket
// of egressd's would: review 3): the kernel keeps it and its veth, and
// removeUplink deletes the link itself.
func TestUplinkGoesWithTheNamespace(t *testing.T) {
	requireRootNetns(t)
	host := testNetNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	state := func() string {
		return normaliseSave(inNS(t, host, "iptables-save")) + inNS(t, host, "ip", "-o", "link") + inNS(t, host, "ip", "route")
	}
	before := state()
	id := newID()
	for _, pinned := range []bool{false, true} {
		sb, err := hostNamespaces{}.Create(id)
		if err != nil {
			t.Fatal(err)
		}
		s := uplinkSandbox(t, host, sb, netip.MustParsePrefix("10.201.0.0/29"))
		err = s.setupUplink(ctx)
		var hold *os.File
		if pinned {
			if hold, err = os.Open(sb.Path); err != nil {
				t.Fatal(err)
			}
		}
		if rerr := (hostNamespaces{}).Remove(sb); rerr != nil {
			t.Fatalf("removing the namespace: %v", rerr)
		}
		if err != nil {
			t.Fatalf("pinned %v: setup: %v", pinned, err)
		}
		err = s.removeUplink(ctx, s.up, true)
		after := state()
		if hold != nil {
			hold.Close()
		}
		if err != nil {
			t.Fatalf("pinned %v: remove: %v", pinned, err)
		}
		if after != before {
			t.Fatalf("pinned %v: the launcher's namespace differs once removeUplink returned:\nbefore:\n%s\nafter:\n%s", pinned, before, after)
		}
	}
}
