// Package daemon runs `egressd serve`: it loads the policy, binds every
// listener, wires the DNS resolver (dnsfilter) to the proxy (proxy) through
// the learned-address table and the resolver path, serves the admin endpoint,
// hot-reloads the policy, resets between two tenants of a pooled sandbox
// and reports what it holds (POST /reset, GET /state: reset.go), and shuts
// everything down in order.
//
//	policy files ──► load ──► snapshot ◄── reload (fsnotify, SIGHUP, POST /reload)
//	                 (profile + matcher + resolver settings, one atomic swap)
//	                              │
//	     ┌────────────────────────┼───────────────────────┐
//	     ▼                        ▼                       ▼
//	 dnsfilter.Server ──Resolve/LearnedNames──► proxy.Proxy        admin (/metrics, /reset, /state …)
//	 UDP+TCP :53                               explicit :3128
//	                                           transparent :15001
package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/dnsfilter"
	"github.com/egressd/egressd/internal/admin"
	"github.com/egressd/egressd/internal/buildinfo"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/internal/watch"
	"github.com/egressd/egressd/policy"
	"github.com/egressd/egressd/proxy"
)

// Config is everything `egressd serve` is told. Zero values are documented
// per field; cmd/egressd fills it from flags.
type Config struct {
	// PolicyFiles are applied in order on the built-in Profile; they are
	// watched and re-read on change (unless NoWatch). Empty means the
	// built-in profile alone.
	PolicyFiles []string
	// NoWatch leaves the policy files unwatched: they are re-read only on
	// Reload (SIGHUP, POST /reload). For a policy its writer reloads
	// explicitly (the launcher's egressd): no inotify instance, whose
	// close at exit waits for the kernel's SRCU grace period (~15 ms of
	// every stop).
	NoWatch bool
	// Profile is the built-in base profile; "" lets the files choose.
	Profile string
	// Overrides are applied after the files on every load (e.g. --allow).
	Overrides []policy.Setting
	// Floor, if not "", refuses (at start and on every reload) a policy less
	// restrictive than this built-in profile; see policy.CheckFloor.
	Floor string
	// RuleSources maps the source of a rule as egressd reads it
	// ("snapshot.toml:12") to the source to report instead ("tenant.toml:7",
	// "flag:--block"): the original place of a rule in a policy another
	// tool wrote for egressd (the launcher's frozen snapshot). Every
	// decision, audit record, client answer and GET /policy then names
	// the original. Nil changes nothing.
	RuleSources map[string]policy.Source

	// DNSListen are the resolver's addresses (UDP and TCP each).
	DNSListen []string
	// ProxyListen are explicit-proxy addresses (HTTP_PROXY/HTTPS_PROXY).
	ProxyListen []string
	// TransparentListen are the targets of the firewall's TCP REDIRECT.
	TransparentListen []string
	// AdminListen is "unix:/path" or "host:port"; "" serves no admin endpoint.
	AdminListen string

	// UpstreamDNS are the resolvers allowed names are forwarded to
	// ("ip" or "ip:port"). It is applied like a policy key,
	// network.upstream_dns from flag:--upstream-dns, after the files on
	// every load. Empty means the policy's network.upstream_dns, and if
	// that is empty too, the nameservers of ResolvConf (read on every load).
	UpstreamDNS []string
	// ResolvConf is read for nameservers when no upstream is configured.
	// "" means /etc/resolv.conf.
	ResolvConf string
	// Mark is set as SO_MARK on every upstream socket. 0 sets none.
	Mark uint32

	// InspectCACert and InspectCAKey are the inspection CA's files
	// (docs/inspection.md), read at start and on every reload; when
	// neither exists, a CA is made there. Empty: no CA, and a policy that
	// inspects a host is refused.
	InspectCACert, InspectCAKey string
	// InspectUpstreamCA is a PEM bundle the inspected hosts' own
	// certificates are verified against. Empty: the system trust store.
	InspectUpstreamCA string
	// SecretFiles maps a credential's secret name to the file holding its
	// value (re-read on every reload; one trailing newline is dropped).
	SecretFiles map[string]string
	// Secrets are secret values given at start (serve --secret-env).
	Secrets map[string]string

	// SandboxID is stamped on every audit record.
	SandboxID string
	// Audit receives one JSON line per decision; nil writes none. Records
	// are written in batches (audit.NewBuffered), never holding up a
	// decision, and all of them by the time Run returns.
	Audit io.Writer
	// AuditFlushInterval is the longest a record waits in egressd before it
	// is written to Audit. 0 means 100ms.
	AuditFlushInterval time.Duration
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger

	// DNS limits: see dnsfilter.Config (zero means its default).
	DNSMaxNameLen int
	DNSQueryRate  float64
	// Proxy limits: see proxy.Config (zero means its default).
	MaxTunnels        int
	MaxTunnelsPerDest int
	HeaderTimeout     time.Duration
	IdleTimeout       time.Duration
	DialTimeout       time.Duration

	// ShutdownGrace is how long open tunnels may finish after SIGTERM before
	// they are closed. 0 means 5s.
	ShutdownGrace time.Duration
	// Reload delivers a value for every external reload request (SIGHUP).
	// nil means none.
	Reload <-chan struct{}
	// Ready is called once, after every listener is bound and serving and a
	// policy is in force. nil means nobody is told.
	Ready func()
}

// snapshot is everything the daemon derives from one load of the policy:
// the resolved profile (what GET /policy shows) and the compiled matcher,
// which carries the resolver settings too (dns_block_response and the
// upstream resolvers, the resolv.conf fallback applied). It is immutable; a
// reload swaps the one pointer, so every enforcement point sees either the
// old policy whole or the new one whole.
type snapshot struct {
	profile *policy.Profile
	matcher *policy.Matcher
	// inspect is what HTTPS inspection needs (the CA, the upstream trust
	// store, the secrets); nil when the policy inspects no host.
	inspect *proxy.Inspect
	// id is which policy this is, for GET /state (reset.go), and digest
	// its Digest (computed on first use); put sets both.
	id     policyID
	digest func() string
}

// livePolicy is the snapshot in force, as the enforcement points read it
// (dnsfilter.PolicySource and proxy.Policy).
type livePolicy struct{ p atomic.Pointer[snapshot] }

// Current returns the matcher in force, nil before the first load.
func (l *livePolicy) Current() *policy.Matcher {
	if s := l.p.Load(); s != nil {
		return s.matcher
	}
	return nil
}

// Daemon is one running egressd.
type Daemon struct {
	cfg   Config
	log   *slog.Logger
	live  livePolicy
	reg   *metrics.Registry
	audit *audit.Logger

	dns   *dnsfilter.Server
	proxy *proxy.Proxy

	explicit, transparent []net.Listener
	adminLn               net.Listener

	reloadMu     sync.Mutex
	self         []netip.Addr
	ready        atomic.Bool
	reloadsOK    *metrics.Counter
	reloadsError *metrics.Counter
	// lastReloadOK is 1 when the last load succeeded; lastReloadTime the
	// time of the last load that did (the first load included).
	lastReloadOK   *metrics.Gauge
	lastReloadTime *metrics.Gauge
	// reset is the state of POST /reset (reset.go).
	reset resetState
}

// New loads the policy and binds every listener. Nothing is served until Run.
// On error everything bound so far is closed.
func New(cfg Config) (_ *Daemon, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 5 * time.Second
	}
	if len(cfg.DNSListen)+len(cfg.ProxyListen)+len(cfg.TransparentListen) == 0 {
		return nil, errors.New("nothing to serve: give at least one of --dns-listen, --proxy-listen, --transparent-listen")
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, reg: metrics.NewRegistry()}
	// Every open tunnel costs descriptors: take all the process may have,
	// and cap tunnels at what that leaves room for (proxy.Config.FDLimit).
	fdLimit, fdWas, err := raiseNoFile()
	if err != nil {
		return nil, err
	}
	d.reloadsOK = metrics.NewCounter("egressd_policy_reloads_total", "Policy reloads that took effect.")
	d.reloadsError = metrics.NewCounter("egressd_policy_reload_failures_total", "Policy reloads refused (the last good policy stayed in force).")
	d.lastReloadOK = metrics.NewGauge("egressd_policy_last_reload_successful", "1 if the last load of the policy (at start or a reload) succeeded, 0 if it was refused.")
	d.lastReloadTime = metrics.NewGauge("egressd_policy_last_reload_success_timestamp_seconds", "When the policy in force was loaded (Unix time).")
	b := buildinfo.Get()
	build := metrics.NewFunc("egressd_build_info", "1, labelled with the build of egressd that is running.", metrics.TypeGauge,
		[]string{"version", "commit", "goversion"}, func(emit func(float64, ...string)) { emit(1, b.Version, b.Commit, b.GoVersion) })
	d.reg.MustRegister(metrics.NewRuntimeCollector(), d.reloadsOK, d.reloadsError, d.lastReloadOK, d.lastReloadTime, build)
	d.reset.register(d.reg)
	if cfg.Audit != nil {
		// One writer for the resolver and the proxy: batched, never making
		// a decision wait; closed (everything written) after both stop.
		d.audit = audit.NewBuffered(cfg.Audit, cfg.SandboxID, audit.BufferOptions{FlushInterval: cfg.AuditFlushInterval, OnDrop: func(n uint64) {
			d.log.Warn("audit records dropped: the audit log is written slower than decisions are made", "dropped", n)
		}})
	}
	d.reg.MustRegister(
		metrics.NewCounterFunc("egressd_audit_dropped_records_total",
			"Audit records not written because the audit log was too slow to take them (never a decision held up).",
			func() float64 { return float64(d.audit.Dropped()) }),
		metrics.NewCounterFunc("egressd_audit_write_errors_total",
			"Audit records whose write failed (the decision was enforced; its record is lost).",
			func() float64 { return float64(d.audit.WriteErrors()) }))
	defer func() {
		if err != nil {
			d.closeListeners()
		}
	}()

	// Our own addresses are guarded (THREATS C6); collect them from every
	// listener address before the first policy is compiled.
	selfPorts, err := d.selfAddrPorts()
	if err != nil {
		return nil, err
	}
	snap, err := d.load()
	if err != nil {
		return nil, err
	}
	d.put(snap, sourcePolicy)
	d.lastReloadOK.Set(1)
	d.lastReloadTime.SetToCurrentTime()

	// The resolver takes its upstreams and its answer to denied names from
	// the matcher in force; these are only its fallback, never used while
	// a loaded policy is in force (load always sets both).
	var upstreams []string
	for _, ap := range snap.matcher.UpstreamDNS() {
		upstreams = append(upstreams, ap.String())
	}
	d.dns, err = dnsfilter.New(dnsfilter.Config{
		Policy:        &d.live,
		Upstreams:     upstreams,
		Mark:          cfg.Mark,
		BlockResponse: string(snap.matcher.DNSBlockResponse()),
		MaxNameLen:    cfg.DNSMaxNameLen,
		QueryRate:     cfg.DNSQueryRate,
		Audit:         d.audit,
		Logger:        d.log.With("component", "dns"),
		Metrics:       d.reg,
	})
	if err != nil {
		return nil, fmt.Errorf("configuring the DNS resolver: %w", err)
	}
	d.proxy, err = proxy.New(proxy.Config{
		Policy:            &d.live,
		Resolver:          d.dns,
		Learned:           d.dns,
		Mark:              cfg.Mark,
		HeaderTimeout:     cfg.HeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		DialTimeout:       cfg.DialTimeout,
		MaxTunnels:        cfg.MaxTunnels,
		MaxTunnelsPerDest: cfg.MaxTunnelsPerDest,
		FDLimit:           fdLimit,
		FDReserve:         resolverFDs(len(cfg.DNSListen)),
		Audit:             d.audit,
		Logger:            d.log.With("component", "proxy"),
		Metrics:           d.reg,
		SelfAddrs:         selfPorts,
		Inspect:           snap.inspect,
	})
	if err != nil {
		return nil, fmt.Errorf("configuring the proxy: %w", err)
	}
	capArgs := []any{"max_tunnels", d.proxy.MaxTunnels(), "fd_limit", fdLimit, "fd_limit_was", fdWas}
	if asked := cmp.Or(cfg.MaxTunnels, proxy.DefaultMaxTunnels); asked < 0 || asked > d.proxy.MaxTunnels() {
		d.log.Warn("tunnel cap lowered to what the file-descriptor limit leaves room for; raise the limit (ulimit -n, LimitNOFILE=) for more",
			append(capArgs, "max_tunnels_asked", asked)...)
	} else {
		d.log.Info("tunnel cap", capArgs...)
	}

	for _, a := range cfg.DNSListen {
		if err := d.dns.Listen(a); err != nil {
			return nil, fmt.Errorf("DNS listener %s: %w", a, err)
		}
	}
	for _, a := range cfg.ProxyListen {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return nil, fmt.Errorf("proxy listener: %w", err)
		}
		d.explicit = append(d.explicit, ln)
	}
	for _, a := range cfg.TransparentListen {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return nil, fmt.Errorf("transparent listener: %w", err)
		}
		d.transparent = append(d.transparent, ln)
	}
	if cfg.AdminListen != "" {
		if d.adminLn, err = admin.Listen(cfg.AdminListen); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// selfAddrPorts returns every listener address as an AddrPort and records
// their IPs in d.self for the matcher's guard. Port 0 (tests) is kept: the
// proxy adds the bound addresses of its own listeners itself.
func (d *Daemon) selfAddrPorts() ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	addrs := append(append(append([]string{}, d.cfg.DNSListen...), d.cfg.ProxyListen...), d.cfg.TransparentListen...)
	if d.cfg.AdminListen != "" && !strings.HasPrefix(d.cfg.AdminListen, "unix:") {
		addrs = append(addrs, d.cfg.AdminListen)
	}
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return nil, fmt.Errorf("listen address %q: want IP:port or [IPv6]:port: %w", a, err)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		out = append(out, ap)
		if ip := ap.Addr(); !ip.IsUnspecified() && !seen[ip] {
			seen[ip] = true
			d.self = append(d.self, ip)
		}
	}
	return out, nil
}

// load resolves the policy files and compiles the snapshot. It changes
// nothing: the caller decides whether to put the result in force.
//
// Everything serve takes from a policy is in the [network] table, and all
// of it reloads: allow, block, default_ports, dns_block_response and
// upstream_dns, and the inspection entries with what they need (the CA,
// the upstream trust store, the secrets: inspection.go). The one key that cannot change while serving is
// network.mode: serve enforces filtered mode only, so a policy naming
// another mode is refused, with the file:line:col of the value. The other
// tables are the launcher's; serve does not apply them, at start or on
// reload.
func (d *Daemon) load() (*snapshot, error) {
	overrides := d.cfg.Overrides
	if len(d.cfg.UpstreamDNS) > 0 {
		overrides = append(slices.Clone(overrides), policy.Setting{Key: "network.upstream_dns", Values: d.cfg.UpstreamDNS, Source: policy.Flag("--upstream-dns")})
	}
	prof, warnings, err := policy.Resolve(policy.ResolveOptions{Profile: d.cfg.Profile, Files: d.cfg.PolicyFiles, Overrides: overrides, Floor: d.cfg.Floor})
	for _, w := range warnings {
		d.log.Warn("policy warning", "warning", w.String())
	}
	if err != nil {
		return nil, err
	}
	d.restoreSources(prof)
	if !prof.Network.Mode.Proxied() {
		return nil, &policy.Error{
			Pos:  prof.SourceOf("network.mode"),
			Msg:  fmt.Sprintf("network.mode = %q: egressd serve enforces filtered (or report) mode only", prof.Network.Mode),
			Hint: `set mode = "filtered" (or "report", where the floor allows it), or run the sandbox with the launcher`,
		}
	}
	np := prof.NetworkPolicy()
	np.Self = append(np.Self, d.self...)
	if len(np.UpstreamDNS) == 0 {
		if np.UpstreamDNS, err = resolvConfServers(d.cfg.ResolvConf); err != nil {
			return nil, err
		}
	}
	m, err := policy.NewMatcher(np)
	if err != nil {
		return nil, fmt.Errorf("compiling policy: %w", err)
	}
	ins, err := d.loadInspect(prof)
	if err != nil {
		return nil, err
	}
	return &snapshot{profile: prof, matcher: m, inspect: ins}, nil
}

// restoreSources gives every rule of prof the source RuleSources names
// for the place egressd read it from.
func (d *Daemon) restoreSources(prof *policy.Profile) {
	if len(d.cfg.RuleSources) == 0 {
		return
	}
	// Only entries read from a file are keyed in RuleSources, and those
	// are parsed afresh by every load: changing them in place touches
	// nothing shared (a built-in profile's entries).
	n := &prof.Network
	for _, r := range slices.Concat(n.Allow, n.Block) {
		if o, ok := d.cfg.RuleSources[r.Source.String()]; ok && r.Source.Kind == policy.SourceFile {
			r.Source = o
		}
	}
	for _, r := range n.Inspect {
		if o, ok := d.cfg.RuleSources[r.Source.String()]; ok && r.Source.Kind == policy.SourceFile {
			r.Source = o
		}
	}
	for _, c := range n.Credentials {
		if o, ok := d.cfg.RuleSources[c.Source.String()]; ok && c.Source.Kind == policy.SourceFile {
			c.Source = o
		}
	}
}

// Reload re-reads the policy. On any error the last good policy stays in
// force and the error (with file:line:col) is returned and logged. On
// success every later decision and DNS answer uses the new policy, its
// resolver settings included, and open tunnels the new policy denies are
// closed. It is the explicit reload (POST /reload, SIGHUP): after a Reset
// only this puts a policy from the files in force again.
func (d *Daemon) Reload() error {
	return d.reload(true)
}

// reload is Reload; explicit is false for the file watcher, whose reloads
// are skipped while a Reset holds the deny-everything policy.
func (d *Daemon) reload(explicit bool) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if !explicit && d.reset.held.Load() {
		d.log.Info("policy files changed; not reloaded: egressd was reset and waits for POST /reload or SIGHUP")
		return nil
	}
	snap, err := d.load()
	if err != nil {
		d.reloadsError.Inc()
		d.lastReloadOK.Set(0)
		d.log.Error("policy reload refused; the last good policy stays in force", "err", err.Error())
		return err
	}
	d.put(snap, sourcePolicy)
	d.reset.held.Store(false)
	d.proxy.SetInspect(snap.inspect)
	d.proxy.Reevaluate()
	d.reloadsOK.Inc()
	d.lastReloadOK.Set(1)
	d.lastReloadTime.SetToCurrentTime()
	n := snap.profile.Network
	d.log.Info("policy reloaded", "allow_rules", len(n.Allow), "block_rules", len(n.Block),
		"dns_block_response", string(snap.matcher.DNSBlockResponse()), "upstream_dns", fmt.Sprint(snap.matcher.UpstreamDNS()))
	return nil
}

// Run serves until ctx ends or a listener fails, then shuts down: listeners
// close at once, open tunnels get ShutdownGrace to finish.
func (d *Daemon) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 4+len(d.explicit)+len(d.transparent))
	var wg sync.WaitGroup
	goServe := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && !errors.Is(err, proxy.ErrClosed) && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	goServe("DNS resolver", func() error { return d.dns.Serve(ctx) })
	for _, ln := range d.explicit {
		goServe("explicit proxy "+ln.Addr().String(), func() error { return d.proxy.ServeExplicit(ln) })
	}
	for _, ln := range d.transparent {
		goServe("transparent proxy "+ln.Addr().String(), func() error { return d.proxy.ServeTransparent(ln) })
	}
	if d.adminLn != nil {
		h := admin.Handler(admin.Handlers{
			Ready:   d.ready.Load,
			Reload:  d.Reload,
			Reset:   d.resetForAdmin,
			State:   func() any { return d.State() },
			Policy:  d.policyView,
			Metrics: d.reg,
		})
		goServe("admin endpoint", func() error { return admin.Serve(ctx, d.adminLn, h) })
	}
	if len(d.cfg.PolicyFiles) > 0 && !d.cfg.NoWatch {
		w, err := watch.New(d.cfg.PolicyFiles, 0)
		if err != nil {
			// Reload by SIGHUP and POST /reload still works; say so loudly.
			d.log.Error("policy files are not watched; reload with SIGHUP or POST /reload", "err", err.Error())
		} else {
			goServe("policy watcher", func() error { return w.Run(ctx, func() { _ = d.reload(false) }) })
		}
	}
	if d.cfg.Reload != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-d.cfg.Reload:
					_ = d.Reload()
				}
			}
		}()
	}

	d.ready.Store(true)
	d.log.Info("ready", "dns", d.cfg.DNSListen, "proxy", d.cfg.ProxyListen, "transparent", d.cfg.TransparentListen, "admin", d.cfg.AdminListen)
	if d.cfg.Ready != nil {
		d.cfg.Ready()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		d.log.Error("listener failed; shutting down", "err", runErr.Error())
	}
	d.ready.Store(false)
	d.shutdown()
	cancel()
	wg.Wait()
	return runErr
}

func (d *Daemon) shutdown() {
	sctx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownGrace)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := d.proxy.Shutdown(sctx); err != nil {
			d.log.Info("proxy shutdown: tunnels closed after the grace period", "err", err.Error())
		}
	}()
	go func() {
		defer wg.Done()
		_ = d.dns.Shutdown(sctx)
	}()
	wg.Wait()
	d.closeListeners()
}

// closeListeners closes what New bound and Run did not take over, and then
// the audit writer, which writes every record still pending: the resolver
// and the proxy have stopped by then.
func (d *Daemon) closeListeners() {
	for _, ln := range append(append([]net.Listener{}, d.explicit...), d.transparent...) {
		ln.Close()
	}
	if d.adminLn != nil {
		d.adminLn.Close()
	}
	if d.dns != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = d.dns.Shutdown(sctx)
		cancel()
	}
	d.audit.Close()
}

// Registry is the daemon's metrics registry (for tests).
func (d *Daemon) Registry() *metrics.Registry { return d.reg }

// ProxyAddrs, TransparentAddrs and DNSAddrs return the bound addresses
// (useful with port 0).
func (d *Daemon) ProxyAddrs() []net.Addr       { return addrsOf(d.explicit) }
func (d *Daemon) TransparentAddrs() []net.Addr { return addrsOf(d.transparent) }
func (d *Daemon) DNSAddrs() []netip.AddrPort   { return d.dns.Addrs() }

func addrsOf(lns []net.Listener) []net.Addr {
	out := make([]net.Addr, len(lns))
	for i, ln := range lns {
		out[i] = ln.Addr()
	}
	return out
}

// resolvConfServers reads nameserver lines from path ("" = /etc/resolv.conf),
// each on port 53.
func resolvConfServers(path string) ([]netip.AddrPort, error) {
	if path == "" {
		path = "/etc/resolv.conf"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("no upstream DNS given (--upstream-dns or network.upstream_dns) and %s is unreadable: %w", path, err)
	}
	var out []netip.AddrPort
	for i, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		ip, err := netip.ParseAddr(f[1])
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("%s:%d: nameserver %q: want an IP address without a zone (or give --upstream-dns)", path, i+1, f[1])
		}
		out = append(out, netip.AddrPortFrom(ip.Unmap(), 53))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no upstream DNS given (--upstream-dns or network.upstream_dns) and %s lists no nameserver", path)
	}
	return out, nil
}
