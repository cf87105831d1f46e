package sandbox

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/sandbox/pid1"
	"github.com/egressd/egressd/sandbox/specconv"
)

// Plan is everything one launch will do, decided before anything is done:
// NewPlan makes it from a Config (it reads the host: the accounts, the
// view's files, resolv.conf, seccomp profiles, and makes the sandbox's
// inspection CA, but changes nothing), Apply executes exactly it against
// the kernel, and `launcher explain` prints it (Explain).
//
// Its parts follow what they depend on. The network namespace, its
// firewall (Firewall), the uplink and egressd's process are the same for
// every tenant of a shape (mode, listeners, mark); what a tenant brings is
// egressd's policy snapshot (Egressd.Policy), and the container's command,
// environment, limits and files (Container). A warm pool (issue 10)
// applies the first part once, with a deny-everything policy and an idle
// container, and the tenant's part per execution.
type Plan struct {
	// ID names everything the sandbox makes (IDPrefix and 8 hex digits).
	ID string `json:"id"`
	// StateRoot is the launcher's state directory; StateDir the sandbox's
	// own in it (StateRoot/ID).
	StateRoot string `json:"state_root"`
	StateDir  string `json:"state_dir"`
	// Mode is the profile's network mode.
	Mode policy.Mode `json:"mode"`
	// Profile is every value of the resolved profile with its source.
	Profile []policy.Provenance `json:"profile"`
	// Netns is the sandbox's network namespace (NetnsDir/ID); "" in host
	// mode.
	Netns string `json:"netns,omitempty"`
	// Firewall is the namespace's rules (firewall.Rules renders them); nil
	// in host mode.
	Firewall *firewall.Config `json:"firewall,omitempty"`
	// Uplink and Egressd are filtered mode's; nil otherwise.
	Uplink  *UplinkPlan  `json:"uplink,omitempty"`
	Egressd *EgressdPlan `json:"egressd,omitempty"`
	// Container is the container: its spec, view, user, protected paths,
	// generated files and bundle.
	Container *ContainerPlan `json:"container"`
	// Runtime runs it.
	Runtime *Runtime `json:"runtime"`

	// cfg is the launch's Config (its defaults applied): the sinks and
	// the kernel Apply uses, and the profile Run's timeout comes from.
	cfg Config
	// secrets are the values masked in the sandbox's output.
	secrets []string
	// ins is the launch's inspection plan (its CA made), for planning the
	// container again (Plan.makeContainer).
	ins *inspectPlan
}

// ContainerPlan is the container half of a plan (specconv.Convert) and
// where it is made.
type ContainerPlan struct {
	*specconv.Container
	// Bundle is the OCI bundle directory (StateDir/bundle).
	Bundle string `json:"bundle"`
	// WritableRoot: the root is a throwaway overlay the sandbox may
	// write; otherwise read-only.
	WritableRoot bool `json:"writable_root"`
	// Init is the init binary bound at pid1.Path (Config.Init); "" for
	// none.
	Init string `json:"init,omitempty"`
}

// ExplainID is the id `launcher explain` plans for: it names no sandbox.
const ExplainID = IDPrefix + "00000000"

// newID returns a fresh sandbox id.
func newID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return IDPrefix + hex.EncodeToString(b[:])
}

// NewPlan plans the launch cfg describes (see Plan). With cfg.ID empty the
// plan names a fresh random id; Apply then claims it.
func NewPlan(cfg Config) (*Plan, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, configError{err}
	}
	p := cfg.Profile
	pl := &Plan{ID: cfg.ID, StateRoot: cfg.StateDir, Mode: p.Network.Mode, Profile: p.Explain(), Runtime: cfg.Runtime, cfg: cfg}
	if pl.ID == "" {
		pl.ID = newID()
	}
	if !validID(pl.ID) {
		return nil, fmt.Errorf("sandbox id %q: want %s and 8 hex digits", pl.ID, IDPrefix)
	}
	pl.StateDir = filepath.Join(pl.StateRoot, pl.ID)
	for _, sec := range cfg.Secrets {
		pl.secrets = append(pl.secrets, sec.Value)
	}
	ins, err := planInspection(cfg)
	if err != nil {
		return nil, err
	}
	if err := ins.makeCA(pl.ID); err != nil {
		return nil, err
	}
	pl.ins = ins
	if err := pl.planNetwork(ins); err != nil {
		return nil, err
	}
	if err := pl.planContainer(ins); err != nil {
		return nil, err
	}
	return pl, nil
}

// configError is a Config that cannot be planned at all (Config.withDefaults).
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

// planNetwork plans the namespace, its firewall, the uplink and egressd.
func (pl *Plan) planNetwork(ins *inspectPlan) error {
	cfg := pl.cfg
	switch pl.Mode {
	case policy.ModeHost:
		return nil
	case policy.ModeNone:
		pl.Netns = filepath.Join(NetnsDir, pl.ID)
		pl.Firewall = &firewall.Config{Mode: policy.ModeNone}
		return nil
	}
	pl.Netns = filepath.Join(NetnsDir, pl.ID)
	upstream, err := UpstreamDNS(cfg.Profile, cfg.ResolvConf)
	if err != nil {
		return err
	}
	pl.Firewall = &firewall.Config{Mode: policy.ModeFiltered, DNSPort: EgressdDNSPort, TransparentPort: EgressdTransparentPort,
		ExplicitProxyPort: EgressdProxyPort, Mark: cfg.Mark, UpstreamDNSPorts: upstreamPorts(upstream)}
	if _, _, err := firewall.Rules(*pl.Firewall); err != nil {
		return err
	}
	pl.Uplink = planUplink(pl.ID, cfg.Subnet)
	if _, err := pickPrefix(cfg.Subnet, nil, 0); err != nil {
		return err
	}
	dir := filepath.Join(pl.StateDir, "egressd")
	snapshot, err := egressdPolicy(cfg.Profile)
	if err != nil {
		return err
	}
	files, err := ins.egressdFiles(cfg.InspectUpstreamCA)
	if err != nil {
		return err
	}
	pl.Egressd = &EgressdPlan{Binary: cfg.EgressdPath, Dir: dir, UID: cfg.EgressdUID, GID: cfg.EgressdGID,
		Args: egressdArgs(egressdFlags{dir: dir, mark: cfg.Mark, upstream: upstream, sandboxID: pl.ID,
			extra: ins.egressdArgs(dir, cfg.InspectUpstreamCA)}),
		Policy: snapshot, Files: files, ReadyTimeout: cfg.ReadyTimeout}
	return nil
}

// planContainer plans the container (specconv.Convert) in the sandbox's
// state directory.
func (pl *Plan) planContainer(ins *inspectPlan) error {
	cfg := pl.cfg
	image := ""
	if cfg.Rootfs != "/" {
		image = cfg.Rootfs
	}
	var env []string
	for _, sec := range cfg.Secrets {
		env = append(env, sec.Name+"="+ins.env(sec)) // a credential's secret stays with egressd
	}
	in := specconv.Input{Profile: cfg.Profile, Args: cfg.Args, Image: image, HostRoot: cfg.HostRoot, CallerEnv: cfg.CallerEnv,
		Env: env, Workdir: cfg.Workdir, WorkspaceDir: cfg.WorkspaceDir, Hostname: cfg.Hostname, Init: cfg.Init,
		Terminal: cfg.Terminal, StateRoot: pl.StateRoot, Dir: pl.StateDir, ID: pl.ID, NetNSPath: pl.Netns,
		ProxyURL: fmt.Sprintf("http://127.0.0.1:%d", EgressdProxyPort), ReservedUID: cfg.EgressdUID, ReservedGID: cfg.EgressdGID}
	if ins.inspects {
		in.TrustCA = ins.caCert
	}
	if pl.Mode == policy.ModeHost {
		in.NetNSPath = ""
	}
	c, err := specconv.Convert(in)
	if err != nil {
		return err
	}
	pl.Container = &ContainerPlan{Container: c, Bundle: filepath.Join(pl.StateDir, "bundle"),
		WritableRoot: !cfg.Profile.Filesystem.ReadOnly, Init: cfg.Init}
	return nil
}

// Explanation is a plan as `launcher explain` shows it.
type Explanation struct {
	// Profile is every value of the resolved profile with its source.
	Profile []policy.Provenance `json:"profile"`
	// FirewallIPv4 and FirewallIPv6 are the sandbox namespace's rules, as
	// iptables-restore input; empty in host mode.
	FirewallIPv4 string `json:"firewall_ipv4,omitempty"`
	FirewallIPv6 string `json:"firewall_ipv6,omitempty"`
	// Uplink is the launcher-side NAT and FORWARD rules (filtered mode),
	// shown for the first /30 of the subnet (the one used is chosen at
	// launch).
	Uplink string `json:"uplink,omitempty"`
	// Egressd is egressd's command line (filtered mode).
	Egressd []string `json:"egressd,omitempty"`
	// View is what of the host the sandbox sees: the system directories
	// (or the image), exposed paths, volumes, and what is hidden.
	View *specconv.View `json:"view"`
	// User is who the command runs as.
	User specconv.User `json:"user"`
	// Protected are the mounts keeping the protected paths of the
	// workspace and the writable volumes; empty without either.
	Protected []specconv.ProtectedPath `json:"protected,omitempty"`
	// Warnings are what a launch would warn about.
	Warnings []string `json:"warnings,omitempty"`
	// Init is the sandbox's process 1 (Config.Init); nil without one.
	Init *InitExplanation `json:"init,omitempty"`
	// Spec is the OCI runtime spec. Environment values are shown as
	// "<redacted>" (RedactEnv).
	Spec *specs.Spec `json:"spec"`
}

// InitExplanation is the init a launch runs as the sandbox's process 1.
type InitExplanation struct {
	// Path is where it runs inside the sandbox, Binary the host file
	// bound read-only there.
	Path   string `json:"path"`
	Binary string `json:"binary"`
	// Forwards are the signals it passes on to the command's process
	// group ("SIGINT", ...).
	Forwards []string `json:"forwards"`
}

// Explain renders the plan for a person: the firewall's and the uplink's
// rules, egressd's command line, the view, the user, the protected paths,
// the init and the spec. It is a rendering of the plan, never another
// derivation: the spec is the plan's, environment values redacted.
func (pl *Plan) Explain() (*Explanation, error) {
	c := pl.Container
	ex := &Explanation{Profile: pl.Profile, View: c.View, User: c.User, Protected: c.Protected, Warnings: c.Warnings}
	if pl.Firewall != nil {
		v4, v6, err := firewall.Rules(*pl.Firewall)
		if err != nil {
			return nil, err
		}
		ex.FirewallIPv4, ex.FirewallIPv6 = string(v4), string(v6)
	}
	if pl.Uplink != nil {
		first, err := pickPrefix(pl.Uplink.Subnet, nil, 0)
		if err != nil {
			return nil, err
		}
		rules, err := firewall.UplinkRules(pl.Uplink.nat(first))
		if err != nil {
			return nil, err
		}
		ex.Uplink = string(rules)
	}
	if pl.Egressd != nil {
		ex.Egressd = append([]string{"egressd"}, pl.Egressd.Args...)
	}
	if c.Init != "" {
		ex.Init = &InitExplanation{Path: pid1.Path, Binary: c.Init}
		for _, sig := range pid1.Forwarded {
			ex.Init.Forwards = append(ex.Init.Forwards, unix.SignalName(sig.(syscall.Signal)))
		}
	}
	spec := *c.Spec
	proc := *spec.Process
	proc.Env = RedactEnv(proc.Env)
	spec.Process = &proc
	ex.Spec = &spec
	return ex, nil
}

// shownEnv are the variables whose values explain shows.
var shownEnv = []string{"PATH", "HOME", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"}

// RedactEnv returns env with every value but PATH's, HOME's and the proxy
// variables' replaced by "<redacted>": they may hold credentials.
func RedactEnv(env []string) []string {
	out := make([]string, len(env))
	for i, e := range env {
		if name, _, _ := strings.Cut(e, "="); !slices.Contains(shownEnv, name) {
			out[i] = name + "=<redacted>"
		} else {
			out[i] = e
		}
	}
	return out
}

// upstreamPorts are the distinct ports of up, sorted.
func upstreamPorts(up []netip.AddrPort) []uint16 {
	var ports []uint16
	for _, u := range up {
		if !slices.Contains(ports, u.Port()) {
			ports = append(ports, u.Port())
		}
	}
	slices.Sort(ports)
	return ports
}
