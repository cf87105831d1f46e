package dnsfilter

import (
	"fmt"
	"slices"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/metrics"
)

// dnsMetrics are the resolver's Prometheus metrics:
//
//	egressd_dns_queries_total{result,reason}       client queries by outcome and reason (audit.Reasons)
//	egressd_dns_cache_hits_total                   answers served from the cache
//	egressd_dns_cache_misses_total                 lookups that had to ask upstream
//	egressd_dns_cache_entries                      answers cached now
//	egressd_dns_upstream_duration_seconds{result}  one upstream exchange (ok | error)
//	egressd_dns_upstream_errors_total              exchanges that failed (timeout, network, bad reply)
//	egressd_dns_guard_stripped_records_total       A/AAAA records removed by the address guard
//	egressd_dns_learned_addresses                  addresses in the learned-address table now
type dnsMetrics struct {
	queries        map[audit.Reason]*metrics.Counter
	queriesVec     *metrics.CounterVec
	cacheHits      *metrics.Counter
	cacheMisses    *metrics.Counter
	upstreamOK     *metrics.Histogram
	upstreamErr    *metrics.Histogram
	upstreamDur    *metrics.HistogramVec
	upstreamErrors *metrics.Counter
	stripped       *metrics.Counter
	// cacheLen and learnedLen are the gauges egressd_dns_cache_entries and
	// egressd_dns_learned_addresses, read at scrape time.
	cacheLen, learnedLen func() int
	registerTargets      []metrics.Collector
}

func newMetrics(cacheLen, learnedLen func() int) *dnsMetrics {
	m := &dnsMetrics{
		queries: map[audit.Reason]*metrics.Counter{},
		queriesVec: metrics.NewCounterVec("egressd_dns_queries_total",
			"Client DNS queries by result (allow, deny, error) and reason (docs/audit.md).", "result", "reason"),
		cacheHits:   metrics.NewCounter("egressd_dns_cache_hits_total", "Lookups answered from the DNS cache."),
		cacheMisses: metrics.NewCounter("egressd_dns_cache_misses_total", "Lookups not in the DNS cache (forwarded upstream)."),
		upstreamDur: metrics.NewHistogramVec("egressd_dns_upstream_duration_seconds",
			"Duration of one exchange with an upstream resolver, by result (ok, error).",
			[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}, "result"),
		upstreamErrors: metrics.NewCounter("egressd_dns_upstream_errors_total",
			"Upstream exchanges that failed (timeout, network error, mismatched or malformed reply)."),
		stripped: metrics.NewCounter("egressd_dns_guard_stripped_records_total",
			"A/AAAA records removed from answers by the address guard."),
		cacheLen:   cacheLen,
		learnedLen: learnedLen,
	}
	cacheEntries := metrics.NewGaugeFunc("egressd_dns_cache_entries", "Answers in the DNS cache.",
		func() float64 { return float64(cacheLen()) })
	learnedEntries := metrics.NewGaugeFunc("egressd_dns_learned_addresses", "Addresses in the DNS learned-address table.",
		func() float64 { return float64(learnedLen()) })
	for _, ri := range audit.Reasons {
		if slices.Contains(ri.Kinds, audit.KindDNS) {
			m.queries[ri.Reason] = m.queriesVec.WithLabelValues(string(ri.Outcome), string(ri.Reason))
		}
	}
	m.upstreamOK = m.upstreamDur.WithLabelValues("ok")
	m.upstreamErr = m.upstreamDur.WithLabelValues("error")
	m.registerTargets = []metrics.Collector{
		m.queriesVec, m.cacheHits, m.cacheMisses, m.upstreamDur, m.upstreamErrors,
		m.stripped, cacheEntries, learnedEntries,
	}
	return m
}

// query counts one client query with its outcome (the reason's, or
// would-deny in report mode) and reason.
func (m *dnsMetrics) query(o audit.Outcome, r audit.Reason) {
	c, ok := m.queries[r]
	if !ok || o != r.Outcome() { // a would-deny, or a reason the table does not give the resolver: still counted
		c = m.queriesVec.WithLabelValues(string(o), string(r))
	}
	c.Inc()
}

func (m *dnsMetrics) register(r *metrics.Registry) error {
	if r == nil {
		return nil
	}
	if err := r.Register(m.registerTargets...); err != nil {
		return fmt.Errorf("registering DNS metrics: %w", err)
	}
	return nil
}
