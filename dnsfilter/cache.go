package dnsfilter

import (
	"sync"
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
type cache struct {
	mu  sync.Mutex
	max int
	// gen is the Server.gen of the last reset: an answer fetched before it
	// (answer.gen older) is never stored, however late its fetch ends.
	gen   uint64
	items map[cacheKey]*cacheEntry
	// head is the most recently used entry, tail the least; a circular
	// list would save a branch but this reads better.
	head, tail *cacheEntry
}

type cacheEntry struct {
	key        cacheKey
	ans        *answer
	prev, next *cacheEntry
}

func newCache(max int) *cache {
	return &cache{max: max, items: make(map[cacheKey]*cacheEntry)}
}

// get returns the live answer for k, or nil. An expired entry is removed.
func (c *cache) get(k cacheKey, now time.Time) *answer {
	c.mu.Lock()
	e := c.items[k]
	if e == nil {
		c.mu.Unlock()
		return nil
	}
	if !now.Before(e.ans.expires) {
		c.unlink(e)
		delete(c.items, k)
		c.mu.Unlock()
		return nil
	}
	if c.head != e {
		c.unlink(e)
		c.pushFront(e)
	}
	a := e.ans
	c.mu.Unlock()
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
	c.mu.Lock()
	defer c.mu.Unlock()
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
