package udpsock

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// canSegment reports whether the kernel segments UDP sends on u (Linux
// 4.18 and later: UDP_SEGMENT).
func canSegment(u Conn) bool {
	return onSocket(u, func(fd int) error {
		_, err := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		return err
	})
}

// onSocket runs f on u's file descriptor, if u is a system socket, and
// reports whether it succeeded.
func onSocket(u Conn, f func(fd int) error) bool {
	uc, ok := u.(*net.UDPConn)
	if !ok {
		return false
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return false
	}
	return ferr == nil
}

// errNoSegmenting: the kernel refused to segment a send.
var errNoSegmenting = errors.New("udpsock: UDP segmentation refused")

// writeSegmented sends b to addr as datagrams of size bytes each (the last
// may be shorter) with one system call. It returns errNoSegmenting if the
// kernel cannot segment on this socket or route; other errors are those of
// a send, as for each datagram alone.
func writeSegmented(u *net.UDPConn, b []byte, size int, addr netip.AddrPort) error {
	var oob [unix.SizeofCmsghdr + 8]byte
	cm := oob[:unix.CmsgSpace(2)]
	hdr := (*unix.Cmsghdr)(unsafe.Pointer(&cm[0]))
	hdr.Level = unix.IPPROTO_UDP
	hdr.Type = unix.UDP_SEGMENT
	hdr.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(cm[unix.CmsgLen(0):], uint16(size))
	_, _, err := u.WriteMsgUDPAddrPort(b, cm, addr)
	if errors.Is(err, unix.EIO) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOPROTOOPT) || errors.Is(err, unix.EOPNOTSUPP) {
		return errNoSegmenting
	}
	return err
}

// enableCoalescing asks the kernel to hand u's datagrams of a burst over
// in one read, as one buffer of equal segments (Linux 5.0 and later:
// UDP_GRO), and reports whether it will.
func enableCoalescing(u Conn) bool {
	return onSocket(u, func(fd int) error {
		return unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	})
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
	seg = segmentSize(oob[:oobn])
	if seg <= 0 || seg > n {
		seg = n
	}
	return n, seg, from, nil
}

// segmentSize returns the segment size a UDP_GRO control message in oob
// gives, or 0.
func segmentSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(oob) {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO {
			data := oob[unix.CmsgLen(0):l]
			switch {
			case len(data) >= 4:
				return int(int32(binary.NativeEndian.Uint32(data)))
			case len(data) >= 2:
				return int(binary.NativeEndian.Uint16(data))
			}
			return 0
		}
		oob = oob[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(oob)):]
	}
	return 0
}
