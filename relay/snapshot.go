package relay

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"slices"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// A Snapshot is what the relay holds at one moment, for an operator's
// view of it (a dashboard): the agents attached and the client–device
// pairs it relays packets for. [Server.Snapshot] makes one on request; it
// costs one pass over the attached agents and nothing on the forwarding
// path but one atomic store per client and second (see [Pair]).
type Snapshot struct {
	Taken   time.Time
	Devices []Agent // by ID
	Clients []Agent // by ID, then instance
	Pairs   []Pair  // by device, then client
}

// An Agent is one attached device or client process.
type Agent struct {
	ID       identity.ID
	Instance uint64    // clients: the process's instance (one key may run several); 0 for devices
	Since    time.Time // when it attached
	Remote   string    // the address it connected from, as the relay sees it
	// Frames of packets and their bytes (without frame headers) the relay
	// read from the agent (In) and wrote to it (Out), and the frames
	// dropped because its send queue was full.
	PacketsIn, BytesIn, PacketsOut, BytesOut, Dropped uint64
}

// A Pair is a client process and a device the relay forwarded the
// client's packets to, both still attached.
//
// The relay sees only its own path: once a session moves to a direct
// path, or falls silent, the relay stops seeing its packets, and cannot
// tell which of the two happened. So Relayed says only that the client's
// packets crossed the relay within [RelayedWindow]; a pair that is not
// Relayed is "direct or idle". One direction suffices: a session's
// packets are acknowledged, so a session carried by the relay sends
// packets both ways.
//
// LastRelayed is kept to the second or so, and only for the last
// [maxPeerMarks] devices each client sent to: a client sending to more
// at once may see a pair missing, or shown older than it is.
type Pair struct {
	Client         identity.ID
	ClientInstance uint64
	Device         identity.ID
	LastRelayed    time.Time // when the relay last forwarded a packet of the client to the device
	Relayed        bool      // LastRelayed is within RelayedWindow of the snapshot's time
}

// RelayedWindow is how recent a pair's last relayed packet must be for
// the pair to count as [Pair.Relayed].
const RelayedWindow = 30 * time.Second

// Snapshot returns the attached agents and the pairs the relay relays
// for. It is safe to call at any time, from any goroutine; the agents'
// counters are read one by one, so a snapshot taken while packets flow
// is not exact to the packet.
func (s *Server) Snapshot() Snapshot {
	now := time.Now()
	devs, clis := s.routes.all()
	snap := Snapshot{
		Taken:   now,
		Devices: make([]Agent, 0, len(devs)),
		Clients: make([]Agent, 0, len(clis)),
	}
	byKey := make(map[uint64]identity.ID, len(devs))
	for _, d := range devs {
		snap.Devices = append(snap.Devices, d.agentInfo())
		byKey[peerKey(d.address().ID)] = d.address().ID
	}
	for _, c := range clis {
		snap.Clients = append(snap.Clients, c.agentInfo())
		snap.Pairs = c.marks.appendPairs(snap.Pairs, c.address(), byKey, now)
	}
	slices.SortFunc(snap.Devices, func(a, b Agent) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	slices.SortFunc(snap.Clients, func(a, b Agent) int {
		return cmp.Or(bytes.Compare(a.ID[:], b.ID[:]), cmp.Compare(a.Instance, b.Instance))
	})
	slices.SortFunc(snap.Pairs, func(a, b Pair) int {
		return cmp.Or(bytes.Compare(a.Device[:], b.Device[:]),
			bytes.Compare(a.Client[:], b.Client[:]), cmp.Compare(a.ClientInstance, b.ClientInstance))
	})
	return snap
}

// PairCounts counts the client–device pairs a [Snapshot] would list:
// those with a packet relayed within [RelayedWindow], and the others
// (direct or idle). It neither sorts nor copies the agents, so that a
// metrics scrape may call it on a relay of many thousands.
func (s *Server) PairCounts() (relayed, quiet int) {
	now := time.Now()
	devs, clis := s.routes.all()
	byKey := make(map[uint64]identity.ID, len(devs))
	for _, d := range devs {
		byKey[peerKey(d.address().ID)] = d.address().ID
	}
	var pairs []Pair
	for _, c := range clis {
		pairs = c.marks.appendPairs(pairs[:0], c.address(), byKey, now)
		for _, p := range pairs {
			if p.Relayed {
				relayed++
			} else {
				quiet++
			}
		}
	}
	return relayed, quiet
}

// agentInfo returns what a snapshot shows of the attachment.
func (a *attachment) agentInfo() Agent {
	ag := Agent{
		ID:         a.addr.ID,
		Instance:   a.addr.Instance,
		Since:      a.start,
		PacketsIn:  a.pktsIn.Load(),
		BytesIn:    a.bytesIn.Load(),
		PacketsOut: a.pktsOut.Load(),
		BytesOut:   a.bytesOut.Load(),
		Dropped:    a.dropped.Load(),
	}
	if ra := a.remoteAddr(); ra != nil {
		ag.Remote = ra.String()
	}
	return ag
}

// maxPeerMarks is how many devices a client's marks remember.
const maxPeerMarks = 4

// peerMarks are the devices a client sent packets to lately, and when:
// written by the client's read loop only (mark), read by Snapshot. An
// empty mark has at zero.
type peerMarks [maxPeerMarks]struct {
	key atomic.Uint64 // peerKey of the device
	at  atomic.Int64  // Unix nanoseconds
}

// peerKey is the first 8 bytes of a device's ID: among the devices
// attached to one relay, a collision takes some 2^32 of them.
func peerKey(id identity.ID) uint64 { return binary.LittleEndian.Uint64(id[:8]) }

// mark notes a packet forwarded to the device of key at now (Unix
// nanoseconds). It runs for every packet a client sends: it allocates
// nothing, takes no lock, and stores at most once a second per device.
func (m *peerMarks) mark(key uint64, now int64) {
	oldest := 0
	for i := range m {
		if m[i].key.Load() == key && m[i].at.Load() != 0 {
			if now-m[i].at.Load() >= int64(time.Second) {
				m[i].at.Store(now)
			}
			return
		}
		if m[i].at.Load() < m[oldest].at.Load() {
			oldest = i
		}
	}
	// Time first: a snapshot between the stores shows the old device as
	// just relayed, which the next second's stores will not repeat.
	m[oldest].at.Store(now)
	m[oldest].key.Store(key)
}

// appendPairs appends to dst a pair for each marked device of client that
// is attached (in byKey) and returns dst. A nil m (a device's) has none.
func (m *peerMarks) appendPairs(dst []Pair, client relayproto.Addr, byKey map[uint64]identity.ID, now time.Time) []Pair {
	if m == nil {
		return dst
	}
	for i := range m {
		at := m[i].at.Load()
		dev, ok := byKey[m[i].key.Load()]
		if at == 0 || !ok {
			continue
		}
		last := time.Unix(0, at)
		dst = append(dst, Pair{
			Client:         client.ID,
			ClientInstance: client.Instance,
			Device:         dev,
			LastRelayed:    last,
			Relayed:        now.Sub(last) < RelayedWindow,
		})
	}
	return dst
}
