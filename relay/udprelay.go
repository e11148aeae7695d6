package relay

import (
	"crypto/rand"
	mrand "math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/relayproto"
)

// The UDP relay path (relayproto.UDPBind and the types after it): the
// relay forwards agents' end-to-end packets as datagrams on its UDP port.
// Every attachment has a channel, a random number that names it on the
// relay (the server hello's [relayproto.ExtUDPRelay]). A bind with the
// attachment's binding token binds the address it came from to the
// attachment under a new random tag, which only the bound answer carries;
// a datagram that comes back from that address with the tag confirms the
// binding. A send is forwarded, rewritten in place into a recv, only from a
// bound address with its tag, to a channel whose attachment has a confirmed
// binding, and only if routing lets the sender reach it (the same rules as
// on TCP). Everything else is dropped without an answer and counted by
// reason ([UDPDrop]).
//
// Per forwarded datagram the relay takes the read lock of udpRelay once
// (the source binding and the destination channel) and that of routes
// once, and allocates nothing.

// udpBindingTTL is how long a binding lasts without a datagram from its
// address; a binding is confirmed while its tag came back within it.
const udpBindingTTL = 60 * time.Second

// udpSweepEvery is how often expired bindings are dropped.
const udpSweepEvery = 10 * time.Second

// A UDPDrop is why the relay dropped a datagram of the UDP relay path,
// without an answer.
type UDPDrop uint8

// The reasons of [UDPDrop], each with its metric label.
const (
	// UDPDropMalformed ("malformed"): of a type of the path, but of the
	// wrong size or layout (a send larger than
	// [relayproto.MaxUDPDatagram] included), or of a type only the relay
	// sends.
	UDPDropMalformed UDPDrop = iota
	// UDPDropUnknownToken ("unknown_token"): a bind whose token is no
	// attached session's (one that ended, or never was).
	UDPDropUnknownToken
	// UDPDropRateLimited ("rate_limited"): a bind past its session's
	// answer budget, or from the other address family than its session's
	// connection.
	UDPDropRateLimited
	// UDPDropUnbound ("unbound"): a send or keepalive from an address no
	// session is bound to.
	UDPDropUnbound
	// UDPDropWrongTag ("wrong_tag"): a send or keepalive from a bound
	// address with another tag than its binding's (a spoofed source, or
	// one agent's datagram sent again from another's address).
	UDPDropWrongTag
	// UDPDropUnknownChannel ("unknown_channel"): a send to a channel no
	// attached agent has.
	UDPDropUnknownChannel
	// UDPDropNotAllowed ("not_allowed"): a send the routing rules forbid
	// (a client to a device that does not allow it, a device to a device).
	UDPDropNotAllowed
	// UDPDropUnconfirmed ("unconfirmed"): a send to an agent whose UDP
	// binding is missing or not confirmed.
	UDPDropUnconfirmed
	// UDPDropSendFailed ("send_failed"): the relay's socket refused to
	// send the forwarded datagram.
	UDPDropSendFailed

	numUDPDrops
)

// UDPDrops lists every [UDPDrop].
var UDPDrops = []UDPDrop{UDPDropMalformed, UDPDropUnknownToken, UDPDropRateLimited, UDPDropUnbound,
	UDPDropWrongTag, UDPDropUnknownChannel, UDPDropNotAllowed, UDPDropUnconfirmed, UDPDropSendFailed}

var udpDropNames = [numUDPDrops]string{"malformed", "unknown_token", "rate_limited", "unbound",
	"wrong_tag", "unknown_channel", "not_allowed", "unconfirmed", "send_failed"}

// String is the reason's metric label.
func (d UDPDrop) String() string {
	if d < numUDPDrops {
		return udpDropNames[d]
	}
	return "unknown"
}

// udpRelay is the state of the UDP relay path: the channel of every
// attachment and the bindings by address. Its lock is taken alone, never
// with another: a datagram's lookups finish before routing is asked.
type udpRelay struct {
	mu     sync.RWMutex
	byChan map[uint32]*udpPeer            // guarded by mu
	byAddr map[netip.AddrPort]*udpBinding // guarded by mu
	// pending are binds from an address that another agent's confirmed
	// binding holds: they take it over only once their tag has come back
	// from it (see bind). Guarded by mu; npending is its size, read
	// without the lock.
	pending  map[netip.AddrPort]*udpBinding
	npending atomic.Int32

	forwarded, forwardedBytes atomic.Uint64
	dropped                   [numUDPDrops]atomic.Uint64
}

// A udpPeer is an attachment on the UDP relay path.
type udpPeer struct {
	owner   *attachment // immutable
	channel uint32      // immutable
	bind    *udpBinding // the current binding, nil if none; guarded by udpRelay.mu
}

// A udpBinding binds an address to a peer. An idle one costs some 150
// bytes and two map entries.
type udpBinding struct {
	peer *udpPeer       // immutable
	addr netip.AddrPort // immutable
	tag  [relayproto.UDPTagLen]byte
	txid [8]byte  // of the bind that made it: the same bind again gets the same tag
	sock *udpSock // the socket the bind came in on; immutable
	// from sends from the local address the bind was sent to (see
	// replyOOB); nil: any. Immutable.
	from []byte

	seen      atomic.Int64 // Unix nanoseconds of the last datagram taken from addr, the bind included
	confirmed atomic.Int64 // Unix nanoseconds of the last datagram with the tag; 0 until one
	// left is when the binding's agent detached (Unix nanoseconds), 0
	// while it is attached: see udpLeaveGrace.
	left atomic.Int64
}

// udpLeaveGrace is how long the sends of an agent that has detached are
// still taken from its binding. An agent that closes sends its last
// packets (a QUIC close) just before it closes its TCP session: the relay
// may read the datagrams after it has seen the session end, and they must
// still reach the peer. Nothing is sent to a detached agent, whose channel
// is freed at once.
const udpLeaveGrace = 2 * time.Second

// udpPendingTTL is how long a pending bind (see udpRelay.bind) may wait
// for its tag to come back.
const udpPendingTTL = 5 * time.Second

func (r *udpRelay) init() {
	r.byChan = make(map[uint32]*udpPeer)
	r.byAddr = make(map[netip.AddrPort]*udpBinding)
	r.pending = make(map[netip.AddrPort]*udpBinding)
}

// drop counts a datagram dropped for why.
func (r *udpRelay) drop(why UDPDrop) { r.dropped[why].Add(1) }

// attach gives a a channel of its own, unique among the attachments.
func (r *udpRelay) attach(a *attachment) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		c := mrand.Uint32()
		if c != 0 && r.byChan[c] == nil {
			a.udpChannel = c
			r.byChan[c] = &udpPeer{owner: a, channel: c}
			return
		}
	}
}

// detach frees a's channel and drops its binding.
func (r *udpRelay) detach(a *attachment) {
	if a.udpChannel == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.byChan[a.udpChannel]
	if p == nil || p.owner != a {
		return
	}
	delete(r.byChan, a.udpChannel)
	if b := p.bind; b != nil && r.byAddr[b.addr] == b {
		b.left.Store(time.Now().UnixNano()) // the sweep drops it
	}
	p.bind = nil
}

// bind binds addr, from which a bind with a's token and txid came on sock,
// to a under a new tag, replacing a's binding and any other binding of
// addr; it returns the tag, or false if a has detached. The same bind
// again (a resend: same agent, address and txid) gets the same tag, so
// that answers crossing on the way do not leave the agent with a stale
// one. If another agent's confirmed binding holds addr, the new binding
// waits in pending until its tag comes back from addr (see promote): a
// bind whose source address is forged cannot knock a working binding off
// its address, since its tag goes to that address's owner.
func (r *udpRelay) bind(a *attachment, addr netip.AddrPort, sock *udpSock, from []byte, txid [8]byte, now int64) ([relayproto.UDPTagLen]byte, bool) {
	b := &udpBinding{addr: addr, sock: sock, from: from, txid: txid}
	rand.Read(b.tag[:])
	b.seen.Store(now)
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.byChan[a.udpChannel]
	if a.udpChannel == 0 || p == nil || p.owner != a {
		return b.tag, false
	}
	b.peer = p
	for _, same := range []*udpBinding{p.bind, r.pending[addr]} {
		if same != nil && same.peer == p && same.addr == addr && same.txid == txid {
			same.seen.Store(now)
			return same.tag, true
		}
	}
	if other := r.byAddr[addr]; other != nil && other.peer != p && other.left.Load() == 0 && other.isConfirmed(now) {
		r.pending[addr] = b
		r.npending.Store(int32(len(r.pending)))
		return b.tag, true
	}
	r.installLocked(b)
	return b.tag, true
}

// installLocked makes b its peer's binding and addr's, replacing both
// previous ones. The caller holds mu.
func (r *udpRelay) installLocked(b *udpBinding) {
	p := b.peer
	if old := p.bind; old != nil && r.byAddr[old.addr] == old {
		delete(r.byAddr, old.addr)
	}
	if other := r.byAddr[b.addr]; other != nil && other.peer.bind == other {
		// The address now belongs to b's agent: another agent's NAT
		// mapping was given to it.
		other.peer.bind = nil
	}
	r.byAddr[b.addr] = b
	p.bind = b
}

// promote installs the pending binding of addr if tag is its tag (it has
// come back from addr: the address is its agent's now) and its agent is
// still attached, and returns it; otherwise nil.
func (r *udpRelay) promote(addr netip.AddrPort, tag [relayproto.UDPTagLen]byte) *udpBinding {
	if r.npending.Load() == 0 {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.pending[addr]
	if b == nil || b.tag != tag {
		return nil
	}
	delete(r.pending, addr)
	r.npending.Store(int32(len(r.pending)))
	if r.byChan[b.peer.channel] != b.peer {
		return nil // its agent has left
	}
	r.installLocked(b)
	return b
}

// taken returns the binding of addr if tag is its tag, and marks it heard
// (and so confirmed) at now; otherwise it counts the drop and returns nil.
func (r *udpRelay) taken(addr netip.AddrPort, b *udpBinding, tag [relayproto.UDPTagLen]byte, now int64) *udpBinding {
	if b == nil || b.tag != tag {
		if pb := r.promote(addr, tag); pb != nil {
			b = pb
		} else if b == nil {
			r.drop(UDPDropUnbound)
			return nil
		} else {
			r.drop(UDPDropWrongTag)
			return nil
		}
	}
	if left := b.left.Load(); left != 0 && now-left > int64(udpLeaveGrace) {
		r.drop(UDPDropUnbound)
		return nil
	}
	if b.seen.Load() != now {
		b.seen.Store(now)
	}
	if b.confirmed.Load() != now {
		b.confirmed.Store(now)
	}
	return b
}

// keepalive takes a keepalive from addr and reports whether to answer it.
func (r *udpRelay) keepalive(addr netip.AddrPort, p []byte, now int64) bool {
	typ, tag, _, err := relayproto.ParseUDPKeepalive(p)
	if err != nil || typ != relayproto.UDPKeepalive {
		r.drop(UDPDropMalformed)
		return false
	}
	r.mu.RLock()
	b := r.byAddr[addr]
	r.mu.RUnlock()
	if b != nil && b.left.Load() != 0 { // no answer once the agent has left
		r.drop(UDPDropUnbound)
		return false
	}
	return r.taken(addr, b, tag, now) != nil
}

// forward takes a send datagram p from addr and, if it may be forwarded,
// rewrites it into a recv in place and returns its destination binding
// and the packet's length. This is the path of every relayed packet.
func (s *Server) forwardUDP(addr netip.AddrPort, p []byte, now int64) (*udpBinding, int) {
	r := &s.urelay
	typ, tag, ch, pkt, err := relayproto.ParseUDPData(p)
	if err != nil || typ != relayproto.UDPSend {
		r.drop(UDPDropMalformed)
		return nil, 0
	}
	r.mu.RLock()
	src := r.byAddr[addr]
	dst := r.byChan[ch]
	var to *udpBinding
	if dst != nil {
		to = dst.bind
	}
	r.mu.RUnlock()
	if src = r.taken(addr, src, tag, now); src == nil {
		return nil, 0
	}
	if dst == nil {
		r.drop(UDPDropUnknownChannel)
		return nil, 0
	}
	if to == nil || !to.isConfirmed(now) {
		r.drop(UDPDropUnconfirmed)
		return nil, 0
	}
	if a, _ := s.route(src.peer.owner, dst.owner.address()); a != dst.owner {
		r.drop(UDPDropNotAllowed)
		return nil, 0
	}
	if m := src.peer.owner.marks; m != nil { // a client's pair, for Snapshot
		m.mark(peerKey(dst.owner.address().ID), now)
	}
	relayproto.PutUDPDataHeader(p, relayproto.UDPRecv, to.tag, src.peer.channel)
	return to, len(pkt)
}

// isConfirmed reports whether the binding's tag came back within the TTL.
func (b *udpBinding) isConfirmed(now int64) bool {
	c := b.confirmed.Load()
	return c != 0 && now-c < int64(udpBindingTTL)
}

// sending counts a datagram of n packet bytes forwarded. It is counted
// before it goes, so that whoever receives it finds it counted; unsent
// takes it back if the socket refuses it.
func (r *udpRelay) sending(n int) {
	r.forwarded.Add(1)
	r.forwardedBytes.Add(uint64(n))
}

// unsent counts as dropped pkts datagrams, of n packet bytes in all,
// that sending counted and the socket refused.
func (r *udpRelay) unsent(pkts, n int) {
	r.forwarded.Add(-uint64(pkts))
	r.forwardedBytes.Add(-uint64(n))
	r.dropped[UDPDropSendFailed].Add(uint64(pkts))
}

// sweep drops the bindings of sock (all if nil) that have heard nothing
// since before expired (Unix nanoseconds).
func (r *udpRelay) sweep(sock *udpSock, expired int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	leftBefore := time.Now().Add(-udpLeaveGrace).UnixNano()
	pendingBefore := time.Now().Add(-udpPendingTTL).UnixNano()
	for addr, b := range r.pending {
		if (sock == nil || b.sock == sock) && b.seen.Load() < pendingBefore {
			delete(r.pending, addr) // not confirmed in time: given up
		}
	}
	r.npending.Store(int32(len(r.pending)))
	for addr, b := range r.byAddr {
		left := b.left.Load()
		if (sock == nil || b.sock == sock) && (b.seen.Load() < expired || left != 0 && left < leftBefore) {
			delete(r.byAddr, addr)
			if b.peer.bind == b {
				b.peer.bind = nil
			}
		}
	}
}

// counts returns the bindings now, and how many of them are confirmed.
func (r *udpRelay) counts(now int64) (bound, confirmed int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, b := range r.byAddr {
		if b.left.Load() != 0 {
			continue
		}
		bound++
		if b.isConfirmed(now) {
			confirmed++
		}
	}
	return bound, confirmed
}
