package dnsfilter

import (
	"sync"
	"sync/atomic"
	"time"
)

// cacheKey identifies a cached answer: the normalised name (lower case, no
// trailing dot) and the query type. Class is always IN.
type cacheKey struct {
	name  string
	qtype uint16
}

// cache is a bounded LRU of sanitised upstream answers that expire with
// their TTL. It stores answers as the upstream gave them (after sanitising,
// before policy filtering): every hit is filtered again through the matcher
// in force, so a reload takes effect at once.
//
// A hit on an entry in the recent half of the list (fewer than max/2
// entries were moved to the front since it was) takes the lock for reading
// only and leaves the entry where it is; only a hit on an entry in the
// older half, the candidates for eviction, moves it to the front under the
// exclusive lock. Eviction still takes the least recently used entry of
// the older half. Moving every hit to the front made the lock the
// resolver's most contended one under load (bench/README.md, Issue 13).
type cache struct {
	mu  sync.RWMutex
	max int
	// gen is the Server.gen of the last reset: an answer fetched before it
	// (answer.gen older) is never stored, however late its fetch ends.
	gen   uint64
	items map[cacheKey]*cacheEntry
	// head is the most recently used entry, tail the least; a circular
	// list would save a branch but this reads better.
	head, tail *cacheEntry
	// moves counts the moves to the front (written under mu, read
	// under its read lock too).
	moves atomic.Uint64
}

type cacheEntry struct {
	key        cacheKey
	ans        *answer
	prev, next *cacheEntry
	moved      atomic.Uint64 // cache.moves when it was last moved to the front
}

func newCache(max int) *cache {
	return &cache{max: max, items: make(map[cacheKey]*cacheEntry)}
}

// get returns the live answer for k, or nil. An expired entry is removed.
func (c *cache) get(k cacheKey, now time.Time) *answer {
	c.mu.RLock()
	e := c.items[k]
	if e == nil {
		c.mu.RUnlock()
		return nil
	}
	a := e.ans
	if !now.Before(a.expires) {
		c.mu.RUnlock()
		c.mu.Lock()
		if e := c.items[k]; e != nil && e.ans == a { // not replaced meanwhile
			c.unlink(e)
			delete(c.items, k)
		}
		c.mu.Unlock()
		return nil
	}
	recent := c.moves.Load()-e.moved.Load() <= uint64(c.max/2)
	c.mu.RUnlock()
	if !recent {
		c.mu.Lock()
		if c.items[k] == e && c.head != e {
			c.unlink(e)
			c.pushFront(e)
		}
		c.mu.Unlock()
	}
	return a
}

// put stores a under k, evicting the least recently used entries beyond the
// bound. An answer fetched before the last reset is dropped.
func (c *cache) put(k cacheKey, a *answer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if a.gen != c.gen {
		return
	}
	if e := c.items[k]; e != nil {
		e.ans = a
		c.unlink(e)
		c.pushFront(e)
		return
	}
	e := &cacheEntry{key: k, ans: a}
	c.items[k] = e
	c.pushFront(e)
	for len(c.items) > c.max && c.tail != nil {
		old := c.tail
		c.unlink(old)
		delete(c.items, old.key)
	}
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.items)
}

// reset empties the cache; gen is the Server.gen the answers stored from
// now on must carry.
func (c *cache) reset(gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen = gen
	c.items = make(map[cacheKey]*cacheEntry)
	c.head, c.tail = nil, nil
}

func (c *cache) unlink(e *cacheEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		c.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		c.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (c *cache) pushFront(e *cacheEntry) {
	e.moved.Store(c.moves.Add(1))
	e.next = c.head
	e.prev = nil
	if c.head != nil {
		c.head.prev = e
	}
	c.head = e
	if c.tail == nil {
		c.tail = e
	}
}
