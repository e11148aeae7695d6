// Package udpsock is an agent's UDP socket: the one socket that direct
// paths use. A [Socket] sends datagrams one at a time ([Socket.WriteTo]),
// or queued and in batches ([Socket.Enqueue]): a writer goroutine sends
// each run of datagrams to one address with one system call where the
// kernel segments UDP sends (GSO). It reads with one system call a burst
// of datagrams the kernel coalesced (GRO), and hands each datagram, with
// its source, to the caller. It asks for socket buffers that hold some
// 30 ms of a 1 Gbit/s stream (socketBuffer). It can send datagrams with a
// low TTL ([Socket.WriteLowTTL]), restoring the socket's own TTL after.
//
// The socket underneath is a [Conn]: a *net.UDPConn, whose kernel
// features (segmentation, coalescing, TTL) are used where the system has
// them, or an in-memory fake in tests, which may model TTLs ([TTLConn]);
// either way the Socket behaves the same to its caller.
//
// This package moves datagrams and knows nothing of what they carry: it
// imports nothing of burrow but a leaf helper (internal/udpgso), and never
// parses, answers or drops a datagram by its content.
package udpsock

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// socketBuffer is the receive and send buffer New asks for a system
// socket. The system's default (some 200 KiB on Linux) holds under 2 ms of
// a 1 Gbit/s stream: a reader that waits longer for a processor drops
// datagrams, which QUIC then sends again, and slows down for.
const socketBuffer = 4 << 20

// A Conn is a UDP socket: *net.UDPConn implements it.
type Conn interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
	LocalAddr() net.Addr
	Close() error
}

// A TTLConn is a Conn that is not a system socket (an in-memory network in
// tests) but models TTLs: SetTTL sets the TTL of what it sends next.
type TTLConn interface {
	Conn
	DefaultTTL() int
	SetTTL(ttl int) error
}

// Config configures a [Socket].
type Config struct {
	// Receive takes every datagram read, with the address it came from
	// (IPv4 addresses unmapped). b is valid only during the call, which
	// must not block for long: it holds up the reads. Required.
	Receive func(b []byte, from netip.AddrPort)
	// QueueLen bounds the datagrams Enqueue queues; beyond it they are
	// dropped. Zero means 1024.
	QueueLen int
}

// A Socket is an agent's UDP socket: see the package comment. Create it
// with [Listen] or [New]; it is safe for concurrent use.
type Socket struct {
	conn    Conn
	port    uint16
	receive func(b []byte, from netip.AddrPort)
	// coalesce: the socket hands a burst of datagrams over in one read.
	coalesce bool

	// ttlMu: WriteLowTTL changes the socket's TTL, holding it exclusively;
	// every other send holds it shared.
	ttlMu       sync.RWMutex
	ttl4, hops6 int  // the socket's own values, restored after WriteLowTTL
	canTTL      bool // the TTL can be set

	// sendq holds the datagrams of Enqueue for the write loop; gso says
	// that the socket segments sends; segmented counts the datagrams sent
	// so.
	sendq     chan outDatagram
	gso       atomic.Bool
	segmented atomic.Uint64

	done      chan struct{} // closed by Close
	closeOnce sync.Once
	wg        sync.WaitGroup // the read and write loops
}

// Listen opens a system UDP socket on port (zero picks one), on every
// address, and returns a Socket over it.
func Listen(port int, cfg Config) (*Socket, error) {
	u, err := net.ListenUDP("udp", &net.UDPAddr{Port: port})
	if err != nil {
		return nil, err
	}
	return New(u, cfg), nil
}

// New returns a Socket over conn, which it owns from now on, and starts
// reading it.
func New(conn Conn, cfg Config) *Socket {
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 1024
	}
	s := &Socket{
		conn:     conn,
		receive:  cfg.Receive,
		coalesce: enableCoalescing(conn),
		sendq:    make(chan outDatagram, cfg.QueueLen),
		done:     make(chan struct{}),
	}
	if u, ok := conn.(*net.UDPConn); ok {
		// Best effort: the system may cap them lower (on Linux,
		// net.core.rmem_max and wmem_max).
		u.SetReadBuffer(socketBuffer)
		u.SetWriteBuffer(socketBuffer)
	}
	s.gso.Store(canSegment(conn))
	if ua, ok := conn.LocalAddr().(*net.UDPAddr); ok {
		s.port = uint16(ua.Port)
	}
	s.ttl4, s.hops6, s.canTTL = socketTTL(conn)
	s.wg.Go(s.readLoop)
	s.wg.Go(s.writeLoop)
	return s
}

// Port returns the socket's local port.
func (s *Socket) Port() uint16 { return s.port }

// Close closes the socket and waits for its loops; datagrams still queued
// are dropped. It is idempotent.
func (s *Socket) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.done)
		err = s.conn.Close()
		s.wg.Wait()
	})
	return err
}

// WriteTo sends b to addr now, past the queue of Enqueue.
func (s *Socket) WriteTo(b []byte, addr netip.AddrPort) error {
	s.ttlMu.RLock()
	_, err := s.conn.WriteToUDPAddrPort(b, addr)
	s.ttlMu.RUnlock()
	return err
}

// WriteLowTTL sends each of msgs to the matching address of to with a TTL
// (and, on an IPv6 socket, a hop limit) of ttl, then restores the
// socket's own. It sends nothing, and returns [errors.ErrUnsupported], if
// it cannot set the TTL: such datagrams would travel all the way.
func (s *Socket) WriteLowTTL(msgs [][]byte, to []netip.AddrPort, ttl int) error {
	if !s.canTTL {
		return errors.ErrUnsupported
	}
	s.ttlMu.Lock()
	defer s.ttlMu.Unlock()
	hops6 := -1 // an IPv4 socket has no hop limit to set
	if s.hops6 >= 0 {
		hops6 = ttl
	}
	if err := setSocketTTL(s.conn, ttl, hops6); err != nil {
		setSocketTTL(s.conn, s.ttl4, s.hops6)
		return err
	}
	for i, m := range msgs {
		s.conn.WriteToUDPAddrPort(m, to[i])
	}
	return setSocketTTL(s.conn, s.ttl4, s.hops6)
}

// readLoop reads the socket until it is closed.
func (s *Socket) readLoop() {
	if s.coalesce {
		s.readCoalesced()
		return
	}
	b := make([]byte, 1<<16)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(b)
		if err != nil {
			if s.closed(err) {
				return
			}
			// An ICMP error reported on the socket, or the like: the
			// socket itself is fine.
			continue
		}
		s.receive(b[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()))
	}
}

// readCoalesced is readLoop on a socket that hands a burst of datagrams
// over in one read.
func (s *Socket) readCoalesced() {
	u := s.conn.(*net.UDPConn)
	b := make([]byte, 1<<16)
	oob := make([]byte, oobLen)
	for {
		n, seg, from, err := readCoalesced(u, b, oob)
		if err != nil {
			if s.closed(err) {
				return
			}
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		for off := 0; off < n; off += seg {
			s.receive(b[off:min(off+seg, n)], from)
		}
	}
}

// closed reports whether a read failed with err because the socket is
// closed.
func (s *Socket) closed(err error) bool {
	select {
	case <-s.done:
		return true
	default:
	}
	return errors.Is(err, net.ErrClosed)
}
