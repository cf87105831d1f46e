package policy

import (
	"net/netip"
	"slices"
	"strings"
)

// Validate checks one policy file as `egressd validate` does: it parses and
// validates the file, resolves it on the built-in profile it names (or
// DefaultProfile), and returns the warnings. The error is an ErrorList with
// one `file:line:col: message (hint)` per problem.
func Validate(file string) ([]Warning, error) {
	_, warnings, err := Resolve(ResolveOptions{Files: []string{file}})
	return warnings, err
}

// analyse warns about rules that can have no effect or are likely mistakes.
// Rules of the built-in profile are not warned about one by one: the
// operator did not write them.
func (r *resolver) analyse() {
	p := r.p
	n := p.Network
	modeSrc := positionString(p.Sources["network.mode"])
	r.analyseInspection()
	switch n.Mode {
	case ModeNone:
		builtin := 0
		for _, a := range n.Allow {
			if a.Source.Kind == SourceBuiltin {
				builtin++
				continue
			}
			r.warn(a.Source, "allow %q has no effect: network.mode = none (%s) allows no traffic at all", a.Text, modeSrc)
		}
		if builtin > 0 {
			r.warn(p.Sources["network.mode"], "network.mode = none: the %d allow rules of builtin:%s have no effect", builtin, p.Name)
		}
		return
	case ModeHost:
		builtin := 0
		for _, list := range []struct {
			kind  string
			rules []*Rule
		}{{"allow", n.Allow}, {"block", n.Block}} {
			for _, a := range list.rules {
				if a.Source.Kind == SourceBuiltin {
					builtin++
					continue
				}
				r.warn(a.Source, "%s %q is not enforced: network.mode = host (%s) does not filter traffic", list.kind, a.Text, modeSrc)
			}
		}
		if builtin > 0 {
			r.warn(p.Sources["network.mode"], "network.mode = host: the %d rules of builtin:%s are not enforced", builtin, p.Name)
		}
		return
	}

	for _, a := range n.Allow {
		if a.Source.Kind == SourceBuiltin {
			continue
		}
		if labels := guardedBy(a); len(labels) > 0 {
			r.warn(a.Source, "allow %q lifts the address guard for %s: the sandbox can reach those addresses",
				a.Text, strings.Join(labels, ", "))
		}
	}

	var blockAll *Rule
	for _, b := range n.Block {
		if matchesEverything(b) {
			blockAll = b
			r.warn(b.Source, "block %q blocks every name, so no allow rule can take effect (filtered mode already denies what is not allowed)", b.Text)
			break
		}
	}
	for _, a := range n.Allow {
		if matchesEverything(a) {
			r.warn(a.Source, "allow %q allows every name: the allow list no longer restricts anything", a.Text)
		}
	}
	if blockAll != nil {
		return // every allow rule is shadowed; one warning says it
	}
	if len(n.Allow)*len(n.Block) > maxShadowPairs {
		r.warn(n.Block[0].Source, "%d allow × %d block rules: too many to check which allow rules a block rule shadows",
			len(n.Allow), len(n.Block))
		return
	}
	for _, a := range n.Allow {
		if a.Source.Kind == SourceBuiltin {
			// Blocking a built-in allow entry is how a tenant removes it.
			continue
		}
		for _, b := range n.Block {
			if b.Covers(a) {
				r.warn(a.Source, "allow %q has no effect: block %q (%s) covers it, and block wins", a.Text, b.Text, positionString(b.Source))
				break
			}
		}
	}
}

// guardProbes are addresses of the guarded ranges that matter most, used to
// tell whether a wide allow IP rule (8.0.0.0/5 holds 10.0.0.0/8) reaches
// into them.
var guardProbes = []netip.Addr{
	netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("172.16.0.1"),
	netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("100.64.0.1"),
	netip.MustParseAddr("::1"), netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fe80::1"),
	netip.MustParseAddr("fd00:ec2::254"),
}

// guardedBy returns the labels of the guarded ranges an allow IP rule
// reaches into (its first address, and the probes it holds).
func guardedBy(r *Rule) []string {
	prefix, ok := r.Prefix()
	if !ok {
		return nil
	}
	var labels []string
	add := func(a netip.Addr) {
		if l, guarded := GuardedRange(a); guarded && !slices.Contains(labels, l) {
			labels = append(labels, l)
		}
	}
	add(prefix.Masked().Addr())
	for _, a := range guardProbes {
		if prefix.Contains(a) {
			add(a)
		}
	}
	return labels
}

// maxShadowPairs bounds the allow × block comparisons of the shadowing
// check (each a Rule.Covers call), so validating a huge policy stays fast.
const maxShadowPairs = 1 << 22

// everything is the rule every name matches on every port.
var everything = func() *Rule {
	r, err := ParseRule("*:*", Source{})
	if err != nil {
		return nil
	}
	return r
}()

// matchesEverything reports whether r matches every name (on its ports):
// "*", "*:443", "**" and the like.
func matchesEverything(r *Rule) bool {
	host := r.Text
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[:i], ":") {
		host = host[:i]
	}
	switch host {
	case "*", "**", ".":
		return true
	}
	return everything != nil && r.Covers(everything)
}
