package sandbox

import (
	"testing"

	"github.com/egressd/egressd/policy"
)

// BenchmarkNewPlan is the planning a pooled acquire does for each tenant
// (the standard profile, filtered, the host view, an init).
func BenchmarkNewPlan(b *testing.B) {
	p, _, err := policy.Resolve(policy.ResolveOptions{Profile: "standard", Overrides: []policy.Setting{
		{Key: "network.upstream_dns", Values: []string{"192.0.2.53"}, Source: policy.Flag("--upstream-dns")}}})
	if err != nil {
		b.Fatal(err)
	}
	cfg := Config{Profile: p, Args: []string{"true"}, EgressdPath: "/bin/true", Init: "/bin/true", ID: "egs-0000abcd", Kernel: NewFakeKernel().Kernel}
	for b.Loop() {
		if _, err := NewPlan(cfg); err != nil {
			b.Fatal(err)
		}
	}
}
