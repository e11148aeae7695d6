package udpsock

import (
	"net"
	"net/netip"

	"github.com/burrow-tunnel/burrow/internal/udpgso"
)

// canSegment reports whether the kernel segments UDP sends on u.
func canSegment(u Conn) bool {
	uc, _ := u.(*net.UDPConn)
	return udpgso.CanSegment(uc)
}

// errNoSegmenting: the kernel refused to segment a send.
var errNoSegmenting = udpgso.ErrRefused

// writeSegmented sends b to addr as datagrams of size bytes each (the last
// may be shorter) with one system call. It returns errNoSegmenting if the
// kernel cannot segment on this socket or route; other errors are those of
// a send, as for each datagram alone.
func writeSegmented(u *net.UDPConn, b []byte, size int, addr netip.AddrPort) error {
	var buf [udpgso.OOBLen]byte
	_, _, err := u.WriteMsgUDPAddrPort(b, udpgso.AppendSegment(buf[:0], size), addr)
	if err != nil && udpgso.Refused(err) {
		return errNoSegmenting
	}
	return err
}

// enableCoalescing asks the kernel to hand u's datagrams of a burst over
// in one read, and reports whether it will.
func enableCoalescing(u Conn) bool {
	uc, _ := u.(*net.UDPConn)
	return udpgso.EnableCoalescing(uc)
}

// oobLen is room for the control messages of a coalesced read.
const oobLen = 64

// readCoalesced reads into b what may be several datagrams of one sender,
// each seg bytes long but the last; seg is n when the read holds one.
func readCoalesced(u *net.UDPConn, b, oob []byte) (n, seg int, from netip.AddrPort, err error) {
	n, oobn, _, from, err := u.ReadMsgUDPAddrPort(b, oob)
	if err != nil {
		return 0, 0, from, err
	}
	seg = udpgso.SegmentSize(oob[:oobn])
	if seg <= 0 || seg > n {
		seg = n
	}
	return n, seg, from, nil
}
