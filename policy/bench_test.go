package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"testing"
)

// benchPolicy builds n rules: a mix of exact, `*.suffix` and `.suffix` rules
// (2% of them block rules), plus a few globs, like a large generated allow
// list.
func benchPolicy(b testing.TB, n int) NetworkPolicy {
	var p NetworkPolicy
	add := func(text string, block bool) {
		r, err := ParseRule(text, Source{Kind: SourceFile, File: "bench.toml", Line: len(p.Allow) + len(p.Block) + 1})
		if err != nil {
			b.Fatal(err)
		}
		if block {
			p.Block = append(p.Block, r)
		} else {
			p.Allow = append(p.Allow, r)
		}
	}
	for _, g := range []string{"api-*.glob0.test", "**.glob1.test", "cdn-?.glob2.test:443", "*.*.glob3.test"} {
		add(g, false)
	}
	for i := 0; len(p.Allow)+len(p.Block) < n; i++ {
		block := i%50 == 49
		switch i % 3 {
		case 0:
			add(fmt.Sprintf("host%d.example%d.com", i, i%1000), block)
		case 1:
			add(fmt.Sprintf("*.svc%d.corp.test", i), block)
		case 2:
			add(fmt.Sprintf(".team%d.internal:443", i), block)
		}
	}
	return p
}

// benchNames are the queries, cycled: hits on each rule kind, deep names
// and misses (a miss is the worst case for a linear scan and for the
// suffix walk alike).
func benchNames(n int) []string {
	last := n - 1
	return []string{
		"host0.example0.com",
		fmt.Sprintf("host%d.example%d.com", last-last%3, (last-last%3)%1000),
		"a.b.c.svc1.corp.test",
		fmt.Sprintf("deep.er.svc%d.corp.test", 1+3*(n/6)),
		"team2.internal",
		"api-v2.glob0.test",
		"x.y.glob1.test",
		"www.nothing.example.org",
		"a.b.c.d.e.f.unknown.corp.test",
		"host1.example1.com",
	}
}

// linearMatcher is the naive alternative: one pass over every rule, block
// list first, keeping the most specific match. It uses the same (allocation
// free) per-rule predicates as the Matcher's tests, so the comparison
// measures the index, not string handling.
type linearMatcher struct {
	allow, block []*Rule
	defaults     []uint16
}

func (l *linearMatcher) decide(name string, port uint16) Decision {
	n, ok := NormalizeName(name)
	if !ok {
		return Decision{Reason: ReasonInvalidName}
	}
	if r := linearBest(l.block, n, port, nil, true); r != nil {
		return Decision{Reason: ReasonBlockedBy, Rule: r}
	}
	if r := linearBest(l.allow, n, port, l.defaults, false); r != nil {
		return Decision{Allow: true, Reason: ReasonAllowedBy, Rule: r}
	}
	return Decision{Reason: ReasonNoAllowRule}
}

func linearBest(rules []*Rule, n string, port uint16, defaults []uint16, block bool) *Rule {
	var best *Rule
	for _, r := range rules {
		if r.kind == kindPrefix || !r.portsMatch(port, defaults, block) || !r.matchName(n) {
			continue
		}
		if best == nil || rankLess(nameRank(r), nameRank(best)) {
			best = r
		}
	}
	return best
}

func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{10, 1000, 100000} {
		pol := benchPolicy(b, n)
		m, err := NewMatcher(pol)
		if err != nil {
			b.Fatal(err)
		}
		lin := &linearMatcher{allow: pol.Allow, block: pol.Block, defaults: []uint16{80, 443}}
		names := benchNames(n)
		// The two must agree before their speed is compared.
		for _, name := range names {
			if got, want := m.DecideName(name, 443), lin.decide(name, 443); got != want {
				b.Fatalf("%d rules, %s: matcher %v, linear %v", n, name, got, want)
			}
		}
		b.Run("indexed-"+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				m.DecideName(names[i%len(names)], 443)
				i++
			}
		})
		b.Run("linear-"+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				lin.decide(names[i%len(names)], 443)
				i++
			}
		})
	}
}

// BenchmarkDecideAddr measures IP literals and the guard with 100 000 IP
// rules spread over many prefix lengths.
func BenchmarkDecideAddr(b *testing.B) {
	var p NetworkPolicy
	for i := 0; i < 100000; i++ {
		a := netip.AddrFrom4([4]byte{byte(1 + i%200), byte(i >> 8), byte(i), 0})
		bits := 16 + i%17
		pr, _ := a.Prefix(bits)
		r, err := ParseRule(pr.String(), Source{})
		if err != nil {
			b.Fatal(err)
		}
		p.Allow = append(p.Allow, r)
	}
	r, _ := ParseRule("10.1.2.0/24", Source{})
	p.Allow = append(p.Allow, r)
	m, err := NewMatcher(p)
	if err != nil {
		b.Fatal(err)
	}
	addrs := []netip.Addr{
		netip.MustParseAddr("203.0.113.7"),
		netip.MustParseAddr("10.1.2.7"),
		netip.MustParseAddr("169.254.169.254"),
		netip.MustParseAddr("2001:db8::1"),
	}
	b.Run("DecideAddr", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			m.DecideAddr(addrs[i%len(addrs)], 443)
			i++
		}
	})
	b.Run("GuardAddr", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			m.GuardAddr(addrs[i%len(addrs)], 443)
			i++
		}
	})
}

// BenchmarkNormalizeName covers the fast path and the Unicode path.
func BenchmarkNormalizeName(b *testing.B) {
	for _, in := range []string{"api.github.com", "API.GitHub.com.", "bücher.example.de"} {
		b.Run(in, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				NormalizeName(in)
			}
		})
	}
}
