package specconv

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/policy"
)

// The built-in seccomp profiles, in Docker's profile format, parsed by the
// same code as an operator's file.
//
//go:embed seccomp/*.json
var builtinSeccomp embed.FS

// maxSeccompFile bounds the size of a seccomp profile read from disk.
const maxSeccompFile = 4 << 20

// SeccompEnv is what a Docker-format profile's conditional rules
// (includes/excludes) are evaluated against.
type SeccompEnv struct {
	// Arch is the GOARCH the filter is for; "" means runtime.GOARCH. It
	// chooses the archMap entry and is what includes/excludes "arches"
	// (libseccomp names: "amd64", "arm64", ...) are compared with.
	Arch string
	// Caps is the container's bounding capability set ("CAP_X"), compared
	// with includes/excludes "caps".
	Caps []string
	// Kernel is the host kernel's version and major revision, compared with
	// minKernel; zero means the running kernel (uname).
	Kernel [2]uint64
}

// LoadSeccomp returns the seccomp filter for a profile's process.seccomp
// value: "strict" and "moderate" are built in, "unconfined" is no filter
// (nil), and an absolute path names a profile in Docker's format (OCI's
// LinuxSeccomp JSON is a subset of it and is accepted too).
//
// Docker's conditional rules are evaluated the way Docker does: a rule
// whose includes name capabilities applies only when the container holds
// all of them (env.Caps), one whose excludes name a held capability is
// dropped; arches compare with the target architecture, minKernel with the
// host kernel. Unknown fields, actions, operators, architectures and
// flags are errors (a typo must not silently turn a rule off), as is
// SCMP_ACT_NOTIFY, which needs a listener the launcher does not run.
// Errors name the file and line: "seccomp profile /x.json: line 3: ...".
func LoadSeccomp(name string, env SeccompEnv) (*specs.LinuxSeccomp, error) {
	switch name {
	case policy.SeccompUnconfined:
		return nil, nil
	case policy.SeccompStrict, policy.SeccompModerate:
		data, err := builtinSeccomp.ReadFile("seccomp/" + name + ".json")
		if err != nil {
			return nil, fmt.Errorf("built-in seccomp profile %s: %w", name, err)
		}
		return ParseSeccomp("builtin:"+name, data, env)
	case "":
		return nil, errors.New("no seccomp profile given: want strict, moderate, unconfined or an absolute path")
	}
	if !strings.HasPrefix(name, "/") {
		return nil, fmt.Errorf("seccomp profile %q: not strict, moderate, unconfined or an absolute path", name)
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("seccomp profile %s: %w", name, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSeccompFile+1))
	if err != nil {
		return nil, fmt.Errorf("seccomp profile %s: %w", name, err)
	}
	if len(data) > maxSeccompFile {
		return nil, fmt.Errorf("seccomp profile %s: larger than %d bytes", name, maxSeccompFile)
	}
	return ParseSeccomp(name, data, env)
}

// SeccompError is a problem in a seccomp profile, with its position.
type SeccompError struct {
	File string // the path, or "builtin:strict"
	Line int    // 1-based; 0 when the whole file is concerned
	Msg  string
}

func (e *SeccompError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("seccomp profile %s: line %d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("seccomp profile %s: %s", e.File, e.Msg)
}

// Docker's profile format (github.com/moby/profiles/seccomp), field by field.
type dockerArch struct {
	Arch      string   `json:"architecture"`
	SubArches []string `json:"subArchitectures"`
}

type dockerFilter struct {
	Caps      []string `json:"caps"`
	Arches    []string `json:"arches"`
	MinKernel string   `json:"minKernel"`
}

type dockerArg struct {
	Index    uint   `json:"index"`
	Value    uint64 `json:"value"`
	ValueTwo uint64 `json:"valueTwo"`
	Op       string `json:"op"`
}

type dockerSyscall struct {
	Names    []string      `json:"names"`
	Name     string        `json:"name"`
	Action   string        `json:"action"`
	ErrnoRet *uint         `json:"errnoRet"`
	Args     []dockerArg   `json:"args"`
	Comment  string        `json:"comment"`
	Includes *dockerFilter `json:"includes"`
	Excludes *dockerFilter `json:"excludes"`
}

var seccompActions = []specs.LinuxSeccompAction{
	specs.ActKill, specs.ActKillProcess, specs.ActKillThread, specs.ActTrap,
	specs.ActErrno, specs.ActTrace, specs.ActAllow, specs.ActLog, specs.ActNotify,
}

var seccompOps = []specs.LinuxSeccompOperator{
	specs.OpNotEqual, specs.OpLessThan, specs.OpLessEqual, specs.OpEqualTo,
	specs.OpGreaterEqual, specs.OpGreaterThan, specs.OpMaskedEqual,
}

var seccompArches = []specs.Arch{
	specs.ArchX86, specs.ArchX86_64, specs.ArchX32, specs.ArchARM, specs.ArchAARCH64,
	specs.ArchMIPS, specs.ArchMIPS64, specs.ArchMIPS64N32, specs.ArchMIPSEL,
	specs.ArchMIPSEL64, specs.ArchMIPSEL64N32, specs.ArchPPC, specs.ArchPPC64,
	specs.ArchPPC64LE, specs.ArchS390, specs.ArchS390X, specs.ArchPARISC,
	specs.ArchPARISC64, specs.ArchRISCV64, specs.ArchLOONGARCH64,
}

var seccompFlags = []specs.LinuxSeccompFlag{
	specs.LinuxSeccompFlagLog, specs.LinuxSeccompFlagSpecAllow,
	specs.LinuxSeccompFlagWaitKillableRecv, "SECCOMP_FILTER_FLAG_TSYNC",
}

// goToSeccompArch maps GOARCH to the libseccomp native name (used by
// includes/excludes "arches") and the SCMP_ARCH constant (used by archMap).
var goToSeccompArch = map[string]struct {
	native string
	arch   specs.Arch
}{
	"386":      {"x86", specs.ArchX86},
	"amd64":    {"amd64", specs.ArchX86_64},
	"arm":      {"arm", specs.ArchARM},
	"arm64":    {"arm64", specs.ArchAARCH64},
	"loong64":  {"loongarch64", specs.ArchLOONGARCH64},
	"mips64":   {"mips64", specs.ArchMIPS64},
	"mips64le": {"mipsel64", specs.ArchMIPSEL64},
	"mipsle":   {"mipsel", specs.ArchMIPSEL},
	"ppc64":    {"ppc64", specs.ArchPPC64},
	"ppc64le":  {"ppc64le", specs.ArchPPC64LE},
	"riscv64":  {"riscv64", specs.ArchRISCV64},
	"s390x":    {"s390x", specs.ArchS390X},
}

var syscallName = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// ParseSeccomp parses a profile in Docker's format (see LoadSeccomp); file
// names it in errors.
func ParseSeccomp(file string, data []byte, env SeccompEnv) (*specs.LinuxSeccomp, error) {
	p := &seccompParser{file: file, data: data, env: env}
	out, err := p.parse()
	if err != nil {
		return nil, err
	}
	return out, nil
}

type seccompParser struct {
	file string
	data []byte
	env  SeccompEnv
	dec  *json.Decoder
}

func (p *seccompParser) errAt(off int64, format string, args ...any) error {
	return &SeccompError{File: p.file, Line: p.lineOf(off), Msg: fmt.Sprintf(format, args...)}
}

// lineOf is the 1-based line of byte offset off.
func (p *seccompParser) lineOf(off int64) int {
	if off < 0 {
		off = 0
	}
	if off > int64(len(p.data)) {
		off = int64(len(p.data))
	}
	return 1 + bytes.Count(p.data[:off], []byte{'\n'})
}

// valueStart is the offset of the next JSON value after the decoder's
// position (past white space, ':' and ',').
func (p *seccompParser) valueStart() int64 {
	off := p.dec.InputOffset()
	for off < int64(len(p.data)) {
		switch p.data[off] {
		case ' ', '\t', '\r', '\n', ':', ',':
			off++
			continue
		}
		break
	}
	return off
}

// jsonErr turns a decoding error into a positioned one.
func (p *seccompParser) jsonErr(at int64, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return p.errAt(se.Offset, "invalid JSON: %v", se)
	case errors.As(err, &te):
		what := te.Field
		if what == "" {
			what = "value"
		}
		return p.errAt(te.Offset, "%s: want %s, not JSON %s", what, te.Type, te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return p.errAt(int64(len(p.data)), "invalid JSON: unexpected end of file")
	}
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "json: ")
	return p.errAt(at, "%s", msg)
}

// decodeValue decodes the next value into v, refusing unknown fields.
func (p *seccompParser) decodeValue(v any) error {
	at := p.valueStart()
	raw := json.RawMessage{}
	if err := p.dec.Decode(&raw); err != nil {
		return p.jsonErr(at, err)
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return p.errAt(at+se.Offset, "invalid JSON: %v", se)
		case errors.As(err, &te):
			what := te.Field
			if what == "" {
				what = "value"
			}
			return p.errAt(at+te.Offset, "%s: want %s, not JSON %s", what, te.Type, te.Value)
		}
		msg := strings.TrimPrefix(err.Error(), "json: ")
		// An unknown field: find it, for the line.
		if f, ok := strings.CutPrefix(msg, "unknown field "); ok {
			if i := bytes.Index(raw, []byte(f)); i >= 0 {
				return p.errAt(at+int64(i), "unknown field %s", f)
			}
		}
		return p.errAt(at, "%s", msg)
	}
	return nil
}

func (p *seccompParser) parse() (*specs.LinuxSeccomp, error) {
	if err := p.open(); err != nil {
		return nil, err
	}
	out := &specs.LinuxSeccomp{}
	top := &seccompTop{}
	seen := map[string]bool{}
	for p.dec.More() {
		keyAt := p.valueStart()
		tok, err := p.dec.Token()
		if err != nil {
			return nil, p.jsonErr(keyAt, err)
		}
		key, _ := tok.(string)
		if seen[key] {
			return nil, p.errAt(keyAt, "%q is given twice", key)
		}
		seen[key] = true
		if err := p.parseField(key, keyAt, out, top); err != nil {
			return nil, err
		}
	}
	end := p.valueStart()
	if _, err := p.dec.Token(); err != nil { // the closing '}'
		return nil, p.jsonErr(end, err)
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, p.errAt(p.valueStart(), "unexpected data after the profile")
	}
	if err := p.checkTop(out, top); err != nil {
		return nil, err
	}
	return out, nil
}

// open checks the whole file's syntax first (for absolute error offsets)
// and reads up to the profile's opening '{'.
func (p *seccompParser) open() error {
	var probe any
	if err := json.Unmarshal(p.data, &probe); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return p.errAt(se.Offset-1, "invalid JSON: %v", se)
		}
		return p.errAt(0, "invalid JSON: %v", err)
	}
	p.dec = json.NewDecoder(bytes.NewReader(p.data))
	tok, err := p.dec.Token()
	if err != nil {
		return p.jsonErr(0, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return p.errAt(0, "want a JSON object")
	}
	return nil
}

// seccompTop is what the profile's top-level fields that are checked
// together said, and where.
type seccompTop struct {
	haveDefault, haveArches, haveMap   bool
	defaultAt, archesAt, mapAt, flagAt int64
	archMap                            []dockerArch
	arches                             []string
	flags                              []string
}

// parseField parses the value of the top-level field key (at keyAt) into
// out, or into top for the fields checked together.
func (p *seccompParser) parseField(key string, keyAt int64, out *specs.LinuxSeccomp, top *seccompTop) error {
	at := p.valueStart()
	switch key {
	case "defaultAction":
		var s string
		if err := p.decodeValue(&s); err != nil {
			return err
		}
		out.DefaultAction, top.defaultAt, top.haveDefault = specs.LinuxSeccompAction(s), at, true
	case "defaultErrnoRet":
		var n uint
		if err := p.decodeValue(&n); err != nil {
			return err
		}
		out.DefaultErrnoRet = &n
	case "architectures":
		if err := p.decodeValue(&top.arches); err != nil {
			return err
		}
		top.archesAt, top.haveArches = at, true
	case "archMap":
		if err := p.decodeValue(&top.archMap); err != nil {
			return err
		}
		top.mapAt, top.haveMap = at, true
	case "flags":
		if err := p.decodeValue(&top.flags); err != nil {
			return err
		}
		top.flagAt = at
	case "listenerPath", "listenerMetadata":
		return p.errAt(at, "%s: seccomp notification listeners are not supported", key)
	case "comment":
		var s string
		return p.decodeValue(&s)
	case "syscalls":
		return p.parseSyscalls(out)
	default:
		return p.errAt(keyAt, "unknown field %q (want defaultAction, defaultErrnoRet, architectures, archMap, flags or syscalls)", key)
	}
	return nil
}

// checkTop checks the default action, the architectures (or the archMap
// entry of the machine's) and the flags, and sets them in out.
func (p *seccompParser) checkTop(out *specs.LinuxSeccomp, top *seccompTop) error {
	if !top.haveDefault {
		return &SeccompError{File: p.file, Msg: "defaultAction is missing"}
	}
	if err := p.checkAction(out.DefaultAction, top.defaultAt); err != nil {
		return err
	}
	if top.haveArches && top.haveMap {
		return p.errAt(top.mapAt, "both architectures and archMap are given; use one")
	}
	for _, a := range top.arches {
		if !slices.Contains(seccompArches, specs.Arch(a)) {
			return p.errAt(top.archesAt, "unknown architecture %q", a)
		}
		out.Architectures = append(out.Architectures, specs.Arch(a))
	}
	if top.haveMap {
		target := goToSeccompArch[p.arch()]
		for _, m := range top.archMap {
			for _, a := range append([]string{m.Arch}, m.SubArches...) {
				if !slices.Contains(seccompArches, specs.Arch(a)) {
					return p.errAt(top.mapAt, "unknown architecture %q", a)
				}
			}
			if specs.Arch(m.Arch) == target.arch && len(out.Architectures) == 0 {
				out.Architectures = append(out.Architectures, specs.Arch(m.Arch))
				for _, s := range m.SubArches {
					out.Architectures = append(out.Architectures, specs.Arch(s))
				}
			}
		}
	}
	for _, f := range top.flags {
		if !slices.Contains(seccompFlags, specs.LinuxSeccompFlag(f)) {
			return p.errAt(top.flagAt, "unknown flag %q", f)
		}
		out.Flags = append(out.Flags, specs.LinuxSeccompFlag(f))
	}
	return nil
}

func (p *seccompParser) arch() string {
	if p.env.Arch != "" {
		return p.env.Arch
	}
	return runtime.GOARCH
}

func (p *seccompParser) checkAction(a specs.LinuxSeccompAction, at int64) error {
	if a == specs.ActNotify {
		return p.errAt(at, "action %s needs a notification listener, which the launcher does not run", a)
	}
	if !slices.Contains(seccompActions, a) {
		names := make([]string, len(seccompActions))
		for i, x := range seccompActions {
			names[i] = string(x)
		}
		return p.errAt(at, "unknown action %q (want one of %s)", a, strings.Join(names, ", "))
	}
	return nil
}

func (p *seccompParser) parseSyscalls(out *specs.LinuxSeccomp) error {
	at := p.valueStart()
	tok, err := p.dec.Token()
	if err != nil {
		return p.jsonErr(at, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return p.errAt(at, "syscalls: want an array")
	}
	for p.dec.More() {
		at := p.valueStart()
		var sc dockerSyscall
		if err := p.decodeValue(&sc); err != nil {
			return err
		}
		rule, keep, err := p.convertSyscall(&sc, at)
		if err != nil {
			return err
		}
		if keep {
			out.Syscalls = append(out.Syscalls, rule)
		}
	}
	if _, err := p.dec.Token(); err != nil { // ']'
		return p.jsonErr(p.valueStart(), err)
	}
	return nil
}

// convertSyscall validates one Docker rule and evaluates its conditions.
func (p *seccompParser) convertSyscall(sc *dockerSyscall, at int64) (specs.LinuxSyscall, bool, error) {
	names := sc.Names
	if sc.Name != "" {
		if len(names) > 0 {
			return specs.LinuxSyscall{}, false, p.errAt(at, "both name and names are given; use names")
		}
		names = []string{sc.Name}
	}
	if len(names) == 0 {
		return specs.LinuxSyscall{}, false, p.errAt(at, "a syscall rule without names")
	}
	for _, n := range names {
		if !syscallName.MatchString(n) {
			return specs.LinuxSyscall{}, false, p.errAt(at, "%q is not a system call name", n)
		}
	}
	if sc.Action == "" {
		return specs.LinuxSyscall{}, false, p.errAt(at, "a syscall rule without an action")
	}
	if err := p.checkAction(specs.LinuxSeccompAction(sc.Action), at); err != nil {
		return specs.LinuxSyscall{}, false, err
	}
	rule := specs.LinuxSyscall{
		Names:    slices.Clone(names),
		Action:   specs.LinuxSeccompAction(sc.Action),
		ErrnoRet: sc.ErrnoRet,
	}
	for _, a := range sc.Args {
		if a.Index > 5 {
			return specs.LinuxSyscall{}, false, p.errAt(at, "argument index %d: system calls have arguments 0 to 5", a.Index)
		}
		op := specs.LinuxSeccompOperator(a.Op)
		if !slices.Contains(seccompOps, op) {
			return specs.LinuxSyscall{}, false, p.errAt(at, "unknown operator %q", a.Op)
		}
		rule.Args = append(rule.Args, specs.LinuxSeccompArg{Index: a.Index, Value: a.Value, ValueTwo: a.ValueTwo, Op: op})
	}
	if sc.Excludes != nil {
		match, err := p.filterMatches(sc.Excludes, at, false)
		if err != nil || match {
			return specs.LinuxSyscall{}, false, err
		}
	}
	if sc.Includes != nil {
		match, err := p.filterMatches(sc.Includes, at, true)
		if err != nil || !match {
			return specs.LinuxSyscall{}, false, err
		}
	}
	return rule, true, nil
}

// filterMatches evaluates includes (all conditions must hold) or excludes
// (any condition holding excludes the rule) against the environment.
func (p *seccompParser) filterMatches(f *dockerFilter, at int64, include bool) (bool, error) {
	native := goToSeccompArch[p.arch()].native
	var conds []bool
	if len(f.Arches) > 0 {
		conds = append(conds, slices.Contains(f.Arches, native))
	}
	for _, c := range f.Caps {
		norm, ok := policy.NormalizeCapability(c)
		if !ok {
			return false, p.errAt(at, "unknown capability %q", c)
		}
		conds = append(conds, slices.Contains(p.env.Caps, norm))
	}
	if f.MinKernel != "" {
		want, err := parseKernelVersion(f.MinKernel)
		if err != nil {
			return false, p.errAt(at, "minKernel %q: %v", f.MinKernel, err)
		}
		have := p.env.Kernel
		if have == [2]uint64{} {
			if have, err = hostKernel(); err != nil {
				return false, p.errAt(at, "minKernel: %v", err)
			}
		}
		conds = append(conds, have[0] > want[0] || have[0] == want[0] && have[1] >= want[1])
	}
	if include {
		for _, c := range conds {
			if !c {
				return false, nil
			}
		}
		return true, nil
	}
	return slices.Contains(conds, true), nil
}

// parseKernelVersion reads "<kernel>.<major>" ("5.8").
func parseKernelVersion(s string) ([2]uint64, error) {
	a, b, ok := strings.Cut(s, ".")
	if !ok {
		return [2]uint64{}, errors.New(`want "<kernel>.<major>", e.g. "5.8"`)
	}
	k, err1 := strconv.ParseUint(a, 10, 16)
	m, err2 := strconv.ParseUint(b, 10, 16)
	if err1 != nil || err2 != nil || k == 0 && m == 0 {
		return [2]uint64{}, errors.New(`want "<kernel>.<major>", e.g. "5.8"`)
	}
	return [2]uint64{k, m}, nil
}

var hostKernelOnce = sync.OnceValues(func() ([2]uint64, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return [2]uint64{}, fmt.Errorf("reading the kernel version: %w", err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return [2]uint64{}, fmt.Errorf("kernel release %q has no version", rel)
	}
	minor := parts[1]
	if i := strings.IndexFunc(minor, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minor = minor[:i]
	}
	return parseKernelVersion(parts[0] + "." + minor)
})

func hostKernel() ([2]uint64, error) { return hostKernelOnce() }
