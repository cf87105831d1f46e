package dnsfilter

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/audit"
	"github.com/egressd/egressd/internal/metrics"
	"github.com/egressd/egressd/policy"
)

// PolicySource yields the matcher in force. *policy.Live satisfies it. A nil
// matcher (nothing stored yet, or a nil source) denies every query. The
// matcher carries the policy's resolver settings too (answer to a denied
// name, upstream resolvers), so each query is decided and answered under one
// policy, and a reload is one swap.
type PolicySource interface {
	Current() *policy.Matcher
}

// Defaults for the zero values of Config.
const (
	DefaultMaxNameLen         = 253
	DefaultQueryRate          = 200 // queries per second per client IP
	DefaultCacheSize          = 4096
	DefaultMaxCacheTTL        = time.Hour
	DefaultMaxNegativeTTL     = 5 * time.Minute
	DefaultLearnedSize        = 65536
	DefaultUpstreamTimeout    = 2 * time.Second
	DefaultMaxUpstreamQueries = 256
	DefaultMaxTCPConns        = 128
	// DefaultLearnFloor is the shortest time an address stays in the
	// learned-address table after it was answered, so that a client which
	// connects right after a TTL-0 (or nearly expired) answer is not refused.
	DefaultLearnFloor = 30 * time.Second
)

// Config configures a Server. The zero value of every field but Upstreams
// has a documented meaning; New validates the rest.
type Config struct {
	// Policy decides every query. nil, or a source whose Current returns nil,
	// denies everything (fail closed).
	Policy PolicySource

	// Upstreams are the resolvers allowed names are forwarded to, as
	// "ip:port" (IP literals only: resolving an upstream's name would need
	// DNS), when the matcher in force names none (its network.upstream_dns,
	// policy.Matcher.UpstreamDNS, wins: a reload that changes it changes
	// the resolvers asked). They are tried in order; the next one is tried
	// on a timeout, network error, SERVFAIL or REFUSED. Required: New fails
	// when empty.
	Upstreams []string

	// Mark is set as SO_MARK on every upstream socket (UDP and TCP), so the
	// sandbox firewall lets egressd's own queries out. 0 sets no mark.
	Mark uint32

	// BlockResponse is the answer to a denied name when the matcher in
	// force does not set one (its network.dns_block_response,
	// policy.Matcher.DNSBlockResponse, wins): "" or "nxdomain" → NXDOMAIN;
	// "refused" → REFUSED. Anything else is an error.
	BlockResponse string

	// MaxNameLen refuses (REFUSED) query names longer than this many bytes
	// (presentation form without the trailing dot), before the policy is
	// asked. 0 → 253 (the DNS limit). Lower it to narrow the data channel
	// through allowed wildcard zones (THREATS D5). Must be ≤ 253.
	MaxNameLen int

	// QueryRate is the sustained rate of queries per second allowed per
	// client IP; queries over it get REFUSED and are counted. 0 → 200;
	// negative → no limit.
	QueryRate float64
	// QueryBurst is the bucket size per client IP. 0 → 2×QueryRate.
	QueryBurst int

	// CacheSize bounds the answer cache, in entries (one per name and query
	// type); the least recently used entry is evicted. 0 → 4096.
	// Answers larger than 4 KiB on the wire are served but not cached.
	CacheSize int
	// MaxCacheTTL caps how long an answer is cached and the TTL given to
	// clients. 0 → 1h.
	MaxCacheTTL time.Duration
	// MaxNegativeTTL caps how long an upstream NXDOMAIN/NODATA is cached
	// (from the SOA's minimum, RFC 2308). 0 → 5m.
	MaxNegativeTTL time.Duration

	// LearnedSize bounds the learned-address table, in addresses. When it
	// is full, expired addresses are dropped first, then arbitrary ones
	// (a dropped address only means a later name-less connection to it is
	// refused: fail closed). 0 → 65536.
	LearnedSize int
	// LearnFloor is the shortest time an answered address stays learned,
	// whatever the TTL. 0 → 30s; negative → no floor (pure TTL).
	LearnFloor time.Duration

	// UpstreamTimeout bounds one exchange with one upstream (the UDP try and
	// the TCP retry each). 0 → 2s.
	UpstreamTimeout time.Duration
	// MaxUpstreamQueries bounds the upstream queries in flight; queries over
	// it wait for a slot until their timeout and then get SERVFAIL. 0 → 256.
	MaxUpstreamQueries int

	// MaxTCPConns bounds concurrent client TCP connections per listener.
	// 0 → 128.
	MaxTCPConns int

	// Audit receives one record per client query (rate-limited queries: at
	// most one record per client per second; the metric counts them all).
	// nil → no audit records.
	Audit *audit.Logger
	// Logger receives operational messages. nil → discarded.
	Logger *slog.Logger
	// Metrics registers the egressd_dns_* metrics. nil → not registered
	// (the counters still run, unexported).
	Metrics *metrics.Registry

	// Now is the clock, for tests. nil → time.Now.
	Now func() time.Time
}

// settings is a validated Config with defaults applied.
type settings struct {
	upstreams      []netip.AddrPort
	mark           uint32
	blockRcode     int
	maxNameLen     int
	rate           float64 // ≤0: unlimited
	burst          float64
	cacheSize      int
	maxTTL         uint32 // seconds
	maxNegTTL      uint32 // seconds
	learnedSize    int
	learnFloor     time.Duration
	timeout        time.Duration
	maxUpstream    int
	maxTCPConns    int
	now            func() time.Time
	maxCachedBytes int
}

func (c *Config) settings() (settings, error) {
	s := settings{
		mark:           c.Mark,
		maxNameLen:     c.MaxNameLen,
		rate:           c.QueryRate,
		cacheSize:      c.CacheSize,
		learnedSize:    c.LearnedSize,
		learnFloor:     c.LearnFloor,
		timeout:        c.UpstreamTimeout,
		maxUpstream:    c.MaxUpstreamQueries,
		maxTCPConns:    c.MaxTCPConns,
		now:            c.Now,
		maxCachedBytes: 4096,
	}
	var errs []error
	if len(c.Upstreams) == 0 {
		errs = append(errs, errors.New("no upstream resolvers: set at least one ip:port"))
	}
	for _, u := range c.Upstreams {
		ap, err := netip.ParseAddrPort(u)
		if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
			errs = append(errs, fmt.Errorf("upstream %q is not an ip:port (e.g. 192.0.2.53:53 or [2001:db8::53]:53)", u))
			continue
		}
		s.upstreams = append(s.upstreams, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	switch c.BlockResponse {
	case "", "nxdomain":
		s.blockRcode = dns.RcodeNameError
	case "refused":
		s.blockRcode = dns.RcodeRefused
	default:
		errs = append(errs, fmt.Errorf("block response %q: want \"nxdomain\" or \"refused\"", c.BlockResponse))
	}
	switch {
	case s.maxNameLen == 0:
		s.maxNameLen = DefaultMaxNameLen
	case s.maxNameLen < 0 || s.maxNameLen > 253:
		errs = append(errs, fmt.Errorf("max name length %d: want 1..253", s.maxNameLen))
	}
	switch {
	case math.IsNaN(s.rate) || math.IsInf(s.rate, 0):
		errs = append(errs, fmt.Errorf("query rate %v is not a number of queries per second", s.rate))
	case s.rate == 0:
		s.rate = DefaultQueryRate
	}
	switch {
	case c.QueryBurst < 0:
		errs = append(errs, fmt.Errorf("query burst %d is negative", c.QueryBurst))
	case c.QueryBurst == 0:
		s.burst = 2 * s.rate
	default:
		s.burst = float64(c.QueryBurst)
	}
	if s.rate > 0 && s.burst < 1 {
		s.burst = 1
	}
	errs = defaultPositive(&s.cacheSize, DefaultCacheSize, "cache size", errs)
	maxTTL, err := ttlSetting("max cache TTL", c.MaxCacheTTL, DefaultMaxCacheTTL)
	if err != nil {
		errs = append(errs, err)
	}
	s.maxTTL = maxTTL
	maxNeg, err := ttlSetting("max negative TTL", c.MaxNegativeTTL, DefaultMaxNegativeTTL)
	if err != nil {
		errs = append(errs, err)
	}
	s.maxNegTTL = maxNeg
	errs = defaultPositive(&s.learnedSize, DefaultLearnedSize, "learned table size", errs)
	switch {
	case s.learnFloor == 0:
		s.learnFloor = DefaultLearnFloor
	case s.learnFloor < 0:
		s.learnFloor = 0
	}
	errs = defaultPositive(&s.timeout, DefaultUpstreamTimeout, "upstream timeout", errs)
	errs = defaultPositive(&s.maxUpstream, DefaultMaxUpstreamQueries, "max upstream queries", errs)
	errs = defaultPositive(&s.maxTCPConns, DefaultMaxTCPConns, "max TCP connections", errs)
	if s.now == nil {
		s.now = time.Now
	}
	if len(errs) > 0 {
		return settings{}, fmt.Errorf("dnsfilter config: %w", errors.Join(errs...))
	}
	return s, nil
}

// defaultPositive sets *v to def when it is zero and appends an error when
// it is negative.
func defaultPositive[T int | time.Duration](v *T, def T, what string, errs []error) []error {
	switch {
	case *v == 0:
		*v = def
	case *v < 0:
		errs = append(errs, fmt.Errorf("%s %v is negative", what, *v))
	}
	return errs
}

func ttlSetting(what string, d, def time.Duration) (uint32, error) {
	switch {
	case d == 0:
		d = def
	case d < time.Second:
		return 0, fmt.Errorf("%s %v: want at least 1s", what, d)
	case d > 7*24*time.Hour:
		return 0, fmt.Errorf("%s %v: want at most 168h", what, d)
	}
	return uint32(d / time.Second), nil
}
