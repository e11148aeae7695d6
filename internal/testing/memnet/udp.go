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
// NATs. A test can drop datagrams ([UDPNet.SetDrop]), watch them
// ([UDPNet.SetTap]) and send them from any address ([UDPNet.Inject]).
type UDPNet struct {
	mu    sync.Mutex
	socks map[netip.AddrPort]*UDPConn                  // guarded by mu
	drop  func(from, to netip.AddrPort, b []byte) bool // guarded by mu
	tap   func(from, to netip.AddrPort, b []byte)      // guarded by mu
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

// SetDrop makes the network drop the datagrams f returns true for; nil
// drops none.
func (n *UDPNet) SetDrop(f func(from, to netip.AddrPort, b []byte) bool) {
	n.mu.Lock()
	n.drop = f
	n.mu.Unlock()
}

// SetTap makes the network call f with every datagram sent on it (dropped
// or not) before it is delivered; nil stops it. f must not keep b.
func (n *UDPNet) SetTap(f func(from, to netip.AddrPort, b []byte)) {
	n.mu.Lock()
	n.tap = f
	n.mu.Unlock()
}

// Inject delivers b to to as if from from, past the drop filter and the
// tap; it waits while to's queue is full.
func (n *UDPNet) Inject(from, to netip.AddrPort, b []byte) {
	n.mu.Lock()
	dst := n.socks[to]
	n.mu.Unlock()
	if dst != nil {
		dst.in <- datagram{from: from, b: bytes.Clone(b)}
	}
}

// send carries b from from to to, unless dropped.
func (n *UDPNet) send(from, to netip.AddrPort, b []byte) {
	n.mu.Lock()
	dst, drop, tap := n.socks[to], n.drop, n.tap
	n.mu.Unlock()
	if tap != nil {
		tap(from, to, b)
	}
	if dst == nil || drop != nil && drop(from, to, b) {
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
