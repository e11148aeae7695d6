package paths

import (
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// Redirects, for a client of a fleet: the relay it attached to says that a
// device is attached to another relay of the fleet (relayproto.Redirect),
// and the client attaches to that relay too and sends the device's packets
// there. Each such relay has an Attacher of its own, checked against the
// same pin as the first (the fleet's ID), and every one of them delivers
// to the Conn as the first does. A device whose relay is not attached (yet,
// or any more) is sent to over the first relay, which redirects again once
// it knows where the device went: that is how a client follows a device
// that moved to another relay when its own died.

// A client that has stopped hearing from a device it was exchanging
// packets with asks its relay where the device is (relayproto's locate),
// twice a second while the silence lasts, from relocateAfter of
// silence until activeFor after the last packet: the device may have
// moved to another relay (its own died, or was blackholed), and a client
// that only receives would otherwise never send the packet that gets it
// redirected.
const (
	relocateTick  = 100 * time.Millisecond
	relocateEvery = 500 * time.Millisecond
	relocateAfter = time.Second
	activeFor     = 10 * time.Second
)

// maxRedirectRelays bounds the relays a client attaches to besides its
// first; a redirect past it is ignored.
const maxRedirectRelays = 64

// fleetRelays are the relays a client was redirected to, by ID.
type fleetRelays struct {
	mu   sync.Mutex
	byID map[identity.ID]*relaylink.Attacher // guarded by mu
}

// redirected takes the relay's word that device r.Peer is at relay r.Relay.
func (c *Conn) redirected(r relayproto.Redirect) {
	if c.ctx.Err() != nil || c.cfg.Relay.ID.IsZero() || c.cfg.Relay.ID == c.relay.Status().RelayID {
		// Only a fleet's ID vouches for other relays: a client that pins
		// one relay, or trusts a CA, stays on it.
		return
	}
	p := c.peerOf(Addr(r.Peer))
	if r.Relay == c.relay.Status().RelayID {
		// The device is on the relay of the first link (again).
		p.via.Store(nil)
		return
	}
	a := c.fleetRelay(r)
	if a == nil {
		return
	}
	if p.via.Swap(a) != a {
		c.log.Debug("device is attached to another relay of the fleet", "device", r.Peer.ID.String(), "at", r.Addr)
	}
	p.resendHeld(a)
}

// fleetRelay returns the Attacher of the relay r names, starting one if
// there is none, or nil if there can be no more.
func (c *Conn) fleetRelay(r relayproto.Redirect) *relaylink.Attacher {
	c.fleet.mu.Lock()
	defer c.fleet.mu.Unlock()
	if a := c.fleet.byID[r.Relay]; a != nil {
		return a
	}
	if c.fleet.byID == nil {
		c.fleet.byID = make(map[identity.ID]*relaylink.Attacher)
	}
	if len(c.fleet.byID) >= maxRedirectRelays || c.ctx.Err() != nil {
		return nil
	}
	cfg := c.relayConfig()
	cfg.Relay = relaylink.RelayConfig{Addr: r.Addr, ID: c.cfg.Relay.ID, RootCAs: c.cfg.Relay.RootCAs}
	cfg.Fallback, cfg.Stay = nil, true
	if c.cfg.Logger != nil {
		cfg.Logger = c.cfg.Logger.With("relay", r.Addr)
	}
	want := r.Relay
	cfg.OnAttach = func(l *relaylink.Link) {
		if l.RelayID() != want || l.RelayID() == c.relay.Status().RelayID {
			// The fleet vouches for this relay, but it is not the one the
			// redirect named, or the first link is on it already (two
			// links of one client would replace each other): do not
			// route through it.
			c.log.Warn("redirected to a relay whose key is not the one named", "addr", r.Addr,
				"want", want.String(), "got", l.RelayID().String())
			l.Close()
			return
		}
		c.fleet.mu.Lock()
		a := c.fleet.byID[want]
		c.fleet.mu.Unlock()
		if a != nil {
			c.resendHeldVia(a)
		}
		if c.ds != nil {
			// The devices there take datagrams through its UDP port.
			c.bindRelayUDP(l)
		}
	}
	a := relaylink.Attach(cfg)
	c.intentsMu.Lock()
	for dev, tok := range c.intents {
		a.SetPairIntent(dev, tok)
	}
	c.intentsMu.Unlock()
	c.fleet.byID[r.Relay] = a
	return a
}

// maxHeld bounds the packets held for a peer not heard from yet.
const maxHeld = 4

// hold keeps a copy of b, sent to p over the first relay before p was
// heard from, to send again if a redirect says where p is: the first
// packets of a session (its handshake) then need not wait for the E2E
// session's retransmission timer. It keeps the last maxHeld, reusing
// their buffers.
func (p *peer) hold(b []byte) {
	p.heldMu.Lock()
	defer p.heldMu.Unlock()
	if len(p.held) < maxHeld {
		p.held = append(p.held, append([]byte(nil), b...))
		return
	}
	oldest := p.held[0]
	copy(p.held, p.held[1:])
	p.held[maxHeld-1] = append(oldest[:0], b...)
}

// resendHeld sends p's held packets over a, if it is attached, and
// forgets them.
func (p *peer) resendHeld(a *relaylink.Attacher) {
	if !a.Status().Attached {
		return
	}
	p.heldMu.Lock()
	held := p.held
	p.held = nil
	p.heldMu.Unlock()
	for _, b := range held {
		a.Send(relayproto.Addr(p.addr), b)
	}
}

// resendHeldVia sends, over a, which has just attached, the held packets
// of every peer redirected to it.
func (c *Conn) resendHeldVia(a *relaylink.Attacher) {
	c.peersMu.RLock()
	var redirected []*peer
	for _, p := range c.peers {
		if p.via.Load() == a {
			redirected = append(redirected, p)
		}
	}
	c.peersMu.RUnlock()
	for _, p := range redirected {
		p.resendHeld(a)
	}
}

// closeFleetRelays drains and closes the relays of redirects.
func (c *Conn) closeFleetRelays(drain bool) {
	c.fleet.mu.Lock()
	all := c.fleet.byID
	c.fleet.byID = nil
	c.fleet.mu.Unlock()
	for _, a := range all {
		if drain {
			a.Drain(closeDrain)
		}
		a.Close()
	}
}

// eachFleetRelay calls f with every relay of redirects.
func (c *Conn) eachFleetRelay(f func(*relaylink.Attacher)) {
	c.fleet.mu.Lock()
	defer c.fleet.mu.Unlock()
	for _, a := range c.fleet.byID {
		f(a)
	}
}

// primaryAttached is told of every new link of the first Attacher: a
// relay of redirects that the first link now reaches is closed, since one
// client process has one link per relay (the relay would replace one with
// the other), and its devices are sent to over the first link.
func (c *Conn) primaryAttached(l *relaylink.Link) {
	id := l.RelayID()
	c.inFleet.Store(id != c.cfg.Relay.ID)
	c.fleet.mu.Lock()
	a := c.fleet.byID[id]
	delete(c.fleet.byID, id)
	c.fleet.mu.Unlock()
	if a == nil {
		return
	}
	c.peersMu.RLock()
	for _, p := range c.peers {
		p.via.CompareAndSwap(a, nil)
	}
	c.peersMu.RUnlock()
	c.wg.Go(a.Close) // Close waits for the loop that calls OnAttach
}

// relocateLoop asks the first relay where each device gone silent is
// (see relocateAfter), until the Conn closes.
func (c *Conn) relocateLoop() {
	t := time.NewTicker(relocateTick)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-c.ctx.Done():
			return
		}
		now := c.now()
		c.peersMu.RLock()
		for _, p := range c.peers {
			heard := p.lastHeard.Load()
			silent := time.Duration(now - heard)
			if heard == 0 || silent < relocateAfter || silent >= activeFor || time.Duration(now-p.lastLocate) < relocateEvery {
				continue
			}
			p.lastLocate = now
			c.relay.Locate(p.addr.ID)
		}
		c.peersMu.RUnlock()
	}
}
