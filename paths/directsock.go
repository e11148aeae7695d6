package paths

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/peerproto"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/udpsock"
)

// The direct socket: one udpsock.Socket per Conn, shared by the Directs of
// every peer and by the LAN peers (lan.go). Its datagrams are QUIC
// packets, which go to the peer whose Direct proved their source address,
// else to the LAN peer at that address, or the Directs' own messages
// (direct.go), or the relay's answer to a binding request (below).

// directSocket is a Conn's UDP socket and the tables that route its
// datagrams to the Directs.
type directSocket struct {
	sock *udpsock.Socket
	port uint16

	observed         atomic.Pointer[netip.AddrPort] // from the relay's UDP port
	binding          atomic.Pointer[bindingRequest]
	routes           atomic.Pointer[map[netip.AddrPort]*Direct] // copy on write, under mu
	bindings         atomic.Pointer[[]*relayBinding]            // at relays' UDP ports; copy on write, under mu
	chans            atomic.Pointer[map[relayChan]*Direct]      // peers' channels at relays; copy on write, under mu
	dropped, strange atomic.Uint64
	replayed         atomic.Uint64 // probes refused: their txid was answered before

	lan *lanTable // the LAN peers

	mu     sync.Mutex
	ids    map[[8]byte]*Direct           // both path IDs of every Direct; guarded by mu
	byPeer map[Addr]*Direct              // guarded by mu
	rounds map[identity.ID]*rate.Limiter // search rounds each peer may start; guarded by mu
}

// maxDatagram is the largest datagram taken from the direct socket, as
// large as a relay's packet frame; a larger one is from no peer.
const maxDatagram = relayproto.HeaderLen + relayproto.AddrLen + relayproto.MaxPacketLen

// packetPool holds the packets of direct paths waiting in the receive
// queue.
var packetPool = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// listenDirect opens the socket of direct paths.
func (c *Conn) listenDirect() error {
	ds := &directSocket{ids: make(map[[8]byte]*Direct), byPeer: make(map[Addr]*Direct)}
	routes := make(map[netip.AddrPort]*Direct)
	ds.routes.Store(&routes)
	chans := make(map[relayChan]*Direct)
	ds.chans.Store(&chans)
	ds.bindings.Store(new([]*relayBinding))
	ds.lan = newLANTable(c.now, c.cfg.Direct.AcceptLAN, interfacePrefixes)
	// No Direct exists yet to use ds.sock while the socket starts reading.
	c.ds = ds
	cfg := udpsock.Config{Receive: c.directDatagram, QueueLen: c.cfg.QueueLen}
	var err error
	if c.cfg.Direct.ListenUDP != nil {
		var conn udpsock.Conn
		if conn, err = c.cfg.Direct.ListenUDP(); err == nil {
			ds.sock = udpsock.New(conn, cfg)
		}
	} else {
		ds.sock, err = udpsock.Listen(c.cfg.Direct.Port, cfg)
	}
	if err != nil {
		c.ds = nil
		return fmt.Errorf("paths: socket for direct paths: %w", err)
	}
	ds.port = ds.sock.Port()
	return nil
}

// write sends b to addr from the direct socket now.
func (ds *directSocket) write(b []byte, addr netip.AddrPort) error {
	return ds.sock.WriteTo(b, addr)
}

// writeLowTTL sends each of msgs with a TTL that ends them two hops away.
// It sends nothing if it cannot set the TTL: such messages would travel
// all the way, which is worse than none.
func (ds *directSocket) writeLowTTL(msgs [][]byte, to []netip.AddrPort) error {
	return ds.sock.WriteLowTTL(msgs, to, openerTTL)
}

// enqueue queues an end-to-end packet for addr, to be sent in a batch, and
// reports whether it fit.
func (ds *directSocket) enqueue(p []byte, addr netip.AddrPort) bool {
	return ds.sock.Enqueue(p, addr)
}

// directDatagram handles a datagram read from the direct socket; b is
// valid only during the call.
func (c *Conn) directDatagram(b []byte, from netip.AddrPort) {
	ds := c.ds
	if len(b) > maxDatagram {
		ds.strange.Add(1)
		return
	}
	if len(b) > 0 && b[0]&0x40 != 0 {
		// A QUIC packet: from a peer only if it proved this address, or
		// from the LAN peer there (a long header opens a handshake).
		if d := (*ds.routes.Load())[from]; d != nil {
			bp := packetPool.Get().(*[]byte)
			n := copy((*bp)[:cap(*bp)], b)
			d.received.Add(1)
			if c.cfg.Role == relayproto.RoleClient {
				d.peer.lastHeard.Store(c.now())
			}
			c.deliver(inPacket{buf: bp, n: n, from: d.peer})
			return
		}
		if p := ds.lan.heard(from, b[0]&0x80 != 0); p != nil {
			bp := packetPool.Get().(*[]byte)
			n := copy((*bp)[:cap(*bp)], b)
			c.deliver(inPacket{buf: bp, n: n, from: p})
			return
		}
		ds.dropped.Add(1)
		return
	}
	c.directMessage(b, from)
}

type bindingRequest struct {
	to   netip.AddrPort
	txid [8]byte
}

// bindingAttempts and bindingEvery pace binding requests.
const (
	bindingAttempts = 5
	bindingEvery    = 500 * time.Millisecond
)

// bind asks the relay's UDP port (port, with token) for the address of the
// direct socket, until it answers or l ends.
func (c *Conn) bind(l *relaylink.Link, b relayproto.UDPBinding) {
	to, ok := relayUDPAddr(l, b)
	if !ok {
		return
	}
	req := &bindingRequest{to: to}
	rand.Read(req.txid[:])
	c.ds.binding.Store(req)
	msg := relayproto.AppendBindingRequest(nil, b.Token, req.txid)
	t := time.NewTicker(bindingEvery)
	defer t.Stop()
	for range bindingAttempts {
		if c.ds.binding.Load() != req {
			return // answered
		}
		c.ds.write(msg, to)
		select {
		case <-t.C:
		case <-l.Context().Done():
			return
		}
	}
	if c.ds.binding.CompareAndSwap(req, nil) {
		c.log.Debug("relay's UDP port did not answer", "addr", to.String())
	}
}

// relayUDPAddr returns the address of the relay's UDP port: l's relay's
// address, with b's port.
func relayUDPAddr(l *relaylink.Link, b relayproto.UDPBinding) (netip.AddrPort, bool) {
	ta, ok := l.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	ip, _ := netip.AddrFromSlice(ta.IP)
	return netip.AddrPortFrom(ip.Unmap(), b.Port), true
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
	switch b[0] {
	case relayproto.UDPBound, relayproto.UDPAlive, relayproto.UDPRecv:
		c.relayDatagram(b, from)
		return
	}
	m, err := peerproto.ParseDatagram(b)
	switch m := m.(type) {
	case peerproto.Probe:
		if !c.directOn() {
			return // direct paths are off: no answer
		}
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

// updateRoutesLocked replaces the route table with a copy changed by f.
func (ds *directSocket) updateRoutesLocked(f func(map[netip.AddrPort]*Direct)) {
	m := make(map[netip.AddrPort]*Direct, len(*ds.routes.Load())+1)
	for a, d := range *ds.routes.Load() {
		m[a] = d
	}
	f(m)
	ds.routes.Store(&m)
}
