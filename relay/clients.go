package relay

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/relayproto"
)

// Client sessions.
//
// A device attaches only if the relay enrolled it, but a client needs no
// enrollment: anyone can make a key and attach as a client. So that a
// flood of fresh client keys cannot fill the relay (its memory, its file
// descriptors) and keep devices out, the relay bounds the clients it holds
// per address and in all, never counting devices against those bounds, and
// closes client sessions that no attached device allows once they have
// been so for a grace period: a client is of use on a relay only to reach
// a device that lets it.

// clientLimits are a Server's bounds on client sessions.
type clientLimits struct {
	max, perIP int
	grace      time.Duration // 0: never close unused clients
}

func newClientLimits(cfg Config) clientLimits {
	l := clientLimits{max: cfg.MaxClients, perIP: cfg.MaxClientsPerIP, grace: cfg.ClientGrace}
	if l.max == 0 {
		l.max = 10_000
	}
	if l.perIP == 0 {
		l.perIP = 256
	}
	switch {
	case l.grace == 0:
		l.grace = 20 * time.Second
	case l.grace < 0:
		l.grace = 0
	}
	return l
}

// unusedRetryAfter is how long a client closed as unused waits before it
// attaches again if it has nothing to send; it comes back sooner if it
// has. unusedRetrySpread is added at random.
const (
	unusedRetryAfter  = time.Minute
	unusedRetrySpread = 30 * time.Second
)

// admitClientLocked says why the new client session sess does not fit, or
// returns nil if it does.
func (s *Server) admitClientLocked(sess *session) *refusal {
	if len(s.clients) >= s.clientLim.max {
		return &refusal{relayproto.RefuseOverloaded, fmt.Sprintf(
			"relay holds as many clients as it takes (%d); try again later", s.clientLim.max)}
	}
	if sess.ip.IsValid() && s.clientsIP[sess.ip] >= s.clientLim.perIP {
		return &refusal{relayproto.RefuseTooMany, fmt.Sprintf(
			"address %s holds as many client sessions as the relay takes from one address (%d); try again once one has ended",
			sess.ip, s.clientLim.perIP)}
	}
	return nil
}

// countClientLocked adds d to the count of sess's address.
func (s *Server) countClientLocked(sess *session, d int) {
	if !sess.ip.IsValid() {
		return
	}
	if s.clientsIP[sess.ip] += d; s.clientsIP[sess.ip] <= 0 {
		delete(s.clientsIP, sess.ip)
	}
}

// setAccess makes set the access list of the device session sess.
func (s *Server) setAccess(sess *session, set *accessSet) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.devices[sess.addr.ID] == sess {
		s.indexAccessLocked(sess, set)
	}
	sess.access.Store(set)
}

// indexAccessLocked makes set (nil: none) the access set that the device
// session sess counts in allowedBy.
func (s *Server) indexAccessLocked(sess *session, set *accessSet) {
	if old := sess.indexed; old != nil {
		for id := range old.clients {
			if s.allowedBy[id]--; s.allowedBy[id] <= 0 {
				delete(s.allowedBy, id)
			}
		}
	}
	if set != nil {
		for id := range set.clients {
			s.allowedBy[id]++
		}
	}
	sess.indexed = set
}

// allowedLocked reports whether an attached device allows the client
// session c: it lists the client, or the invite of one of c's pairing
// intents.
func (s *Server) allowedLocked(c *session) bool {
	if s.allowedBy[c.addr.ID] > 0 {
		return true
	}
	if m := c.intents.Load(); m != nil {
		for dev, token := range *m {
			if d := s.devices[dev]; d != nil {
				if acc := d.access.Load(); acc != nil && acc.allows(c.addr.ID, token) {
					return true
				}
			}
		}
	}
	return false
}

// startSweepLocked starts sweepClients, once, if unused clients are to be
// closed.
func (s *Server) startSweepLocked() {
	if s.sweeping || s.clientLim.grace == 0 || s.closed {
		return
	}
	s.sweeping = true
	s.wg.Go(s.sweepClients)
}

// sweepClients closes, until the server closes, the client sessions that
// no attached device has allowed for the grace period. It looks every
// quarter of the grace period, so a session goes between one and one and
// a quarter grace periods after it was last allowed.
func (s *Server) sweepClients() {
	every := max(s.clientLim.grace/4, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	var unused []*session
	for {
		select {
		case <-t.C:
		case <-s.closedCh:
			return
		}
		now := time.Now()
		cutoff := now.Add(-s.clientLim.grace).UnixNano()
		s.mu.RLock()
		for _, c := range s.clients {
			switch {
			case s.allowedLocked(c):
				c.allowedAt.Store(now.UnixNano())
			case c.allowedAt.Load() <= cutoff:
				unused = append(unused, c)
			}
		}
		s.mu.RUnlock()
		for i, c := range unused {
			s.clientsUnused.Add(1)
			wait := unusedRetryAfter + rand.N(unusedRetrySpread)
			c.goAway(relayproto.GoAway{Reason: relayproto.GoAwayUnused, RetryAfterMillis: uint32(wait / time.Millisecond),
				Message: fmt.Sprintf("no device on this relay has allowed this client for %s: come back when there is something to send", s.clientLim.grace)})
			unused[i] = nil
		}
		unused = unused[:0]
	}
}

// A udpGrant lets an agent's session ask the relay's UDP port for its
// address: from the address family its session came in on, at most
// udpAnswers times in every udpWindow.
type udpGrant struct {
	sess        *session
	family      int          // 4 or 6; 0 if the session's address is not known
	windowStart atomic.Int64 // Unix nanoseconds
	answered    atomic.Int32 // in the window
}

// An agent sends a few binding requests when it attaches (see
// paths.bindingAttempts); it never needs more than udpAnswers in a window.
const (
	udpAnswers = 8
	udpWindow  = 10 * time.Second
)

func newUDPGrant(sess *session) *udpGrant {
	g := &udpGrant{sess: sess}
	switch ip := ipKey(sess.conn.RemoteAddr()); {
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
