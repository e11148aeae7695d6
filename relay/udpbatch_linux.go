//go:build linux

package relay

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/burrow-tunnel/burrow/internal/udpgso"
)

// mmsgIO reads and writes batches of datagrams with recvmmsg and sendmmsg,
// one system call for up to udpBatchLen reads or sends, without
// allocating: its message headers, vectors, addresses and control buffers
// are made once, and the functions the socket calls are bound once.
// (golang.org/x/net's batch readers allocate each datagram's source
// address, twice.) Where the kernel has them, a read takes a burst of one
// sender's datagrams at once (UDP GRO), and a send hands the kernel a run
// of datagrams to one address to cut apart (UDP GSO).
type mmsgIO struct {
	rc       syscall.RawConn
	pktinfo  bool
	gro, gso bool

	rh, wh       []unix.Mmsghdr
	riov, wiov   []unix.Iovec
	rname, wname []unix.RawSockaddrInet6
	wctl         [][]byte    // each send's control messages
	wat          []sendPiece // what each send holds

	// The call at hand, for the bound functions.
	cur    []unix.Mmsghdr
	n      int
	errno  syscall.Errno
	readF  func(uintptr) bool
	writeF func(uintptr) bool
}

// A sendPiece is what one header of a sendmmsg holds: from offset off of
// outs[out], length bytes, as one datagram or (segs > 1) several the
// kernel cuts apart.
type sendPiece struct {
	out, off, length, segs int
}

// newBatchIO returns the batched udpIO of c, or nil if c has none. It turns
// the kernel's coalescing of reads on where it can.
func newBatchIO(c *net.UDPConn, pktinfo bool) udpIO {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	m := &mmsgIO{
		rc: rc, pktinfo: pktinfo,
		gro: udpgso.EnableCoalescing(c), gso: udpgso.CanSegment(c),
		rh: make([]unix.Mmsghdr, udpBatchLen), wh: make([]unix.Mmsghdr, udpBatchLen),
		riov: make([]unix.Iovec, udpBatchLen), wiov: make([]unix.Iovec, udpBatchLen),
		rname: make([]unix.RawSockaddrInet6, udpBatchLen), wname: make([]unix.RawSockaddrInet6, udpBatchLen),
		wctl: make([][]byte, udpBatchLen), wat: make([]sendPiece, udpBatchLen),
	}
	for i := range m.wctl {
		m.wctl[i] = make([]byte, 0, udpOOBLen+udpgso.OOBLen)
	}
	m.readF = func(fd uintptr) bool { return m.call(fd, unix.SYS_RECVMMSG) }
	m.writeF = func(fd uintptr) bool { return m.call(fd, unix.SYS_SENDMMSG) }
	return m
}

func (m *mmsgIO) coalesced() bool { return m.gro }

// call makes the system call trap on m.cur; it reports false to wait for
// the socket to be ready. The call is raw, and never waits (MSG_DONTWAIT,
// whatever the descriptor's mode): the runtime's path for calls that may
// wait costs more than the call (see agentConn).
func (m *mmsgIO) call(fd uintptr, trap uintptr) bool {
	n, e, ready := rawCall(trap, fd, uintptr(unsafe.Pointer(&m.cur[0])), uintptr(len(m.cur)), unix.MSG_DONTWAIT)
	switch {
	case !ready:
		return false
	case e != 0:
		m.n, m.errno = 0, e
	default:
		m.n, m.errno = int(n), 0
	}
	return true
}

func (m *mmsgIO) read(ms []udpMsg) (int, error) {
	ms = ms[:min(len(ms), len(m.rh))]
	ctl := m.pktinfo || m.gro
	for i := range ms {
		h := &m.rh[i]
		m.riov[i].Base = &ms[i].buf[0]
		m.riov[i].SetLen(len(ms[i].buf))
		h.Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&m.rname[i])), Namelen: unix.SizeofSockaddrInet6, Iov: &m.riov[i]}
		h.Hdr.SetIovlen(1)
		if ctl && len(ms[i].oob) > 0 {
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
		ms[i].seg = 0
		if m.gro {
			ms[i].seg = udpgso.SegmentSize(ms[i].oob[:ms[i].oobn])
		}
		ms[i].addr = addrPortOf(&m.rname[i])
	}
	return m.n, nil
}

func (m *mmsgIO) write(outs []udpOut) error {
	i, off := 0, 0 // the next byte to send: outs[i].b[off]
	for i < len(outs) {
		// One header per out, or per datagram of an out the kernel cannot
		// cut apart.
		k := 0
		for ; k < len(m.wh) && i < len(outs); k++ {
			o := &outs[i]
			b, segs := o.b[off:], 1
			ctl := append(m.wctl[k][:0], o.oob...)
			switch {
			case o.seg <= 0 || len(b) <= o.seg:
			case m.gso && !o.noGSO:
				ctl = udpgso.AppendSegment(ctl, o.seg)
				segs = (len(b) + o.seg - 1) / o.seg
			default:
				b = b[:o.seg]
			}
			m.wctl[k] = ctl
			m.wat[k] = sendPiece{out: i, off: off, length: len(b), segs: segs}
			h := &m.wh[k]
			m.wiov[k].Base = &b[0]
			m.wiov[k].SetLen(len(b))
			h.Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&m.wname[k])), Namelen: putSockaddr(&m.wname[k], o.addr), Iov: &m.wiov[k]}
			h.Hdr.SetIovlen(1)
			if len(ctl) > 0 {
				h.Hdr.Control = &ctl[0]
				h.Hdr.SetControllen(len(ctl))
			}
			h.Len = 0
			if off += len(b); off == len(o.b) {
				i, off = i+1, 0
			}
		}
		m.cur = m.wh[:k]
		if err := m.rc.Write(m.writeF); err != nil {
			return err
		}
		next := m.n // the first piece not sent
		if m.errno != 0 {
			// The first piece was refused: a bad address, say, or a run
			// the kernel cannot cut apart on its route, which goes again
			// one datagram at a time.
			p := m.wat[0]
			o := &outs[p.out]
			if p.segs > 1 && udpgso.Refused(m.errno) {
				o.noGSO = true
				next = 0
			} else {
				o.failed += p.segs
				o.failedLen += p.length
				next = 1
			}
		}
		if next < k {
			i, off = m.wat[next].out, m.wat[next].off
		}
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
