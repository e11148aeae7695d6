package relay

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/relayproto"
)

// ServeUDP answers binding requests on pc until [Server.Close] or
// [Server.Shutdown], which close pc (see
// relayproto.AppendBindingRequest): an agent attached over TCP learns the
// address its UDP socket has as the relay sees it. Requests that carry no
// current attachment's token get no answer; an answer is never larger than
// its request. A token is answered only from the address family its
// agent's connection came in on, and a few times in a while (udpAnswers in
// udpWindow): whoever learns a token can aim no more than that many small
// answers at anyone.
func (s *Server) ServeUDP(pc net.PacketConn) error {
	s.mu.Lock()
	if s.closed || s.draining {
		s.mu.Unlock()
		pc.Close()
		return net.ErrClosed
	}
	s.udps[pc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	// Answers leave from the address the request was sent to: on a relay
	// with several addresses, an answer from another one would not pass
	// the agent's NAT.
	udp, _ := pc.(*net.UDPConn)
	if udp != nil && !enablePktinfo(udp) {
		udp = nil
	}
	buf := make([]byte, 1500)
	oob := make([]byte, 256)
	for {
		var (
			n, oobn int
			from    netip.AddrPort
			err     error
		)
		if udp != nil {
			n, oobn, _, from, err = udp.ReadMsgUDPAddrPort(buf, oob)
		} else {
			var a net.Addr
			if n, a, err = pc.ReadFrom(buf); err == nil {
				if ua, ok := a.(*net.UDPAddr); ok {
					from = ua.AddrPort()
				}
			}
		}
		if err != nil {
			s.mu.Lock()
			closed := s.closed || s.draining
			s.mu.Unlock()
			if closed {
				return net.ErrClosed
			}
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				continue
			}
			return err
		}
		tok, txid, err := relayproto.ParseBindingRequest(buf[:n])
		if err != nil {
			s.stats.udpIgnored.Add(1)
			continue
		}
		g := s.udp.lookup(tok)
		if g == nil || !from.IsValid() || !g.answer(from, time.Now()) {
			s.stats.udpIgnored.Add(1)
			continue
		}
		resp := relayproto.AppendBindingResponse(buf[n:n], txid, from)
		// Counted before it goes, so that whoever reads the answer finds
		// it counted.
		s.stats.udpAnswered.Add(1)
		if udp != nil {
			udp.WriteMsgUDPAddrPort(resp, replyOOB(oob[:oobn]), from)
		} else {
			pc.WriteTo(resp, net.UDPAddrFromAddrPort(from))
		}
	}
}

// udpGrants are the binding tokens of the attached agents, each with its
// grant. They have a lock of their own, taken alone: a binding request
// never waits on routing.
type udpGrants struct {
	mu      sync.RWMutex
	byToken map[[16]byte]*udpGrant // guarded by mu
}

// grant lets a's token be answered.
func (u *udpGrants) grant(a *attachment) {
	g := newUDPGrant(a, a.remoteAddr())
	u.mu.Lock()
	defer u.mu.Unlock()
	u.byToken[a.bindingToken()] = g
}

// revoke ends the grant of a's token, if it is still a's.
func (u *udpGrants) revoke(a *attachment) {
	tok := a.bindingToken()
	u.mu.Lock()
	defer u.mu.Unlock()
	if g := u.byToken[tok]; g != nil && g.owner == a {
		delete(u.byToken, tok)
	}
}

// lookup returns the grant of tok, or nil.
func (u *udpGrants) lookup(tok [16]byte) *udpGrant {
	u.mu.RLock()
	defer u.mu.RUnlock()
	return u.byToken[tok]
}

// A udpGrant lets an attached agent ask the relay's UDP port for its
// address: from the address family its connection came in on, at most
// udpAnswers times in every udpWindow.
type udpGrant struct {
	owner       *attachment  // immutable
	family      int          // 4 or 6; 0 if the agent's address is not known; immutable
	windowStart atomic.Int64 // Unix nanoseconds
	answered    atomic.Int32 // in the window
}

// An agent sends a few binding requests when it attaches (see
// paths.bindingAttempts); it never needs more than udpAnswers in a window.
const (
	udpAnswers = 8
	udpWindow  = 10 * time.Second
)

func newUDPGrant(owner *attachment, remote net.Addr) *udpGrant {
	g := &udpGrant{owner: owner}
	switch ip := ipKey(remote); {
	case ip.Is4():
		g.family = 4
	case ip.Is6():
		g.family = 6
	}
	return g
}

// answer reports whether a binding request from from may be answered now.
func (g *udpGrant) answer(from netip.AddrPort, now time.Time) bool {
	if a := from.Addr().Unmap(); g.family == 4 && !a.Is4() || g.family == 6 && !a.Is6() {
		return false
	}
	if start := g.windowStart.Load(); now.UnixNano()-start >= int64(udpWindow) {
		if g.windowStart.CompareAndSwap(start, now.UnixNano()) {
			g.answered.Store(0)
		}
	}
	return g.answered.Add(1) <= udpAnswers
}
