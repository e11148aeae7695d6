//go:build linux

package relay

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgIO reads and writes batches of datagrams with recvmmsg and sendmmsg,
// one system call for up to udpBatchLen datagrams, without allocating: its
// message headers, vectors and addresses are made once, and the functions
// the socket calls are bound once. (golang.org/x/net's batch readers
// allocate each datagram's source address, twice.)
type mmsgIO struct {
	rc      syscall.RawConn
	pktinfo bool

	rh, wh       []unix.Mmsghdr
	riov, wiov   []unix.Iovec
	rname, wname []unix.RawSockaddrInet6

	// The call at hand, for the bound functions.
	cur    []unix.Mmsghdr
	n      int
	errno  syscall.Errno
	readF  func(uintptr) bool
	writeF func(uintptr) bool
}

// newBatchIO returns the batched udpIO of c, or nil if c has none.
func newBatchIO(c *net.UDPConn, pktinfo bool) udpIO {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	m := &mmsgIO{
		rc: rc, pktinfo: pktinfo,
		rh: make([]unix.Mmsghdr, udpBatchLen), wh: make([]unix.Mmsghdr, udpBatchLen),
		riov: make([]unix.Iovec, udpBatchLen), wiov: make([]unix.Iovec, udpBatchLen),
		rname: make([]unix.RawSockaddrInet6, udpBatchLen), wname: make([]unix.RawSockaddrInet6, udpBatchLen),
	}
	m.readF = func(fd uintptr) bool { return m.call(fd, unix.SYS_RECVMMSG) }
	m.writeF = func(fd uintptr) bool { return m.call(fd, unix.SYS_SENDMMSG) }
	return m
}

// call makes the system call trap on m.cur; it reports false to wait for
// the socket to be ready.
func (m *mmsgIO) call(fd uintptr, trap uintptr) bool {
	for {
		n, _, e := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(&m.cur[0])), uintptr(len(m.cur)), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			m.n, m.errno = int(n), 0
		default:
			m.n, m.errno = 0, e
		}
		return true
	}
}

func (m *mmsgIO) read(ms []udpMsg) (int, error) {
	ms = ms[:min(len(ms), len(m.rh))]
	for i := range ms {
		h := &m.rh[i]
		m.riov[i].Base = &ms[i].buf[0]
		m.riov[i].SetLen(len(ms[i].buf))
		h.Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&m.rname[i])), Namelen: unix.SizeofSockaddrInet6, Iov: &m.riov[i]}
		h.Hdr.SetIovlen(1)
		if m.pktinfo && len(ms[i].oob) > 0 {
			h.Hdr.Control = &ms[i].oob[0]
			h.Hdr.SetControllen(len(ms[i].oob))
		}
		h.Len = 0
	}
	m.cur = m.rh[:len(ms)]
	if err := m.rc.Read(m.readF); err != nil {
		return 0, err
	}
	if m.errno != 0 {
		return 0, os.NewSyscallError("recvmmsg", m.errno)
	}
	for i := range m.n {
		ms[i].n = int(m.rh[i].Len)
		ms[i].oobn = int(m.rh[i].Hdr.Controllen)
		ms[i].addr = addrPortOf(&m.rname[i])
	}
	return m.n, nil
}

func (m *mmsgIO) write(outs []udpOut) error {
	for len(outs) > 0 {
		k := min(len(outs), len(m.wh))
		for i := range k {
			o := &outs[i]
			h := &m.wh[i]
			m.wiov[i].Base = &o.b[0]
			m.wiov[i].SetLen(len(o.b))
			h.Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&m.wname[i])), Namelen: putSockaddr(&m.wname[i], o.addr), Iov: &m.wiov[i]}
			h.Hdr.SetIovlen(1)
			if len(o.oob) > 0 {
				h.Hdr.Control = &o.oob[0]
				h.Hdr.SetControllen(len(o.oob))
			}
			h.Len = 0
		}
		m.cur = m.wh[:k]
		if err := m.rc.Write(m.writeF); err != nil {
			return err
		}
		if m.errno != 0 {
			// The first datagram was refused (a bad address, say): skip it.
			outs[0].fail = true
			outs = outs[1:]
			continue
		}
		outs = outs[max(m.n, 1):]
	}
	return nil
}

// addrPortOf reads a socket address the kernel filled in.
func addrPortOf(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), ntohs(sa4.Port))
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

// putSockaddr writes a into sa, as an IPv4 address if it is one (an IPv6
// socket's peers, IPv4 ones included, come as IPv6 addresses and go back
// as they came), and returns its length.
func putSockaddr(sa *unix.RawSockaddrInet6, a netip.AddrPort) uint32 {
	ip := a.Addr()
	if ip.Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Port: htons(a.Port()), Addr: ip.As4()}
		return unix.SizeofSockaddrInet4
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: htons(a.Port()), Addr: ip.As16()}
	return unix.SizeofSockaddrInet6
}

// ntohs and htons convert a port between network and host order.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

func htons(p uint16) uint16 {
	var n uint16
	b := (*[2]byte)(unsafe.Pointer(&n))
	b[0], b[1] = byte(p>>8), byte(p)
	return n
}
