package paths

import (
	"context"
	"crypto/rand"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/backoff"
	"github.com/burrow-tunnel/burrow/peerproto"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// The UDP relay path: bindings.
//
// A relay that offers it (server-hello extension 3, relayproto's
// PROTOCOL.md "UDP relay path") forwards end-to-end packets as datagrams
// on its UDP port, between agents whose UDP sockets it has bound. For
// every such link, the Conn binds its UDP socket, the one of direct
// paths: a bind with the link's token, whose bound answer carries the
// binding's tag (and the address the relay sees the socket at, a direct
// candidate), then at once a keepalive, whose alive answer shows that the
// binding is confirmed. A keepalive goes every 20s after that (which keeps
// NATs' mappings open), every second while a peer's packets use the
// binding; when three in a row go unanswered (the relay restarted, a NAT
// gave the socket another port) the Conn binds again, and it does on
// every new link too. The bindings confirmed, and this agent's channel at
// each relay, go to every peer's Direct in a relays message; each Direct
// then looks for the UDP relay path to its peer (relaypath.go).
//
// A datagram from a relay's UDP port is taken only from the address the
// binding went to, and a recv only with the binding's current tag; the
// packet in it belongs to the peer whose channel sent it: the channel a
// MAC-checked probe or reply of the peer's came from, or the one its
// relays message named if no other peer's probes claimed it.

// Timing of a binding.
const (
	relayKeepaliveIdle   = 20 * time.Second
	relayKeepaliveActive = time.Second
	relayAliveWait       = time.Second // then a keepalive counts as unanswered
	relayAliveMisses     = 3           // unanswered in a row: bind again
	relayBindRetryMin    = 2 * time.Second
	relayBindRetryMax    = 30 * time.Second
)

// A relayChan names an agent at a relay.
type relayChan struct {
	relay   identity.ID
	channel uint32
}

// A relayBinding is the UDP socket's binding at one relay's UDP port.
type relayBinding struct {
	relay   identity.ID
	to      netip.AddrPort // the relay's UDP port
	token   [16]byte
	channel uint32 // this agent's at the relay

	tag       atomic.Pointer[[relayproto.UDPTagLen]byte] // the binding's, once bound; nil before
	confirmed atomic.Bool                                // an alive answered a keepalive with the tag
	sentSeq   atomic.Uint64                              // of the last keepalive sent
	aliveSeq  atomic.Uint64                              // of the last keepalive answered
	used      atomic.Int64                               // Conn.now of the last packet a Direct sent through it
	wake      chan struct{}                              // cap 1: an answer came

	mu   sync.Mutex
	txid [8]byte // of the bind awaiting its answer; guarded by mu
}

func newRelayBinding(relay identity.ID, to netip.AddrPort, token [16]byte, channel uint32) *relayBinding {
	return &relayBinding{relay: relay, to: to, token: token, channel: channel, wake: make(chan struct{}, 1)}
}

func (rb *relayBinding) poke() {
	select {
	case rb.wake <- struct{}{}:
	default:
	}
}

// keepRelayBinding keeps rb bound until ctx (the link's) ends.
func (c *Conn) keepRelayBinding(ctx context.Context, rb *relayBinding) {
	rb.used.Store(c.now() - int64(activeWindow)) // idle
	ds := c.ds
	ds.mu.Lock()
	bs := append(slices.Clone(*ds.bindings.Load()), rb)
	ds.bindings.Store(&bs)
	ds.mu.Unlock()
	defer func() {
		ds.mu.Lock()
		bs := slices.DeleteFunc(slices.Clone(*ds.bindings.Load()), func(b *relayBinding) bool { return b == rb })
		ds.bindings.Store(&bs)
		ds.mu.Unlock()
		c.relaysChanged()
	}()
	fails := 0
	for ctx.Err() == nil {
		if !c.bindRelay(ctx, rb) {
			b := backoff.Backoff{Min: relayBindRetryMin, Max: relayBindRetryMax, N: fails}
			fails++
			c.log.Debug("relay's UDP port did not bind", "addr", rb.to.String())
			if !sleepCtx(ctx, b.Next()) {
				return
			}
			continue
		}
		fails = 0
		c.keepAlive(ctx, rb)
		if rb.confirmed.Swap(false) {
			c.log.Debug("UDP relay binding lost: binding again", "addr", rb.to.String())
			c.relaysChanged()
		}
	}
}

// bindRelay sends binds to the relay's UDP port until one is answered, and
// reports whether one was.
func (c *Conn) bindRelay(ctx context.Context, rb *relayBinding) bool {
	rb.mu.Lock()
	rb.tag.Store(nil) // the last binding's answers no longer count
	rand.Read(rb.txid[:])
	msg := relayproto.AppendUDPBind(nil, rb.token, rb.txid)
	rb.mu.Unlock()
	t := time.NewTicker(bindingEvery)
	defer t.Stop()
	for range bindingAttempts {
		c.ds.write(msg, rb.to)
		select {
		case <-t.C:
		case <-rb.wake:
		case <-ctx.Done():
			return false
		}
		if rb.tag.Load() != nil {
			return true
		}
	}
	return false
}

// keepAlive sends keepalives with rb's tag, and returns once
// relayAliveMisses in a row went unanswered, or ctx ends.
func (c *Conn) keepAlive(ctx context.Context, rb *relayBinding) {
	var lastSent time.Time
	misses := 0
	// Keepalives sent before, under the last binding's tag, are not this
	// binding's misses, nor does their answer confirm it.
	base := rb.sentSeq.Load()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rb.wake:
		case <-t.C:
		}
		now := time.Now()
		sent := rb.sentSeq.Load()
		outstanding := sent > base && rb.aliveSeq.Load() < sent
		if !outstanding && sent > base {
			misses = 0
			if !rb.confirmed.Swap(true) {
				c.log.Debug("bound at the relay's UDP port", "addr", rb.to.String())
				c.relaysChanged()
			}
		}
		every := relayKeepaliveIdle
		if c.now()-rb.used.Load() < int64(activeWindow) {
			every = relayKeepaliveActive
		}
		due := lastSent.Add(every)
		if outstanding {
			due = lastSent.Add(relayAliveWait)
		}
		if !now.Before(due) {
			if outstanding {
				if misses++; misses >= relayAliveMisses {
					return
				}
			}
			seq := rb.sentSeq.Add(1)
			if tag := rb.tag.Load(); tag != nil {
				c.ds.write(relayproto.AppendUDPKeepalive(nil, relayproto.UDPKeepalive, *tag, seq), rb.to)
			}
			lastSent = now
			due = now.Add(relayAliveWait)
		}
		t.Reset(due.Sub(now))
	}
}

// owns reports whether datagram b of rb's relay carries rb's txid (a
// bound) or tag (an alive or a recv).
func (rb *relayBinding) owns(b []byte) bool {
	if b[0] == relayproto.UDPBound {
		if len(b) < 9 {
			return false
		}
		rb.mu.Lock()
		defer rb.mu.Unlock()
		return [8]byte(b[1:9]) == rb.txid
	}
	tag := rb.tag.Load()
	return tag != nil && len(b) >= 1+relayproto.UDPTagLen && [relayproto.UDPTagLen]byte(b[1:1+relayproto.UDPTagLen]) == *tag
}

// sleepCtx sleeps for d, and reports false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// relayDatagram handles a datagram of a relay's UDP port: bound, alive or
// recv.
func (c *Conn) relayDatagram(b []byte, from netip.AddrPort) {
	ds := c.ds
	// The binding the datagram is for: the one at that relay address
	// whose bind (by txid) or tag it carries. Two links to one relay (an
	// old one ending, a new one starting) each have their own.
	var rb *relayBinding
	for _, x := range *ds.bindings.Load() {
		if x.to == from && (rb == nil || x.owns(b)) {
			rb = x
		}
	}
	if rb == nil {
		ds.strange.Add(1)
		return
	}
	switch b[0] {
	case relayproto.UDPBound:
		txid, tag, addr, err := relayproto.ParseUDPBound(b)
		// Each bind the relay answers gives a new tag, so the answer to
		// a bind sent again (the first answer was slow) replaces the tag
		// taken from the first.
		rb.mu.Lock()
		ok := err == nil && txid == rb.txid
		if ok {
			rb.tag.Store(&tag)
		}
		rb.mu.Unlock()
		if !ok {
			ds.strange.Add(1)
			return
		}
		addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
		if old := ds.observed.Swap(&addr); old == nil || *old != addr {
			c.log.Debug("relay sees our UDP socket", "addr", addr.String())
		}
		rb.poke()
	case relayproto.UDPAlive:
		_, tag, seq, err := relayproto.ParseUDPKeepalive(b)
		if cur := rb.tag.Load(); err != nil || cur == nil || tag != *cur || seq > rb.sentSeq.Load() {
			ds.strange.Add(1)
			return
		}
		for {
			old := rb.aliveSeq.Load()
			if seq <= old || rb.aliveSeq.CompareAndSwap(old, seq) {
				break
			}
		}
		rb.poke()
	case relayproto.UDPRecv:
		_, tag, ch, pkt, err := relayproto.ParseUDPData(b)
		if cur := rb.tag.Load(); err != nil || cur == nil || tag != *cur {
			ds.dropped.Add(1)
			return
		}
		c.relayRecv(rb, ch, pkt)
	}
}

// relayRecv handles the packet of a recv that came with rb's tag from the
// agent whose channel at rb's relay is ch.
func (c *Conn) relayRecv(rb *relayBinding, ch uint32, pkt []byte) {
	ds := c.ds
	if len(pkt) > 0 && pkt[0]&0x40 != 0 {
		d := (*ds.chans.Load())[relayChan{rb.relay, ch}]
		if d == nil {
			ds.dropped.Add(1)
			return
		}
		bp := packetPool.Get().(*[]byte)
		n := copy((*bp)[:cap(*bp)], pkt)
		d.rreceived.Add(1)
		if c.cfg.Role == relayproto.RoleClient {
			d.peer.lastHeard.Store(c.now())
		}
		c.deliver(inPacket{buf: bp, n: n, from: d.peer})
		return
	}
	m, _ := peerproto.ParseDatagram(pkt)
	switch m := m.(type) {
	case peerproto.Probe:
		d := ds.direct(m.PathID)
		if d == nil || !m.Valid(d.key) || m.PathID != d.theirID {
			ds.strange.Add(1)
			return
		}
		d.probedRelay(m.TxID, rb, ch)
	case peerproto.Reply:
		d := ds.direct(m.PathID)
		if d == nil || !m.Valid(d.key) || m.PathID != d.myID {
			ds.strange.Add(1)
			return
		}
		d.repliedRelay(m.TxID, m.Received, rb, ch)
	default:
		ds.strange.Add(1)
	}
}

// relaySendBuf holds datagrams on their way through a relay's UDP port.
var relaySendBuf = sync.Pool{New: func() any { b := make([]byte, 0, relayproto.MaxUDPDatagram); return &b }}

// relaySend sends p through rb to the agent whose channel at rb's relay is
// ch: queued with the packets of direct paths if queue, else at once. It
// reports false if rb is not bound or the queue is full.
func (c *Conn) relaySend(rb *relayBinding, ch uint32, p []byte, queue bool) bool {
	tag := rb.tag.Load()
	if tag == nil || relayproto.UDPDataHeaderLen+len(p) > relayproto.MaxUDPDatagram {
		return false
	}
	bp := relaySendBuf.Get().(*[]byte)
	b := append(relayproto.AppendUDPData((*bp)[:0], relayproto.UDPSend, *tag, ch), p...)
	ok := true
	if queue {
		ok = c.ds.enqueue(b, rb.to)
	} else {
		c.ds.write(b, rb.to)
	}
	*bp = b
	relaySendBuf.Put(bp)
	return ok
}

// localRelays returns the relays where this agent's bindings are
// confirmed, and its channel at each.
func (c *Conn) localRelays() []peerproto.RelayChannel {
	if c.ds == nil {
		return nil
	}
	var out []peerproto.RelayChannel
	for _, rb := range *c.ds.bindings.Load() {
		if rb.confirmed.Load() && len(out) < peerproto.MaxRelays {
			out = append(out, peerproto.RelayChannel{Relay: rb.relay, Channel: rb.channel})
		}
	}
	return out
}

// confirmedBinding returns the confirmed binding at relay, or nil.
func (c *Conn) confirmedBinding(relay identity.ID) *relayBinding {
	for _, rb := range *c.ds.bindings.Load() {
		if rb.relay == relay && rb.confirmed.Load() {
			return rb
		}
	}
	return nil
}

// relaysChanged tells every Direct that this agent's bindings changed.
func (c *Conn) relaysChanged() {
	ds := c.ds
	ds.mu.Lock()
	ds2 := make([]*Direct, 0, len(ds.byPeer))
	for _, d := range ds.byPeer {
		ds2 = append(ds2, d)
	}
	ds.mu.Unlock()
	for _, d := range ds2 {
		d.sendRelays()
		d.poke()
	}
}

// updateChansLocked replaces the channel table with a copy changed by f.
func (ds *directSocket) updateChansLocked(f func(map[relayChan]*Direct)) {
	m := make(map[relayChan]*Direct, len(*ds.chans.Load())+1)
	for k, d := range *ds.chans.Load() {
		m[k] = d
	}
	f(m)
	ds.chans.Store(&m)
}

// learnChan records that the agent at rc is d's peer: its MAC-checked
// probe or reply came from there.
func (ds *directSocket) learnChan(rc relayChan, d *Direct) {
	if (*ds.chans.Load())[rc] == d {
		return
	}
	ds.mu.Lock()
	if ds.byPeer[d.peer.addr] == d { // not closed
		ds.updateChansLocked(func(m map[relayChan]*Direct) { m[rc] = d })
	}
	ds.mu.Unlock()
}
