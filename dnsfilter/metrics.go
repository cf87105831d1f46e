package dnsfilter

import (
	"fmt"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressd/egressd/audit"
)

// metrics are the resolver's Prometheus metrics:
//
//	egressd_dns_queries_total{result,reason}       client queries by outcome and reason (audit.Reasons)
//	egressd_dns_cache_hits_total                   answers served from the cache
//	egressd_dns_cache_misses_total                 lookups that had to ask upstream
//	egressd_dns_cache_entries                      answers cached now
//	egressd_dns_upstream_duration_seconds{result}  one upstream exchange (ok | error)
//	egressd_dns_upstream_errors_total              exchanges that failed (timeout, network, bad reply)
//	egressd_dns_guard_stripped_records_total       A/AAAA records removed by the address guard
//	egressd_dns_learned_addresses                  addresses in the learned-address table now
type metrics struct {
	queries         map[audit.Reason]prometheus.Counter
	queriesVec      *prometheus.CounterVec
	cacheHits       prometheus.Counter
	cacheMisses     prometheus.Counter
	upstreamOK      prometheus.Observer
	upstreamErr     prometheus.Observer
	upstreamDur     *prometheus.HistogramVec
	upstreamErrors  prometheus.Counter
	stripped        prometheus.Counter
	cacheEntries    prometheus.GaugeFunc
	learnedEntries  prometheus.GaugeFunc
	registerTargets []prometheus.Collector
}

func newMetrics(cacheLen, learnedLen func() int) *metrics {
	m := &metrics{
		queries: map[audit.Reason]prometheus.Counter{},
		queriesVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_dns_queries_total",
			Help: "Client DNS queries by result (allow, deny, error) and reason (docs/audit.md).",
		}, []string{"result", "reason"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "egressd_dns_cache_hits_total",
			Help: "Lookups answered from the DNS cache.",
		}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "egressd_dns_cache_misses_total",
			Help: "Lookups not in the DNS cache (forwarded upstream).",
		}),
		upstreamDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "egressd_dns_upstream_duration_seconds",
			Help:    "Duration of one exchange with an upstream resolver, by result (ok, error).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"result"}),
		upstreamErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "egressd_dns_upstream_errors_total",
			Help: "Upstream exchanges that failed (timeout, network error, mismatched or malformed reply).",
		}),
		stripped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "egressd_dns_guard_stripped_records_total",
			Help: "A/AAAA records removed from answers by the address guard.",
		}),
	}
	m.cacheEntries = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "egressd_dns_cache_entries",
		Help: "Answers in the DNS cache.",
	}, func() float64 { return float64(cacheLen()) })
	m.learnedEntries = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "egressd_dns_learned_addresses",
		Help: "Addresses in the DNS learned-address table.",
	}, func() float64 { return float64(learnedLen()) })
	for _, ri := range audit.Reasons {
		if slices.Contains(ri.Kinds, audit.KindDNS) {
			m.queries[ri.Reason] = m.queriesVec.WithLabelValues(string(ri.Outcome), string(ri.Reason))
		}
	}
	m.upstreamOK = m.upstreamDur.WithLabelValues("ok")
	m.upstreamErr = m.upstreamDur.WithLabelValues("error")
	m.registerTargets = []prometheus.Collector{
		m.queriesVec, m.cacheHits, m.cacheMisses, m.upstreamDur, m.upstreamErrors,
		m.stripped, m.cacheEntries, m.learnedEntries,
	}
	return m
}

// query counts one client query with its outcome (the reason's, or
// would-deny in report mode) and reason.
func (m *metrics) query(o audit.Outcome, r audit.Reason) {
	c, ok := m.queries[r]
	if !ok || o != r.Outcome() { // a would-deny, or a reason the table does not give the resolver: still counted
		c = m.queriesVec.WithLabelValues(string(o), string(r))
	}
	c.Inc()
}

func (m *metrics) register(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	for i, c := range m.registerTargets {
		if err := r.Register(c); err != nil {
			for _, done := range m.registerTargets[:i] {
				r.Unregister(done)
			}
			return fmt.Errorf("registering DNS metrics: %w", err)
		}
	}
	return nil
}
