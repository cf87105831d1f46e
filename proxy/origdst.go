package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and
// IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h); both are 80,
// at levels SOL_IP and SOL_IPV6.
const soOriginalDst = 80

// originalDst returns the destination a REDIRECTed connection was sent to
// before netfilter rewrote it, from conntrack. A connection that was not
// redirected reports the listener's own address (which the self check then
// refuses).
func originalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T is not a TCP connection", c)
	}
	local, err := netip.ParseAddrPort(tc.LocalAddr().String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: local address: %w", err)
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var (
		ap   netip.AddrPort
		gerr error
	)
	cerr := raw.Control(func(fd uintptr) {
		if local.Addr().Unmap().Is4() {
			ap, gerr = origDst4(int(fd))
		} else {
			ap, gerr = origDst6(int(fd))
		}
	})
	if cerr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", cerr)
	}
	if gerr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination (getsockopt SO_ORIGINAL_DST): %w", gerr)
	}
	return ap, nil
}

func getsockopt(fd, level, opt int, buf []byte) (int, error) {
	l := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(l), nil
}

// origDst4 reads a struct sockaddr_in.
func origDst4(fd int) (netip.AddrPort, error) {
	var buf [unix.SizeofSockaddrInet4]byte
	n, err := getsockopt(fd, unix.SOL_IP, soOriginalDst, buf[:])
	if err != nil {
		return netip.AddrPort{}, err
	}
	if n < 8 || binary.NativeEndian.Uint16(buf[0:2]) != unix.AF_INET {
		return netip.AddrPort{}, errors.New("not an IPv4 address")
	}
	port := binary.BigEndian.Uint16(buf[2:4])
	addr := netip.AddrFrom4([4]byte(buf[4:8]))
	return netip.AddrPortFrom(addr, port), nil
}

// origDst6 reads a struct sockaddr_in6.
func origDst6(fd int) (netip.AddrPort, error) {
	var buf [unix.SizeofSockaddrInet6]byte
	n, err := getsockopt(fd, unix.SOL_IPV6, soOriginalDst, buf[:])
	if err != nil {
		return netip.AddrPort{}, err
	}
	if n < 24 || binary.NativeEndian.Uint16(buf[0:2]) != unix.AF_INET6 {
		return netip.AddrPort{}, errors.New("not an IPv6 address")
	}
	port := binary.BigEndian.Uint16(buf[2:4])
	addr := netip.AddrFrom16([16]byte(buf[8:24])).Unmap()
	return netip.AddrPortFrom(addr, port), nil
}
