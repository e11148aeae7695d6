package relay

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// Bounds on clients.
//
// A device attaches only if the relay enrolled it, but a client needs no
// enrollment: anyone can make a key and attach as a client. So that a
// flood of fresh client keys cannot fill the relay (its memory, its file
// descriptors) and keep devices out, the relay bounds the clients it holds
// per address and in all (see [routes.add]), never counting devices against
// those bounds, and detaches clients that no attached device allows once
// they have been so for a grace period: a client is of use on a relay only
// to reach a device that lets it.

// clientLimits are a Server's bounds on attached clients.
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

// An allowIndex counts, for each client ID, the attached devices whose
// access list names it: the sweep of unused clients asks it. It has a lock
// of its own, taken before the routing lock and never under it, so that
// rebuilding it for a long access list never holds up routing.
type allowIndex struct {
	mu      sync.Mutex
	counts  map[identity.ID]int        // guarded by mu
	counted map[identity.ID]*accessSet // device → the set counted for it; guarded by mu
}

// reindex brings the index up to date for device: it counts the access
// set of the device's attachment, or none. Whoever changes a device's
// attachment or its set calls it afterwards; as it reads the current
// state, calls in any order leave the index right.
func (s *Server) reindex(device identity.ID) {
	x := &s.idx
	x.mu.Lock()
	defer x.mu.Unlock()
	set := s.routes.deviceAccess(device)
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

// allowed reports whether an attached device allows the client c: it
// lists the client, or the invite of one of c's pairing intents.
func (s *Server) allowed(c *attachment) bool {
	s.idx.mu.Lock()
	listed := s.idx.counts[c.address().ID] > 0
	s.idx.mu.Unlock()
	return listed || s.routes.allowsIntent(c)
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

// sweepClients detaches, until the server closes, the clients that no
// attached device has allowed for the grace period. It looks every quarter
// of the grace period, so a client goes between three quarters of a grace
// period and a grace period and a quarter after a device last allowed it.
// It holds the routing lock only to list the clients.
func (s *Server) sweepClients() {
	every := max(s.clientLim.grace/4, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	var clients []*attachment
	for {
		select {
		case <-t.C:
		case <-s.closedCh:
			return
		}
		clients = s.routes.appendClients(clients[:0])
		now := time.Now()
		cutoff := now.Add(-s.clientLim.grace)
		for i, c := range clients {
			switch {
			case s.allowed(c):
				c.markAllowed(now)
			case !c.allowedSince(cutoff):
				s.stats.clientsUnused.Add(1)
				wait := unusedRetryAfter + rand.N(unusedRetrySpread)
				c.goAway(relayproto.GoAway{Reason: relayproto.GoAwayUnused, RetryAfterMillis: uint32(wait / time.Millisecond),
					Message: fmt.Sprintf("no device on this relay has allowed this client for %s: come back when there is something to send", s.clientLim.grace)})
			}
			clients[i] = nil
		}
	}
}
