package execapi

import (
	"net/http"

	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/sandbox"
)

// Results of an execution, the result label of
// egressd_serve_executions_total.
const (
	resultOK          = "ok"           // the command exited 0
	resultExitNonzero = "exit_nonzero" // it exited with another status
	resultTimedOut    = "timed_out"    // process.timeout killed it
	resultOOMKilled   = "oom_killed"   // the kernel killed a process at the memory limit
	resultError       = "error"        // the launcher or the runtime failed (500)
	resultInvalid     = "invalid"      // the request was refused (4xx): malformed, below the floor
	resultRejected    = "rejected"     // no room: queue full or wait too long (429), or draining (503)
	resultCanceled    = "canceled"     // the client went away, or a shutdown killed it
)

var allResults = []string{resultOK, resultExitNonzero, resultTimedOut, resultOOMKilled, resultError, resultInvalid, resultRejected, resultCanceled}

// serveMetrics are the server's Prometheus metrics, on a registry of its
// own.
type serveMetrics struct {
	reg        *metrics.Registry
	executions *metrics.CounterVec
	duration   *metrics.HistogramVec
	queueWait  *metrics.Histogram
}

func newMetrics(s *Server) *serveMetrics {
	m := &serveMetrics{
		reg: metrics.NewRegistry(),
		executions: metrics.NewCounterVec("egressd_serve_executions_total",
			"Executions by result: ok, exit_nonzero, timed_out, oom_killed, error, invalid, rejected, canceled.", "result"),
		duration: metrics.NewHistogramVec("egressd_serve_execution_duration_seconds",
			"Executions that ran to their end, set-up and teardown included, by result.",
			[]float64{.025, .05, .1, .2, .4, .8, 1.5, 3, 6, 15, 30, 60, 120, 300, 600}, "result"),
		queueWait: metrics.NewHistogram("egressd_serve_queue_wait_seconds",
			"How long executions waited for a slot (0 when one was free).",
			[]float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}),
	}
	for _, r := range allResults {
		m.executions.WithLabelValues(r)
	}
	m.reg.MustRegister(m.executions, m.duration, m.queueWait,
		metrics.NewGaugeFunc("egressd_serve_in_flight", "Executions running now.",
			func() float64 { return float64(s.inFlight.Load()) }),
		metrics.NewGaugeFunc("egressd_serve_queued", "Executions waiting for a slot.",
			func() float64 { return float64(s.queued.Load()) }),
		metrics.NewRuntimeCollector(),
	)
	m.reg.MustRegister(poolCollectors(s.opts.Executor)...)
	return m
}

func (m *serveMetrics) result(r string) { m.executions.WithLabelValues(r).Inc() }

func (m *serveMetrics) handler() http.Handler { return m.reg }

// poolCollectors export a warm executor's pool counts (nothing when cold).
// Each family reads the pool's counts at the scrape.
func poolCollectors(e Executor) []metrics.Collector {
	family := func(name, help string, typ metrics.Type, labels []string, f func(st *sandbox.PoolStats, emit func(float64, ...string))) metrics.Collector {
		return metrics.NewFunc(name, help, typ, labels, func(emit func(float64, ...string)) {
			if st := e.Stats().Pool; st != nil {
				f(st, emit)
			}
		})
	}
	return []metrics.Collector{
		family("egressd_serve_pool_sandboxes", "Pooled sandboxes by state: idle, busy, creating, resetting.",
			metrics.TypeGauge, []string{"state"}, func(st *sandbox.PoolStats, emit func(float64, ...string)) {
				emit(float64(st.Idle), "idle")
				emit(float64(st.Busy), "busy")
				emit(float64(st.Creating), "creating")
				emit(float64(st.Resetting), "resetting")
			}),
		family("egressd_serve_pool_created_total", "Pooled sandboxes made.",
			metrics.TypeCounter, nil, func(st *sandbox.PoolStats, emit func(float64, ...string)) {
				emit(float64(st.Created))
			}),
		family("egressd_serve_pool_destroyed_total",
			"Pooled sandboxes destroyed, by reason: failed (a reset or a check failed), retired (max uses or age), other (the pool was full or closed).",
			metrics.TypeCounter, []string{"reason"}, func(st *sandbox.PoolStats, emit func(float64, ...string)) {
				other := st.Destroyed - min(st.Destroyed, st.Failed+st.Retired)
				emit(float64(st.Failed), "failed")
				emit(float64(st.Retired), "retired")
				emit(float64(other), "other")
			}),
		family("egressd_serve_pool_executions_total",
			"Executions the pool took, by sandbox: warm (a pooled one), cold (another shape: one of its own).",
			metrics.TypeCounter, []string{"sandbox"}, func(st *sandbox.PoolStats, emit func(float64, ...string)) {
				emit(float64(st.Warm), "warm")
				emit(float64(st.Cold), "cold")
			}),
	}
}
