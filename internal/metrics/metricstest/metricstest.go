// Package metricstest reads a metrics.Registry's exposition back with the
// Prometheus project's own text parser, for tests: what a test reads is
// what a Prometheus server would, and an exposition the parser rejects
// fails the test. For tests only: egressd's binaries never import it.
package metricstest

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
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

// MatchesDocs fails the test unless the families of r whose names start
// with prefix are exactly those the Markdown tables of page list (rows
// whose first cell is a `name` with that prefix and whose second is its
// type), each with its type.
func MatchesDocs(t testing.TB, r *metrics.Registry, page, prefix string) {
	t.Helper()
	got := map[string]string{}
	for name, typ := range r.Families() {
		if strings.HasPrefix(name, prefix) {
			got[name] = string(typ)
		}
	}
	text, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]string{}
	for line := range strings.Lines(string(text)) {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`"+prefix) {
			continue
		}
		documented[strings.Trim(strings.TrimSpace(cells[1]), "`")] = strings.TrimSpace(cells[2])
	}
	if diff := cmp.Diff(documented, got); diff != "" {
		t.Errorf("%s* families, %s (-) vs registered (+):\n%s", prefix, page, diff)
	}
}

// Series returns every series of r, parsed back, by a key of its type,
// name and labels ("COUNTER t_total map[kind:connect]"): a counter's or
// gauge's value, or a histogram's "count=N sum=S buckets=[le:n ...]".
func Series(t testing.TB, r *metrics.Registry) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name, f := range Parse(t, r) {
		for _, m := range f.GetMetric() {
			key := fmt.Sprintf("%s %s %v", f.GetType(), name, Labels(m))
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = fmt.Sprint(m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				out[key] = fmt.Sprint(m.GetGauge().GetValue())
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				var bs []string
				for _, b := range h.GetBucket() {
					bs = append(bs, fmt.Sprintf("%v:%d", b.GetUpperBound(), b.GetCumulativeCount()))
				}
				out[key] = fmt.Sprintf("count=%d sum=%v buckets=%v", h.GetSampleCount(), h.GetSampleSum(), bs)
			default:
				out[key] = m.String()
			}
		}
	}
	return out
}
