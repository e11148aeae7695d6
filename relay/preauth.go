package relay

import (
	"container/list"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// preauth bounds the connections [Server.Serve] accepted that have not
// authenticated yet. Each is closed HandshakeTimeout after it was accepted
// unless its agent has proven its key by then, however slowly it trickles
// its TLS handshake, its upgrade request and its hello (each of which has a
// deadline of its own as well); one address (an IPv6 /64) holds at most
// MaxPendingPerIP of them, so that one host cannot hold thousands open;
// and when MaxPending are pending in all, a new connection closes the
// oldest one, so that many hosts together cannot fill the relay either: a
// real agent authenticates in milliseconds, an attacker's connection waits
// to be the oldest.
type preauth struct {
	timeout time.Duration
	perIP   int
	max     int

	mu     sync.Mutex
	byIP   map[netip.Addr]int     // guarded by mu
	conns  map[net.Conn]*preTimer // guarded by mu
	oldest list.List              // of net.Conn, oldest first; guarded by mu
}

type preTimer struct {
	ip    netip.Addr
	timer *time.Timer
	elem  *list.Element // in oldest
}

func newPreauth(timeout time.Duration, perIP, max int) *preauth {
	return &preauth{timeout: timeout, perIP: perIP, max: max, byIP: make(map[netip.Addr]int), conns: make(map[net.Conn]*preTimer)}
}

// ipKey is the address connections are counted under: the IPv4 address, or
// the /64 of an IPv6 one (a host usually holds a whole /64). It is not
// valid if a is not an IP address.
func ipKey(a net.Addr) netip.Addr {
	var ip netip.Addr
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case nil:
		return netip.Addr{}
	default:
		// Another network's address ("host:port" if it has one).
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// closeRaw closes the TCP connection under c at once (a TLS close would
// first try to send an alert to a peer that may not read).
func closeRaw(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		tc.NetConn().Close()
		return
	}
	c.Close()
}

// connState is the http.Server's ConnState hook.
func (p *preauth) connState(c net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		p.add(c)
	case http.StateClosed:
		p.done(c)
	}
	// A hijacked connection stays counted until the handshake ends
	// (Server.accept calls done).
}

// add starts counting c, or closes it if its address holds too many. If
// too many are pending in all, the oldest is closed to make room.
func (p *preauth) add(c net.Conn) {
	ip := ipKey(c.RemoteAddr())
	p.mu.Lock()
	if p.byIP[ip] >= p.perIP {
		p.mu.Unlock()
		closeRaw(c)
		return
	}
	var evicted net.Conn
	if len(p.conns) >= p.max {
		evicted = p.oldest.Front().Value.(net.Conn)
		p.doneLocked(evicted)
	}
	p.byIP[ip]++
	p.conns[c] = &preTimer{ip: ip, timer: time.AfterFunc(p.timeout, func() { closeRaw(c) }), elem: p.oldest.PushBack(c)}
	p.mu.Unlock()
	if evicted != nil {
		closeRaw(evicted)
	}
}

// done stops counting c: it authenticated, or it is gone.
func (p *preauth) done(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.doneLocked(c)
}

func (p *preauth) doneLocked(c net.Conn) {
	pt := p.conns[c]
	if pt == nil {
		return
	}
	pt.timer.Stop()
	p.oldest.Remove(pt.elem)
	delete(p.conns, c)
	if p.byIP[pt.ip]--; p.byIP[pt.ip] <= 0 {
		delete(p.byIP, pt.ip)
	}
}

// pending returns how many connections are counted.
func (p *preauth) pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}
