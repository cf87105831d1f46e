package firewall

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/internal/privtest"
	"github.com/egressd/egressd/policy"
)

var (
	testFiltered = Config{
		Mode: policy.ModeFiltered, DNSPort: 5353, TransparentPort: 3129, ExplicitProxyPort: 3128,
		Mark: 0x2a, ProtectedPorts: []uint16{9090},
	}
	testNone = Config{Mode: policy.ModeNone}
)

// install and flush plan one family's batch against k and apply it, as
// Firewall.Install and Flush do for each family.
func install(ctx context.Context, k *fakeIPT, f Family, cfg Config) error {
	b, err := planInstall(ctx, k, f, cfg)
	if err != nil {
		return err
	}
	return k.restore(ctx, b)
}

func flush(ctx context.Context, k *fakeIPT, f Family) error {
	b, err := planFlush(ctx, k, f)
	if err != nil {
		return err
	}
	return k.restore(ctx, b)
}

// mustInstall installs cfg into the fake for f and fails the test on error.
func mustInstall(t *testing.T, k *fakeIPT, f Family, cfg Config) {
	t.Helper()
	if err := install(context.Background(), k, f, cfg); err != nil {
		t.Fatalf("install: %v", err)
	}
}

func mustVerifyClean(t *testing.T, k *fakeIPT, f Family, cfg Config) {
	t.Helper()
	problems, err := verify(context.Background(), k, f, cfg)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if len(problems) > 0 {
		t.Fatalf("verify found problems after install:\n%s", strings.Join(problems, "\n"))
	}
}

// TestInstallIntoFreshNamespaceSendsRulesBatch: what Install sends to a
// namespace without our chains is exactly the golden Rules output, so the
// golden files show what really reaches the kernel.
func TestInstallIntoFreshNamespaceSendsRulesBatch(t *testing.T) {
	v4, v6, err := Rules(testFiltered)
	if err != nil {
		t.Fatal(err)
	}
	for f, want := range map[Family][]byte{IPv4: v4, IPv6: v6} {
		k := newFakeIPT()
		mustInstall(t, k, f, testFiltered)
		if len(k.batches) != 1 {
			t.Fatalf("%s: %d restore batches, want 1", f, len(k.batches))
		}
		if diff := cmp.Diff(string(want), k.batches[0]); diff != "" {
			t.Errorf("%s: batch differs from Rules (-want +got):\n%s", f, diff)
		}
		mustVerifyClean(t, k, f, testFiltered)
	}
}

// TestInstallCostsOneRestoreAndThreeLists pins the number of iptables execs
// per family (each costs milliseconds here): 3 listings and 1 restore.
func TestInstallCostsOneRestoreAndThreeLists(t *testing.T) {
	k := newFakeIPT()
	mustInstall(t, k, IPv4, testFiltered)
	want := []string{"List filter INPUT", "List filter OUTPUT", "List nat OUTPUT", "restore"}
	if diff := cmp.Diff(want, k.calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}

// TestInstallTwiceLeavesOneCopy: installing again (same or changed config)
// refills our chains and never duplicates a rule or a jump.
func TestInstallTwiceLeavesOneCopy(t *testing.T) {
	for _, f := range families {
		k := newFakeIPT()
		mustInstall(t, k, f, testFiltered)
		first := k.save()
		mustInstall(t, k, f, testFiltered)
		if diff := cmp.Diff(first, k.save()); diff != "" {
			t.Errorf("%s: second install changed the state (-want +got):\n%s", f, diff)
		}
		changed := testFiltered
		changed.DNSPort = 1053
		mustInstall(t, k, f, changed)
		mustVerifyClean(t, k, f, changed)
		if n := strings.Count(k.save(), "--to-ports 5353"); n != 0 {
			t.Errorf("%s: %d rules of the old config left after re-install", f, n)
		}
	}
}

// TestInstallRepairsJumps: whatever state the built-in chains are in, one
// Install leaves exactly one jump, first, and keeps every foreign rule.
func TestInstallRepairsJumps(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(k *fakeIPT)
		// foreign rules that must survive, in order, in filter OUTPUT after
		// our jump.
		wantOutput []string
	}{
		{"foreign rule inserted before our jump", func(k *fakeIPT) {
			k.insert("filter", "OUTPUT", 1, "-j ACCEPT")
		}, []string{"-j EGRESSD-OUTPUT", "-j ACCEPT"}},
		{"duplicate jumps", func(k *fakeIPT) {
			k.add("filter", "OUTPUT", "-j EGRESSD-OUTPUT")
			k.add("filter", "OUTPUT", "-j EGRESSD-OUTPUT")
		}, []string{"-j EGRESSD-OUTPUT"}},
		{"jump deleted", func(k *fakeIPT) {
			k.deleteRule("filter", "OUTPUT", 1)
		}, []string{"-j EGRESSD-OUTPUT"}},
		{"narrowed jump and goto", func(k *fakeIPT) {
			k.deleteRule("filter", "OUTPUT", 1)
			k.add("filter", "OUTPUT", "-p udp -j EGRESSD-OUTPUT")
			k.add("filter", "OUTPUT", "-p tcp -m tcp --dport 22 -j ACCEPT")
			k.add("filter", "OUTPUT", "-g EGRESSD-OUTPUT")
		}, []string{"-j EGRESSD-OUTPUT", "-p tcp -m tcp --dport 22 -j ACCEPT"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeIPT()
			mustInstall(t, k, IPv4, testFiltered)
			tc.tamper(k)
			problems, err := verify(context.Background(), k, IPv4, testFiltered)
			if err != nil {
				t.Fatal(err)
			}
			if len(problems) == 0 {
				t.Fatal("verify saw nothing wrong after tampering")
			}
			mustInstall(t, k, IPv4, testFiltered)
			mustVerifyClean(t, k, IPv4, testFiltered)
			if diff := cmp.Diff(tc.wantOutput, k.tables["filter"].rules["OUTPUT"]); diff != "" {
				t.Errorf("filter OUTPUT after repair (-want +got):\n%s", diff)
			}
		})
	}
}

// TestInstallSwitchingToNoneRemovesNat: a namespace re-installed from
// filtered to none keeps no redirect and no exemption.
func TestInstallSwitchingToNoneRemovesNat(t *testing.T) {
	for _, f := range families {
		k := newFakeIPT()
		mustInstall(t, k, f, testFiltered)
		mustInstall(t, k, f, testNone)
		mustVerifyClean(t, k, f, testNone)
		if _, ok := k.tables["nat"].rules[ChainOutput]; ok {
			t.Errorf("%s: nat %s still exists in mode none", f, ChainOutput)
		}
		if s := k.save(); strings.Contains(s, "--mark") || strings.Contains(s, "REDIRECT") {
			t.Errorf("%s: mode none state still has filtered rules:\n%s", f, s)
		}
		// and back
		mustInstall(t, k, f, testFiltered)
		mustVerifyClean(t, k, f, testFiltered)
	}
}

// TestInstallNoneIntoFreshNamespace: removing a nat chain that was never
// there is not an error (the batch creates and deletes it in one commit).
func TestInstallNoneIntoFreshNamespace(t *testing.T) {
	k := newFakeIPT()
	mustInstall(t, k, IPv6, testNone)
	mustVerifyClean(t, k, IPv6, testNone)
}

// TestVerifyDetectsDrift: every way the installed state can differ from the
// config is reported, naming what is wrong.
func TestVerifyDetectsDrift(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		tamper func(k *fakeIPT)
		want   []string // substrings, each must appear in some problem
	}{
		{"rule deleted from our nat chain", testFiltered, func(k *fakeIPT) {
			k.deleteRule("nat", ChainOutput, 2) // the UDP 53 redirect
		}, []string{"IPv4 nat EGRESSD-OUTPUT differs", "  - -A EGRESSD-OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 5353"}},
		{"rule added to our filter chain", testFiltered, func(k *fakeIPT) {
			k.insert("filter", ChainOutput, 1, "-j ACCEPT")
		}, []string{"IPv4 filter EGRESSD-OUTPUT differs", "  + -A EGRESSD-OUTPUT -j ACCEPT"}},
		{"rule changed", testFiltered, func(k *fakeIPT) {
			rs := k.tables["nat"].rules[ChainOutput]
			rs[len(rs)-1] = "-p tcp -j REDIRECT --to-ports 9999"
		}, []string{"  - -A EGRESSD-OUTPUT -p tcp -j REDIRECT --to-ports 3129", "  + -A EGRESSD-OUTPUT -p tcp -j REDIRECT --to-ports 9999"}},
		{"chain and jump deleted", testFiltered, func(k *fakeIPT) {
			k.deleteRule("filter", "INPUT", 1)
			delete(k.tables["filter"].rules, ChainInput)
		}, []string{"IPv4 filter EGRESSD-INPUT: chain missing", "IPv4 filter INPUT: no jump to EGRESSD-INPUT"}},
		{"foreign accept before our jump", testFiltered, func(k *fakeIPT) {
			k.insert("nat", "OUTPUT", 1, "-j ACCEPT")
		}, []string{"IPv4 nat OUTPUT: first reference to our chains is rule 2"}},
		{"duplicate jump", testFiltered, func(k *fakeIPT) {
			k.add("filter", "OUTPUT", "-j EGRESSD-OUTPUT")
		}, []string{"IPv4 filter OUTPUT: 2 rules reference our chains"}},
		{"nat chain present in mode none", testNone, func(k *fakeIPT) {
			k.add("nat", ChainOutput, "-p tcp -j REDIRECT --to-ports 1")
			k.add("nat", "OUTPUT", "-j "+ChainOutput)
		}, []string{"IPv4 nat EGRESSD-OUTPUT: chain exists, but mode none has none", "IPv4 nat OUTPUT: 1 rule(s) reference our chains, want none"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeIPT()
			mustInstall(t, k, IPv4, tc.cfg)
			mustVerifyClean(t, k, IPv4, tc.cfg)
			tc.tamper(k)
			problems, err := verify(context.Background(), k, IPv4, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			all := strings.Join(problems, "\n")
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("problems do not mention %q; got:\n%s", w, all)
				}
			}
		})
	}
}

// TestVerifyAgainstOtherConfigFails: Verify compares with the config it is
// given, not with whatever is installed.
func TestVerifyAgainstOtherConfigFails(t *testing.T) {
	k := newFakeIPT()
	mustInstall(t, k, IPv6, testFiltered)
	other := testFiltered
	other.Mark = 0x2b
	problems, err := verify(context.Background(), k, IPv6, other)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(problems, "\n"), "--mark 0x2b") {
		t.Errorf("verify with another mark found: %q", problems)
	}
}

// TestFlushRemovesOnlyOurs: Flush leaves the namespace exactly as it was
// before Install (foreign chains and rules in place, in order), and flushing
// again is a no-op.
func TestFlushRemovesOnlyOurs(t *testing.T) {
	for _, cfg := range []Config{testFiltered, testNone} {
		for _, f := range families {
			k := newFakeIPT()
			k.add("filter", "OUTPUT", "-p tcp -m tcp --dport 9999 -j ACCEPT")
			k.add("filter", "FOREIGN", "-j RETURN")
			k.add("filter", "INPUT", "-j FOREIGN")
			k.add("nat", "OUTPUT", "-p tcp -m tcp --dport 9998 -j RETURN")
			before := k.save()
			mustInstall(t, k, f, cfg)
			k.add("filter", "OUTPUT", "-p udp -j ACCEPT") // after our jump
			if err := flush(context.Background(), k, f); err != nil {
				t.Fatalf("%s %s: flush: %v", cfg.Mode, f, err)
			}
			want := strings.Replace(before, "-A OUTPUT -p tcp -m tcp --dport 9999 -j ACCEPT\n",
				"-A OUTPUT -p tcp -m tcp --dport 9999 -j ACCEPT\n-A OUTPUT -p udp -j ACCEPT\n", 1)
			if diff := cmp.Diff(want, k.save()); diff != "" {
				t.Errorf("%s %s: state after flush (-want +got):\n%s", cfg.Mode, f, diff)
			}
			after := k.save()
			if err := flush(context.Background(), k, f); err != nil {
				t.Fatalf("%s %s: second flush: %v", cfg.Mode, f, err)
			}
			if diff := cmp.Diff(after, k.save()); diff != "" {
				t.Errorf("%s %s: second flush changed state (-want +got):\n%s", cfg.Mode, f, diff)
			}
		}
	}
}

// TestFlushRemovesEveryJumpVariant: duplicated, narrowed and goto references
// from the hooked built-in chains all go, or the chains could not be deleted.
func TestFlushRemovesEveryJumpVariant(t *testing.T) {
	k := newFakeIPT()
	mustInstall(t, k, IPv4, testFiltered)
	k.add("filter", "OUTPUT", "-j EGRESSD-OUTPUT")
	k.add("filter", "INPUT", "-p tcp -j EGRESSD-INPUT")
	k.add("filter", "INPUT", "-g EGRESSD-OUTPUT")
	k.insert("nat", "OUTPUT", 1, "-p udp -j EGRESSD-OUTPUT")
	if err := flush(context.Background(), k, IPv4); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if s := k.save(); strings.Contains(s, "EGRESSD") {
		t.Errorf("state after flush still mentions our chains:\n%s", s)
	}
}

// TestFlushRefusesToEditForeignChains: a foreign chain jumping to ours is not
// ours to edit; Flush fails and, the batch being one commit per table,
// changes nothing.
func TestFlushRefusesToEditForeignChains(t *testing.T) {
	k := newFakeIPT()
	mustInstall(t, k, IPv4, testFiltered)
	k.add("filter", "FOREIGN", "-j EGRESSD-OUTPUT")
	before := k.save()
	err := flush(context.Background(), k, IPv4)
	if err == nil {
		t.Fatal("flush succeeded although a foreign chain references ours")
	}
	if diff := cmp.Diff(before, k.save()); diff != "" {
		t.Errorf("failed flush changed state (-want +got):\n%s", diff)
	}
}

// TestErrorsSayWhatWasBeingDone: kernel failures come back wrapped with the
// step that failed, and a failing listing stops Install before any change.
func TestErrorsSayWhatWasBeingDone(t *testing.T) {
	boom := errors.New("boom")

	k := newFakeIPT()
	k.listErr = boom
	err := install(context.Background(), k, IPv4, testFiltered)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "listing filter INPUT") {
		t.Errorf("install with failing list: %v", err)
	}
	if len(k.batches) != 0 {
		t.Errorf("install sent a batch after a failed listing")
	}

	k = newFakeIPT()
	k.restoreErr = boom
	if err := install(context.Background(), k, IPv4, testFiltered); !errors.Is(err, boom) {
		t.Errorf("install with failing restore: %v", err)
	}
	if err := flush(context.Background(), k, IPv4); !errors.Is(err, boom) {
		t.Errorf("flush with failing restore: %v", err)
	}

	k = newFakeIPT()
	mustInstall(t, k, IPv4, testFiltered)
	k.listErr = boom
	if _, err := verify(context.Background(), k, IPv4, testFiltered); !errors.Is(err, boom) || !strings.Contains(err.Error(), "listing filter EGRESSD-INPUT") {
		t.Errorf("verify with failing list: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	k = newFakeIPT()
	if err := install(ctx, k, IPv4, testFiltered); !errors.Is(err, context.Canceled) || len(k.calls) != 0 {
		t.Errorf("install with cancelled context: err %v, calls %q", err, k.calls)
	}
}

// TestPublicFunctionsRejectBadInput: bad configs and paths give errors, never
// a panic or a change.
func TestPublicFunctionsRejectBadInput(t *testing.T) {
	ctx := context.Background()
	if err := Install(ctx, "/nonexistent", Config{Mode: policy.ModeHost}); err == nil || !strings.Contains(err.Error(), `mode "host"`) {
		t.Errorf("Install(host) = %v", err)
	}
	if err := Verify(ctx, "/nonexistent", Config{}); err == nil || !strings.Contains(err.Error(), "mode is empty") {
		t.Errorf("Verify(empty mode) = %v", err)
	}
	for name, fn := range map[string]func() error{
		"Install":      func() error { return Install(ctx, "", testFiltered) },
		"InstallFresh": func() error { return InstallFresh(ctx, "", testFiltered) },
		"Verify":       func() error { return Verify(ctx, "", testFiltered) },
		"Flush":        func() error { return Flush(ctx, "") },
	} {
		if err := fn(); err == nil || !strings.Contains(err.Error(), "network namespace path is empty") {
			t.Errorf("%s with an empty path: %v", name, err)
		}
	}
	if err := inNetns("/nonexistent/ns", func() error { t.Error("fn ran"); return nil }); err == nil || !strings.Contains(err.Error(), "/nonexistent/ns") {
		t.Errorf("inNetns(nonexistent) = %v", err)
	}
	// Entering even our own namespace needs CAP_SYS_ADMIN; nsthread's own
	// tests cover panics without it.
	if privtest.Enabled() {
		if err := inNetns("/proc/self/ns/net", func() error { panic("boom") }); err == nil || !strings.Contains(err.Error(), "boom") {
			t.Errorf("inNetns(panic) = %v", err)
		}
	}
}

func TestPlanJumps(t *testing.T) {
	h := hook{"filter", "OUTPUT", ChainOutput}
	tests := []struct {
		name     string
		listing  []string
		want     bool
		plan     hookPlan
		problems int
	}{
		{"correct", []string{"-P OUTPUT ACCEPT", "-A OUTPUT -j EGRESSD-OUTPUT", "-A OUTPUT -j ACCEPT"}, true, hookPlan{}, 0},
		{"missing", []string{"-P OUTPUT ACCEPT", "-A OUTPUT -j ACCEPT"}, true, hookPlan{insert: true}, 1},
		{"second", []string{"-P OUTPUT ACCEPT", "-A OUTPUT -j ACCEPT", "-A OUTPUT -j EGRESSD-OUTPUT"}, true, hookPlan{deletes: []int{2}, insert: true}, 1},
		{"twice", []string{"-P OUTPUT ACCEPT", "-A OUTPUT -j EGRESSD-OUTPUT", "-A OUTPUT  -j  EGRESSD-OUTPUT"}, true, hookPlan{deletes: []int{1, 2}, insert: true}, 1},
		{"narrowed", []string{"-P OUTPUT ACCEPT", "-A OUTPUT -p tcp -j EGRESSD-OUTPUT"}, true, hookPlan{deletes: []int{1}, insert: true}, 1},
		{"input chain referenced from OUTPUT", []string{"-P OUTPUT ACCEPT", "-A OUTPUT -j EGRESSD-OUTPUT", "-A OUTPUT -j EGRESSD-INPUT"}, true, hookPlan{deletes: []int{1, 2}, insert: true}, 2},
		{"similar foreign chain name is not ours", []string{"-P OUTPUT ACCEPT", "-A OUTPUT -j EGRESSD-OUTPUT", "-A OUTPUT -j EGRESSD-OUTPUT2"}, true, hookPlan{}, 0},
		{"unwanted none", []string{"-P OUTPUT ACCEPT"}, false, hookPlan{}, 0},
		{"unwanted present", []string{"-P OUTPUT ACCEPT", "-A OUTPUT -j ACCEPT", "-A OUTPUT -j EGRESSD-OUTPUT"}, false, hookPlan{deletes: []int{2}}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan, problems := planJumps(IPv4, h, tc.listing, tc.want)
			if diff := cmp.Diff(tc.plan, plan, cmp.AllowUnexported(hookPlan{})); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
			if len(problems) != tc.problems {
				t.Errorf("%d problems, want %d: %q", len(problems), tc.problems, problems)
			}
		})
	}
}

func TestDiffLines(t *testing.T) {
	tests := []struct {
		name      string
		want, got []string
		diff      string
	}{
		{"equal", []string{"a", "b"}, []string{"a", "b"}, ""},
		{"one deleted shows one line", []string{"a", "b", "c", "d"}, []string{"a", "c", "d"}, "  - b"},
		{"one added", []string{"a", "c"}, []string{"a", "b", "c"}, "  + b"},
		{"changed", []string{"a", "b", "c"}, []string{"a", "x", "c"}, "  + x\n  - b"},
		{"empty got", []string{"a"}, nil, "  - a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.diff, diffLines(tc.want, tc.got)); diff != "" {
				t.Errorf("diffLines (-want +got):\n%s", diff)
			}
		})
	}
}

// TestFirewallThroughTheFake: the exported API through a Netfilter — the
// Fake other packages' tests use — installs, verifies, flushes, sets
// ping_group_range and empties conntrack, in the namespace named.
func TestFirewallThroughTheFake(t *testing.T) {
	ctx := context.Background()
	const ns = "/run/netns/egs-test"
	for name, install := range map[string]func(*Firewall) error{
		"Install":      func(fw *Firewall) error { return fw.Install(ctx, ns, testFiltered) },
		"InstallFresh": func(fw *Firewall) error { return fw.InstallFresh(ctx, ns, testFiltered) },
	} {
		t.Run(name, func(t *testing.T) {
			k := NewFake()
			k.AddConntrack(ns, 3) // a flow that predates the rules (THREATS G7)
			fw := New(k)
			if err := install(fw); err != nil {
				t.Fatal(err)
			}
			if err := fw.Verify(ctx, ns, testFiltered); err != nil {
				t.Fatalf("verify after install: %v", err)
			}
			if n := k.Conntrack(ns); n != 0 {
				t.Errorf("%d conntrack entries survived the install", n)
			}
			if got, _ := k.Sysctl(ns, pingGroupRangeKey); strings.TrimSpace(got) != noPingGroups {
				t.Errorf("ping_group_range %q", got)
			}
			v4, v6, _ := Rules(testFiltered)
			for f, want := range map[Family][]byte{IPv4: v4, IPv6: v6} {
				if b := k.Batches(ns, f); len(b) != 1 || b[0] != string(want) {
					t.Errorf("%s batches into a fresh namespace: %q, want Rules' one", f, b)
				}
			}
			if got := k.Namespaces(); !slices.Equal(got, []string{ns}) {
				t.Errorf("namespaces touched: %q", got)
			}
			k.AddRule(ns, IPv6, "filter", ChainOutput, "-j ACCEPT")
			var drift *DriftError
			if err := fw.Verify(ctx, ns, testFiltered); !errors.As(err, &drift) {
				t.Errorf("verify after a rule added to our IPv6 chain: %v, want drift", err)
			}
			if err := fw.Flush(ctx, ns); err != nil {
				t.Fatal(err)
			}
			for _, f := range []Family{IPv4, IPv6} {
				if strings.Contains(k.Save(ns, f), "EGRESSD") {
					t.Errorf("%s after flush:\n%s", f, k.Save(ns, f))
				}
			}
		})
	}
}

// TestInstallWithoutOneFamilyTouchesNothing: a family whose tables cannot
// be read fails the install before the other family's batch is sent
// (never one family alone, THREATS F1).
func TestInstallWithoutOneFamilyTouchesNothing(t *testing.T) {
	k := NewFake()
	k.Fail = func(op, _ string, f Family) error {
		if f == IPv6 && op == "list" {
			return errors.New("ip6tables: not found")
		}
		return nil
	}
	err := New(k).Install(context.Background(), "/run/netns/x", testFiltered)
	if err == nil || !strings.Contains(err.Error(), "IPv6") {
		t.Fatalf("install without IPv6: %v", err)
	}
	if b := k.Batches("/run/netns/x", IPv4); len(b) != 0 {
		t.Errorf("the IPv4 rules went in alone: %q", b)
	}
}

// TestFirewallStepsFailClosed: each kernel operation failing in turn fails
// the install, and says which step.
func TestFirewallStepsFailClosed(t *testing.T) {
	// (A failing read of ping_group_range is followed by the write, which
	// decides.)
	for _, op := range []string{"restore", "set-sysctl", "flush-conntrack"} {
		t.Run(op, func(t *testing.T) {
			k := NewFake()
			k.Fail = func(o, _ string, _ Family) error {
				if o == op {
					return errors.New("boom " + op)
				}
				return nil
			}
			if err := New(k).InstallFresh(context.Background(), "/run/netns/x", testFiltered); err == nil || !strings.Contains(err.Error(), "boom "+op) {
				t.Errorf("install with %s failing: %v", op, err)
			}
		})
	}
}

// TestVerifyReadsEachFamilyOnce: Verify reads the rules with one
// iptables-save per family, not a listing per chain.
func TestVerifyReadsEachFamilyOnce(t *testing.T) {
	k := NewFake()
	fw := New(k)
	cfg := Config{Mode: policy.ModeFiltered, DNSPort: 53, TransparentPort: 15001, ExplicitProxyPort: 15002, Mark: 0x1}
	if err := fw.InstallFresh(context.Background(), "/run/netns/x", cfg); err != nil {
		t.Fatal(err)
	}
	before := len(k.Ops())
	if err := fw.Verify(context.Background(), "/run/netns/x", cfg); err != nil {
		t.Fatal(err)
	}
	var reads []string
	for _, op := range k.Ops()[before:] {
		if !strings.HasPrefix(op, "sysctl ") {
			reads = append(reads, op)
		}
	}
	slices.Sort(reads)
	if d := cmp.Diff([]string{"dump IPv4 /run/netns/x", "dump IPv6 /run/netns/x"}, reads); d != "" {
		t.Errorf("Verify's reads (-want +got):\n%s", d)
	}
}

// TestParseSaveRefusesWhatItCannotRead: a dump that is not iptables-save
// output is an error, never an empty (and so verified) ruleset.
func TestParseSaveRefusesWhatItCannotRead(t *testing.T) {
	for _, in := range []string{
		"*filter\n:INPUT ACCEPT [0:0]\n",                  // no COMMIT
		"*filter\n-A INPUT -j ACCEPT\nCOMMIT\n",           // undeclared chain
		"-A INPUT -j ACCEPT\n",                            // outside a table
		"*filter\n*nat\nCOMMIT\n",                         // nested
		"*filter\n:INPUT ACCEPT\n:INPUT ACCEPT\nCOMMIT\n", // twice
		"*filter\n-I INPUT 1 -j ACCEPT\nCOMMIT\n",         // not save output
		"COMMIT\n",
	} {
		if s, err := parseSave([]byte(in)); err == nil {
			t.Errorf("parseSave(%q) = %v, want an error", in, s)
		}
	}
	s, err := parseSave([]byte("# c\n*filter\n:INPUT DROP [1:2]\n:EGRESSD-INPUT - [0:0]\n-A INPUT -j EGRESSD-INPUT\n-A EGRESSD-INPUT -j RETURN\nCOMMIT\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		table, chain string
		want         []string
	}{
		{"filter", "INPUT", []string{"-P INPUT DROP", "-A INPUT -j EGRESSD-INPUT"}},
		{"filter", "EGRESSD-INPUT", []string{"-N EGRESSD-INPUT", "-A EGRESSD-INPUT -j RETURN"}},
		{"nat", "OUTPUT", []string{"-P OUTPUT ACCEPT"}}, // a table never used
	} {
		got, err := s.List(tc.table, tc.chain)
		if d := cmp.Diff(tc.want, got); d != "" || err != nil {
			t.Errorf("List(%s, %s): %v (-want +got):\n%s", tc.table, tc.chain, err, d)
		}
	}
	if ok, _ := s.ChainExists("nat", "EGRESSD-OUTPUT"); ok {
		t.Error("a chain of a table never used exists")
	}
}

// returningConntrack is a fake netfilter whose conntrack table gets an
// entry back after each of the first comeBack flushes: the late packet of
// a flow egressd closed, tracked anew after the flush.
type returningConntrack struct {
	*Fake
	comeBack int
	flushes  int
}

func (r *returningConntrack) FlushConntrack(ns string) error {
	if err := r.Fake.FlushConntrack(ns); err != nil {
		return err
	}
	r.flushes++
	if r.flushes <= r.comeBack {
		r.AddConntrack(ns, 1)
	}
	return nil
}

// TestConntrackEntryThatKeepsComingBackFailsTheFlush: an entry that comes
// back after a flush is flushed again; one still there after every flush
// is an error (a pooled sandbox's release then destroys it, THREATS G9),
// never a table called empty.
func TestConntrackEntryThatKeepsComingBackFailsTheFlush(t *testing.T) {
	const ns = "/run/netns/x"
	for _, tc := range []struct {
		comeBack, wantFlushes int
		wantErr               bool
	}{
		{comeBack: 0, wantFlushes: 1},
		{comeBack: 1, wantFlushes: 2},
		{comeBack: conntrackRounds - 1, wantFlushes: conntrackRounds},
		{comeBack: conntrackRounds, wantFlushes: conntrackRounds, wantErr: true},
		{comeBack: 100, wantFlushes: conntrackRounds, wantErr: true},
	} {
		k := &returningConntrack{Fake: NewFake(), comeBack: tc.comeBack}
		k.AddConntrack(ns, 3)
		err := New(k).FlushConntrack(ns)
		if (err != nil) != tc.wantErr || k.flushes != tc.wantFlushes {
			t.Errorf("an entry back after %d flushes: %d flushes, %v; want %d flushes, error %v",
				tc.comeBack, k.flushes, err, tc.wantFlushes, tc.wantErr)
		}
		if tc.wantErr && (err == nil || !strings.Contains(err.Error(), "1 entries after 3 flushes")) {
			t.Errorf("error %v does not say what is left", err)
		}
	}
}

// TestKeepNoClosedConnectionsSetsAndReadsBack: the namespace's
// tcp_max_tw_buckets is set to 0 and read back; a write that fails or
// does not hold is an error.
func TestKeepNoClosedConnectionsSetsAndReadsBack(t *testing.T) {
	const ns = "/run/netns/x"
	k := NewFake()
	if err := New(k).KeepNoClosedConnections(ns); err != nil {
		t.Fatal(err)
	}
	if v, err := k.Sysctl(ns, tcpMaxTimeWaitKey); err != nil || strings.TrimSpace(v) != "0" {
		t.Errorf("tcp_max_tw_buckets = %q, %v; want 0", v, err)
	}
	k.Fail = func(op, _ string, _ Family) error {
		if op == "set-sysctl" {
			return errors.New("read-only file system")
		}
		return nil
	}
	if err := New(k).KeepNoClosedConnections(ns); err == nil || !strings.Contains(err.Error(), "tcp_max_tw_buckets") {
		t.Errorf("a refused write: %v", err)
	}
}
