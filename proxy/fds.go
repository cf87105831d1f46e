package proxy

import "fmt"

// The tunnel cap a process can reach. Each client connection holds two
// descriptors while it is served (its own socket and the upstream's; the
// relay borrows pipes only while bytes are in flight, splice.go). A cap
// past what the descriptor limit leaves room for ends in EMFILE: accept4
// fails, dials fail, and the connections refused are the ones after the
// limit, not the ones after the cap (issue: tunnel 3 332 got a 502 under a
// 20 000-descriptor limit with a cap of 4 096). So New lowers MaxTunnels to
// what Config.FDLimit leaves room for, after a reserve for everything else.

const (
	// fdsPerTunnel is what one served client connection holds.
	fdsPerTunnel = 2
	// fdBase is what the process holds besides connections: listeners,
	// epoll, the policy watcher, log and audit files, the admin endpoint.
	fdBase = 64
	// fdForwardIdle is the plain-HTTP transport's idle upstream
	// connections (forward.go, MaxIdleConns).
	fdForwardIdle = 256
	// minPipes is the fewest splice pipes the relay keeps; fdsPerPipeShare
	// is how many descriptors of the limit earn one more.
	minPipes        = 4
	fdsPerPipeShare = 64
	// minFDCap is the lowest cap worth serving with; a limit that leaves
	// less is refused at start.
	minFDCap = 16
)

// fdBudget is how a descriptor limit is shared.
type fdBudget struct {
	// pipes bounds the relay's splice pipes in use at once.
	pipes int
	// reserve is the descriptors kept for everything but tunnels.
	reserve int
	// tunnels is the most client connections the rest leaves room for.
	tunnels int
}

// budgetFDs shares limit descriptors between tunnels and the rest, which
// may hold up to other descriptors (the resolver's sockets) besides the
// proxy's own. The reserve is at most half the limit: under a small limit
// (below about 2 500 with the resolver's defaults) the bounds of the rest,
// all reached at once, could meet the tunnels' share; each of them is
// refused or retried cleanly when it does (accept backs off, a dial is a
// 502), and the tunnels alone never take the last descriptor.
func budgetFDs(limit, other int) (fdBudget, error) {
	b := fdBudget{pipes: min(defaultMaxPipes, max(minPipes, limit/fdsPerPipeShare))}
	b.reserve = min(other+fdBase+fdForwardIdle+2*b.pipes, limit/2)
	b.tunnels = (limit - b.reserve) / fdsPerTunnel
	if b.tunnels < minFDCap {
		return b, fmt.Errorf("proxy: a limit of %d file descriptors leaves room for %d tunnels (fewer than %d); raise the limit (ulimit -n, LimitNOFILE=)", limit, b.tunnels, minFDCap)
	}
	return b, nil
}
