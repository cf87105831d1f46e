package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/sandbox/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// DefaultRuntime is the OCI runtime used when none is named and crun
// cannot be (NewRuntime).
const DefaultRuntime = "runc"

// KnownRuntimes are the runtime names NewRuntime accepts besides a path.
var KnownRuntimes = []string{"runc", "crun", "runsc"}

const (
	// killGrace bounds how long Wait, after the container's process
	// ended, waits for its output to drain, and how long Start waits for
	// a runtime it killed.
	killGrace = 5 * time.Second
	// commandTimeout bounds the runtime's short commands (kill, delete,
	// list) when the caller's context has no deadline.
	commandTimeout = 30 * time.Second
	// runtimeLog is the runtime's own log file in the bundle.
	runtimeLog = "runtime.log"
)

// Runtime runs containers with an OCI runtime binary (runc's command line:
// crun and runsc accept the same commands used here).
type Runtime struct {
	// Name is what was asked for ("runc", "crun", "runsc" or a path), or
	// the one chosen when none was.
	Name string
	// Path is the binary.
	Path string
	// Root is the runtime's state directory (--root); "" means the
	// runtime's default (/run/runc for runc as root), where `runc list`
	// shows the containers.
	Root string
	// Why says why this runtime runs the containers: named, or chosen
	// (and why crun was not, when it was not).
	Why string
}

// NewRuntime finds the OCI runtime name (a known name looked up in PATH, or
// a path to a binary) and returns it with state directory root ("" for the
// runtime's default). With no name it chooses: crun where it is installed
// and works on the host's cgroup layout (it starts a container in a third
// of runc's time), else runc.
func NewRuntime(name, root string) (*Runtime, error) {
	if root != "" && !filepath.IsAbs(root) {
		return nil, fmt.Errorf("runtime state directory %q is not an absolute path", root)
	}
	if name == "" {
		return chooseRuntime(root, exec.LookPath, hostCgroupMode(), runtimeOCIMax)
	}
	var p string
	if strings.Contains(name, "/") {
		st, err := os.Stat(name)
		if err != nil {
			return nil, fmt.Errorf("runtime %s: %w", name, err)
		}
		if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			return nil, fmt.Errorf("runtime %s is not an executable file", name)
		}
		p = name
	} else {
		known := false
		for _, k := range KnownRuntimes {
			known = known || k == name
		}
		if !known {
			return nil, fmt.Errorf("unknown runtime %q: want one of %s, or the path of an OCI runtime binary", name, strings.Join(KnownRuntimes, ", "))
		}
		var err error
		p, err = exec.LookPath(name)
		if err != nil {
			return nil, fmt.Errorf("runtime %s not found: install it or use --runtime %s", name, DefaultRuntime)
		}
	}
	return &Runtime{Name: name, Path: p, Root: root, Why: "named (--runtime)"}, nil
}

// chooseRuntime is NewRuntime without a name: crun when lookPath finds
// it, mode is a cgroup layout crun runs on, and ociMax (crun features)
// says it takes the spec's version (crun refuses a spec of an ociVersion
// it does not know: crun 1.8 takes 1.0 and 1.1 only); else runc.
func chooseRuntime(root string, lookPath func(string) (string, error), mode cgroupMode, ociMax func(path string) (string, error)) (*Runtime, error) {
	why := ""
	if p, err := lookPath("crun"); err != nil {
		why = "crun is not installed"
	} else if refusal := mode.crunRefusal(); refusal != "" {
		why = "crun is installed but " + refusal
	} else if max, err := ociMax(p); err != nil || !versionAtLeast(max, specs.Version) {
		if err != nil {
			why = fmt.Sprintf("crun is installed but cannot say which spec versions it runs (%s features: %v), and the spec is %s", p, err, specs.Version)
		} else {
			why = fmt.Sprintf("crun is installed but runs specs up to %s, and the spec is %s", max, specs.Version)
		}
	} else {
		return &Runtime{Name: "crun", Path: p, Root: root, Why: "chosen: crun is installed, runs on this host's cgroups (" + mode.String() + ") and takes spec " + specs.Version}, nil
	}
	p, err := lookPath(DefaultRuntime)
	if err != nil {
		return nil, fmt.Errorf("no OCI runtime found: install runc (or crun), or name one with --runtime PATH (%s)", why)
	}
	return &Runtime{Name: DefaultRuntime, Path: p, Root: root, Why: "chosen: " + why}, nil
}

// runtimeOCIMax asks the runtime at path for the newest spec version it
// runs (`features`: ociVersionMax).
func runtimeOCIMax(path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, "features")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%v: %s", err, oneLineMsg(strings.TrimSpace(stderr.String()+stdout.String())))
	}
	var f struct {
		OCIVersionMax string `json:"ociVersionMax"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &f); err != nil || f.OCIVersionMax == "" {
		return "", fmt.Errorf("no ociVersionMax in its answer")
	}
	return f.OCIVersionMax, nil
}

// versionAtLeast reports whether version a ("1.2.0", "1.0.2-dev") is at
// least b, comparing major, minor and patch numbers (a suffix after '-'
// makes it a pre-release of its numbers: less).
func versionAtLeast(a, b string) bool {
	parse := func(v string) (n [3]int, pre bool) {
		v, suffix, _ := strings.Cut(v, "-")
		for i, part := range strings.SplitN(v, ".", 3) {
			n[i], _ = strconv.Atoi(part)
		}
		return n, suffix != ""
	}
	na, preA := parse(a)
	nb, preB := parse(b)
	if c := slices.Compare(na[:], nb[:]); c != 0 {
		return c > 0
	}
	return !preA || preB
}

// cgroupMode is how the host mounts its cgroups, as far as the choice of
// runtime cares (cgroupLayout is where the launcher's own cgroups are).
type cgroupMode struct {
	// Unified: /sys/fs/cgroup is cgroup v2 itself.
	Unified bool
	// Hybrid: v1 hierarchies with a v2 one at /sys/fs/cgroup/unified,
	// whose available controllers are HybridControllers.
	Hybrid            bool
	HybridControllers []string
}

// hostCgroupMode reads the host's cgroup layout.
func hostCgroupMode() cgroupMode {
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return cgroupMode{Unified: true}
	}
	var l cgroupMode
	if unix.Statfs("/sys/fs/cgroup/unified", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		l.Hybrid = true
		data, _ := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers")
		l.HybridControllers = strings.Fields(string(data))
	}
	return l
}

func (l cgroupMode) String() string {
	switch {
	case l.Unified:
		return "v2, unified"
	case l.Hybrid && len(l.HybridControllers) > 0:
		return "hybrid v1 + v2, controllers " + strings.Join(l.HybridControllers, " ") + " on v2"
	case l.Hybrid:
		return "hybrid v1 + v2, no controller on v2"
	}
	return "v1"
}

// crunRefusal says why crun cannot run containers on l, or "". crun
// (1.8) refuses a hybrid layout whose v2 hierarchy has controllers:
// "cgroups in hybrid mode not supported, drop all controllers from
// cgroupv2".
func (l cgroupMode) crunRefusal() string {
	if l.Hybrid && len(l.HybridControllers) > 0 {
		return "refuses this host's cgroup layout (" + l.String() + "; crun: \"cgroups in hybrid mode not supported, drop all controllers from cgroupv2\")"
	}
	return ""
}

// checkID refuses a container id that is not 1-128 letters, digits, '_',
// '.' and '-' starting with a letter or digit (so it can never be read as
// an option). Written out rather than as a regexp: the {0,127} repetition
// compiled at every start of the launcher, and of the init in every
// sandbox, cost 0.6 ms.
func checkID(id string) error {
	ok := len(id) >= 1 && len(id) <= 128 && isAlnum(id[0])
	for i := 1; ok && i < len(id); i++ {
		c := id[i]
		ok = isAlnum(c) || c == '_' || c == '.' || c == '-'
	}
	if !ok {
		return fmt.Errorf("container id %q: want letters, digits, '_', '.' and '-', starting with a letter or digit", id)
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func (r *Runtime) command(ctx context.Context, args ...string) *exec.Cmd {
	var full []string
	if r.Root != "" {
		full = append(full, "--root", r.Root)
	}
	full = append(full, args...)
	return exec.CommandContext(ctx, r.Path, full...)
}

// runtimeErrors returns the error-level messages of a runtime's JSON log.
func runtimeErrors(logPath string) string {
	f, err := os.Open(logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	var msgs []string
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var e struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if (e.Level == "error" || e.Level == "fatal") && e.Msg != "" {
			msgs = append(msgs, e.Msg)
		}
	}
	return strings.Join(msgs, "; ")
}

// shortCtx bounds a short runtime command when ctx has no deadline.
func shortCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, commandTimeout)
}

func (r *Runtime) runShort(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := shortCtx(ctx)
	defer cancel()
	cmd := r.command(ctx, args...)
	cmd.Env = []string{"PATH=" + specconv.DefaultPath}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return stdout.Bytes(), &runtimeError{cmd: r.Name + " " + strings.Join(args, " "), msg: msg}
	}
	return stdout.Bytes(), nil
}

type runtimeError struct{ cmd, msg string }

func (e *runtimeError) Error() string { return e.cmd + ": " + e.msg }

// notFound reports whether a runtime error says the container does not
// exist (runc: "container does not exist"; crun: "... No such file or
// directory"; runsc: "... not found").
func notFound(err error) bool {
	var re *runtimeError
	if !errors.As(err, &re) {
		return false
	}
	m := strings.ToLower(re.msg)
	return strings.Contains(m, "does not exist") || strings.Contains(m, "no such file or directory") ||
		strings.Contains(m, "not found")
}

// Kill sends sig to the container's init process (`runc kill ID SIG`).
// With the container's own pid namespace, SIGKILL ends every process in it.
func (r *Runtime) Kill(ctx context.Context, id string, sig syscall.Signal) error {
	if err := checkID(id); err != nil {
		return err
	}
	_, err := r.runShort(ctx, "kill", id, strconv.Itoa(int(sig)))
	return err
}

// Delete removes the container (`runc delete --force ID`), killing what is
// left of it. A container that does not exist is not an error, so Delete
// is safe in every cleanup path.
func (r *Runtime) Delete(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	_, err := r.runShort(ctx, "delete", "--force", id)
	if err != nil && !notFound(err) {
		return err
	}
	return nil
}

// ContainerState is one container the runtime knows.
type ContainerState struct {
	ID      string    `json:"id"`
	Pid     int       `json:"pid"`
	Status  string    `json:"status"`
	Bundle  string    `json:"bundle"`
	Created time.Time `json:"created"`
}

// List returns the runtime's containers (`runc list --format json`).
func (r *Runtime) List(ctx context.Context) ([]ContainerState, error) {
	out, err := r.runShort(ctx, "list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var states []ContainerState
	if err := json.Unmarshal(bytes.TrimSpace(out), &states); err != nil {
		return nil, fmt.Errorf("%s list: %w", r.Name, err)
	}
	return states, nil
}

// WriteBundle writes spec as dir/config.json (mode 0600: it holds the
// environment, secrets included), creating dir (mode 0700) if needed. The
// file is replaced atomically.
func WriteBundle(dir string, spec *specs.Spec) error {
	if spec == nil || spec.Root == nil || spec.Process == nil {
		return errors.New("writing the bundle: incomplete spec (no root or process)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("writing the bundle: %w", err)
	}
	data, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return fmt.Errorf("writing the bundle: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".config.json.*")
	if err != nil {
		return fmt.Errorf("writing the bundle: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the bundle: %w", err)
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the bundle: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing the bundle: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, "config.json")); err != nil {
		return fmt.Errorf("writing the bundle: %w", err)
	}
	return nil
}

// hostContainers runs containers with the runtime's binary (Containers).
type hostContainers struct{}

// Create opens and identifies every source of binds (recordBinds), has the
// runtime create the container, and verifies that each planned destination
// shows its recorded object (boundObjects.verify); a container that fails
// the check is destroyed. Once made, a mount shows the object it was made
// of whatever later happens to the source's path, so the check holds until
// the container is started, however long after.
func (hostContainers) Create(ctx context.Context, rt *Runtime, id, bundle string, streams Streams, binds []BindMount) (Created, error) {
	objs, err := recordBinds(binds)
	if err != nil {
		return nil, err
	}
	defer objs.Close()
	check := objs.verify
	if testHook != nil {
		testHook("create")
		check = func(pid int) error {
			testHook("verify")
			defer testHook("verified")
			return objs.verify(pid)
		}
	}
	c, err := rt.create(ctx, id, bundle, streams, check)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// testHook, set only by tests, runs at "placeholders", before the
// protected paths' placeholders of a directory are made, at "create",
// between the recording of a container's bind sources and the runtime's
// create, at "verify", between the create and the check of its mounts,
// and at "verified", after the check: where a sandbox sharing a directory
// would swap a path, and swap it back.
var testHook func(stage string)

// Delete runs the runtime's delete, unless runc certainly has no record of
// the container: runc (with its default state directory) removes one that
// ran to its end itself, and its state lives in /run/runc/ID. For another
// runtime or state directory the delete always runs.
func (hostContainers) Delete(ctx context.Context, rt *Runtime, id string) error {
	if rt.Name == "runc" && rt.Root == "" {
		if _, err := os.Lstat(filepath.Join("/run/runc", id)); errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	return rt.Delete(ctx, id)
}
