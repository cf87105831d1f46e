package metrics_test

import (
	"bytes"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"

	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/metrics/metricstest"
)

var (
	parse    = metricstest.Parse
	labelsOf = metricstest.Labels
)

func TestExpositionParsesWithEveryType(t *testing.T) {
	r := metrics.NewRegistry()
	c := metrics.NewCounter("t_things_total", "Things.")
	g := metrics.NewGauge("t_level", "A level.")
	h := metrics.NewHistogram("t_duration_seconds", "Durations.", []float64{0.1, 1})
	cv := metrics.NewCounterVec("t_decisions_total", "Decisions.", "result", "kind")
	hv := metrics.NewHistogramVec("t_dial_seconds", "Dials.", []float64{0.5}, "result")
	empty := metrics.NewCounterVec("t_unused_total", "Never used.", "x")
	r.MustRegister(c, g, h, cv, hv, empty,
		metrics.NewGaugeFunc("t_func", "From a function.", func() float64 { return 7 }),
		metrics.NewFunc("t_pool", "Pool.", metrics.TypeGauge, []string{"state"}, func(emit func(float64, ...string)) {
			emit(2, "idle")
			emit(1, "busy")
		}))
	c.Inc()
	c.Add(2)
	c.Add(0.5)
	c.Add(-4) // ignored: a counter never goes down
	g.Set(3)
	g.Dec()
	for _, v := range []float64{0.05, 0.1, 0.7, 3} {
		h.Observe(v)
	}
	cv.WithLabelValues("allow", "connect").Inc()
	cv.WithLabelValues("deny", "http").Add(3)
	hv.WithLabelValues("ok").Observe(0.2)

	fams := parse(t, r)
	if _, ok := fams["t_unused_total"]; ok {
		t.Error("a labelled family with no series was written")
	}
	got := metricstest.Series(t, r)
	want := map[string]string{
		"COUNTER t_things_total map[]":                             "3.5",
		"GAUGE t_level map[]":                                      "2",
		"HISTOGRAM t_duration_seconds map[]":                       "count=4 sum=3.85 buckets=[0.1:2 1:3 +Inf:4]",
		"COUNTER t_decisions_total map[kind:connect result:allow]": "1",
		"COUNTER t_decisions_total map[kind:http result:deny]":     "3",
		"HISTOGRAM t_dial_seconds map[result:ok]":                  "count=1 sum=0.2 buckets=[0.5:1 +Inf:1]",
		"GAUGE t_func map[]":                                       "7",
		"GAUGE t_pool map[state:busy]":                             "1",
		"GAUGE t_pool map[state:idle]":                             "2",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("parsed exposition (-want +got):\n%s", d)
	}
}

func TestExpositionIsSortedAndLabelsByName(t *testing.T) {
	r := metrics.NewRegistry()
	cv := metrics.NewCounterVec("b_total", "B.", "result", "kind")
	r.MustRegister(cv, metrics.NewGauge("a", "A."))
	cv.WithLabelValues("deny", "http").Inc()
	cv.WithLabelValues("allow", "tls").Inc()
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `# HELP a A.
# TYPE a gauge
a 0
# HELP b_total B.
# TYPE b_total counter
b_total{kind="http",result="deny"} 1
b_total{kind="tls",result="allow"} 1
`
	if d := cmp.Diff(want, b.String()); d != "" {
		t.Errorf("exposition (-want +got):\n%s", d)
	}
}

// A label value egressd did not choose (a policy's host pattern, a name a
// sandbox asked for) must come out as the same value, not as text that
// ends the label, adds a sample or breaks the parse.
func TestHostileLabelValuesCannotForgeSamples(t *testing.T) {
	hostile := []string{
		`evil"} 1e9` + "\n" + `egressd_forged_total 1`,
		`back\slash\`,
		"new\nline",
		`quote"`,
		"\xff\xfe not utf-8 \xc3",
		"",
		"{le=\"+Inf\"}",
		"# TYPE x counter",
	}
	r := metrics.NewRegistry()
	cv := metrics.NewCounterVec("t_requests_total", "Help with \\ and\nnewline.", "host")
	hv := metrics.NewHistogramVec("t_seconds", "H.", []float64{1}, "host")
	r.MustRegister(cv, hv)
	for _, h := range hostile {
		cv.WithLabelValues(h).Inc()
		hv.WithLabelValues(h).Observe(0.5)
	}
	fams := parse(t, r)
	if len(fams) != 2 {
		t.Errorf("families %v, want t_requests_total and t_seconds only", keys(fams))
	}
	if got := fams["t_requests_total"].GetHelp(); got != "Help with \\ and\nnewline." {
		t.Errorf("help = %q", got)
	}
	for _, name := range []string{"t_requests_total", "t_seconds"} {
		got := map[string]bool{}
		for _, m := range fams[name].GetMetric() {
			got[labelsOf(m)["host"]] = true
		}
		for _, h := range hostile {
			want := string([]rune(h)) // each byte that is not UTF-8 becomes U+FFFD
			if !got[want] {
				t.Errorf("%s: no series with host %q (got %v)", name, want, keys(got))
			}
		}
		if len(got) != len(hostile) {
			t.Errorf("%s: %d series, want %d", name, len(got), len(hostile))
		}
	}
}

func keys[V any](m map[string]V) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

func TestSeriesPastTheBoundAreFolded(t *testing.T) {
	cv := metrics.NewCounterVec("t_total", "T.", "host")
	for i := range metrics.MaxSeries + 50 {
		cv.WithLabelValues(fmt.Sprint("h", i)).Inc()
	}
	r := metrics.NewRegistry()
	r.MustRegister(cv)
	fams := parse(t, r)
	ms := fams["t_total"].GetMetric()
	if len(ms) != metrics.MaxSeries+1 {
		t.Fatalf("%d series, want %d and the overflow series", len(ms), metrics.MaxSeries)
	}
	var over float64
	for _, m := range ms {
		if labelsOf(m)["host"] == metrics.OverflowValue {
			over = m.GetCounter().GetValue()
		}
	}
	if over != 50 {
		t.Errorf("overflow series = %v, want 50", over)
	}
	// A label set that had a series keeps it.
	cv.WithLabelValues("h0").Inc()
	if v := cv.WithLabelValues("h0").Value(); v != 2 {
		t.Errorf("h0 = %v, want 2", v)
	}
}

func TestRegisterRefusesDuplicatesAllOrNothing(t *testing.T) {
	r := metrics.NewRegistry()
	r.MustRegister(metrics.NewCounter("a_total", "A."))
	err := r.Register(metrics.NewCounter("b_total", "B."), metrics.NewCounter("a_total", "A again."))
	if err == nil || !strings.Contains(err.Error(), "a_total is already registered") {
		t.Fatalf("Register = %v, want a_total already registered", err)
	}
	// b_total was not added: registering it now succeeds.
	if err := r.Register(metrics.NewCounter("b_total", "B.")); err != nil {
		t.Errorf("b_total after the refused batch: %v", err)
	}
	if err := r.Register(metrics.NewCounter("c_total", "C."), metrics.NewGauge("c_total", "C.")); err == nil {
		t.Error("the same name twice in one batch was accepted")
	}
	cv := metrics.NewCounterVec("d_total", "D.", "x")
	if err := r.Register(cv.WithLabelValues("1")); err == nil {
		t.Error("a series of a labelled family was registered on its own")
	}
}

func TestConcurrentUpdatesAndScrapesAddUp(t *testing.T) {
	r := metrics.NewRegistry()
	c := metrics.NewCounter("t_total", "T.")
	g := metrics.NewGauge("t_open", "T.")
	h := metrics.NewHistogram("t_seconds", "T.", []float64{0.5})
	cv := metrics.NewCounterVec("t_by_total", "T.", "k")
	r.MustRegister(c, g, h, cv)
	const workers, each = 8, 2000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	scraped := make(chan struct{})
	go func() { // scrape while they count
		defer close(scraped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			var b bytes.Buffer
			if err := r.WriteText(&b); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				c.Inc()
				c.Add(0.25)
				g.Inc()
				g.Dec()
				h.Observe(float64(i%2) * 0.75)
				cv.WithLabelValues(fmt.Sprint(w % 3)).Inc()
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-scraped
	if got, want := c.Value(), float64(workers*each)*1.25; got != want {
		t.Errorf("counter = %v, want %v", got, want)
	}
	if got := g.Value(); got != 0 {
		t.Errorf("gauge = %v, want 0", got)
	}
	if got := h.Count(); got != workers*each {
		t.Errorf("histogram count = %d, want %d", got, workers*each)
	}
	var sum float64
	for k := range 3 {
		sum += cv.WithLabelValues(fmt.Sprint(k)).Value()
	}
	if sum != workers*each {
		t.Errorf("labelled series sum to %v, want %d", sum, workers*each)
	}
}

func TestHistogramBucketsAreUpperInclusive(t *testing.T) {
	h := metrics.NewHistogram("t_seconds", "T.", []float64{1, 2})
	for _, v := range []float64{1, 2, 2.0000001, math.NaN(), math.Inf(1), -1} {
		h.Observe(v)
	}
	r := metrics.NewRegistry()
	r.MustRegister(h)
	var got []uint64
	for _, b := range parse(t, r)["t_seconds"].GetMetric()[0].GetHistogram().GetBucket() {
		got = append(got, b.GetCumulativeCount())
	}
	// le=1: 1 and -1; le=2: and 2; +Inf: and 2.0000001, NaN, +Inf.
	if d := cmp.Diff([]uint64{2, 3, 6}, got); d != "" {
		t.Errorf("cumulative buckets (-want +got):\n%s", d)
	}
}

func TestBadDefinitionsPanic(t *testing.T) {
	for name, f := range map[string]func(){
		"bad name":          func() { metrics.NewCounter("9lives", "x") },
		"bad label":         func() { metrics.NewCounterVec("a_total", "x", "a-b") },
		"reserved label":    func() { metrics.NewHistogramVec("a", "x", []float64{1}, "le") },
		"repeated label":    func() { metrics.NewCounterVec("a_total", "x", "k", "k") },
		"too many labels":   func() { metrics.NewCounterVec("a_total", "x", "a", "b", "c", "d") },
		"unsorted buckets":  func() { metrics.NewHistogram("a", "x", []float64{2, 1}) },
		"wrong value count": func() { metrics.NewCounterVec("a_total", "x", "k").WithLabelValues("1", "2") },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			f()
		})
	}
}

func TestRuntimeCollectorWritesTheStandardFamilies(t *testing.T) {
	r := metrics.NewRegistry()
	r.MustRegister(metrics.NewRuntimeCollector())
	fams := parse(t, r)
	for name, typ := range map[string]dto.MetricType{
		"go_goroutines":                        dto.MetricType_GAUGE,
		"go_threads":                           dto.MetricType_GAUGE,
		"go_info":                              dto.MetricType_GAUGE,
		"go_gc_duration_seconds":               dto.MetricType_SUMMARY,
		"go_gc_gogc_percent":                   dto.MetricType_GAUGE,
		"go_gc_gomemlimit_bytes":               dto.MetricType_GAUGE,
		"go_sched_gomaxprocs_threads":          dto.MetricType_GAUGE,
		"go_memstats_alloc_bytes_total":        dto.MetricType_COUNTER,
		"go_memstats_heap_inuse_bytes":         dto.MetricType_GAUGE,
		"process_cpu_seconds_total":            dto.MetricType_COUNTER,
		"process_open_fds":                     dto.MetricType_GAUGE,
		"process_max_fds":                      dto.MetricType_GAUGE,
		"process_resident_memory_bytes":        dto.MetricType_GAUGE,
		"process_virtual_memory_bytes":         dto.MetricType_GAUGE,
		"process_virtual_memory_max_bytes":     dto.MetricType_GAUGE,
		"process_start_time_seconds":           dto.MetricType_GAUGE,
		"process_network_receive_bytes_total":  dto.MetricType_COUNTER,
		"process_network_transmit_bytes_total": dto.MetricType_COUNTER,
	} {
		f, ok := fams[name]
		if !ok {
			t.Errorf("no %s", name)
			continue
		}
		if f.GetType() != typ {
			t.Errorf("%s is a %v, want %v", name, f.GetType(), typ)
		}
	}
	value := func(name string) float64 {
		m := fams[name].GetMetric()[0]
		if m.GetGauge() != nil {
			return m.GetGauge().GetValue()
		}
		return m.GetCounter().GetValue()
	}
	// Cross-check the process's values with the kernel's view.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if got := value("process_max_fds"); got != float64(lim.Cur) {
		t.Errorf("process_max_fds = %v, want %d", got, lim.Cur)
	}
	f, err := os.Open(os.DevNull) // one more descriptor
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := value("process_open_fds")
	after := parse(t, r)["process_open_fds"].GetMetric()[0].GetGauge().GetValue()
	if before < 3 || after < before-1 {
		t.Errorf("process_open_fds = %v then %v", before, after)
	}
	if rss := value("process_resident_memory_bytes"); rss < 1<<20 || rss > value("process_virtual_memory_bytes") {
		t.Errorf("process_resident_memory_bytes = %v (virtual %v)", rss, value("process_virtual_memory_bytes"))
	}
	if st := value("process_start_time_seconds"); st < 1.5e9 {
		t.Errorf("process_start_time_seconds = %v", st)
	}
	if q := fams["go_gc_duration_seconds"].GetMetric()[0].GetSummary().GetQuantile(); len(q) != 5 {
		t.Errorf("go_gc_duration_seconds has %d quantiles, want 5", len(q))
	}
}

func TestServeHTTPServesTheTextFormat(t *testing.T) {
	r := metrics.NewRegistry()
	c := metrics.NewCounter("t_total", "T.")
	r.MustRegister(c)
	c.Inc()
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != metrics.ContentType {
		t.Errorf("%d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	if !strings.Contains(rec.Body.String(), "\nt_total 1\n") {
		t.Errorf("body %q", rec.Body.String())
	}
}

// BenchmarkCounterVecHot is the proxy's per-decision update: a labelled
// counter found by its three label values, in parallel.
func BenchmarkCounterVecHot(b *testing.B) {
	cv := metrics.NewCounterVec("t_total", "T.", "kind", "result", "reason")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			cv.WithLabelValues("connect", "allow", "allowed-by").Inc()
		}
	})
}

// BenchmarkHistogramObserve is one dial's or one upstream exchange's
// observation, in parallel.
func BenchmarkHistogramObserve(b *testing.B) {
	h := metrics.NewHistogram("t_seconds", "T.", []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		v := 0.003
		for pb.Next() {
			h.Observe(v)
		}
	})
}

// go_gc_gogc_percent is GOGC as the runtime reads it.
func TestGOGCIsReadAsTheRuntimeReadsIt(t *testing.T) {
	for env, want := range map[string]float64{"": 100, "off": -1, "50": 50, "x": 100} {
		t.Setenv("GOGC", env)
		r := metrics.NewRegistry()
		r.MustRegister(metrics.NewRuntimeCollector())
		if got, _ := metricstest.Value(t, r, "go_gc_gogc_percent", nil); got != want {
			t.Errorf("GOGC=%q: go_gc_gogc_percent = %v, want %v", env, got, want)
		}
	}
}

// FuzzLabelValueCannotBreakTheExposition: whatever a label value holds,
// the exposition parses, has exactly the one series, and gives the value
// back (bytes that are not UTF-8 as U+FFFD).
func FuzzLabelValueCannotBreakTheExposition(f *testing.F) {
	for _, s := range []string{"", "a", `"`, `\`, "\n", `x"} 1` + "\nforged 1", "\xff", "é\x80", "{le=\"1\"}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r := metrics.NewRegistry()
		cv := metrics.NewCounterVec("t_total", "T.", "host")
		r.MustRegister(cv)
		cv.WithLabelValues(s).Add(2)
		fams := parse(t, r)
		if len(fams) != 1 || len(fams["t_total"].GetMetric()) != 1 {
			t.Fatalf("label value %q: families %v", s, keys(fams))
		}
		m := fams["t_total"].GetMetric()[0]
		if got, want := labelsOf(m)["host"], string([]rune(s)); got != want || m.GetCounter().GetValue() != 2 {
			t.Fatalf("label value %q came back as %q = %v", s, got, m.GetCounter().GetValue())
		}
	})
}
