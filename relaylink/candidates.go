package relaylink

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
)

// The relays an Attacher may attach to. Until a relay pinned by its
// fleet's ID has shown the fleet map, they are the configured ones
// (Config.Relay, then Config.Fallback), in that order. From then on they
// are the relays of the newest map seen, in the agent's rendezvous order
// (fleet.Order with Config.OrderKey and Config.Region), each dialed at the
// address the map gives and checked against the fleet ID; the first is
// the agent's home relay. An agent away from home moves back now and then
// (Config.HomeInterval), and at once when a newer map names another home
// or no longer lists the relay it is on.

// refusedSkip is how long a relay that refused the agent for good (see
// isPermanent) is passed over while other relays remain to try.
const refusedSkip = time.Minute

// A candidate is a relay the Attacher may dial.
type candidate struct {
	RelayConfig
	// mapID is the relay's own ID in the fleet map; zero for a configured
	// relay, which is known by its address.
	mapID identity.ID
}

// is reports whether a Link to the relay with ID relayID, dialed at addr,
// is one to c.
func (c candidate) is(addr string, relayID identity.ID) bool {
	if !c.mapID.IsZero() {
		return c.mapID == relayID
	}
	return c.Addr == addr
}

// candidates are the relays an Attacher may attach to.
type candidates struct {
	boot    []candidate
	key     identity.ID // whose order
	region  string
	fleet   *fleet.Map           // the newest map seen; nil until one is
	list    []candidate          // in order, home first
	refused map[string]time.Time // by address: refused for good, skipped until then
}

func (c *candidates) init(cfg Config) {
	*c = candidates{key: cfg.OrderKey, region: cfg.Region, refused: make(map[string]time.Time)}
	c.boot = append(c.boot, candidate{RelayConfig: cfg.Relay})
	for _, addr := range cfg.Fallback {
		r := cfg.Relay
		r.Addr = addr
		c.boot = append(c.boot, candidate{RelayConfig: r})
	}
	c.list = c.boot
}

// home is the first candidate.
func (c *candidates) home() candidate { return c.list[0] }

// index returns the position of the relay with ID relayID, dialed at addr,
// among the candidates; -1 if it is none of them.
func (c *candidates) index(addr string, relayID identity.ID) int {
	return slices.IndexFunc(c.list, func(r candidate) bool { return r.is(addr, relayID) })
}

// learn takes m, a map of the pinned fleet shown by a relay, if it is
// newer than the map held. It reports whether it took it.
func (c *candidates) learn(m fleet.Map) bool {
	if len(c.boot) == 0 || m.FleetID != c.boot[0].ID || len(m.Relays) == 0 {
		return false
	}
	if c.fleet != nil && m.Version <= c.fleet.Version {
		return false
	}
	c.fleet = &m
	c.list = c.list[:0:0]
	for _, r := range fleet.Order(c.key, m.Relays, c.region) {
		rc := c.boot[0].RelayConfig
		rc.Addr = r.Addr
		c.list = append(c.list, candidate{RelayConfig: rc, mapID: r.ID})
	}
	// A refusal came from the map before: the new one may have changed
	// what the relay says.
	clear(c.refused)
	return true
}

// refuse records that the relay at addr refused the agent for good.
func (c *candidates) refuse(addr string) { c.refused[addr] = time.Now().Add(refusedSkip) }

// admitted forgets a refusal by the relay at addr.
func (c *candidates) admitted(addr string) { delete(c.refused, addr) }

// isRefused reports whether the relay at addr refused the agent for good
// a short while ago.
func (c *candidates) isRefused(addr string) bool {
	until, ok := c.refused[addr]
	return ok && time.Now().Before(until)
}

// allRefused reports whether every candidate refused the agent for good a
// short while ago: only then is a refusal the attachment's state.
func (c *candidates) allRefused() bool {
	for _, r := range c.list {
		if !c.isRefused(r.Addr) {
			return false
		}
	}
	return true
}

// round returns the candidates to try in turn: those after the relay at
// position after (the one just lost; -1 for none) first, wrapping around,
// so that the lost one comes last; without those that refused the agent
// for good a short while ago, unless every one did.
func (c *candidates) round(after int) []candidate {
	out := make([]candidate, 0, len(c.list))
	for i := range c.list {
		r := c.list[(after+1+i)%len(c.list)]
		if !c.isRefused(r.Addr) {
			out = append(out, r)
		}
	}
	if len(out) == 0 {
		out = append(out, c.list[after+1:]...)
		out = append(out, c.list[:after+1]...)
	}
	return out
}

// homeWait returns how long an agent away from home stays before trying
// to move home again: a random time in [interval, 2·interval).
func homeWait(interval time.Duration) time.Duration {
	return interval + rand.N(interval)
}
