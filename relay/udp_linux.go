//go:build linux

package relay

import (
	"encoding/binary"
	"net"

	"golang.org/x/sys/unix"
)

// enablePktinfo asks the kernel to tell, with each datagram, the address
// it was sent to (IPv4 and, on an IPv6 socket, IPv6 too).
func enablePktinfo(u *net.UDPConn) bool {
	rc, err := u.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	rc.Control(func(fd uintptr) {
		err4 := unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		err6 := unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		ok = err4 == nil || err6 == nil
	})
	return ok
}

// replyOOB turns the control messages of a received datagram into those
// that send an answer from the address it was sent to; nil if it carried
// none.
func replyOOB(oob []byte) []byte {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo: ifindex, spec_dst, addr (the header's
			// destination). Answer from addr, by any interface.
			var info unix.Inet4Pktinfo
			copy(info.Spec_dst[:], m.Data[8:12])
			return unix.PktInfo4(&info)
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo: addr, ifindex (kept: a link-local
			// address needs it).
			var info unix.Inet6Pktinfo
			copy(info.Addr[:], m.Data[:16])
			info.Ifindex = binary.NativeEndian.Uint32(m.Data[16:20])
			return unix.PktInfo6(&info)
		}
	}
	return nil
}
