package dnsfilter

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestCacheEvictsTheLeastRecentlyUsed: a hit moves an entry to the front
// only when it is in the older half of the list (so most hits share the
// lock), and eviction still takes the least recently used entry.
func TestCacheEvictsTheLeastRecentlyUsed(t *testing.T) {
	now := time.Unix(1000, 0)
	key := func(n string) cacheKey { return cacheKey{name: n, qtype: 1} }
	ans := func(ttl time.Duration) *answer { return &answer{expires: now.Add(ttl)} }
	for _, tc := range []struct {
		name string
		hits []string // after storing a, b, c (in that order) into a cache of 3
		want []string // what is cached after storing d
	}{
		{"no hits: the oldest goes", nil, []string{"b", "c", "d"}},
		{"the oldest was hit: the next oldest goes", []string{"a"}, []string{"a", "c", "d"}},
		{"all but c were hit: c goes", []string{"a", "b"}, []string{"a", "b", "d"}},
		{"all were hit: the least recently hit goes", []string{"a", "b", "c"}, []string{"b", "c", "d"}},
		// b is in the recent half when hit (one move, c's, since it was
		// stored; max/2 = 1), so it keeps its place behind c: the
		// approximation, exact for entries in the older half.
		{"a hit in the recent half keeps its place", []string{"b", "a"}, []string{"a", "c", "d"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCache(3)
			for _, n := range []string{"a", "b", "c"} {
				c.put(key(n), ans(time.Minute))
			}
			for _, n := range tc.hits {
				if c.get(key(n), now) == nil {
					t.Fatalf("%s not cached", n)
				}
			}
			c.put(key("d"), ans(time.Minute))
			var got []string
			for _, n := range []string{"a", "b", "c", "d"} {
				if c.get(key(n), now) != nil {
					got = append(got, n)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("cached after storing d (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCacheDropsAnExpiredAnswerOnLookup(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newCache(3)
	k := cacheKey{name: "a", qtype: 1}
	c.put(k, &answer{expires: now.Add(time.Second)})
	if c.get(k, now.Add(time.Second)) != nil {
		t.Fatal("an answer was returned at its expiry")
	}
	if n := c.len(); n != 0 {
		t.Errorf("%d entries after the expired one was looked up, want 0", n)
	}
}
