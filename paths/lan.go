package paths

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// LAN peers: the third way packets travel, where a session can start with
// no relay at all.
//
// A LAN peer is a path-layer address that names a UDP address
// ([netip.AddrPort]) instead of an agent: packets written to it go
// straight there from the direct socket, never over a relay, and the QUIC
// packets that come from there (and that no [Direct]'s proven route
// claims) are read as from it. A client makes one with [Conn.LANAddr], for
// a device it found on its LAN, and dials its session there. A device
// with [DirectOptions.AcceptLAN] makes one for an address that sends it a
// QUIC handshake packet (a long header) unasked, but only if that address
// is on one of its links: inside a prefix of one of its interfaces
// (loopback's included), or IPv6 link-local with a zone. Off-link packets
// are dropped and counted, as without AcceptLAN.
//
// Nothing here vouches for the peer: its address is only where its
// packets come from. QUIC's own address validation (a server sends at
// most three times what an unvalidated address sent it) keeps a forged
// source from turning the device into an amplifier, and the session's TLS
// pins both keys, so the device still authorizes every session by the key
// its client proved, as over the relay. The table of LAN peers is bounded
// (maxLANPeers; past it the one heard from least recently goes, never one
// heard from in the last lanLive, which a live session always is, as its
// keepalives cross at least that often), new ones are rate limited
// (lanNewEvery, lanNewBurst: refusals are counted), and a peer with no
// packet either way for lanIdle is forgotten (the table is swept as peers
// are added). A forgotten peer still given to WriteTo comes back.
//
// A LAN peer's path is direct from the start: [Conn.Path] reports it
// with LAN set, and [Conn.StartDirect] fails with [ErrLANPeer], as there
// is no path to look for.
const (
	maxLANPeers   = 256
	lanNewEvery   = time.Second / 20
	lanNewBurst   = 50
	lanIdle       = 2 * time.Minute
	lanLive       = 30 * time.Second // a session's keepalives cross more often
	onLinkRefresh = 5 * time.Second  // interface prefixes are listed again
)

// ErrLANPeer is returned by [Conn.StartDirect] for a LAN peer (see
// [Conn.LANAddr]): its path is direct already, so there is none to look
// for.
var ErrLANPeer = errors.New("paths: the peer is on the LAN: its path is direct already")

// ErrNoSocket is returned by [Conn.LANAddr] when the Conn has no UDP
// socket (direct paths and the UDP relay path are both off).
var ErrNoSocket = errors.New("paths: no UDP socket: direct paths and the UDP relay path are disabled")

// A lanPeer is the [net.Addr] of a LAN peer. LAN peers are interned, and
// compared by String as peers are.
type lanPeer struct {
	ap      netip.AddrPort
	str     string
	last    atomic.Int64 // Conn.now of the last packet either way
	evicted atomic.Bool  // no longer in the table
}

func (p *lanPeer) Network() string { return "burrow-lan" }
func (p *lanPeer) String() string  { return p.str }

// IsLAN reports whether addr is a LAN peer's (see [Conn.LANAddr]): a
// session with it started on the LAN, not through a relay.
func IsLAN(addr net.Addr) bool {
	_, ok := addr.(*lanPeer)
	return ok
}

// lanTable holds a Conn's LAN peers.
type lanTable struct {
	now     func() int64
	accept  bool // DirectOptions.AcceptLAN
	onLink  *onLink
	newOnes *rate.Limiter
	refused atomic.Uint64 // new peers refused: rate limited, or the table full of live ones

	mu    sync.RWMutex
	peers map[netip.AddrPort]*lanPeer // guarded by mu
}

func newLANTable(now func() int64, accept bool, prefixes func() ([]netip.Prefix, error)) *lanTable {
	return &lanTable{
		now:     now,
		accept:  accept,
		onLink:  &onLink{list: prefixes},
		newOnes: rate.NewLimiter(rate.Every(lanNewEvery), lanNewBurst),
		peers:   make(map[netip.AddrPort]*lanPeer),
	}
}

// lookup returns the LAN peer at ap, or nil.
func (t *lanTable) lookup(ap netip.AddrPort) *lanPeer {
	t.mu.RLock()
	p := t.peers[ap]
	t.mu.RUnlock()
	return p
}

// heard returns the peer that a QUIC packet from ap comes from, making one
// if the table accepts strangers, the packet opens a handshake (handshake)
// and ap is on-link; nil if none.
func (t *lanTable) heard(ap netip.AddrPort, handshake bool) *lanPeer {
	p := t.lookup(ap)
	if p == nil {
		if !t.accept || !handshake || !t.onLink.contains(ap.Addr()) {
			return nil
		}
		if p = t.add(ap, false); p == nil {
			return nil
		}
	}
	p.last.Store(t.now())
	return p
}

// add returns the peer at ap, adding it if there is none. Unless local (the
// agent itself asked for it), a new peer must pass the rate limit and find
// room; a local one is added anyway.
func (t *lanTable) add(ap netip.AddrPort, local bool) *lanPeer {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.peers[ap]; p != nil {
		return p
	}
	if !local && !t.newOnes.Allow() {
		t.refused.Add(1)
		return nil
	}
	now := t.now()
	t.sweepLocked(now)
	if len(t.peers) >= maxLANPeers && !t.evictLocked(now) && !local {
		t.refused.Add(1)
		return nil
	}
	p := &lanPeer{ap: ap, str: "lan/" + ap.String()}
	p.last.Store(now)
	t.peers[ap] = p
	return p
}

// sweepLocked forgets the peers idle for lanIdle.
func (t *lanTable) sweepLocked(now int64) {
	for ap, p := range t.peers {
		if now-p.last.Load() >= int64(lanIdle) {
			t.forgetLocked(ap, p)
		}
	}
}

// evictLocked forgets the peer heard from least recently, unless every
// peer was heard from in the last lanLive, and reports whether it did.
func (t *lanTable) evictLocked(now int64) bool {
	var oldest *lanPeer
	for _, p := range t.peers {
		if oldest == nil || p.last.Load() < oldest.last.Load() {
			oldest = p
		}
	}
	if oldest == nil || now-oldest.last.Load() < int64(lanLive) {
		return false
	}
	t.forgetLocked(oldest.ap, oldest)
	return true
}

func (t *lanTable) forgetLocked(ap netip.AddrPort, p *lanPeer) {
	delete(t.peers, ap)
	p.evicted.Store(true)
}

// sending notes a packet sent to p, putting it back in the table if it
// was forgotten (a peer the session above still uses).
func (t *lanTable) sending(p *lanPeer) {
	p.last.Store(t.now())
	if p.evicted.Load() {
		t.mu.Lock()
		if t.peers[p.ap] == nil {
			p.evicted.Store(false)
			t.peers[p.ap] = p
		}
		t.mu.Unlock()
	}
}

// len returns the number of LAN peers.
func (t *lanTable) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.peers)
}

// LANAddr returns the LAN peer at ap, a UDP address on this agent's LAN
// (where discovery found a device): a path-layer address to dial a
// session at. Packets written to it go straight to ap from the UDP socket
// of direct paths, never over a relay; the QUIC packets from ap that no
// [Direct]'s path claims are read as from it. Its String is "lan/" and
// ap. It fails with [ErrNoSocket] if the Conn has no UDP socket.
func (c *Conn) LANAddr(ap netip.AddrPort) (net.Addr, error) {
	if c.ds == nil {
		return nil, ErrNoSocket
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if !ap.IsValid() || ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() {
		return nil, fmt.Errorf("paths: LAN address %v: want a unicast address and a port", ap)
	}
	return c.ds.lan.add(ap, true), nil
}

// DirectPort returns the port of the Conn's UDP socket (of direct paths,
// LAN peers and the UDP relay path); 0 if it has none.
func (c *Conn) DirectPort() uint16 {
	if c.ds == nil {
		return 0
	}
	return c.ds.port
}

// SocketStats counts what the Conn's UDP socket turned away, and its LAN
// peers.
type SocketStats struct {
	// Dropped counts the QUIC packets from addresses that no peer
	// claims (no Direct proved them, no LAN peer is there), and relayed
	// packets for no peer.
	Dropped uint64 `json:"dropped"`
	// Strange counts datagrams that were malformed or failed their MAC.
	Strange uint64 `json:"strange"`
	// LANPeers is the number of LAN peers; LANRefused counts the new
	// ones refused (too many too fast, or the table full of live ones).
	LANPeers   int    `json:"lan_peers"`
	LANRefused uint64 `json:"lan_refused"`
}

// SocketStats returns the counts of the Conn's UDP socket; zero if it
// has none.
func (c *Conn) SocketStats() SocketStats {
	ds := c.ds
	if ds == nil {
		return SocketStats{}
	}
	return SocketStats{Dropped: ds.dropped.Load(), Strange: ds.strange.Load(),
		LANPeers: ds.lan.len(), LANRefused: ds.lan.refused.Load()}
}

// onLink tells whether an address is on one of this host's links, from
// its interfaces' prefixes, listed at most every onLinkRefresh.
type onLink struct {
	list func() ([]netip.Prefix, error)

	mu       sync.Mutex
	prefixes []netip.Prefix // guarded by mu
	at       time.Time      // when they were listed; guarded by mu
}

func (o *onLink) contains(a netip.Addr) bool {
	o.mu.Lock()
	if now := time.Now(); o.at.IsZero() || now.Sub(o.at) >= onLinkRefresh {
		if ps, err := o.list(); err == nil {
			o.prefixes = ps
		}
		o.at = now
	}
	ps := o.prefixes
	o.mu.Unlock()
	return onLinkIn(ps, a)
}

// onLinkIn reports whether a is inside one of prefixes, or is an IPv6
// link-local address with a zone (which names its link).
func onLinkIn(prefixes []netip.Prefix, a netip.Addr) bool {
	if a.Is6() && a.IsLinkLocalUnicast() {
		return a.Zone() != ""
	}
	a = a.Unmap().WithZone("")
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// interfacePrefixes lists the addresses of the interfaces that are up,
// each with the length of its network's prefix.
func interfacePrefixes() ([]netip.Prefix, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if p, ok := prefixOf(ipn); ok {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// prefixOf returns an interface's address with the length of its
// network's prefix. A mask that is not a prefix gives the address alone,
// never a /0 that would put every address on the link.
func prefixOf(ipn *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(ipn.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	ones, bits := ipn.Mask.Size()
	switch {
	case bits == 0:
		ones = ip.BitLen()
	case ip.Is4() && ones > 32:
		ones -= 96
	}
	p := netip.PrefixFrom(ip, ones)
	return p, p.IsValid()
}
