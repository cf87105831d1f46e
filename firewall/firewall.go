package firewall

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Firewall installs, verifies and removes this package's rules through a
// Netfilter: the kernel's (System) or an in-memory one (NewFake). The
// package-level functions use System.
type Firewall struct{ nf Netfilter }

// New returns the firewall that acts through nf.
func New(nf Netfilter) *Firewall { return &Firewall{nf: nf} }

// errEmptyPath refuses a namespace left unnamed: the sandbox firewall goes
// into a namespace the caller names (/proc/self/ns/net for its own).
var errEmptyPath = errors.New("network namespace path is empty: name the namespace (/proc/self/ns/net for the current one)")

// system is the Firewall of the package-level functions.
var system = New(System())

// Install puts the rule set for cfg into the network namespace at nsPath (a
// bind mount such as /var/run/netns/NAME, or /proc/PID/ns/net), for IPv4 and
// IPv6, then sets net.ipv4.ping_group_range to "1 0" there (unless it already
// is) and flushes the namespace's conntrack table. A path naming the
// caller's own namespace (/proc/self/ns/net) is acted on without setns(2),
// so CAP_NET_ADMIN is all it needs (`egressd firewall install` in an init
// container); any other namespace also needs CAP_SYS_ADMIN to enter.
//
// It is idempotent and replaces whatever an earlier Install left: each
// family's chains are refilled and their jumps repaired (exactly one, as rule 1
// of its built-in chain) in one iptables-restore batch, so a re-install over a
// live namespace never has a moment without rules. The conntrack flush comes
// after the rules are in place, so every connection the kernel still tracks
// afterwards was judged by them (THREATS G7: a flow that predates the rules
// cannot ride the ESTABLISHED rule).
//
// Both families or nothing: both families' built-in chains are read before
// either's batch is sent, so if iptables or ip6tables (or their -restore) is
// missing, Install fails before touching the namespace. Any other error
// leaves the namespace unfit for use (parts may be installed): the caller
// must not start a workload in it, and should destroy it or Install again.
// Install does not Verify; call Verify when the result must be proven.
func Install(ctx context.Context, nsPath string, cfg Config) error {
	return system.Install(ctx, nsPath, cfg)
}

// Install is the package-level Install, through fw's Netfilter.
func (fw *Firewall) Install(ctx context.Context, nsPath string, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if nsPath == "" {
		return errEmptyPath
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("installing firewall in %s: %w", nsPath, err)
	}
	var batches [len(families)][]byte
	err := forEachFamily(func(f Family) error {
		b, err := planInstall(ctx, fw.in(nsPath, f), f, cfg)
		if err != nil {
			return fmt.Errorf("installing %s rules in %s: %w", f, nsPath, err)
		}
		batches[f] = b
		return nil
	})
	if err != nil {
		return err
	}
	if err := fw.restoreBoth(ctx, nsPath, batches, "installing"); err != nil {
		return err
	}
	return fw.finishInstall(nsPath)
}

// InstallFresh installs cfg's rules in a namespace that was just created and
// holds no rules at all: one iptables-restore and one ip6tables-restore of
// exactly Rules(cfg), run at once, without Install's listings of the
// built-in chains (three iptables runs per family, which plan jumps around
// rules a fresh namespace does not have). Like Install it then sets
// ping_group_range and flushes conntrack. A namespace that may hold rules
// must use Install.
func InstallFresh(ctx context.Context, nsPath string, cfg Config) error {
	return system.InstallFresh(ctx, nsPath, cfg)
}

// InstallFresh is the package-level InstallFresh, through fw's Netfilter.
func (fw *Firewall) InstallFresh(ctx context.Context, nsPath string, cfg Config) error {
	v4, v6, err := Rules(cfg)
	if err != nil {
		return err
	}
	if nsPath == "" {
		return errEmptyPath
	}
	if err := fw.restoreBoth(ctx, nsPath, [len(families)][]byte{v4, v6}, "installing"); err != nil {
		return err
	}
	return fw.finishInstall(nsPath)
}

// restoreBoth sends each family's batch, at once.
func (fw *Firewall) restoreBoth(ctx context.Context, nsPath string, batches [len(families)][]byte, doing string) error {
	return forEachFamily(func(f Family) error {
		if err := fw.nf.Restore(ctx, nsPath, f, batches[f]); err != nil {
			return fmt.Errorf("%s %s rules in %s: %w", doing, f, nsPath, err)
		}
		return nil
	})
}

// finishInstall does what follows the rules in every install: no ping
// sockets (THREATS F3), and no flow that predates the rules (G7).
func (fw *Firewall) finishInstall(nsPath string) error {
	if err := setPingGroupRange(fw.nf, nsPath); err != nil {
		return fmt.Errorf("installing firewall in %s: %w", nsPath, err)
	}
	if err := fw.nf.FlushConntrack(nsPath); err != nil {
		return fmt.Errorf("installing firewall in %s: %w", nsPath, err)
	}
	return nil
}

// Verify checks that the namespace at nsPath holds exactly what Install(cfg)
// puts there: each of our chains rule for rule, a jump to each as rule 1 of
// its built-in chain and no other reference to them, no chain the mode does
// not use, and ping_group_range "1 0". It reads the rules with one
// iptables-save per family (Netfilter.Dump), both at once: a pool verifies
// a sandbox after every tenant. A difference is reported as a
// *DriftError listing every problem; failing to read the state is another
// error. Both mean the namespace must not be used.
func Verify(ctx context.Context, nsPath string, cfg Config) error {
	return system.Verify(ctx, nsPath, cfg)
}

// Verify is the package-level Verify, through fw's Netfilter.
func (fw *Firewall) Verify(ctx context.Context, nsPath string, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if nsPath == "" {
		return errEmptyPath
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("verifying firewall in %s: %w", nsPath, err)
	}
	var problems [len(families)][]string
	err := forEachFamily(func(f Family) error {
		// One dump per family, read as the listings verify asks for.
		dump, err := fw.nf.Dump(ctx, nsPath, f)
		if err != nil {
			return fmt.Errorf("verifying %s rules in %s: %w", f, nsPath, err)
		}
		saved, err := parseSave(dump)
		if err != nil {
			return fmt.Errorf("verifying %s rules in %s: %w", f, nsPath, err)
		}
		p, err := verify(ctx, saved, f, cfg)
		if err != nil {
			return fmt.Errorf("verifying %s rules in %s: %w", f, nsPath, err)
		}
		problems[f] = p
		return nil
	})
	if err != nil {
		return err
	}
	all := append(problems[IPv4], problems[IPv6]...)
	problem, err := pingGroupRangeProblem(fw.nf, nsPath)
	if err != nil {
		return fmt.Errorf("verifying firewall in %s: %w", nsPath, err)
	}
	if problem != "" {
		all = append(all, problem)
	}
	if len(all) > 0 {
		return &DriftError{NSPath: nsPath, Problems: all}
	}
	return nil
}

// Flush removes the project's chains and every rule that references them
// from the built-in chains of the namespace at nsPath, both families, then
// empties the namespace's conntrack table. No other rule or chain is touched.
// Flushing a namespace without our chains is not an error. A rule in another
// chain than INPUT/OUTPUT that jumps to ours makes Flush fail (the chain
// cannot be deleted while referenced) rather than edit a rule we do not own.
//
// For pooled reuse, Install over the previous tenant's rules is enough and
// leaves no gap; Flush is for tearing the firewall down.
func Flush(ctx context.Context, nsPath string) error {
	return system.Flush(ctx, nsPath)
}

// Flush is the package-level Flush, through fw's Netfilter.
func (fw *Firewall) Flush(ctx context.Context, nsPath string) error {
	if nsPath == "" {
		return errEmptyPath
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("flushing firewall in %s: %w", nsPath, err)
	}
	var batches [len(families)][]byte
	err := forEachFamily(func(f Family) error {
		b, err := planFlush(ctx, fw.in(nsPath, f), f)
		if err != nil {
			return fmt.Errorf("flushing %s rules in %s: %w", f, nsPath, err)
		}
		batches[f] = b
		return nil
	})
	if err != nil {
		return err
	}
	if err := fw.restoreBoth(ctx, nsPath, batches, "flushing"); err != nil {
		return err
	}
	if err := fw.nf.FlushConntrack(nsPath); err != nil {
		return fmt.Errorf("flushing firewall in %s: %w", nsPath, err)
	}
	return nil
}

// FlushConntrack empties the conntrack table of the namespace at nsPath
// (both families) and then counts what is in it: a pooled sandbox's reset
// proves that no flow of the last tenant is left (THREATS G7).
//
// A flow that egressd closed can still put an entry back after a flush: a
// late packet of it (the peer's retransmitted FIN, answered by egressd's
// TIME_WAIT socket, whose packets carry egressd's mark) is tracked anew.
// Such an entry is flushed again, up to conntrackRounds flushes in all,
// a little apart; an entry still there after the last one (something keeps
// a flow alive) is an error, and the sandbox is not used again.
func (fw *Firewall) FlushConntrack(nsPath string) error {
	if nsPath == "" {
		return errEmptyPath
	}
	n := 0
	for round := range conntrackRounds {
		if round > 0 {
			time.Sleep(time.Duration(round) * conntrackPause)
		}
		if err := fw.nf.FlushConntrack(nsPath); err != nil {
			return fmt.Errorf("flushing conntrack in %s: %w", nsPath, err)
		}
		var err error
		if n, err = fw.nf.CountConntrack(nsPath); err != nil {
			return fmt.Errorf("counting conntrack entries in %s: %w", nsPath, err)
		}
		if n == 0 {
			return nil
		}
	}
	return fmt.Errorf("conntrack in %s holds %d entries after %d flushes", nsPath, n, conntrackRounds)
}

// conntrackRounds is how many times FlushConntrack flushes before an entry
// that keeps coming back is an error, conntrackPause how long it waits
// before the second (twice that before the third).
const (
	conntrackRounds = 3
	conntrackPause  = 10 * time.Millisecond
)

// DriftError is Verify's report that a namespace's firewall differs from its
// config. Problems are sentences a person can act on, one per difference.
type DriftError struct {
	NSPath   string
	Problems []string
}

func (e *DriftError) Error() string {
	return fmt.Sprintf("firewall in %s differs from its config: %s", e.NSPath, strings.Join(e.Problems, "; "))
}

// forEachFamily runs fn for IPv4 and IPv6 concurrently and joins their
// errors.
func forEachFamily(fn func(f Family) error) error {
	var errs [len(families)]error
	var wg sync.WaitGroup
	for _, f := range families {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[f] = fn(f)
		}()
	}
	wg.Wait()
	return errors.Join(errs[:]...)
}

// backend is one family's tables in one namespace, as the rule engine
// (planInstall, planFlush, verify) reads them.
type backend interface {
	List(table, chain string) ([]string, error)
	ChainExists(table, chain string) (bool, error)
}

// in is family f of the namespace at nsPath, through fw's Netfilter.
func (fw *Firewall) in(nsPath string, f Family) backend {
	return familyTables{nf: fw.nf, ns: nsPath, f: f}
}

type familyTables struct {
	nf Netfilter
	ns string
	f  Family
}

func (t familyTables) List(table, chain string) ([]string, error) {
	return t.nf.List(context.Background(), t.ns, t.f, table, chain)
}

func (t familyTables) ChainExists(table, chain string) (bool, error) {
	return t.nf.ChainExists(context.Background(), t.ns, t.f, table, chain)
}

// planInstall returns the batch that brings one family's rules to cfg: it
// reads the three built-in chains we hook and plans a batch that refills
// our chains, repairs the jumps and removes chains the mode does not use.
func planInstall(ctx context.Context, b backend, f Family, cfg Config) ([]byte, error) {
	rs := buildRuleset(cfg, f)
	plan := make(map[hook]hookPlan, len(hooks))
	for _, h := range hooks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		listing, err := b.List(h.table, h.builtin)
		if err != nil {
			return nil, fmt.Errorf("listing %s %s: %w", h.table, h.builtin, err)
		}
		_, want := rs[h]
		p, _ := planJumps(f, h, listing, want)
		p.remove = !want
		plan[h] = p
	}
	return render(f, "mode "+string(cfg.Mode), rs, plan), nil
}

// planFlush returns the batch that removes one family's chains and every
// reference to them from the built-in chains we hook.
func planFlush(ctx context.Context, b backend, f Family) ([]byte, error) {
	plan := make(map[hook]hookPlan, len(hooks))
	for _, h := range hooks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		listing, err := b.List(h.table, h.builtin)
		if err != nil {
			return nil, fmt.Errorf("listing %s %s: %w", h.table, h.builtin, err)
		}
		p, _ := planJumps(f, h, listing, false)
		p.remove = true
		plan[h] = p
	}
	return render(f, "flush", ruleset{}, plan), nil
}

// verify lists one family's chains and returns every difference from cfg.
// The error is for failing to read, not for differences.
func verify(ctx context.Context, b backend, f Family, cfg Config) ([]string, error) {
	rs := buildRuleset(cfg, f)
	var problems []string
	for _, h := range hooks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rules, want := rs[h]
		if want {
			listing, err := b.List(h.table, h.chain)
			if err != nil {
				// go-iptables cannot tell "no such chain" from other failures
				// for iptables-nft (its message is "incompatible"), so ask.
				exists, xerr := b.ChainExists(h.table, h.chain)
				if xerr != nil || exists {
					return nil, fmt.Errorf("listing %s: %w", h, err)
				}
				problems = append(problems, fmt.Sprintf("%s %s: chain missing", f, h))
			} else {
				wantLines := []string{"-N " + h.chain}
				for _, r := range rules {
					wantLines = append(wantLines, "-A "+h.chain+" "+r)
				}
				gotLines := make([]string, 0, len(listing))
				for _, l := range listing {
					if l = normalise(l); l != "" {
						gotLines = append(gotLines, l)
					}
				}
				if d := diffLines(wantLines, gotLines); d != "" {
					problems = append(problems, fmt.Sprintf("%s %s differs (-want +got):\n%s", f, h, d))
				}
			}
		} else {
			exists, err := b.ChainExists(h.table, h.chain)
			if err != nil {
				return nil, fmt.Errorf("checking for %s: %w", h, err)
			}
			if exists {
				problems = append(problems, fmt.Sprintf("%s %s: chain exists, but mode %s has none", f, h, cfg.Mode))
			}
		}
		listing, err := b.List(h.table, h.builtin)
		if err != nil {
			return nil, fmt.Errorf("listing %s %s: %w", h.table, h.builtin, err)
		}
		_, p := planJumps(f, h, listing, want)
		problems = append(problems, p...)
	}
	return problems, nil
}

// diffLines returns a line diff of want and got ("- " for a line only in
// want, "+ " for one only in got), or "" if they are equal. It uses the
// longest common subsequence, so one deleted rule shows as one line.
func diffLines(want, got []string) string {
	n, m := len(want), len(got)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if want[i] == got[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var b strings.Builder
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && want[i] == got[j]:
			i++
			j++
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			b.WriteString("  + " + got[j] + "\n")
			j++
		default:
			b.WriteString("  - " + want[i] + "\n")
			i++
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// savedTables is one family's tables as iptables-save printed them, read
// through the listings (`iptables -S`) verify asks for: Verify reads each
// family once instead of listing chain by chain.
type savedTables map[string]map[string]*savedChain

type savedChain struct {
	policy string // a built-in chain's policy; "-" for a user chain
	rules  []string
}

// builtinChains are the built-in chains of the tables we read: a table
// iptables-save does not print (never used in the namespace) has them,
// empty, as `iptables -S` would show.
var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// parseSave reads iptables-save output: "*table", ":chain policy
// [counters]", "-A chain rule", "COMMIT", comments. Anything else, or a
// rule of an undeclared chain, is an error: what cannot be read is never
// taken as verified.
func parseSave(data []byte) (savedTables, error) {
	out := savedTables{}
	var table map[string]*savedChain
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			name := line[1:]
			if table != nil || name == "" || out[name] != nil {
				return nil, fmt.Errorf("iptables-save line %d: table %q where none may start", i+1, name)
			}
			table = map[string]*savedChain{}
			out[name] = table
		case line == "COMMIT":
			if table == nil {
				return nil, fmt.Errorf("iptables-save line %d: COMMIT outside a table", i+1)
			}
			table = nil
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if table == nil || len(f) < 2 || table[f[0]] != nil {
				return nil, fmt.Errorf("iptables-save line %d: bad chain line %q", i+1, line)
			}
			table[f[0]] = &savedChain{policy: f[1]}
		case strings.HasPrefix(line, "-A "):
			chain, _, _ := strings.Cut(line[3:], " ")
			c := table[chain]
			if table == nil || c == nil {
				return nil, fmt.Errorf("iptables-save line %d: rule of an undeclared chain: %q", i+1, line)
			}
			c.rules = append(c.rules, line)
		default:
			return nil, fmt.Errorf("iptables-save line %d: unexpected %q", i+1, line)
		}
	}
	if table != nil {
		return nil, errors.New("iptables-save: a table without COMMIT")
	}
	return out, nil
}

// List is `iptables -t table -S chain` of the saved state.
func (s savedTables) List(table, chain string) ([]string, error) {
	t, ok := s[table]
	if !ok {
		if slices.Contains(builtinChains[table], chain) {
			return []string{"-P " + chain + " ACCEPT"}, nil
		}
		return nil, fmt.Errorf("chain %s not in table %s", chain, table)
	}
	c, ok := t[chain]
	if !ok {
		return nil, fmt.Errorf("chain %s not in table %s", chain, table)
	}
	head := "-N " + chain
	if c.policy != "-" {
		head = "-P " + chain + " " + c.policy
	}
	return append([]string{head}, c.rules...), nil
}

// ChainExists reports whether the saved table has chain.
func (s savedTables) ChainExists(table, chain string) (bool, error) {
	if t, ok := s[table]; ok {
		return t[chain] != nil, nil
	}
	return slices.Contains(builtinChains[table], chain), nil
}

// tcpMaxTimeWaitKey bounds the TCP sockets a namespace keeps after their
// close (TIME_WAIT, and FIN_WAIT2 of orphans); 0 keeps none.
const tcpMaxTimeWaitKey = "net/ipv4/tcp_max_tw_buckets"

// KeepNoClosedConnections makes the namespace at nsPath keep no TCP
// socket after its close (net.ipv4.tcp_max_tw_buckets 0, read back). A
// pooled sandbox's namespace outlives its tenants: a connection egressd
// closed for tenant A would otherwise stay listed, with its destination,
// in /proc/net/tcp and sock_diag for up to a minute, for tenant B to read
// (THREATS G9). Without TIME_WAIT a late duplicate segment of a closed
// connection is answered with a reset instead of being absorbed, which an
// egress proxy's short-lived upstream connections can afford.
func (fw *Firewall) KeepNoClosedConnections(nsPath string) error {
	if nsPath == "" {
		return errEmptyPath
	}
	if err := fw.nf.SetSysctl(nsPath, tcpMaxTimeWaitKey, "0"); err != nil {
		return fmt.Errorf("setting net.ipv4.tcp_max_tw_buckets to 0 in %s: %w", nsPath, err)
	}
	v, err := fw.nf.Sysctl(nsPath, tcpMaxTimeWaitKey)
	if err != nil {
		return fmt.Errorf("reading net.ipv4.tcp_max_tw_buckets in %s: %w", nsPath, err)
	}
	if strings.TrimSpace(v) != "0" {
		return fmt.Errorf("net.ipv4.tcp_max_tw_buckets in %s is %q after setting it to 0", nsPath, strings.TrimSpace(v))
	}
	return nil
}
