// Package metricstest reads a metrics.Registry's exposition back with the
// Prometheus project's own text parser, for tests: what a test reads is
// what a Prometheus server would, and an exposition the parser rejects
// fails the test. For tests only: egressd's binaries never import it.
package metricstest

import (
	"bytes"
	"maps"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/egressd/egressd/internal/metrics"
)

// Parse returns r's families by name.
func Parse(t testing.TB, r *metrics.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, b.String())
	}
	return fams
}

// Labels returns a series' labels by name.
func Labels(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, lp := range m.GetLabel() {
		l[lp.GetName()] = lp.GetValue()
	}
	return l
}

// Value returns the value of the counter or gauge series of family name
// whose labels are exactly labels (nil: none), and whether r has it.
func Value(t testing.TB, r *metrics.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	f, ok := Parse(t, r)[name]
	if !ok {
		return 0, false
	}
	if labels == nil {
		labels = map[string]string{}
	}
	for _, m := range f.GetMetric() {
		if !maps.Equal(Labels(m), labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		}
		t.Fatalf("%s%v is neither a counter nor a gauge", name, labels)
	}
	return 0, false
}
