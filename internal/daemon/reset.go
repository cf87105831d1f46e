package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/dnsfilter"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/proxy"
)

// Pooled reuse (docs/design.md, "Admin endpoint"). A warm pool hands one
// sandbox, and its egressd, to tenant after tenant. Between two tenants
// POST /reset makes egressd forget the last one and GET /state proves it:
//
//	POST /reset ─► deny-everything policy in force (one swap; the file watcher is held)
//	            ─► dnsfilter.Server.Reset: cache, learned addresses, rate buckets, lookups,
//	               TCP clients; replies decided before are decided again
//	            ─► proxy.Proxy.Reset: every client connection and upstream closed, waited for
//	            ─► audit log flushed
//	            ─► 200 with the state, every count zero (else 500 naming what is left)
//	POST /reload (the next tenant's policy file) ─► that policy in force, watcher released
//
// Why deny everything rather than the policy files: between two tenants
// the files still hold the last tenant's policy (the pool writes the next
// one at acquire), so reloading them would keep the last tenant's allow
// list in force; and a reset must not fail because a file is unreadable.
// The deny-everything policy is the built-in strict profile's network
// section (filtered, no allow rule, no block rule, NXDOMAIN): every name
// and address is denied, nothing is forwarded upstream, and it passes any
// security floor serve can run under.

// Policy sources in GET /state.
const (
	sourcePolicy = "policy" // the profile, files and flags egressd was started with
	sourceReset  = "reset"  // the deny-everything policy of POST /reset
)

// policyID says which policy is in force.
type policyID struct {
	// Source is "policy" (loaded from the configured profile, files and
	// flags) or "reset" (the deny-everything policy).
	Source string `json:"source"`
	// Generation counts the policies put in force since start (1 is the
	// first); every load and every reset makes a new one.
	Generation uint64 `json:"generation"`
	// Digest is the SHA-256 of the resolved policy with its provenance
	// (what GET /policy shows), "sha256:" and hex.
	Digest string `json:"digest"`
	// AllowRules, BlockRules and InspectRules are the lengths of
	// network.allow, network.block and network.inspect.
	AllowRules   int       `json:"allow_rules"`
	BlockRules   int       `json:"block_rules"`
	InspectRules int       `json:"inspect_rules"`
	LoadedAt     time.Time `json:"loaded_at"`
}

// resetState is the daemon's part of POST /reset.
type resetState struct {
	// held is set by Reset and cleared by an explicit reload: while it is
	// set the file watcher does not reload, so a late change event cannot
	// put the files (the last tenant's policy) back in force.
	held        atomic.Bool
	generations atomic.Uint64
	resets      *metrics.Counter
	failures    *metrics.Counter
}

func (r *resetState) register(reg *metrics.Registry) {
	r.resets = metrics.NewCounter("egressd_resets_total", "Resets between tenants (POST /reset): the deny-everything policy put in force and the last tenant's state dropped.")
	r.failures = metrics.NewCounter("egressd_reset_failures_total", "Resets after which something was still open or held when the deadline came (POST /reset answers 500 with the state).")
	reg.MustRegister(r.resets, r.failures)
}

// put puts snap in force as the next generation. Call it with reloadMu
// held (or before serving).
func (d *Daemon) put(snap *snapshot, source string) {
	n := snap.profile.Network
	prof := snap.profile
	// The digest is computed when GET /state first asks for it: it encodes
	// the whole resolved policy by reflection (encoding/json), work a
	// sidecar nobody inspects never needs to page in.
	snap.digest = sync.OnceValue(func() string { return digest(prof) })
	snap.id = policyID{
		Source:       source,
		Generation:   d.reset.generations.Add(1),
		AllowRules:   len(n.Allow),
		BlockRules:   len(n.Block),
		InspectRules: len(n.Inspect),
		LoadedAt:     time.Now().UTC(),
	}
	d.live.p.Store(snap)
}

func digest(p *policy.Profile) string {
	b, err := json.Marshal(p.Explain())
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// denyAll compiles the deny-everything policy (see above). It reads no
// file: a reset cannot fail for want of one.
func (d *Daemon) denyAll() (*snapshot, error) {
	prof, err := policy.BuiltinProfile("strict")
	if err != nil {
		return nil, err
	}
	prof.Network.Allow, prof.Network.Block, prof.Network.Inspect, prof.Network.Credentials = nil, nil, nil, nil
	np := prof.NetworkPolicy()
	np.Self = append(np.Self, d.self...)
	m, err := policy.NewMatcher(np)
	if err != nil {
		return nil, fmt.Errorf("compiling the deny-everything policy: %w", err)
	}
	return &snapshot{profile: prof, matcher: m}, nil
}

// Reset makes egressd forget its tenant: the deny-everything policy is put
// in force, then the resolver and the proxy drop everything of the last
// tenant (dnsfilter.Server.Reset, proxy.Proxy.Reset) and the audit records
// are written. It returns once every connection it closed has ended, or
// with an error when ctx ends first (3s when ctx has no deadline), and the
// State then: a query or connection that came after the reset is counted
// there (POST /reset waits for an empty State). Only an explicit Reload
// puts a policy from the files back in force.
func (d *Daemon) Reset(ctx context.Context) (State, error) {
	start := time.Now()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, resetTimeout)
		defer cancel()
	}
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	snap, err := d.denyAll()
	if err != nil {
		d.reset.failures.Inc()
		return d.State(), err
	}
	// Policy first: whatever is decided from here on is decided under it.
	d.put(snap, sourceReset)
	d.reset.held.Store(true)
	d.proxy.SetInspect(nil)
	d.dns.Reset()
	if err := d.proxy.Reset(ctx); err != nil {
		d.reset.failures.Inc()
		d.log.Error("reset incomplete: connections of the last tenant are still open", "err", err.Error())
		return d.State(), err
	}
	// Every record of the last tenant is logged by now (the resolver's
	// under its gate, the proxy's as each connection ended): write them.
	d.audit.Flush()
	d.reset.resets.Inc()
	st := d.State()
	d.log.Info("reset: deny-everything policy in force, the last tenant's state dropped",
		"generation", st.Policy.Generation, "duration_ms", float64(time.Since(start).Microseconds())/1000)
	return st, nil
}

// waitEmpty polls state until it reports nothing left (lookups cancelled
// by the reset end within moments) or ctx ends; *last is the last state.
func waitEmpty(ctx context.Context, state func() State, last *State) error {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		*last = state()
		if last.Empty {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			b, _ := json.Marshal(last)
			return fmt.Errorf("still held after the reset: %s: %w", b, ctx.Err())
		}
	}
}

// resetTimeout bounds POST /reset.
const resetTimeout = 3 * time.Second

// resetForAdmin is POST /reset: Reset, then wait until State is empty
// (lookups the reset cancelled end within moments). The pool calls it once
// the tenant's processes are gone, so anything still counted then is
// something left behind, and the answer says what.
func (d *Daemon) resetForAdmin(ctx context.Context) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, resetTimeout)
	defer cancel()
	st, err := d.Reset(ctx)
	if err == nil {
		err = waitEmpty(ctx, d.State, &st)
		if err != nil {
			d.reset.failures.Inc()
			d.log.Error("reset incomplete: something is still held", "err", err.Error())
		}
	}
	return st, err
}

// State is GET /state: what egressd holds now, counted from the tables
// and connections themselves.
type State struct {
	// Policy is the policy in force.
	Policy policyID `json:"policy"`
	// HeldForReload is set after a reset until an explicit reload.
	HeldForReload bool            `json:"held_for_reload"`
	DNS           dnsfilter.State `json:"dns"`
	Proxy         proxy.State     `json:"proxy"`
	// Empty is set when the resolver and the proxy hold nothing of past
	// queries and connections (every count above zero).
	Empty bool `json:"empty"`
}

// State counts what egressd holds now.
func (d *Daemon) State() State {
	snap := d.live.p.Load()
	st := State{
		Policy:        snap.id,
		HeldForReload: d.reset.held.Load(),
		DNS:           d.dns.State(),
		Proxy:         d.proxy.State(),
	}
	st.Policy.Digest = snap.digest()
	st.Empty = st.DNS.Empty() && st.Proxy.Empty()
	return st
}
