package dnsfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/egressd/egressd/policy"
)

// maxCNAMEChain bounds the CNAME chain accepted in an upstream answer.
const maxCNAMEChain = 8

// answer is a sanitised upstream reply for one (name, qtype): only the CNAME
// chain that starts at the query name and the records of the query type at
// its end, with owner names and CNAME targets lower-cased; for negative
// replies, the SOA. Nothing else of the upstream reply (other records,
// authority NS, additional records, EDNS options) is kept. An answer is
// immutable once built, except for its memo.
type answer struct {
	name    string // normalised query name, no trailing dot
	qtype   uint16
	rcode   int // dns.RcodeSuccess or dns.RcodeNameError
	rrs     []dns.RR
	soa     *dns.SOA // negative answers only
	stored  time.Time
	expires time.Time
	gen     uint64 // Server.gen when fetched (Reset invalidates)
	memo    atomic.Pointer[filtered]
}

// filtered is an answer judged by one matcher. A matcher is immutable, so
// the result is memoised per matcher and recomputed after a reload.
type filtered struct {
	m *policy.Matcher
	// deny is set when a CNAME target in the chain is blocked (or invalid):
	// the whole answer is denied. denyBy/denyName say which and why.
	deny     bool
	denyBy   policy.Decision
	denyName string
	// allGuarded is set when the answer had addresses and the guard
	// removed every one: the client gets NOERROR with no data.
	allGuarded bool
	guardBy    policy.Decision
	guarded    netip.Addr // the last address the guard refused
	rrs        []dns.RR
	addrs      []netip.Addr
	// addrText are addrs as the audit record writes them, rendered once
	// for every reply of this answer (records only read them).
	addrText []string
	stripped int
	// names are the names in the chain the policy allows: the learned
	// table records addrs under these, and only these.
	names []string
	// learnedUntil (unix ns) is how long addrs are learned for so far.
	learnedUntil atomic.Int64
	// snap is the reply's records with TTLs for one second of the
	// answer's life, shared read-only by every reply in that second.
	snap atomic.Pointer[ttlSnap]
}

// ttlSnap is a filtered answer's records with TTLs counted down by elapsed
// seconds. Its records are never modified (packing only reads them).
type ttlSnap struct {
	elapsed uint32
	answer  []dns.RR
	ns      []dns.RR
	// packed is the reply made of these records, packed, for the last
	// query shape that asked (respondWire).
	packed atomic.Pointer[packedReply]
}

// upstreamRcodeError is an upstream reply that is neither NOERROR nor
// NXDOMAIN.
type upstreamRcodeError struct{ rcode int }

func (e *upstreamRcodeError) Error() string {
	return "upstream answered " + rcodeString(e.rcode)
}

func rcodeString(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rc)
}

var errBadChain = errors.New("upstream answer has a CNAME loop or a chain over 8 names")

// sanitize builds the answer for (name, qtype) from an upstream reply.
func sanitize(name string, qtype uint16, resp *dns.Msg, now time.Time, maxTTL, maxNegTTL uint32) (*answer, error) {
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		return nil, &upstreamRcodeError{resp.Rcode}
	}
	a := &answer{name: name, qtype: qtype, rcode: resp.Rcode, stored: now}
	cur := name
	seen := 0
	for {
		next := ""
		for _, rr := range resp.Answer {
			c, ok := rr.(*dns.CNAME)
			if ok && c.Hdr.Class == dns.ClassINET && ownerIs(rr, cur) {
				next = strings.ToLower(strings.TrimSuffix(c.Target, "."))
				cp := &dns.CNAME{Hdr: c.Hdr, Target: next + "."}
				cp.Hdr.Name = cur + "."
				a.rrs = append(a.rrs, cp)
				break
			}
		}
		if next == "" {
			break
		}
		seen++
		if seen > maxCNAMEChain || next == name || chainHas(a.rrs[:len(a.rrs)-1], next) {
			return nil, errBadChain
		}
		cur = next
	}
	final := 0
	if qtype != dns.TypeCNAME {
		for _, rr := range resp.Answer {
			h := rr.Header()
			if h.Rrtype != qtype || h.Class != dns.ClassINET || !ownerIs(rr, cur) {
				continue
			}
			cp := dns.Copy(rr)
			if !validRecord(cp) {
				continue
			}
			cp.Header().Name = cur + "."
			a.rrs = append(a.rrs, cp)
			final++
		}
	} else {
		final = len(a.rrs)
	}

	ttl := maxTTL
	for _, rr := range a.rrs {
		ttl = min(ttl, rr.Header().Ttl)
	}
	if final == 0 {
		// NXDOMAIN, or NODATA (possibly at the end of a chain): cache for
		// the SOA minimum (RFC 2308), or not at all without a SOA.
		for _, rr := range resp.Ns {
			if soa, ok := rr.(*dns.SOA); ok && soa.Hdr.Class == dns.ClassINET {
				a.soa = dns.Copy(soa).(*dns.SOA)
				break
			}
		}
		if a.soa == nil {
			ttl = 0
		} else {
			ttl = min(ttl, maxNegTTL, a.soa.Hdr.Ttl, a.soa.Minttl)
		}
	}
	a.expires = now.Add(time.Duration(ttl) * time.Second)
	return a, nil
}

func ownerIs(rr dns.RR, name string) bool {
	o := rr.Header().Name
	return len(o) == len(name)+1 && o[len(o)-1] == '.' && strings.EqualFold(o[:len(name)], name)
}

func chainHas(rrs []dns.RR, name string) bool {
	for _, rr := range rrs {
		if c, ok := rr.(*dns.CNAME); ok && c.Target == name+"." {
			return true
		}
	}
	return false
}

// validRecord rejects address records whose address does not parse.
func validRecord(rr dns.RR) bool {
	switch v := rr.(type) {
	case *dns.A:
		return v.A.To4() != nil
	case *dns.AAAA:
		return len(v.AAAA) == 16
	}
	return true
}

func recordAddr(rr dns.RR) (netip.Addr, bool) {
	switch v := rr.(type) {
	case *dns.A:
		a, ok := netip.AddrFromSlice(v.A.To4())
		return a, ok
	case *dns.AAAA:
		return netip.AddrFromSlice(v.AAAA)
	}
	return netip.Addr{}, false
}

// filter judges a against m: every CNAME target is decided (a blocked or
// invalid target denies the whole answer; a target that is merely not
// allowed stays in the answer but learns nothing), every address passes the
// guard (guarded ones are removed).
func filter(a *answer, m *policy.Matcher) *filtered {
	f := &filtered{m: m, names: []string{a.name}}
	for _, rr := range a.rrs {
		switch v := rr.(type) {
		case *dns.CNAME:
			target := strings.TrimSuffix(v.Target, ".")
			d := m.DecideNameAnyPort(target)
			if !d.Allow {
				if d.Reason == policy.ReasonBlockedBy || d.Reason == policy.ReasonInvalidName {
					return &filtered{m: m, deny: true, denyBy: d, denyName: target}
				}
			} else {
				f.names = append(f.names, target)
			}
			f.rrs = append(f.rrs, rr)
		case *dns.A, *dns.AAAA:
			addr, ok := recordAddr(rr)
			if !ok {
				continue
			}
			if g := m.GuardAddr(addr, 0); !g.Allow {
				f.stripped++
				f.guardBy, f.guarded = g, addr.Unmap()
				continue
			}
			f.addrs = append(f.addrs, addr.Unmap())
			f.rrs = append(f.rrs, rr)
		default:
			f.rrs = append(f.rrs, rr)
		}
	}
	if f.stripped > 0 && len(f.addrs) == 0 {
		f.allGuarded = true
		f.rrs = nil
	}
	if len(f.addrs) > 0 {
		f.addrText = make([]string, len(f.addrs))
		for i, a := range f.addrs {
			f.addrText[i] = a.String()
		}
	}
	return f
}

// filterFor returns a filtered by m, memoised.
func (a *answer) filterFor(m *policy.Matcher) *filtered {
	if f := a.memo.Load(); f != nil && f.m == m {
		return f
	}
	f := filter(a, m)
	a.memo.Store(f)
	return f
}

// elapsedSecs is how many whole seconds a has been stored at now.
func elapsedSecs(a *answer, now time.Time) uint32 {
	d := now.Sub(a.stored)
	if d <= 0 {
		return 0
	}
	return uint32(min(d/time.Second, 1<<31))
}

// ttlLeft is the TTL to give a client for a record fetched with ttl,
// elapsed seconds ago, capped at maxTTL.
func ttlLeft(ttl, maxTTL, elapsed uint32) uint32 {
	ttl = min(ttl, maxTTL)
	if elapsed >= ttl {
		return 0
	}
	return ttl - elapsed
}

// records returns f's records with TTLs counted down to now, from the
// snapshot of the current second when there is one.
func (f *filtered) records(a *answer, now time.Time, maxTTL, maxNegTTL uint32) *ttlSnap {
	e := elapsedSecs(a, now)
	if s := f.snap.Load(); s != nil && s.elapsed == e {
		return s
	}
	s := &ttlSnap{elapsed: e}
	if len(f.rrs) > 0 {
		s.answer = make([]dns.RR, len(f.rrs))
		for i, rr := range f.rrs {
			c := dns.Copy(rr)
			c.Header().Ttl = ttlLeft(rr.Header().Ttl, maxTTL, e)
			s.answer[i] = c
		}
	}
	if a.soa != nil {
		soa := dns.Copy(a.soa).(*dns.SOA)
		soa.Hdr.Ttl = ttlLeft(min(a.soa.Hdr.Ttl, a.soa.Minttl), maxNegTTL, e)
		s.ns = []dns.RR{soa}
	}
	f.snap.Store(s)
	return s
}
