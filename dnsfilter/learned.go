package dnsfilter

import (
	"net/netip"
	"slices"
	"sync"
	"time"
)

// maxNamesPerAddr bounds the names remembered for one address (shared CDN
// addresses serve many names); beyond it the name expiring first is dropped.
const maxNamesPerAddr = 32

// learnedTable maps an address to the allowed names it was answered for, each
// until its TTL runs out. It is fed only from forwarded answers after policy
// filtering, with names the policy allowed at that time; the proxy decides
// again on every name when it uses one.
type learnedTable struct {
	mu     sync.RWMutex
	max    int
	byAddr map[netip.Addr][]learnedName
	// floor is the Server.gen of the last reset: an answer fetched before
	// it (an older gen) is never learned, however late its lookup ends.
	// Checked under mu, so no add slips in between a reset's check and its
	// clearing.
	floor uint64
}

type learnedName struct {
	name    string
	expires time.Time
}

func newLearnedTable(max int) *learnedTable {
	return &learnedTable{max: max, byAddr: make(map[netip.Addr][]learnedName)}
}

// add records that each of addrs was answered for each of names until
// expires. gen is the Server.gen the answer was fetched in; an answer
// fetched before the last reset is not learned.
func (t *learnedTable) add(addrs []netip.Addr, names []string, expires, now time.Time, gen uint64) {
	if len(addrs) == 0 || len(names) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if gen < t.floor {
		return
	}
	for _, a := range addrs {
		a = a.Unmap()
		cur, ok := t.byAddr[a]
		if !ok && len(t.byAddr) >= t.max {
			t.makeRoom(now)
		}
		for _, n := range names {
			cur = addName(cur, n, expires, now)
		}
		t.byAddr[a] = cur
	}
}

// addName sets n's expiry in list to the later of the old and new one,
// dropping expired names, and keeps at most maxNamesPerAddr names.
func addName(list []learnedName, n string, expires, now time.Time) []learnedName {
	list = slices.DeleteFunc(list, func(l learnedName) bool { return !now.Before(l.expires) })
	for i := range list {
		if list[i].name == n {
			if expires.After(list[i].expires) {
				list[i].expires = expires
			}
			return list
		}
	}
	if len(list) >= maxNamesPerAddr {
		first := 0
		for i := range list {
			if list[i].expires.Before(list[first].expires) {
				first = i
			}
		}
		list = slices.Delete(list, first, first+1)
	}
	return append(list, learnedName{name: n, expires: expires})
}

// makeRoom drops expired addresses and, if the table is still full, an
// arbitrary sixteenth of it. Called with t.mu held.
func (t *learnedTable) makeRoom(now time.Time) {
	for a, list := range t.byAddr {
		list = slices.DeleteFunc(list, func(l learnedName) bool { return !now.Before(l.expires) })
		if len(list) == 0 {
			delete(t.byAddr, a)
		} else {
			t.byAddr[a] = list
		}
	}
	if len(t.byAddr) < t.max {
		return
	}
	drop := max(1, t.max/16)
	for a := range t.byAddr {
		if drop == 0 {
			break
		}
		delete(t.byAddr, a)
		drop--
	}
}

// names returns the unexpired names addr was answered for, or nil.
func (t *learnedTable) names(addr netip.Addr, now time.Time) []string {
	addr = addr.Unmap()
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []string
	for _, l := range t.byAddr[addr] {
		if now.Before(l.expires) {
			out = append(out, l.name)
		}
	}
	return out
}

func (t *learnedTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byAddr)
}

// reset forgets every address; gen is the Server.gen answers must carry
// from now on to be learned.
func (t *learnedTable) reset(gen uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.byAddr = make(map[netip.Addr][]learnedName)
	t.floor = gen
}
