package specconv

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/egressd/egressd/policy"
)

func uintp(n uint) *uint { return &n }

// refused returns the errno each unconditional rule gives a syscall name.
func refused(s *specs.LinuxSeccomp) map[string]uint {
	out := map[string]uint{}
	for _, r := range s.Syscalls {
		if len(r.Args) > 0 || r.Action != specs.ActErrno {
			continue
		}
		errno := uint(1)
		if r.ErrnoRet != nil {
			errno = *r.ErrnoRet
		}
		for _, n := range r.Names {
			out[n] = errno
		}
	}
	return out
}

// TestBuiltinSeccompRefusesEscapeSyscalls checks the built-in filters
// refuse what the design says, on both architectures they cover.
func TestBuiltinSeccompRefusesEscapeSyscalls(t *testing.T) {
	common := []string{"mount", "umount2", "unshare", "setns", "ptrace", "bpf", "keyctl", "add_key",
		"request_key", "userfaultfd", "perf_event_open", "kexec_load", "kexec_file_load", "reboot",
		"swapon", "swapoff", "init_module", "finit_module", "delete_module", "open_by_handle_at",
		"pivot_root", "fsopen", "fsmount", "move_mount", "open_tree", "socketcall"}
	strictOnly := []string{"chroot", "name_to_handle_at", "syslog", "iopl"}
	for _, arch := range []struct {
		goarch string
		want   []specs.Arch
	}{
		{"amd64", []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}},
		{"arm64", []specs.Arch{specs.ArchAARCH64, specs.ArchARM}},
	} {
		for _, level := range []string{policy.SeccompStrict, policy.SeccompModerate} {
			s, err := LoadSeccomp(level, SeccompEnv{Arch: arch.goarch})
			if err != nil {
				t.Fatalf("%s: %v", level, err)
			}
			if s.DefaultAction != specs.ActAllow {
				t.Errorf("%s default action %s", level, s.DefaultAction)
			}
			if d := cmp.Diff(arch.want, s.Architectures); d != "" {
				t.Errorf("%s on %s architectures (-want +got)\n%s", level, arch.goarch, d)
			}
			got := refused(s)
			names := common
			if level == policy.SeccompStrict {
				names = append(slices.Clone(common), strictOnly...)
			}
			for _, n := range names {
				if got[n] != 1 {
					t.Errorf("%s does not refuse %s with EPERM", level, n)
				}
			}
			if got["clone3"] != 38 {
				t.Errorf("%s: clone3 errno %d, want ENOSYS (38) so libc falls back to clone", level, got["clone3"])
			}
			for _, n := range []string{"io_uring_setup", "io_uring_enter", "io_uring_register"} {
				if got[n] != 38 {
					t.Errorf("%s: %s errno %d, want ENOSYS (38), the answer of a kernel without io_uring", level, n, got[n])
				}
			}
			if level == policy.SeccompModerate {
				for _, n := range strictOnly {
					if _, ok := got[n]; ok {
						t.Errorf("moderate refuses %s, which only strict should", n)
					}
				}
			}
		}
	}
	if s, err := LoadSeccomp(policy.SeccompUnconfined, SeccompEnv{}); s != nil || err != nil {
		t.Errorf("unconfined = %v, %v; want no filter", s, err)
	}
}

// seccompVerdict is the errno a filter answers one system call with (0:
// allowed), reading its rules the way libseccomp compiles them for a
// 64-bit architecture: a rule matches when all its conditions hold, on the
// full 64-bit arguments. That reading is exact only for filters whose
// rules need no backtracking (TestBuiltinSeccompRulesNeedNoBacktracking).
func seccompVerdict(t *testing.T, s *specs.LinuxSeccomp, name string, args ...uint64) uint {
	t.Helper()
	if s.DefaultAction != specs.ActAllow {
		t.Fatalf("seccompVerdict reads allow-by-default filters, not %s", s.DefaultAction)
	}
	var verdict uint
	matched := false
	for _, r := range s.Syscalls {
		if !slices.Contains(r.Names, name) || !seccompArgsMatch(r.Args, args) {
			continue
		}
		if r.Action != specs.ActErrno {
			t.Fatalf("seccompVerdict reads SCMP_ACT_ERRNO rules, not %s (%s)", r.Action, name)
		}
		errno := uint(1) // runc's default errno: EPERM
		if r.ErrnoRet != nil {
			errno = *r.ErrnoRet
		}
		if matched && errno != verdict {
			t.Fatalf("%s%v: two rules answer errno %d and %d", name, args, verdict, errno)
		}
		verdict, matched = errno, true
	}
	return verdict
}

func seccompArgsMatch(conds []specs.LinuxSeccompArg, args []uint64) bool {
	for _, c := range conds {
		var a uint64
		if int(c.Index) < len(args) {
			a = args[c.Index]
		}
		var ok bool
		switch c.Op {
		case specs.OpEqualTo:
			ok = a == c.Value
		case specs.OpNotEqual:
			ok = a != c.Value
		case specs.OpGreaterThan:
			ok = a > c.Value
		case specs.OpGreaterEqual:
			ok = a >= c.Value
		case specs.OpLessThan:
			ok = a < c.Value
		case specs.OpLessEqual:
			ok = a <= c.Value
		case specs.OpMaskedEqual:
			ok = a&c.Value == c.ValueTwo
		}
		if !ok {
			return false
		}
	}
	return true
}

// TestBuiltinSeccompRulesNeedNoBacktracking: libseccomp merges the rules of
// one system call into a tree and does not backtrack: when a rule's first
// condition holds and its second fails, the other rules' conditions on the
// first argument are never tried. A moderate profile with "domain != 16
// and type is SOCK_RAW" next to "domain > 16" let i386 socket(AF_VSOCK)
// through. So a rule with two conditions must be the only rule of its
// system call; otherwise every rule checks one argument.
func TestBuiltinSeccompRulesNeedNoBacktracking(t *testing.T) {
	for _, level := range []string{policy.SeccompStrict, policy.SeccompModerate} {
		for _, arch := range []string{"amd64", "arm64"} {
			s, err := LoadSeccomp(level, SeccompEnv{Arch: arch})
			if err != nil {
				t.Fatal(err)
			}
			rules := map[string]int{}
			for _, r := range s.Syscalls {
				for _, n := range r.Names {
					rules[n]++
				}
			}
			for _, r := range s.Syscalls {
				if len(r.Args) < 2 {
					continue
				}
				for _, n := range r.Names {
					if rules[n] > 1 {
						t.Errorf("%s on %s: a rule with %d conditions for %s, which has %d rules", level, arch, len(r.Args), n, rules[n])
					}
				}
			}
		}
	}
}

// TestBuiltinSeccompAllowsOnlyListedSocketFamilies checks, for every
// family number and for socket and socketpair alike, that the built-in
// filters allow exactly AF_UNIX, AF_INET, AF_INET6 (and AF_NETLINK under
// moderate), that no high bits in the domain (the kernel reads the low 32)
// turn a refused family into an allowed one, and that strict refuses
// SOCK_RAW whatever the flags (THREATS F4, F5).
func TestBuiltinSeccompAllowsOnlyListedSocketFamilies(t *testing.T) {
	const (
		afUnix, afInet, afInet6, afNetlink, afPacket, afVsock = 1, 2, 10, 16, 17, 40
		sockStream, sockDgram, sockRaw                        = 1, 2, 3
		sockNonblock, sockCloexec                             = 0x800, 0x80000
	)
	tests := []struct {
		level   string
		allowed []uint64
		rawOK   []uint64 // families where the filter lets SOCK_RAW through
	}{
		{policy.SeccompStrict, []uint64{afUnix, afInet, afInet6}, nil},
		// moderate leaves raw IP to CAP_NET_RAW: pairing a family with a
		// type would need a two-condition rule beside the family rules.
		{policy.SeccompModerate, []uint64{afUnix, afInet, afInet6, afNetlink}, []uint64{afUnix, afInet, afInet6, afNetlink}},
	}
	for _, tc := range tests {
		s, err := LoadSeccomp(tc.level, SeccompEnv{Arch: "amd64"})
		if err != nil {
			t.Fatal(err)
		}
		for _, call := range []string{"socket", "socketpair"} {
			var allowed []uint64
			for family := uint64(0); family < 256; family++ {
				if seccompVerdict(t, s, call, family, sockStream, 0) == 0 {
					allowed = append(allowed, family)
				}
				for _, high := range []uint64{1 << 32, 0xffffffff00000000} {
					if !slices.Contains(tc.allowed, family) && seccompVerdict(t, s, call, high|family, sockStream, 0) == 0 {
						t.Errorf("%s: %s(%#x) allowed: the kernel reads it as family %d", tc.level, call, high|family, family)
					}
				}
			}
			if d := cmp.Diff(tc.allowed, allowed); d != "" {
				t.Errorf("%s: %s families allowed (-want +got)\n%s", tc.level, call, d)
			}
			for _, family := range tc.allowed {
				for _, typ := range []uint64{sockRaw, sockRaw | sockNonblock | sockCloexec, 1<<32 | sockRaw} {
					errno := seccompVerdict(t, s, call, family, typ, 0)
					if want := !slices.Contains(tc.rawOK, family); (errno != 0) != want {
						t.Errorf("%s: %s(%d, %#x) errno %d, refused should be %v", tc.level, call, family, typ, errno, want)
					}
				}
				if errno := seccompVerdict(t, s, call, family, sockDgram|sockCloexec, 0); errno != 0 {
					t.Errorf("%s: %s(%d, SOCK_DGRAM|SOCK_CLOEXEC) refused with errno %d", tc.level, call, family, errno)
				}
			}
			for _, family := range []uint64{afPacket, afVsock} {
				if errno := seccompVerdict(t, s, call, family, sockStream, 0); errno != 1 {
					t.Errorf("%s: %s(%d) errno %d, want EPERM", tc.level, call, family, errno)
				}
			}
		}
	}
}

// TestBuiltinSeccompRefusesSOMark: the sandbox firewall exempts egressd's
// socket mark, and CAP_NET_RAW sets one since Linux 5.17; the filters
// refuse setsockopt(SOL_SOCKET, SO_MARK) on the low 32 bits of level and
// name, as the kernel reads them, and nothing else.
func TestBuiltinSeccompRefusesSOMark(t *testing.T) {
	const solSocket, soMark, soReuseAddr, solIP = 1, 36, 2, 0
	for _, level := range []string{policy.SeccompStrict, policy.SeccompModerate} {
		s, err := LoadSeccomp(level, SeccompEnv{Arch: "amd64"})
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			level, name uint64
			want        uint
		}{
			{solSocket, soMark, 1},
			{1<<32 | solSocket, soMark, 1},
			{solSocket, 1<<33 | soMark, 1},
			{solSocket, soReuseAddr, 0},
			{solIP, soMark, 0},
		} {
			if got := seccompVerdict(t, s, "setsockopt", 3, tc.level, tc.name, 0, 4); got != tc.want {
				t.Errorf("%s: setsockopt(3, %#x, %#x) errno %d, want %d", level, tc.level, tc.name, got, tc.want)
			}
		}
	}
}

// TestDockerProfileConditionsFollowDocker checks includes/excludes are
// evaluated as Docker does, for the container's capabilities, the target
// architecture and the kernel.
func TestDockerProfileConditionsFollowDocker(t *testing.T) {
	data, err := os.ReadFile("testdata/seccomp/docker-style.json")
	if err != nil {
		t.Fatal(err)
	}
	allow := func(names ...string) specs.LinuxSyscall {
		return specs.LinuxSyscall{Names: names, Action: specs.ActAllow}
	}
	base := []specs.LinuxSyscall{
		allow("read", "write", "exit_group", "execve"),
		{Names: []string{"personality"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{{Index: 0, Value: 0, Op: specs.OpEqualTo}}},
	}
	clone3 := specs.LinuxSyscall{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: uintp(38)}
	tests := []struct {
		name string
		env  SeccompEnv
		want *specs.LinuxSeccomp
	}{
		{"amd64, no caps", SeccompEnv{Arch: "amd64", Kernel: [2]uint64{6, 1}}, &specs.LinuxSeccomp{
			DefaultAction: specs.ActErrno, DefaultErrnoRet: uintp(1),
			Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32},
			Syscalls:      append(slices.Clone(base), allow("arch_prctl"), clone3, allow("io_uring_setup")),
		}},
		{"amd64, NET_BIND_SERVICE, old kernel", SeccompEnv{Arch: "amd64", Caps: []string{"CAP_NET_BIND_SERVICE"}, Kernel: [2]uint64{4, 19}}, &specs.LinuxSeccomp{
			DefaultAction: specs.ActErrno, DefaultErrnoRet: uintp(1),
			Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32},
			Syscalls:      append(slices.Clone(base), allow("bind"), allow("arch_prctl"), clone3),
		}},
		{"arm64, SYS_ADMIN", SeccompEnv{Arch: "arm64", Caps: []string{"CAP_SYS_ADMIN"}, Kernel: [2]uint64{5, 1}}, &specs.LinuxSeccomp{
			DefaultAction: specs.ActErrno, DefaultErrnoRet: uintp(1),
			Architectures: []specs.Arch{specs.ArchAARCH64, specs.ArchARM},
			Syscalls:      append(slices.Clone(base), allow("mount"), allow("io_uring_setup")),
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSeccomp("docker-style.json", data, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got)\n%s", d)
			}
		})
	}
}

func TestOCIFormatSeccompProfileLoads(t *testing.T) {
	path, err := filepath.Abs("testdata/seccomp/oci-style.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadSeccomp(path, SeccompEnv{Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	want := &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{specs.ArchX86_64},
		Flags:         []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagLog},
		Syscalls: []specs.LinuxSyscall{
			{Names: []string{"ptrace"}, Action: specs.ActKillProcess},
			{Names: []string{"socket"}, Action: specs.ActErrno, ErrnoRet: uintp(97), Args: []specs.LinuxSeccompArg{{Index: 0, Value: 40, Op: specs.OpEqualTo}}},
		},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
}

// TestBadSeccompProfileFailsWithItsLine: a profile that cannot be loaded
// fails the launch, naming the file and line.
func TestBadSeccompProfileFailsWithItsLine(t *testing.T) {
	tests := []struct {
		name, profile, want string
	}{
		{"syntax error", "{\n  \"defaultAction\": \"SCMP_ACT_ALLOW\"\n  \"syscalls\": []\n}",
			`seccomp profile /x.json: line 3: invalid JSON: invalid character '"' after object key:value pair`},
		{"truncated", "{\n  \"defaultAction\": \"SCMP_ACT_ALLOW\",\n",
			"seccomp profile /x.json: line 2: invalid JSON: unexpected end of JSON input"},
		{"unknown action", "{\n  \"defaultAction\": \"SCMP_ACT_ALLOW\",\n  \"syscalls\": [\n    {\"names\": [\"ptrace\"], \"action\": \"SCMP_ACT_DENY\"}\n  ]\n}",
			`seccomp profile /x.json: line 4: unknown action "SCMP_ACT_DENY" (want one of SCMP_ACT_KILL, SCMP_ACT_KILL_PROCESS, SCMP_ACT_KILL_THREAD, SCMP_ACT_TRAP, SCMP_ACT_ERRNO, SCMP_ACT_TRACE, SCMP_ACT_ALLOW, SCMP_ACT_LOG, SCMP_ACT_NOTIFY)`},
		{"unknown default action", "{\n\n  \"defaultAction\": \"ALLOW\"\n}",
			`seccomp profile /x.json: line 3: unknown action "ALLOW" (want one of SCMP_ACT_KILL, SCMP_ACT_KILL_PROCESS, SCMP_ACT_KILL_THREAD, SCMP_ACT_TRAP, SCMP_ACT_ERRNO, SCMP_ACT_TRACE, SCMP_ACT_ALLOW, SCMP_ACT_LOG, SCMP_ACT_NOTIFY)`},
		{"typo in a rule field", "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n \"syscalls\": [{\"names\": [\"ptrace\"],\n   \"acton\": \"SCMP_ACT_ERRNO\"}]}",
			`seccomp profile /x.json: line 3: unknown field "acton"`},
		{"typo at the top", "{\"defaultAction\": \"SCMP_ACT_ERRNO\",\n \"syscals\": []}",
			`seccomp profile /x.json: line 2: unknown field "syscals" (want defaultAction, defaultErrnoRet, architectures, archMap, flags or syscalls)`},
		{"missing default", "{\"syscalls\": []}", "seccomp profile /x.json: defaultAction is missing"},
		{"notify", "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n\"syscalls\": [{\"names\": [\"mount\"], \"action\": \"SCMP_ACT_NOTIFY\"}]}",
			"seccomp profile /x.json: line 2: action SCMP_ACT_NOTIFY needs a notification listener, which the launcher does not run"},
		{"listener", "{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"listenerPath\": \"/run/x.sock\"}",
			"seccomp profile /x.json: line 1: listenerPath: seccomp notification listeners are not supported"},
		{"bad operator", "{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": [\n{\"names\": [\"socket\"], \"action\": \"SCMP_ACT_ERRNO\", \"args\": [{\"index\": 0, \"value\": 1, \"op\": \"SCMP_CMP_SORTA\"}]}]}",
			`seccomp profile /x.json: line 2: unknown operator "SCMP_CMP_SORTA"`},
		{"bad index", "{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": [\n{\"names\": [\"socket\"], \"action\": \"SCMP_ACT_ERRNO\", \"args\": [{\"index\": 6, \"value\": 1, \"op\": \"SCMP_CMP_EQ\"}]}]}",
			"seccomp profile /x.json: line 2: argument index 6: system calls have arguments 0 to 5"},
		{"wrong type", "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n\"syscalls\": [{\"names\": \"ptrace\", \"action\": \"SCMP_ACT_ERRNO\"}]}",
			"seccomp profile /x.json: line 2: names: want []string, not JSON string"},
		{"no names", "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n\"syscalls\": [{\"action\": \"SCMP_ACT_ERRNO\"}]}",
			"seccomp profile /x.json: line 2: a syscall rule without names"},
		{"name and names", "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n\"syscalls\": [{\"name\": \"a\", \"names\": [\"b\"], \"action\": \"SCMP_ACT_ERRNO\"}]}",
			"seccomp profile /x.json: line 2: both name and names are given; use names"},
		{"bad syscall name", "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n\"syscalls\": [{\"names\": [\"Mount!\"], \"action\": \"SCMP_ACT_ERRNO\"}]}",
			`seccomp profile /x.json: line 2: "Mount!" is not a system call name`},
		{"unknown architecture", "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n\"architectures\": [\"SCMP_ARCH_Z80\"]}",
			`seccomp profile /x.json: line 2: unknown architecture "SCMP_ARCH_Z80"`},
		{"both arch forms", "{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"architectures\": [],\n\"archMap\": []}",
			"seccomp profile /x.json: line 2: both architectures and archMap are given; use one"},
		{"unknown capability", "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n\"syscalls\": [{\"names\": [\"a\"], \"action\": \"SCMP_ACT_ALLOW\", \"includes\": {\"caps\": [\"CAP_FLY\"]}}]}",
			`seccomp profile /x.json: line 2: unknown capability "CAP_FLY"`},
		{"bad minKernel", "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n\"syscalls\": [{\"names\": [\"a\"], \"action\": \"SCMP_ACT_ALLOW\", \"includes\": {\"minKernel\": \"five\"}}]}",
			`seccomp profile /x.json: line 2: minKernel "five": want "<kernel>.<major>", e.g. "5.8"`},
		{"duplicate key", "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n\"defaultAction\": \"SCMP_ACT_KILL\"}",
			`seccomp profile /x.json: line 2: "defaultAction" is given twice`},
		{"not an object", "[]", "seccomp profile /x.json: line 1: want a JSON object"},
		{"trailing data", "{\"defaultAction\": \"SCMP_ACT_ALLOW\"}\n{}", "seccomp profile /x.json: line 2: invalid JSON: invalid character '{' after top-level value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSeccomp("/x.json", []byte(tc.profile), SeccompEnv{Arch: "amd64", Kernel: [2]uint64{6, 1}})
			if err == nil {
				t.Fatalf("parsed; want %q", tc.want)
			}
			if err.Error() != tc.want {
				t.Errorf("error\n got %q\nwant %q", err, tc.want)
			}
		})
	}
}

func TestLoadSeccompRefusesWhatIsNotAProfile(t *testing.T) {
	tests := []struct{ name, want string }{
		{"", "no seccomp profile given"},
		{"relative.json", "not strict, moderate, unconfined or an absolute path"},
		{"/nonexistent/profile.json", "seccomp profile /nonexistent/profile.json: open /nonexistent/profile.json: no such file or directory"},
	}
	for _, tc := range tests {
		_, err := LoadSeccomp(tc.name, SeccompEnv{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("LoadSeccomp(%q) err = %v, want %q", tc.name, err, tc.want)
		}
	}
	big := filepath.Join(t.TempDir(), "big.json")
	if err := os.WriteFile(big, make([]byte, maxSeccompFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSeccomp(big, SeccompEnv{}); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized profile: %v", err)
	}
}

func TestHostKernelIsReadable(t *testing.T) {
	k, err := hostKernel()
	if err != nil || k[0] < 3 {
		t.Errorf("hostKernel = %v, %v", k, err)
	}
}

func FuzzParseSeccomp(f *testing.F) {
	for _, name := range []string{"seccomp/strict.json", "seccomp/moderate.json"} {
		data, err := builtinSeccomp.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, name := range []string{"testdata/seccomp/docker-style.json", "testdata/seccomp/oci-style.json"} {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSeccomp("fuzz.json", data, SeccompEnv{Arch: "amd64", Kernel: [2]uint64{6, 1}})
		if err == nil && s == nil {
			t.Fatal("no filter and no error")
		}
		if err != nil && !strings.HasPrefix(err.Error(), "seccomp profile fuzz.json: ") {
			t.Fatalf("error without the file name: %v", err)
		}
	})
}
