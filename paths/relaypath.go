package paths

import (
	"encoding/binary"
	"slices"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/internal/backoff"
	"github.com/burrow-tunnel/burrow/peerproto"
)

// The UDP relay path of one peer, a Direct's second path.
//
// Each side's Direct tells the peer's, in a relays message, the relays
// where its UDP socket is bound (relayudp.go) and its channel at each;
// it sends one when it starts and whenever that changes. Once the peer
// is at a relay where this side is bound too, this side probes the peer
// through it, with the probes and replies of direct paths (the same MACs,
// the same txids, each answered once) wrapped in send and recv datagrams;
// the full-size probe is as big as the largest packet the UDP relay path
// carries ([MaxPacket]). The first full-size probe answered moves the
// peer's packets onto the UDP relay path, unless a direct path carries
// them: preference goes to a direct path, then the UDP relay path, then
// the relay's TCP link. Everything else is as on a direct path (direct.go):
// probes keep checking the path while it is in use (every 250ms while
// packets flow, every 2s when idle); packets go over it only while it
// answered within the last second, else over the relay's TCP link while a
// probe asks again, so that they come back as soon as it answers again;
// after 6.5s without an answer it is dropped and looked for again later,
// with backoff; and the data check drops it when replies show that the
// packets sent over it do not arrive (a reply to a probe that came through
// a relay counts the packets taken through relays, not over direct paths).
// The peer learns nothing of a drop but from its own probes: a lost
// message would drop its direct path.

// relayPath is a UDP relay path: through this side's binding b, to the
// peer's channel at b's relay. lastReply and rtt change as probes return.
type relayPath struct {
	b         *relayBinding
	channel   uint32
	lastReply atomic.Int64 // Conn.now
	rtt       atomic.Int64
}

// relaySearch is a Direct's state of its UDP relay path, guarded by the
// Direct's mu.
type relaySearch struct {
	peer                  []peerproto.RelayChannel // from the peer's last relays message
	probeUntil, lastProbe time.Time                // the search: probing until then
	lastBeat              time.Time                // the last probe on the path in use
	retryAt               time.Time                // search again then, if not zero
	lossyUntil            time.Time                // a path that lost packets is not taken up before
	retries, dataFails    int
	check                 dataCheck // of the path in use
}

// sendRelays tells the peer where this side takes datagrams through a
// relay, if that changed since it last did.
func (d *Direct) sendRelays() {
	if !d.c.relayUDPOn() {
		return
	}
	d.relaysMu.Lock()
	defer d.relaysMu.Unlock()
	mine := d.c.localRelays()
	if d.relaysSent && slices.Equal(mine, d.relaysLast) {
		return
	}
	d.relaysSent, d.relaysLast = true, mine
	select {
	case <-d.done:
		return
	default:
	}
	d.cfg.Signal(peerproto.AppendRelays(nil, peerproto.Relays{Relays: mine}))
}

// peerRelays handles the peer's relays message (at most
// peerproto.MaxRelays entries). It replaces the channels the last one
// claimed, and a list that did not change is not news: a peer that sends
// messages again and again neither grows the channel table nor restarts
// the search each time. A list that did change starts a search round at
// once only within the peer's budget of rounds (allowRound), as a direct
// search round does, and does not undo the search's backoff; otherwise
// the search takes it at its own pace.
func (d *Direct) peerRelays(list []peerproto.RelayChannel) {
	d.mu.Lock()
	if d.closed || slices.Equal(list, d.rs.peer) {
		d.mu.Unlock()
		return
	}
	old := d.rs.peer
	d.rs.peer = list
	d.mu.Unlock()
	ds := d.c.ds
	if ds.allowRound(d.peer.addr.ID) {
		// News: look at once. The backoff stays where fruitless rounds
		// left it, so that rounds a peer starts on purpose add up.
		d.mu.Lock()
		d.rs.retryAt = time.Time{}
		d.mu.Unlock()
	}
	ds.mu.Lock()
	if ds.byPeer[d.peer.addr] == d {
		ds.updateChansLocked(func(m map[relayChan]*Direct) {
			for _, rc := range old {
				if k := (relayChan{rc.Relay, rc.Channel}); m[k] == d {
					delete(m, k) // a MAC-checked datagram learns it again
				}
			}
			// A channel that a peer's MAC-checked datagrams came from
			// stays that peer's, whatever another peer claims.
			for _, rc := range list {
				if k := (relayChan{rc.Relay, rc.Channel}); m[k] == nil {
					m[k] = d
				}
			}
		})
	}
	ds.mu.Unlock()
	d.poke()
}

// sendRelay sends a packet over the UDP relay path if it answered
// recently, and reports whether it did.
func (d *Direct) sendRelay(p []byte) bool {
	rp := d.rpath.Load()
	if rp == nil || len(p) > MaxPacket || rp.b.tag.Load() == nil {
		return false
	}
	now := d.c.now()
	if now-d.rlastSend.Swap(now) >= int64(activeWindow) {
		d.poke() // probed at the active pace from now on
	}
	if now-rp.b.used.Swap(now) >= int64(activeWindow) {
		rp.b.poke() // and the binding kept at its active pace
	}
	if now-rp.lastReply.Load() > int64(trustActive) {
		// Not answered lately: the TCP link carries it while a probe asks.
		if !d.rkick.Swap(true) {
			d.poke()
		}
		return false
	}
	if !d.c.relaySend(rp.b, rp.channel, p, true) {
		d.c.dropped.Add(1) // as the socket would have, its buffer full
		return true
	}
	d.rsent.Add(1)
	return true
}

// commonRelayLocked returns a binding of this side's at a relay where the
// peer takes datagrams too, and the peer's channel there; nil if none.
func (d *Direct) commonRelayLocked() (*relayBinding, uint32) {
	for _, rc := range d.rs.peer {
		if rb := d.c.confirmedBinding(rc.Relay); rb != nil {
			return rb, rc.Channel
		}
	}
	return nil, 0
}

// tickRelayLocked does what is due at now on the UDP relay path (see
// Direct.tick) and tells at when to come back.
func (d *Direct) tickRelayLocked(now time.Time, at func(time.Time)) {
	rs := &d.rs
	if rp := d.rpath.Load(); rp != nil {
		age := time.Duration(d.c.now() - rp.lastReply.Load())
		listed := slices.Contains(rs.peer, peerproto.RelayChannel{Relay: rp.b.relay, Channel: rp.channel})
		switch {
		case !listed || d.c.confirmedBinding(rp.b.relay) != rp.b:
			d.dropRelayLocked(now, "UDP relay path's binding is gone: packets go over the relay's TCP link")
		case age >= lostAfter:
			d.dropRelayLocked(now, "UDP relay path lost: packets go over the relay's TCP link")
			d.retryRelayLocked(now)
		default:
			every := heartbeatIdle
			if time.Duration(d.c.now()-d.rlastSend.Load()) < activeWindow {
				every = heartbeatActive
			}
			kicked := d.rkick.Swap(false) && now.Sub(rs.lastBeat) >= kickGap
			if kicked || now.Sub(rs.lastBeat) >= every {
				d.probeRelayLocked(rp.b, rp.channel, peerproto.ProbeMinLen, now)
				rs.lastBeat = now
			}
			at(rs.lastBeat.Add(every))
			at(now.Add(lostAfter - age))
			return
		}
	}
	rb, ch := d.commonRelayLocked()
	switch {
	case rb == nil:
		rs.probeUntil = time.Time{}
		return
	case now.Before(rs.lossyUntil):
		at(rs.lossyUntil)
		return
	case now.Before(rs.retryAt):
		at(rs.retryAt)
		return
	}
	if rs.probeUntil.IsZero() {
		rs.probeUntil = now.Add(discoveryFor)
	}
	if now.Before(rs.probeUntil) {
		if now.Sub(rs.lastProbe) >= discoveryEvery {
			d.probeRelayLocked(rb, ch, MaxPacket, now)
			rs.lastProbe = now
		}
		at(rs.lastProbe.Add(discoveryEvery))
		at(rs.probeUntil)
		return
	}
	d.log.Debug("no UDP relay path found")
	rs.probeUntil = time.Time{}
	d.retryRelayLocked(now)
	at(rs.retryAt)
}

// retryRelayLocked plans the next search of the UDP relay path, with
// backoff.
func (d *Direct) retryRelayLocked(now time.Time) {
	b := backoff.Backoff{Min: retryMin, Max: retryMax, N: d.rs.retries}
	d.rs.retries++
	d.rs.retryAt = now.Add(b.Next())
}

// dropRelayLocked stops using the UDP relay path, for the reason why.
func (d *Direct) dropRelayLocked(now time.Time, why string) {
	d.rpath.Store(nil)
	if d.path.Load() == nil {
		d.since = now
	}
	d.log.Debug(why)
}

// probeRelayLocked sends a probe of size bytes through rb to the peer's
// channel ch. mu must be held.
func (d *Direct) probeRelayLocked(rb *relayBinding, ch uint32, size int, now time.Time) {
	rec := probeRecord{at: now, sent: d.rsent.Load(), full: size >= MaxPacket, via: rb, channel: ch}
	if b := d.newProbeLocked(rec, size, nil); b != nil {
		d.c.relaySend(rb, ch, b, false)
	}
}

// probedRelay answers a valid probe of the peer's that came through rb
// from its channel ch, unless its txid was answered before.
func (d *Direct) probedRelay(txid [8]byte, rb *relayBinding, ch uint32) {
	d.mu.Lock()
	if d.closed || !d.seen.fresh(binary.BigEndian.Uint64(txid[:])) {
		d.mu.Unlock()
		d.c.ds.replayed.Add(1)
		return
	}
	if time.Now().Before(d.rs.lossyUntil) {
		// This side found that the path loses packets: silence tells the
		// peer, through its heartbeats.
		d.mu.Unlock()
		return
	}
	d.mu.Unlock()
	d.c.ds.learnChan(relayChan{rb.relay, ch}, d)
	reply := peerproto.Reply{PathID: d.theirID, TxID: txid, Received: d.rreceived.Load()}.Signed(d.key)
	d.c.relaySend(rb, ch, peerproto.AppendReply(make([]byte, 0, peerproto.ReplyLen), reply), false)
}

// repliedRelay handles a valid reply to one of this side's probes that
// came through rb from the peer's channel ch.
func (d *Direct) repliedRelay(txid [8]byte, received uint64, rb *relayBinding, ch uint32) {
	now := time.Now()
	d.mu.Lock()
	rec, ok := d.outgoing[txid]
	if !ok || d.closed || rec.via != rb || rec.channel != ch {
		d.mu.Unlock()
		return
	}
	delete(d.outgoing, txid)
	rtt := now.Sub(rec.at)
	rs := &d.rs
	switch rp := d.rpath.Load(); {
	case rp != nil && rp.b == rb && rp.channel == ch:
		rp.lastReply.Store(d.c.now())
		rp.rtt.Store(int64(rtt))
		if rs.check.add(rec, received, &rs.dataFails) {
			d.dropRelayLocked(now, "UDP relay path loses packets: they go over the relay's TCP link")
			b := backoff.Backoff{Min: lostRetryMin, Max: lostRetryMax, N: rs.dataFails}
			rs.dataFails++
			rs.lossyUntil = now.Add(b.Next())
		}
	case now.Before(rs.lossyUntil), !rec.full:
		// Not yet; or a heartbeat of a path given up.
	default:
		np := &relayPath{b: rb, channel: ch}
		np.lastReply.Store(d.c.now())
		np.rtt.Store(int64(rtt))
		d.rpath.Store(np)
		rs.check = dataCheck{sent: rec.sent, received: received, at: rec.at}
		rs.retries, rs.retryAt, rs.probeUntil = 0, time.Time{}, time.Time{}
		if d.path.Load() == nil {
			d.since = now
		}
		d.log.Debug("UDP relay path", "relay", rb.relay.Short(), "rtt", rtt.Round(10*time.Microsecond).String())
		d.poke() // to watch it
	}
	d.mu.Unlock()
	d.c.ds.learnChan(relayChan{rb.relay, ch}, d)
}
