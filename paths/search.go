package paths

import (
	"net/netip"
	"slices"
	"time"

	"github.com/burrow-tunnel/burrow/internal/backoff"
	"github.com/burrow-tunnel/burrow/peerproto"
)

// The search: rounds of candidates, openers and probes, and the timer
// that paces them, retries and keeps a path in use checked.

// gotCandidates handles the peer's candidates for round.
func (d *Direct) gotCandidates(round uint32, cands []netip.AddrPort) {
	if !d.c.directOn() {
		return // direct paths are off: no round joined
	}
	d.mu.Lock()
	newer := round > d.round
	d.mu.Unlock()
	if newer && !d.c.ds.allowRound(d.peer.addr.ID) {
		d.log.Debug("direct search round refused: the peer starts too many", "round", round)
		return
	}
	d.mu.Lock()
	if d.closed || round < d.round {
		d.mu.Unlock()
		return
	}
	var mine []byte
	if round > d.round {
		// The peer started a round: join it.
		d.newRoundLocked(round)
		mine = d.candidatesMsg(round)
	}
	if d.remote != nil {
		d.mu.Unlock()
		return // a repeat
	}
	d.remote = slices.DeleteFunc(cands, func(a netip.AddrPort) bool { return !d.mayProbe(a) })
	for i, a := range d.remote {
		d.remote[i] = netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) // as the socket reports sources
	}
	if d.remote == nil {
		d.remote = []netip.AddrPort{}
	}
	remote := d.remote
	d.mu.Unlock()
	if mine != nil {
		d.cfg.Signal(mine)
	}

	// Openers, then ready: only then may the peer's probes cross.
	msgs := make([][]byte, len(remote))
	for i := range remote {
		msgs[i] = peerproto.AppendOpener(nil, peerproto.Opener{PathID: d.myID})
	}
	if err := d.c.ds.writeLowTTL(msgs, remote); err != nil {
		d.log.Debug("no openers sent", "err", err)
	}
	d.mu.Lock()
	if round != d.round || d.closed {
		d.mu.Unlock()
		return
	}
	d.opened = true
	d.maybeProbeLocked()
	d.mu.Unlock()
	d.cfg.Signal(peerproto.AppendReady(nil, peerproto.Ready{Round: round}))
}

// newRoundLocked forgets the last round's search (not the path in use).
func (d *Direct) newRoundLocked(round uint32) {
	d.round = round
	d.remote = nil
	d.opened, d.peerReady = false, false
	d.probeUntil = time.Time{}
	d.retryAt = time.Time{}
}

// maybeProbeLocked starts probing once both sides have sent openers.
func (d *Direct) maybeProbeLocked() {
	if d.opened && d.peerReady && d.probeUntil.IsZero() {
		d.probeUntil = time.Now().Add(discoveryFor)
		d.poke()
	}
}

// candidatesMsg encodes this side's candidates for round.
func (d *Direct) candidatesMsg(round uint32) []byte {
	return peerproto.AppendCandidates(nil, peerproto.Candidates{Round: round, Addrs: d.c.LocalCandidates()})
}

// run keeps the search, the probes and the retries on schedule.
func (d *Direct) run() {
	d.sendRelays()
	if d.cfg.Initiator && d.c.directOn() {
		d.startRound()
	}
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := d.tick(time.Now())
		t.Reset(time.Until(next))
		select {
		case <-t.C:
		case <-d.wake:
		case <-d.done:
			return
		case <-d.c.ctx.Done():
			d.Close()
			return
		}
	}
}

// startRound starts a new search round: this side's candidates go to the
// peer, which answers with its own.
func (d *Direct) startRound() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.newRoundLocked(d.round + 1)
	msg := d.candidatesMsg(d.round)
	d.mu.Unlock()
	d.cfg.Signal(msg)
}

// tick does what is due at now and returns when to come back.
func (d *Direct) tick(now time.Time) time.Time {
	d.mu.Lock()
	next := now.Add(time.Hour)
	at := func(t time.Time) {
		if t.Before(next) {
			next = t
		}
	}
	startRound := false
	if path := d.path.Load(); path != nil {
		age := time.Duration(d.c.now() - path.lastReply.Load())
		if age >= lostAfter {
			d.path.Store(nil)
			d.since = now
			d.log.Debug("direct path lost: packets go over the relay", "addr", path.addr.String())
			d.scheduleRetryLocked(now)
		} else {
			every := heartbeatIdle
			if time.Duration(d.c.now()-d.lastSend.Load()) < activeWindow {
				every = heartbeatActive
			}
			kicked := d.kick.Swap(false) && now.Sub(d.lastBeat) >= kickGap
			if kicked || now.Sub(d.lastBeat) >= every {
				d.probeLocked(path.addr, peerproto.ProbeMinLen, now, path.named)
				d.lastBeat = now
			}
			at(d.lastBeat.Add(every))
			at(now.Add(lostAfter - age))
		}
	}
	if !d.probeUntil.IsZero() && now.Before(d.probeUntil) {
		if now.Sub(d.lastProbe) >= discoveryEvery {
			for _, a := range d.remote {
				d.probeLocked(a, MaxDirectPacket, now, true)
			}
			d.lastProbe = now
		}
		at(d.lastProbe.Add(discoveryEvery))
		at(d.probeUntil)
	} else if !d.probeUntil.IsZero() && d.path.Load() == nil && d.retryAt.IsZero() {
		// The round ended with no path.
		d.log.Debug("no direct path found", "round", d.round, "candidates", len(d.remote))
		d.scheduleRetryLocked(now)
	}
	d.tickRelayLocked(now, at)
	if !d.retryAt.IsZero() {
		if !now.Before(d.retryAt) {
			d.retryAt = time.Time{}
			startRound = true
		} else {
			at(d.retryAt)
		}
	}
	d.mu.Unlock()
	if startRound {
		d.startRound()
		return now // look again at once
	}
	return next
}

// scheduleRetryLocked plans the next round after a failed one, with
// backoff.
func (d *Direct) scheduleRetryLocked(now time.Time) {
	b := backoff.Backoff{Min: retryMin, Max: retryMax, N: d.retries}
	d.retries++
	d.retryAt = now.Add(b.Next())
}
