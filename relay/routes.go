package relay

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// routes is the registry of attached agents: the device attached under each
// device ID, the client attached under each client address (ID and
// instance), the number of clients per address, when each detached device
// was last seen, and the recent replacements of each device (flap
// damping). It answers where a packet goes. It does no I/O: replacing an
// attachment returns the old one for the caller to send away. It is safe
// for concurrent use.
//
// Its lock is taken for reading on every forwarded packet, and is never
// held while another lock is taken: [allowIndex.mu] and [Server.mu] are
// taken before it, never under it.
type routes struct {
	// Immutable after init.
	maxClients, perIP int

	mu        sync.RWMutex
	closed    bool                            // the relay is closing; guarded by mu
	devices   map[identity.ID]*attachment     // guarded by mu
	clients   map[relayproto.Addr]*attachment // guarded by mu
	clientsIP map[netip.Addr]int              // attached clients per address; guarded by mu
	lastSeen  map[identity.ID]offline         // devices that detached; guarded by mu
	flaps     flapLog                         // guarded by mu
}

// maxLastSeen bounds the memory spent remembering when devices were seen.
const maxLastSeen = 100_000

func newRoutes(lim clientLimits) *routes {
	r := new(routes)
	r.init(lim)
	return r
}

// init readies a zero routes (a Server holds its registry by value, so
// that the forwarding path follows no pointer to reach it).
func (r *routes) init(lim clientLimits) {
	r.maxClients, r.perIP = lim.max, lim.perIP
	r.devices = make(map[identity.ID]*attachment)
	r.clients = make(map[relayproto.Addr]*attachment)
	r.clientsIP = make(map[netip.Addr]int)
	r.lastSeen = make(map[identity.ID]offline)
	r.flaps = flapLog{times: make(map[identity.ID][]time.Time)}
}

// A refusal is why the relay does not take an agent: the code it is told
// and a message that says why and what to do.
type refusal struct {
	code relayproto.RefuseCode
	msg  string
}

func (r *refusal) Error() string { return fmt.Sprintf("%s: %s", r.code, r.msg) }

// A replacement is an older attachment of the same agent that a new one
// took the place of; the caller sends it away.
type replacement struct {
	old *attachment // nil if none was replaced
	// Devices: how long old must wait before it attaches again, and how
	// often the device was replaced in the last flapWindow.
	retryAfter time.Duration
	flaps      int
	// returned: a device that left less than reattachWindow ago.
	returned bool
}

// add registers a at now, replacing an older attachment of the same device
// or client process, or says why it does not.
func (r *routes) add(a *attachment, now time.Time) (replacement, *refusal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return replacement{}, &refusal{relayproto.RefuseShuttingDown, "relay is shutting down"}
	}
	var rep replacement
	addr := a.address()
	if a.isDevice() {
		rep.old = r.devices[addr.ID]
		r.devices[addr.ID] = a
		if off, ok := r.lastSeen[addr.ID]; ok && now.Sub(off.at) < reattachWindow {
			rep.returned = true
		}
		delete(r.lastSeen, addr.ID)
		if rep.old != nil {
			rep.retryAfter, rep.flaps = r.flaps.record(addr.ID, now)
		}
		return rep, nil
	}
	// A client coming back with the same key and instance takes its own
	// place, even from another address (whose count may then pass the
	// per-address bound by one such move: the total does not grow); any
	// other needs room.
	if rep.old = r.clients[addr]; rep.old == nil {
		if ref := r.admitClientLocked(a); ref != nil {
			return rep, ref
		}
	}
	r.clients[addr] = a
	r.countClientLocked(a, 1)
	if rep.old != nil {
		r.countClientLocked(rep.old, -1)
	}
	return rep, nil
}

// admitClientLocked says why the new client a does not fit, or returns nil
// if it does.
func (r *routes) admitClientLocked(a *attachment) *refusal {
	if len(r.clients) >= r.maxClients {
		return &refusal{relayproto.RefuseOverloaded, fmt.Sprintf(
			"relay holds as many clients as it takes (%d); try again later", r.maxClients)}
	}
	if ip := a.countedIP(); ip.IsValid() && r.clientsIP[ip] >= r.perIP {
		return &refusal{relayproto.RefuseTooMany, fmt.Sprintf(
			"address %s holds as many client sessions as the relay takes from one address (%d); try again once one has ended",
			ip, r.perIP)}
	}
	return nil
}

// countClientLocked adds d to the count of a's address.
func (r *routes) countClientLocked(a *attachment, d int) {
	ip := a.countedIP()
	if !ip.IsValid() {
		return
	}
	if r.clientsIP[ip] += d; r.clientsIP[ip] <= 0 {
		delete(r.clientsIP, ip)
	}
}

// remove takes a out of the registry if it is still there (a newer
// attachment may have replaced it), and reports whether it was. A device
// is remembered as last seen at now, with the clients its access list
// allowed then.
func (r *routes) remove(a *attachment, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	addr := a.address()
	if a.isDevice() {
		if r.devices[addr.ID] != a {
			return false
		}
		delete(r.devices, addr.ID)
		if len(r.lastSeen) < maxLastSeen {
			r.lastSeen[addr.ID] = newOffline(now, a.accessSet())
		}
		return true
	}
	if r.clients[addr] != a {
		return false
	}
	delete(r.clients, addr)
	r.countClientLocked(a, -1)
	return true
}

// route finds the attachment a packet from src to dst goes to. With none,
// it returns what to tell src, or a zero PeerGone if src should be told
// nothing. It runs for every forwarded packet.
func (r *routes) route(src *attachment, dst relayproto.Addr) (*attachment, relayproto.PeerGone) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		// Every attachment is ending: a peer missing now is one the relay
		// is closing, not one that left, and agents must not hear that it
		// did.
		return nil, relayproto.PeerGone{}
	}
	gone := relayproto.PeerGone{Peer: dst, Reason: relayproto.GoneOffline}
	if src.isDevice() {
		if c := r.clients[dst]; c != nil {
			return c, gone
		}
		if r.devices[dst.ID] != nil {
			gone.Reason = relayproto.GoneNotAllowed
		}
		return nil, gone
	}
	// A device is reachable once it has said who may reach it, and then
	// only by them. Anyone else hears the same whether the device is
	// attached or not; only a client the device allowed when it was last
	// here hears that it is offline, and since when.
	client := src.address().ID
	if d := r.devices[dst.ID]; d != nil {
		if acc := d.accessSet(); acc != nil && acc.allows(client, src.intent(dst.ID)) {
			return d, gone
		}
	} else if off, ok := r.lastSeen[dst.ID]; ok && off.allowed(client) {
		gone.LastSeenUnix = uint64(off.at.Unix())
		return nil, gone
	}
	gone.Reason = relayproto.GoneUnreachable
	return nil, gone
}

// device returns the attachment of the device id, or nil.
func (r *routes) device(id identity.ID) *attachment {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.devices[id]
}

// deviceAccess returns the access set of the attached device id, or nil if
// it is not attached or has said nothing yet.
func (r *routes) deviceAccess(id identity.ID) *accessSet {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if d := r.devices[id]; d != nil {
		return d.accessSet()
	}
	return nil
}

// online reports whether the device id is attached, and when it was last
// seen if it is not (zero if the relay does not know).
func (r *routes) online(id identity.ID) (bool, time.Time) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.devices[id] != nil {
		return true, time.Time{}
	}
	return false, r.lastSeen[id].at
}

// count returns how many devices and clients are attached.
func (r *routes) count() (devices, clients int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.devices), len(r.clients)
}

// all returns every attachment.
func (r *routes) all() (devices, clients []*attachment) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Collect(maps.Values(r.devices)), slices.Collect(maps.Values(r.clients))
}

// close marks the registry closed, so that route says nothing of missing
// peers and add refuses, and returns every attachment for the caller to
// send away.
func (r *routes) close() (devices, clients []*attachment) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return slices.Collect(maps.Values(r.devices)), slices.Collect(maps.Values(r.clients))
}

// appendClients appends every attached client to dst.
func (r *routes) appendClients(dst []*attachment) []*attachment {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.AppendSeq(dst, maps.Values(r.clients))
}

// allowsIntent reports whether an attached device lists the invite of one
// of the client c's pairing intents.
func (r *routes) allowsIntent(c *attachment) bool {
	intents := c.pairIntents()
	if intents == nil {
		return false
	}
	client := c.address().ID
	r.mu.RLock()
	defer r.mu.RUnlock()
	for dev, token := range intents {
		if d := r.devices[dev]; d != nil {
			if acc := d.accessSet(); acc != nil && acc.allows(client, token) {
				return true
			}
		}
	}
	return false
}

// Flapping: two copies of one device (a cloned firmware image, a restored
// backup) each replace the other as soon as they reattach. The replaced
// one is told to wait before retrying, longer the more often the device
// was replaced in the last minute, so that the relay sees a few
// replacements a minute rather than a storm.
const (
	flapWindow = time.Minute
	flapFree   = 2                // replacements a minute that cost nothing
	flapStep   = 10 * time.Second // added per replacement past flapFree
	maxFlaps   = 4096             // devices whose replacements are remembered
)

// A flapLog remembers the recent replacements of each device. Its owner
// guards it.
type flapLog struct {
	times map[identity.ID][]time.Time
}

// record notes a replacement of device at now. It returns how long the
// replaced attachment must wait before it attaches again, and how many
// replacements of device the last flapWindow saw, this one included.
func (f *flapLog) record(device identity.ID, now time.Time) (time.Duration, int) {
	recent := f.times[device][:0]
	for _, t := range f.times[device] {
		if now.Sub(t) < flapWindow {
			recent = append(recent, t)
		}
	}
	recent = append(recent, now)
	if len(f.times) >= maxFlaps {
		clear(f.times) // forget old storms rather than grow
	}
	f.times[device] = recent
	if len(recent) <= flapFree {
		return 0, len(recent)
	}
	return min(flapWindow, time.Duration(len(recent)-flapFree)*flapStep), len(recent)
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
