package relay

import (
	"slices"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// redirectEvery bounds the redirects one client session hears about one
// device: the packets it sends meanwhile are dropped without an answer.
const redirectEvery = 250 * time.Millisecond

// maxRedirectLog bounds the devices a client's redirect log remembers;
// past it the log starts afresh.
const maxRedirectLog = 64

// redirectLog remembers when a client session was last redirected for
// each device. It is made at the first redirect: most clients never need
// one.
type redirectLog struct {
	mu   sync.Mutex
	last map[identity.ID]time.Time // guarded by mu
}

// due reports whether a redirect for device may be sent at now, and if so
// records it.
func (l *redirectLog) due(device identity.ID, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[device]; ok && now.Sub(t) < redirectEvery {
		return false
	}
	if len(l.last) >= maxRedirectLog {
		clear(l.last)
	}
	l.last[device] = now
	return true
}

// redirect handles a packet from the client c to dst, a device not
// attached here: if a live relay of the fleet holds dst, it tells c where
// (at most once every redirectEvery) and reports true, and the packet is
// dropped; otherwise it reports false and the packet is answered as any
// other that finds no peer. The gate stays with the relay holding the
// device: this one does not know the device's access list, so it tells
// anyone who asks where the device is attached, but no more.
func (s *Server) redirect(c *attachment, dst relayproto.Addr) bool {
	if s.cfg.Presence == nil || s.fleet == nil || c.isDevice() {
		return false
	}
	holder, ok := s.cfg.Presence.Locate(dst.ID)
	if !ok || holder == s.ID() {
		return false
	}
	return s.sendRedirect(c, dst.ID, holder)
}

// locate answers a client's locate frame for device: a redirect to the
// relay holding it, this one included, if the client may know. Of a
// device attached here, only a client its access list allows hears
// anything (as for packets); of one attached elsewhere, see redirect.
func (s *Server) locate(c *attachment, device identity.ID) {
	if s.cfg.Presence == nil || s.fleet == nil || c.isDevice() {
		return
	}
	if d := s.routes.device(device); d != nil {
		if acc := d.accessSet(); acc != nil && acc.allows(c.address().ID, c.intent(device)) {
			s.sendRedirect(c, device, s.ID())
		}
		return
	}
	if holder, ok := s.cfg.Presence.Locate(device); ok && holder != s.ID() {
		s.sendRedirect(c, device, holder)
	}
}

// sendRedirect tells the client c that device is at the relay holder of
// the fleet map, unless it was told about device less than redirectEvery
// ago. It reports false if the map does not list holder.
func (s *Server) sendRedirect(c *attachment, device, holder identity.ID) bool {
	r, ok := s.fleet.relay(holder)
	if !ok {
		return false
	}
	log := c.redirects.Load()
	if log == nil {
		c.redirects.CompareAndSwap(nil, &redirectLog{last: make(map[identity.ID]time.Time)})
		log = c.redirects.Load()
	}
	if !log.due(device, time.Now()) {
		return true
	}
	f := relayproto.Redirect{Peer: relayproto.Addr{ID: device}, Relay: r.ID, Addr: r.Addr}
	payload := relayproto.AppendRedirect(nil, f)
	p := append(relayproto.AppendHeader(make([]byte, 0, relayproto.HeaderLen+len(payload)), relayproto.FrameRedirect, len(payload)), payload...)
	s.stats.redirects.Add(1)
	c.sendNotice(c, p)
	return true
}

// A liveView is a Presence that also knows which relays of the fleet are
// live (package fleetstate's does).
type liveView interface {
	Live() []identity.ID
}

// sendDevicesOn tells each of devices, as this relay starts to drain and
// again with its go-away, where to go when it closes: a redirect naming the device itself and the
// first live relay of its order (fleet.Order, this relay's region first)
// without this one. The device would find a relay by itself; told, it
// dials no relay that is down. Without a fleet, or knowing no live relay,
// it does nothing.
func (s *Server) sendDevicesOn(devices []*attachment) {
	lv, ok := s.cfg.Presence.(liveView)
	if !ok || s.fleet == nil || len(devices) == 0 {
		return
	}
	live := lv.Live()
	m := s.fleet.currentMap()
	self, _ := m.Relay(s.ID())
	var others []fleet.Relay
	for _, r := range m.Relays {
		if r.ID != s.ID() && slices.Contains(live, r.ID) {
			others = append(others, r)
		}
	}
	if len(others) == 0 {
		return
	}
	for _, d := range devices {
		next := fleet.Order(d.address().ID, others, self.Region)[0]
		f := relayproto.Redirect{Peer: d.address(), Relay: next.ID, Addr: next.Addr}
		payload := relayproto.AppendRedirect(nil, f)
		frame := append(relayproto.AppendHeader(make([]byte, 0, relayproto.HeaderLen+len(payload)), relayproto.FrameRedirect, len(payload)), payload...)
		// Now, and again right before the go-away: a notice still queued
		// when the attachment closes is not sent.
		d.farewell.Store(&frame)
		d.notify(frame)
	}
}
