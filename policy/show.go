package policy

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
)

// TOML renders the profile as a complete policy file (for `egressd profile
// show`): every field, in schema order. Values that did not come from the
// base built-in carry their source as a comment. Resolving the output on its
// own gives back the same values.
func (p *Profile) TOML() ([]byte, error) {
	var b bytes.Buffer
	base := Builtin(p.Name)
	comment := func(src Source) string {
		if src == base || src.Kind == SourceNone {
			return ""
		}
		return " # " + positionString(src)
	}
	fmt.Fprintf(&b, "version = %d\nprofile = %s%s\n", FileVersion, tomlString(p.Name), comment(p.Sources["profile"]))
	for _, section := range sections {
		fmt.Fprintf(&b, "\n[%s]\n", section)
		var tables []*field
		for _, f := range fields {
			if f.section != section {
				continue
			}
			switch f.kind {
			case scalarField:
				fmt.Fprintf(&b, "%s = %s%s\n", f.name, f.render(p), comment(p.Sources[f.key]))
			case listField:
				_, text := f.items(p)
				fmt.Fprintf(&b, "%s = [%s]%s\n", f.name, strings.Join(text, ", "), comment(p.Sources[f.key]))
			case setField:
				ids, text := f.items(p)
				if len(ids) == 0 {
					fmt.Fprintf(&b, "%s = []\n", f.name)
					continue
				}
				fmt.Fprintf(&b, "%s = [\n", f.name)
				for i := range ids {
					fmt.Fprintf(&b, "  %s,%s\n", text[i], comment(p.Sources[elemKey(f.key, ids[i])]))
				}
				b.WriteString("]\n")
			case mapField:
				tables = append(tables, f)
			}
		}
		for _, f := range tables {
			fmt.Fprintf(&b, "\n[%s]\n", f.key)
			for _, name := range sortedKeys(p.Env.Set) {
				fmt.Fprintf(&b, "%s = %s%s\n", tomlKey(name), tomlString(p.Env.Set[name]), comment(p.Sources["env.set."+name]))
			}
		}
	}
	return b.Bytes(), nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Provenance is one value of a resolved profile and where it came from, for
// `launcher explain` and `GET /policy`.
type Provenance struct {
	// Field is the field key, "process.memory"; list fields appear once per
	// element.
	Field string `json:"field"`
	// Value is the value as TOML ("4GiB" quoted, 256, true). env.set values
	// are shown as "<redacted>": they may hold credentials.
	Value string `json:"value"`
	// Source is where the value came from: "policy.toml:12",
	// "builtin:standard", "flag:--allow".
	Source string `json:"source"`
}

// Explain lists every value of the profile with its source, in schema
// order. An empty set field is listed once with Value "[]".
func (p *Profile) Explain() []Provenance {
	var out []Provenance
	add := func(field, value string, src Source) {
		out = append(out, Provenance{Field: field, Value: value, Source: src.String()})
	}
	add("profile", tomlString(p.Name), p.Sources["profile"])
	for _, f := range fields {
		switch f.kind {
		case scalarField:
			add(f.key, f.render(p), p.Sources[f.key])
		case listField:
			_, text := f.items(p)
			add(f.key, "["+strings.Join(text, ", ")+"]", p.Sources[f.key])
		case setField:
			ids, text := f.items(p)
			if len(ids) == 0 {
				add(f.key, "[]", p.Sources[f.key])
			}
			for i := range ids {
				add(f.key, text[i], p.Sources[elemKey(f.key, ids[i])])
			}
		case mapField:
			for _, name := range sortedKeys(p.Env.Set) {
				add("env.set."+name, tomlString("<redacted>"), p.Sources["env.set."+name])
			}
		}
	}
	return out
}

// FormatProvenance renders an Explain listing as aligned text, one value
// per line: `network.mode  "filtered"  builtin:standard`.
func FormatProvenance(list []Provenance) string {
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, e := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", e.Field, e.Value, e.Source)
	}
	tw.Flush()
	return b.String()
}
