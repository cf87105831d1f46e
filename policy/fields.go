package policy

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// This file is the policy file schema: one field per key a policy file (or a
// per-launch Setting) may set, with its decoder, how it merges, and how it
// renders back. Files and flags go through the same decoders.

type fieldKind uint8

const (
	// scalarField holds one value; a later layer replaces it.
	scalarField fieldKind = iota
	// setField is an array whose elements merge by union across layers:
	// identical elements appear once, with the first source, and nothing a
	// later layer writes removes an element.
	setField
	// listField is an array that is one setting: a later layer replaces the
	// whole list (default_ports, upstream_dns).
	listField
	// mapField is a table of NAME = "value" (env.set); entries merge by
	// name, a later layer replacing an entry's value.
	mapField
)

type field struct {
	key     string // "process.memory"
	section string // "process"
	name    string // "memory"
	kind    fieldKind
	// want says what a value (for set and list fields: each element) must
	// be, for messages: "an integer; 0 or less means no limit".
	want string
	// example is a correct line of a policy file, for hints.
	example string
	// decode converts a scalar value, or one element of a set or list
	// field, or one value of a map field. It records any error in d and
	// reports whether it succeeded.
	decode func(d *decoder, f *field, v *tval) (any, bool)
	// set stores a scalar's value, or a list field's whole value ([]any of
	// decoded elements), or one map entry (a mapEntry).
	set func(p *Profile, v any)
	// id is a set element's identity: duplicates have the same id.
	id func(v any) string
	// add appends a set element whose id p does not hold yet.
	add func(p *Profile, v any, src Source)
	// update, if not nil, replaces the element of p with v's id (a later
	// tmpfs entry for the same path); without it a repeated id is dropped.
	update func(p *Profile, v any, src Source)
	// items returns a set or list field's elements in order: their ids
	// (Sources keys) and their TOML text.
	items func(p *Profile) (ids, text []string)
	// render returns a scalar's value as TOML.
	render func(p *Profile) string
	// tables lets a set field's elements be tables, also written as an
	// array of tables ([[section.key]]).
	tables bool
}

type mapEntry struct{ name, value string }

// fields in the order a rendered policy file lists them.
var fields = []*field{
	scalar("network.mode", `"none", "filtered", "report" or "host"`, `mode = "filtered"`,
		func(p *Profile) *Mode { return &p.Network.Mode }, decodeMode,
		func(m Mode) string { return tomlString(string(m)) }),
	ruleListField("network.allow", func(p *Profile) *[]*Rule { return &p.Network.Allow }),
	ruleListField("network.block", func(p *Profile) *[]*Rule { return &p.Network.Block }),
	{
		key: "network.default_ports", kind: listField,
		want:    "a port number from 1 to 65535",
		example: `default_ports = [80, 443]`,
		decode:  decodePort,
		set: func(p *Profile, v any) {
			p.Network.DefaultPorts = dedupe[uint16](v.([]any))
		},
		items: func(p *Profile) (ids, text []string) {
			for _, port := range p.Network.DefaultPorts {
				s := strconv.Itoa(int(port))
				ids, text = append(ids, s), append(text, s)
			}
			return ids, text
		},
	},
	scalar("network.dns_block_response", `"nxdomain" or "refused"`, `dns_block_response = "nxdomain"`,
		func(p *Profile) *DNSResponse { return &p.Network.DNSBlockResponse }, decodeDNSResponse,
		func(r DNSResponse) string { return tomlString(string(r)) }),
	{
		key: "network.upstream_dns", kind: listField,
		want:    `an IP address with an optional port ("192.0.2.53", "[2001:db8::53]:5353")`,
		example: `upstream_dns = ["192.0.2.53", "192.0.2.54:53"]`,
		decode:  decodeUpstream,
		set: func(p *Profile, v any) {
			p.Network.UpstreamDNS = dedupe[netip.AddrPort](v.([]any))
		},
		items: func(p *Profile) (ids, text []string) {
			for _, u := range p.Network.UpstreamDNS {
				ids, text = append(ids, u.String()), append(text, tomlString(u.String()))
			}
			return ids, text
		},
	},

	tableSet("network.inspect",
		`a host pattern string, or a table { host = "...", methods = [...], paths = [...], block_methods = [...], block_paths = [...], log_query = true }`,
		`inspect = [{ host = "api.example.com", paths = ["/v1/messages"] }]`, decodeInspect,
		func(v any) (string, Source) { r := v.(*InspectRule); return r.Text, r.Source },
		func(p *Profile) *[]*InspectRule { return &p.Network.Inspect },
		func(r *InspectRule) string { return r.Text }),
	tableSet("network.credentials",
		`a table { host = "...", header = "...", secret = "...", prefix = "...", placeholder = "..." }`,
		`credentials = [{ host = "api.example.com", header = "x-api-key", secret = "EXAMPLE_API_KEY" }]`, decodeCredential,
		func(v any) (string, Source) { c := v.(*Credential); return c.Text, c.Source },
		func(p *Profile) *[]*Credential { return &p.Network.Credentials },
		func(c *Credential) string { return c.Text }),

	boolean("filesystem.read_only", `read_only = true`, func(p *Profile) *bool { return &p.Filesystem.ReadOnly }),
	{
		key: "filesystem.tmpfs", kind: setField, tables: true,
		want:    `a string "PATH[:size=SIZE,mode=OCTAL,nosuid,nodev,noexec]" or a table { path = "...", size = "...", mode = "...", options = [...] }`,
		example: `tmpfs = ["/tmp:size=512m,mode=1777,nosuid,nodev", { path = "~/.cache", size = "1g" }]`,
		decode:  decodeTmpfs,
		id:      func(v any) string { return v.(Tmpfs).Path },
		add: func(p *Profile, v any, src Source) {
			t := v.(Tmpfs)
			t.Source = src
			p.Filesystem.Tmpfs = append(p.Filesystem.Tmpfs, t)
		},
		update: func(p *Profile, v any, src Source) {
			t := v.(Tmpfs)
			for i := range p.Filesystem.Tmpfs {
				old := &p.Filesystem.Tmpfs[i]
				if old.Path != t.Path {
					continue
				}
				if t.Size != 0 {
					old.Size = t.Size
				}
				if t.Mode != 0 {
					old.Mode = t.Mode
				}
				for _, o := range t.Options {
					if !slices.Contains(old.Options, o) {
						old.Options = append(old.Options, o)
					}
				}
				slices.Sort(old.Options)
				old.Source = src
			}
		},
		items: func(p *Profile) (ids, text []string) {
			for _, t := range p.Filesystem.Tmpfs {
				ids, text = append(ids, t.Path), append(text, tomlString(t.String()))
			}
			return ids, text
		},
	},
	scalar("filesystem.workspace", "an absolute path inside the sandbox", `workspace = "/sandbox"`,
		func(p *Profile) *string { return &p.Filesystem.Workspace }, decodeWorkspace, tomlString),
	boolean("filesystem.mount_cwd", `mount_cwd = true`, func(p *Profile) *bool { return &p.Filesystem.MountCwd }),
	stringSet("filesystem.expose", "an absolute host path", `expose = ["/opt/toolchains"]`,
		func(p *Profile) *[]string { return &p.Filesystem.Expose }, decodeExpose),
	{
		key: "filesystem.volumes", kind: setField,
		want:    `"HOST:PATH[:rw|ro]", HOST an absolute host path, PATH an absolute path or "~/..." inside the sandbox`,
		example: `volumes = ["/srv/agents/42/claude:~/.claude:rw"]`,
		decode:  decodeVolume,
		id:      func(v any) string { return v.(Volume).String() },
		add:     func(p *Profile, v any, _ Source) { p.Filesystem.Volumes = append(p.Filesystem.Volumes, v.(Volume)) },
		items: func(p *Profile) (ids, text []string) {
			for _, v := range p.Filesystem.Volumes {
				ids, text = append(ids, v.String()), append(text, tomlString(v.String()))
			}
			return ids, text
		},
	},
	protectField("filesystem.protect", `protect = [".git/hooks/", ".envrc"]`, func(p *Profile) *[]string { return &p.Filesystem.Protect }),
	protectField("filesystem.unprotect", `unprotect = [".idea/"]`, func(p *Profile) *[]string { return &p.Filesystem.Unprotect }),

	scalar("process.user", `"UID", "UID:GID" or a user name`, `user = "1000:1000"`,
		func(p *Profile) *User { return &p.Process.User }, decodeUser,
		func(u User) string { return tomlString(u.String()) }),
	boolean("process.allow_host_user", `allow_host_user = true`, func(p *Profile) *bool { return &p.Process.AllowHostUser }),
	scalar("process.pids_limit", "an integer", `pids_limit = 256`+"; 0 means no limit",
		func(p *Profile) *int64 { return &p.Process.PidsLimit }, decodePids,
		func(n int64) string { return strconv.FormatInt(n, 10) }),
	scalar("process.memory", `a size ("4GiB", "512m") or a number of bytes`, `memory = "4GiB"`+"; 0 means no limit",
		func(p *Profile) *int64 { return &p.Process.Memory }, decodeMemory,
		func(n int64) string {
			if n == 0 {
				return "0"
			}
			return tomlString(formatSize(n, false))
		}),
	scalar("process.cpus", "a number", `cpus = 1.5`+"; 0 means no limit",
		func(p *Profile) *float64 { return &p.Process.CPUs }, decodeCPUs, renderFloat),
	scalar("process.timeout", "a duration string", `timeout = "1h30m"`+`; "0" means none`,
		func(p *Profile) *time.Duration { return &p.Process.Timeout }, decodeTimeout,
		func(d time.Duration) string { return tomlString(d.String()) }),
	boolean("process.no_new_privileges", `no_new_privileges = true`, func(p *Profile) *bool { return &p.Process.NoNewPrivileges }),
	stringSet("process.cap_add", `a Linux capability name ("CAP_NET_BIND_SERVICE" or "NET_BIND_SERVICE")`,
		`cap_add = ["CAP_NET_BIND_SERVICE"]`, func(p *Profile) *[]string { return &p.Process.CapAdd }, decodeCap),
	scalar("process.seccomp", `"strict", "moderate", "unconfined" or the absolute path of a seccomp profile`, `seccomp = "strict"`,
		func(p *Profile) *string { return &p.Process.Seccomp }, decodeSeccomp, tomlString),

	stringSet("env.pass", "an environment variable name", `pass = ["TERM", "LANG"]`,
		func(p *Profile) *[]string { return &p.Env.Pass }, decodeEnvName),
	{
		key: "env.set", kind: mapField,
		want:    "a string",
		example: `set = { NAME = "value" }`,
		decode:  decodeEnvValue,
		set: func(p *Profile, v any) {
			e := v.(mapEntry)
			if p.Env.Set == nil {
				p.Env.Set = map[string]string{}
			}
			p.Env.Set[e.name] = e.value
		},
	},

	stringSet("commands.allow", "a command name or an absolute path", `allow = ["git", "/usr/bin/python3"]`,
		func(p *Profile) *[]string { return &p.Commands.Allow }, decodeCommand),
	stringSet("commands.block", "a command name or an absolute path", `block = ["curl"]`,
		func(p *Profile) *[]string { return &p.Commands.Block }, decodeCommand),
	boolean("commands.allowlist_only", `allowlist_only = true`, func(p *Profile) *bool { return &p.Commands.AllowlistOnly }),
}

// sections in the order a rendered policy file lists them.
var sections = []string{"network", "filesystem", "process", "env", "commands"}

// topLevelKeys are the keys a policy file may have outside any section.
var topLevelKeys = []string{"version", "profile", "network", "filesystem", "process", "env", "commands"}

var fieldByKey = func() map[string]*field {
	m := map[string]*field{}
	for _, f := range fields {
		f.section, f.name, _ = strings.Cut(f.key, ".")
		m[f.key] = f
	}
	return m
}()

// sectionKeys returns the keys of one section, for did-you-mean hints.
func sectionKeys(section string) []string {
	var keys []string
	for _, f := range fields {
		if f.section == section {
			keys = append(keys, f.name)
		}
	}
	return keys
}

func fieldKeys() []string {
	keys := make([]string, len(fields))
	for i, f := range fields {
		keys[i] = f.key
	}
	return keys
}

func scalar[T any](key, want, example string, get func(*Profile) *T,
	decode func(*decoder, *field, *tval) (T, bool), render func(T) string) *field {
	return &field{
		key: key, kind: scalarField, want: want, example: example,
		decode: func(d *decoder, f *field, v *tval) (any, bool) { return decode(d, f, v) },
		set:    func(p *Profile, v any) { *get(p) = v.(T) },
		render: func(p *Profile) string { return render(*get(p)) },
	}
}

func boolean(key, example string, get func(*Profile) *bool) *field {
	return scalar(key, "true or false", example, get, decodeBool, strconv.FormatBool)
}

func stringSet(key, want, example string, get func(*Profile) *[]string,
	decode func(*decoder, *field, *tval) (string, bool)) *field {
	return &field{
		key: key, kind: setField, want: want, example: example,
		decode: func(d *decoder, f *field, v *tval) (any, bool) { return decode(d, f, v) },
		id:     func(v any) string { return v.(string) },
		add:    func(p *Profile, v any, _ Source) { *get(p) = append(*get(p), v.(string)) },
		items: func(p *Profile) (ids, text []string) {
			for _, s := range *get(p) {
				ids, text = append(ids, s), append(text, tomlString(s))
			}
			return ids, text
		},
	}
}

// protectField is filesystem.protect or filesystem.unprotect: a set of
// relative paths whose identity ignores the "/" that marks a directory.
func protectField(key, example string, get func(*Profile) *[]string) *field {
	return &field{
		key: key, kind: setField,
		want:    `a path relative to the workspace ("NAME/" for a directory)`,
		example: example,
		decode:  func(d *decoder, f *field, v *tval) (any, bool) { return decodeProtect(d, f, v) },
		id:      func(v any) string { return ProtectID(v.(string)) },
		add:     func(p *Profile, v any, _ Source) { *get(p) = append(*get(p), v.(string)) },
		items: func(p *Profile) (ids, text []string) {
			for _, s := range *get(p) {
				ids, text = append(ids, ProtectID(s)), append(text, tomlString(s))
			}
			return ids, text
		},
	}
}

func ruleListField(key string, get func(*Profile) *[]*Rule) *field {
	return &field{
		key: key, kind: setField,
		want:    "a pattern string",
		example: strings.TrimPrefix(key, "network.") + ` = ["example.com", "*.example.com:443"]`,
		decode:  decodeRule,
		id:      func(v any) string { return v.(*Rule).Text },
		add:     func(p *Profile, v any, _ Source) { *get(p) = append(*get(p), v.(*Rule)) },
		items: func(p *Profile) (ids, text []string) {
			for _, r := range *get(p) {
				ids, text = append(ids, r.Text), append(text, tomlString(r.Text))
			}
			return ids, text
		},
	}
}

// tableSet is a set field whose elements are tables (inspect, credentials):
// each element is identified by its canonical text.
func tableSet[T any](key, want, example string, decode func(*decoder, *field, *tval) (any, bool),
	ident func(any) (string, Source), get func(*Profile) *[]T, text func(T) string) *field {
	return &field{
		key: key, kind: setField, tables: true, want: want, example: example,
		decode: decode,
		id:     func(v any) string { id, _ := ident(v); return id },
		add:    func(p *Profile, v any, _ Source) { *get(p) = append(*get(p), v.(T)) },
		items: func(p *Profile) (ids, texts []string) {
			for _, e := range *get(p) {
				ids, texts = append(ids, text(e)), append(texts, text(e))
			}
			return ids, texts
		},
	}
}

// dedupe converts decoded list elements to T, keeping the first of equal ones.
func dedupe[T comparable](elems []any) []T {
	seen := make(map[T]bool, len(elems))
	out := make([]T, 0, len(elems))
	for _, e := range elems {
		if t := e.(T); !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

func renderFloat(f float64) string {
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".eEn") {
		s += ".0"
	}
	return s
}

// decoder collects the errors of one layer.
type decoder struct {
	errs ErrorList
}

func (d *decoder) errorf(pos Source, hint, format string, args ...any) {
	d.errs = append(d.errs, &Error{Pos: pos, Msg: fmt.Sprintf(format, args...), Hint: hint})
}

// unknownTableKey reports key k of a table entry of field f (a tmpfs,
// inspect or credentials table) that is none of known.
func (d *decoder) unknownTableKey(f *field, e *tval, k string, known []string) {
	hint := meanHint(k, known)
	if hint == "" {
		hint = "keys are " + quotedList(known)
	}
	d.errorf(e.keyPos, hint, "%s: unknown key %q", f.key, k)
}

// describeValue renders a value for messages: a flag's text, or its TOML kind.
func describeValue(v *tval) string {
	if v.flag {
		return strconv.Quote(v.str)
	}
	if v.arrayOfTables {
		return "an array of tables ([[...]])"
	}
	return v.kind.article()
}

// invalid reports a value of the wrong type or shape.
func (d *decoder) invalid(f *field, v *tval) {
	hint := ""
	if !v.flag {
		hint = "for example: " + f.example
	}
	if f.kind == scalarField {
		d.errorf(v.pos, hint, "%s must be %s, not %s", f.key, f.want, describeValue(v))
		return
	}
	d.errorf(v.pos, hint, "%s: each entry must be %s, not %s", f.key, f.want, describeValue(v))
}

func (d *decoder) str(f *field, v *tval) (string, bool) {
	if v.kind != tString {
		d.invalid(f, v)
		return "", false
	}
	return v.str, true
}

func (d *decoder) integer(f *field, v *tval) (int64, bool) {
	if v.kind == tInt {
		return v.num, true
	}
	if v.flag {
		if i, err := strconv.ParseInt(strings.TrimSpace(v.str), 10, 64); err == nil {
			return i, true
		}
	}
	d.invalid(f, v)
	return 0, false
}

func decodeBool(d *decoder, f *field, v *tval) (bool, bool) {
	if v.kind == tBool {
		return v.b, true
	}
	if v.flag {
		if b, err := strconv.ParseBool(strings.TrimSpace(v.str)); err == nil {
			return b, true
		}
	}
	d.invalid(f, v)
	return false, false
}

// enum decodes a string that must be one of choices, with a did-you-mean
// hint for a near miss.
func enum(d *decoder, f *field, v *tval, choices ...string) (string, bool) {
	s, ok := d.str(f, v)
	if !ok {
		return "", false
	}
	if slices.Contains(choices, s) {
		return s, true
	}
	if l := strings.ToLower(s); slices.Contains(choices, l) {
		return l, true
	}
	d.errorf(v.pos, meanHint(s, choices), "%s must be %s, not %q", f.key, f.want, s)
	return "", false
}

func decodeMode(d *decoder, f *field, v *tval) (Mode, bool) {
	s, ok := enum(d, f, v, string(ModeNone), string(ModeFiltered), string(ModeReport), string(ModeHost))
	return Mode(s), ok
}

func decodeDNSResponse(d *decoder, f *field, v *tval) (DNSResponse, bool) {
	s, ok := enum(d, f, v, string(DNSNXDomain), string(DNSRefused))
	return DNSResponse(s), ok
}

func decodeRule(d *decoder, f *field, v *tval) (any, bool) {
	text, ok := d.str(f, v)
	if !ok {
		return nil, false
	}
	r, err := ParseRule(text, v.pos)
	if err != nil {
		var pe *PatternError
		if errors.As(err, &pe) {
			d.errorf(v.pos, pe.Hint, "%s: %q is not a valid pattern: %s", f.key, text, pe.Msg)
		} else {
			d.errorf(v.pos, "", "%s: %v", f.key, err)
		}
		return nil, false
	}
	return r, true
}

func decodePort(d *decoder, f *field, v *tval) (any, bool) {
	n, ok := d.integer(f, v)
	if !ok {
		return nil, false
	}
	if n < 1 || n > 65535 {
		d.errorf(v.pos, "ports are 1-65535", "%s: port %d is out of range", f.key, n)
		return nil, false
	}
	return uint16(n), true
}

func decodeUpstream(d *decoder, f *field, v *tval) (any, bool) {
	s, ok := d.str(f, v)
	if !ok {
		return nil, false
	}
	var ap netip.AddrPort
	if a, err := netip.ParseAddr(s); err == nil {
		ap = netip.AddrPortFrom(a, 53)
	} else if ap, err = netip.ParseAddrPort(s); err != nil {
		hint := `write an IP address, optionally with a port: "192.0.2.53" or "192.0.2.53:5353"`
		if strings.Count(s, ":") > 1 && !strings.HasPrefix(s, "[") {
			hint = `put an IPv6 address with a port in brackets: "[2001:db8::53]:53"`
		}
		d.errorf(v.pos, hint, "%s: %q is not an IP address or IP:port", f.key, s)
		return nil, false
	}
	a := ap.Addr().Unmap()
	switch {
	case a.Zone() != "":
		d.errorf(v.pos, "", "%s: %q: IPv6 zones are not allowed", f.key, s)
		return nil, false
	case a.IsUnspecified() || a.IsMulticast():
		d.errorf(v.pos, "", "%s: %q is not a unicast address", f.key, s)
		return nil, false
	case ap.Port() == 0:
		d.errorf(v.pos, "ports are 1-65535", "%s: %q has port 0", f.key, s)
		return nil, false
	}
	return netip.AddrPortFrom(a, ap.Port()), true
}

// checkSandboxPath validates a path inside the sandbox: absolute (or "~/..."
// when home is allowed), clean, not the root and not under /proc, /sys or
// /dev. It returns a message and hint, or "" if the path is fine.
func checkSandboxPath(p string, home bool) (msg, hint string) {
	rest := p
	switch {
	case home && (p == "~" || strings.HasPrefix(p, "~/")):
		rest = "/" + strings.TrimPrefix(strings.TrimPrefix(p, "~"), "/")
		if p == "~" {
			return "mounting over the whole home directory is not allowed", "name a directory under it, e.g. \"~/.cache\""
		}
	case !strings.HasPrefix(p, "/"):
		if home {
			return "path must be absolute or start with ~/", ""
		}
		return "path must be absolute", ""
	}
	if strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
		return "path contains a NUL byte or invalid UTF-8", ""
	}
	if c := path.Clean(rest); c != rest {
		return "path is not clean", "did you mean " + strconv.Quote(strings.TrimSuffix(p, rest)+c) + "?"
	}
	if p == "/" {
		return "mounting over / is not allowed", ""
	}
	for _, sys := range []string{"/proc", "/sys", "/dev"} {
		if p == sys || strings.HasPrefix(p, sys+"/") {
			return "mounting over " + sys + " is not allowed", ""
		}
	}
	return "", ""
}

func decodeWorkspace(d *decoder, f *field, v *tval) (string, bool) {
	s, ok := d.str(f, v)
	if !ok {
		return "", false
	}
	if msg, hint := checkSandboxPath(s, false); msg != "" {
		d.errorf(v.pos, hint, "%s %q: %s", f.key, s, msg)
		return "", false
	}
	return s, true
}

// ForbiddenHostPath says why no sandbox may see host path p (absolute,
// clean) through filesystem.expose, filesystem.volumes or the workspace,
// or returns "": the whole host, its configuration, kernel interfaces and
// devices, its runtime state and sockets (the launcher's state directory,
// a container runtime's socket), root's home, /home and the homes in it,
// and a home's hidden entries (~/.ssh, ~/.aws, ~/.config). A directory
// below a home that is not hidden (~/projects/x) may be given. The
// launcher refuses more at launch, where it can see the host: every host
// account's home wherever it is, what leads to one, its hidden entries,
// and whatever a symbolic link in p leads to.
func ForbiddenHostPath(p string) string {
	under := func(dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	hiddenIn := func(home string) bool {
		rest, ok := strings.CutPrefix(p, home+"/")
		return ok && strings.HasPrefix(rest, ".")
	}
	homeDir, _, _ := strings.Cut(strings.TrimPrefix(p, "/home/"), "/")
	switch {
	case p == "/":
		return "it is the whole host"
	case under("/etc"):
		return "it is the host's configuration (the sandbox sees /etc read-only already)"
	case under("/proc"), under("/sys"), under("/dev"):
		return "it holds the host's kernel interfaces and devices"
	case under("/run"), under("/var/run"):
		return "it holds the host's runtime state and sockets (the launcher's own, a container runtime's)"
	case p == "/root":
		return "it is root's home"
	case hiddenIn("/root"):
		return "it is a hidden entry of root's home (credentials and configuration live there)"
	case p == "/home":
		return "it holds every user's home"
	case strings.HasPrefix(p, "/home/") && p == "/home/"+homeDir:
		return "it is a user's home"
	case strings.HasPrefix(p, "/home/") && hiddenIn("/home/"+homeDir):
		return "it is a hidden entry of a user's home (credentials and configuration live there)"
	}
	return ""
}

// decodeHostPath decodes an absolute, clean host path that the sandbox may
// be given.
func decodeHostPath(d *decoder, f *field, v *tval, s string) (string, bool) {
	switch {
	case strings.ContainsRune(s, 0) || !utf8.ValidString(s):
		d.errorf(v.pos, "", "%s: %q contains a NUL byte or invalid UTF-8", f.key, s)
		return "", false
	case !strings.HasPrefix(s, "/"):
		d.errorf(v.pos, "give the absolute path on the host", "%s: host path %q is not absolute", f.key, s)
		return "", false
	case path.Clean(s) != s:
		d.errorf(v.pos, "did you mean "+strconv.Quote(path.Clean(s))+"?", "%s: host path %q is not clean", f.key, s)
		return "", false
	}
	if why := ForbiddenHostPath(s); why != "" {
		d.errorf(v.pos, "name a directory that holds only what the sandbox needs", "%s: host path %s is never given to a sandbox: %s", f.key, s, why)
		return "", false
	}
	return s, true
}

func decodeExpose(d *decoder, f *field, v *tval) (string, bool) {
	s, ok := d.str(f, v)
	if !ok {
		return "", false
	}
	return decodeHostPath(d, f, v, s)
}

// decodeVolume decodes "HOST:PATH[:rw|ro]".
func decodeVolume(d *decoder, f *field, v *tval) (any, bool) {
	s, ok := d.str(f, v)
	if !ok {
		return nil, false
	}
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		d.errorf(v.pos, `for example: "/srv/agents/42/claude:~/.claude:rw" (host paths with ':' cannot be mounted)`,
			"%s: %q is not HOST:PATH[:rw|ro]", f.key, s)
		return nil, false
	}
	host, ok := decodeHostPath(d, f, v, parts[0])
	if !ok {
		return nil, false
	}
	vol := Volume{Host: host, Path: parts[1]}
	if msg, hint := checkSandboxPath(vol.Path, true); msg != "" {
		d.errorf(v.pos, hint, "%s %q: sandbox path %q: %s", f.key, s, vol.Path, msg)
		return nil, false
	}
	if len(parts) == 3 {
		switch parts[2] {
		case "rw":
		case "ro":
			vol.ReadOnly = true
		default:
			d.errorf(v.pos, meanHint(parts[2], []string{"rw", "ro"}), "%s %q: mode %q is not rw or ro", f.key, s, parts[2])
			return nil, false
		}
	}
	return vol, true
}

// decodeProtect decodes a path relative to the workspace; a trailing "/"
// says it is a directory.
func decodeProtect(d *decoder, f *field, v *tval) (string, bool) {
	s, ok := d.str(f, v)
	if !ok {
		return "", false
	}
	rel := strings.TrimSuffix(s, "/")
	switch {
	case strings.ContainsRune(s, 0) || !utf8.ValidString(s) || len(s) > 4096:
		d.errorf(v.pos, "", "%s: %q contains a NUL byte or invalid UTF-8, or is too long", f.key, s)
		return "", false
	case rel == "" || strings.HasPrefix(rel, "/") || strings.HasPrefix(rel, "~"):
		d.errorf(v.pos, `paths are relative to the workspace (and to each writable volume): ".git/hooks/", ".envrc"`,
			"%s: %q is not a relative path", f.key, s)
		return "", false
	case path.Clean(rel) != rel || rel == "." || rel == ".." || strings.HasPrefix(rel, "../"):
		d.errorf(v.pos, "did you mean "+strconv.Quote(path.Clean(rel))+"?", "%s: %q is not a clean path inside the workspace", f.key, s)
		return "", false
	case strings.ContainsAny(rel, "*?["):
		d.errorf(v.pos, "name each path; patterns are not supported", "%s: %q is a pattern", f.key, s)
		return "", false
	}
	return s, true
}

var tmpfsOptions = []string{"nosuid", "nodev", "noexec"}

// decodeTmpfs decodes "PATH[:opt,...]" or { path, size, mode, options }.
func decodeTmpfs(d *decoder, f *field, v *tval) (any, bool) {
	var t Tmpfs
	var opts []*tval // each option, with its position
	switch v.kind {
	case tString:
		p, rest, hasOpts := strings.Cut(v.str, ":")
		t.Path = p
		if hasOpts {
			for o := range strings.SplitSeq(rest, ",") {
				opts = append(opts, &tval{kind: tString, str: o, pos: v.pos, flag: v.flag})
			}
		}
	case tTable:
		known := []string{"path", "size", "mode", "options"}
		ok := true
		for _, k := range v.keys {
			e := v.m[k]
			switch k {
			case "path":
				if e.kind != tString {
					d.errorf(e.pos, `for example: { path = "/tmp" }`, "%s: path must be a string, not %s", f.key, e.kind.article())
					ok = false
				}
				t.Path = e.str
			case "size":
				if e.kind == tInt {
					opts = append(opts, &tval{kind: tString, str: "size=" + strconv.FormatInt(e.num, 10), pos: e.pos})
				} else if e.kind == tString {
					opts = append(opts, &tval{kind: tString, str: "size=" + e.str, pos: e.pos})
				} else {
					d.errorf(e.pos, `for example: size = "512m"`, "%s: size must be a size, not %s", f.key, e.kind.article())
					ok = false
				}
			case "mode":
				if e.kind != tString {
					d.errorf(e.pos, `write the octal mode as a string: mode = "1777"`, "%s: mode must be a string, not %s", f.key, e.kind.article())
					ok = false
				} else {
					opts = append(opts, &tval{kind: tString, str: "mode=" + e.str, pos: e.pos})
				}
			case "options":
				if e.kind != tArray {
					d.errorf(e.pos, `for example: options = ["nosuid", "nodev"]`, "%s: options must be an array of strings, not %s", f.key, e.kind.article())
					ok = false
					continue
				}
				for _, o := range e.elems {
					if o.kind != tString || strings.Contains(o.str, "=") {
						d.errorf(o.pos, "one of "+quotedList(tmpfsOptions)+"; size and mode have their own keys", "%s: invalid option", f.key)
						ok = false
						continue
					}
					opts = append(opts, o)
				}
			default:
				d.unknownTableKey(f, e, k, known)
				ok = false
			}
		}
		if _, has := v.m["path"]; !has {
			d.errorf(v.pos, `for example: { path = "/tmp", size = "512m" }`, "%s: entry has no path", f.key)
			return nil, false
		}
		if !ok {
			return nil, false
		}
	default:
		d.invalid(f, v)
		return nil, false
	}
	if msg, hint := checkSandboxPath(t.Path, true); msg != "" {
		d.errorf(v.pos, hint, "%s %q: %s", f.key, t.Path, msg)
		return nil, false
	}
	for _, o := range opts {
		name, val, hasVal := strings.Cut(o.str, "=")
		switch {
		case name == "size" && hasVal:
			n, err := parseSize(val)
			if err != nil || n < 0 {
				d.errorf(o.pos, `for example: size=512m`, "%s %q: size %q is not a size", f.key, t.Path, val)
				return nil, false
			}
			t.Size = n
		case name == "mode" && hasVal:
			m, err := strconv.ParseUint(val, 8, 32)
			if err != nil || m > 0o7777 {
				d.errorf(o.pos, `an octal permission, e.g. mode=1777 or mode=0700`, "%s %q: mode %q is not an octal mode", f.key, t.Path, val)
				return nil, false
			}
			t.Mode = uint32(m)
		case !hasVal && slices.Contains(tmpfsOptions, name):
			if !slices.Contains(t.Options, name) {
				t.Options = append(t.Options, name)
			}
		default:
			hint := meanHint(name, append([]string{"size", "mode"}, tmpfsOptions...))
			if hint == "" {
				hint = "options are size=SIZE, mode=OCTAL, " + strings.Join(tmpfsOptions, ", ")
			}
			d.errorf(o.pos, hint, "%s %q: unknown option %q", f.key, t.Path, o.str)
			return nil, false
		}
	}
	slices.Sort(t.Options)
	return t, true
}

// parseSize parses "512m", "4GiB", "1.5g", "1048576": every unit is binary
// (k = KiB = 1024), as in docker --memory. A bare number is bytes.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, unit := s[:i], strings.ToLower(strings.TrimSpace(s[i:]))
	if num == "" {
		return 0, errors.New("no number")
	}
	var mult float64
	switch unit {
	case "", "b":
		mult = 1
	case "k", "kb", "kib":
		mult = 1 << 10
	case "m", "mb", "mib":
		mult = 1 << 20
	case "g", "gb", "gib":
		mult = 1 << 30
	case "t", "tb", "tib":
		mult = 1 << 40
	default:
		return 0, fmt.Errorf("unknown unit %q", unit)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, err
	}
	n := f * mult
	if n >= math.MaxInt64 || math.IsNaN(n) {
		return 0, errors.New("too large")
	}
	return int64(n), nil
}

func decodeMemory(d *decoder, f *field, v *tval) (int64, bool) {
	var n int64
	switch {
	case v.kind == tInt:
		n = v.num
	case v.kind == tString:
		var err error
		if n, err = parseSize(v.str); err != nil {
			d.errorf(v.pos, `use a number with a unit: "512m", "4GiB"`, "%s: %q is not a size", f.key, v.str)
			return 0, false
		}
	default:
		d.invalid(f, v)
		return 0, false
	}
	switch {
	case n < 0:
		d.errorf(v.pos, "0 means no limit", "%s must not be negative", f.key)
		return 0, false
	case n > 0 && n < 1<<20:
		d.errorf(v.pos, fmt.Sprintf("a number without a unit is bytes; did you mean \"%dm\"?", n),
			"%s = %d is less than 1 MiB", f.key, n)
		return 0, false
	}
	return n, true
}

func decodePids(d *decoder, f *field, v *tval) (int64, bool) {
	n, ok := d.integer(f, v)
	if !ok {
		return 0, false
	}
	if n < 0 {
		d.errorf(v.pos, "0 means no limit", "%s must not be negative", f.key)
		return 0, false
	}
	return n, true
}

func decodeCPUs(d *decoder, f *field, v *tval) (float64, bool) {
	var c float64
	switch {
	case v.kind == tFloat:
		c = v.flt
	case v.kind == tInt:
		c = float64(v.num)
	case v.flag:
		var err error
		if c, err = strconv.ParseFloat(strings.TrimSpace(v.str), 64); err != nil {
			d.invalid(f, v)
			return 0, false
		}
	default:
		d.invalid(f, v)
		return 0, false
	}
	if math.IsNaN(c) || c < 0 || c > 1024 {
		d.errorf(v.pos, "for example: "+f.example, "%s = %v is out of range (0 to 1024)", f.key, c)
		return 0, false
	}
	return c, true
}

func decodeTimeout(d *decoder, f *field, v *tval) (time.Duration, bool) {
	if v.kind == tInt && v.num == 0 {
		return 0, true
	}
	if v.kind != tString {
		if v.kind == tInt {
			d.errorf(v.pos, fmt.Sprintf(`give a unit: timeout = "%ds"`, v.num), "%s must be a duration string, not an integer", f.key)
		} else {
			d.invalid(f, v)
		}
		return 0, false
	}
	if v.str == "0" {
		return 0, true
	}
	t, err := time.ParseDuration(v.str)
	if err != nil {
		d.errorf(v.pos, `for example: "90s", "30m", "1h30m"`, "%s: %q is not a duration", f.key, v.str)
		return 0, false
	}
	if t < 0 {
		d.errorf(v.pos, `"0" means no timeout`, "%s must not be negative", f.key)
		return 0, false
	}
	return t, true
}

func decodeUser(d *decoder, f *field, v *tval) (User, bool) {
	if v.kind == tInt {
		if v.num < 0 || v.num >= math.MaxUint32 {
			d.errorf(v.pos, "", "%s: uid %d is out of range", f.key, v.num)
			return User{}, false
		}
		return User{UID: uint32(v.num), GID: uint32(v.num)}, true
	}
	s, ok := d.str(f, v)
	if !ok {
		return User{}, false
	}
	parseID := func(x string) (uint32, bool) {
		n, err := strconv.ParseUint(x, 10, 32)
		return uint32(n), err == nil && n < math.MaxUint32
	}
	uidText, gidText, hasGID := strings.Cut(s, ":")
	if uid, ok := parseID(uidText); ok {
		if !hasGID {
			return User{UID: uid, GID: uid}, true
		}
		if gid, ok := parseID(gidText); ok {
			return User{UID: uid, GID: gid}, true
		}
		d.errorf(v.pos, `write "UID:GID" with numbers, e.g. "1000:1000"`, "%s: group %q is not a numeric gid", f.key, gidText)
		return User{}, false
	}
	if !hasGID && validUserName(s) {
		return User{Name: s}, true
	}
	d.errorf(v.pos, `write "UID", "UID:GID" or a user name such as "nobody"`, "%s: %q is not a user", f.key, s)
	return User{}, false
}

// validUserName is the portable user name shape (useradd's default).
func validUserName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z' || c == '_':
		case i > 0 && (c >= '0' && c <= '9' || c == '-'):
		case i == len(s)-1 && i > 0 && c == '$':
		default:
			return false
		}
	}
	return true
}

// capabilities are the Linux capabilities, by number (linux/capability.h).
var capabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
	"CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
	"CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
	"CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
	"CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
	"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// Capabilities returns the Linux capability names a policy may add.
func Capabilities() []string { return slices.Clone(capabilities) }

// NormalizeCapability returns "CAP_X" for "cap_x", "x" or "CAP_X", and
// whether it is a Linux capability.
func NormalizeCapability(s string) (string, bool) {
	c := strings.ToUpper(strings.TrimSpace(s))
	if !strings.HasPrefix(c, "CAP_") {
		c = "CAP_" + c
	}
	return c, slices.Contains(capabilities, c)
}

func decodeCap(d *decoder, f *field, v *tval) (string, bool) {
	s, ok := d.str(f, v)
	if !ok {
		return "", false
	}
	c, ok := NormalizeCapability(s)
	if ok {
		return c, true
	}
	hint := meanHint(c, capabilities)
	if strings.EqualFold(s, "all") || strings.EqualFold(s, "cap_all") {
		hint = "list the capabilities needed one by one"
	}
	d.errorf(v.pos, hint, "%s: %q is not a Linux capability", f.key, s)
	return "", false
}

func decodeSeccomp(d *decoder, f *field, v *tval) (string, bool) {
	s, ok := d.str(f, v)
	if !ok {
		return "", false
	}
	levels := []string{SeccompStrict, SeccompModerate, SeccompUnconfined}
	if l := strings.ToLower(s); slices.Contains(levels, l) {
		return l, true
	}
	if strings.HasPrefix(s, "/") {
		if c := path.Clean(s); c != s || strings.ContainsRune(s, 0) {
			d.errorf(v.pos, "did you mean "+strconv.Quote(c)+"?", "%s: path %q is not clean", f.key, s)
			return "", false
		}
		return s, true
	}
	hint := meanHint(s, levels)
	if hint == "" && (strings.Contains(s, "/") || strings.HasSuffix(s, ".json")) {
		hint = "a seccomp profile path must be absolute"
	}
	d.errorf(v.pos, hint, "%s: %q is not a seccomp level (%s) or an absolute path to a profile",
		f.key, s, strings.Join(levels, ", "))
	return "", false
}

// ValidEnvName reports whether s has the shell's variable name shape
// ([A-Za-z_][A-Za-z0-9_]*, at most 255 bytes).
func ValidEnvName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func decodeEnvName(d *decoder, f *field, v *tval) (string, bool) {
	s, ok := d.str(f, v)
	if !ok {
		return "", false
	}
	if ValidEnvName(s) {
		return s, true
	}
	hint := "names are letters, digits and _, not starting with a digit"
	if name, _, has := strings.Cut(s, "="); has && ValidEnvName(name) {
		hint = "env.pass takes names only; give a value under [env.set]: " + name + ` = "..."`
	}
	d.errorf(v.pos, hint, "%s: %q is not an environment variable name", f.key, s)
	return "", false
}

func decodeEnvValue(d *decoder, f *field, v *tval) (any, bool) {
	s, ok := d.str(f, v)
	if !ok {
		return nil, false
	}
	if strings.ContainsRune(s, 0) || !utf8.ValidString(s) {
		d.errorf(v.pos, "", "%s: value contains a NUL byte or invalid UTF-8", f.key)
		return nil, false
	}
	return s, true
}

func decodeCommand(d *decoder, f *field, v *tval) (string, bool) {
	s, ok := d.str(f, v)
	if !ok {
		return "", false
	}
	bad := s == "" || s == "." || s == ".." || len(s) > 4096 || !utf8.ValidString(s) ||
		strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0
	switch {
	case bad:
		d.errorf(v.pos, "", "%s: %q is not a command name or path", f.key, s)
		return "", false
	case strings.HasPrefix(s, "/"):
		if c := path.Clean(s); c != s {
			d.errorf(v.pos, "did you mean "+strconv.Quote(c)+"?", "%s: path %q is not clean", f.key, s)
			return "", false
		}
	case strings.Contains(s, "/"):
		d.errorf(v.pos, "use a command name (\"git\") or an absolute path (\"/usr/bin/git\")", "%s: %q is a relative path", f.key, s)
		return "", false
	}
	return s, true
}
