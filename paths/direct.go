package paths

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/burrow-tunnel/burrow/peerproto"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// Direct paths.
//
// Besides its link to the relay, an agent keeps one UDP socket. Once two
// agents share an E2E session over the relay, the
// layer above carries this file's signalling messages between their
// [Direct]s, in order, and they look for a direct path (a session that
// started over the LAN, lan.go, has one already and needs no search):
//
//  1. Each side sends its candidates: its interfaces' addresses with the
//     socket's port, and the address the relay saw that socket send from.
//  2. On the other's candidates, each side sends them openers: datagrams
//     with a TTL of 2, which pass its own NAT (creating the mapping that
//     will let the peer's probes in) and die before the peer's. Then it
//     says ready. Without openers, whichever probe reached the other NAT
//     first would leave a record there that makes a Linux NAT (and many
//     home routers) give that NAT's own outgoing probes another port, and
//     neither side's probes would ever get through.
//  3. Once it has sent openers and heard ready, each side probes every
//     candidate of the other several times a second for a few seconds.
//     Probes are as big as the largest packet the path must carry and
//     carry a MAC under a key only the two agents know (agreed inside the
//     E2E session), so only the real peer can answer one. The first answer
//     (from the address probed) moves this side's packets to that address;
//     later, an answer from an address the peer named replaces a path to
//     one found by probing back (below). The E2E session above still sees
//     the same peer address and notices nothing.
//
// An address is the peer's only once this side has proven it: it sent a
// probe there and got the answer from there, echoing the probe's txid
// while that is outstanding (each is taken once). Only then does this side
// send packets there, or take QUIC packets from there as the peer's (from
// up to 8 such addresses; the one in use is never pushed out). A probe
// proves nothing about where it came from: it may be a copy. The answerer
// replies to whatever address it came from (never with more bytes than the
// probe), and if it has not proven that address itself, probes it in turn
// (with a probe of the same size, 20 a second at most; once a small one is
// answered, with a full-size one before packets go there): so a path that
// only the peer's probes found (its NAT gives it a new port for every
// destination) is found both ways. Each of the peer's txids is answered
// once: the last 1024 seen are remembered and older ones are refused, so a
// probe sniffed on the way and sent again, from anywhere, gets no answer.
// Whoever lacks the key can then neither add an address nor push out the
// peer's. One who relays the agents' datagrams through addresses of its
// own is a router on the path like any other; if it drops their packets
// while it passes probes, the data check below sends them to the relay.
//
// While the path is in use, small probes keep checking it (every 250ms
// while packets flow, every 2s when idle). If none is answered for a second
// while packets flow, packets go back to the relay at once; after 6.5s
// without an answer the path is dropped and the search starts again later,
// with backoff.
//
// The data check: a path can answer probes and lose packets (a middlebox
// that drops QUIC, or a relaying attacker as above). Each reply says how
// many QUIC packets the replier has taken from the prober over direct
// paths, and the prober knows how many it had sent when it probed. If, for
// 750ms of replies, at least 3 packets were sent and none of them arrived,
// the path is dropped: packets go over the relay at once, the peer is told
// (lost) and drops its path too, and neither takes up again the address it
// dropped (the peer, with no path, any it has proven) for 10s, then 20s and
// so on up to 5 minutes each time packets are lost again, until packets
// cross a path. Until then it does not answer the peer's probes from that
// address either: the lost message travels inside the session, which the
// lossy path may have stalled, and a peer that sends too little to judge
// the path itself (a receiver whose acknowledgements answer data that no
// longer comes) still falls back within a second, as its heartbeats go
// unanswered. An idle session sends nothing to lose and a one-way flow
// still arrives, so neither trips the check; nor does a lone lost packet.
//
// The datagrams on the socket (probes, replies, openers: told from QUIC
// packets by their first byte), their MACs and the signalling messages are
// package peerproto's (PROTOCOL.md there). A probe's pathID names the
// prober's direction of one Direct, and its txid numbers the prober's
// probes in that direction, from 1 (every Direct has a key of its own, so
// a number never repeats under a key). The MACs do not cover addresses:
// behind a NAT, an agent does not know the address its peer sends to or
// sees it at.
const (
	// MaxDirectPacket is the largest packet a direct path carries: a path
	// is used only once a probe this big has crossed it.
	MaxDirectPacket = peerproto.MaxPacketLen

	// MaxPacket is the largest E2E packet every path carries: the UDP
	// relay path's, whose 13-byte header leaves that much of the
	// largest datagram (relayproto.MaxUDPPacket). The session sizes its
	// packets to it.
	MaxPacket = relayproto.MaxUDPPacket

	openerTTL = 2

	discoveryEvery  = 200 * time.Millisecond // probes to every candidate
	discoveryFor    = 5 * time.Second        // a round's probing
	heartbeatActive = 250 * time.Millisecond // probes on the path while packets flow
	heartbeatIdle   = 2 * time.Second        // and while they do not
	activeWindow    = 3 * time.Second        // packets flow: one was sent this recently
	trustActive     = time.Second            // use the path only if it answered this recently
	trustIdle       = heartbeatIdle + time.Second
	lostAfter       = 6500 * time.Millisecond // then drop the path and search again
	kickGap         = 50 * time.Millisecond   // between probes asked for by the sender
	retryMin        = 2 * time.Second
	retryMax        = 30 * time.Second
	maxRoutes       = 8 // remote addresses remembered per Direct
	peerRoundBurst  = 10
	peerRoundEvery  = 20 * time.Second
	replayWindow    = 1024                  // the peer's txids remembered
	probeBackEvery  = 50 * time.Millisecond // probes to addresses the peer's probes came from
	probeBackBurst  = 16
	dataStall       = 750 * time.Millisecond // replies showing no packet arrived, this long
	dataStallLeast  = 3                      // while this many were sent: the path loses them
	lostRetryMin    = 10 * time.Second       // then a path that lost packets is tried again,
	lostRetryMax    = 5 * time.Minute        // later each time it does so again
)

// ErrNoDirect is returned by [Conn.StartDirect] when direct paths and the
// UDP relay path are both off.
var ErrNoDirect = errors.New("paths: direct paths and the UDP relay path are disabled")

// PathInfo says how packets to a peer travel: over a direct path (LAN
// set if the session started over the LAN, with no relay), over the
// relay's UDP port, or (neither set) over the relay's TCP link.
type PathInfo struct {
	// Direct is true when packets go over a direct path, to Addr.
	Direct bool           `json:"direct"`
	Addr   netip.AddrPort `json:"addr,omitzero"`
	// LAN is true (with Direct) when the peer is a LAN peer
	// ([Conn.LANAddr]): the direct path is the one the session started
	// on, found on the LAN rather than by a search.
	LAN bool `json:"lan,omitempty"`
	// RelayUDP is true when packets go through the relay's UDP port.
	RelayUDP bool `json:"relay_udp,omitempty"`
	// RTT is the last probe round trip of the direct or UDP relay path;
	// zero for a LAN peer, which is not probed (package session fills in
	// the session's own).
	RTT time.Duration `json:"rtt,omitempty"`
	// Since is when packets last changed path; zero if they never did.
	Since time.Time `json:"since,omitzero"`
}

// String returns "lan ADDR", "direct ADDR", "relay udp" or "relay" (the
// relay's TCP link).
func (p PathInfo) String() string {
	switch {
	case p.LAN:
		return "lan " + p.Addr.String()
	case p.Direct:
		return "direct " + p.Addr.String()
	case p.RelayUDP:
		return "relay udp"
	}
	return "relay"
}

// LogAttrs returns the path as log attributes: path, and rtt when direct
// (over the LAN: if known) or through the relay's UDP port.
func (p PathInfo) LogAttrs() []any {
	if (p.Direct && (!p.LAN || p.RTT != 0)) || p.RelayUDP {
		return []any{"path", p.String(), "rtt", p.RTT.Round(10 * time.Microsecond).String()}
	}
	return []any{"path", p.String()}
}

// DirectConfig configures a [Direct].
type DirectConfig struct {
	// Key is a secret only this agent and the peer know, agreed inside
	// their E2E session: at least 16 bytes. Required. Each Direct needs a
	// key of its own (one exported from the session's TLS is): probes are
	// numbered from 1 under it, and the peer answers each number once.
	Key []byte
	// Initiator is true on exactly one of the two sides (the client): it
	// starts the search.
	Initiator bool
	// Signal delivers a message to the peer's [Direct.Receive], in order,
	// over the E2E session. It may block briefly. Required.
	Signal func(msg []byte)
}

// A Direct looks for, uses and watches a direct path to one peer. Create it
// with [Conn.StartDirect]; it is safe for concurrent use.
type Direct struct {
	// Set by StartDirect, then only read.
	c       *Conn
	peer    *peer
	key     []byte
	myID    [8]byte // in the probes this side sends
	theirID [8]byte // in the probes the peer sends
	cfg     DirectConfig
	log     *slog.Logger

	// Read by every send.
	path     atomic.Pointer[directPath] // the proven path; nil if none
	lastSend atomic.Int64               // Conn.now of the last packet sent to the peer
	kick     atomic.Bool                // the sender asks for a probe on the path now
	// sent and received count the QUIC packets sent to and taken from the
	// peer over direct paths, for the data check.
	sent, received atomic.Uint64

	// The UDP relay path (relaypath.go): the one in use, the last packet
	// sent over it, the sender's request for a probe on it, and the QUIC
	// packets sent and taken over it, for its own data check.
	rpath            atomic.Pointer[relayPath]
	rlastSend        atomic.Int64
	rkick            atomic.Bool
	rsent, rreceived atomic.Uint64

	probeBacks *rate.Limiter // probes to addresses the peer's probes came from

	wake chan struct{} // cap 1: the run loop has work
	done chan struct{} // closed by Close

	relaysMu   sync.Mutex               // held while a relays message is made and sent
	relaysSent bool                     // one was sent; guarded by relaysMu
	relaysLast []peerproto.RelayChannel // the last sent; guarded by relaysMu

	mu         sync.Mutex
	closed     bool                         // guarded by mu
	round      uint32                       // the search round; guarded by mu
	remote     []netip.AddrPort             // the peer's candidates this round; guarded by mu
	opened     bool                         // openers sent this round; guarded by mu
	peerReady  bool                         // the peer sent its openers this round; guarded by mu
	probeUntil time.Time                    // probing the candidates until then; guarded by mu
	lastProbe  time.Time                    // the last probe of the candidates; guarded by mu
	lastBeat   time.Time                    // the last probe on the path; guarded by mu
	retryAt    time.Time                    // start a round then, if not zero; guarded by mu
	retries    int                          // rounds that failed in a row; guarded by mu
	dataFails  int                          // paths dropped by the data check since data last crossed one; guarded by mu
	lossy      map[netip.AddrPort]time.Time // addresses not to take up until then: they lost packets; guarded by mu
	lastTxid   uint64                       // of the last probe sent; guarded by mu
	outgoing   map[[8]byte]probeRecord      // probes awaiting an answer; guarded by mu
	seen       replayFilter                 // the peer's txids answered; guarded by mu
	check      dataCheck                    // of the path in use; guarded by mu
	routes     []netip.AddrPort             // addresses proven for the peer; guarded by mu
	since      time.Time                    // of the last path change; guarded by mu
	rs         relaySearch                  // the UDP relay path's search; guarded by mu
}

// directPath is a proven path; lastReply and rtt change as probes return.
type directPath struct {
	addr      netip.AddrPort
	named     bool         // addr is one of the peer's candidates
	lastReply atomic.Int64 // Conn.now
	rtt       atomic.Int64
}

// StartDirect starts looking for a direct path to peer (an [Addr] or an
// address [Conn.ReadFrom] returned). A Direct started earlier for the same
// peer is closed. It fails with [ErrNoDirect] if direct paths are off, and
// with [ErrLANPeer] for a LAN peer, whose path is direct already.
func (c *Conn) StartDirect(peerAddr net.Addr, cfg DirectConfig) (*Direct, error) {
	if _, ok := peerAddr.(*lanPeer); ok {
		return nil, ErrLANPeer
	}
	if c.ds == nil {
		return nil, ErrNoDirect
	}
	if len(cfg.Key) < 16 || cfg.Signal == nil {
		return nil, errors.New("paths: DirectConfig needs a Key of 16 bytes or more and a Signal")
	}
	p := c.peerFor(peerAddr)
	if p == nil {
		return nil, fmt.Errorf("paths: address %v is %T, want paths.Addr", peerAddr, peerAddr)
	}
	d := &Direct{
		c:          c,
		peer:       p,
		key:        slices.Clone(cfg.Key),
		cfg:        cfg,
		log:        c.log.With("peer", p.addr.ID.Short()),
		wake:       make(chan struct{}, 1),
		done:       make(chan struct{}),
		outgoing:   make(map[[8]byte]probeRecord),
		probeBacks: rate.NewLimiter(rate.Every(probeBackEvery), probeBackBurst),
	}
	d.lastSend.Store(c.now() - int64(activeWindow)) // idle
	d.myID = peerproto.PathID(d.key, cfg.Initiator)
	d.theirID = peerproto.PathID(d.key, !cfg.Initiator)

	ds := c.ds
	ds.mu.Lock()
	old := ds.byPeer[p.addr]
	ds.byPeer[p.addr] = d
	ds.ids[d.myID] = d
	ds.ids[d.theirID] = d
	ds.mu.Unlock()
	if old != nil {
		old.Close()
	}
	p.direct.Store(d)
	if c.ctx.Err() != nil {
		d.Close()
		return nil, ErrClosed
	}
	c.wg.Go(d.run)
	return d, nil
}

// Close stops using and looking for the direct path and the UDP relay
// path: packets to the peer go over the relay's TCP link again.
func (d *Direct) Close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	routes := d.routes
	d.mu.Unlock()
	close(d.done)
	d.path.Store(nil)
	d.rpath.Store(nil)
	d.peer.direct.CompareAndSwap(d, nil)
	ds := d.c.ds
	ds.mu.Lock()
	ds.updateChansLocked(func(m map[relayChan]*Direct) {
		for k, v := range m {
			if v == d {
				delete(m, k)
			}
		}
	})
	if ds.byPeer[d.peer.addr] == d {
		delete(ds.byPeer, d.peer.addr)
	}
	for _, id := range [][8]byte{d.myID, d.theirID} {
		if ds.ids[id] == d {
			delete(ds.ids, id)
		}
	}
	ds.updateRoutesLocked(func(m map[netip.AddrPort]*Direct) {
		for _, a := range routes {
			if m[a] == d {
				delete(m, a)
			}
		}
	})
	ds.mu.Unlock()
}

// send sends a packet over the direct path if there is one the peer
// answered on recently, else over the UDP relay path if it answered
// recently, and reports whether it did.
func (d *Direct) send(p []byte) bool {
	return d.sendDirect(p) || d.sendRelay(p)
}

// sendDirect sends a packet over the direct path if there is one the peer
// answered on recently, and reports whether it did.
func (d *Direct) sendDirect(p []byte) bool {
	if len(p) > MaxDirectPacket {
		return false
	}
	path := d.path.Load()
	if path == nil {
		return false
	}
	now := d.c.now()
	if now-d.lastSend.Swap(now) >= int64(activeWindow) {
		// Packets start to flow: the path is probed at the active pace
		// from now on, not at the next idle probe.
		d.poke()
	}
	if now-path.lastReply.Load() > int64(trustActive) {
		// Not answered lately: the relay carries it while a probe asks.
		if !d.kick.Swap(true) {
			d.poke()
		}
		return false
	}
	if !d.c.ds.enqueue(p, path.addr) {
		d.c.dropped.Add(1) // as the socket would have, its buffer full
		return true
	}
	d.sent.Add(1)
	return true
}

func (d *Direct) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Path says how packets to the peer travel now.
func (d *Direct) Path() PathInfo {
	d.mu.Lock()
	since := d.since
	d.mu.Unlock()
	now := d.c.now()
	if path := d.path.Load(); path != nil && now-path.lastReply.Load() <= trustFor(now, d.lastSend.Load()) {
		return PathInfo{Direct: true, Addr: path.addr, RTT: time.Duration(path.rtt.Load()), Since: since}
	}
	if rp := d.rpath.Load(); rp != nil && now-rp.lastReply.Load() <= trustFor(now, d.rlastSend.Load()) {
		return PathInfo{RelayUDP: true, RTT: time.Duration(rp.rtt.Load()), Since: since}
	}
	return PathInfo{Since: since}
}

// trustFor returns how recent a path's last answer must be for the path
// to count as working, at now, if a packet last went over it at lastSend:
// while packets flow it is probed often, and trusted only briefly.
func trustFor(now, lastSend int64) int64 {
	if now-lastSend < int64(activeWindow) {
		return int64(trustActive)
	}
	return int64(trustIdle)
}

// Path says how packets to peer travel now: over the relay unless a
// [Direct] for it has a working path; to a LAN peer, directly, with LAN
// set.
func (c *Conn) Path(peerAddr net.Addr) PathInfo {
	if lp, ok := peerAddr.(*lanPeer); ok {
		return PathInfo{Direct: true, LAN: true, Addr: lp.ap}
	}
	if p := c.peerFor(peerAddr); p != nil {
		if d := p.direct.Load(); d != nil {
			return d.Path()
		}
	}
	return PathInfo{}
}

// Receive handles a signalling message from the peer's Direct.
func (d *Direct) Receive(msg []byte) error {
	m, err := peerproto.ParseSignal(msg)
	if errors.Is(err, peerproto.ErrUnknownType) {
		return nil // from a newer peer: ignored
	}
	if err != nil {
		return fmt.Errorf("paths: %w", err)
	}
	switch m := m.(type) {
	case peerproto.Candidates:
		d.gotCandidates(m.Round, m.Addrs)
	case peerproto.Lost:
		d.mu.Lock()
		if !d.closed {
			// Whatever the round: the peer lost packets on the path just
			// now, and keeps from taking it up again for a while.
			d.dropLossyLocked(time.Now(), "the peer's direct path loses packets: packets go over the relay")
		}
		d.mu.Unlock()
	case peerproto.Relays:
		d.peerRelays(m.Relays)
	case peerproto.Ready:
		d.mu.Lock()
		if !d.closed && m.Round == d.round {
			d.peerReady = true
			d.maybeProbeLocked()
		}
		d.mu.Unlock()
	}
	return nil
}
