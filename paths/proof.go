package paths

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"time"

	"github.com/burrow-tunnel/burrow/internal/backoff"
	"github.com/burrow-tunnel/burrow/peerproto"
)

// Proof: when an address becomes the peer's (its answer to our own
// outstanding probe, each peer txid answered once), and the data check
// that drops a path which answers probes but loses packets.

// A probeRecord is a probe awaiting its answer.
type probeRecord struct {
	to    netip.AddrPort
	at    time.Time
	sent  uint64 // Direct.sent when it left
	named bool   // to is one of the peer's candidates
	full  bool   // it was as big as the largest packet of its path: the path carries any packet
	// A probe through a relay's UDP port went to the peer's channel
	// there, from this side's binding via; sent counts Direct.rsent.
	via     *relayBinding
	channel uint32
}

// dataCheck is what the replies on the path in use have shown of the
// packets sent over it: the last time they showed some arriving, and since
// when they have shown none.
type dataCheck struct {
	sent, received uint64    // Direct.sent when the probe left, and the peer's count in its reply
	at             time.Time // when that probe left
	stall          time.Time // when the first probe left whose reply showed packets sent since and none arrived; zero if none
}

// A replayFilter remembers which txids it was shown: each of the last
// replayWindow below the highest, and every one older counts as shown. The
// zero value has been shown none (and refuses 0, which no prober sends).
type replayFilter struct {
	top  uint64                    // the highest txid shown
	bits [replayWindow / 64]uint64 // bit n%replayWindow: txid n shown, for top-replayWindow < n ≤ top
}

// fresh reports whether txid n was not shown before, and remembers it.
func (f *replayFilter) fresh(n uint64) bool {
	switch {
	case n == 0:
		return false
	case n > f.top:
		if n-f.top >= replayWindow {
			clear(f.bits[:])
		} else {
			for i := f.top + 1; i < n; i++ {
				f.bits[i%replayWindow/64] &^= 1 << (i % 64)
			}
		}
		f.top = n
	case f.top-n >= replayWindow || f.bits[n%replayWindow/64]&(1<<(n%64)) != 0:
		return false
	}
	f.bits[n%replayWindow/64] |= 1 << (n % 64)
	return true
}

// maxOutstanding bounds the probes a Direct remembers; answers slower
// than staleProbe are not waited for.
const (
	maxOutstanding = 512
	staleProbe     = 2 * time.Second
)

// provenFrom records that the peer answered one of this side's probes
// from addr, the address it went to: QUIC packets from there are the
// peer's. Past maxRoutes addresses it forgets the oldest, never the one
// in use.
func (d *Direct) provenFrom(addr netip.AddrPort) {
	d.mu.Lock()
	if d.closed || slices.Contains(d.routes, addr) {
		d.mu.Unlock()
		return
	}
	var evicted netip.AddrPort
	if len(d.routes) >= maxRoutes {
		i := 0
		if p := d.path.Load(); p != nil && p.addr == d.routes[0] {
			i = 1
		}
		evicted = d.routes[i]
		d.routes = slices.Delete(d.routes, i, i+1)
	}
	d.routes = append(d.routes, addr)
	d.mu.Unlock()
	ds := d.c.ds
	ds.mu.Lock()
	ds.updateRoutesLocked(func(m map[netip.AddrPort]*Direct) {
		if evicted.IsValid() && m[evicted] == d {
			delete(m, evicted)
		}
		m[addr] = d
	})
	ds.mu.Unlock()
}

// probed answers a valid probe of the peer's that came from from, of size
// bytes, unless its txid was answered before; and probes from in turn if
// this side has not proven it.
func (d *Direct) probed(txid [8]byte, from netip.AddrPort, size int) {
	d.mu.Lock()
	if d.closed || !d.seen.fresh(binary.BigEndian.Uint64(txid[:])) {
		d.mu.Unlock()
		d.c.ds.replayed.Add(1)
		return
	}
	if until, ok := d.lossy[from]; ok && time.Now().Before(until) {
		// This side found that the path to from loses packets. Silence
		// tells the peer at once, through its heartbeats, even while its
		// own data check cannot (it sends too little into the hole to
		// judge) and the lost message waits inside a stalled session.
		d.mu.Unlock()
		return
	}
	back := !slices.Contains(d.routes, from) && d.mayProbe(from) && d.probeBacks.Allow()
	d.mu.Unlock()
	reply := peerproto.Reply{PathID: d.theirID, TxID: txid, Received: d.received.Load()}.Signed(d.key)
	d.c.ds.write(peerproto.AppendReply(make([]byte, 0, peerproto.ReplyLen), reply), from)
	if back {
		d.mu.Lock()
		if !d.closed {
			d.probeLocked(from, min(size, MaxDirectPacket), time.Now(), slices.Contains(d.remote, from))
		}
		d.mu.Unlock()
	}
}

// mayProbe reports whether this side may send probes to a: a peer may not
// make it probe its own loopback services, unless it offers loopback
// addresses itself (a demo, a test).
func (d *Direct) mayProbe(a netip.AddrPort) bool {
	loopback := slices.ContainsFunc(d.c.cfg.Direct.Addrs, netip.Addr.IsLoopback)
	return usableCandidate(a.Addr()) && a.Port() != 0 && (!a.Addr().IsLoopback() || loopback)
}

// replied handles a valid reply to one of this side's probes, which says
// the peer has taken received packets from this side.
func (d *Direct) replied(txid [8]byte, received uint64, from netip.AddrPort) {
	now := time.Now()
	d.mu.Lock()
	rec, ok := d.outgoing[txid]
	if !ok || d.closed || from != rec.to {
		// Answered already (a replay), or not from where the probe went:
		// nothing proven.
		d.mu.Unlock()
		return
	}
	delete(d.outgoing, txid)
	rtt := now.Sub(rec.at)
	path := d.path.Load()
	var lost []byte
	switch {
	case path != nil && path.addr == rec.to:
		path.lastReply.Store(d.c.now())
		path.rtt.Store(int64(rtt))
		if d.check.add(rec, received, &d.dataFails) {
			d.dropLossyLocked(now, "direct path loses packets: they go over the relay")
			lost = peerproto.AppendLost(nil, peerproto.Lost{Round: d.round})
		}
	case now.Before(d.lossy[rec.to]):
		// It lost packets lately: not yet.
	case path != nil && d.c.now()-path.lastReply.Load() <= int64(trustActive) && (path.named || !rec.named):
		// The path in use answers, and this one is no better.
	case !rec.full:
		// A small probe (one sent back to where a small probe of the
		// peer's came from) proved the address, not that the path carries
		// the largest packets: a full-size probe asks that.
		d.probeLocked(rec.to, MaxDirectPacket, now, rec.named)
	default:
		// The first path to answer, or one that answers while the one in
		// use does not, or one the peer named rather than one found by
		// probing back.
		np := &directPath{addr: rec.to, named: rec.named}
		np.lastReply.Store(d.c.now())
		np.rtt.Store(int64(rtt))
		d.path.Store(np)
		d.check = dataCheck{sent: rec.sent, received: received, at: rec.at}
		d.since = now
		d.retries = 0
		d.retryAt = time.Time{}
		d.probeUntil = now // done searching
		d.log.Debug("direct path", "addr", rec.to.String(), "rtt", rtt.Round(10*time.Microsecond).String())
		d.poke() // to watch it
	}
	d.mu.Unlock()
	d.provenFrom(rec.to)
	if lost != nil {
		// The peer stops sending over it too: a path that loses one
		// side's packets most likely loses the other's, and the peer
		// may send too little to see it soon.
		d.cfg.Signal(lost)
	}
}

// add adds the reply to rec, by which the peer has taken received
// packets, to the data check of the path in use, and reports whether the
// path loses the packets sent over it. It zeroes fails, the paths dropped
// by the check in a row, when packets cross.
func (c *dataCheck) add(rec probeRecord, received uint64, fails *int) bool {
	switch {
	case rec.at.Before(c.at):
		// Overtaken by a later probe's reply.
	case received > c.received:
		if rec.sent > c.sent {
			*fails = 0 // packets cross
		}
		*c = dataCheck{sent: rec.sent, received: received, at: rec.at}
	case rec.sent == c.sent:
		c.at = rec.at // nothing sent since, nothing lost
	default:
		if c.stall.IsZero() {
			c.stall = rec.at
		}
		return rec.at.Sub(c.stall) >= dataStall && rec.sent-c.sent >= dataStallLeast
	}
	return false
}

// dropLossyLocked stops using the path in use, which loses packets (for
// the reason why), and keeps from taking up its address again, or
// searching, for a while: longer each time, until packets cross a path.
// With no path in use (the peer lost packets on its own), it keeps from
// taking up any address it has proven.
func (d *Direct) dropLossyLocked(now time.Time, why string) {
	bad := d.routes
	if path := d.path.Load(); path != nil {
		bad = []netip.AddrPort{path.addr}
		d.path.Store(nil)
		d.since = now
		d.log.Debug(why, "addr", path.addr.String())
	}
	// Answers to the probes already out would take a path up at once.
	for k, r := range d.outgoing {
		if slices.Contains(bad, r.to) {
			delete(d.outgoing, k)
		}
	}
	b := backoff.Backoff{Min: lostRetryMin, Max: lostRetryMax, N: d.dataFails}
	d.dataFails++
	d.retryAt = now.Add(b.Next())
	for a, until := range d.lossy {
		if !now.Before(until) {
			delete(d.lossy, a)
		}
	}
	if d.lossy == nil {
		d.lossy = make(map[netip.AddrPort]time.Time)
	}
	for _, a := range bad {
		d.lossy[a] = d.retryAt
	}
}

// probeLocked sends a probe of size bytes to addr; named says whether
// addr is one of the peer's candidates. mu must be held.
func (d *Direct) probeLocked(addr netip.AddrPort, size int, now time.Time, named bool) {
	rec := probeRecord{to: addr, at: now, sent: d.sent.Load(), named: named, full: size >= MaxDirectPacket}
	if b := d.newProbeLocked(rec, size, nil); b != nil {
		d.c.ds.write(b, addr)
	}
}

// newProbeLocked numbers a probe of size bytes, records it as rec, and
// appends it to b; it returns nil if too many probes are outstanding. mu
// must be held.
func (d *Direct) newProbeLocked(rec probeRecord, size int, b []byte) []byte {
	if len(d.outgoing) >= maxOutstanding {
		// Forget the probes nobody answered.
		for k, r := range d.outgoing {
			if rec.at.Sub(r.at) > staleProbe {
				delete(d.outgoing, k)
			}
		}
		if len(d.outgoing) >= maxOutstanding {
			return nil
		}
	}
	d.lastTxid++
	var txid [8]byte
	binary.BigEndian.PutUint64(txid[:], d.lastTxid)
	d.outgoing[txid] = rec
	probe := peerproto.Probe{PathID: d.myID, TxID: txid, Len: size}.Signed(d.key)
	if b == nil {
		b = make([]byte, 0, max(size, peerproto.ProbeMinLen))
	}
	return peerproto.AppendProbe(b, probe)
}
