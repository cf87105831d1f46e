package policy

import (
	"slices"
	"strconv"
)

// Validate checks one policy file as `egressd validate` does: it parses and
// validates the file, resolves it on the built-in profile it names (or
// DefaultProfile), and returns the warnings. The error is an ErrorList with
// one `file:line:col: message (hint)` per problem.
func Validate(file string) ([]Warning, error) {
	_, warnings, err := Resolve(ResolveOptions{Files: []string{file}})
	return warnings, err
}

// analyse warns about rules that can have no effect or are likely mistakes.
// Rules of the built-in profile are not warned about one by one: the
// operator did not write them.
func (r *resolver) analyse() {
	p := r.p
	n := p.Network
	modeSrc := positionString(p.Sources["network.mode"])
	r.analyseInspection()
	switch n.Mode {
	case ModeNone:
		builtin := 0
		for _, a := range n.Allow {
			if a.Source.Kind == SourceBuiltin {
				builtin++
				continue
			}
			r.warn(a.Source, "allow %q has no effect: network.mode = none (%s) allows no traffic at all", a.Text, modeSrc)
		}
		if builtin > 0 {
			r.warn(p.Sources["network.mode"], "network.mode = none: the %d allow rules of builtin:%s have no effect", builtin, p.Name)
		}
		return
	case ModeHost:
		builtin := 0
		for _, list := range []struct {
			kind  string
			rules []*Rule
		}{{"allow", n.Allow}, {"block", n.Block}} {
			for _, a := range list.rules {
				if a.Source.Kind == SourceBuiltin {
					builtin++
					continue
				}
				r.warn(a.Source, "%s %q is not enforced: network.mode = host (%s) does not filter traffic", list.kind, a.Text, modeSrc)
			}
		}
		if builtin > 0 {
			r.warn(p.Sources["network.mode"], "network.mode = host: the %d rules of builtin:%s are not enforced", builtin, p.Name)
		}
		return
	case ModeReport:
		r.warn(p.Sources["network.mode"], "%s", ReportModeMeaning+" (the floors standard and strict refuse it)")
	}

	// Broad allow rules and guard lifts, in the words of the floor's
	// refusal (allowRisk).
	for _, a := range n.Allow {
		if a.Source.Kind == SourceBuiltin {
			continue
		}
		what, refused := allowRisk(a)
		if what == "" {
			continue
		}
		msg := "network.allow " + strconv.Quote(a.Text) + " " + what
		if _, lifts := liftedGuard(a); lifts {
			msg += ": the sandbox can reach those addresses"
		}
		if refused {
			msg += " (the floors standard and strict refuse it)"
		}
		r.warn(a.Source, "%s", msg)
	}

	var blockAll *Rule
	for _, b := range n.Block {
		if lo, hi := b.portRange(); b.breadth().class == everyName && lo == 1 && hi == 65535 {
			blockAll = b
			r.warn(b.Source, "block %q blocks every name, so no allow rule can take effect (filtered mode already denies what is not allowed)", b.Text)
			break
		}
	}
	if blockAll != nil {
		return // every allow rule is shadowed; one warning says it
	}
	if len(n.Allow)*len(n.Block) > maxShadowPairs {
		r.warn(n.Block[0].Source, "%d allow × %d block rules: too many to check which allow rules a block rule shadows",
			len(n.Allow), len(n.Block))
		return
	}
	for _, a := range n.Allow {
		if a.Source.Kind == SourceBuiltin {
			// Blocking a built-in allow entry is how a tenant removes it.
			continue
		}
		for _, b := range n.Block {
			if b.Covers(a) {
				r.warn(a.Source, "allow %q has no effect: block %q (%s) covers it, and block wins", a.Text, b.Text, positionString(b.Source))
				break
			}
		}
	}
}

// analyseFilesystem warns about filesystem settings that do nothing.
func (r *resolver) analyseFilesystem() {
	f := r.p.Filesystem
	for _, u := range f.Unprotect {
		if !slices.ContainsFunc(f.Protect, func(e string) bool { return ProtectID(e) == ProtectID(u) }) {
			r.warn(r.p.Sources[elemKey("filesystem.unprotect", ProtectID(u))],
				"filesystem.unprotect %q removes nothing: filesystem.protect does not list it", u)
		}
	}
}

// maxShadowPairs bounds the allow × block comparisons of the shadowing
// check (each a Rule.Covers call), so validating a huge policy stays fast.
const maxShadowPairs = 1 << 22
