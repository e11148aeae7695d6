package udpgso

import (
	"encoding/binary"
	"errors"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// OOBLen is room for the control message of a segmented send or of a
// coalesced read.
const OOBLen = 24

// CanSegment reports whether the kernel segments UDP sends on u (Linux
// 4.18 and later: UDP_SEGMENT).
func CanSegment(u *net.UDPConn) bool {
	return onSocket(u, func(fd int) error {
		_, err := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		return err
	})
}

// EnableCoalescing asks the kernel to hand u's datagrams of a burst over
// in one read, as one buffer of equal segments but the last, shorter one
// (Linux 5.0 and later: UDP_GRO), and reports whether it will.
func EnableCoalescing(u *net.UDPConn) bool {
	return onSocket(u, func(fd int) error {
		return unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	})
}

// onSocket runs f on u's file descriptor and reports whether it
// succeeded.
func onSocket(u *net.UDPConn, f func(fd int) error) bool {
	if u == nil {
		return false
	}
	rc, err := u.SyscallConn()
	if err != nil {
		return false
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return false
	}
	return ferr == nil
}

// AppendSegment appends to oob the control message that has a send cut
// into datagrams of size bytes each, the last one shorter.
func AppendSegment(oob []byte, size int) []byte {
	start := len(oob)
	oob = append(oob, make([]byte, unix.CmsgSpace(2))...)
	hdr := (*unix.Cmsghdr)(unsafe.Pointer(&oob[start]))
	hdr.Level = unix.IPPROTO_UDP
	hdr.Type = unix.UDP_SEGMENT
	hdr.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[start+unix.CmsgLen(0):], uint16(size))
	return oob
}

// Refused reports whether err, of a send with a segment size, says that
// the kernel cannot segment it on that socket or route.
func Refused(err error) bool {
	return errors.Is(err, unix.EIO) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.ENOPROTOOPT) || errors.Is(err, unix.EOPNOTSUPP)
}

// SegmentSize returns the segment size that the control messages of a
// coalesced read (oob) give, or 0 if they give none: the read holds one
// datagram.
func SegmentSize(oob []byte) int {
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
