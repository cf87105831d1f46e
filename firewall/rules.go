package firewall

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/egressd/egressd/policy"
)

// The chains the project owns, in the filter and nat tables of both families.
// Nothing else in a namespace is ever changed, except one jump to each of
// them from the built-in chain it hooks.
const (
	// ChainOutput is hooked from OUTPUT in the filter and nat tables.
	ChainOutput = "EGRESSD-OUTPUT"
	// ChainInput is hooked from INPUT in the filter table.
	ChainInput = "EGRESSD-INPUT"
)

// Family is an IP family: each has its own tools and rule set.
type Family int

// The families, both always installed (never one alone, THREATS F1).
const (
	IPv4 Family = iota
	IPv6
)

var families = [...]Family{IPv4, IPv6}

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// hook is one of our chains and the built-in chain that jumps to it.
type hook struct {
	table   string // "filter" or "nat"
	builtin string // "INPUT" or "OUTPUT"
	chain   string // ChainInput or ChainOutput
}

func (h hook) String() string { return h.table + " " + h.chain }

// hooks lists every chain the project owns, in the order batches are
// written: tables in tableOrder, and within a table this order.
var hooks = []hook{
	{table: "filter", builtin: "INPUT", chain: ChainInput},
	{table: "filter", builtin: "OUTPUT", chain: ChainOutput},
	{table: "nat", builtin: "OUTPUT", chain: ChainOutput},
}

var tableOrder = []string{"filter", "nat"}

// ownChains returns the names of our chains in table.
func ownChains(table string) []string {
	var names []string
	for _, h := range hooks {
		if h.table == table {
			names = append(names, h.chain)
		}
	}
	return names
}

// ruleset is what should be in a namespace for one family: the rule specs
// (everything after "-A CHAIN ") of each chain that should exist. A hook
// missing from the map must not exist (nat in mode none).
type ruleset map[hook][]string

// Rules returns the iptables-restore batches (IPv4 and IPv6) that install cfg
// in a namespace where none of the project's chains or jumps exist yet:
// `iptables-restore --noflush` and `ip6tables-restore --noflush` apply them.
// Install sends the same chain contents, with the jumps adjusted to what it
// finds in the namespace, so installing twice leaves one copy.
func Rules(cfg Config) (v4, v6 []byte, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	out := make([][]byte, len(families))
	for i, f := range families {
		rs := buildRuleset(cfg, f)
		plan := make(map[hook]hookPlan)
		for h := range rs {
			plan[h] = hookPlan{insert: true}
		}
		out[i] = render(f, "mode "+string(cfg.Mode), rs, plan)
	}
	return out[0], out[1], nil
}

// buildRuleset returns the rules for cfg (already validated) and f. Each rule
// is written exactly as `iptables -S` prints it, so Verify can compare the
// kernel's listing with it line by line.
func buildRuleset(cfg Config, f Family) ruleset {
	var (
		rejectUDP   = "icmp-port-unreachable"
		rejectOther = "icmp-admin-prohibited"
	)
	if f == IPv6 {
		rejectUDP, rejectOther = "icmp6-port-unreachable", "icmp6-adm-prohibited"
	}
	// The tail of filter OUTPUT: reject by protocol, then reject everything
	// else whatever its protocol (THREATS F4: no -p list to walk around), so a
	// blocked client fails fast instead of hanging.
	rejectAll := []string{
		"-p tcp -j REJECT --reject-with tcp-reset",
		"-p udp -j REJECT --reject-with " + rejectUDP,
		"-j REJECT --reject-with " + rejectOther,
	}
	// Neighbour discovery is link-local by construction (hop limit 255 is
	// required by RFC 4861 and no router forwards it) and the kernel sends it
	// from no socket, so neither the mark nor conntrack covers it; without it
	// IPv6 to the uplink cannot work. MLDv2 reports (hop limit 1) keep
	// multicast snooping bridges delivering the solicited-node group.
	var ndOut, ndIn []string
	if f == IPv6 {
		ndIn = []string{
			"-p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j ACCEPT",
			"-p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j ACCEPT",
		}
		ndOut = append(slices.Clone(ndIn),
			"-p ipv6-icmp -m icmp6 --icmpv6-type 143 -m hl --hl-eq 1 -j ACCEPT")
	}

	// "Stays in the namespace" is judged by the destination address, not by
	// "-o lo": the filter hook sees the output device routed before the nat
	// REDIRECT (the uplink), while the destination it sees is the redirected
	// one (127.0.0.1 or ::1), which is LOCAL. Own uplink addresses are LOCAL
	// too, so the protected ports are protected there as well.
	const local = "-m addrtype --dst-type LOCAL"

	filterIn := hook{"filter", "INPUT", ChainInput}
	filterOut := hook{"filter", "OUTPUT", ChainOutput}
	natOut := hook{"nat", "OUTPUT", ChainOutput}

	if cfg.Mode == policy.ModeNone {
		return ruleset{
			filterIn:  {"-i lo -j ACCEPT", "-j DROP"},
			filterOut: append([]string{local + " -j ACCEPT"}, rejectAll...),
		}
	}

	var exempt []string // matches that identify egressd's own sockets
	if cfg.Mark != 0 {
		exempt = append(exempt, fmt.Sprintf("-m mark --mark 0x%x", cfg.Mark))
	}
	if cfg.ExemptUID != nil {
		exempt = append(exempt, fmt.Sprintf("-m owner --uid-owner %d", *cfg.ExemptUID))
	}

	var nat []string
	for _, m := range exempt {
		nat = append(nat, m+" -j RETURN")
	}
	nat = append(nat,
		fmt.Sprintf("-p udp -m udp --dport 53 -j REDIRECT --to-ports %d", cfg.DNSPort),
		fmt.Sprintf("-p tcp -m tcp --dport 53 -j REDIRECT --to-ports %d", cfg.DNSPort),
		local+" -j RETURN",
		fmt.Sprintf("-p tcp -j REDIRECT --to-ports %d", cfg.TransparentPort),
	)

	var out []string
	// egressd needs TCP to anywhere and UDP to its upstream resolvers; the
	// exemption stops there, so a bug in egressd (or a process that becomes
	// its uid) still cannot send ICMP or other UDP.
	for _, m := range exempt {
		out = append(out, "-p tcp "+m+" -j ACCEPT")
		for _, p := range cfg.upstreamDNSPorts() {
			out = append(out, fmt.Sprintf("-p udp %s -m udp --dport %d -j ACCEPT", m, p))
		}
	}
	for _, p := range cfg.ProtectedPorts {
		out = append(out, fmt.Sprintf("-p tcp %s -m tcp --dport %d -j REJECT --reject-with tcp-reset", local, p))
	}
	// Only redirected connections (conntrack DNAT status) may reach the
	// transparent listener; a direct connect would make egressd its own
	// original destination.
	out = append(out,
		fmt.Sprintf("-p tcp %s -m tcp --dport %d -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset", local, cfg.TransparentPort),
		local+" -j ACCEPT",
		// Only the reply direction of an established flow: the original
		// direction of every flow that may leave is egressd's, accepted by
		// its mark above. Accepting ESTABLISHED both ways would let a
		// sandbox process bind the source port of one of egressd's closed
		// upstream UDP sockets (readable in /proc/net/udp) and send on its
		// still-ESTABLISHED conntrack entry, past the REDIRECT (NAT sees
		// only NEW flows): a DNS tunnel to the upstream resolver.
		"-m conntrack --ctstate ESTABLISHED --ctdir REPLY -j ACCEPT",
		"-m conntrack --ctstate RELATED -j ACCEPT",
	)
	out = append(out, ndOut...)
	out = append(out, rejectAll...)

	in := []string{
		"-i lo -j ACCEPT",
		"-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
	}
	in = append(in, ndIn...)
	for _, p := range cfg.InboundTCPPorts {
		in = append(in, fmt.Sprintf("-p tcp -m tcp --dport %d -j ACCEPT", p))
	}
	in = append(in, "-j DROP")

	return ruleset{filterIn: in, filterOut: out, natOut: nat}
}

// hookPlan says what a batch does about one hook beyond filling the chain.
type hookPlan struct {
	// deletes are 1-based positions of rules in the built-in chain that
	// reference one of our chains and must go (stale or misplaced jumps).
	deletes []int
	// insert adds the jump as rule 1 of the built-in chain.
	insert bool
	// remove creates-or-flushes the chain and then deletes it, so a chain
	// that should not exist is gone whether or not it was there.
	remove bool
}

// render writes one family's iptables-restore batch: for each table, declare
// (create or, under --noflush, flush) our chains, delete stale jumps, fill the
// chains, insert jumps, delete chains that must not exist. Each table is one
// COMMIT, so a half-applied table cannot happen.
func render(f Family, what string, rs ruleset, plan map[hook]hookPlan) []byte {
	var b bytes.Buffer
	tool := "iptables-restore"
	if f == IPv6 {
		tool = "ip6tables-restore"
	}
	fmt.Fprintf(&b, "# egressd firewall, %s, %s; apply with %s --noflush\n", f, what, tool)
	for _, table := range tableOrder {
		var lines []string
		var hs []hook
		for _, h := range hooks {
			if h.table != table {
				continue
			}
			_, want := rs[h]
			if want || plan[h].remove {
				hs = append(hs, h)
				lines = append(lines, ":"+h.chain+" - [0:0]")
			}
		}
		for _, h := range hooks {
			if h.table != table {
				continue
			}
			dels := slices.Clone(plan[h].deletes)
			slices.SortFunc(dels, func(a, b int) int { return b - a }) // highest first: positions stay valid
			for _, n := range dels {
				lines = append(lines, fmt.Sprintf("-D %s %d", h.builtin, n))
			}
		}
		for _, h := range hs {
			for _, r := range rs[h] {
				lines = append(lines, "-A "+h.chain+" "+r)
			}
		}
		for _, h := range hooks {
			if h.table == table && plan[h].insert {
				lines = append(lines, fmt.Sprintf("-I %s 1 -j %s", h.builtin, h.chain))
			}
		}
		for _, h := range hs {
			if plan[h].remove {
				lines = append(lines, "-X "+h.chain)
			}
		}
		if len(lines) == 0 {
			continue
		}
		b.WriteString("*" + table + "\n")
		b.WriteString(strings.Join(lines, "\n"))
		b.WriteString("\nCOMMIT\n")
	}
	return b.Bytes()
}

// builtinRule is one rule of a built-in chain as `iptables -S` lists it.
type builtinRule struct {
	pos  int    // 1-based
	spec string // after "-A BUILTIN "
}

// parseListing returns the rules of a `iptables -S CHAIN` listing, skipping
// the -P/-N line.
func parseListing(chain string, listing []string) []builtinRule {
	var rules []builtinRule
	prefix := "-A " + chain + " "
	for _, line := range listing {
		line = normalise(line)
		if spec, ok := strings.CutPrefix(line, prefix); ok {
			rules = append(rules, builtinRule{pos: len(rules) + 1, spec: spec})
		}
	}
	return rules
}

// normalise collapses runs of white space, so listings compare by content.
func normalise(line string) string { return strings.Join(strings.Fields(line), " ") }

// referencesOwnChain reports whether a rule spec jumps (-j) or goes (-g) to
// one of our chains in table.
func referencesOwnChain(table, spec string) bool {
	fields := strings.Fields(spec)
	for i := 0; i+1 < len(fields); i++ {
		if fields[i] == "-j" || fields[i] == "-g" || fields[i] == "--jump" || fields[i] == "--goto" {
			if slices.Contains(ownChains(table), fields[i+1]) {
				return true
			}
		}
	}
	return false
}

// planJumps compares a built-in chain's listing with what should be there:
// exactly one rule referencing our chains, "-j CHAIN" as rule 1, if want; none
// otherwise. It returns the edits that get there and, for Verify, what is
// wrong (empty when nothing is).
func planJumps(f Family, h hook, listing []string, want bool) (hookPlan, []string) {
	rules := parseListing(h.builtin, listing)
	var refs []int
	for _, r := range rules {
		if referencesOwnChain(h.table, r.spec) {
			refs = append(refs, r.pos)
		}
	}
	where := fmt.Sprintf("%s %s %s", f, h.table, h.builtin)
	jump := "-j " + h.chain
	if !want {
		if len(refs) == 0 {
			return hookPlan{}, nil
		}
		return hookPlan{deletes: refs}, []string{fmt.Sprintf("%s: %d rule(s) reference our chains, want none (mode has no %s chain)", where, len(refs), h)}
	}
	if len(refs) == 1 && refs[0] == 1 && rules[0].spec == jump {
		return hookPlan{}, nil
	}
	var problems []string
	switch {
	case len(refs) == 0:
		problems = append(problems, fmt.Sprintf("%s: no jump to %s", where, h.chain))
	default:
		if refs[0] != 1 {
			problems = append(problems, fmt.Sprintf("%s: first reference to our chains is rule %d, want rule 1 (%q): earlier rules see packets before the filter", where, refs[0], jump))
		}
		if len(refs) > 1 {
			problems = append(problems, fmt.Sprintf("%s: %d rules reference our chains, want exactly one", where, len(refs)))
		}
		for _, r := range rules {
			if slices.Contains(refs, r.pos) && r.spec != jump {
				problems = append(problems, fmt.Sprintf("%s: rule %d is %q, want %q", where, r.pos, r.spec, jump))
			}
		}
	}
	return hookPlan{deletes: refs, insert: true}, problems
}
