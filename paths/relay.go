package paths

import (
	"context"
	"errors"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// The relay path: a relaylink.Attacher keeps the agent attached to its
// relay; the Conn gives it packets to send and takes the packets, and
// the peer-gone notices, it delivers. The Attacher also keeps the
// agent's state on the relay (a device's access list, a client's pairing
// intents), which the Conn's methods below change.

// relayConfig returns the Attacher's configuration for the Conn.
func (c *Conn) relayConfig() relaylink.Config {
	cfg := relaylink.Config{
		Relay:          c.cfg.Relay,
		Fallback:       c.cfg.RelayFallback,
		Region:         c.cfg.Region,
		Identity:       c.cfg.Identity,
		Role:           c.cfg.Role,
		Dial:           c.cfg.Dial,
		Logger:         c.log,
		QueueLen:       c.cfg.QueueLen,
		MinBackoff:     c.cfg.MinBackoff,
		MaxBackoff:     c.cfg.MaxBackoff,
		ReattachSpread: c.cfg.ReattachSpread,
		EnrollToken:    c.cfg.EnrollToken,
		OnEnrolled:     c.cfg.OnEnrolled,
		OnRemoved:      c.cfg.OnRemoved,
		Access:         c.cfg.Access,
		OnAttach:       c.relayAttached,
		OnPacket:       c.relayPacket,
	}
	if c.cfg.Role == relayproto.RoleClient {
		cfg.Instance = c.instance
		cfg.OnRedirect = c.redirected
		cfg.KeepRelay = true
	}
	if c.cfg.OnPeerGone != nil {
		cfg.OnPeerGone = c.peerGone
	}
	return cfg
}

// relayPacket queues a packet the relay delivered for ReadFrom.
func (c *Conn) relayPacket(p *relaylink.Packet) {
	from := c.peerOf(Addr(p.From))
	if c.cfg.Role == relayproto.RoleClient {
		from.lastHeard.Store(c.now())
	}
	if !from.heard.Load() {
		from.heard.Store(true)
		from.heldMu.Lock()
		from.held = nil
		from.heldMu.Unlock()
	}
	c.deliver(inPacket{relayed: p, from: from})
}

// peerGone tells Config.OnPeerGone that the relay could not deliver to a
// peer.
func (c *Conn) peerGone(f relayproto.PeerGone) {
	g := PeerGone{Peer: Addr(f.Peer), Reason: f.Reason}
	if f.LastSeenUnix != 0 {
		g.LastSeen = time.Unix(int64(f.LastSeenUnix), 0)
	}
	c.cfg.OnPeerGone(g)
}

// relayAttached is told of every new link of the first Attacher: a client
// of a fleet sorts out its links (primaryAttached); the UDP socket is
// bound at a relay that forwards datagrams (relayudp.go), which also tells
// the address it sees the socket at; a relay that only tells that is
// asked for it.
func (c *Conn) relayAttached(l *relaylink.Link) {
	if c.cfg.Role == relayproto.RoleClient {
		c.primaryAttached(l)
	}
	if c.ds == nil || c.bindRelayUDP(l) {
		return
	}
	if b, ok := l.UDPBinding(); ok && c.directOn() {
		c.wg.Go(func() { c.bind(l, b) })
	}
}

// bindRelayUDP keeps the UDP socket bound at l's relay while l lasts, if
// the relay forwards datagrams and the UDP relay path is on, and reports
// whether it does.
func (c *Conn) bindRelayUDP(l *relaylink.Link) bool {
	b, ok := l.UDPBinding()
	r, ok2 := l.UDPRelay()
	if !ok || !ok2 || !c.relayUDPOn() {
		return false
	}
	to, ok := relayUDPAddr(l, b)
	if !ok {
		return false
	}
	rb := newRelayBinding(l.RelayID(), to, b.Token, r.Channel)
	c.wg.Go(func() { c.keepRelayBinding(l.Context(), rb) })
	return true
}

// Status returns the relay attachment's state.
func (c *Conn) Status() Status {
	return Status{Status: c.relay.Status(), Sent: c.sent.Load(), Received: c.received.Load(), Dropped: c.dropped.Load()}
}

// WaitAttached waits until the Conn is attached to the relay. It returns
// early with the attach error if an attempt failed for a reason that
// retrying will not fix by itself (a key mismatch, a refusal); the Conn
// keeps retrying in the background all the same.
func (c *Conn) WaitAttached(ctx context.Context) error {
	err := c.relay.WaitAttached(ctx)
	if errors.Is(err, relaylink.ErrClosed) {
		return ErrClosed
	}
	return err
}

// AccessChanged tells the relay that Config.Access would now answer
// differently: the new list is sent now if attached (and on every attach,
// as always).
func (c *Conn) AccessChanged() { c.relay.AccessChanged() }

// SetPairIntent tells the relay that this client is pairing with device
// using the invite whose relay token is token, so that the relay lets it
// through while the device lists the token.
func (c *Conn) SetPairIntent(device identity.ID, token [32]byte) {
	c.intentsMu.Lock()
	if c.intents == nil {
		c.intents = make(map[identity.ID][32]byte)
	}
	c.intents[device] = token
	c.intentsMu.Unlock()
	c.relay.SetPairIntent(device, token)
	c.eachFleetRelay(func(a *relaylink.Attacher) { a.SetPairIntent(device, token) })
}

// ClearPairIntent forgets the pairing intent for device; it is not sent
// when the link is next made.
func (c *Conn) ClearPairIntent(device identity.ID) {
	c.intentsMu.Lock()
	delete(c.intents, device)
	c.intentsMu.Unlock()
	c.relay.ClearPairIntent(device)
	c.eachFleetRelay(func(a *relaylink.Attacher) { a.ClearPairIntent(device) })
}
