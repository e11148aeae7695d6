package paths

import (
	"encoding/binary"
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

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/backoff"
	"github.com/burrow-tunnel/burrow/peerproto"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// Direct paths.
//
// Besides its relay session, an agent keeps one UDP socket. Once two
// agents share an E2E session (which always starts over the relay), the
// layer above carries this file's signalling messages between their
// [Direct]s, in order, and they look for a direct path:
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

// ErrNoDirect is returned by [Conn.StartDirect] when direct paths are off.
var ErrNoDirect = errors.New("paths: direct paths are disabled")

// PathInfo says how packets to a peer travel.
type PathInfo struct {
	// Direct is true when packets go over a direct path, to Addr.
	Direct bool           `json:"direct"`
	Addr   netip.AddrPort `json:"addr,omitzero"`
	// RTT is the direct path's last probe round trip.
	RTT time.Duration `json:"rtt,omitempty"`
	// Since is when packets last changed path; zero if they never did.
	Since time.Time `json:"since,omitzero"`
}

// String returns "direct ADDR" or "relay".
func (p PathInfo) String() string {
	if p.Direct {
		return "direct " + p.Addr.String()
	}
	return "relay"
}

// LogAttrs returns the path as log attributes: path, and rtt when direct.
func (p PathInfo) LogAttrs() []any {
	if p.Direct {
		return []any{"path", p.String(), "rtt", p.RTT.Round(10 * time.Microsecond).String()}
	}
	return []any{"path", p.String()}
}

// allowRound reports whether peer may start a search round now: each round
// makes this agent send openers and probes to addresses the peer chose, so
// a peer (a known one, but perhaps hostile) starts at most peerRoundBurst
// in a row and then one per peerRoundEvery, whatever sessions it opens.
// An honest peer's rounds (at a session's start, then after failures with
// backoff from retryMin to retryMax) stay well inside.
func (ds *directSocket) allowRound(peer identity.ID) bool {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	l := ds.rounds[peer]
	if l == nil {
		if ds.rounds == nil {
			ds.rounds = make(map[identity.ID]*rate.Limiter)
		}
		l = rate.NewLimiter(rate.Every(peerRoundEvery), peerRoundBurst)
		ds.rounds[peer] = l
	}
	return l.Allow()
}

// directMessage handles a datagram that is not a QUIC packet.
func (c *Conn) directMessage(b []byte, from netip.AddrPort) {
	ds := c.ds
	if len(b) == 0 {
		ds.strange.Add(1)
		return
	}
	m, err := peerproto.ParseDatagram(b)
	switch m := m.(type) {
	case peerproto.Probe:
		d := ds.direct(m.PathID)
		if d == nil || !m.Valid(d.key) {
			ds.strange.Add(1)
			return
		}
		if m.PathID != d.theirID {
			return // our own probe, looped back to us
		}
		d.probed(m.TxID, from, m.Len)
	case peerproto.Reply:
		d := ds.direct(m.PathID)
		if d == nil || !m.Valid(d.key) {
			ds.strange.Add(1)
			return
		}
		if m.PathID == d.myID {
			d.replied(m.TxID, m.Received, from)
		}
	case peerproto.Opener:
		// Its work was done on the way; nothing to do here.
	default:
		// Not a peer's datagram: a relay's binding response, or strange.
		if !errors.Is(err, peerproto.ErrUnknownType) || b[0] != relayproto.UDPBindingResponse {
			ds.strange.Add(1)
			return
		}
		req := ds.binding.Load()
		txid, addr, err := relayproto.ParseBindingResponse(b)
		if req == nil || err != nil || from != req.to || txid != req.txid {
			ds.strange.Add(1)
			return
		}
		addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
		if old := ds.observed.Swap(&addr); old == nil || *old != addr {
			c.log.Debug("relay sees our UDP socket", "addr", addr.String())
		}
		ds.binding.CompareAndSwap(req, nil)
	}
}

// direct returns the Direct one of whose path IDs is id, or nil.
func (ds *directSocket) direct(id [8]byte) *Direct {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return ds.ids[id]
}

// LocalCandidates returns the addresses at which peers may reach this
// agent's direct socket: the configured or interface addresses with its
// port, and the address the relay saw it from. Nil if direct paths are off.
func (c *Conn) LocalCandidates() []netip.AddrPort {
	if c.ds == nil {
		return nil
	}
	var out []netip.AddrPort
	if obs := c.ds.observed.Load(); obs != nil {
		out = append(out, *obs)
	}
	addrs := c.cfg.Direct.Addrs
	if len(addrs) == 0 {
		list := c.cfg.Direct.InterfaceAddrs
		if list == nil {
			list = interfaceAddrs
		}
		all, err := list()
		if err != nil {
			c.log.Debug("listing interface addresses failed", "err", err)
		}
		for _, a := range all {
			if usableCandidate(a) && !a.IsLoopback() {
				addrs = append(addrs, a)
			}
		}
	}
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a.Unmap(), c.ds.port)
		if !slices.Contains(out, ap) {
			out = append(out, ap)
		}
	}
	if len(out) > peerproto.MaxCandidates {
		out = out[:peerproto.MaxCandidates]
	}
	return out
}

// usableCandidate reports whether a may be offered or probed: a unicast
// address that needs no zone.
func usableCandidate(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLinkLocalUnicast() &&
		a.Zone() == "" && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// interfaceAddrs lists the addresses of the interfaces that are up.
func interfaceAddrs() ([]netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
					out = append(out, ip.Unmap())
				}
			}
		}
	}
	return out, nil
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

	probeBacks *rate.Limiter // probes to addresses the peer's probes came from

	wake chan struct{} // cap 1: the run loop has work
	done chan struct{} // closed by Close

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
}

// directPath is a proven path; lastReply and rtt change as probes return.
type directPath struct {
	addr      netip.AddrPort
	named     bool         // addr is one of the peer's candidates
	lastReply atomic.Int64 // Conn.now
	rtt       atomic.Int64
}

// A probeRecord is a probe awaiting its answer.
type probeRecord struct {
	to    netip.AddrPort
	at    time.Time
	sent  uint64 // Direct.sent when it left
	named bool   // to is one of the peer's candidates
	full  bool   // it was MaxDirectPacket bytes: the path carries any packet
}

// dataCheck is what the replies on the path in use have shown of the
// packets sent over it: the last time they showed some arriving, and since
// when they have shown none.
type dataCheck struct {
	sent, received uint64    // Direct.sent when the probe left, and the peer's count in its reply
	at             time.Time // when that probe left
	stall          time.Time // when the first probe left whose reply showed packets sent since and none arrived; zero if none
}

// A replayFilter remembers which txids it was shown: each of the last
// replayWindow below the highest, and every one older counts as shown. The
// zero value has been shown none (and refuses 0, which no prober sends).
type replayFilter struct {
	top  uint64                    // the highest txid shown
	bits [replayWindow / 64]uint64 // bit n%replayWindow: txid n shown, for top-replayWindow < n ≤ top
}

// fresh reports whether txid n was not shown before, and remembers it.
func (f *replayFilter) fresh(n uint64) bool {
	switch {
	case n == 0:
		return false
	case n > f.top:
		if n-f.top >= replayWindow {
			clear(f.bits[:])
		} else {
			for i := f.top + 1; i < n; i++ {
				f.bits[i%replayWindow/64] &^= 1 << (i % 64)
			}
		}
		f.top = n
	case f.top-n >= replayWindow || f.bits[n%replayWindow/64]&(1<<(n%64)) != 0:
		return false
	}
	f.bits[n%replayWindow/64] |= 1 << (n % 64)
	return true
}

// maxOutstanding bounds the probes a Direct remembers; answers slower
// than staleProbe are not waited for.
const (
	maxOutstanding = 512
	staleProbe     = 2 * time.Second
)

// StartDirect starts looking for a direct path to peer (an [Addr] or an
// address [Conn.ReadFrom] returned). A Direct started earlier for the same
// peer is closed. It fails with [ErrNoDirect] if direct paths are off.
func (c *Conn) StartDirect(peerAddr net.Addr, cfg DirectConfig) (*Direct, error) {
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

// Close stops using and looking for the direct path: packets to the peer
// go over the relay again.
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
	d.peer.direct.CompareAndSwap(d, nil)
	ds := d.c.ds
	ds.mu.Lock()
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

// updateRoutesLocked replaces the route table with a copy changed by f.
func (ds *directSocket) updateRoutesLocked(f func(map[netip.AddrPort]*Direct)) {
	m := make(map[netip.AddrPort]*Direct, len(*ds.routes.Load())+1)
	for a, d := range *ds.routes.Load() {
		m[a] = d
	}
	f(m)
	ds.routes.Store(&m)
}

// provenFrom records that the peer answered one of this side's probes
// from addr, the address it went to: QUIC packets from there are the
// peer's. Past maxRoutes addresses it forgets the oldest, never the one
// in use.
func (d *Direct) provenFrom(addr netip.AddrPort) {
	d.mu.Lock()
	if d.closed || slices.Contains(d.routes, addr) {
		d.mu.Unlock()
		return
	}
	var evicted netip.AddrPort
	if len(d.routes) >= maxRoutes {
		i := 0
		if p := d.path.Load(); p != nil && p.addr == d.routes[0] {
			i = 1
		}
		evicted = d.routes[i]
		d.routes = slices.Delete(d.routes, i, i+1)
	}
	d.routes = append(d.routes, addr)
	d.mu.Unlock()
	ds := d.c.ds
	ds.mu.Lock()
	ds.updateRoutesLocked(func(m map[netip.AddrPort]*Direct) {
		if evicted.IsValid() && m[evicted] == d {
			delete(m, evicted)
		}
		m[addr] = d
	})
	ds.mu.Unlock()
}

// send sends a packet over the direct path if there is one the peer
// answered on recently, and reports whether it did.
func (d *Direct) send(p []byte) bool {
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
	path := d.path.Load()
	if path == nil {
		return PathInfo{Since: since}
	}
	now := d.c.now()
	trust := int64(trustIdle)
	if now-d.lastSend.Load() < int64(activeWindow) {
		trust = int64(trustActive)
	}
	if now-path.lastReply.Load() > trust {
		return PathInfo{Since: since}
	}
	return PathInfo{Direct: true, Addr: path.addr, RTT: time.Duration(path.rtt.Load()), Since: since}
}

// Path says how packets to peer travel now: over the relay unless a
// [Direct] for it has a working path.
func (c *Conn) Path(peerAddr net.Addr) PathInfo {
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

// gotCandidates handles the peer's candidates for round.
func (d *Direct) gotCandidates(round uint32, cands []netip.AddrPort) {
	d.mu.Lock()
	newer := round > d.round
	d.mu.Unlock()
	if newer && !d.c.ds.allowRound(d.peer.addr.ID) {
		d.log.Debug("direct search round refused: the peer starts too many", "round", round)
		return
	}
	d.mu.Lock()
	if d.closed || round < d.round {
		d.mu.Unlock()
		return
	}
	var mine []byte
	if round > d.round {
		// The peer started a round: join it.
		d.newRoundLocked(round)
		mine = d.candidatesMsg(round)
	}
	if d.remote != nil {
		d.mu.Unlock()
		return // a repeat
	}
	d.remote = slices.DeleteFunc(cands, func(a netip.AddrPort) bool { return !d.mayProbe(a) })
	for i, a := range d.remote {
		d.remote[i] = netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) // as the socket reports sources
	}
	if d.remote == nil {
		d.remote = []netip.AddrPort{}
	}
	remote := d.remote
	d.mu.Unlock()
	if mine != nil {
		d.cfg.Signal(mine)
	}

	// Openers, then ready: only then may the peer's probes cross.
	msgs := make([][]byte, len(remote))
	for i := range remote {
		msgs[i] = peerproto.AppendOpener(nil, peerproto.Opener{PathID: d.myID})
	}
	if err := d.c.ds.writeLowTTL(msgs, remote); err != nil {
		d.log.Debug("no openers sent", "err", err)
	}
	d.mu.Lock()
	if round != d.round || d.closed {
		d.mu.Unlock()
		return
	}
	d.opened = true
	d.maybeProbeLocked()
	d.mu.Unlock()
	d.cfg.Signal(peerproto.AppendReady(nil, peerproto.Ready{Round: round}))
}

// newRoundLocked forgets the last round's search (not the path in use).
func (d *Direct) newRoundLocked(round uint32) {
	d.round = round
	d.remote = nil
	d.opened, d.peerReady = false, false
	d.probeUntil = time.Time{}
	d.retryAt = time.Time{}
}

// maybeProbeLocked starts probing once both sides have sent openers.
func (d *Direct) maybeProbeLocked() {
	if d.opened && d.peerReady && d.probeUntil.IsZero() {
		d.probeUntil = time.Now().Add(discoveryFor)
		d.poke()
	}
}

// candidatesMsg encodes this side's candidates for round.
func (d *Direct) candidatesMsg(round uint32) []byte {
	return peerproto.AppendCandidates(nil, peerproto.Candidates{Round: round, Addrs: d.c.LocalCandidates()})
}

// probed answers a valid probe of the peer's that came from from, of size
// bytes, unless its txid was answered before; and probes from in turn if
// this side has not proven it.
func (d *Direct) probed(txid [8]byte, from netip.AddrPort, size int) {
	d.mu.Lock()
	if d.closed || !d.seen.fresh(binary.BigEndian.Uint64(txid[:])) {
		d.mu.Unlock()
		d.c.ds.replayed.Add(1)
		return
	}
	if until, ok := d.lossy[from]; ok && time.Now().Before(until) {
		// This side found that the path to from loses packets. Silence
		// tells the peer at once, through its heartbeats, even while its
		// own data check cannot (it sends too little into the hole to
		// judge) and the lost message waits inside a stalled session.
		d.mu.Unlock()
		return
	}
	back := !slices.Contains(d.routes, from) && d.mayProbe(from) && d.probeBacks.Allow()
	d.mu.Unlock()
	reply := peerproto.Reply{PathID: d.theirID, TxID: txid, Received: d.received.Load()}.Signed(d.key)
	d.c.ds.write(peerproto.AppendReply(make([]byte, 0, peerproto.ReplyLen), reply), from)
	if back {
		d.mu.Lock()
		if !d.closed {
			d.probeLocked(from, min(size, MaxDirectPacket), time.Now(), slices.Contains(d.remote, from))
		}
		d.mu.Unlock()
	}
}

// mayProbe reports whether this side may send probes to a: a peer may not
// make it probe its own loopback services, unless it offers loopback
// addresses itself (a demo, a test).
func (d *Direct) mayProbe(a netip.AddrPort) bool {
	loopback := slices.ContainsFunc(d.c.cfg.Direct.Addrs, netip.Addr.IsLoopback)
	return usableCandidate(a.Addr()) && a.Port() != 0 && (!a.Addr().IsLoopback() || loopback)
}

// replied handles a valid reply to one of this side's probes, which says
// the peer has taken received packets from this side.
func (d *Direct) replied(txid [8]byte, received uint64, from netip.AddrPort) {
	now := time.Now()
	d.mu.Lock()
	rec, ok := d.outgoing[txid]
	if !ok || d.closed || from != rec.to {
		// Answered already (a replay), or not from where the probe went:
		// nothing proven.
		d.mu.Unlock()
		return
	}
	delete(d.outgoing, txid)
	rtt := now.Sub(rec.at)
	path := d.path.Load()
	var lost []byte
	switch {
	case path != nil && path.addr == rec.to:
		path.lastReply.Store(d.c.now())
		path.rtt.Store(int64(rtt))
		if d.checkDataLocked(rec, received) {
			d.dropLossyLocked(now, "direct path loses packets: they go over the relay")
			lost = peerproto.AppendLost(nil, peerproto.Lost{Round: d.round})
		}
	case now.Before(d.lossy[rec.to]):
		// It lost packets lately: not yet.
	case path != nil && d.c.now()-path.lastReply.Load() <= int64(trustActive) && (path.named || !rec.named):
		// The path in use answers, and this one is no better.
	case !rec.full:
		// A small probe (one sent back to where a small probe of the
		// peer's came from) proved the address, not that the path carries
		// the largest packets: a full-size probe asks that.
		d.probeLocked(rec.to, MaxDirectPacket, now, rec.named)
	default:
		// The first path to answer, or one that answers while the one in
		// use does not, or one the peer named rather than one found by
		// probing back.
		np := &directPath{addr: rec.to, named: rec.named}
		np.lastReply.Store(d.c.now())
		np.rtt.Store(int64(rtt))
		d.path.Store(np)
		d.check = dataCheck{sent: rec.sent, received: received, at: rec.at}
		d.since = now
		d.retries = 0
		d.retryAt = time.Time{}
		d.probeUntil = now // done searching
		d.log.Debug("direct path", "addr", rec.to.String(), "rtt", rtt.Round(10*time.Microsecond).String())
		d.poke() // to watch it
	}
	d.mu.Unlock()
	d.provenFrom(rec.to)
	if lost != nil {
		// The peer stops sending over it too: a path that loses one
		// side's packets most likely loses the other's, and the peer
		// may send too little to see it soon.
		d.cfg.Signal(lost)
	}
}

// checkDataLocked adds the reply to rec, by which the peer has taken
// received packets, to the data check of the path in use, and reports
// whether the path loses the packets sent over it.
func (d *Direct) checkDataLocked(rec probeRecord, received uint64) bool {
	c := &d.check
	switch {
	case rec.at.Before(c.at):
		// Overtaken by a later probe's reply.
	case received > c.received:
		if rec.sent > c.sent {
			d.dataFails = 0 // packets cross
		}
		*c = dataCheck{sent: rec.sent, received: received, at: rec.at}
	case rec.sent == c.sent:
		c.at = rec.at // nothing sent since, nothing lost
	default:
		if c.stall.IsZero() {
			c.stall = rec.at
		}
		return rec.at.Sub(c.stall) >= dataStall && rec.sent-c.sent >= dataStallLeast
	}
	return false
}

// dropLossyLocked stops using the path in use, which loses packets (for
// the reason why), and keeps from taking up its address again, or
// searching, for a while: longer each time, until packets cross a path.
// With no path in use (the peer lost packets on its own), it keeps from
// taking up any address it has proven.
func (d *Direct) dropLossyLocked(now time.Time, why string) {
	bad := d.routes
	if path := d.path.Load(); path != nil {
		bad = []netip.AddrPort{path.addr}
		d.path.Store(nil)
		d.since = now
		d.log.Debug(why, "addr", path.addr.String())
	}
	// Answers to the probes already out would take a path up at once.
	for k, r := range d.outgoing {
		if slices.Contains(bad, r.to) {
			delete(d.outgoing, k)
		}
	}
	b := backoff.Backoff{Min: lostRetryMin, Max: lostRetryMax, N: d.dataFails}
	d.dataFails++
	d.retryAt = now.Add(b.Next())
	for a, until := range d.lossy {
		if !now.Before(until) {
			delete(d.lossy, a)
		}
	}
	if d.lossy == nil {
		d.lossy = make(map[netip.AddrPort]time.Time)
	}
	for _, a := range bad {
		d.lossy[a] = d.retryAt
	}
}

// probeLocked sends a probe of size bytes to addr; named says whether
// addr is one of the peer's candidates. mu must be held.
func (d *Direct) probeLocked(addr netip.AddrPort, size int, now time.Time, named bool) {
	if len(d.outgoing) >= maxOutstanding {
		// Forget the probes nobody answered.
		for k, r := range d.outgoing {
			if now.Sub(r.at) > staleProbe {
				delete(d.outgoing, k)
			}
		}
		if len(d.outgoing) >= maxOutstanding {
			return
		}
	}
	d.lastTxid++
	var txid [8]byte
	binary.BigEndian.PutUint64(txid[:], d.lastTxid)
	d.outgoing[txid] = probeRecord{to: addr, at: now, sent: d.sent.Load(), named: named, full: size >= MaxDirectPacket}
	probe := peerproto.Probe{PathID: d.myID, TxID: txid, Len: size}.Signed(d.key)
	d.c.ds.write(peerproto.AppendProbe(make([]byte, 0, max(size, peerproto.ProbeMinLen)), probe), addr)
}

// run keeps the search, the probes and the retries on schedule.
func (d *Direct) run() {
	if d.cfg.Initiator {
		d.startRound()
	}
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := d.tick(time.Now())
		t.Reset(time.Until(next))
		select {
		case <-t.C:
		case <-d.wake:
		case <-d.done:
			return
		case <-d.c.ctx.Done():
			d.Close()
			return
		}
	}
}

// startRound starts a new search round: this side's candidates go to the
// peer, which answers with its own.
func (d *Direct) startRound() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.newRoundLocked(d.round + 1)
	msg := d.candidatesMsg(d.round)
	d.mu.Unlock()
	d.cfg.Signal(msg)
}

// tick does what is due at now and returns when to come back.
func (d *Direct) tick(now time.Time) time.Time {
	d.mu.Lock()
	next := now.Add(time.Hour)
	at := func(t time.Time) {
		if t.Before(next) {
			next = t
		}
	}
	startRound := false
	if path := d.path.Load(); path != nil {
		age := time.Duration(d.c.now() - path.lastReply.Load())
		if age >= lostAfter {
			d.path.Store(nil)
			d.since = now
			d.log.Debug("direct path lost: packets go over the relay", "addr", path.addr.String())
			d.scheduleRetryLocked(now)
		} else {
			every := heartbeatIdle
			if time.Duration(d.c.now()-d.lastSend.Load()) < activeWindow {
				every = heartbeatActive
			}
			kicked := d.kick.Swap(false) && now.Sub(d.lastBeat) >= kickGap
			if kicked || now.Sub(d.lastBeat) >= every {
				d.probeLocked(path.addr, peerproto.ProbeMinLen, now, path.named)
				d.lastBeat = now
			}
			at(d.lastBeat.Add(every))
			at(now.Add(lostAfter - age))
		}
	}
	if !d.probeUntil.IsZero() && now.Before(d.probeUntil) {
		if now.Sub(d.lastProbe) >= discoveryEvery {
			for _, a := range d.remote {
				d.probeLocked(a, MaxDirectPacket, now, true)
			}
			d.lastProbe = now
		}
		at(d.lastProbe.Add(discoveryEvery))
		at(d.probeUntil)
	} else if !d.probeUntil.IsZero() && d.path.Load() == nil && d.retryAt.IsZero() {
		// The round ended with no path.
		d.log.Debug("no direct path found", "round", d.round, "candidates", len(d.remote))
		d.scheduleRetryLocked(now)
	}
	if !d.retryAt.IsZero() {
		if !now.Before(d.retryAt) {
			d.retryAt = time.Time{}
			startRound = true
		} else {
			at(d.retryAt)
		}
	}
	d.mu.Unlock()
	if startRound {
		d.startRound()
		return now // look again at once
	}
	return next
}

// scheduleRetryLocked plans the next round after a failed one, with
// backoff.
func (d *Direct) scheduleRetryLocked(now time.Time) {
	b := backoff.Backoff{Min: retryMin, Max: retryMax, N: d.retries}
	d.retries++
	d.retryAt = now.Add(b.Next())
}
