//go:build unix

package udpsock

import (
	"syscall"
)

// socketTTL returns the TTL and hop limit the socket uses, and whether they
// can be changed.
func socketTTL(udp Conn) (ttl4, hops6 int, ok bool) {
	if tc, modeled := udp.(TTLConn); modeled {
		return tc.DefaultTTL(), tc.DefaultTTL(), true
	}
	sc, isSys := udp.(syscall.Conn)
	if !isSys {
		return 0, 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var err4, err6 error
	rc.Control(func(fd uintptr) {
		ttl4, err4 = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL)
		hops6, err6 = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_UNICAST_HOPS)
	})
	if err4 != nil {
		return 0, 0, false
	}
	if err6 != nil {
		hops6 = -1 // an IPv4 socket
	}
	return ttl4, hops6, true
}

// setSocketTTL sets the TTL of the socket's IPv4 packets and the hop limit
// of its IPv6 ones (hops6 < 0: an IPv4 socket).
func setSocketTTL(udp Conn, ttl4, hops6 int) error {
	if tc, modeled := udp.(TTLConn); modeled {
		return tc.SetTTL(ttl4)
	}
	sc, isSys := udp.(syscall.Conn)
	if !isSys {
		return syscall.ENOTSUP
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL, ttl4)
		if serr == nil && hops6 >= 0 {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_UNICAST_HOPS, hops6)
		}
	})
	if cerr != nil {
		return cerr
	}
	return serr
}
