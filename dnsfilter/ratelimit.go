package dnsfilter

import (
	"net/netip"
	"sync"
	"time"
)

// maxRateClients bounds the per-client buckets kept; beyond it idle (full)
// buckets are dropped, and if every bucket is busy the table starts over.
const maxRateClients = 4096

// limiter is a token bucket per client IP.
type limiter struct {
	rate, burst float64 // rate ≤ 0: unlimited
	mu          sync.Mutex
	buckets     map[netip.Addr]*bucket
}

type bucket struct {
	tokens    float64
	last      time.Time
	lastAudit time.Time // last time a refused query of this client was audited
}

func newLimiter(rate, burst float64) *limiter {
	return &limiter{rate: rate, burst: burst, buckets: make(map[netip.Addr]*bucket)}
}

// allow takes a token for client. When the client is over its rate, ok is
// false, and audit says whether this refusal should be written to the audit
// log (the first in each second per client, so a flood cannot flood the log).
func (l *limiter) allow(client netip.Addr, now time.Time) (ok, audit bool) {
	if l.rate <= 0 {
		return true, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[client]
	if b == nil {
		if len(l.buckets) >= maxRateClients {
			l.sweep(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[client] = b
	}
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(l.burst, b.tokens+dt.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, true
	}
	if now.Sub(b.lastAudit) >= time.Second {
		b.lastAudit = now
		return false, true
	}
	return false, false
}

// sweep drops buckets that have refilled completely. Called with l.mu held.
func (l *limiter) sweep(now time.Time) {
	for a, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, a)
		}
	}
	if len(l.buckets) >= maxRateClients {
		clear(l.buckets)
	}
}

func (l *limiter) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.buckets)
}
