package relay

import (
	"bytes"
	"errors"
	"math"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/internal/udpgso"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// ServeUDP serves the relay's UDP port on pc until [Server.Close] or
// [Server.Shutdown], which close pc.
//
// It answers binding requests (see relayproto.AppendBindingRequest): an
// agent attached over TCP learns the address its UDP socket has as the
// relay sees it. Requests that carry no current attachment's token get no
// answer; an answer is never larger than its request. A token is answered
// only from the address family its agent's connection came in on, and a
// few times in a while (udpAnswers in udpWindow): whoever learns a token
// can aim no more than that many small answers at anyone.
//
// Unless [Config.NoUDPRelay], it is also the UDP relay path (see
// udprelay.go and relayproto/PROTOCOL.md): binds, which share the binding
// requests' answer budget, keepalives, and sends forwarded to the
// destination agent's bound address as recvs. Nothing is sent to an
// address before a datagram with its binding's tag came back from it, and
// no answer is larger than what it answers.
//
// Datagrams are read and sent in batches (on Linux, with recvmmsg and
// sendmmsg), each forwarded in the buffer it was read into. Where the
// kernel has them, a read takes a burst of one sender's datagrams at once
// (UDP GRO), and the datagrams of a burst forwarded to one agent leave
// with one send that the kernel cuts apart again (UDP GSO). Every answer
// and forwarded datagram leaves from the local address the bind of its
// destination was sent to, as the kernel told (pktinfo). The one read loop
// never waits on an agent: it waits only for room in a socket's send
// buffer (its own, or that of the relay's other socket a destination
// bound through), while the kernel drops what arrives meanwhile.
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
	sock := newUDPSock(pc)
	if s.udpRelayOn() {
		stop := s.sweepUDP(sock)
		defer stop()
	}
	ms := make([]udpMsg, udpBatchLen)
	bufLen := udpBufLen
	if sock.io.coalesced() {
		ms, bufLen = ms[:udpCoalescedBatchLen], udpCoalescedBufLen
	}
	for i := range ms {
		ms[i].buf = make([]byte, bufLen)
		ms[i].oob = make([]byte, udpOOBLen)
	}
	outs := make([]udpOut, 0, udpBatchLen)
	for {
		n, err := sock.io.read(ms)
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
		now := time.Now()
		outs = outs[:0]
		for i := range ms[:n] {
			outs = s.handleUDPMsg(sock, &ms[i], now, outs)
		}
		if len(outs) == 0 {
			continue
		}
		err = sock.io.write(outs)
		for i := range outs {
			o := &outs[i]
			switch {
			case o.pkts == 0:
			case err != nil:
				s.urelay.unsent(o.pkts, o.bytes)
			case o.failed > 0:
				s.urelay.unsent(o.failed, o.failedLen-o.failed*relayproto.UDPDataHeaderLen)
			}
			outs[i] = udpOut{}
		}
	}
}

// handleUDPMsg takes what one read m took from sock at now, datagram by
// datagram, and appends to outs what to send for it. A run of datagrams
// forwarded to one address, cut from one coalesced read, goes out as one
// udpOut, which the kernel cuts apart again where it can: the relay then
// pays a system call per burst, not per datagram.
func (s *Server) handleUDPMsg(sock *udpSock, m *udpMsg, now time.Time, outs []udpOut) []udpOut {
	if m.n == 0 {
		s.handleUDP(sock, m, m.buf[:0], now) // counted, never answered
		return outs
	}
	seg := m.seg
	if seg <= 0 || seg > m.n {
		seg = m.n
	}
	run := -1 // the out whose run the datagram before this one ended
	for off := 0; off < m.n; off += seg {
		p := m.buf[off:min(off+seg, m.n)]
		o, ok := s.handleUDP(sock, m, p, now)
		switch {
		case !ok:
			run = -1
		case run >= 0 && o.pkts == 1 && extends(&outs[run], &o, seg):
			r := &outs[run]
			r.b = r.b[:len(r.b)+len(p)] // p follows r.b in m.buf
			r.seg = seg
			r.pkts++
			r.bytes += o.bytes
		default:
			outs = append(outs, o)
			run = -1
			if o.pkts == 1 {
				run = len(outs) - 1
			}
		}
	}
	return outs
}

// extends reports whether o, a forwarded datagram that follows the run r
// in its buffer, may join it: to the same address from the same local
// one, no longer than the run's datagrams (of size seg), and within the
// kernel's bounds of one segmented send.
func extends(r, o *udpOut, seg int) bool {
	return r.addr == o.addr && bytes.Equal(r.oob, o.oob) && len(o.b) <= seg &&
		r.pkts < udpgso.MaxSegments && len(r.b)+len(o.b) <= udpgso.MaxSendLen
}

// udpRelayOn reports whether the relay forwards over UDP.
func (s *Server) udpRelayOn() bool { return s.cfg.UDPPort != 0 && !s.cfg.NoUDPRelay }

// handleUDP takes the datagram p, of the read m, that came in on sock at
// now, and returns what to send for it, if anything. An answer is written
// over p, never larger, so that it cannot spill into the next datagram of
// m.
func (s *Server) handleUDP(sock *udpSock, m *udpMsg, p []byte, now time.Time) (udpOut, bool) {
	if len(p) == 0 || !m.addr.IsValid() {
		s.stats.udpIgnored.Add(1)
		return udpOut{}, false
	}
	relayOn := s.udpRelayOn()
	switch {
	case p[0] == relayproto.UDPBindingRequest:
		tok, txid, err := relayproto.ParseBindingRequest(p)
		if err != nil {
			break
		}
		g := s.udp.lookup(tok)
		if g == nil || !g.answer(m.addr, now) {
			break
		}
		// Counted before it goes, so that whoever reads the answer finds
		// it counted.
		s.stats.udpAnswered.Add(1)
		return udpOut{b: relayproto.AppendBindingResponse(p[:0:len(p)], txid, m.addr), addr: m.addr,
			oob: replyOOB(m.oob[:m.oobn])}, true
	case !relayOn:
	case p[0] == relayproto.UDPSend:
		to, pkt := s.forwardUDP(m.addr, p, now.UnixNano())
		switch {
		case to == nil:
		case to.sock != sock:
			// Bound through another of the relay's sockets: sent from
			// there, outside the batch.
			s.urelay.sending(pkt)
			if to.sock.writeOne(p, to.from, to.addr) != nil {
				s.urelay.unsent(1, pkt)
			}
		default:
			s.urelay.sending(pkt)
			return udpOut{b: p, addr: to.addr, oob: to.from, pkts: 1, bytes: pkt}, true
		}
		return udpOut{}, false
	case p[0] == relayproto.UDPKeepalive:
		if !s.urelay.keepalive(m.addr, p, now.UnixNano()) {
			return udpOut{}, false
		}
		p[0] = relayproto.UDPAlive // the same tag and sequence number back
		return udpOut{b: p, addr: m.addr, oob: replyOOB(m.oob[:m.oobn])}, true
	case p[0] == relayproto.UDPBind:
		return s.bindUDP(sock, m, p, now)
	case p[0] == relayproto.UDPBound, p[0] == relayproto.UDPRecv, p[0] == relayproto.UDPAlive:
		s.urelay.drop(UDPDropMalformed)
		return udpOut{}, false
	}
	s.stats.udpIgnored.Add(1)
	return udpOut{}, false
}

// bindUDP takes the bind datagram p, of the read m, that came in on sock:
// it binds the address it came from to the session of its token and
// answers bound, over p.
func (s *Server) bindUDP(sock *udpSock, m *udpMsg, p []byte, now time.Time) (udpOut, bool) {
	tok, txid, err := relayproto.ParseUDPBind(p)
	if err != nil {
		s.urelay.drop(UDPDropMalformed)
		return udpOut{}, false
	}
	g := s.udp.lookup(tok)
	if g == nil {
		s.urelay.drop(UDPDropUnknownToken)
		return udpOut{}, false
	}
	if !g.answer(m.addr, now) {
		s.urelay.drop(UDPDropRateLimited)
		return udpOut{}, false
	}
	from := replyOOB(m.oob[:m.oobn])
	tag, ok := s.urelay.bind(g.owner, m.addr, sock, from, txid, now.UnixNano())
	if !ok {
		s.urelay.drop(UDPDropUnknownToken)
		return udpOut{}, false
	}
	s.stats.udpAnswered.Add(1)
	return udpOut{b: relayproto.AppendUDPBound(p[:0:len(p)], txid, tag, m.addr), addr: m.addr, oob: from}, true
}

// sweepUDP drops the bindings of sock that expire, until the returned
// function is called; that function waits for the sweeps to end and drops
// every binding of sock.
func (s *Server) sweepUDP(sock *udpSock) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(udpSweepEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				s.urelay.sweep(sock, now.Add(-udpBindingTTL).UnixNano())
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
		s.urelay.sweep(sock, math.MaxInt64)
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
