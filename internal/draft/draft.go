// Package draft writes policy files meant for a person to review before
// use: the output of `egressd policy import` and `egressd policy suggest`.
// Every value carries a comment saying where it came from, the file opens
// with a header, and Render refuses to hand out a file that egressd itself
// would not accept (it parses and resolves its own output).
//
//	importer / suggester ─► Policy{Header, Profile, Values, Lists}
//	                               │ Render
//	                               ▼
//	                   TOML text ─► policy.ParseFile + ResolveFiles ─► ok, or an error (a bug)
package draft

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/egressd/egressd/policy"
)

// Policy is a policy file being drafted. The zero value is an empty policy
// (version 1, the default profile, no keys).
type Policy struct {
	// Header lines are written as comments at the top, one "# " line each.
	Header []string
	// Profile is the built-in base profile; "" leaves the key out (the file
	// then layers on whatever profile the launch names, standard by default).
	Profile        string
	ProfileComment string
	// Values are scalar keys ("network.mode"), written in the order given
	// within each section.
	Values []Value
	// Lists are array keys ("network.allow"), one element per line.
	Lists []List
}

// Value is one scalar key. TOML is the value as TOML text (String, Bool,
// Int, Float build it).
type Value struct {
	Key, TOML, Comment string
}

// List is one array key; an empty Items writes `key = []`.
type List struct {
	Key     string
	Comment string
	Items   []Item
}

// Item is one array element, a string.
type Item struct {
	Text, Comment string
}

// String renders s as a TOML basic string.
func String(s string) string { return policy.TOMLString(s) }

// Bool renders b as TOML.
func Bool(b bool) string { return strconv.FormatBool(b) }

// Int renders n as TOML.
func Int(n int64) string { return strconv.FormatInt(n, 10) }

// Float renders f as a TOML float (always with a fraction or exponent).
func Float(f float64) string {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eEn") { // not inf/nan, no fraction yet
		s += ".0"
	}
	return s
}

// Quote renders text from a file egressd did not write (a regex, a glob, a
// path) for a comment or a message: quoted, ASCII only, control characters
// escaped, so nothing in it can end the comment or hide in a terminal.
func Quote(s string) string { return strconv.QuoteToASCII(s) }

// sections in the order egressd's own files list them.
var sections = []string{"network", "filesystem", "process", "env", "commands"}

// Add sets a scalar key.
func (p *Policy) Add(key, toml, comment string) {
	p.Values = append(p.Values, Value{Key: key, TOML: toml, Comment: comment})
}

// Append adds an element to the list key, creating the list if needed.
func (p *Policy) Append(key, text, comment string) {
	l := p.list(key)
	l.Items = append(l.Items, Item{Text: text, Comment: comment})
}

// Has reports whether the list key has an element text.
func (p *Policy) Has(key, text string) bool {
	for _, l := range p.Lists {
		if l.Key != key {
			continue
		}
		for _, it := range l.Items {
			if it.Text == text {
				return true
			}
		}
	}
	return false
}

// EnsureList makes the list key present (written as `key = []` when empty).
func (p *Policy) EnsureList(key, comment string) {
	l := p.list(key)
	if l.Comment == "" {
		l.Comment = comment
	}
}

func (p *Policy) list(key string) *List {
	for i := range p.Lists {
		if p.Lists[i].Key == key {
			return &p.Lists[i]
		}
	}
	p.Lists = append(p.Lists, List{Key: key})
	return &p.Lists[len(p.Lists)-1]
}

// Text renders the policy without checking it.
func (p *Policy) Text() []byte {
	var b bytes.Buffer
	for _, h := range p.Header {
		b.WriteString(strings.TrimRight("# "+oneLine(h), " "))
		b.WriteByte('\n')
	}
	b.WriteString("version = 1\n")
	if p.Profile != "" {
		b.WriteString("profile = " + String(p.Profile) + comment(p.ProfileComment) + "\n")
	}
	for _, sec := range sections {
		var lines []string
		for _, v := range p.Values {
			if s, k, _ := strings.Cut(v.Key, "."); s == sec {
				lines = append(lines, k+" = "+v.TOML+comment(v.Comment))
			}
		}
		for _, l := range p.Lists {
			s, k, _ := strings.Cut(l.Key, ".")
			if s != sec {
				continue
			}
			if len(l.Items) == 0 {
				lines = append(lines, k+" = []"+comment(l.Comment))
				continue
			}
			var lb strings.Builder
			lb.WriteString(k + " = [" + comment(l.Comment) + "\n")
			for _, it := range l.Items {
				lb.WriteString("  " + String(it.Text) + "," + comment(it.Comment) + "\n")
			}
			lb.WriteString("]")
			lines = append(lines, lb.String())
		}
		if len(lines) == 0 {
			continue
		}
		b.WriteString("\n[" + sec + "]\n")
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	return b.Bytes()
}

// Render renders the policy and checks it as `egressd validate` would: it
// must parse and resolve on its own. The warnings are those validate would
// print. An error means the drafter produced something egressd refuses —
// a bug, never to be printed as a policy.
func (p *Policy) Render(name string) ([]byte, []policy.Warning, error) {
	text := p.Text()
	f, err := policy.ParseFile(name, text)
	if err != nil {
		return nil, nil, fmt.Errorf("the drafted policy does not parse (a bug in egressd): %w", err)
	}
	_, warnings, err := policy.ResolveFiles("", []*policy.File{f}, nil, "")
	if err != nil {
		return nil, nil, fmt.Errorf("the drafted policy does not resolve (a bug in egressd): %w", err)
	}
	return text, warnings, nil
}

func comment(c string) string {
	if c == "" {
		return ""
	}
	return " # " + oneLine(c)
}

// oneLine keeps a comment on its line: TOML comments end at a newline and
// may not hold control characters.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// Check reports whether egressd accepts toml as the value of key (a
// "section.name" key; for a list key, toml is one element). The error is
// egressd's own message, without a position.
func Check(key, toml string) error {
	sec, name, _ := strings.Cut(key, ".")
	text := "version = 1\n[" + sec + "]\n" + name + " = " + toml + "\n"
	if isList(key) {
		text = "version = 1\n[" + sec + "]\n" + name + " = [" + toml + "]\n"
	}
	_, err := policy.ParseFile("", []byte(text))
	var list policy.ErrorList
	if errors.As(err, &list) && len(list) > 0 {
		e := *list[0]
		e.Pos = policy.Source{}
		return &e
	}
	return err
}

// listKeys are the policy keys that hold arrays.
var listKeys = []string{"network.allow", "network.block", "network.default_ports", "network.upstream_dns",
	"filesystem.tmpfs", "process.cap_add", "env.pass", "commands.allow", "commands.block"}

func isList(key string) bool {
	for _, k := range listKeys {
		if k == key {
			return true
		}
	}
	return false
}
