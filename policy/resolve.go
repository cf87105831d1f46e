package policy

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
)

// ResolveOptions says which layers make up a profile.
type ResolveOptions struct {
	// Profile is the built-in profile to build on (an alias is accepted),
	// as given at launch. "" lets the policy files choose, and the default
	// is DefaultProfile. It is reported as flag:--profile.
	Profile string
	// Files are policy files, applied in order on top of the built-in.
	Files []string
	// Overrides are per-launch settings, applied last.
	Overrides []Setting
	// Floor, if not "", is a built-in profile the result must be at least
	// as restrictive as (CheckFloor).
	Floor string
}

// Resolve builds the profile for one launch: the built-in profile, then each
// policy file in order, then the per-launch overrides.
//
// Merging: a scalar takes the value of the last layer that sets it. Allow
// and block rules, tmpfs mounts, cap_add, env.pass and the command lists
// merge by union: an entry appears once, with the source of its first
// appearance, and no later layer can remove one (so nothing removes a
// block). A later tmpfs entry for the same path sets the size and mode it gives
// and adds its options (nosuid, nodev, noexec are never removed). default_ports and upstream_dns are single settings: a later layer
// replaces the whole list. env.set entries merge by name, later wins.
//
// The base profile: every layer that names one (Profile, then each file's
// `profile = "..."`) must name the same (aliases count as their profile);
// two different names are an error, since a file written for strict is not
// meant to be loosened by building it on open. The first name chooses; with
// none, DefaultProfile.
//
// The error is an ErrorList of every problem in every file and override
// (files in order, each sorted by position, then overrides), or a
// *FloorError, or (for an unknown floor name) a plain error. The profile is
// nil whenever the error is not. Warnings are returned whenever the layers
// resolved, even with a floor error.
func Resolve(opts ResolveOptions) (*Profile, []Warning, error) {
	var errs ErrorList
	var layers []*layer
	for _, name := range opts.Files {
		data, err := readPolicyFile(name)
		if err != nil {
			errs = append(errs, &Error{Pos: Source{Kind: SourceFile, File: name}, Msg: err.Error()})
			continue
		}
		l, lerrs := parseLayer(name, data)
		errs = append(errs, lerrs...)
		if l != nil {
			layers = append(layers, l)
		}
	}
	flags, ferrs := overridesLayer(opts.Overrides)
	errs = append(errs, ferrs...)
	if len(errs) > 0 {
		return nil, nil, errs
	}
	return resolveLayers(opts.Profile, Flag("--profile"), layers, flags, opts.Floor)
}

// ResolveFiles is Resolve for files already parsed with ParseFile.
func ResolveFiles(profile string, files []*File, overrides []Setting, floor string) (*Profile, []Warning, error) {
	return ResolveFilesFrom(profile, Flag("--profile"), files, overrides, floor)
}

// ResolveFilesFrom is ResolveFiles with the base profile given by
// profileSrc (a request's field, Request("profile")) rather than the
// --profile flag: the source its errors and provenance name.
func ResolveFilesFrom(profile string, profileSrc Source, files []*File, overrides []Setting, floor string) (*Profile, []Warning, error) {
	flags, errs := overridesLayer(overrides)
	if len(errs) > 0 {
		return nil, nil, errs
	}
	layers := make([]*layer, len(files))
	for i, f := range files {
		layers[i] = f.layer
	}
	return resolveLayers(profile, profileSrc, layers, flags, floor)
}

// readPolicyFile reads a file, refusing one larger than MaxFileSize without
// reading it whole.
func readPolicyFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, pathError("cannot open policy file", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, pathError("cannot read policy file", err)
	}
	return data, nil
}

// pathError drops the path a *fs.PathError repeats (the position already
// names the file).
func pathError(what string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", what, pe.Err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// resolver applies layers to a profile and collects warnings.
type resolver struct {
	p        *Profile
	warnings []Warning
	// order ranks sources by layer, for sorting warnings.
	order map[string]int
}

func resolveLayers(profile string, profileSrc Source, layers []*layer, flags *layer, floor string) (*Profile, []Warning, error) {
	var errs ErrorList
	base, baseSrc := "", Source{}
	if profile != "" {
		canon, ok := CanonicalProfileName(profile)
		if !ok {
			hint := meanHint(profile, allProfileNames())
			if hint == "" {
				hint = "built-in profiles are " + quotedList(allProfileNames())
			}
			return nil, nil, ErrorList{{Pos: profileSrc, Msg: fmt.Sprintf("unknown profile %q", profile), Hint: hint}}
		}
		base, baseSrc = canon, profileSrc
	}
	for _, l := range layers {
		switch {
		case l.base == "":
		case base == "":
			base, baseSrc = l.base, l.baseSrc
		case l.base != base:
			errs = append(errs, &Error{
				Pos:  l.baseSrc,
				Msg:  fmt.Sprintf("profile %q conflicts with profile %q named at %s", l.base, base, positionString(baseSrc)),
				Hint: "a launch builds on one base profile; name it in one place",
			})
		}
	}
	if len(errs) > 0 {
		return nil, nil, errs
	}
	if base == "" {
		base = DefaultProfile
	}
	p, err := BuiltinProfile(base)
	if err != nil {
		return nil, nil, err
	}
	if baseSrc.Kind != SourceNone {
		p.Sources["profile"] = baseSrc
	}
	r := &resolver{p: p, order: map[string]int{}}
	for i, l := range layers {
		if _, seen := r.order[l.name]; !seen {
			r.order[l.name] = i + 1
		}
		r.apply(l)
	}
	r.order["flags"] = len(layers) + 1
	r.apply(flags)

	errs = append(errs, checkCapsUnderFilter(p)...)
	errs = append(errs, checkInspection(p)...)
	if len(errs) > 0 {
		return nil, nil, errs
	}
	r.analyse()
	r.analyseFilesystem()
	r.sortWarnings()
	if floor != "" {
		if err := CheckFloor(p, floor); err != nil {
			return nil, r.warnings, err
		}
	}
	return p, r.warnings, nil
}

func (r *resolver) warn(src Source, format string, args ...any) {
	r.warnings = append(r.warnings, Warning{Source: src, Msg: fmt.Sprintf(format, args...)})
}

// apply merges one layer into the profile (see Resolve for the rules).
func (r *resolver) apply(l *layer) {
	p := r.p
	for _, a := range l.assigns {
		f := a.f
		switch f.kind {
		case scalarField, listField:
			f.set(p, a.val)
			p.Sources[f.key] = a.src
		case mapField:
			f.set(p, a.val)
			p.Sources["env.set."+a.val.(mapEntry).name] = a.src
		case setField:
			id := f.id(a.val)
			key := elemKey(f.key, id)
			prev, exists := p.Sources[key]
			switch {
			case !exists:
				f.add(p, a.val, a.src)
				p.Sources[key] = a.src
			case f.update != nil:
				f.update(p, a.val, a.src)
				p.Sources[key] = a.src
			case prev.Kind != SourceBuiltin:
				r.warn(a.src, "%s entry %q is listed twice (first at %s)", f.key, id, positionString(prev))
			}
		}
	}
}

// layerRank orders sources for warnings: built-ins, then files in the
// order given, then flags.
func (r *resolver) layerRank(s Source) int {
	switch s.Kind {
	case SourceBuiltin:
		return 0
	case SourceFile:
		if i, ok := r.order[s.File]; ok {
			return i
		}
	}
	return len(r.order) + 1
}

func (r *resolver) sortWarnings() {
	slices.SortStableFunc(r.warnings, func(a, b Warning) int {
		if c := cmp.Compare(r.layerRank(a.Source), r.layerRank(b.Source)); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Source.Line, b.Source.Line); c != 0 {
			return c
		}
		return cmp.Compare(a.Source.Col, b.Source.Col)
	})
}

// filterBreakingCaps are capabilities that let a sandbox undo its own
// network filtering: NET_ADMIN rewrites the namespace's firewall and sets
// the socket mark that exempts egressd's traffic; NET_RAW sets that mark
// too (SO_MARK accepts it since Linux 5.17); SYS_ADMIN, SYS_MODULE and BPF
// reach the same through mounts, setns, kernel modules or BPF programs.
var filterBreakingCaps = []string{"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_BPF"}

// checkCapsUnderFilter refuses capabilities that defeat filtered mode: with
// them the allow list would be a suggestion, not enforcement.
func checkCapsUnderFilter(p *Profile) ErrorList {
	if !p.Network.Mode.Proxied() {
		return nil
	}
	var errs ErrorList
	for _, c := range p.Process.CapAdd {
		if slices.Contains(filterBreakingCaps, c) {
			errs = append(errs, &Error{
				Pos: p.Sources[elemKey("process.cap_add", c)],
				Msg: fmt.Sprintf("process.cap_add %s would let the sandbox bypass egressd's filtering (network.mode = %q from %s)",
					c, p.Network.Mode, positionString(p.Sources["network.mode"])),
				Hint: "drop it, or use network.mode = \"host\" where the floor allows unfiltered network",
			})
		}
	}
	return errs
}
