package policy

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// MaxFileSize is the largest policy file accepted. Real policies are a few
// kilobytes; the limit keeps a mistaken path (a log, a binary) from being
// read whole.
const MaxFileSize = 1 << 20

// tkind is the type of a TOML value.
type tkind uint8

const (
	tTable tkind = iota
	tArray
	tString
	tInt
	tFloat
	tBool
	tDateTime
)

// article renders the kind for messages: "a string", "an integer".
func (k tkind) article() string {
	switch k {
	case tTable:
		return "a table"
	case tArray:
		return "an array"
	case tString:
		return "a string"
	case tInt:
		return "an integer"
	case tFloat:
		return "a float"
	case tBool:
		return "a boolean"
	}
	return "a date-time"
}

// tval is one TOML value with where it was written. Per-launch flag values
// are tvals too (kind tString, flag true), so they pass through the same
// field decoders as file values.
type tval struct {
	kind tkind
	// pos is where the value starts; keyPos where its key was written (the
	// last part of a dotted key). For a flag value both are the flag.
	pos, keyPos Source
	// flag marks a string given on the command line: decoders accept it for
	// integer, float and boolean fields and parse it themselves.
	flag bool

	str string // tString, tDateTime (raw text)
	num int64  // tInt
	flt float64
	b   bool

	keys  []string         // tTable: keys in the order written
	m     map[string]*tval // tTable
	elems []*tval          // tArray

	// TOML table bookkeeping, to refuse what TOML refuses: defining a table
	// twice, reopening an inline table, mixing dotted keys and headers.
	explicit      bool // defined by a [header]
	dotted        bool // created by a dotted key
	inline        bool // an inline table { ... }: closed
	arrayOfTables bool // an array built by [[header]]
}

func (t *tval) set(key string, v *tval) {
	if t.m == nil {
		t.m = map[string]*tval{}
	}
	t.keys = append(t.keys, key)
	t.m[key] = v
}

// tomlBuilder turns the go-toml AST into a tree of tvals, checking the TOML
// rules the tokenizer does not (duplicate keys and tables).
type tomlBuilder struct {
	file       string
	data       []byte
	lineStarts []int
	root       *tval
	errs       ErrorList
}

func newTOMLBuilder(file string, data []byte) *tomlBuilder {
	b := &tomlBuilder{file: file, data: data, root: &tval{kind: tTable, explicit: true}}
	b.lineStarts = append(b.lineStarts, 0)
	for i, c := range data {
		if c == '\n' {
			b.lineStarts = append(b.lineStarts, i+1)
		}
	}
	return b
}

// at converts a byte offset into a file position. Offsets outside the input
// are clamped into it, so every position names a place in the file.
func (b *tomlBuilder) at(off int) Source {
	off = max(0, min(off, len(b.data)))
	line := sort.Search(len(b.lineStarts), func(i int) bool { return b.lineStarts[i] > off }) - 1
	return Source{Kind: SourceFile, File: b.file, Line: line + 1, Col: off - b.lineStarts[line] + 1}
}

func (b *tomlBuilder) errorf(pos Source, hint, format string, args ...any) {
	b.errs = append(b.errs, &Error{Pos: pos, Msg: fmt.Sprintf(format, args...), Hint: hint})
}

// offsetOf is the offset of sub inside data, which sub must share the
// backing array with; -1 if it cannot be located.
func (b *tomlBuilder) offsetOf(sub []byte) int {
	off := cap(b.data) - cap(sub)
	if off < 0 || off > len(b.data) {
		return -1
	}
	return off
}

// parseTOML parses data into a tree. Syntax errors stop the parse (the
// tokenizer cannot resume); duplicate keys and tables are collected and the
// offending expression skipped.
func parseTOML(file string, data []byte) (*tval, ErrorList) {
	// A capacity equal to the length makes offsets of empty highlights at
	// the end of input computable.
	data = data[:len(data):len(data)]
	b := newTOMLBuilder(file, data)
	var p unstable.Parser
	p.Reset(data)
	cur := b.root
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.KeyValue:
			b.keyValue(cur, e)
		case unstable.Table:
			cur = b.tableHeader(e, false)
		case unstable.ArrayTable:
			cur = b.tableHeader(e, true)
		}
	}
	if err := p.Error(); err != nil {
		var perr *unstable.ParserError
		if errors.As(err, &perr) {
			off := b.offsetOf(perr.Highlight)
			if off < 0 {
				off = len(data)
			}
			b.errorf(b.at(off), "", "%s", tomlMessage(perr.Message))
		} else {
			b.errorf(b.at(len(data)), "", "%s", err.Error())
		}
	}
	sortByPosition(b.errs)
	return b.root, b.errs
}

// tomlMessage makes a go-toml syntax message read like ours.
func tomlMessage(msg string) string {
	return "TOML syntax error: " + msg
}

type keyPart struct {
	name     string
	pos      Source
	off, end int // offsets of the key part's first byte and just after it
}

func (b *tomlBuilder) keyParts(it unstable.Iterator) []keyPart {
	var parts []keyPart
	for it.Next() {
		n := it.Node()
		parts = append(parts, keyPart{
			name: string(n.Data),
			pos:  b.at(int(n.Raw.Offset)),
			off:  int(n.Raw.Offset),
			end:  int(n.Raw.Offset + n.Raw.Length),
		})
	}
	return parts
}

func dottedName(parts []keyPart) string {
	names := make([]string, len(parts))
	for i, p := range parts {
		names[i] = tomlKey(p.name)
	}
	return strings.Join(names, ".")
}

// tableHeader handles [a.b] and [[a.b]] and returns the table later keys go
// into. On error it returns a detached table, so the keys under a bad header
// are checked for TOML errors but do not land anywhere.
func (b *tomlBuilder) tableHeader(e *unstable.Node, array bool) *tval {
	parts := b.keyParts(e.Key())
	detached := &tval{kind: tTable, explicit: true}
	if len(parts) == 0 {
		return detached
	}
	t := b.root
	for i, k := range parts[:len(parts)-1] {
		child, ok := t.m[k.name]
		if !ok {
			child = &tval{kind: tTable, pos: k.pos, keyPos: k.pos}
			t.set(k.name, child)
		}
		switch {
		case child.kind == tArray && child.arrayOfTables:
			child = child.elems[len(child.elems)-1]
		case child.kind != tTable:
			b.errorf(k.pos, "first set at "+lineCol(child.keyPos), "key %s is %s, not a table", dottedName(parts[:i+1]), child.kind.article())
			return detached
		case child.inline:
			b.errorf(k.pos, "first set at "+lineCol(child.keyPos), "table %s was written inline ({ ... }) and cannot be extended", dottedName(parts[:i+1]))
			return detached
		}
		t = child
	}
	last := parts[len(parts)-1]
	// Errors about the header point at its '[', like the value errors of a
	// key point at the key.
	i := parts[0].off
	for i > 0 && (b.data[i-1] == ' ' || b.data[i-1] == '\t' || b.data[i-1] == '[') {
		i--
	}
	last.pos = b.at(i)
	name := dottedName(parts)
	existing, ok := t.m[last.name]
	if array {
		tbl := &tval{kind: tTable, explicit: true, pos: last.pos, keyPos: last.pos}
		switch {
		case !ok:
			arr := &tval{kind: tArray, arrayOfTables: true, pos: last.pos, keyPos: last.pos}
			arr.elems = append(arr.elems, tbl)
			t.set(last.name, arr)
		case existing.kind == tArray && existing.arrayOfTables:
			existing.elems = append(existing.elems, tbl)
		default:
			b.errorf(last.pos, "first set at "+lineCol(existing.keyPos), "[[%s]] adds to an array of tables, but %s is already %s", name, name, existing.kind.article())
			return detached
		}
		return tbl
	}
	switch {
	case !ok:
		tbl := &tval{kind: tTable, explicit: true, pos: last.pos, keyPos: last.pos}
		t.set(last.name, tbl)
		return tbl
	case existing.kind == tTable && existing.inline:
		b.errorf(last.pos, "first set at "+lineCol(existing.keyPos), "table %s was written inline ({ ... }) and cannot be extended", name)
	case existing.kind == tTable && existing.dotted:
		b.errorf(last.pos, "first set at "+lineCol(existing.keyPos), "table [%s] was already created by a dotted key", name)
	case existing.kind == tTable && existing.explicit:
		b.errorf(last.pos, "first defined at "+lineCol(existing.keyPos)+"; put all its keys under one header", "table [%s] defined twice", name)
	case existing.kind == tTable:
		existing.explicit = true
		existing.keyPos = last.pos
		return existing
	default:
		b.errorf(last.pos, "first set at "+lineCol(existing.keyPos), "key %s is already %s, not a table", name, existing.kind.article())
	}
	return detached
}

// keyValue adds key = value to table t.
func (b *tomlBuilder) keyValue(t *tval, e *unstable.Node) {
	parts := b.keyParts(e.Key())
	if len(parts) == 0 {
		return
	}
	for i, k := range parts[:len(parts)-1] {
		child, ok := t.m[k.name]
		if !ok {
			child = &tval{kind: tTable, dotted: true, pos: k.pos, keyPos: k.pos}
			t.set(k.name, child)
		}
		switch {
		case child.kind != tTable:
			b.errorf(k.pos, "first set at "+lineCol(child.keyPos), "key %s is already %s, not a table", dottedName(parts[:i+1]), child.kind.article())
			return
		case child.inline:
			b.errorf(k.pos, "first set at "+lineCol(child.keyPos), "table %s was written inline ({ ... }) and cannot be extended", dottedName(parts[:i+1]))
			return
		case !child.dotted:
			b.errorf(k.pos, "first defined at "+lineCol(child.keyPos)+"; put the key under that header", "table %s is defined by a [header] and cannot be extended with a dotted key", dottedName(parts[:i+1]))
			return
		}
		t = child
	}
	last := parts[len(parts)-1]
	v := b.value(e.Value(), b.valueOffset(e.Value(), last.end))
	v.keyPos = last.pos
	if existing, ok := t.m[last.name]; ok {
		b.errorf(last.pos, "first set at "+lineCol(existing.keyPos), "duplicate key %q", dottedName(parts))
		return
	}
	t.set(last.name, v)
}

// valueOffset finds where a value starts. Scalars and inline tables carry
// their range; arrays do not, so the '[' is found after the '=' that follows
// the key (keyEnd), or, for nested arrays, at the first element.
func (b *tomlBuilder) valueOffset(n *unstable.Node, keyEnd int) int {
	if n.Kind != unstable.Array {
		return int(n.Raw.Offset)
	}
	if keyEnd >= 0 {
		i := keyEnd
		for i < len(b.data) && (b.data[i] == ' ' || b.data[i] == '\t') {
			i++
		}
		if i < len(b.data) && b.data[i] == '=' {
			i++
			for i < len(b.data) && (b.data[i] == ' ' || b.data[i] == '\t') {
				i++
			}
			if i < len(b.data) && b.data[i] == '[' {
				return i
			}
		}
	}
	if c := n.Child(); c != nil {
		return b.valueOffset(c, -1)
	}
	return max(0, keyEnd)
}

// value converts one AST value node starting at off.
func (b *tomlBuilder) value(n *unstable.Node, off int) *tval {
	pos := b.at(off)
	v := &tval{pos: pos, keyPos: pos}
	switch n.Kind {
	case unstable.String:
		v.kind, v.str = tString, string(n.Data)
	case unstable.Bool:
		v.kind, v.b = tBool, string(n.Data) == "true"
	case unstable.Integer:
		v.kind = tInt
		i, err := parseTOMLInt(n.Data)
		if err != nil {
			b.errorf(pos, "", "%v", err)
		}
		v.num = i
	case unstable.Float:
		v.kind = tFloat
		f, err := parseTOMLFloat(n.Data)
		if err != nil {
			b.errorf(pos, "", "%v", err)
		}
		v.flt = f
	case unstable.Array:
		v.kind = tArray
		for it := n.Children(); it.Next(); {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			// Nested arrays have no range: fall back to their first element,
			// or to the enclosing array.
			coff := b.valueOffset(c, -1)
			if c.Kind == unstable.Array && c.Child() == nil {
				coff = off
			}
			v.elems = append(v.elems, b.value(c, coff))
		}
	case unstable.InlineTable:
		v.kind = tTable
		for it := n.Children(); it.Next(); {
			c := it.Node()
			if c.Kind != unstable.KeyValue {
				continue
			}
			b.keyValue(v, c)
		}
		v.inline = true
	default:
		v.kind, v.str = tDateTime, string(n.Data)
	}
	return v
}

// lineCol renders a position for hints: "line 3, column 1".
func lineCol(s Source) string {
	if s.Kind != SourceFile || s.Line == 0 {
		return s.String()
	}
	return fmt.Sprintf("line %d, column %d", s.Line, s.Col)
}

// parseTOMLInt decodes a TOML integer the tokenizer has already checked:
// decimal with an optional sign, or 0x/0o/0b, with underscores.
func parseTOMLInt(raw []byte) (int64, error) {
	s := strings.ReplaceAll(string(raw), "_", "")
	base := 10
	if len(s) > 2 && s[0] == '0' {
		switch s[1] {
		case 'x':
			base = 16
		case 'o':
			base = 8
		case 'b':
			base = 2
		}
		if base != 10 {
			s = s[2:]
		}
	}
	i, err := strconv.ParseInt(s, base, 64)
	if err != nil {
		return 0, fmt.Errorf("integer %s does not fit in 64 bits", raw)
	}
	return i, nil
}

// parseTOMLFloat decodes a TOML float: decimal with underscores, inf, nan.
func parseTOMLFloat(raw []byte) (float64, error) {
	s := strings.ReplaceAll(string(raw), "_", "")
	switch strings.TrimLeft(s, "+-") {
	case "inf":
		if s[0] == '-' {
			return math.Inf(-1), nil
		}
		return math.Inf(1), nil
	case "nan":
		return math.NaN(), nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("float %s is out of range", raw)
	}
	return f, nil
}

// tomlKey renders a key bare when TOML allows it, quoted otherwise.
func tomlKey(k string) string {
	if k == "" {
		return `""`
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return tomlString(k)
		}
	}
	return k
}

// tomlString renders s as a TOML basic string.
func tomlString(s string) string {
	var b bytes.Buffer
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
