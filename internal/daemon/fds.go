package daemon

import (
	"fmt"
	"math"

	"golang.org/x/sys/unix"

	"github.com/egressd/egressd/dnsfilter"
)

// raiseNoFile raises the soft RLIMIT_NOFILE to the hard limit, the most
// the process may use without privilege, and returns the limit in force
// and the soft limit it had. (Go's runtime does the same at start since Go
// 1.19; doing it here keeps the tunnel cap's arithmetic true whatever
// started egressd and however.)
func raiseNoFile() (limit, was int, err error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, fmt.Errorf("reading the file-descriptor limit: %w", err)
	}
	was = clampInt(rl.Cur)
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			return was, was, fmt.Errorf("raising the file-descriptor limit from %d to %d: %w", was, clampInt(rl.Max), err)
		}
	}
	return clampInt(rl.Cur), was, nil
}

func clampInt(v uint64) int {
	if v > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(v)
}

// resolverFDs is the most descriptors the resolver holds at once with its
// default bounds: its listening sockets (UDP and TCP per address), its
// client TCP connections and its upstream queries in flight.
func resolverFDs(listeners int) int {
	return listeners*(2+dnsfilter.DefaultMaxTCPConns) + dnsfilter.DefaultMaxUpstreamQueries
}
