package device

import (
	"iter"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
)

// Counters of what a device does, for [Device.Metrics]. They are atomics,
// bumped once per tunnel, pairing or session and never per packet or per
// byte: a tunnel's bytes are added when it closes.

// A TunnelResult is how a tunnel request ended.
type TunnelResult int

// Tunnel results. The refusals are those a client is told; TunnelAborted
// is a tunnel the device accepted whose client went away before it opened.
const (
	TunnelOK             TunnelResult = iota // opened
	TunnelNotAuthorized                      // unknown client, or service not granted
	TunnelUnknownService                     // no such service on the device
	TunnelDialFailed                         // the service did not answer
	TunnelRateLimited                        // the client opened too many too fast
	TunnelAborted                            // the client went away before it opened
	numTunnelResults
)

var tunnelResults = [numTunnelResults]string{"ok", "not_authorized", "unknown_service", "dial_failed", "rate_limited", "aborted"}

// String returns the result as a metric label: "ok", "not_authorized",
// "unknown_service", "dial_failed", "rate_limited" or "aborted".
func (r TunnelResult) String() string {
	if r < 0 || r >= numTunnelResults {
		return "invalid"
	}
	return tunnelResults[r]
}

// UnknownService is the service [Metrics.Tunnels] counts a request under
// when it names no service the device has (had) configured, so that what
// a client sends never becomes a label of its own. No service can have
// this name: a service name starts with a letter or digit.
const UnknownService = "_unknown"

// A TunnelCount is how many tunnel requests for Service ended with Result.
type TunnelCount struct {
	Service string
	Result  TunnelResult
	Count   uint64
}

// Metrics is a snapshot of a device's counters since it started, which
// only grow, and of its sessions open now.
type Metrics struct {
	// Tunnels counts tunnel requests for every service configured since
	// the device started (a service a reload removed keeps its counts),
	// and [UnknownService], by every result: zeros included; the
	// configured services sorted by name, then UnknownService.
	Tunnels []TunnelCount
	// BytesToService and BytesFromService count the bytes tunnels carried
	// to the services and back to the clients, added as each tunnel
	// closes: an open tunnel's bytes are not in them yet.
	BytesToService   uint64
	BytesFromService uint64
	// PairingsOK counts clients paired; PairingsRefused, pairings refused
	// (unknown, spent or expired invite, wrong secret, too many
	// attempts); PairingsFailed, right secrets the device could not save.
	PairingsOK      uint64
	PairingsRefused uint64
	PairingsFailed  uint64
	// SessionsStarted and SessionsEnded count the sessions the device
	// accepted and those that ended; the sessions open now, and their
	// paths, are in [Device.Status].
	SessionsStarted uint64
	SessionsEnded   uint64
	// SessionsRelay, SessionsRelayUDP, SessionsDirect and SessionsLAN
	// count the sessions open now whose packets go through the relay's
	// TCP sessions, through its UDP port, over a direct path found
	// through the relay, and over the LAN, where they started.
	SessionsRelay    int
	SessionsRelayUDP int
	SessionsDirect   int
	SessionsLAN      int
}

// serviceCounters counts one service's tunnel requests by result.
type serviceCounters [numTunnelResults]atomic.Uint64

// counters is what Device.Metrics reads. The zero value is ready.
type counters struct {
	// services maps every service configured since the start to its
	// counters. Its maps are never changed: addServices replaces the
	// whole, so that a tunnel finds its counters without a lock.
	services atomic.Pointer[map[string]*serviceCounters]
	addMu    sync.Mutex // serializes addServices
	unknown  serviceCounters

	bytesTo, bytesFrom              atomic.Uint64
	pairOK, pairRefused, pairFailed atomic.Uint64
	sessionsStarted, sessionsEnded  atomic.Uint64
}

// addServices gives every service named in svcs counters, keeping those it
// has.
func (c *counters) addServices(svcs iter.Seq[string]) {
	c.addMu.Lock()
	defer c.addMu.Unlock()
	var old map[string]*serviceCounters
	if p := c.services.Load(); p != nil {
		old = *p
	}
	m := maps.Clone(old)
	if m == nil {
		m = make(map[string]*serviceCounters)
	}
	for name := range svcs {
		if m[name] == nil {
			m[name] = new(serviceCounters)
		}
	}
	c.services.Store(&m)
}

// tunnel counts a tunnel request for service that ended with r.
func (c *counters) tunnel(service string, r TunnelResult) {
	sc := &c.unknown
	if p := c.services.Load(); p != nil {
		if s := (*p)[service]; s != nil {
			sc = s
		}
	}
	sc[r].Add(1)
}

// Metrics returns a snapshot of the device's counters and open sessions.
// It takes no more than [Device.Status] does, and may be called at any
// time, after Close too.
func (d *Device) Metrics() Metrics {
	c := &d.counters
	m := Metrics{
		BytesToService:   c.bytesTo.Load(),
		BytesFromService: c.bytesFrom.Load(),
		PairingsOK:       c.pairOK.Load(),
		PairingsRefused:  c.pairRefused.Load(),
		PairingsFailed:   c.pairFailed.Load(),
		SessionsStarted:  c.sessionsStarted.Load(),
		SessionsEnded:    c.sessionsEnded.Load(),
	}
	var svcs map[string]*serviceCounters
	if p := c.services.Load(); p != nil {
		svcs = *p
	}
	add := func(name string, sc *serviceCounters) {
		for r := range numTunnelResults {
			m.Tunnels = append(m.Tunnels, TunnelCount{Service: name, Result: r, Count: sc[r].Load()})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(svcs)) {
		add(name, svcs[name])
	}
	add(UnknownService, &c.unknown)
	d.mu.Lock()
	for s := range d.sessions {
		switch p := s.Path(); {
		case p.LAN:
			m.SessionsLAN++
		case p.Direct:
			m.SessionsDirect++
		case p.RelayUDP:
			m.SessionsRelayUDP++
		default:
			m.SessionsRelay++
		}
	}
	d.mu.Unlock()
	return m
}
