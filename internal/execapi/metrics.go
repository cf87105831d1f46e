package execapi

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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

// metrics are the server's Prometheus metrics, on a registry of its own.
type metrics struct {
	reg        *prometheus.Registry
	executions *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	queueWait  prometheus.Histogram
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		executions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_serve_executions_total",
			Help: "Executions by result: ok, exit_nonzero, timed_out, oom_killed, error, invalid, rejected, canceled.",
		}, []string{"result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "egressd_serve_execution_duration_seconds",
			Help:    "Executions that ran to their end, set-up and teardown included, by result.",
			Buckets: []float64{.025, .05, .1, .2, .4, .8, 1.5, 3, 6, 15, 30, 60, 120, 300, 600},
		}, []string{"result"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "egressd_serve_queue_wait_seconds",
			Help:    "How long executions waited for a slot (0 when one was free).",
			Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	for _, r := range allResults {
		m.executions.WithLabelValues(r)
	}
	m.reg.MustRegister(m.executions, m.duration, m.queueWait,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "egressd_serve_in_flight",
			Help: "Executions running now.",
		}, func() float64 { return float64(s.inFlight.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "egressd_serve_queued",
			Help: "Executions waiting for a slot.",
		}, func() float64 { return float64(s.queued.Load()) }),
		poolCollector{s.opts.Executor},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func (m *metrics) result(r string) { m.executions.WithLabelValues(r).Inc() }

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// poolCollector exports a warm executor's pool counts (nothing when cold).
type poolCollector struct{ e Executor }

var (
	poolSandboxesDesc = prometheus.NewDesc("egressd_serve_pool_sandboxes",
		"Pooled sandboxes by state: idle, busy, creating, resetting.", []string{"state"}, nil)
	poolCreatedDesc = prometheus.NewDesc("egressd_serve_pool_created_total",
		"Pooled sandboxes made.", nil, nil)
	poolDestroyedDesc = prometheus.NewDesc("egressd_serve_pool_destroyed_total",
		"Pooled sandboxes destroyed, by reason: failed (a reset or a check failed), retired (max uses or age), other (the pool was full or closed).", []string{"reason"}, nil)
	poolExecutionsDesc = prometheus.NewDesc("egressd_serve_pool_executions_total",
		"Executions the pool took, by sandbox: warm (a pooled one), cold (another shape: one of its own).", []string{"sandbox"}, nil)
)

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolSandboxesDesc, poolCreatedDesc, poolDestroyedDesc, poolExecutionsDesc} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.e.Stats().Pool
	if st == nil {
		return
	}
	gauge, counter := prometheus.GaugeValue, prometheus.CounterValue
	ch <- prometheus.MustNewConstMetric(poolSandboxesDesc, gauge, float64(st.Idle), "idle")
	ch <- prometheus.MustNewConstMetric(poolSandboxesDesc, gauge, float64(st.Busy), "busy")
	ch <- prometheus.MustNewConstMetric(poolSandboxesDesc, gauge, float64(st.Creating), "creating")
	ch <- prometheus.MustNewConstMetric(poolSandboxesDesc, gauge, float64(st.Resetting), "resetting")
	ch <- prometheus.MustNewConstMetric(poolCreatedDesc, counter, float64(st.Created))
	other := st.Destroyed - min(st.Destroyed, st.Failed+st.Retired)
	ch <- prometheus.MustNewConstMetric(poolDestroyedDesc, counter, float64(st.Failed), "failed")
	ch <- prometheus.MustNewConstMetric(poolDestroyedDesc, counter, float64(st.Retired), "retired")
	ch <- prometheus.MustNewConstMetric(poolDestroyedDesc, counter, float64(other), "other")
	ch <- prometheus.MustNewConstMetric(poolExecutionsDesc, counter, float64(st.Warm), "warm")
	ch <- prometheus.MustNewConstMetric(poolExecutionsDesc, counter, float64(st.Cold), "cold")
}
