package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
)

// A snapshot is a resolved policy written as data: the list Explain returns,
// one {"field", "value", "source"} object per value (a set field's elements
// one by one), each value in TOML syntax and each with the source it was
// resolved from. It is what `GET /policy` writes, and what the launcher
// hands a sandbox's egressd: a policy file whose name ends in ".json" is
// read as one (ParseFile, Resolve). Every value keeps the source the
// snapshot names, so a rule egressd decides with reports the file and line
// (or flag, or built-in) its author wrote it at, not a line of the
// snapshot; nothing maps one to the other.
//
// A snapshot is a layer like a policy file: its "profile" entry names the
// built-in profile it builds on, and its other entries are applied on top
// in order (a set field's elements merge by union, so a snapshot of a
// resolved profile built on that profile's own built-in gives back exactly
// the resolved values). Entries Explain adds for people only
// (ShownOnlyFields) are skipped; any other field that is not a policy key
// is an error, with the entry's file:line:col.

// SnapshotSuffix marks a policy file read as a snapshot.
const SnapshotSuffix = ".json"

// FieldInspectCA is the field `GET /policy` adds to name the inspection CA
// in force (its fingerprint, with the certificate file as source). It is
// shown, not set: a snapshot's reader skips it.
const FieldInspectCA = "inspect.ca_sha256"

// ShownOnlyFields are the fields a snapshot may list that are no policy
// key: what `GET /policy` shows besides the policy.
var ShownOnlyFields = []string{FieldInspectCA}

// IsSnapshot reports whether the policy file name is read as a snapshot.
func IsSnapshot(name string) bool { return strings.HasSuffix(name, SnapshotSuffix) }

// sourceOf reads a source as Source.String writes it ("policy.toml:12",
// "builtin:standard", "flag:--allow", a file name without a line). For every
// string s, sourceOf(s).String() == s, so a source read back from a
// snapshot reports exactly what it reported where it was written.
func sourceOf(s string) Source {
	switch {
	case s == "":
		return Source{}
	case strings.HasPrefix(s, "builtin:"):
		return Builtin(strings.TrimPrefix(s, "builtin:"))
	case strings.HasPrefix(s, "flag:"):
		return Flag(strings.TrimPrefix(s, "flag:"))
	}
	if i := strings.LastIndexByte(s, ':'); i > 0 {
		if n, ok := lineNumber(s[i+1:]); ok {
			return Source{Kind: SourceFile, File: s[:i], Line: n}
		}
	}
	return Source{Kind: SourceFile, File: s}
}

// lineNumber parses a positive decimal line number as strconv.Itoa writes
// it: digits only, no leading zero.
func lineNumber(s string) (int, bool) {
	if s == "" || s[0] == '0' || len(s) > 9 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// MarshalSnapshot renders entries (Explain's, or part of them) as the JSON
// a snapshot is: one object per line, in order.
func MarshalSnapshot(entries []Provenance) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("[\n")
	for i, e := range entries {
		data, err := json.Marshal(e)
		if err != nil {
			return nil, err
		}
		b.WriteString("  ")
		b.Write(data)
		if i < len(entries)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString("]\n")
	return b.Bytes(), nil
}

// snapshotEntry is one object of a snapshot and where it starts.
type snapshotEntry struct {
	Provenance
	pos Source
}

// parseSnapshot reads a snapshot into a layer (see the comment at the top).
func parseSnapshot(name string, data []byte) (*layer, ErrorList) {
	entries, err := readSnapshot(name, data)
	if err != nil {
		return nil, ErrorList{err}
	}
	d := &decoder{}
	l := &layer{name: name}
	for _, e := range entries {
		decodeSnapshotEntry(d, l, e)
	}
	sortByPosition(d.errs)
	if len(d.errs) > 0 {
		return nil, d.errs
	}
	return l, nil
}

// readSnapshot decodes the JSON list, each entry with its position.
func readSnapshot(name string, data []byte) ([]snapshotEntry, *Error) {
	at := func(off int64) Source { return offsetSource(name, data, off) }
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	hint := `a snapshot is the JSON list GET /policy writes: [{"field": "network.allow", "value": "\"example.com\"", "source": "policy.toml:3"}, ...]`
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, &Error{Pos: at(0), Msg: "policy snapshot: not a JSON list", Hint: hint}
	}
	var out []snapshotEntry
	for dec.More() {
		start := nextValue(data, dec.InputOffset())
		var e Provenance
		if err := dec.Decode(&e); err != nil {
			return nil, &Error{Pos: at(start), Msg: "policy snapshot: " + jsonMessage(err), Hint: hint}
		}
		out = append(out, snapshotEntry{Provenance: e, pos: at(start)})
	}
	if _, err := dec.Token(); err != nil {
		return nil, &Error{Pos: at(dec.InputOffset()), Msg: "policy snapshot: " + jsonMessage(err), Hint: hint}
	}
	end := nextValue(data, dec.InputOffset())
	if _, err := dec.Token(); err != io.EOF {
		return nil, &Error{Pos: at(end), Msg: "policy snapshot: data after the list"}
	}
	return out, nil
}

func jsonMessage(err error) string {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "the list is cut short"
	}
	return err.Error()
}

// nextValue skips the separators after off: where the next value starts.
func nextValue(data []byte, off int64) int64 {
	for off < int64(len(data)) {
		switch data[off] {
		case ' ', '\t', '\r', '\n', ',':
			off++
			continue
		}
		break
	}
	return off
}

// offsetSource is the file position of byte off of data.
func offsetSource(name string, data []byte, off int64) Source {
	off = min(max(off, 0), int64(len(data)))
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	col := int(off) - bytes.LastIndexByte(data[:off], '\n')
	return Source{Kind: SourceFile, File: name, Line: line, Col: col}
}

// decodeSnapshotEntry decodes one entry into l. Errors name the entry's
// position in the snapshot; the values it adds carry the source the entry
// names.
func decodeSnapshotEntry(d *decoder, l *layer, e snapshotEntry) {
	src := sourceOf(e.Source)
	key := e.Field
	if slices.Contains(ShownOnlyFields, key) {
		return
	}
	v, ok := snapshotValue(d, l.name, e)
	if !ok {
		return
	}
	if key == "profile" {
		if v.kind != tString {
			d.errorf(e.pos, `for example: "\"strict\""`, "profile must be a string, not %s", v.kind.article())
			return
		}
		canon, ok := CanonicalProfileName(v.str)
		if !ok {
			d.errorf(e.pos, "built-in profiles are "+quotedList(allProfileNames()), "unknown profile %q", v.str)
			return
		}
		l.base, l.baseSrc = canon, src
		return
	}
	var f *field
	if name, ok := strings.CutPrefix(key, "env.set."); ok {
		f = fieldByKey["env.set"]
		tbl := &tval{kind: tTable, pos: e.pos, keyPos: e.pos}
		tbl.set(name, v)
		v = tbl
	} else if f, ok = fieldByKey[key]; !ok {
		d.errorf(e.pos, meanHint(key, fieldKeys()), "unknown field %q", key)
		return
	}
	if f.kind == setField && v.kind != tArray {
		// One element of a set, as Explain lists them.
		v = &tval{kind: tArray, elems: []*tval{v}}
	}
	// Decoded as a flag's value is: every part placed at the source the
	// entry names, which the values keep (a rule's Source). A problem is
	// reported at the entry, with that source.
	placeAt(v, src)
	sub := &decoder{}
	decodeField(sub, l, f, v)
	for _, err := range sub.errs {
		err.Pos = e.pos
		if e.Source != "" {
			err.Msg += " (the value from " + e.Source + ")"
		}
		d.errs = append(d.errs, err)
	}
}

// snapshotValue parses an entry's value (TOML).
func snapshotValue(d *decoder, file string, e snapshotEntry) (*tval, bool) {
	if strings.ContainsAny(e.Value, "\n\r") {
		d.errorf(e.pos, "", "%s: a snapshot value is one line of TOML", e.Field)
		return nil, false
	}
	root, errs := parseTOML(file, []byte("v = "+e.Value))
	v, ok := root.m["v"]
	if len(errs) > 0 || !ok || len(root.keys) != 1 {
		msg := "not a TOML value"
		if len(errs) > 0 {
			msg = errs[0].Msg
		}
		d.errorf(e.pos, "", "%s: value %s: %s", e.Field, strconv.Quote(e.Value), msg)
		return nil, false
	}
	return v, true
}

// placeAt sets the position of v and everything in it.
func placeAt(v *tval, pos Source) {
	v.pos, v.keyPos = pos, pos
	for _, e := range v.elems {
		placeAt(e, pos)
	}
	for _, k := range v.keys {
		placeAt(v.m[k], pos)
	}
}

// Snapshot is the part of p's Explain listing whose field is "profile" or
// lies in one of sections ("network"): what a snapshot of those sections
// holds. With no sections, the whole listing.
func (p *Profile) Snapshot(sections ...string) []Provenance {
	all := p.Explain()
	if len(sections) == 0 {
		return all
	}
	var out []Provenance
	for _, e := range all {
		sec, _, _ := strings.Cut(e.Field, ".")
		if e.Field == "profile" || slices.Contains(sections, sec) {
			out = append(out, e)
		}
	}
	return out
}
