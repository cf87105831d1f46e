package policy

import (
	"fmt"
	"slices"
	"strings"
)

// FloorError is the refusal of a profile less restrictive than the security
// floor. It names every field that violates it.
type FloorError struct {
	// Floor is the canonical name of the floor profile.
	Floor string
	// Violations are in field order.
	Violations []Violation
}

// Violation is one field of a profile below the floor.
type Violation struct {
	// Field is the field key, "network.mode".
	Field string
	// Value is the profile's value as written in a policy file.
	Value string
	// Source is where Value came from.
	Source Source
	// Floor is the floor profile's name and FloorValue its value of the
	// field (or what it requires).
	Floor, FloorValue string
	// Matches, for an allow rule, says what it matches that the floor
	// refuses ("matches every name under the public suffix co.uk"); Value
	// is then the rule.
	Matches string
}

// String renders `network.mode = "host" (flag:--net) is less restrictive
// than floor standard ("filtered")`, and for an allow rule
// `network.allow "*.co.uk" (policy.toml:3:10) matches every name under the
// public suffix co.uk`.
func (v Violation) String() string {
	src := positionString(v.Source)
	if src != "" {
		src = " (" + src + ")"
	}
	if v.Matches != "" {
		return fmt.Sprintf("%s %s%s %s", v.Field, v.Value, src, v.Matches)
	}
	return fmt.Sprintf("%s = %s%s is less restrictive than floor %s (%s)", v.Field, v.Value, src, v.Floor, v.FloorValue)
}

func (e *FloorError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "profile is less restrictive than the security floor %s:", e.Floor)
	for _, v := range e.Violations {
		b.WriteString("\n  ")
		b.WriteString(v.String())
	}
	return b.String()
}

// CheckFloor refuses a profile less restrictive than the built-in profile
// floor (an alias is accepted; "" means no floor). The error is a
// *FloorError naming each violating field. The ordering, field by field
// ("<" = less restrictive):
//
//   - network.mode: host < report < filtered < none. Report mode lets
//     every name through that no allow rule allows (it records it as
//     would-deny), so only a floor that allows unfiltered network (open)
//     accepts it; the refusal says so and what to do instead.
//   - network.allow: when the floor filters, an allow rule is a violation
//     when it is broad (breadth.go: it matches every name, every name of N
//     labels, or names of more than one registrable domain — `*`, `*.*`,
//     `*.co.uk`, `foo*.com`, `*.github.io` — or every address, or a range
//     wider than an IANA allocation), or when it lifts the address guard
//     for anything but one subnet of private, ULA or CGNAT space (allowRisk).
//     Other allow rules are not: adding hosts is what tenants do, even on
//     top of strict.
//   - network.block: every block rule of the floor must be present.
//   - filesystem.read_only, process.no_new_privileges,
//     commands.allowlist_only: false < true.
//   - process.cap_add: any capability the floor does not add.
//   - process.seccomp: unconfined < a custom profile path < moderate <
//     strict. A custom profile cannot be judged by name, so it satisfies
//     only a floor of unconfined.
//   - process.pids_limit, process.memory, process.cpus, process.timeout:
//     a limit larger than the floor's, or none (0) where the floor has
//     one.
//   - process.user: root < non-root. A user name other than "root" cannot
//     be proved non-root before the sandbox's /etc/passwd is read, so under
//     a non-root floor it is a violation: use a numeric uid.
//   - process.allow_host_user: true < false (only open allows a host
//     account).
//   - commands.block: every command the floor blocks must be blocked.
//   - filesystem.protect: every path the floor protects must stay
//     protected. Every built-in protects DefaultProtect, so under any
//     floor filesystem.unprotect may remove only what an operator added.
//
// Not compared: tmpfs mounts, the workspace, mount_cwd, expose and volumes
// (operator-chosen mounts; the host paths no sandbox may see are refused
// whatever the floor, see ForbiddenHostPath), env (what a sandbox is
// given, not what it may do),
// default_ports (any allow rule can name its port), dns_block_response and
// upstream_dns, and network.inspect and network.credentials: they only ever
// restrict (an inspected host is never looser than the same host
// uninspected, and no inspect entry allows anything).
func CheckFloor(p *Profile, floor string) error {
	if floor == "" {
		return nil
	}
	f, err := BuiltinProfile(floor)
	if err != nil {
		return fmt.Errorf("security floor: %w", err)
	}
	e := &FloorError{Floor: f.Name}
	add := func(field, value, floorValue string, src Source) {
		e.Violations = append(e.Violations, Violation{Field: field, Value: value, Source: src, Floor: f.Name, FloorValue: floorValue})
	}
	scalarAt := func(key string) (string, Source) { return fieldByKey[key].render(p), p.Sources[key] }
	floorAt := func(key string) string { return fieldByKey[key].render(f) }
	violatesScalar := func(key string) {
		v, src := scalarAt(key)
		add(key, v, floorAt(key), src)
	}

	modeRank := map[Mode]int{ModeHost: 0, ModeReport: 1, ModeFiltered: 2, ModeNone: 3}
	switch {
	case modeRank[p.Network.Mode] >= modeRank[f.Network.Mode]:
	case p.Network.Mode == ModeReport:
		e.Violations = append(e.Violations, Violation{Field: "network.mode", Value: tomlString(string(ModeReport)),
			Source: p.Sources["network.mode"], Floor: f.Name, FloorValue: floorAt("network.mode"), Matches: ReportFloorRefusal})
	default:
		violatesScalar("network.mode")
	}
	if f.Network.Mode != ModeHost {
		for _, r := range p.Network.Allow {
			if what, refused := allowRisk(r); refused {
				e.Violations = append(e.Violations, Violation{Field: "network.allow", Value: tomlString(r.Text), Source: r.Source, Floor: f.Name, Matches: what})
			}
		}
	}
	for _, fb := range f.Network.Block {
		if !slices.ContainsFunc(p.Network.Block, func(r *Rule) bool { return r.Text == fb.Text }) {
			add("network.block", "(without "+tomlString(fb.Text)+")", tomlString(fb.Text), p.Sources["network.block"])
		}
	}
	if f.Filesystem.ReadOnly && !p.Filesystem.ReadOnly {
		violatesScalar("filesystem.read_only")
	}
	if f.Process.User.Name == "" && f.Process.User.UID != 0 && (p.Process.User.IsRoot() || p.Process.User.Name != "") {
		v, src := scalarAt("process.user")
		want := "a non-root numeric uid"
		if p.Process.User.Name != "" && !p.Process.User.IsRoot() {
			want += "; a user name cannot be checked before launch"
		}
		add("process.user", v, want, src)
	}
	if !f.Process.AllowHostUser && p.Process.AllowHostUser {
		violatesScalar("process.allow_host_user")
	}
	kept := p.Filesystem.EffectiveProtect()
	for _, e := range f.Filesystem.EffectiveProtect() {
		if !slices.ContainsFunc(kept, func(k string) bool { return ProtectID(k) == ProtectID(e) }) {
			src, ok := p.Sources[elemKey("filesystem.unprotect", ProtectID(e))]
			if !ok {
				src = p.Sources["filesystem.protect"]
			}
			add("filesystem.protect", "(without "+tomlString(e)+")", tomlString(e), src)
		}
	}
	for _, key := range []string{"process.pids_limit", "process.memory"} {
		pv, fv := p.Process.PidsLimit, f.Process.PidsLimit
		if key == "process.memory" {
			pv, fv = p.Process.Memory, f.Process.Memory
		}
		if fv > 0 && (pv <= 0 || pv > fv) {
			violatesScalar(key)
		}
	}
	if f.Process.CPUs > 0 && (p.Process.CPUs <= 0 || p.Process.CPUs > f.Process.CPUs) {
		violatesScalar("process.cpus")
	}
	if f.Process.Timeout > 0 && (p.Process.Timeout <= 0 || p.Process.Timeout > f.Process.Timeout) {
		violatesScalar("process.timeout")
	}
	if f.Process.NoNewPrivileges && !p.Process.NoNewPrivileges {
		violatesScalar("process.no_new_privileges")
	}
	for _, c := range p.Process.CapAdd {
		if !slices.Contains(f.Process.CapAdd, c) {
			floorCaps := "none"
			if len(f.Process.CapAdd) > 0 {
				floorCaps = strings.Join(f.Process.CapAdd, ", ")
			}
			add("process.cap_add", tomlString(c), floorCaps, p.Sources[elemKey("process.cap_add", c)])
		}
	}
	if seccompRank(p.Process.Seccomp) < seccompRank(f.Process.Seccomp) {
		violatesScalar("process.seccomp")
	}
	if f.Commands.AllowlistOnly && !p.Commands.AllowlistOnly {
		violatesScalar("commands.allowlist_only")
	}
	for _, c := range f.Commands.Block {
		if !slices.Contains(p.Commands.Block, c) {
			add("commands.block", "(without "+tomlString(c)+")", tomlString(c), p.Sources["commands.block"])
		}
	}
	if len(e.Violations) == 0 {
		return nil
	}
	return e
}

// ReportFloorRefusal is what a floor that filters says of report mode,
// with what to do instead.
const ReportFloorRefusal = `lets through every name no allow rule allows (recorded as would-deny, not refused): ` +
	`only a floor that allows unfiltered network accepts it (--floor open); learn the allow list there ` +
	`(egressd policy suggest), then run with mode = "filtered"`

// ReportModeMeaning is what validate, check and explain say report mode
// does.
const ReportModeMeaning = `network.mode = report: a name (or address) no allow rule allows is let through and audited as would-deny ` +
	`with the reason it would have had; block rules, the address guard, invalid names and every protocol check and limit ` +
	`still refuse; learn the allow list with egressd policy suggest, then run with mode = "filtered"`

// seccompRank orders seccomp settings from least to most restrictive; a
// custom profile ranks just above unconfined (see CheckFloor).
func seccompRank(s string) int {
	switch s {
	case SeccompUnconfined, "":
		return 0
	case SeccompModerate:
		return 2
	case SeccompStrict:
		return 3
	}
	return 1
}
