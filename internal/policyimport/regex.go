package policyimport

import (
	"fmt"
	"regexp/syntax"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/egressd/egressd/policy"
)

// Hostname regexes (isol8's network.whitelist/blacklist) are translated
// into egressd patterns only when the translation is exact: for every valid
// host name, the pattern matches it if and only if the regex does (a regex
// matches a host when it matches somewhere in it, as JavaScript's
// RegExp.test and grep -E do; host names compare case-insensitively, as DNS
// does). Anything else is refused, never approximated: a wider allow would
// let the sandbox reach what the source denied, a narrower block the same.
//
// The translatable regexes are alternatives of sequences of
//
//	^ $              anchors, at the ends only
//	literal text     host name characters; \. or [.] for a dot
//	.* .+            any run of characters (becomes **)
//	[^.]* [^.]+      a run inside one label (becomes * and ?*)
//	(...)? (a|b)     expanded into their alternatives (at most maxAlternatives)
//
// An unanchored end is a run of anything: `github\.com$` matches
// evilgithub.com, and translates to the glob **github.com, which does too.

// maxAlternatives bounds the sequences one regex expands into.
const maxAlternatives = 16

// atomKind is one element of an expanded regex sequence.
type atomKind uint8

const (
	aBegin atomKind = iota // ^
	aEnd                   // $
	aLit                   // literal text
	aAny                   // any run of characters, at least min
	aLabel                 // a run of non-'.' characters, at least min
)

type atom struct {
	kind atomKind
	lit  string
	min  int
}

// errNonASCII: egressd compares names in their ASCII (punycode) form, and
// case folding outside ASCII is not DNS's.
var errNonASCII = unsupported("non-ASCII text has no egressd pattern; write the name's A-label (xn--…)")

// unsupported is a regex construct that cannot be translated exactly.
type unsupported string

func (u unsupported) Error() string { return string(u) }

// Translation is the result of translating one regex.
type Translation struct {
	// Patterns are egressd patterns that together match exactly the valid
	// host names the regex matches. Empty with Err nil: the regex matches
	// no valid host name.
	Patterns []string
	// IPs reports whether a name pattern among Patterns stands for a regex
	// that may also match IPv4 address text (its literal text is all digits
	// and dots), which egressd's name patterns never match: only IP rules
	// match addresses.
	IPs bool
	// Err says why the regex cannot be translated exactly.
	Err error
}

// TranslateRegex translates a hostname regex (see above).
func TranslateRegex(expr string) Translation {
	re, err := syntax.Parse(expr, syntax.Perl|syntax.FoldCase) // host names compare case-insensitively
	if err != nil {
		return Translation{Err: fmt.Errorf("not a valid regular expression: %v", err)}
	}
	seqs, err := expand(re.Simplify())
	if err != nil {
		return Translation{Err: err}
	}
	var t Translation
	for _, seq := range seqs {
		pat, ips, err := sequencePattern(seq)
		if err != nil {
			return Translation{Err: err}
		}
		if pat != "" {
			if _, err := policy.ParseRule(pat, policy.Source{}); err != nil {
				return Translation{Err: fmt.Errorf("its translation %s is refused by egressd: %v", pat, err)}
			}
		}
		t.IPs = t.IPs || ips
		if pat != "" && !slices.Contains(t.Patterns, pat) {
			t.Patterns = append(t.Patterns, pat)
		}
	}
	t.Patterns = mergeApex(t.Patterns)
	return t
}

// mergeApex writes "x" and "*.x" as the one pattern ".x".
func mergeApex(pats []string) []string {
	var out []string
	for _, p := range pats {
		if s, ok := strings.CutPrefix(p, "*."); ok && slices.Contains(pats, s) {
			out = append(out, "."+s)
			continue
		}
		if slices.Contains(pats, "*."+p) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// expand turns a regex into the alternatives it matches, each a sequence
// of atoms.
func expand(re *syntax.Regexp) ([][]atom, error) {
	switch re.Op {
	case syntax.OpEmptyMatch:
		return [][]atom{nil}, nil
	case syntax.OpNoMatch:
		return nil, nil
	case syntax.OpBeginLine, syntax.OpBeginText:
		return [][]atom{{{kind: aBegin}}}, nil
	case syntax.OpEndLine, syntax.OpEndText:
		return [][]atom{{{kind: aEnd}}}, nil
	case syntax.OpLiteral:
		for _, r := range re.Rune {
			if r >= utf8.RuneSelf {
				return nil, errNonASCII
			}
		}
		return [][]atom{{{kind: aLit, lit: string(re.Rune)}}}, nil
	case syntax.OpCharClass:
		if r, ok := singleRune(re.Rune); ok {
			if r >= utf8.RuneSelf {
				return nil, errNonASCII
			}
			return [][]atom{{{kind: aLit, lit: string(r)}}}, nil
		}
		return nil, unsupported("a character class matching one of several characters (" + re.String() + ") has no egressd pattern")
	case syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		return nil, unsupported("`.` alone matches any one character, a dot included; egressd's `?` never matches a dot (write `\\.` for a literal dot)")
	case syntax.OpStar, syntax.OpPlus:
		min := 0
		if re.Op == syntax.OpPlus {
			min = 1
		}
		switch sub := re.Sub[0]; {
		case sub.Op == syntax.OpAnyChar || sub.Op == syntax.OpAnyCharNotNL:
			return [][]atom{{{kind: aAny, min: min}}}, nil
		case sub.Op == syntax.OpCharClass && labelClass(sub.Rune):
			return [][]atom{{{kind: aLabel, min: min}}}, nil
		case sub.Op == syntax.OpCharClass:
			return nil, unsupported("a repeated character class other than `.` or `[^.]`: egressd's `*` matches every host name character but '.' ('_' included), which is wider")
		}
		return nil, unsupported("a repeated group (" + re.String() + ") has no egressd pattern")
	case syntax.OpQuest:
		sub, err := expand(re.Sub[0])
		if err != nil {
			return nil, err
		}
		return limit(append(sub, nil))
	case syntax.OpCapture:
		return expand(re.Sub[0])
	case syntax.OpAlternate:
		var out [][]atom
		for _, s := range re.Sub {
			alts, err := expand(s)
			if err != nil {
				return nil, err
			}
			out = append(out, alts...)
			if _, err := limit(out); err != nil {
				return nil, err
			}
		}
		return out, nil
	case syntax.OpConcat:
		out := [][]atom{nil}
		for _, s := range re.Sub {
			alts, err := expand(s)
			if err != nil {
				return nil, err
			}
			var next [][]atom
			for _, a := range out {
				for _, b := range alts {
					next = append(next, append(slices.Clip(a), b...))
				}
			}
			if out, err = limit(next); err != nil {
				return nil, err
			}
		}
		return out, nil
	case syntax.OpRepeat:
		return nil, unsupported("a counted repeat (" + re.String() + ") has no egressd pattern")
	}
	return nil, unsupported("`" + re.String() + "` (word boundaries, lazy or other special forms) has no egressd pattern")
}

func limit(seqs [][]atom) ([][]atom, error) {
	if len(seqs) > maxAlternatives {
		return nil, unsupported(fmt.Sprintf("expands into more than %d alternatives", maxAlternatives))
	}
	return seqs, nil
}

// singleRune reports whether a class holds one character, or one letter in
// both cases ([Aa]): host names compare case-insensitively.
func singleRune(ranges []rune) (rune, bool) {
	var runes []rune
	for i := 0; i+1 < len(ranges); i += 2 {
		if ranges[i+1]-ranges[i] > 1 {
			return 0, false
		}
		for r := ranges[i]; r <= ranges[i+1]; r++ {
			runes = append(runes, r)
		}
	}
	switch len(runes) {
	case 1:
		return runes[0], true
	case 2:
		if unicode.ToLower(runes[0]) == unicode.ToLower(runes[1]) {
			return unicode.ToLower(runes[0]), true
		}
	}
	return 0, false
}

// labelClass reports whether a class matches exactly what egressd's `*`
// matches inside a label, on valid host names: every name byte but '.'.
func labelClass(ranges []rune) bool {
	in := func(c rune) bool {
		for i := 0; i+1 < len(ranges); i += 2 {
			if ranges[i] <= c && c <= ranges[i+1] {
				return true
			}
		}
		return false
	}
	if in('.') {
		return false
	}
	for _, c := range "abcdefghijklmnopqrstuvwxyz0123456789-_" {
		if !in(c) {
			return false
		}
	}
	return true
}

// sequencePattern turns one sequence into an egressd pattern; "" when the
// sequence can match no valid host name. ips reports whether it can match
// IPv4 address text.
func sequencePattern(seq []atom) (pattern string, ips bool, err error) {
	begin, end := false, false
	for len(seq) > 0 && seq[0].kind == aBegin {
		seq, begin = seq[1:], true
	}
	for len(seq) > 0 && seq[len(seq)-1].kind == aEnd {
		seq, end = seq[:len(seq)-1], true
	}
	for _, a := range seq {
		if a.kind == aBegin || a.kind == aEnd {
			return "", false, unsupported("`^` or `$` in the middle of a regex has no egressd pattern")
		}
	}
	// An unanchored end matches anything there.
	if !begin {
		seq = append([]atom{{kind: aAny}}, seq...)
	}
	if !end {
		seq = append(seq, atom{kind: aAny})
	}
	// Merge neighbours: literals join; runs join into the wider kind.
	var m []atom
	for _, a := range seq {
		if a.kind == aLit {
			a.lit = policy.LowerASCII(a.lit)
		}
		if n := len(m); n > 0 {
			last := &m[n-1]
			switch {
			case last.kind == aLit && a.kind == aLit:
				last.lit += a.lit
				continue
			case last.kind != aLit && a.kind != aLit:
				if a.kind == aAny {
					last.kind = aAny
				}
				last.min += a.min
				continue
			}
		}
		m = append(m, a)
	}
	var b strings.Builder
	digitsOnly := true
	for i, a := range m {
		switch a.kind {
		case aLit:
			for j := 0; j < len(a.lit); j++ {
				c := a.lit[j]
				if !nameChar(c) {
					// No valid host name holds c: the sequence matches none.
					return "", false, nil
				}
				if c != '.' && (c < '0' || c > '9') {
					digitsOnly = false
				}
			}
			b.WriteString(a.lit)
		case aLabel:
			switch a.min {
			case 0:
				b.WriteString("*")
			case 1:
				b.WriteString("?*")
			default:
				return "", false, unsupported("a run of at least two characters has no egressd pattern")
			}
		case aAny:
			if a.min > 1 || a.min == 1 && !emptyIsInvalid(m, i) {
				return "", false, unsupported("`.+` where an empty match would still leave a valid host name has no egressd pattern (`**` also matches nothing)")
			}
			b.WriteString("**")
		}
	}
	pat := b.String()
	if strings.Contains(pat, "..") || strings.HasPrefix(pat, ".") || strings.HasSuffix(pat, ".") {
		// Every match has an empty label: no valid host name.
		return "", false, nil
	}
	if rest, ok := strings.CutPrefix(pat, "**."); ok && !strings.ContainsAny(rest, "*?") {
		pat = "*." + rest // the same names, written the usual way
	}
	switch pat {
	case "**":
		pat = "*" // every name
	case "*":
		pat = "?*" // one label; egressd's lone `*` would be every name
	}
	if _, ok := policy.ParseIP(pat); ok {
		return pat, false, nil // an IP rule matches the address exactly
	}
	if !strings.ContainsAny(pat, "*?") {
		if _, ok := policy.NormalizeName(pat); !ok {
			return "", false, nil // a name egressd refuses as invalid
		}
	}
	return pat, digitsOnly, nil
}

// emptyIsInvalid reports whether the run m[i] matching nothing would leave
// only invalid names (a leading, trailing or doubled dot), so `.+` there
// means the same as `.*`.
func emptyIsInvalid(m []atom, i int) bool {
	leftDot := i == 0 || m[i-1].kind == aLit && strings.HasSuffix(m[i-1].lit, ".")
	rightDot := i == len(m)-1 || m[i+1].kind == aLit && strings.HasPrefix(m[i+1].lit, ".")
	return leftDot && rightDot
}

func nameChar(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.'
}
