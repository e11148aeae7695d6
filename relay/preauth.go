package relay

import (
	"container/list"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
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

	// Counters (see [Stats]).
	perIPRejected atomic.Uint64 // closed at once: their address held too many
	evicted       atomic.Uint64 // closed to make room for a newer one
	timedOut      atomic.Uint64 // closed by the timeout before they were upgraded
	tlsFailed     atomic.Uint64 // closed before a request, by their TLS handshake or their peer
}

type preTimer struct {
	ip       netip.Addr
	added    time.Time
	timer    *time.Timer
	elem     *list.Element // in oldest
	active   bool          // a request came on it
	hijacked bool          // upgraded: the handshake counts its own failure
	timedOut bool          // the timer closed it
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
	case http.StateActive, http.StateHijacked:
		p.mark(c, st == http.StateHijacked)
	case http.StateClosed:
		p.closed(c)
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
		p.perIPRejected.Add(1)
		closeRaw(c)
		return
	}
	var evicted net.Conn
	if len(p.conns) >= p.max {
		evicted = p.oldest.Front().Value.(net.Conn)
		p.doneLocked(evicted)
		p.evicted.Add(1)
	}
	p.byIP[ip]++
	p.conns[c] = &preTimer{ip: ip, added: time.Now(), timer: time.AfterFunc(p.timeout, func() { p.expire(c) }), elem: p.oldest.PushBack(c)}
	p.mu.Unlock()
	if evicted != nil {
		closeRaw(evicted)
	}
}

// expire closes c, whose time is up.
func (p *preauth) expire(c net.Conn) {
	p.mu.Lock()
	if pt := p.conns[c]; pt != nil {
		pt.timedOut = true
		if !pt.hijacked {
			p.timedOut.Add(1)
		}
	}
	p.mu.Unlock()
	closeRaw(c)
}

// mark records that a request came on c, or that it was upgraded.
func (p *preauth) mark(c net.Conn, hijacked bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pt := p.conns[c]; pt != nil {
		pt.active = true
		pt.hijacked = pt.hijacked || hijacked
	}
}

// closed stops counting c, which the HTTP server closed, and counts it as
// a TLS failure if no request came on it and no timeout closed it. (The
// HTTP server's own TLS deadline may close it a moment before the
// timeout would: then it has been pending as long.)
func (p *preauth) closed(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pt := p.conns[c]; pt != nil && !pt.active && !pt.timedOut {
		if time.Since(pt.added) >= p.timeout {
			p.timedOut.Add(1)
		} else {
			p.tlsFailed.Add(1)
		}
	}
	p.doneLocked(c)
}

// done stops counting c: it authenticated, or it is gone. It reports
// whether the timeout closed it.
func (p *preauth) done(c net.Conn) (timedOut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pt := p.conns[c]; pt != nil {
		timedOut = pt.timedOut
	}
	p.doneLocked(c)
	return timedOut
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
