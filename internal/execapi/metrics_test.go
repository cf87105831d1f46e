package execapi

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/egressd/egressd/internal/metrics/metricstest"
	"github.com/egressd/egressd/sandbox"
)

// poolExecutor reports a warm pool's counts.
type poolExecutor struct{ st sandbox.PoolStats }

func (p *poolExecutor) Execute(context.Context, Job) (Outcome, error) { return Outcome{}, nil }
func (p *poolExecutor) Stats() ExecutorStats {
	st := p.st
	return ExecutorStats{Mode: "warm", Pool: &st}
}

// The pool's families carry the names, types, labels and values
// `launcher serve` has always exposed (docs/serve.md), and are absent
// without a pool.
func TestPoolMetricsSeries(t *testing.T) {
	e := &poolExecutor{sandbox.PoolStats{Idle: 2, Busy: 1, Creating: 3, Resetting: 4, Created: 10, Destroyed: 6, Failed: 1, Retired: 2, Warm: 7, Cold: 5}}
	m := newMetrics(&Server{opts: Options{Executor: e}})
	got := map[string]string{}
	for k, v := range metricstest.Series(t, m.reg) {
		if strings.Contains(k, " egressd_serve_pool") {
			got[k] = v
		}
	}
	want := map[string]string{
		"GAUGE egressd_serve_pool_sandboxes map[state:idle]":             "2",
		"GAUGE egressd_serve_pool_sandboxes map[state:busy]":             "1",
		"GAUGE egressd_serve_pool_sandboxes map[state:creating]":         "3",
		"GAUGE egressd_serve_pool_sandboxes map[state:resetting]":        "4",
		"COUNTER egressd_serve_pool_created_total map[]":                 "10",
		"COUNTER egressd_serve_pool_destroyed_total map[reason:failed]":  "1",
		"COUNTER egressd_serve_pool_destroyed_total map[reason:retired]": "2",
		"COUNTER egressd_serve_pool_destroyed_total map[reason:other]":   "3",
		"COUNTER egressd_serve_pool_executions_total map[sandbox:warm]":  "7",
		"COUNTER egressd_serve_pool_executions_total map[sandbox:cold]":  "5",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("pool series (-want +got):\n%s", d)
	}

	cold := newMetrics(&Server{opts: Options{Executor: &fakeExecutor{}}})
	for name := range metricstest.Parse(t, cold.reg) {
		if strings.HasPrefix(name, "egressd_serve_pool") {
			t.Errorf("a cold executor exposes %s", name)
		}
	}
}

// TestServeMetricsMatchTheDocs: the egressd_serve_* families and their
// types are the ones docs/serve.md lists, no more, no fewer.
func TestServeMetricsMatchTheDocs(t *testing.T) {
	m := newMetrics(&Server{opts: Options{Executor: &poolExecutor{}}})
	metricstest.MatchesDocs(t, m.reg, "../../docs/serve.md", "egressd_serve_")
}
