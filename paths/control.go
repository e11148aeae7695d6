package paths

import (
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// What an agent tells its relay besides packets: a device's access list and
// a client's pairing intents. Both are state, kept here and sent again on
// every new relay session, first thing, so that a relay that restarted
// learns them before anything else.

// AccessChanged tells the relay that Config.Access would now answer
// differently: the new list is sent now if attached (and on every attach,
// as always).
func (c *Conn) AccessChanged() {
	c.ctlMu.Lock()
	c.ctlVersion++
	c.ctlMu.Unlock()
	c.sendState()
}

// SetPairIntent tells the relay that this client is pairing with device
// using the invite whose relay token is token, so that the relay lets it
// through while the device lists the token.
func (c *Conn) SetPairIntent(device identity.ID, token [32]byte) {
	c.ctlMu.Lock()
	if c.intents == nil {
		c.intents = make(map[identity.ID][32]byte)
	}
	c.intents[device] = token
	c.ctlVersion++
	c.ctlMu.Unlock()
	c.sendState()
}

// ClearPairIntent forgets the pairing intent for device; it is not sent
// on later sessions.
func (c *Conn) ClearPairIntent(device identity.ID) {
	c.ctlMu.Lock()
	delete(c.intents, device)
	c.ctlMu.Unlock()
}

// sendState sends the state to the current relay session, if any.
func (c *Conn) sendState() {
	if rs := c.cur.Load(); rs != nil {
		frames, _ := c.stateFrames()
		rs.sendBlocking(frames)
	}
}

// stateFrames encodes the state as frames, with the version it reflects.
func (c *Conn) stateFrames() ([][]byte, uint64) {
	c.ctlMu.Lock()
	defer c.ctlMu.Unlock()
	var frames [][]byte
	if c.cfg.Role == relayproto.RoleDevice {
		var entries []relayproto.AccessEntry
		if c.cfg.Access != nil {
			clients, invites := c.cfg.Access()
			entries = make([]relayproto.AccessEntry, 0, len(clients)+len(invites))
			for _, id := range clients {
				entries = append(entries, relayproto.AccessEntry{Kind: relayproto.AccessClient, Value: id})
			}
			for _, t := range invites {
				entries = append(entries, relayproto.AccessEntry{Kind: relayproto.AccessInvite, Value: t})
			}
		}
		for first := true; first || len(entries) > 0; first = false {
			n := min(len(entries), relayproto.MaxAccessPerFrame)
			var flags byte
			if first {
				flags |= relayproto.AccessFirst
			}
			if n == len(entries) {
				flags |= relayproto.AccessLast
			}
			p := relayproto.AppendAccess(nil, flags, entries[:n])
			frames = append(frames, append(relayproto.AppendHeader(nil, relayproto.FrameAccess, len(p)), p...))
			entries = entries[n:]
		}
	}
	for dev, tok := range c.intents {
		p := relayproto.AppendPairIntent(nil, relayproto.PairIntent{Device: dev, Token: tok})
		frames = append(frames, append(relayproto.AppendHeader(nil, relayproto.FramePairIntent, len(p)), p...))
	}
	return frames, c.ctlVersion
}

// sendBlocking queues frames that must not be dropped, waiting for room (a
// second at most) rather than dropping them.
func (rs *relaySession) sendBlocking(frames [][]byte) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for _, f := range frames {
		// The write loop returns what it wrote to the packet pool.
		bp := packetPool.Get().(*[]byte)
		*bp = append((*bp)[:0], f...)
		select {
		case rs.sendq <- bp:
		case <-rs.ctx.Done():
			packetPool.Put(bp)
			return
		case <-t.C:
			packetPool.Put(bp)
			rs.cancel(errStateNotSent)
			return
		}
	}
}
