package policyimport

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
	"go.yaml.in/yaml/v3"
)

// The three source syntaxes (JSON, YAML, TOML) are read into one tree of
// nodes that remember where they were written, so every imported rule and
// every warning can say "file:line".

type kind uint8

const (
	kNull kind = iota
	kObject
	kArray
	kString
	kNumber
	kBool
)

func (k kind) String() string {
	switch k {
	case kObject:
		return "an object"
	case kArray:
		return "an array"
	case kString:
		return "a string"
	case kNumber:
		return "a number"
	case kBool:
		return "a boolean"
	}
	return "null"
}

// node is one value of a source file.
type node struct {
	kind kind
	// str is the value of a string, the text of a number.
	str string
	num float64 // kNumber
	b   bool    // kBool
	// keys are an object's keys in the order written.
	keys   []string
	fields map[string]*node
	elems  []*node
	// path names the value for messages: "network.whitelist[2]".
	path string
	line int
}

// get returns an object's field, nil if absent (or n is not an object).
func (n *node) get(key string) *node {
	if n == nil || n.kind != kObject {
		return nil
	}
	return n.fields[key]
}

// Limits on source files: policies are small; these keep a mistaken or
// hostile file from costing much.
const (
	maxSourceSize = 1 << 20
	maxDepth      = 64
	maxNodes      = 200_000
)

// lineIndex maps byte offsets to 1-based lines.
type lineIndex []int

func newLineIndex(data []byte) lineIndex {
	idx := lineIndex{0}
	for i, c := range data {
		if c == '\n' {
			idx = append(idx, i+1)
		}
	}
	return idx
}

func (idx lineIndex) line(off int) int {
	return sort.Search(len(idx), func(i int) bool { return idx[i] > off })
}

func childPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func elemPath(parent string, i int) string { return parent + "[" + strconv.Itoa(i) + "]" }

// parseJSON reads one JSON value. Duplicate keys are refused: tools differ
// on which one wins, and an import must not guess.
func parseJSON(data []byte) (*node, error) {
	p := &jsonParser{data: data, lines: newLineIndex(data), dec: json.NewDecoder(bytes.NewReader(data))}
	p.dec.UseNumber()
	root, err := p.value("", 0)
	if err != nil {
		return nil, err
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("line %d: text after the end of the JSON value", p.lines.line(p.start()))
	}
	return root, nil
}

type jsonParser struct {
	data  []byte
	lines lineIndex
	dec   *json.Decoder
	nodes int
}

// start is the offset where the next token begins.
func (p *jsonParser) start() int {
	off := int(p.dec.InputOffset())
	for off < len(p.data) {
		switch p.data[off] {
		case ' ', '\t', '\r', '\n', ':', ',':
			off++
			continue
		}
		break
	}
	return off
}

func (p *jsonParser) syntax(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("line %d: %v", p.lines.line(int(se.Offset)), se)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("line %d: unexpected end of JSON", len(p.lines))
	}
	return err
}

func (p *jsonParser) value(path string, depth int) (*node, error) {
	if p.nodes++; p.nodes > maxNodes {
		return nil, errors.New("too many values")
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("line %d: nested more than %d levels deep", p.lines.line(p.start()), maxDepth)
	}
	line := p.lines.line(p.start())
	tok, err := p.dec.Token()
	if err != nil {
		return nil, p.syntax(err)
	}
	n := &node{path: path, line: line}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			n.kind, n.fields = kObject, map[string]*node{}
			for p.dec.More() {
				kline := p.lines.line(p.start())
				kt, err := p.dec.Token()
				if err != nil {
					return nil, p.syntax(err)
				}
				key, _ := kt.(string)
				if _, dup := n.fields[key]; dup {
					return nil, fmt.Errorf("line %d: duplicate key %s in %s", kline, strconv.Quote(key), describe(path))
				}
				v, err := p.value(childPath(path, key), depth+1)
				if err != nil {
					return nil, err
				}
				n.keys = append(n.keys, key)
				n.fields[key] = v
			}
		case '[':
			n.kind = kArray
			for p.dec.More() {
				v, err := p.value(elemPath(path, len(n.elems)), depth+1)
				if err != nil {
					return nil, err
				}
				n.elems = append(n.elems, v)
			}
		}
		if _, err := p.dec.Token(); err != nil { // the closing delimiter
			return nil, p.syntax(err)
		}
	case string:
		n.kind, n.str = kString, t
	case json.Number:
		n.kind, n.str = kNumber, t.String()
		n.num, _ = t.Float64()
	case bool:
		n.kind, n.b = kBool, t
	case nil:
		n.kind = kNull
	}
	return n, nil
}

func describe(path string) string {
	if path == "" {
		return "the top level"
	}
	return path
}

// parseYAML reads the first YAML document. Aliases are followed (with a
// bound on the values they expand to); merge keys are refused.
func parseYAML(data []byte) (*node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if doc.Kind == 0 {
		return &node{kind: kNull, line: 1}, nil
	}
	c := &yamlConverter{}
	return c.convert(&doc, "", 0)
}

type yamlConverter struct{ nodes int }

func (c *yamlConverter) convert(y *yaml.Node, path string, depth int) (*node, error) {
	if c.nodes++; c.nodes > maxNodes {
		return nil, errors.New("too many values (aliases expand to more than the limit)")
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("line %d: nested more than %d levels deep", y.Line, maxDepth)
	}
	switch y.Kind {
	case yaml.DocumentNode:
		if len(y.Content) == 0 {
			return &node{kind: kNull, line: y.Line}, nil
		}
		return c.convert(y.Content[0], path, depth)
	case yaml.AliasNode:
		if y.Alias == nil {
			return nil, fmt.Errorf("line %d: alias to nothing", y.Line)
		}
		n, err := c.convert(y.Alias, path, depth+1)
		if err != nil {
			return nil, err
		}
		n.line = y.Line
		return n, nil
	}
	n := &node{path: path, line: y.Line}
	switch y.Kind {
	case yaml.MappingNode:
		n.kind, n.fields = kObject, map[string]*node{}
		for i := 0; i+1 < len(y.Content); i += 2 {
			k := y.Content[i]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: a key must be a plain value", k.Line)
			}
			if k.Tag == "!!merge" || k.Value == "<<" && k.Style == 0 {
				return nil, fmt.Errorf("line %d: merge keys (<<) are not supported; write the keys out", k.Line)
			}
			if _, dup := n.fields[k.Value]; dup {
				return nil, fmt.Errorf("line %d: duplicate key %s in %s", k.Line, strconv.Quote(k.Value), describe(path))
			}
			v, err := c.convert(y.Content[i+1], childPath(path, k.Value), depth+1)
			if err != nil {
				return nil, err
			}
			n.keys = append(n.keys, k.Value)
			n.fields[k.Value] = v
		}
	case yaml.SequenceNode:
		n.kind = kArray
		for i, e := range y.Content {
			v, err := c.convert(e, elemPath(path, i), depth+1)
			if err != nil {
				return nil, err
			}
			n.elems = append(n.elems, v)
		}
	case yaml.ScalarNode:
		switch y.ShortTag() {
		case "!!null":
			n.kind = kNull
		case "!!bool":
			n.kind = kBool
			_ = y.Decode(&n.b)
		case "!!int", "!!float":
			n.kind, n.str = kNumber, y.Value
			var f float64
			if err := y.Decode(&f); err == nil {
				n.num = f
			}
		default:
			n.kind, n.str = kString, y.Value
		}
	default:
		return nil, fmt.Errorf("line %d: unsupported YAML node", y.Line)
	}
	return n, nil
}

// parseTOML reads a TOML document: go-toml decodes and checks it, and the
// expressions of its parser give the lines.
func parseTOML(data []byte) (*node, error) {
	var m map[string]any
	if err := toml.Unmarshal(data, &m); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, _ := de.Position()
			return nil, fmt.Errorf("line %d: %s", row, de.Error())
		}
		return nil, err
	}
	lines := tomlLines(data)
	c := &tomlConverter{lines: lines}
	return c.convert(m, "", 1, 0)
}

// tomlLines maps "table.key" and "table.key[i]" paths to the lines they
// were written on.
func tomlLines(data []byte) map[string]int {
	data = data[:len(data):len(data)]
	idx := newLineIndex(data)
	lines := map[string]int{}
	offset := func(sub []byte) int { return cap(data) - cap(sub) }
	keyOf := func(it unstable.Iterator) (parts []string, line int) {
		for it.Next() {
			n := it.Node()
			if line == 0 {
				line = idx.line(int(n.Raw.Offset))
			}
			parts = append(parts, string(n.Data))
		}
		return parts, line
	}
	var table string
	arrays := map[string]int{}
	var p unstable.Parser
	p.Reset(data)
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table:
			parts, line := keyOf(e.Key())
			table = strings.Join(parts, ".")
			lines[table] = line
		case unstable.ArrayTable:
			parts, line := keyOf(e.Key())
			k := strings.Join(parts, ".")
			table = elemPath(k, arrays[k])
			arrays[k]++
			lines[table] = line
			if _, ok := lines[k]; !ok {
				lines[k] = line
			}
		case unstable.KeyValue:
			parts, line := keyOf(e.Key())
			full := childPath(table, strings.Join(parts, "."))
			lines[full] = line
			v := e.Value()
			if v.Kind != unstable.Array {
				continue
			}
			i := 0
			for it := v.Children(); it.Next(); {
				c := it.Node()
				if c.Kind == unstable.Comment {
					continue
				}
				if c.Kind != unstable.Array && len(c.Data) > 0 {
					if off := offset(c.Data); off >= 0 && off <= len(data) {
						lines[elemPath(full, i)] = idx.line(off)
					}
				} else if c.Kind != unstable.Array {
					lines[elemPath(full, i)] = idx.line(int(c.Raw.Offset))
				}
				i++
			}
		}
	}
	return lines
}

type tomlConverter struct {
	lines map[string]int
	nodes int
}

func (c *tomlConverter) convert(v any, path string, line, depth int) (*node, error) {
	if c.nodes++; c.nodes > maxNodes {
		return nil, errors.New("too many values")
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("line %d: nested more than %d levels deep", line, maxDepth)
	}
	if l, ok := c.lines[path]; ok {
		line = l
	}
	n := &node{path: path, line: line}
	switch t := v.(type) {
	case map[string]any:
		n.kind, n.fields = kObject, map[string]*node{}
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		// go-toml's map forgets the order; the lines give it back.
		sort.SliceStable(keys, func(i, j int) bool {
			li, lj := c.lines[childPath(path, keys[i])], c.lines[childPath(path, keys[j])]
			if li != lj {
				return li < lj
			}
			return keys[i] < keys[j]
		})
		for _, k := range keys {
			child, err := c.convert(t[k], childPath(path, k), line, depth+1)
			if err != nil {
				return nil, err
			}
			n.keys = append(n.keys, k)
			n.fields[k] = child
		}
	case []any:
		n.kind = kArray
		for i, e := range t {
			child, err := c.convert(e, elemPath(path, i), line, depth+1)
			if err != nil {
				return nil, err
			}
			n.elems = append(n.elems, child)
		}
	case string:
		n.kind, n.str = kString, t
	case bool:
		n.kind, n.b = kBool, t
	case int64:
		n.kind, n.str, n.num = kNumber, strconv.FormatInt(t, 10), float64(t)
	case float64:
		n.kind, n.str, n.num = kNumber, strconv.FormatFloat(t, 'g', -1, 64), t
	default:
		// Dates and times: no importer reads one; keep the text.
		n.kind, n.str = kString, fmt.Sprint(t)
	}
	return n, nil
}
