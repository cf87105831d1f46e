package proxy

import (
	"fmt"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/metrics"
)

// proxyMetrics are the proxy's Prometheus metrics. They always exist (so the
// hot path has no nil checks); New registers them only when
// Config.Metrics is set.
//
//	egressd_proxy_decisions_total{kind,result,reason}  final outcome per connection or request (audit.Outcome, audit.Reason)
//	egressd_proxy_open_tunnels                         client connections being served
//	egressd_proxy_bytes_total{direction="up"|"down"}   bytes relayed (counted when a connection or request ends)
//	egressd_proxy_dial_duration_seconds{result}        upstream TCP connect latency
//	egressd_proxy_limit_refusals_total{limit}          work refused at --max-tunnels / --max-tunnels-per-dest
//	egressd_proxy_max_tunnels                          the cap in force (MaxTunnels after the fd limit; -1: none)
//	egressd_proxy_relay_copied_chunks_total            chunks relayed through a buffer, every splice pipe in use (registered by New)
type proxyMetrics struct {
	maxTunnels *metrics.Gauge
	decisions  *metrics.CounterVec
	open       *metrics.Gauge
	bytes      *metrics.CounterVec
	bytesUp    *metrics.Counter
	bytesDown  *metrics.Counter
	dial       *metrics.HistogramVec
	dialOK     *metrics.Histogram
	dialErr    *metrics.Histogram
	refusals   *metrics.CounterVec
	refTunnels *metrics.Counter
	refDest    *metrics.Counter
}

func newMetrics(reg *metrics.Registry) (*proxyMetrics, error) {
	m := &proxyMetrics{
		decisions: metrics.NewCounterVec("egressd_proxy_decisions_total",
			"Proxy outcomes, one per connection (connect, tls, tcp) or request (http), by kind, result (allow, deny, error) and reason.",
			"kind", "result", "reason"),
		open: metrics.NewGauge("egressd_proxy_open_tunnels",
			"Client connections the proxy is serving (CONNECT tunnels, transparent connections, HTTP client connections)."),
		maxTunnels: metrics.NewGauge("egressd_proxy_max_tunnels",
			"The cap on client connections in force: --max-tunnels, lowered to what the file-descriptor limit leaves room for; -1 means no cap."),
		bytes: metrics.NewCounterVec("egressd_proxy_bytes_total",
			"Payload bytes relayed, up (client to upstream) and down, counted when a connection or request ends.", "direction"),
		dial: metrics.NewHistogramVec("egressd_proxy_dial_duration_seconds",
			"Time to connect to a vetted upstream address, by result (ok, error).",
			[]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}, "result"),
		refusals: metrics.NewCounterVec("egressd_proxy_limit_refusals_total",
			"Connections or requests refused because a limit was reached, by limit (max-tunnels, max-tunnels-per-dest).", "limit"),
	}
	m.bytesUp = m.bytes.WithLabelValues("up")
	m.bytesDown = m.bytes.WithLabelValues("down")
	m.dialOK = m.dial.WithLabelValues("ok")
	m.dialErr = m.dial.WithLabelValues("error")
	m.refTunnels = m.refusals.WithLabelValues(string(audit.ReasonMaxTunnels))
	m.refDest = m.refusals.WithLabelValues(string(audit.ReasonMaxTunnelsPerDest))
	if reg == nil {
		return m, nil
	}
	if err := reg.Register(m.decisions, m.open, m.maxTunnels, m.bytes, m.dial, m.refusals); err != nil {
		return nil, fmt.Errorf("registering proxy metrics: %w (one Proxy per registry)", err)
	}
	return m, nil
}

func (m *proxyMetrics) decision(kind string, result audit.Outcome, reason audit.Reason) {
	m.decisions.WithLabelValues(kind, string(result), string(reason)).Inc()
}

func (m *proxyMetrics) dialed(d time.Duration, err error) {
	if err != nil {
		m.dialErr.Observe(d.Seconds())
		return
	}
	m.dialOK.Observe(d.Seconds())
}

func (m *proxyMetrics) relayed(up, down int64) {
	if up > 0 {
		m.bytesUp.Add(float64(up))
	}
	if down > 0 {
		m.bytesDown.Add(float64(down))
	}
}
