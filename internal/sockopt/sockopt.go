// Package sockopt holds the socket options egressd sets on its own upstream
// sockets, shared by the resolver and the proxy.
package sockopt

import (
	"fmt"
	"syscall"
)

// MarkControl returns a net.Dialer/net.ListenConfig Control function that sets
// SO_MARK to mark on every socket, so the sandbox firewall recognises
// egressd's own traffic. Setting a mark needs CAP_NET_ADMIN; failing to set it
// fails the dial (the firewall would reject the unmarked packet anyway, so
// failing early gives a clear error). A zero mark returns nil: no option set.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	if mark == 0 {
		return nil
	}
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
		}); err != nil {
			return fmt.Errorf("setting SO_MARK on %s socket to %s: %w", network, address, err)
		}
		if serr != nil {
			return fmt.Errorf("setting SO_MARK=%d on %s socket to %s (needs CAP_NET_ADMIN): %w", mark, network, address, serr)
		}
		return nil
	}
}

// SetMark sets SO_MARK to mark on the socket fd, for a dialer that creates
// its sockets itself. The error says that setting a mark needs
// CAP_NET_ADMIN.
func SetMark(fd int, mark uint32) error {
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_MARK, int(mark)); err != nil {
		return fmt.Errorf("setting SO_MARK=%d on the upstream socket (needs CAP_NET_ADMIN): %w", mark, err)
	}
	return nil
}
