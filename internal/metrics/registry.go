package metrics

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// ContentType is the media type of the text exposition format 0.0.4.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Registry is a set of collectors with distinct family names. Its methods
// are safe for concurrent use.
type Registry struct {
	mu    sync.Mutex
	cols  []Collector
	names map[string]bool
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{names: map[string]bool{}} }

// Register adds the collectors, all or none: a family name already
// registered (or given twice) is an error and nothing is added.
func (r *Registry) Register(cs ...Collector) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	for _, c := range cs {
		ds := c.descs()
		if len(ds) == 0 {
			return fmt.Errorf("registering metrics: a %T that is a series of a labelled family (register the family)", c)
		}
		for _, d := range ds {
			if r.names[d.name] || seen[d.name] {
				return fmt.Errorf("registering metrics: %s is already registered", d.name)
			}
			seen[d.name] = true
		}
	}
	for n := range seen {
		r.names[n] = true
	}
	r.cols = append(r.cols, cs...)
	return nil
}

// MustRegister is Register for collectors fixed by the program: an error
// is a bug, and panics.
func (r *Registry) MustRegister(cs ...Collector) {
	if err := r.Register(cs...); err != nil {
		panic(err)
	}
}

// Families returns the type of every registered family by name, whether
// or not it has a series yet (a list to check documentation against).
func (r *Registry) Families() map[string]Type {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]Type{}
	for _, c := range r.cols {
		for _, d := range c.descs() {
			out[d.name] = d.typ
		}
	}
	return out
}

// WriteText writes every family in the text format 0.0.4, sorted by name;
// a labelled family with no series yet is left out.
func (r *Registry) WriteText(out io.Writer) error {
	r.mu.Lock()
	cols := slices.Clone(r.cols)
	r.mu.Unlock()
	w := &writer{}
	for _, c := range cols {
		c.collect(w)
	}
	w.end()
	slices.SortFunc(w.fams, func(a, b famText) int { return strings.Compare(a.name, b.name) })
	var all bytes.Buffer
	for _, f := range w.fams {
		all.Write(f.text)
	}
	_, err := out.Write(all.Bytes())
	return err
}

// ServeHTTP serves GET /metrics.
func (r *Registry) ServeHTTP(rw http.ResponseWriter, _ *http.Request) {
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		http.Error(rw, "writing metrics: "+err.Error(), http.StatusInternalServerError)
		return
	}
	rw.Header().Set("Content-Type", ContentType)
	rw.Header().Set("Content-Length", strconv.Itoa(b.Len()))
	_, _ = rw.Write(b.Bytes())
}

// writer collects the text of each family as collectors write it.
type writer struct {
	fams    []famText
	cur     []byte
	curName string
	samples int
}

type famText struct {
	name string
	text []byte
}

// family starts the family d: its # HELP and # TYPE lines, kept only if a
// sample follows.
func (w *writer) family(d *desc) {
	w.end()
	w.curName = d.name
	w.cur = append(w.cur, "# HELP "...)
	w.cur = append(w.cur, d.name...)
	w.cur = append(w.cur, ' ')
	w.cur = appendEscaped(w.cur, d.help, false)
	w.cur = append(w.cur, "\n# TYPE "...)
	w.cur = append(w.cur, d.name...)
	w.cur = append(w.cur, ' ')
	w.cur = append(w.cur, d.typ...)
	w.cur = append(w.cur, '\n')
}

// end closes the family being written.
func (w *writer) end() {
	if w.curName != "" && w.samples > 0 {
		w.fams = append(w.fams, famText{w.curName, w.cur})
	}
	w.cur, w.curName, w.samples = nil, "", 0
}

// sample writes one sample line of the family d: its name with suffix,
// the label values (in d's declared order) and one extra label (le,
// quantile) when extra is set.
func (w *writer) sample(d *desc, suffix string, values []string, extra, extraValue string, v float64) {
	w.samples++
	b := append(w.cur, d.name...)
	b = append(b, suffix...)
	if len(values) > 0 || extra != "" {
		b = append(b, '{')
		first := true
		for _, i := range d.order {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, d.labels[i]...)
			b = append(b, `="`...)
			b = appendEscaped(b, values[i], true)
			b = append(b, '"')
		}
		if extra != "" {
			if !first {
				b = append(b, ',')
			}
			b = append(b, extra...)
			b = append(b, `="`...)
			b = appendEscaped(b, extraValue, true)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = append(b, formatFloat(v)...)
	w.cur = append(b, '\n')
}

// appendEscaped appends s escaped for a label value (\ " and newline) or
// a help text (\ and newline). Bytes that are not UTF-8 become U+FFFD:
// the format is UTF-8, and a value egressd did not choose (a policy's
// pattern) must not break the exposition.
func appendEscaped(b []byte, s string, quote bool) []byte {
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && n <= 1:
			b = utf8.AppendRune(b, utf8.RuneError)
		case r == '\\':
			b = append(b, `\\`...)
		case r == '\n':
			b = append(b, `\n`...)
		case r == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, s[:n]...)
		}
		s = s[n:]
	}
	return b
}

// formatFloat writes v as the text format does: shortest round-trip form,
// +Inf, -Inf, NaN.
func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
