package proxy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestTunnelCapFitsTheDescriptorLimit: the cap leaves every tunnel its two
// descriptors and the rest of the process its reserve, so no tunnel takes
// the last descriptor (the fd cliff: tunnel 3 332 of a cap of 4 096 got a
// 502 under a 20 000-descriptor limit).
func TestTunnelCapFitsTheDescriptorLimit(t *testing.T) {
	const resolver = 2 + 128 + 256 // one DNS address with dnsfilter's defaults
	for _, tc := range []struct {
		limit, other int
		want         fdBudget
		wantErr      bool
	}{
		// The host: 20 000 descriptors.
		{limit: 20000, other: resolver, want: fdBudget{pipes: 256, reserve: resolver + 64 + 256 + 512, tunnels: (20000 - 1218) / 2}},
		// A Debian login's hard limit.
		{limit: 1 << 20, other: resolver, want: fdBudget{pipes: 256, reserve: 1218, tunnels: (1<<20 - 1218) / 2}},
		// The usual soft limit: the reserve is held to half.
		{limit: 1024, other: resolver, want: fdBudget{pipes: 16, reserve: 512, tunnels: 256}},
		{limit: 64, other: 0, want: fdBudget{pipes: 4, reserve: 32, tunnels: 16}},
		{limit: 60, other: 0, wantErr: true},
	} {
		got, err := budgetFDs(tc.limit, tc.other)
		if tc.wantErr {
			if err == nil {
				t.Errorf("limit %d: budget %+v, want an error (too few for any tunnels)", tc.limit, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("limit %d: %v", tc.limit, err)
			continue
		}
		if d := cmp.Diff(tc.want, got, cmp.AllowUnexported(fdBudget{})); d != "" {
			t.Errorf("limit %d (-want +got):\n%s", tc.limit, d)
		}
		if used := got.reserve + fdsPerTunnel*got.tunnels; used > tc.limit {
			t.Errorf("limit %d: reserve and tunnels need %d descriptors", tc.limit, used)
		}
	}
}

// TestFDLimitLowersTheTunnelCap: Config.FDLimit lowers a cap the limit
// cannot hold (and gives "no cap" one), and leaves a smaller one alone.
func TestFDLimitLowersTheTunnelCap(t *testing.T) {
	for _, tc := range []struct{ asked, limit, want int }{
		{asked: 0, limit: 1024, want: 256},
		{asked: -1, limit: 1024, want: 256},
		{asked: 100, limit: 1024, want: 100},
		{asked: 0, limit: 1 << 20, want: DefaultMaxTunnels},
		{asked: 0, limit: 0, want: DefaultMaxTunnels},
	} {
		p, err := New(Config{Policy: policyOf(t), MaxTunnels: tc.asked, FDLimit: tc.limit, FDReserve: 386})
		if err != nil {
			t.Fatal(err)
		}
		if got := p.MaxTunnels(); got != tc.want {
			t.Errorf("MaxTunnels %d under a limit of %d: cap %d, want %d", tc.asked, tc.limit, got, tc.want)
		}
	}
}
