package firewall

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Fake is an in-memory Netfilter for tests, of this package and of others
// (the launcher's lifecycle tests install a sandbox's firewall and its
// uplink's NAT through it). Each network namespace (by path; "" is the
// caller's own) has, per family, the filter and nat tables with their
// built-in chains, a conntrack entry count and its sysctls. List and
// ChainExists answer like `iptables -S` (including iptables-nft's unhelpful
// "incompatible" error for a missing chain); Restore interprets the subset
// of iptables-restore this package writes, strictly (a chain must exist
// before a rule jumps to it, -X needs an empty, unreferenced chain, -D
// needs the rule), and commits a table only at its COMMIT line, all or
// nothing. A namespace springs into being, empty, when first used; Remove
// drops one as the kernel frees a namespace with its last reference.
// Safe for concurrent use.
type Fake struct {
	mu sync.Mutex
	ns map[string]*fakeNS
	// Fail, if set, is asked before every operation, with what it is
	// ("restore", "list", "chain-exists", "flush-conntrack", "sysctl",
	// "set-sysctl"), the namespace and the family; an error it returns
	// fails the operation, which then changes nothing.
	Fail func(op, ns string, f Family) error
	ops  []string
}

type fakeNS struct {
	tables    [len(families)]*fakeIPT
	conntrack int
	sysctl    map[string]string
}

// NewFake returns a Fake with no namespace in it yet.
func NewFake() *Fake { return &Fake{ns: map[string]*fakeNS{}} }

func (k *Fake) get(ns string) *fakeNS {
	n, ok := k.ns[ns]
	if !ok {
		n = &fakeNS{sysctl: map[string]string{pingGroupRangeKey: "0\t2147483647"}}
		for _, f := range families {
			n.tables[f] = newFakeIPT()
		}
		k.ns[ns] = n
	}
	return n
}

// do records op and asks Fail.
func (k *Fake) do(op, ns string, f Family) error {
	k.ops = append(k.ops, fmt.Sprintf("%s %s %s", op, f, ns))
	if k.Fail != nil {
		return k.Fail(op, ns, f)
	}
	return nil
}

func (k *Fake) List(_ context.Context, ns string, f Family, table, chain string) ([]string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("list", ns, f); err != nil {
		return nil, err
	}
	return k.get(ns).tables[f].List(table, chain)
}

func (k *Fake) ChainExists(_ context.Context, ns string, f Family, table, chain string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("chain-exists", ns, f); err != nil {
		return false, err
	}
	return k.get(ns).tables[f].ChainExists(table, chain)
}

func (k *Fake) Restore(ctx context.Context, ns string, f Family, batch []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("restore", ns, f); err != nil {
		return err
	}
	return k.get(ns).tables[f].restore(ctx, batch)
}

func (k *Fake) FlushConntrack(ns string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("flush-conntrack", ns, IPv4); err != nil {
		return err
	}
	k.get(ns).conntrack = 0
	return nil
}

func (k *Fake) CountConntrack(ns string) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("count-conntrack", ns, IPv4); err != nil {
		return 0, err
	}
	return k.get(ns).conntrack, nil
}

func (k *Fake) Sysctl(ns, key string) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("sysctl", ns, IPv4); err != nil {
		return "", err
	}
	v, ok := k.get(ns).sysctl[key]
	if !ok {
		return "", &os.PathError{Op: "open", Path: sysctlPath(key), Err: os.ErrNotExist}
	}
	return v + "\n", nil
}

func (k *Fake) SetSysctl(ns, key, value string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.do("set-sysctl", ns, IPv4); err != nil {
		return err
	}
	k.get(ns).sysctl[key] = strings.Join(strings.Fields(value), "\t")
	return nil
}

// Save renders family f of namespace ns like iptables-save (without
// counters): what the kernel would hold.
func (k *Fake) Save(ns string, f Family) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.get(ns).tables[f].save()
}

// Batches returns every batch Restore applied to family f of ns, in order.
func (k *Fake) Batches(ns string, f Family) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.get(ns).tables[f].batches)
}

// Ops returns every operation so far, "restore IPv4 /run/netns/x", in
// order.
func (k *Fake) Ops() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.ops)
}

// Namespaces returns the namespaces that hold anything: a chain of their
// own, a rule in a built-in chain, or a conntrack entry.
func (k *Fake) Namespaces() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for name, n := range k.ns {
		used := n.conntrack > 0
		for _, t := range n.tables {
			used = used || !t.empty()
		}
		if used {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// AddConntrack adds n entries to the conntrack table of ns, and Conntrack
// counts them: a flow the tests pretend predates the rules.
func (k *Fake) AddConntrack(ns string, n int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.get(ns).conntrack += n
}

// Conntrack is the number of conntrack entries of ns.
func (k *Fake) Conntrack(ns string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.get(ns).conntrack
}

// AddRule appends a rule to chain of table by hand, as a foreign tool (or
// an attacker) would, creating a user chain if needed.
func (k *Fake) AddRule(ns string, f Family, table, chain, spec string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.get(ns).tables[f].add(table, chain, spec)
}

// Remove drops namespace ns with everything in it, as the kernel frees a
// namespace.
func (k *Fake) Remove(ns string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.ns, ns)
}

// fakeIPT is one family's tables of one Fake namespace: the filter and nat
// tables with their built-in chains.
type fakeIPT struct {
	tables map[string]*fakeTable
	// calls records every operation ("List filter OUTPUT", "restore"), so
	// tests can count how many execs the real tools would cost.
	calls []string
	// listErr and restoreErr, if set, fail the matching operations.
	listErr, restoreErr error
	// batches holds every batch restore received.
	batches []string
}

type fakeTable struct {
	chains  []string            // in creation order, built-ins first
	builtin map[string]bool     //
	rules   map[string][]string // chain → rule specs (after "-A CHAIN ")
}

func newFakeIPT() *fakeIPT {
	k := &fakeIPT{tables: map[string]*fakeTable{}}
	for table, builtins := range map[string][]string{
		"filter": {"INPUT", "FORWARD", "OUTPUT"},
		"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	} {
		t := &fakeTable{builtin: map[string]bool{}, rules: map[string][]string{}}
		for _, c := range builtins {
			t.chains = append(t.chains, c)
			t.builtin[c] = true
			t.rules[c] = nil
		}
		k.tables[table] = t
	}
	return k
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{chains: slices.Clone(t.chains), builtin: maps.Clone(t.builtin), rules: map[string][]string{}}
	for name, rules := range t.rules {
		c.rules[name] = slices.Clone(rules)
	}
	return c
}

type fakeNotExistError struct{ table, chain string }

func (e *fakeNotExistError) Error() string {
	return fmt.Sprintf("exit status 1: iptables v1.8.9 (nf_tables): chain `%s' in table `%s' is incompatible, use 'nft' tool.", e.chain, e.table)
}

func (k *fakeIPT) List(table, chain string) ([]string, error) {
	k.calls = append(k.calls, "List "+table+" "+chain)
	if k.listErr != nil {
		return nil, k.listErr
	}
	t, ok := k.tables[table]
	if !ok {
		return nil, fmt.Errorf("fake: no table %q", table)
	}
	rules, ok := t.rules[chain]
	if !ok {
		return nil, &fakeNotExistError{table, chain}
	}
	var out []string
	if t.builtin[chain] {
		out = append(out, "-P "+chain+" ACCEPT")
	} else {
		out = append(out, "-N "+chain)
	}
	for _, r := range rules {
		out = append(out, "-A "+chain+" "+r)
	}
	return out, nil
}

func (k *fakeIPT) ChainExists(table, chain string) (bool, error) {
	k.calls = append(k.calls, "ChainExists "+table+" "+chain)
	t, ok := k.tables[table]
	if !ok {
		return false, fmt.Errorf("fake: no table %q", table)
	}
	_, ok = t.rules[chain]
	return ok, nil
}

func (k *fakeIPT) restore(_ context.Context, batch []byte) error {
	k.calls = append(k.calls, "restore")
	k.batches = append(k.batches, string(batch))
	if k.restoreErr != nil {
		return k.restoreErr
	}
	var (
		name string
		cur  *fakeTable
	)
	for n, line := range strings.Split(string(batch), "\n") {
		if err := k.restoreLine(&name, &cur, line); err != nil {
			return fmt.Errorf("fake iptables-restore: line %d %q: %w", n+1, line, err)
		}
	}
	if cur != nil {
		return fmt.Errorf("fake iptables-restore: table %s has no COMMIT", name)
	}
	return nil
}

func (k *fakeIPT) restoreLine(name *string, cur **fakeTable, line string) error {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "#") {
		return nil
	}
	if table, ok := strings.CutPrefix(line, "*"); ok {
		if *cur != nil {
			return errors.New("table started before COMMIT")
		}
		t, ok := k.tables[table]
		if !ok {
			return fmt.Errorf("no table %q", table)
		}
		*name, *cur = table, t.clone()
		return nil
	}
	t := *cur
	if t == nil {
		return errors.New("rule outside a table")
	}
	if line == "COMMIT" {
		k.tables[*name] = t
		*cur = nil
		return nil
	}
	if decl, ok := strings.CutPrefix(line, ":"); ok {
		f := strings.Fields(decl)
		if len(f) != 3 {
			return errors.New("bad chain declaration")
		}
		chain := f[0]
		if t.builtin[chain] {
			return nil
		}
		if _, exists := t.rules[chain]; exists {
			t.rules[chain] = nil // --noflush: declaring a user chain flushes it
			return nil
		}
		t.chains = append(t.chains, chain)
		t.rules[chain] = nil
		return nil
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return errors.New("bad command")
	}
	cmd, chain, rest := f[0], f[1], f[2:]
	rules, exists := t.rules[chain]
	if !exists {
		return fmt.Errorf("no chain %s", chain)
	}
	checkTarget := func(spec []string) error {
		for i := 0; i+1 < len(spec); i++ {
			if spec[i] != "-j" && spec[i] != "-g" {
				continue
			}
			switch target := spec[i+1]; target {
			case "ACCEPT", "DROP", "RETURN", "REJECT", "REDIRECT", "MASQUERADE":
			default:
				if _, ok := t.rules[target]; !ok {
					return fmt.Errorf("no chain/target %s", target)
				}
			}
		}
		return nil
	}
	switch cmd {
	case "-A":
		if err := checkTarget(rest); err != nil {
			return err
		}
		t.rules[chain] = append(rules, strings.Join(rest, " "))
	case "-I":
		if len(rest) < 2 {
			return errors.New("-I needs a position and a rule")
		}
		pos, err := strconv.Atoi(rest[0])
		if err != nil || pos < 1 || pos > len(rules)+1 {
			return fmt.Errorf("bad position %q", rest[0])
		}
		if err := checkTarget(rest[1:]); err != nil {
			return err
		}
		t.rules[chain] = slices.Insert(rules, pos-1, strings.Join(rest[1:], " "))
	case "-D":
		if len(rest) == 1 {
			if pos, err := strconv.Atoi(rest[0]); err == nil {
				if pos < 1 || pos > len(rules) {
					return fmt.Errorf("no rule %d", pos)
				}
				t.rules[chain] = slices.Delete(rules, pos-1, pos)
				return nil
			}
		}
		i := slices.Index(rules, strings.Join(rest, " "))
		if i < 0 {
			return errors.New("no such rule")
		}
		t.rules[chain] = slices.Delete(rules, i, i+1)
	case "-F":
		t.rules[chain] = nil
	case "-X":
		if t.builtin[chain] {
			return errors.New("cannot delete a built-in chain")
		}
		if len(rules) > 0 {
			return errors.New("chain not empty")
		}
		for other, rs := range t.rules {
			for _, r := range rs {
				if slices.Contains(strings.Fields(r), chain) {
					return fmt.Errorf("chain referenced from %s", other)
				}
			}
		}
		delete(t.rules, chain)
		t.chains = slices.DeleteFunc(t.chains, func(c string) bool { return c == chain })
	default:
		return fmt.Errorf("unsupported command %s", cmd)
	}
	return nil
}

// add appends a rule by hand, as a foreign tool (or an attacker) would,
// creating a user chain if needed.
func (k *fakeIPT) add(table, chain, spec string) {
	t := k.tables[table]
	if _, ok := t.rules[chain]; !ok {
		t.chains = append(t.chains, chain)
	}
	t.rules[chain] = append(t.rules[chain], spec)
}

// insert puts a rule at 1-based position pos by hand.
func (k *fakeIPT) insert(table, chain string, pos int, spec string) {
	t := k.tables[table]
	t.rules[chain] = slices.Insert(t.rules[chain], pos-1, spec)
}

// deleteRule removes the 1-based rule pos by hand.
func (k *fakeIPT) deleteRule(table, chain string, pos int) {
	t := k.tables[table]
	t.rules[chain] = slices.Delete(t.rules[chain], pos-1, pos)
}

// save renders the whole state like iptables-save (without counters).
func (k *fakeIPT) save() string {
	var b strings.Builder
	for _, name := range tableOrder {
		t := k.tables[name]
		b.WriteString("*" + name + "\n")
		for _, c := range t.chains {
			policy := "-"
			if t.builtin[c] {
				policy = "ACCEPT"
			}
			b.WriteString(":" + c + " " + policy + "\n")
		}
		for _, c := range t.chains {
			for _, r := range t.rules[c] {
				b.WriteString("-A " + c + " " + r + "\n")
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// empty reports whether the tables hold nothing but empty built-in chains.
func (k *fakeIPT) empty() bool {
	for _, t := range k.tables {
		for name, rules := range t.rules {
			if !t.builtin[name] || len(rules) > 0 {
				return false
			}
		}
	}
	return true
}
