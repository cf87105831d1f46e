package sandbox

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestPoolTenantsDenialsOutliveItsReleaseAndAreNoOneElses: the release
// hands the sandbox's audit stream to nobody, yet a tenant's answer, read
// after its release (execapi's Warm), lists what egressd denied it, up to
// the record written last; the next tenant's lists none of them.
func TestPoolTenantsDenialsOutliveItsReleaseAndAreNoOneElses(t *testing.T) {
	w := newPoolWorld(t, PoolConfig{Size: 1})
	rec := `{"time":"2026-01-01T00:00:00Z","kind":"connect","target":"evil.test","port":443,"decision":"deny","reason":"no-allow-rule"}`
	// Written the moment before the release, as egressd's flush at the
	// reset writes what it held: the release reads the stream up to there
	// before it hands the stream on.
	a, _, err := w.run(w.tenant("a.test", "true"), func(l *Lease) { w.egressd(l.ID()).Audit(rec) })
	if err != nil {
		t.Fatal(err)
	}
	want := []Denial{{Kind: "connect", Outcome: "deny", Target: "evil.test", Port: 443, Reason: "no-allow-rule", Count: 1}}
	if d := cmp.Diff(want, a.Denials()); d != "" {
		t.Errorf("tenant A's denials after its release (-want +got):\n%s", d)
	}
	b, _, err := w.run(w.tenant("b.test", "true"), nil)
	if err != nil || b.ID() != a.ID() {
		t.Fatalf("tenant B: %v, sandbox %s (A had %s)", err, b.ID(), a.ID())
	}
	if d := b.Denials(); len(d) != 0 {
		t.Errorf("tenant B's denials hold tenant A's: %+v", d)
	}
	if d := cmp.Diff(want, a.Denials()); d != "" {
		t.Errorf("tenant A's denials after B's lease (-want +got):\n%s", d)
	}
}
