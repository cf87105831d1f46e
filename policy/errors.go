package policy

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// Error is one problem found in a policy file or a per-launch flag, with
// where it is and, when there is an obvious fix, how to fix it.
type Error struct {
	// Pos locates the problem: a file position (File, Line, Col; Line and
	// Col are 1-based, Col counts bytes) or the flag that carried the value.
	Pos Source
	// Msg says what is wrong.
	Msg string
	// Hint, if not empty, says how to fix it ("did you mean "allow"?").
	Hint string
}

// Error renders "file:line:col: message (hint)".
func (e *Error) Error() string {
	var b strings.Builder
	if p := positionString(e.Pos); p != "" {
		b.WriteString(p)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Hint != "" {
		b.WriteString(" (")
		b.WriteString(e.Hint)
		b.WriteString(")")
	}
	return b.String()
}

// ErrorList is every problem found in one validation or resolution, sorted
// by position. A non-empty ErrorList is returned as the error; an empty one
// never is.
type ErrorList []*Error

// Error renders one error per line.
func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find an individual *Error.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// sortByPosition orders the errors of one layer by line, then column;
// errors at the same place keep the order they were found in.
func sortByPosition(l ErrorList) {
	slices.SortStableFunc(l, func(a, b *Error) int {
		if c := cmp.Compare(a.Pos.Line, b.Pos.Line); c != 0 {
			return c
		}
		return cmp.Compare(a.Pos.Col, b.Pos.Col)
	})
}

// Warning is a problem that does not stop a policy from loading: a rule that
// can have no effect, or one that is probably a mistake.
type Warning struct {
	// Source locates the value the warning is about.
	Source Source
	// Msg says what is wrong and, where it helps, what to do.
	Msg string
}

// String renders "file:line:col: warning: message".
func (w Warning) String() string {
	if p := positionString(w.Source); p != "" {
		return p + ": warning: " + w.Msg
	}
	return "warning: " + w.Msg
}

// positionString renders a source with its column: "policy.toml:12:3" for a
// file position, Source.String() for the rest.
func positionString(s Source) string {
	if s.Kind == SourceFile && s.Line > 0 && s.Col > 0 {
		return s.File + ":" + strconv.Itoa(s.Line) + ":" + strconv.Itoa(s.Col)
	}
	return s.String()
}

// didYouMean returns the candidate closest to s by edit distance (case
// folded), or "" if none is close enough to be a likely typo.
func didYouMean(s string, candidates []string) string {
	ls := strings.ToLower(s)
	best, bestD := "", -1
	for _, c := range candidates {
		d := editDistance(ls, strings.ToLower(c))
		if bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	limit := max(1, min(3, len(s)/3))
	if bestD < 0 || bestD > limit {
		return ""
	}
	return best
}

// editDistance is the optimal-string-alignment distance between a and b,
// in bytes: insertions, deletions, substitutions and transpositions of
// neighbours ("blokc" → "block") each count one. Inputs longer than 64
// bytes are never typos of a known key; they get a distance larger than any
// limit without the quadratic work.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 20
	}
	// d[i][j] is the distance between a[:i] and b[:j].
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// meanHint renders a did-you-mean hint for s among candidates, quoting the
// suggestion, or "" if none is close.
func meanHint(s string, candidates []string) string {
	if m := didYouMean(s, candidates); m != "" {
		return "did you mean " + strconv.Quote(m) + "?"
	}
	return ""
}
