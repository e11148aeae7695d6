package relay

import (
	"errors"
	"net"
	"net/netip"
)

// udpBatchLen is how many datagrams (or, where the kernel coalesces
// them, bursts of datagrams) the UDP port reads, and sends, with one
// system call where the system has batches (Linux: recvmmsg and
// sendmmsg).
const udpBatchLen = 64

// udpCoalescedBatchLen is how many bursts a read takes where the kernel
// coalesces them: each needs a buffer of udpCoalescedBufLen.
const udpCoalescedBatchLen = 32

// udpBufLen holds a datagram of the UDP relay path and one byte more, so
// that a larger one shows as too large. Where the kernel coalesces a
// burst of one sender's datagrams into one read (GRO), a buffer holds the
// largest UDP payload instead: udpCoalescedBufLen.
const (
	udpBufLen          = 1500
	udpCoalescedBufLen = 1 << 16
)

// udpSocketBuffer is the receive and send buffer the relay asks for its
// UDP sockets.
const udpSocketBuffer = 4 << 20

// udpOOBLen is room for a datagram's control messages: the address it
// was sent to (pktinfo) and a coalesced read's segment size.
const udpOOBLen = 96

// A udpMsg is what one read took from the relay's UDP port: a datagram,
// or a burst of datagrams of one sender that the kernel coalesced, each
// seg bytes long but the last, which may be shorter.
type udpMsg struct {
	buf  []byte // the whole buffer; the datagrams are buf[:n]
	n    int
	seg  int            // the datagrams' size in a coalesced read; 0 or n: one datagram
	addr netip.AddrPort // where it came from
	oob  []byte         // the whole control buffer; the datagram's is oob[:oobn]
	oobn int
}

// A udpOut is what to send from the relay's UDP port to one address: a
// datagram, or a run of forwarded datagrams, all seg bytes long but the
// last, which may be shorter, that the kernel cuts apart (UDP GSO) where it
// can, and the batch sends one by one where it cannot.
type udpOut struct {
	b    []byte
	seg  int // the datagrams' size if b holds several; 0: one
	addr netip.AddrPort
	oob  []byte // sends from the address a request came to (see replyOOB); nil: any
	// pkts and bytes count the forwarded datagrams b holds and their
	// packets' bytes (sending counted them); both 0 for an answer.
	pkts, bytes int
	// failed counts the datagrams of b that the socket refused, and
	// failedLen their length, as set by write.
	failed, failedLen int
	noGSO             bool // the kernel refused to cut b: send it one datagram at a time
}

// datagrams calls f with each datagram of o, in order.
func (o *udpOut) datagrams(f func(b []byte)) {
	b := o.b
	for len(b) > 0 {
		n := len(b)
		if o.seg > 0 {
			n = min(n, o.seg)
		}
		f(b[:n])
		b = b[n:]
	}
}

// refused marks the datagram b of o as refused by the socket.
func (o *udpOut) refused(b []byte) {
	o.failed++
	o.failedLen += len(b)
}

// A udpIO reads and writes batches of datagrams on one socket. One
// goroutine uses it at a time.
type udpIO interface {
	// read reads at least one datagram into ms, waiting for it, and
	// returns how many it read.
	read(ms []udpMsg) (int, error)
	// write sends every datagram of outs, waiting for room in the
	// socket's buffer if it must, and marks those refused; it returns an
	// error only if the socket is closed.
	write(outs []udpOut) error
	// coalesced reports whether reads may take bursts of datagrams
	// (udpMsg.seg), into buffers of udpCoalescedBufLen.
	coalesced() bool
}

// A udpSock is one socket that [Server.ServeUDP] serves.
type udpSock struct {
	pc  net.PacketConn
	udp *net.UDPConn // pc, if it is one
	io  udpIO
}

func newUDPSock(pc net.PacketConn) *udpSock {
	s := &udpSock{pc: pc}
	s.udp, _ = pc.(*net.UDPConn)
	if s.udp != nil {
		// Room for bursts from many agents at once, and for a flood of
		// junk beside them, before the kernel drops (capped by the
		// system's net.core.rmem_max and wmem_max).
		s.udp.SetReadBuffer(udpSocketBuffer)
		s.udp.SetWriteBuffer(udpSocketBuffer)
		// Answers leave from the address the request was sent to: on a
		// relay with several addresses, an answer from another one would
		// not pass the agent's NAT.
		pktinfo := enablePktinfo(s.udp)
		if s.io = newBatchIO(s.udp, pktinfo); s.io == nil {
			s.io = &udpConnIO{c: s.udp, pktinfo: pktinfo}
		}
	} else {
		s.io = &packetConnIO{pc: pc}
	}
	return s
}

// writeOne sends a datagram outside a batch: one forwarded to an agent
// bound on this socket while the packet came in on another.
func (s *udpSock) writeOne(b []byte, oob []byte, to netip.AddrPort) error {
	if s.udp != nil {
		_, _, err := s.udp.WriteMsgUDPAddrPort(b, oob, to)
		return err
	}
	_, err := s.pc.WriteTo(b, net.UDPAddrFromAddrPort(to))
	return err
}

// udpConnIO reads and writes one datagram per system call, with control
// messages, without allocating.
type udpConnIO struct {
	c       *net.UDPConn
	pktinfo bool
}

func (u *udpConnIO) read(ms []udpMsg) (int, error) {
	m := &ms[0]
	oob := m.oob
	if !u.pktinfo {
		oob = nil
	}
	var err error
	m.n, m.oobn, _, m.addr, err = u.c.ReadMsgUDPAddrPort(m.buf, oob)
	m.seg = 0
	if err != nil {
		return 0, err
	}
	return 1, nil
}

func (u *udpConnIO) write(outs []udpOut) error {
	return writeEach(outs, func(b []byte, o *udpOut) error {
		_, _, err := u.c.WriteMsgUDPAddrPort(b, o.oob, o.addr)
		return err
	})
}

func (u *udpConnIO) coalesced() bool { return false }

// packetConnIO serves a net.PacketConn that is not a *net.UDPConn.
type packetConnIO struct{ pc net.PacketConn }

func (p *packetConnIO) read(ms []udpMsg) (int, error) {
	m := &ms[0]
	n, a, err := p.pc.ReadFrom(m.buf)
	if err != nil {
		return 0, err
	}
	m.n, m.seg, m.oobn, m.addr = n, 0, 0, netip.AddrPort{}
	if ua, ok := a.(*net.UDPAddr); ok {
		m.addr = ua.AddrPort()
	}
	return 1, nil
}

func (p *packetConnIO) write(outs []udpOut) error {
	return writeEach(outs, func(b []byte, o *udpOut) error {
		_, err := p.pc.WriteTo(b, net.UDPAddrFromAddrPort(o.addr))
		return err
	})
}

func (p *packetConnIO) coalesced() bool { return false }

// writeEach sends every datagram of outs with send, one system call each,
// and marks those refused; it stops at, and returns, an error that says
// the socket is closed.
func writeEach(outs []udpOut, send func(b []byte, o *udpOut) error) error {
	var closed error
	for i := range outs {
		o := &outs[i]
		o.datagrams(func(b []byte) {
			if closed != nil {
				return
			}
			if err := send(b, o); err != nil {
				if isClosed(err) {
					closed = err
					return
				}
				o.refused(b)
			}
		})
	}
	return closed
}

// isClosed reports whether err says that the socket is closed.
func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
