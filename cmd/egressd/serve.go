package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/egressd/egressd/internal/daemon"
	"github.com/egressd/egressd/policy"
)

const serveUsage = `usage: egressd serve [flags]

Runs the DNS resolver and the explicit and transparent proxy that enforce the
policy, inside a sandbox's network namespace. Listens before it says ready
(log line "ready", --ready-fd), reloads the policy on file change, SIGHUP and
POST /reload, and shuts down gracefully on SIGTERM.
Exit status: 0 after a clean shutdown, 1 when a listener fails while serving,
2 on usage, policy or start-up errors.

Examples:
  egressd serve --policy /etc/egressd/policy.toml --mark 0x4547 --admin-listen 127.0.0.1:9901
  egressd serve --policy policy.toml --inspect-ca-cert /var/lib/egressd/ca.pem --inspect-ca-key /etc/egressd/ca.key \
      --secret-file ANTHROPIC_API_KEY=/run/secrets/anthropic
  egressd serve --profile strict --allow pypi.org --allow files.pythonhosted.org \
      --dns-listen 127.0.0.1:15053,[::1]:15053 --audit-log -

flags:
`

// serveOptions are serve's flags.
type serveOptions struct {
	policies, allow, block, inspect, secretFiles, secretEnv               listFlag
	inspectCACert, inspectCAKey, inspectUpstreamCA                        string
	dnsListen, proxyListen, transparentListen                             listListFlag
	profile, floor, adminListen, upstream, auditLog, logFormat, sandboxID string
	logLevel, ruleSources                                                 string
	mark                                                                  uint
	watchPolicy                                                           bool
	readyFD                                                               int
	cfg                                                                   daemon.Config
}

// newServeFlags returns serve's flag set.
func newServeFlags(stderr io.Writer) (*flag.FlagSet, *serveOptions) {
	fs := newFlagSet("serve", serveUsage, stderr)
	o := &serveOptions{}
	cfg := &o.cfg
	fs.Var(&o.policies, "policy", "policy `FILE` (repeatable, applied in order; watched for changes)")
	fs.StringVar(&o.profile, "profile", "", "built-in base `profile` (default: the policy's, else standard)")
	fs.StringVar(&o.floor, "floor", os.Getenv("EGRESSD_SECURITY_FLOOR"), "refuse, at start and on reload, a policy less restrictive than this built-in `profile` (env EGRESSD_SECURITY_FLOOR)")
	fs.Var(&o.allow, "allow", "allow `PATTERN` on top of the policy (repeatable)")
	fs.Var(&o.block, "block", "block `PATTERN` on top of the policy (repeatable)")
	fs.Var(&o.inspect, "inspect", "inspect the HTTPS of hosts matching `PATTERN` (repeatable; network.inspect without rules)")
	fs.StringVar(&o.inspectCACert, "inspect-ca-cert", "", "inspection CA certificate `FILE` (made with --inspect-ca-key if neither exists)")
	fs.StringVar(&o.inspectCAKey, "inspect-ca-key", "", "inspection CA key `FILE`, readable by egressd only")
	fs.StringVar(&o.inspectUpstreamCA, "inspect-upstream-ca", "", "PEM `FILE` the inspected hosts' certificates are verified against (default: the system trust store)")
	fs.Var(&o.secretFiles, "secret-file", "a credential's secret `NAME=PATH`, read at start and on reload (repeatable)")
	fs.Var(&o.secretEnv, "secret-env", "a credential's secret from egressd's variable `NAME` (repeatable)")
	fs.Var(&o.dnsListen, "dns-listen", fmt.Sprintf("resolver `ADDR` for UDP and TCP (repeatable or comma-separated; default 127.0.0.1:%d,[::1]:%d)", defaultDNSPort, defaultDNSPort))
	fs.Var(&o.proxyListen, "proxy-listen", fmt.Sprintf("explicit proxy `ADDR` (default 127.0.0.1:%d)", defaultProxyPort))
	fs.Var(&o.transparentListen, "transparent-listen", fmt.Sprintf("transparent proxy `ADDR`, the REDIRECT target (default 127.0.0.1:%d,[::1]:%d)", defaultTransparentPort, defaultTransparentPort))
	fs.StringVar(&o.adminListen, "admin-listen", "", "admin endpoint `ADDR|unix:PATH` (/healthz /readyz /metrics /reload /policy); empty: none")
	fs.StringVar(&o.upstream, "upstream-dns", "", "upstream resolvers `ADDR[,ADDR]`, as network.upstream_dns on top of the policy (default: the policy's, else /etc/resolv.conf)")
	fs.UintVar(&o.mark, "mark", 0, "SO_MARK `N` set on every upstream socket (needs CAP_NET_ADMIN); 0: none")
	fs.BoolVar(&o.watchPolicy, "watch-policy", true, "re-read the policy files when they change; false: only on SIGHUP and POST /reload")
	fs.StringVar(&o.auditLog, "audit-log", "", "write one JSON line per decision to `PATH` (- for stdout); empty: none")
	fs.DurationVar(&cfg.AuditFlushInterval, "audit-flush-interval", 0, "the longest an audit record waits to be written (default 100ms): what a SIGKILL can lose")
	fs.StringVar(&o.logFormat, "log-format", "text", "operational log format on stderr: `text|json`")
	fs.StringVar(&o.logLevel, "log-level", "info", "least severe operational log written: `debug|info|warn|error` (debug adds every refusal)")
	fs.StringVar(&o.ruleSources, "rule-sources", "", "JSON `FILE` mapping a policy line (\"file:line\") to the source to report for its rule instead (for policies another tool writes: the launcher's)")
	fs.StringVar(&o.sandboxID, "sandbox-id", "", "sandbox `ID` stamped on every audit record")
	fs.IntVar(&o.readyFD, "ready-fd", -1, "write \"ready\\n\" to file descriptor `N` and close it once serving")
	fs.IntVar(&cfg.DNSMaxNameLen, "dns-max-name-len", 0, "refuse query names longer than `N` bytes (default 253)")
	fs.Float64Var(&cfg.DNSQueryRate, "dns-rate", 0, "queries per second allowed per client (default 200; negative: no limit)")
	fs.IntVar(&cfg.MaxTunnels, "max-tunnels", 0, "cap on concurrent proxied connections (default 4096; lowered to what the file-descriptor limit leaves room for)")
	fs.IntVar(&cfg.MaxTunnelsPerDest, "max-tunnels-per-dest", 0, "cap on concurrent connections per destination (default 512)")
	fs.DurationVar(&cfg.HeaderTimeout, "header-timeout", 0, "bound on reading a request head or ClientHello (default 10s)")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "close tunnels idle this long (default 5m)")
	fs.DurationVar(&cfg.DialTimeout, "dial-timeout", 0, "upstream connect timeout (default 10s)")
	fs.DurationVar(&cfg.ShutdownGrace, "shutdown-grace", 5*time.Second, "time open tunnels get to finish after SIGTERM")
	return fs, o
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, o := newServeFlags(stderr)
	cfg := &o.cfg
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "egressd serve: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		fmt.Fprintf(stderr, "egressd serve: --log-format %q: want text or json\n", o.logFormat)
		return exitUsage
	}
	if o.mark > 0xffffffff {
		fmt.Fprintf(stderr, "egressd serve: --mark %d does not fit in 32 bits\n", o.mark)
		return exitUsage
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil || !slices.Contains([]string{"debug", "info", "warn", "error"}, strings.ToLower(o.logLevel)) {
		fmt.Fprintf(stderr, "egressd serve: --log-level %q: want debug, info, warn or error\n", o.logLevel)
		return exitUsage
	}
	hopts := &slog.HandlerOptions{Level: level}
	var handler slog.Handler = slog.NewTextHandler(stderr, hopts)
	if o.logFormat == "json" {
		handler = slog.NewJSONHandler(stderr, hopts)
	}
	cfg.Logger = slog.New(handler)
	if o.ruleSources != "" {
		srcs, err := readRuleSources(o.ruleSources)
		if err != nil {
			fmt.Fprintf(stderr, "egressd serve: --rule-sources: %v\n", err)
			return exitUsage
		}
		cfg.RuleSources = srcs
	}
	cfg.NoWatch = !o.watchPolicy
	cfg.PolicyFiles, cfg.Profile, cfg.Floor, cfg.AdminListen, cfg.SandboxID, cfg.Mark = o.policies, o.profile, o.floor, o.adminListen, o.sandboxID, uint32(o.mark)
	if len(o.allow) > 0 {
		cfg.Overrides = append(cfg.Overrides, policy.Setting{Key: "network.allow", Values: o.allow, Source: policy.Flag("--allow")})
	}
	if len(o.block) > 0 {
		cfg.Overrides = append(cfg.Overrides, policy.Setting{Key: "network.block", Values: o.block, Source: policy.Flag("--block")})
	}
	if len(o.inspect) > 0 {
		cfg.Overrides = append(cfg.Overrides, policy.Setting{Key: "network.inspect", Values: o.inspect, Source: policy.Flag("--inspect")})
	}
	cfg.InspectCACert, cfg.InspectCAKey, cfg.InspectUpstreamCA = o.inspectCACert, o.inspectCAKey, o.inspectUpstreamCA
	if (o.inspectCACert == "") != (o.inspectCAKey == "") {
		fmt.Fprintln(stderr, "egressd serve: --inspect-ca-cert and --inspect-ca-key go together")
		return exitUsage
	}
	for _, s := range o.secretFiles {
		name, path, ok := strings.Cut(s, "=")
		if !ok || !policy.ValidEnvName(name) || path == "" {
			fmt.Fprintf(stderr, "egressd serve: --secret-file %q: want NAME=PATH\n", s)
			return exitUsage
		}
		if cfg.SecretFiles == nil {
			cfg.SecretFiles = map[string]string{}
		}
		cfg.SecretFiles[name] = path
	}
	for _, name := range o.secretEnv {
		v, ok := os.LookupEnv(name)
		if !ok || v == "" || !policy.ValidEnvName(name) {
			fmt.Fprintf(stderr, "egressd serve: --secret-env %s: the variable is not set (or empty) in egressd's environment\n", name)
			return exitUsage
		}
		if cfg.Secrets == nil {
			cfg.Secrets = map[string]string{}
		}
		cfg.Secrets[name] = v
	}
	cfg.DNSListen = orDefault(o.dnsListen, fmt.Sprintf("127.0.0.1:%d", defaultDNSPort), fmt.Sprintf("[::1]:%d", defaultDNSPort))
	cfg.ProxyListen = orDefault(o.proxyListen, fmt.Sprintf("127.0.0.1:%d", defaultProxyPort))
	cfg.TransparentListen = orDefault(o.transparentListen, fmt.Sprintf("127.0.0.1:%d", defaultTransparentPort), fmt.Sprintf("[::1]:%d", defaultTransparentPort))
	if o.upstream != "" {
		cfg.UpstreamDNS = strings.Split(o.upstream, ",")
	}
	switch o.auditLog {
	case "":
	case "-":
		cfg.Audit = stdout
	default:
		f, err := os.OpenFile(o.auditLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			fmt.Fprintf(stderr, "egressd serve: audit log: %v\n", err)
			return exitUsage
		}
		defer f.Close()
		cfg.Audit = f
	}
	if o.readyFD >= 0 {
		f := os.NewFile(uintptr(o.readyFD), "ready-fd")
		if f == nil {
			fmt.Fprintf(stderr, "egressd serve: --ready-fd %d is not an open file descriptor\n", o.readyFD)
			return exitUsage
		}
		cfg.Ready = func() {
			_, _ = f.WriteString("ready\n")
			f.Close()
		}
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	cfg.Reload = reload

	d, err := daemon.New(*cfg)
	if err != nil {
		fmt.Fprintf(stderr, "egressd serve: %s\n", strings.TrimRight(err.Error(), "\n"))
		return exitUsage
	}
	if err := d.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "egressd serve: %v\n", err)
		return exitFail
	}
	return exitOK
}

// listListFlag is a repeatable flag whose values may also be comma-separated.
type listListFlag []string

func (l *listListFlag) String() string { return strings.Join(*l, ",") }
func (l *listListFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func orDefault(l []string, def ...string) []string {
	if len(l) > 0 {
		return l
	}
	return def
}

// readRuleSources reads --rule-sources: a JSON object of "file:line" →
// source ("tenant.toml:7", "flag:--block", "builtin:standard").
func readRuleSources(path string) (map[string]policy.Source, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var raw map[string]string
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%s: %w (want a JSON object of \"file:line\": \"source\")", path, err)
	}
	out := make(map[string]policy.Source, len(raw))
	for k, v := range raw {
		src, err := policy.ParseSource(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", path, k, err)
		}
		out[k] = src
	}
	return out, nil
}
