package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/firewall"
	"github.com/egressd/egressd/policy"
)

// The ports `egressd serve` listens on by default (its --dns-listen,
// --transparent-listen and --proxy-listen); `egressd firewall` defaults to
// the same, so the two agree when neither is told otherwise.
const (
	defaultDNSPort         = 53
	defaultTransparentPort = 15001
	defaultProxyPort       = 3128
)

// currentNetns names the namespace egressd itself runs in. The firewall
// package acts on it without setns(2), so CAP_NET_ADMIN is enough.
const currentNetns = "/proc/self/ns/net"

// firewallTimeout bounds one firewall operation (a few iptables runs).
const firewallTimeout = 60 * time.Second

const firewallUsage = `usage: egressd firewall install [flags]
       egressd firewall verify [flags]
       egressd firewall remove [--netns PATH]

Puts the sandbox firewall, the same rule set the launcher installs, into the
current network namespace (or --netns): all DNS to egressd's resolver, all
other TCP to its transparent listener, everything else rejected, for IPv4 and
IPv6, in chains egressd owns. For an init container in a Kubernetes pod, or a
namespace another tool made. Needs CAP_NET_ADMIN (and CAP_NET_RAW for the
iptables-legacy backend).

  install  installs or repairs the rules (idempotent), then verifies them
  verify   exits 1 and prints the difference unless the namespace holds
           exactly what install puts there
  remove   removes egressd's chains and the jumps to them

Exit status: 0 done (verify: no difference); 1 failed, or verify found a
difference; 2 usage errors.

Examples:
  egressd firewall install --exempt-uid 1337 --dns-port 15053 --admin-port 9901
  egressd firewall install --mark 0x4547 --dry-run
  egressd firewall verify --exempt-uid 1337 --dns-port 15053 --admin-port 9901
  ip netns exec fc0 egressd firewall install --mark 0x4547
`

// firewallOptions are the flags of install and verify.
type firewallOptions struct {
	netns           string
	mode            string
	dnsPort         uint
	transparentPort uint
	proxyPort       uint
	mark            uint
	exemptUID       optionalUint
	adminPorts      portList
	upstreamPorts   portList
	inboundPorts    portList
	dryRun          bool
}

// newFirewallFlags returns the flag set of `egressd firewall OP`. remove
// takes --netns only; install also takes --dry-run.
func newFirewallFlags(op string, stderr io.Writer) (*flag.FlagSet, *firewallOptions) {
	o := &firewallOptions{}
	fs := newFlagSet("firewall "+op, firewallUsage+"\nflags:\n", stderr)
	fs.StringVar(&o.netns, "netns", currentNetns, "network namespace `PATH` (/run/netns/NAME, /proc/PID/ns/net); default: the current one")
	if op == "remove" {
		return fs, o
	}
	fs.StringVar(&o.mode, "mode", string(policy.ModeFiltered), "network `MODE`: filtered (through egressd) or none (loopback only)")
	fs.UintVar(&o.dnsPort, "dns-port", defaultDNSPort, "`PORT` of egressd's resolver on 127.0.0.1 and ::1 (serve --dns-listen)")
	fs.UintVar(&o.transparentPort, "transparent-port", defaultTransparentPort, "`PORT` of egressd's transparent listener (serve --transparent-listen)")
	fs.UintVar(&o.proxyPort, "proxy-port", defaultProxyPort, "`PORT` of egressd's explicit proxy (serve --proxy-listen); 0: none")
	fs.Var(&o.adminPorts, "admin-port", "loopback TCP `PORT` only egressd may reach: its admin/metrics listener (repeatable or comma-separated)")
	fs.UintVar(&o.mark, "mark", 0, "exempt sockets carrying this SO_MARK `N` (serve --mark; egressd needs CAP_NET_ADMIN); 0: none")
	fs.Var(&o.exemptUID, "exempt-uid", "exempt sockets of this `UID` (egressd's own uid, where it cannot hold CAP_NET_ADMIN; never a uid the workload runs as)")
	fs.Var(&o.upstreamPorts, "upstream-dns-port", "UDP `PORT` of egressd's upstream resolvers its exempt sockets may reach (repeatable; default 53)")
	fs.Var(&o.inboundPorts, "inbound-port", "TCP `PORT` on which connections from outside the namespace are accepted (repeatable; default: none)")
	if op == "install" {
		fs.BoolVar(&o.dryRun, "dry-run", false, "print the iptables-restore batches for a fresh namespace and change nothing")
	}
	return fs, o
}

// config turns the flags into the firewall's config, or says what is wrong.
func (o *firewallOptions) config() (firewall.Config, error) {
	var errs []error
	port := func(name string, v uint, zeroOK bool) uint16 {
		if v > 65535 || (v == 0 && !zeroOK) {
			errs = append(errs, fmt.Errorf("--%s %d: want a port from 1 to 65535", name, v))
			return 0
		}
		return uint16(v)
	}
	cfg := firewall.Config{Mode: policy.Mode(o.mode)}
	if cfg.Mode == policy.ModeNone {
		return cfg, cfg.Validate()
	}
	cfg.DNSPort = port("dns-port", o.dnsPort, false)
	cfg.TransparentPort = port("transparent-port", o.transparentPort, false)
	cfg.ExplicitProxyPort = port("proxy-port", o.proxyPort, true)
	if o.mark > 0xffffffff {
		errs = append(errs, fmt.Errorf("--mark %d does not fit in 32 bits", o.mark))
	}
	cfg.Mark = uint32(o.mark)
	if o.exemptUID.set {
		if o.exemptUID.v > 0xfffffffe {
			errs = append(errs, fmt.Errorf("--exempt-uid %d is not a uid", o.exemptUID.v))
		}
		uid := uint32(o.exemptUID.v)
		cfg.ExemptUID = &uid
	}
	cfg.ProtectedPorts = o.adminPorts
	cfg.UpstreamDNSPorts = o.upstreamPorts
	cfg.InboundTCPPorts = o.inboundPorts
	if err := errors.Join(errs...); err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("%w%s", err, flagHint(err))
	}
	return cfg, nil
}

// flagHint names the flags behind a config error phrased in field names.
func flagHint(err error) string {
	s := err.Error()
	var hints []string
	for field, fl := range map[string]string{"Mark": "--mark", "ExemptUID": "--exempt-uid", "DNSPort": "--dns-port",
		"TransparentPort": "--transparent-port", "ExplicitProxyPort": "--proxy-port", "ProtectedPorts": "--admin-port",
		"UpstreamDNSPorts": "--upstream-dns-port", "InboundTCPPorts": "--inbound-port"} {
		if strings.Contains(s, field) {
			hints = append(hints, field+" is "+fl)
		}
	}
	if len(hints) == 0 {
		return ""
	}
	slices.Sort(hints)
	return "\n(flags: " + strings.Join(hints, ", ") + ")"
}

func cmdFirewall(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, firewallUsage)
		return exitUsage
	}
	op := args[0]
	switch op {
	case "install", "verify", "remove":
	case "-h", "--help", "help":
		fmt.Fprint(stdout, firewallUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "egressd firewall: unknown operation %q (want install, verify or remove)\n\n%s", op, firewallUsage)
		return exitUsage
	}
	fs, o := newFirewallFlags(op, stderr)
	if err := fs.Parse(args[1:]); err != nil {
		return flagExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "egressd firewall %s: unexpected argument %q\n", op, fs.Arg(0))
		return exitUsage
	}
	var cfg firewall.Config
	if op != "remove" {
		var err error
		if cfg, err = o.config(); err != nil {
			fmt.Fprintf(stderr, "egressd firewall %s: %v\n", op, err)
			return exitUsage
		}
	}
	if o.dryRun {
		v4, v6, err := firewall.Rules(cfg)
		if err != nil {
			fmt.Fprintf(stderr, "egressd firewall install: %v\n", err)
			return exitUsage
		}
		stdout.Write(v4)
		stdout.Write(v6)
		return exitOK
	}
	if err := needNetAdmin(); err != nil {
		fmt.Fprintf(stderr, "egressd firewall %s: %v\n", op, err)
		return exitFail
	}
	ctx, cancel := context.WithTimeout(ctx, firewallTimeout)
	defer cancel()
	where := o.netns
	if where == currentNetns {
		where = "the current network namespace"
	}
	switch op {
	case "install":
		if err := firewall.Install(ctx, o.netns, cfg); err != nil {
			fmt.Fprintf(stderr, "egressd firewall install: %v\n", err)
			return exitFail
		}
		if code := verifyFirewall(ctx, o.netns, cfg, stderr, "install"); code != exitOK {
			return code
		}
		fmt.Fprintf(stdout, "egressd firewall: installed and verified in %s (mode %s, IPv4 and IPv6)\n", where, cfg.Mode)
	case "verify":
		if code := verifyFirewall(ctx, o.netns, cfg, stderr, "verify"); code != exitOK {
			return code
		}
		fmt.Fprintf(stdout, "egressd firewall: %s holds exactly the rules for mode %s\n", where, cfg.Mode)
	case "remove":
		if err := firewall.Flush(ctx, o.netns); err != nil {
			fmt.Fprintf(stderr, "egressd firewall remove: %v\n", err)
			return exitFail
		}
		fmt.Fprintf(stdout, "egressd firewall: removed from %s\n", where)
	}
	return exitOK
}

// verifyFirewall runs firewall.Verify and prints every difference, one per
// paragraph.
func verifyFirewall(ctx context.Context, nsPath string, cfg firewall.Config, stderr io.Writer, op string) int {
	err := firewall.Verify(ctx, nsPath, cfg)
	var drift *firewall.DriftError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &drift):
		fmt.Fprintf(stderr, "egressd firewall %s: the firewall in %s differs from its config:\n", op, drift.NSPath)
		for _, p := range drift.Problems {
			fmt.Fprintf(stderr, "  %s\n", p)
		}
	default:
		fmt.Fprintf(stderr, "egressd firewall %s: %v\n", op, err)
	}
	return exitFail
}

// needNetAdmin fails unless the process holds CAP_NET_ADMIN in its
// effective set: without it every iptables call fails with a message about
// permissions or, with iptables-nft, about an "incompatible" table.
func needNetAdmin() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading this process's capabilities: %w", err)
	}
	if data[0].Effective&(1<<unix.CAP_NET_ADMIN) == 0 {
		return errors.New("needs CAP_NET_ADMIN in the network namespace, which this process does not hold: run it as root, or give the init container the NET_ADMIN and NET_RAW capabilities")
	}
	return nil
}

// portList is a repeatable, comma-separated list of ports.
type portList []uint16

func (l *portList) String() string {
	var s []string
	for _, p := range *l {
		s = append(s, strconv.Itoa(int(p)))
	}
	return strings.Join(s, ",")
}

func (l *portList) Set(v string) error {
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("%q is not a port from 1 to 65535", f)
		}
		*l = append(*l, uint16(n))
	}
	return nil
}

// optionalUint is a uint flag that knows whether it was given.
type optionalUint struct {
	v   uint64
	set bool
}

func (o *optionalUint) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.FormatUint(o.v, 10)
}

func (o *optionalUint) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return fmt.Errorf("%q is not a number (a numeric uid: the name may not exist where the rules are installed)", s)
	}
	o.v, o.set = n, true
	return nil
}
