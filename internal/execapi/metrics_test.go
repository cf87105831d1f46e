package execapi

import (
	"context"
	"fmt"
	"sort"
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
	for name, f := range metricstest.Parse(t, m.reg) {
		if !strings.HasPrefix(name, "egressd_serve_pool") {
			continue
		}
		for _, s := range f.GetMetric() {
			l := metricstest.Labels(s)
			var keys []string
			for k, v := range l {
				keys = append(keys, k+"="+v)
			}
			sort.Strings(keys)
			v := s.GetGauge().GetValue() + s.GetCounter().GetValue()
			got[fmt.Sprintf("%s %s %v", f.GetType(), name, keys)] = fmt.Sprint(v)
		}
	}
	want := map[string]string{
		"GAUGE egressd_serve_pool_sandboxes [state=idle]":             "2",
		"GAUGE egressd_serve_pool_sandboxes [state=busy]":             "1",
		"GAUGE egressd_serve_pool_sandboxes [state=creating]":         "3",
		"GAUGE egressd_serve_pool_sandboxes [state=resetting]":        "4",
		"COUNTER egressd_serve_pool_created_total []":                 "10",
		"COUNTER egressd_serve_pool_destroyed_total [reason=failed]":  "1",
		"COUNTER egressd_serve_pool_destroyed_total [reason=retired]": "2",
		"COUNTER egressd_serve_pool_destroyed_total [reason=other]":   "3",
		"COUNTER egressd_serve_pool_executions_total [sandbox=warm]":  "7",
		"COUNTER egressd_serve_pool_executions_total [sandbox=cold]":  "5",
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
