package relay

import (
	"errors"
	"net"
	"net/netip"
)

// udpBatchLen is how many datagrams the UDP port reads, and sends, with
// one system call where the system has batches (Linux: recvmmsg and
// sendmmsg).
const udpBatchLen = 64

// udpBufLen holds a datagram of the UDP relay path and one byte more, so
// that a larger one shows as too large, and an answer behind any request.
const udpBufLen = 1500

// A udpMsg is a datagram read from the relay's UDP port.
type udpMsg struct {
	buf  []byte // the whole buffer; the datagram is buf[:n]
	n    int
	addr netip.AddrPort // where it came from
	oob  []byte         // the whole control buffer; the datagram's is oob[:oobn]
	oobn int
}

// A udpOut is a datagram to send from the relay's UDP port.
type udpOut struct {
	b    []byte
	addr netip.AddrPort
	oob  []byte // sends from the address a request came to (see replyOOB); nil: any
	pkt  int    // a forwarded packet's length (counted as forwarded); -1 for an answer
	fail bool   // set by write if the socket refused it
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
	if err != nil {
		return 0, err
	}
	return 1, nil
}

func (u *udpConnIO) write(outs []udpOut) error {
	for i := range outs {
		o := &outs[i]
		if _, _, err := u.c.WriteMsgUDPAddrPort(o.b, o.oob, o.addr); err != nil {
			if isClosed(err) {
				return err
			}
			o.fail = true
		}
	}
	return nil
}

// packetConnIO serves a net.PacketConn that is not a *net.UDPConn.
type packetConnIO struct{ pc net.PacketConn }

func (p *packetConnIO) read(ms []udpMsg) (int, error) {
	m := &ms[0]
	n, a, err := p.pc.ReadFrom(m.buf)
	if err != nil {
		return 0, err
	}
	m.n, m.oobn, m.addr = n, 0, netip.AddrPort{}
	if ua, ok := a.(*net.UDPAddr); ok {
		m.addr = ua.AddrPort()
	}
	return 1, nil
}

func (p *packetConnIO) write(outs []udpOut) error {
	for i := range outs {
		o := &outs[i]
		if _, err := p.pc.WriteTo(o.b, net.UDPAddrFromAddrPort(o.addr)); err != nil {
			if isClosed(err) {
				return err
			}
			o.fail = true
		}
	}
	return nil
}

// isClosed reports whether err says that the socket is closed.
func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
