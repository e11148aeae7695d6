package relay

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
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
	sess.access.Store(set)
	s.reindex(sess.addr.ID)
}

// An allowIndex counts, for each client ID, the attached devices whose
// access list names it: the sweep of unused clients asks it. It has a lock
// of its own, taken before Server.mu and never under it, so that
// rebuilding it for a long access list never holds up routing.
type allowIndex struct {
	mu      sync.Mutex
	counts  map[identity.ID]int        // guarded by mu
	counted map[identity.ID]*accessSet // device → the set counted for it; guarded by mu
}

// reindex brings the index up to date for device: it counts the access
// set of the device's attached session, or none. Whoever changes a
// device's session or its set calls it afterwards; as it reads the
// current state, calls in any order leave the index right.
func (s *Server) reindex(device identity.ID) {
	x := &s.idx
	x.mu.Lock()
	defer x.mu.Unlock()
	var set *accessSet
	s.mu.RLock()
	if d := s.devices[device]; d != nil {
		set = d.access.Load()
	}
	s.mu.RUnlock()
	old := x.counted[device]
	if old == set {
		return
	}
	if old != nil {
		for id := range old.clients {
			if x.counts[id]--; x.counts[id] <= 0 {
				delete(x.counts, id)
			}
		}
	}
	if set == nil {
		delete(x.counted, device)
		return
	}
	if x.counts == nil {
		x.counts = make(map[identity.ID]int)
		x.counted = make(map[identity.ID]*accessSet)
	}
	for id := range set.clients {
		x.counts[id]++
	}
	x.counted[device] = set
}

// allowed reports whether an attached device allows the client session c:
// it lists the client, or the invite of one of c's pairing intents.
func (s *Server) allowed(c *session) bool {
	s.idx.mu.Lock()
	listed := s.idx.counts[c.addr.ID] > 0
	s.idx.mu.Unlock()
	if listed {
		return true
	}
	m := c.intents.Load()
	if m == nil {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	for dev, token := range *m {
		if d := s.devices[dev]; d != nil {
			if acc := d.access.Load(); acc != nil && acc.allows(c.addr.ID, token) {
				return true
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
// quarter of the grace period, so a session goes between three quarters
// of a grace period and a grace period and a quarter after a device last
// allowed it. It holds the routing lock only to list the clients.
func (s *Server) sweepClients() {
	every := max(s.clientLim.grace/4, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	var clients []*session
	for {
		select {
		case <-t.C:
		case <-s.closedCh:
			return
		}
		s.mu.RLock()
		clients = slices.AppendSeq(clients[:0], maps.Values(s.clients))
		s.mu.RUnlock()
		now := time.Now()
		cutoff := now.Add(-s.clientLim.grace).UnixNano()
		for i, c := range clients {
			switch {
			case s.allowed(c):
				c.allowedAt.Store(now.UnixNano())
			case c.allowedAt.Load() <= cutoff:
				s.clientsUnused.Add(1)
				wait := unusedRetryAfter + rand.N(unusedRetrySpread)
				c.goAway(relayproto.GoAway{Reason: relayproto.GoAwayUnused, RetryAfterMillis: uint32(wait / time.Millisecond),
					Message: fmt.Sprintf("no device on this relay has allowed this client for %s: come back when there is something to send", s.clientLim.grace)})
			}
			clients[i] = nil
		}
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

// An offline device is what the relay remembers of a device that
// detached: when, and (if it allowed few enough) which clients it allowed
// then, so that only they hear when it was last seen. Clients are kept as
// the first 8 bytes of their IDs (a stranger would have to make some 2^64
// keys to match one), at most maxOfflineClients of them: a device that
// allowed more is remembered without its clients, and they all hear
// "unreachable" while it is away.
type offline struct {
	at      time.Time
	clients [][8]byte // nil: none remembered
}

const maxOfflineClients = 16

func newOffline(at time.Time, acc *accessSet) offline {
	off := offline{at: at}
	if acc == nil || len(acc.clients) == 0 || len(acc.clients) > maxOfflineClients {
		return off
	}
	off.clients = make([][8]byte, 0, len(acc.clients))
	for id := range acc.clients {
		off.clients = append(off.clients, [8]byte(id[:8]))
	}
	return off
}

// allowed reports whether the device allowed client when it detached.
func (o offline) allowed(client identity.ID) bool {
	return slices.Contains(o.clients, [8]byte(client[:8]))
}
