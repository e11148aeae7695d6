package paths

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
func canSegment(u UDPConn) bool {
	uc, ok := u.(*net.UDPConn)
	if !ok {
		return false
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		_, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	}); err != nil {
		return false
	}
	return serr == nil
}

// errNoSegmenting: the kernel refused to segment a send.
var errNoSegmenting = errors.New("paths: UDP segmentation refused")

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
