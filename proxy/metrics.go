package proxy

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressd/egressd/audit"
)

// metrics are the proxy's Prometheus collectors. They always exist (so the
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
type metrics struct {
	maxTunnels prometheus.Gauge
	decisions  *prometheus.CounterVec
	open       prometheus.Gauge
	bytes      *prometheus.CounterVec
	bytesUp    prometheus.Counter
	bytesDown  prometheus.Counter
	dial       *prometheus.HistogramVec
	dialOK     prometheus.Observer
	dialErr    prometheus.Observer
	refusals   *prometheus.CounterVec
	refTunnels prometheus.Counter
	refDest    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_proxy_decisions_total",
			Help: "Proxy outcomes, one per connection (connect, tls, tcp) or request (http), by kind, result (allow, deny, error) and reason.",
		}, []string{"kind", "result", "reason"}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "egressd_proxy_open_tunnels",
			Help: "Client connections the proxy is serving (CONNECT tunnels, transparent connections, HTTP client connections).",
		}),
		maxTunnels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "egressd_proxy_max_tunnels",
			Help: "The cap on client connections in force: --max-tunnels, lowered to what the file-descriptor limit leaves room for; -1 means no cap.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_proxy_bytes_total",
			Help: "Payload bytes relayed, up (client to upstream) and down, counted when a connection or request ends.",
		}, []string{"direction"}),
		dial: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "egressd_proxy_dial_duration_seconds",
			Help:    "Time to connect to a vetted upstream address, by result (ok, error).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "egressd_proxy_limit_refusals_total",
			Help: "Connections or requests refused because a limit was reached, by limit (max-tunnels, max-tunnels-per-dest).",
		}, []string{"limit"}),
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
	for _, c := range []prometheus.Collector{m.decisions, m.open, m.maxTunnels, m.bytes, m.dial, m.refusals} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("registering proxy metrics: %w (one Proxy per registry)", err)
			}
			return nil, fmt.Errorf("registering proxy metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) decision(kind string, result audit.Outcome, reason audit.Reason) {
	m.decisions.WithLabelValues(kind, string(result), string(reason)).Inc()
}

func (m *metrics) dialed(d time.Duration, err error) {
	if err != nil {
		m.dialErr.Observe(d.Seconds())
		return
	}
	m.dialOK.Observe(d.Seconds())
}

func (m *metrics) relayed(up, down int64) {
	if up > 0 {
		m.bytesUp.Add(float64(up))
	}
	if down > 0 {
		m.bytesDown.Add(float64(down))
	}
}
