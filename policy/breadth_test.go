package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// The breadth judgment is checked against the matcher it describes
// (differential): every claim is tested with names the rule's own matcher
// accepts or refuses, and with x/net's registrable domains.

// breadthCorpus are rules of every class and of none, spelled many ways.
var breadthCorpus = []string{
	// every name
	"*", "**", "**.", "?**", "**?", "*?**", "*:443", "*:*", "**:8000-8100",
	// label classes
	"*.*", "*.*.*", "*.**", "**.*", "**.**", "*?.*", "?*", "*", "*.*.*.*.**",
	// under a public suffix
	"*.com", ".com", "**.com", "*.co.uk", ".co.uk", "**.co.uk", "*.uk", "*.test", "*.internal", "?**.com",
	// registrants
	"foo*.com", "*-*.com", "?.se", "*.*.com", "a*b.net", "x?.co.uk", "a**.io", "**b.org",
	// private section (THREATS D5)
	"*.github.io", ".github.io", "*.githubusercontent.com", "*.s3.amazonaws.com", "*.cloudfront.net",
	"*.amazonaws.com", ".amazonaws.com", "**.amazonaws.com", "*.*.amazonaws.com", "x.*.amazonaws.com",
	"mybucket.s3.*.amazonaws.com", "*.kawasaki.jp", "*.ck", "*.crm.dev", "*.compute.amazonaws.com",
	// across top-level domains
	"api.*", "api.c?m", "a.**", "example.*", "*.example.*",
	// narrow
	"github.com", "com", "co.uk", "s3.amazonaws.com", "*.example.com", ".example.com", "api-*.example.com",
	"**.example.com", "*.corp.internal", "raw.githubusercontent.com", "a*", "foo*.ck", "x*.amazonaws.com",
	"a*.b*.amazonaws.com", "a.*.b.com", "*.github.com", "**.rebind.test", "mirror-?.corp.example.net",
	"*.city.kawasaki.jp",
}

func TestBreadthAgainstTheMatcher(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, text := range breadthCorpus {
		r, err := ParseRule(text, Source{})
		if err != nil {
			t.Errorf("%s: %v", text, err)
			continue
		}
		if err := checkBreadth(r, r.breadth(), rng, 200); err != nil {
			t.Errorf("%s (%s): %v", text, r.breadth(), err)
		}
	}
}

// TestBreadthClasses pins the judgment of the list and of the
// private section.
func TestBreadthClasses(t *testing.T) {
	for text, want := range map[string]breadthClass{
		"**.": everyName, "?**": everyName, "*.*": everyNameOfLabels, "*.*.*": everyNameOfLabels,
		"*.com": everyNameUnder, ".com": everyNameUnder, "**.com": everyNameUnder, "*.co.uk": everyNameUnder,
		"foo*.com": registrants, "*.github.io": everyNameUnder, "*.amazonaws.com": everyNameUnder,
		"api.*": registrables, "*.example.com": narrow, "github.com": narrow, "foo*.ck": narrow,
	} {
		r, err := ParseRule(text, Source{})
		if err != nil {
			t.Fatal(err)
		}
		if got := r.breadth(); got.class != want {
			t.Errorf("%s: %s (class %d), want class %d", text, got, got.class, want)
		}
	}
}

// TestBuiltinProfilesAreNarrow: no built-in profile violates its own floor
// with a wildcard (the standard list names exact hosts, e.g.
// raw.githubusercontent.com rather than *.githubusercontent.com).
func TestBuiltinProfilesAreNarrow(t *testing.T) {
	for _, name := range BuiltinNames() {
		p := mustBuiltin(t, name)
		for _, r := range p.Network.Allow {
			if what, refused := allowRisk(r); refused {
				t.Errorf("builtin:%s allow %q %s", name, r.Text, what)
			}
		}
	}
}

// checkBreadth checks b, the judgment of r, against r's matcher with up to
// n generated names.
func checkBreadth(r *Rule, b breadth, rng *rand.Rand, n int) error {
	if r.kind == kindPrefix {
		return checkIPBreadth(r, b)
	}
	if b.class != everyName {
		if refused := refusedName(r); refused == "" {
			return fmt.Errorf("judged not every name, but no refused name was found")
		}
	}
	switch b.class {
	case everyName:
		for range n {
			if name := randomName(rng, 1+rng.IntN(5)); !r.matchName(name) {
				return fmt.Errorf("judged every name, but refuses %s", name)
			}
		}
	case everyNameOfLabels, everyNameOfLabelsOrMore:
		for range n {
			k := b.labels
			if b.class == everyNameOfLabelsOrMore {
				k += rng.IntN(4)
			}
			if name := randomName(rng, k); !r.matchName(name) {
				return fmt.Errorf("judged every name of %d labels, but refuses %s", b.labels, name)
			}
		}
		if name := strings.Repeat("a.", b.labels) + "a"; b.class == everyNameOfLabels && r.matchName(name) {
			return fmt.Errorf("judged every name of exactly %d labels, but matches %s", b.labels, name)
		}
		if b.labels > 1 {
			if name := strings.Repeat("a.", b.labels-2) + "a"; r.matchName(name) {
				return fmt.Errorf("judged every name of %d labels (or more), but matches %s", b.labels, name)
			}
		}
	case everyNameUnder:
		if !isPublicSuffix(b.suffix) {
			return fmt.Errorf("%s is not a public suffix", b.suffix)
		}
		for range n {
			name := randomName(rng, 1+rng.IntN(3)) + "." + b.suffix
			if len(name) <= maxNameLen && !r.matchName(name) {
				return fmt.Errorf("judged every name under %s, but refuses %s", b.suffix, name)
			}
		}
	case narrow:
		return checkNarrow(r, b, rng, n)
	}
	if b.class >= everyNameUnder || b.witnesses[0] != "" {
		return checkWitnesses(r, b)
	}
	return nil
}

// checkWitnesses: two names the matcher accepts, of two registrable
// domains — under the claimed suffix when there is one.
func checkWitnesses(r *Rule, b breadth) error {
	var regs [2]string
	for i, w := range b.witnesses {
		if !r.matchName(w) {
			return fmt.Errorf("witness %q is refused by the matcher", w)
		}
		reg, suf, ok := registrableDomain(w)
		if !ok {
			return fmt.Errorf("witness %q has no registrable domain", w)
		}
		if (b.class == everyNameUnder || b.class == registrants) && suf != b.suffix {
			return fmt.Errorf("witness %q is under %s, not the claimed %s", w, suf, b.suffix)
		}
		regs[i] = reg
	}
	if regs[0] == regs[1] {
		return fmt.Errorf("witnesses %q share the registrable domain %s", b.witnesses, regs[0])
	}
	return nil
}

// checkNarrow builds n names the glob of r may match (wildcards filled from
// letters and the labels of the public suffixes below its tail) and
// requires every one the matcher accepts to be in the one registrable
// domain the judgment found, or a public suffix itself.
func checkNarrow(r *Rule, b breadth, rng *rand.Rand, n int) error {
	g := r.asGlob()
	segs := strings.Split(g, ".")
	ws := newWitnessSearch(r, segs)
	vocab := []string{"a", "b", "zz", "x1", "-", "_", "com", "net", "uk", "co", "io", "s3", "github", "amazonaws", "city"}
	for _, tl := range pslTails(ws.f) {
		vocab = append(vocab, strings.Split(strings.ReplaceAll(tl, "*", "q"), ".")...)
	}
	want := b.single
	for range n {
		name, ok := instantiateRandom(g, vocab, rng)
		if !ok || !r.matchName(name) {
			continue
		}
		reg, _, ok := registrableDomain(name)
		if !ok {
			continue
		}
		if want == "" {
			want = reg
		}
		if reg != want {
			return fmt.Errorf("judged narrow, but matches %s (registrable domain %s) and names in %s", name, reg, want)
		}
	}
	return nil
}

// instantiateRandom fills every wildcard of the glob g at random.
func instantiateRandom(g string, vocab []string, rng *rand.Rand) (string, bool) {
	p := strings.Split(g, ".")
	toks := tokens(p)
	fills := make([]string, len(toks))
	for i, t := range toks {
		switch t.op {
		case "?":
			fills[i] = questionFills[rng.IntN(len(questionFills))]
		case "*":
			fills[i] = vocab[rng.IntN(len(vocab))]
			if rng.IntN(4) == 0 {
				fills[i] = ""
			}
		case "**":
			k := 1 + rng.IntN(3)
			var parts []string
			for range k {
				parts = append(parts, vocab[rng.IntN(len(vocab))])
			}
			fills[i] = strings.Join(parts, ".")
		}
	}
	return NormalizeName(instantiate(p, toks, fills))
}

// refusedName finds a valid name r does not match.
func refusedName(r *Rule) string {
	var cands []string
	for c := 'a'; c <= 'z'; c++ {
		cands = append(cands, string(c))
	}
	for k := 1; k <= maxNameLen/2; k++ {
		cands = append(cands, strings.Repeat("a.", k)+"a", strings.Repeat("b.", k)+"b")
	}
	cands = append(cands, "egressd-refused.invalid", "_x.zz")
	for _, c := range cands {
		if n, ok := NormalizeName(c); ok && !r.matchName(n) {
			return n
		}
	}
	return ""
}

// randomName is a valid name of k labels.
func randomName(rng *rand.Rand, k int) string {
	const chars = "abcdefghijklmnopqrstuvwxyz0123456789-_"
	labels := make([]string, k)
	for i := range labels {
		b := make([]byte, 1+rng.IntN(8))
		for j := range b {
			b[j] = chars[rng.IntN(len(chars))]
		}
		labels[i] = string(b)
	}
	labels[k-1] = "x" + labels[k-1] // never all digits
	return strings.Join(labels, ".")
}

// checkIPBreadth checks the IP classes and the guard lift against the
// matcher: a lift claimed is a lift GuardAddr grants, and a rule said to
// lift nothing lets no guarded address through.
func checkIPBreadth(r *Rule, b breadth) error {
	p := r.prefix
	switch {
	case p.Bits() == 0 && b.class != everyAddress,
		p.Bits() > 0 && p.Bits() < ianaAllocation(p) && b.class != hugeRange,
		p.Bits() >= ianaAllocation(p) && b.class != narrow:
		return fmt.Errorf("class %d for a /%d", b.class, p.Bits())
	}
	m, err := NewMatcher(NetworkPolicy{Allow: []*Rule{r}})
	if err != nil {
		return err
	}
	port := r.portLo
	if !r.hasPort {
		port = 443
	}
	g, lifts := liftedGuard(r)
	for _, a := range probeAddrs(p) {
		if !p.Contains(a) {
			continue
		}
		ga, guarded := GuardedRange(a)
		if !guarded {
			continue
		}
		allowed := m.GuardAddr(a, port).Allow
		if want := lifts && ga == g.label; allowed != want {
			return fmt.Errorf("GuardAddr(%s) allow=%v, but liftedGuard says %q (%v); the address is in %s", a, allowed, g.label, lifts, ga)
		}
	}
	return nil
}

// probeAddrs are addresses around p and in the guarded ranges.
func probeAddrs(p netip.Prefix) []netip.Addr {
	out := []netip.Addr{p.Addr(), p.Addr().Next()}
	for _, g := range guardTable {
		if g.prefix.Addr().Is4() == p.Addr().Is4() {
			out = append(out, g.prefix.Addr(), g.prefix.Addr().Next())
		}
	}
	return slices.DeleteFunc(out, func(a netip.Addr) bool { return !a.IsValid() })
}

var ipBreadthCorpus = []string{
	"0.0.0.0/0", "::/0", "0.0.0.0/1", "8.0.0.0/5", "9.0.0.0/8", "2000::/3", "2001::/16", "2001:db8::/32",
	"10.0.0.0/8", "10.1.2.0/24", "10.0.0.0/7", "169.254.0.0/16", "169.254.169.254", "169.254.169.254:80",
	"127.0.0.1", "::1", "fd00::/8", "[fd00::/64]:443", "fd00:ec2::254", "64:ff9b::a00:1", "100.64.0.0/10",
	"100.100.100.200", "203.0.113.7", "224.0.0.0/4", "255.255.255.255",
}

func TestIPBreadthAndGuardLiftsAgainstTheMatcher(t *testing.T) {
	for _, text := range ipBreadthCorpus {
		r, err := ParseRule(text, Source{})
		if err != nil {
			t.Fatalf("%s: %v", text, err)
		}
		if err := checkBreadth(r, r.breadth(), nil, 0); err != nil {
			t.Errorf("%s: %v", text, err)
		}
	}
}

// FuzzBreadthAgainstTheMatcher: for any pattern, the judgment holds against
// the matcher — a rule judged not to match every name refuses one; every
// claimed class is borne out by generated names; witnesses are matched and
// in two registrable domains (under the claimed suffix); a rule judged
// narrow matches no names of a second registrable domain; a claimed guard
// lift is what GuardAddr grants.
func FuzzBreadthAgainstTheMatcher(f *testing.F) {
	for _, s := range breadthCorpus {
		f.Add(s, uint64(1))
	}
	for _, s := range ipBreadthCorpus {
		f.Add(s, uint64(1))
	}
	f.Fuzz(func(t *testing.T, text string, seed uint64) {
		r, err := ParseRule(text, Source{})
		if err != nil {
			return
		}
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		if err := checkBreadth(r, r.breadth(), rng, 32); err != nil {
			t.Fatalf("%s (%s): %v", text, r.breadth(), err)
		}
	})
}

// TestAllowingSharedTenantZonesIsBroad: a rule that covers the names
// strangers get on a tunnel, request-catcher or out-of-band service
// (sharedZones, not on the PSL) reaches an endpoint built to receive what
// a sandbox sends: broad, as *.github.io is. A name under one stays
// narrow (the tunnel the policy's owner runs).
func TestAllowingSharedTenantZonesIsBroad(t *testing.T) {
	for _, tc := range []struct {
		rule  string
		broad bool
	}{
		{"*.webhook.site", true}, {"*.interact.sh", true}, {"*.oast.fun", true}, {"*.burpcollaborator.net", true},
		{"*.pipedream.net", true}, {"*.m.pipedream.net", true}, {"**.pipedream.net", true},
		{"*.requestcatcher.com", true}, {"*.loca.lt", true}, {"*.serveo.net", true}, {"*.localhost.run", true},
		{".nip.io", true}, {"foo*.webhook.site", true}, {"*.usw2.devtunnels.ms", true}, {"**.pinggy.net", true},
		{"*.ngrok-free.app", true}, // on the PSL already
		{"abc123.m.pipedream.net", false}, {"mytunnel.loca.lt", false}, {"webhook.site", false},
		{"*.pinggy.net", true}, // *.x is **.x: it reaches every name under free.pinggy.net
		{"*.example.com", false},
	} {
		r, err := ParseRule(tc.rule, Source{})
		if err != nil {
			t.Fatalf("%s: %v", tc.rule, err)
		}
		if b := r.breadth(); b.broad() != tc.broad {
			t.Errorf("%s: judged %s, want broad=%v", tc.rule, b, tc.broad)
		}
	}
}
