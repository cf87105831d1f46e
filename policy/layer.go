package policy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// MaxTmpfs is the most tmpfs entries one layer may list.
const MaxTmpfs = 256

// FileVersion is the policy file format version this package reads.
const FileVersion = 1

// layer is one decoded, validated source of values: a policy file or the
// per-launch flags. Applying it to a profile is all that is left.
type layer struct {
	name string
	// base is the canonical built-in profile the layer names ("" if none),
	// written at baseSrc.
	base    string
	baseSrc Source
	assigns []assign
}

// assign is one value to apply: a scalar, a whole list, one set element or
// one map entry.
type assign struct {
	f   *field
	val any
	src Source
}

// File is one parsed, validated policy file. Resolve applies it on top of a
// built-in profile.
type File struct {
	// Name is the file name as given.
	Name string
	// Profile is the canonical name of the built-in profile the file names
	// with `profile = "..."`, or "" if it names none.
	Profile string
	layer   *layer
}

// ParseFile parses and validates one policy file (a snapshot when name ends
// in SnapshotSuffix). name is used in positions.
// The error, if any, is an ErrorList naming every problem found, sorted by
// position; each has a line and column within data.
func ParseFile(name string, data []byte) (*File, error) {
	l, errs := parseLayer(name, data)
	if len(errs) > 0 {
		return nil, errs
	}
	return &File{Name: name, Profile: l.base, layer: l}, nil
}

func parseLayer(name string, data []byte) (*layer, ErrorList) {
	if len(data) > MaxFileSize {
		return nil, ErrorList{{
			Pos: Source{Kind: SourceFile, File: name, Line: 1, Col: 1},
			Msg: fmt.Sprintf("policy file is %d bytes, more than the limit of %d", len(data), MaxFileSize),
		}}
	}
	if IsSnapshot(name) {
		return parseSnapshot(name, data)
	}
	root, errs := parseTOML(name, data)
	if len(errs) > 0 {
		return nil, errs
	}
	d := &decoder{}
	l := decodeRoot(d, name, root)
	sortByPosition(d.errs)
	if len(d.errs) > 0 {
		return nil, d.errs
	}
	return l, nil
}

func decodeRoot(d *decoder, name string, root *tval) *layer {
	l := &layer{name: name}
	start := Source{Kind: SourceFile, File: name, Line: 1, Col: 1}
	v, ok := root.m["version"]
	switch {
	case !ok:
		d.errorf(start, "add `version = 1` at the top of the file", "missing version")
	case v.kind != tInt:
		d.errorf(v.pos, "write version = 1, a number", "version must be an integer, not %s", v.kind.article())
	case v.num != FileVersion:
		// A file for another version means other keys: checking them
		// against this version's schema would only add noise.
		d.errorf(v.pos, "this egressd reads version 1 policy files", "unsupported policy file version %d", v.num)
		return l
	}
	for _, key := range root.keys {
		v := root.m[key]
		switch key {
		case "version":
		case "profile":
			s := v.str
			if v.kind != tString {
				d.errorf(v.pos, `for example: profile = "strict"`, "profile must be a string, not %s", v.kind.article())
				continue
			}
			canon, ok := CanonicalProfileName(s)
			if !ok {
				hint := meanHint(s, allProfileNames())
				if hint == "" {
					hint = "built-in profiles are " + quotedList(allProfileNames())
				}
				d.errorf(v.pos, hint, "unknown profile %q", s)
				continue
			}
			l.base, l.baseSrc = canon, v.pos
		default:
			if !slices.Contains(sections, key) {
				if v.kind == tTable && !v.inline {
					hint := meanHint(key, sections)
					if hint == "" {
						hint = "sections are " + strings.Join(sections, ", ")
					}
					d.errorf(v.keyPos, hint, "unknown section [%s]", key)
					continue
				}
				d.errorf(v.keyPos, unknownKeyHint(key, "", topLevelKeys), "unknown key %q", key)
				continue
			}
			if v.kind != tTable {
				d.errorf(v.keyPos, "write it as a table: ["+key+"]", "%s must be a table, not %s", key, v.kind.article())
				continue
			}
			decodeSection(d, l, key, v)
		}
	}
	return l
}

// unknownKeyHint suggests a near key of the same table, or the section a
// misplaced key belongs to.
func unknownKeyHint(key, section string, known []string) string {
	if h := meanHint(key, known); h != "" {
		return h
	}
	var homes []string
	for _, f := range fields {
		if f.name == key && f.section != section {
			homes = append(homes, "["+f.section+"]")
		}
	}
	if len(homes) > 0 {
		return tomlKey(key) + " belongs in " + joinOr(homes)
	}
	if section == "" {
		return "top-level keys are " + strings.Join(known, ", ")
	}
	return "keys of [" + section + "] are " + strings.Join(known, ", ")
}

func decodeSection(d *decoder, l *layer, section string, t *tval) {
	known := sectionKeys(section)
	for _, key := range t.keys {
		v := t.m[key]
		f, ok := fieldByKey[section+"."+key]
		if !ok {
			d.errorf(v.keyPos, unknownKeyHint(key, section, known), "unknown key %q in [%s]", key, section)
			continue
		}
		decodeField(d, l, f, v)
	}
}

// decodeField decodes v as field f and adds the result to l. File values and
// flag values both come here.
func decodeField(d *decoder, l *layer, f *field, v *tval) {
	switch f.kind {
	case scalarField:
		if val, ok := f.decode(d, f, v); ok {
			l.assigns = append(l.assigns, assign{f, val, v.pos})
		}
	case setField, listField:
		if v.kind != tArray || v.arrayOfTables && !f.tables {
			hint := "for example: " + f.example
			if v.kind == tString {
				hint = fmt.Sprintf("write a list: %s = [%s]", f.name, tomlString(v.str))
			}
			d.errorf(v.pos, hint, "%s must be an array, not %s", f.key, describeValue(v))
			return
		}
		if f.key == "filesystem.tmpfs" && len(v.elems) > MaxTmpfs {
			d.errorf(v.pos, "", "%s has %d entries, more than the limit of %d", f.key, len(v.elems), MaxTmpfs)
			return
		}
		var list []any
		failed := false
		for _, e := range v.elems {
			val, ok := f.decode(d, f, e)
			if !ok {
				failed = true
				continue
			}
			if f.kind == setField {
				l.assigns = append(l.assigns, assign{f, val, e.pos})
			} else {
				list = append(list, val)
			}
		}
		if f.kind == listField && !failed {
			if len(list) == 0 && f.key == "network.default_ports" {
				d.errorf(v.pos, "to allow no port by default, give every allow rule its port (\"example.com:443\")",
					"%s must list at least one port", f.key)
				return
			}
			l.assigns = append(l.assigns, assign{f, list, v.pos})
		}
	case mapField:
		if v.kind != tTable {
			d.errorf(v.pos, "for example: "+f.example, "%s must be a table, not %s", f.key, v.kind.article())
			return
		}
		for _, name := range v.keys {
			e := v.m[name]
			if !ValidEnvName(name) {
				d.errorf(e.keyPos, "names are letters, digits and _, not starting with a digit", "%s: %s is not an environment variable name", f.key, tomlKey(name))
				continue
			}
			if val, ok := f.decode(d, f, e); ok {
				l.assigns = append(l.assigns, assign{f, mapEntry{name, val.(string)}, e.pos})
			}
		}
	}
}

// Setting is one per-launch override, filled from a flag by the launcher or
// `egressd check`. It is decoded and validated exactly like the same key in
// a policy file.
type Setting struct {
	// Key is a field key as in a policy file, "section.key":
	// "network.allow", "network.mode", "process.memory", "env.set".
	Key string
	// Values are the flag's values as text. A scalar key takes exactly one
	// (a boolean "true"/"false", a number in decimal, the rest as in a
	// file). An array key takes each value as one element; a repeated
	// Setting of a set key (allow, block, cap_add, ...) adds to it, one of
	// a list key (default_ports, upstream_dns) replaces it. "env.set"
	// takes "NAME=value" pairs; "filesystem.tmpfs" the string syntax.
	Values []string
	// Source is the flag, e.g. Flag("--allow"): the provenance of the values
	// and the position of errors. Zero means Flag("--" + Key).
	Source Source
}

// overridesLayer decodes per-launch settings as one layer.
func overridesLayer(settings []Setting) (*layer, ErrorList) {
	d := &decoder{}
	l := &layer{name: "flags"}
	for _, s := range settings {
		src := s.Source
		if src == (Source{}) {
			src = Flag("--" + s.Key)
		}
		f, ok := fieldByKey[s.Key]
		if !ok {
			hint := meanHint(s.Key, fieldKeys())
			if s.Key == "profile" || s.Key == "version" {
				hint = "the base profile is ResolveOptions.Profile"
			}
			d.errorf(src, hint, "unknown setting %q", s.Key)
			continue
		}
		flagVal := func(text string) *tval {
			return &tval{kind: tString, str: text, flag: true, pos: src, keyPos: src}
		}
		switch f.kind {
		case scalarField:
			if len(s.Values) != 1 {
				d.errorf(src, "", "%s takes exactly one value, got %d", f.key, len(s.Values))
				continue
			}
			decodeField(d, l, f, flagVal(s.Values[0]))
		case setField, listField:
			arr := &tval{kind: tArray, pos: src, keyPos: src}
			for _, text := range s.Values {
				arr.elems = append(arr.elems, flagVal(text))
			}
			decodeField(d, l, f, arr)
		case mapField:
			tbl := &tval{kind: tTable, pos: src, keyPos: src}
			for _, text := range s.Values {
				name, val, ok := strings.Cut(text, "=")
				if !ok {
					d.errorf(src, "write NAME=value", "%s: %s has no '='", f.key, strconv.Quote(text))
					continue
				}
				if _, dup := tbl.m[name]; dup {
					d.errorf(src, "", "%s: %s given twice", f.key, name)
					continue
				}
				tbl.set(name, flagVal(val))
			}
			decodeField(d, l, f, tbl)
		}
	}
	return l, d.errs
}
