package firewall

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var testUplink = Uplink{Link: "egs-0a1b2c3d", Prefix: netip.MustParsePrefix("10.200.7.4/30"),
	ForwardChain: "EGS-0a1b2c3d-FWD", NATChain: "EGS-0a1b2c3d-NAT"}

// TestUplinkRulesGolden pins the launcher-side rules: per-sandbox chains,
// one jump each, MASQUERADE only for the sandbox's /30 and not back into
// it, and new connections into the sandbox dropped.
func TestUplinkRulesGolden(t *testing.T) {
	rules, err := UplinkRules(testUplink)
	if err != nil {
		t.Fatal(err)
	}
	got := "# install\n" + string(rules) + "# remove\n" + string(uplinkRemoveRules(testUplink))
	path := filepath.Join("testdata", "uplink.rules")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("uplink rules (-want +got):\n%s", diff)
	}
}

// TestUplinkInstallAndRemoveLeaveNothing: the chains and jumps go into the
// caller's namespace, leave it as they found it, and a second removal is
// no error.
func TestUplinkInstallAndRemoveLeaveNothing(t *testing.T) {
	k := NewFake()
	k.AddRule("", IPv4, "filter", "FORWARD", "-i docker0 -j ACCEPT") // someone else's
	before := k.Save("", IPv4)
	fw := New(k)
	ctx := context.Background()
	if err := fw.InstallUplink(ctx, testUplink); err != nil {
		t.Fatal(err)
	}
	saved := k.Save("", IPv4)
	for _, want := range []string{
		"-A FORWARD -j EGS-0a1b2c3d-FWD\n-A FORWARD -i docker0 -j ACCEPT\n",
		"-A POSTROUTING -j EGS-0a1b2c3d-NAT\n",
		"-A EGS-0a1b2c3d-NAT -s 10.200.7.4/30 ! -o egs-0a1b2c3d -j MASQUERADE\n",
	} {
		if !strings.Contains(saved, want) {
			t.Errorf("after install, no %q in\n%s", want, saved)
		}
	}
	for range 2 {
		if err := fw.RemoveUplink(ctx, testUplink); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(before, k.Save("", IPv4)); diff != "" {
			t.Errorf("after remove (-before +after):\n%s", diff)
		}
	}
}

// TestUplinkRemoveAfterPartialInstall: whatever part of the chains exists
// is removed, and what does not is not an error.
func TestUplinkRemoveAfterPartialInstall(t *testing.T) {
	rules, _ := UplinkRules(testUplink)
	for name, batch := range map[string]string{
		"filter half only":     strings.SplitAfter(string(rules), "COMMIT\n")[0],
		"nat half only":        strings.SplitAfter(string(rules), "COMMIT\n")[1],
		"chain without a jump": "*nat\n:EGS-0a1b2c3d-NAT - [0:0]\nCOMMIT\n",
	} {
		t.Run(name, func(t *testing.T) {
			k := NewFake()
			before := k.Save("", IPv4)
			if err := k.Restore(context.Background(), "", IPv4, []byte(batch)); err != nil {
				t.Fatal(err)
			}
			if err := New(k).RemoveUplink(context.Background(), testUplink); err != nil {
				t.Fatalf("remove after a partial install: %v", err)
			}
			if diff := cmp.Diff(before, k.Save("", IPv4)); diff != "" {
				t.Errorf("left (-before +after):\n%s", diff)
			}
		})
	}
}

func TestUplinkErrorsSayWhat(t *testing.T) {
	boom := errors.New("boom")
	k := NewFake()
	k.Fail = func(op, _ string, _ Family) error {
		if op == "restore" {
			return boom
		}
		return nil
	}
	fw := New(k)
	if err := fw.InstallUplink(context.Background(), testUplink); !errors.Is(err, boom) || !strings.Contains(err.Error(), "uplink egs-0a1b2c3d: NAT rules") {
		t.Errorf("install with a failing restore: %v", err)
	}
	// Nothing is there, so nothing needs a restore: no error.
	if err := fw.RemoveUplink(context.Background(), testUplink); err != nil {
		t.Errorf("remove of nothing with a failing restore: %v", err)
	}
	k.Fail = nil
	if err := fw.InstallUplink(context.Background(), testUplink); err != nil {
		t.Fatal(err)
	}
	k.Fail = func(op, _ string, _ Family) error { return boom }
	if err := fw.RemoveUplink(context.Background(), testUplink); !errors.Is(err, boom) || !strings.Contains(err.Error(), "listing filter FORWARD") {
		t.Errorf("remove with everything failing: %v", err)
	}
	for _, bad := range []Uplink{
		{Link: "x -j ACCEPT", Prefix: testUplink.Prefix, ForwardChain: "A", NATChain: "B"},
		{Link: "x", Prefix: testUplink.Prefix, ForwardChain: "-F", NATChain: "B"},
		{Link: "x", Prefix: netip.MustParsePrefix("fd00::/64"), ForwardChain: "A", NATChain: "B"},
		{Link: "x", ForwardChain: "A", NATChain: strings.Repeat("N", 29)},
	} {
		if _, err := UplinkRules(bad); err == nil {
			t.Errorf("UplinkRules(%+v) accepted it", bad)
		}
	}
}
