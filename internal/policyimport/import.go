package policyimport

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/egressd/egressd/internal/draft"
	"github.com/egressd/egressd/policy"
)

// Effect says how a difference between the source and the imported policy
// changes what the sandbox may do.
type Effect uint8

const (
	// Note: no effect on what the sandbox can reach or do (a setting of the
	// source tool's own machinery, a comment-worthy fact).
	Note Effect = iota
	// Narrower: the imported policy denies something the source allowed.
	Narrower
	// Review: the two differ in a way the import cannot rank (two
	// different syscall lists, say); a person should compare them.
	Review
	// Broader: the imported policy may allow something the source denied.
	// Import reports it; `egressd policy import` exits 1.
	Broader
)

func (e Effect) String() string {
	switch e {
	case Narrower:
		return "narrower"
	case Review:
		return "review"
	case Broader:
		return "BROADER"
	}
	return "note"
}

// Warning is one thing the import could not carry over exactly.
type Warning struct {
	// Pos is "file:line" of the source value ("file" when unknown).
	Pos string
	// Field names the source value: "network.whitelist[2]".
	Field  string
	Effect Effect
	Msg    string

	line int // for ordering
}

// String renders "file:line: effect: field: message".
func (w Warning) String() string {
	var b strings.Builder
	b.WriteString(w.Pos)
	b.WriteString(": ")
	b.WriteString(w.Effect.String())
	b.WriteString(": ")
	if w.Field != "" {
		b.WriteString(w.Field)
		b.WriteString(": ")
	}
	b.WriteString(w.Msg)
	return b.String()
}

// Result is an imported policy.
type Result struct {
	// Policy is the egressd policy file, TOML, every value commented with
	// where it came from. It passes `egressd validate`.
	Policy []byte
	// Warnings are what the import could not carry over exactly, in the
	// order of the source file.
	Warnings []Warning
	// Validate are the warnings `egressd validate` prints for Policy.
	Validate []policy.Warning
}

// Broader reports whether the policy may allow something the source
// denied (some Warning has Effect Broader).
func (r *Result) Broader() bool {
	for _, w := range r.Warnings {
		if w.Effect == Broader {
			return true
		}
	}
	return false
}

// Options tune an import.
type Options struct {
	// Service is the smokescreen service whose rule is imported; "" is the
	// ACL's default rule. Other formats refuse a service.
	Service string
}

// SourceError is a source file that cannot be imported at all: it does
// not parse, or the source tool itself would refuse it.
type SourceError struct {
	File string
	Line int // 0 when unknown
	Msg  string
}

func (e *SourceError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return e.File + ": " + e.Msg
}

// format is one source format.
type format struct {
	name    string
	aliases []string
	what    string // for help: what file it reads
	parse   func([]byte) (*node, error)
	run     func(*importer) error
}

var formats = []format{
	{name: "agentkernel", what: "agentkernel.toml ([security], [security.domains], [security.commands], [resources])",
		parse: parseTOML, run: importAgentkernel},
	{name: "isol8", what: "isol8.config.json (defaults, network.whitelist/blacklist regexes, security.seccomp)",
		parse: parseJSON, run: importIsol8},
	{name: "sandbox-runtime", aliases: []string{"srt"}, what: "sandbox-runtime settings, ~/.srt-settings.json (network, filesystem)",
		parse: parseJSON, run: importSandboxRuntime},
	{name: "smokescreen", what: "smokescreen ACL YAML (services, default, global_allow_list, global_deny_list)",
		parse: parseYAML, run: importSmokescreen},
}

// Formats lists the format names Import accepts, with what each reads.
func Formats() [][2]string {
	out := make([][2]string, len(formats))
	for i, f := range formats {
		out[i] = [2]string{f.name, f.what}
	}
	return out
}

func lookup(name string) (*format, bool) {
	for i := range formats {
		f := &formats[i]
		if f.name == name || slices.Contains(f.aliases, name) {
			return f, true
		}
	}
	return nil, false
}

// Import translates the settings file name (contents data) of the given
// format into an egressd policy. A rule is translated only when the
// translation is exact; what cannot be expressed is left out with a
// Warning saying why and whether leaving it out makes the policy narrower
// or broader than the source. A *SourceError means nothing was imported.
func Import(formatName, name string, data []byte, opts Options) (*Result, error) {
	f, ok := lookup(formatName)
	if !ok {
		names := make([]string, len(formats))
		for i, f := range formats {
			names[i] = f.name
		}
		return nil, fmt.Errorf("unknown format %q (one of %s)", formatName, strings.Join(names, ", "))
	}
	if opts.Service != "" && f.name != "smokescreen" {
		return nil, fmt.Errorf("--service applies to smokescreen ACLs only")
	}
	if len(data) > maxSourceSize {
		return nil, &SourceError{File: name, Msg: fmt.Sprintf("%d bytes is more than the limit of %d", len(data), maxSourceSize)}
	}
	root, err := f.parse(data)
	if err != nil {
		return nil, sourceError(name, err)
	}
	im := &importer{file: name, format: f.name, opts: opts, root: root}
	im.out.Header = []string{
		fmt.Sprintf("Imported from %s (%s) by `egressd policy import`.", draft.Quote(name), f.name),
		"Each value says where it came from; review the warnings printed with it.",
	}
	if root.kind != kObject {
		return nil, &SourceError{File: name, Line: root.line, Msg: "the file must hold " + kObject.String() + ", not " + root.kind.String()}
	}
	if err := f.run(im); err != nil {
		return nil, sourceError(name, err)
	}
	if b := im.broaderWarnings(); len(b) > 0 {
		im.out.Header = append(im.out.Header, "", "WARNING: this policy may allow what the source denied:")
		for _, w := range b {
			im.out.Header = append(im.out.Header, "  "+w)
		}
	}
	// In the order of the source file; warnings without a line last.
	sort.SliceStable(im.warnings, func(i, j int) bool {
		li, lj := im.warnings[i].line, im.warnings[j].line
		return li != 0 && (lj == 0 || li < lj)
	})
	text, vw, err := im.out.Render("(imported policy)")
	if err != nil {
		return nil, err
	}
	return &Result{Policy: text, Warnings: im.warnings, Validate: vw}, nil
}

// lineError is an error at a line of the source.
type lineError struct {
	line int
	msg  string
}

func (e *lineError) Error() string { return e.msg }

func sourceError(file string, err error) error {
	var le *lineError
	if errors.As(err, &le) {
		return &SourceError{File: file, Line: le.line, Msg: le.msg}
	}
	var se *SourceError
	if errors.As(err, &se) {
		return se
	}
	msg := err.Error()
	// The tree parsers say "line N: ...".
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, tail, ok := strings.Cut(rest, ": "); ok {
			if n, err := strconv.Atoi(num); err == nil {
				return &SourceError{File: file, Line: n, Msg: tail}
			}
		}
	}
	return &SourceError{File: file, Msg: msg}
}

// importer holds one import in progress.
type importer struct {
	file, format string
	root         *node
	opts         Options
	out          draft.Policy
	warnings     []Warning
	// portNote is set once the "no port means every port" note was given.
	portNote bool
}

// at renders the position of n.
func (im *importer) at(n *node) string {
	if n == nil || n.line == 0 {
		return im.file
	}
	return im.file + ":" + strconv.Itoa(n.line)
}

// warn records a warning about source value n.
func (im *importer) warn(n *node, eff Effect, format string, args ...any) {
	w := Warning{Pos: im.at(n), Effect: eff, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		w.Field, w.line = n.path, n.line
	}
	im.warnings = append(im.warnings, w)
}

func (im *importer) broaderWarnings() []string {
	var out []string
	for _, w := range im.warnings {
		if w.Effect == Broader {
			out = append(out, w.Field+": "+w.Msg)
		}
	}
	return out
}

// origin is the comment for a value imported from n: `network.whitelist[0]
// "^a\\.b$" (file:12)`.
func (im *importer) origin(n *node) string {
	s := n.path
	switch n.kind {
	case kString:
		s += " " + draft.Quote(n.str)
	case kNumber:
		s += " = " + n.str
	case kBool:
		s += " = " + strconv.FormatBool(n.b)
	}
	return s + " (" + im.at(n) + ")"
}

// typeError is a source value of the wrong type: the source tool would
// refuse the file, so the import does too.
func (im *importer) typeError(n *node, want string) error {
	return &lineError{line: n.line, msg: fmt.Sprintf("%s must be %s, not %s", n.path, want, n.kind)}
}

// object returns the object at key of parent (nil if absent).
func (im *importer) object(parent *node, key string) (*node, error) {
	n := parent.get(key)
	if n == nil || n.kind == kNull {
		return nil, nil
	}
	if n.kind != kObject {
		return nil, im.typeError(n, "a table/object")
	}
	return n, nil
}

func (im *importer) str(parent *node, key string) (*node, error) {
	n := parent.get(key)
	if n == nil || n.kind == kNull {
		return nil, nil
	}
	if n.kind != kString {
		return nil, im.typeError(n, "a string")
	}
	return n, nil
}

func (im *importer) boolean(parent *node, key string) (*node, error) {
	n := parent.get(key)
	if n == nil || n.kind == kNull {
		return nil, nil
	}
	if n.kind != kBool {
		return nil, im.typeError(n, "a boolean")
	}
	return n, nil
}

func (im *importer) number(parent *node, key string) (*node, error) {
	n := parent.get(key)
	if n == nil || n.kind == kNull {
		return nil, nil
	}
	if n.kind != kNumber {
		return nil, im.typeError(n, "a number")
	}
	return n, nil
}

// strings returns the elements of the string array at key.
func (im *importer) strings(parent *node, key string) ([]*node, error) {
	n := parent.get(key)
	if n == nil || n.kind == kNull {
		return nil, nil
	}
	if n.kind != kArray {
		return nil, im.typeError(n, "an array of strings")
	}
	for _, e := range n.elems {
		if e.kind != kString {
			return nil, im.typeError(e, "a string")
		}
	}
	return n.elems, nil
}

// keys checks n's keys against those the import knows; an unknown one is
// reported as Broader: whatever it restricts is not carried over.
// ignored maps keys of the source tool's own machinery to why they do not
// matter to a policy; each present one gets a Note.
func (im *importer) keys(n *node, known []string, ignored map[string]string) {
	if n == nil {
		return
	}
	for _, k := range n.keys {
		if slices.Contains(known, k) {
			continue
		}
		if why, ok := ignored[k]; ok {
			if why != "" {
				im.warn(n.fields[k], Note, "not imported: %s", why)
			}
			continue
		}
		im.warn(n.fields[k], Broader, "not a setting this import knows for %s; whatever it restricts is not carried over", im.format)
	}
}

// rule adds an allow or block rule translated from src, refusing it (with a
// warning) when egressd does not accept the pattern. A refused allow rule
// makes the policy narrower; a refused block rule broader.
func (im *importer) rule(list string, pattern string, src *node, comment string) bool {
	if _, err := policy.ParseRule(pattern, policy.Source{}); err != nil {
		eff, what := Narrower, "not allowed"
		if list == "network.block" {
			eff, what = Broader, "NOT blocked"
		}
		var pe *policy.PatternError
		msg := err.Error()
		if errors.As(err, &pe) {
			msg = pe.Msg
		}
		im.warn(src, eff, "%s: %s is not an egressd pattern (%s)", what, draft.Quote(pattern), msg)
		return false
	}
	if im.out.Has(list, pattern) {
		return true
	}
	im.out.Append(list, pattern, comment)
	return true
}

// anyPort notes, once, that the source's rules without a port allow every
// port while egressd's allow default_ports.
func (im *importer) anyPort(n *node) {
	if im.portNote {
		return
	}
	im.portNote = true
	im.warn(n, Narrower, "%s allows every port of an allowed host; an egressd rule without a port allows network.default_ports (80, 443): add \"host:PORT\" rules for others", im.format)
}

// set adds a scalar value after checking egressd accepts it.
func (im *importer) set(key, toml string, src *node, comment string) bool {
	if err := draft.Check(key, toml); err != nil {
		im.warn(src, Review, "not imported: %s = %s: %v", key, toml, err)
		return false
	}
	im.out.Add(key, toml, comment)
	return true
}

// baseProfile chooses the built-in base: offline for no network, else
// strict (an empty allow list), so nothing the source does not allow comes
// in through the base (standard's built-in allow list, open's root user).
// Every setting the source defines is then written out explicitly.
func (im *importer) baseProfile(mode policy.Mode, why string) {
	im.out.Profile = "strict"
	if mode == policy.ModeNone {
		im.out.Profile = "offline"
	}
	im.out.ProfileComment = "the strictest built-in with this network mode; every setting of the source is written out below"
	im.out.Add("network.mode", draft.String(string(mode)), why)
}
