// Package memnet is in-memory networks for tests, so that a test can run
// the same code over them and over real sockets, and inside
// testing/synctest bubbles, where real sockets cannot be used. It is for
// tests only.
package memnet

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// A UDPNet is an in-memory UDP network: sockets by address, each with a
// queue that drops what does not fit, as a socket buffer does. Datagrams
// sent with a TTL of 2 or less die on the way, as they do between two
// NATs.
type UDPNet struct {
	mu    sync.Mutex
	socks map[netip.AddrPort]*UDPConn // guarded by mu
}

// NewUDP returns an empty network.
func NewUDP() *UDPNet { return &UDPNet{socks: make(map[netip.AddrPort]*UDPConn)} }

type datagram struct {
	from netip.AddrPort
	b    []byte
}

// A UDPConn is a socket on a UDPNet. It implements udpsock.TTLConn: its
// TTL starts at 64.
type UDPConn struct {
	n         *UDPNet
	addr      netip.AddrPort
	in        chan datagram
	ttl       atomic.Int32
	done      chan struct{}
	closeOnce sync.Once
}

// Listen opens a socket at addr (ip:port).
func (n *UDPNet) Listen(addr string) *UDPConn {
	s := &UDPConn{n: n, addr: netip.MustParseAddrPort(addr), in: make(chan datagram, 4096), done: make(chan struct{})}
	s.ttl.Store(64)
	n.mu.Lock()
	n.socks[s.addr] = s
	n.mu.Unlock()
	return s
}

// send carries b from from to to.
func (n *UDPNet) send(from, to netip.AddrPort, b []byte) {
	n.mu.Lock()
	dst := n.socks[to]
	n.mu.Unlock()
	if dst == nil {
		return
	}
	select {
	case dst.in <- datagram{from: from, b: bytes.Clone(b)}:
	default:
	}
}

// Addr returns the socket's address.
func (s *UDPConn) Addr() netip.AddrPort { return s.addr }

// ReadFromUDPAddrPort reads the next datagram; a longer one than b is cut.
func (s *UDPConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	select {
	case d := <-s.in:
		return copy(b, d.b), d.from, nil
	case <-s.done:
		return 0, netip.AddrPort{}, net.ErrClosed
	}
}

// WriteToUDPAddrPort sends b to to, unless the socket's TTL kills it.
func (s *UDPConn) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	select {
	case <-s.done:
		return 0, net.ErrClosed
	default:
	}
	if s.ttl.Load() > 2 {
		s.n.send(s.addr, to, b)
	}
	return len(b), nil
}

// LocalAddr returns the socket's address as a *net.UDPAddr.
func (s *UDPConn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(s.addr) }

// DefaultTTL returns 64, the TTL a socket starts with.
func (s *UDPConn) DefaultTTL() int { return 64 }

// SetTTL sets the TTL of the datagrams the socket sends next.
func (s *UDPConn) SetTTL(ttl int) error {
	s.ttl.Store(int32(ttl))
	return nil
}

// Close closes the socket and frees its address.
func (s *UDPConn) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.n.mu.Lock()
		if s.n.socks[s.addr] == s {
			delete(s.n.socks, s.addr)
		}
		s.n.mu.Unlock()
	})
	return nil
}
