// Package metrics is egressd's Prometheus instrumentation: counters,
// gauges and histograms updated with atomics on the hot path, labelled
// families with a bounded number of series, values computed at scrape
// time, the Go runtime's and the process's standard go_* and process_*
// families, and a Registry that writes them all in the Prometheus text
// exposition format 0.0.4 (GET /metrics).
//
// It replaces the Prometheus client library, whose protobuf data model,
// procfs reader and their package initialisation cost egressd's idle
// process more resident memory than all of its own metrics (bench/README.md,
// issue 13). Only the text format is served: every Prometheus server and
// agent reads it.
//
//	Counter, Gauge, Histogram          one series (or one of a Vec's)
//	CounterVec, HistogramVec           series by label values, created on first use
//	NewFunc, NewGaugeFunc, ...         values read at scrape time
//	NewRuntimeCollector                go_* and process_*
//	        │ Register
//	        ▼
//	Registry ──WriteText / ServeHTTP──► text format 0.0.4, families sorted by name
package metrics

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Type is a metric family's type, as its # TYPE line says it.
type Type string

// The types egressd exposes.
const (
	TypeCounter   Type = "counter"
	TypeGauge     Type = "gauge"
	TypeHistogram Type = "histogram"
	TypeSummary   Type = "summary"
)

// Collector is what a Registry writes: one or more metric families.
// Counter, Gauge, Histogram, the Vecs, NewFunc's and NewRuntimeCollector's
// results are Collectors.
type Collector interface {
	// descs returns the families the collector writes (fixed).
	descs() []*desc
	// collect writes the collector's families to w.
	collect(w *writer)
}

// desc is a family's name, help text, type and label names.
type desc struct {
	name, help string
	typ        Type
	labels     []string // as declared: the order of label values in WithLabelValues
	order      []int    // indexes into labels, sorted by label name: the order they are written in
}

func newDesc(name, help string, typ Type, labels []string) *desc {
	if !validName(name, true) {
		panic(fmt.Sprintf("metrics: %q is not a metric name", name))
	}
	if len(labels) > maxLabels {
		panic(fmt.Sprintf("metrics: %s has %d labels, at most %d", name, len(labels), maxLabels))
	}
	for i, l := range labels {
		if !validName(l, false) || l == "le" || l == "quantile" || slices.Contains(labels[:i], l) {
			panic(fmt.Sprintf("metrics: %s: %q is not a label name, or a repeated or reserved one", name, l))
		}
	}
	d := &desc{name: name, help: help, typ: typ, labels: slices.Clone(labels)}
	d.order = make([]int, len(labels))
	for i := range d.order {
		d.order[i] = i
	}
	slices.SortFunc(d.order, func(a, b int) int { return strings.Compare(labels[a], labels[b]) })
	return d
}

// compare orders two series' label values (in declared order) as they are
// written: by label name, then value.
func (d *desc) compare(a, b []string) int {
	for _, i := range d.order {
		if c := strings.Compare(a[i], b[i]); c != 0 {
			return c
		}
	}
	return 0
}

func (d *desc) descs() []*desc {
	if d == nil { // a series of a Vec: registered through its Vec
		return nil
	}
	return []*desc{d}
}

// validName reports whether s is a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)
// or, without colons, a label name.
func validName(s string, colon bool) bool {
	if s == "" {
		return false
	}
	for i, c := range []byte(s) {
		ok := c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || (colon && c == ':') || (i > 0 && c >= '0' && c <= '9')
		if !ok {
			return false
		}
	}
	return true
}

// addFloat adds v to the float64 whose bits are in u.
func addFloat(u *atomic.Uint64, v float64) {
	for {
		old := u.Load()
		if u.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// Counter is a value that only goes up. Its methods are safe for
// concurrent use and do not allocate.
type Counter struct {
	d    *desc
	n    atomic.Uint64 // whole increments
	frac atomic.Uint64 // float64 bits: the sum of increments that were not whole numbers
}

// NewCounter returns a counter family of one series.
func NewCounter(name, help string) *Counter {
	return &Counter{d: newDesc(name, help, TypeCounter, nil)}
}

// Inc adds 1.
func (c *Counter) Inc() { c.n.Add(1) }

// Add adds v. A counter never goes down: v <= 0 (or NaN) is ignored.
func (c *Counter) Add(v float64) {
	if !(v > 0) {
		return
	}
	if u := uint64(v); float64(u) == v {
		c.n.Add(u)
		return
	}
	addFloat(&c.frac, v)
}

// Value returns the counter's value.
func (c *Counter) Value() float64 {
	return float64(c.n.Load()) + math.Float64frombits(c.frac.Load())
}

func (c *Counter) descs() []*desc { return c.d.descs() }

func (c *Counter) collect(w *writer) {
	w.family(c.d)
	w.sample(c.d, "", nil, "", "", c.Value())
}

// Gauge is a value that goes up and down. Its methods are safe for
// concurrent use and do not allocate.
type Gauge struct {
	d    *desc
	bits atomic.Uint64 // float64 bits
}

// NewGauge returns a gauge family of one series.
func NewGauge(name, help string) *Gauge {
	return &Gauge{d: newDesc(name, help, TypeGauge, nil)}
}

// Set sets the gauge to v.
func (g *Gauge) Set(v float64) { g.bits.Store(math.Float64bits(v)) }

// Add adds v (which may be negative).
func (g *Gauge) Add(v float64) { addFloat(&g.bits, v) }

// Inc adds 1.
func (g *Gauge) Inc() { g.Add(1) }

// Dec subtracts 1.
func (g *Gauge) Dec() { g.Add(-1) }

// SetToCurrentTime sets the gauge to the Unix time now, in seconds.
func (g *Gauge) SetToCurrentTime() { g.Set(float64(time.Now().UnixNano()) / 1e9) }

// Value returns the gauge's value.
func (g *Gauge) Value() float64 { return math.Float64frombits(g.bits.Load()) }

func (g *Gauge) descs() []*desc { return g.d.descs() }

func (g *Gauge) collect(w *writer) {
	w.family(g.d)
	w.sample(g.d, "", nil, "", "", g.Value())
}

// Histogram counts observations in buckets of fixed upper bounds. Observe
// is safe for concurrent use and does not allocate. A scrape reads the
// buckets one by one while observations go on: each bucket and the count
// are exact at the moment read (the count is the sum of the buckets), the
// sum may include an observation the buckets do not yet show.
type Histogram struct {
	d      *desc
	upper  []float64       // sorted upper bounds, +Inf not included; shared by a Vec's series
	counts []atomic.Uint64 // per bucket, not cumulative; the last is (upper[len-1], +Inf]
	sum    atomic.Uint64   // float64 bits
}

// NewHistogram returns a histogram family of one series with the given
// bucket upper bounds (sorted, finite; +Inf is implied).
func NewHistogram(name, help string, buckets []float64) *Histogram {
	return newHistogram(newDesc(name, help, TypeHistogram, nil), checkBuckets(name, buckets))
}

func checkBuckets(name string, b []float64) []float64 {
	for i, v := range b {
		if math.IsNaN(v) || math.IsInf(v, 0) || (i > 0 && v <= b[i-1]) {
			panic(fmt.Sprintf("metrics: %s: buckets must be finite and increasing, got %v", name, b))
		}
	}
	return slices.Clone(b)
}

func newHistogram(d *desc, upper []float64) *Histogram {
	return &Histogram{d: d, upper: upper, counts: make([]atomic.Uint64, len(upper)+1)}
}

// Observe records v: in the first bucket whose upper bound is >= v.
func (h *Histogram) Observe(v float64) {
	i := len(h.upper)
	if v == v { // NaN: only +Inf holds it
		i, _ = slices.BinarySearch(h.upper, v)
	}
	h.counts[i].Add(1)
	addFloat(&h.sum, v)
}

// Count returns the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}

func (h *Histogram) descs() []*desc { return h.d.descs() }

func (h *Histogram) collect(w *writer) {
	w.family(h.d)
	h.write(w, h.d, nil)
}

// write writes the series' _bucket, _sum and _count samples, labelled with
// values (in d's declared order).
func (h *Histogram) write(w *writer, d *desc, values []string) {
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i].Load()
		le := "+Inf"
		if i < len(h.upper) {
			le = formatFloat(h.upper[i])
		}
		w.sample(d, "_bucket", values, "le", le, float64(cum))
	}
	w.sample(d, "_sum", values, "", "", math.Float64frombits(h.sum.Load()))
	w.sample(d, "_count", values, "", "", float64(cum))
}

const (
	// maxLabels is the most labels a family may have (egressd's have
	// three at most); the label values of a series are then an array,
	// usable as a map key without allocating.
	maxLabels = 3
	// MaxSeries bounds the series of one labelled family. Past it, new
	// label sets are counted in one series whose every label value is
	// OverflowValue: a family fed by values that keep changing (a
	// policy's host patterns over many reloads) cannot grow without end.
	MaxSeries = 2000
	// OverflowValue labels the series that holds what came past MaxSeries.
	OverflowValue = "_overflow"
)

type labelKey [maxLabels]string

// vec is the series of a labelled family by their label values.
type vec[T any] struct {
	d    *desc
	mk   func() *T
	mu   sync.RWMutex
	kids map[labelKey]*T
}

func newVec[T any](d *desc, mk func() *T) *vec[T] {
	return &vec[T]{d: d, mk: mk, kids: map[labelKey]*T{}}
}

// with returns the series of the label values (in declared order),
// creating it on first use. A wrong number of values is a bug in the
// caller: it panics, as indexing out of range would.
func (v *vec[T]) with(values []string) *T {
	if len(values) != len(v.d.labels) {
		panic(fmt.Sprintf("metrics: %s takes %d label values, got %d", v.d.name, len(v.d.labels), len(values)))
	}
	var k labelKey
	copy(k[:], values)
	v.mu.RLock()
	s, ok := v.kids[k]
	v.mu.RUnlock()
	if ok {
		return s
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if s, ok := v.kids[k]; ok {
		return s
	}
	if len(v.kids) >= MaxSeries {
		for i := range values {
			k[i] = OverflowValue
		}
		if s, ok := v.kids[k]; ok {
			return s
		}
	}
	s = v.mk()
	v.kids[k] = s
	return s
}

func (v *vec[T]) descs() []*desc { return v.d.descs() }

// each calls f for every series, sorted by label values in the order they
// are written.
func (v *vec[T]) each(f func(values []string, s *T)) {
	type kid struct {
		k labelKey
		s *T
	}
	v.mu.RLock()
	kids := make([]kid, 0, len(v.kids))
	for k, s := range v.kids {
		kids = append(kids, kid{k, s})
	}
	v.mu.RUnlock()
	n := len(v.d.labels)
	slices.SortFunc(kids, func(a, b kid) int { return v.d.compare(a.k[:n], b.k[:n]) })
	for _, kd := range kids {
		f(kd.k[:n], kd.s)
	}
}

// CounterVec is a counter family with labels.
type CounterVec struct{ v *vec[Counter] }

// NewCounterVec returns a counter family with the given label names.
func NewCounterVec(name, help string, labels ...string) *CounterVec {
	return &CounterVec{newVec(newDesc(name, help, TypeCounter, labels), func() *Counter { return &Counter{} })}
}

// WithLabelValues returns the series of the label values, given in the
// order of the family's label names. Keep the returned counter when the
// values are fixed: it saves the lookup.
func (c *CounterVec) WithLabelValues(values ...string) *Counter { return c.v.with(values) }

func (c *CounterVec) descs() []*desc { return c.v.descs() }

func (c *CounterVec) collect(w *writer) {
	w.family(c.v.d)
	c.v.each(func(values []string, s *Counter) { w.sample(c.v.d, "", values, "", "", s.Value()) })
}

// HistogramVec is a histogram family with labels.
type HistogramVec struct {
	v *vec[Histogram]
}

// NewHistogramVec returns a histogram family with the given buckets (as
// NewHistogram) and label names.
func NewHistogramVec(name, help string, buckets []float64, labels ...string) *HistogramVec {
	upper := checkBuckets(name, buckets)
	return &HistogramVec{newVec(newDesc(name, help, TypeHistogram, labels), func() *Histogram { return newHistogram(nil, upper) })}
}

// WithLabelValues returns the series of the label values (see
// CounterVec.WithLabelValues).
func (h *HistogramVec) WithLabelValues(values ...string) *Histogram { return h.v.with(values) }

func (h *HistogramVec) descs() []*desc { return h.v.descs() }

func (h *HistogramVec) collect(w *writer) {
	w.family(h.v.d)
	h.v.each(func(values []string, s *Histogram) { s.write(w, h.v.d, values) })
}

// funcCollector is a family whose samples a function gives at each scrape.
type funcCollector struct {
	d *desc
	f func(emit func(v float64, labelValues ...string))
}

// NewFunc returns a counter or gauge family whose series f gives at each
// scrape, by calling emit once per series with its value and label values
// (in the order of labels). f must be safe to call from any goroutine.
func NewFunc(name, help string, typ Type, labels []string, f func(emit func(v float64, labelValues ...string))) Collector {
	if typ != TypeCounter && typ != TypeGauge {
		panic(fmt.Sprintf("metrics: %s: NewFunc makes counters and gauges, not %s", name, typ))
	}
	return &funcCollector{d: newDesc(name, help, typ, labels), f: f}
}

// NewGaugeFunc returns a gauge of one series whose value f gives at each
// scrape.
func NewGaugeFunc(name, help string, f func() float64) Collector {
	return NewFunc(name, help, TypeGauge, nil, func(emit func(float64, ...string)) { emit(f()) })
}

// NewCounterFunc returns a counter of one series whose value f gives at
// each scrape (f must never go down).
func NewCounterFunc(name, help string, f func() float64) Collector {
	return NewFunc(name, help, TypeCounter, nil, func(emit func(float64, ...string)) { emit(f()) })
}

func (c *funcCollector) descs() []*desc { return c.d.descs() }

func (c *funcCollector) collect(w *writer) {
	w.family(c.d)
	type series struct {
		values []string
		v      float64
	}
	var all []series
	c.f(func(v float64, values ...string) {
		if len(values) != len(c.d.labels) {
			panic(fmt.Sprintf("metrics: %s takes %d label values, got %d", c.d.name, len(c.d.labels), len(values)))
		}
		all = append(all, series{slices.Clone(values), v})
	})
	slices.SortStableFunc(all, func(a, b series) int { return c.d.compare(a.values, b.values) })
	for _, s := range all {
		w.sample(c.d, "", s.values, "", "", s.v)
	}
}
