// Package paths carries an agent's E2E packets to its peers. A [Conn] is a
// [net.PacketConn] whose addresses are peers ([Addr]: an agent ID; or a
// LAN peer, a UDP address on the agent's LAN), not sockets; the E2E
// session above sees one stable address per peer.
//
// A Conn is the multiplexer between two paths it does not implement
// itself:
//
//	                E2E session (QUIC)
//	                        │ WriteTo / ReadFrom, by peer
//	                   paths.Conn ─── a Direct per peer: the search (direct.go)
//	                  ╱          ╲
//	relaylink.Attacher            udpsock.Socket (directsock.go)
//	the relay link (relay.go)     the UDP socket of direct paths
//
// Every packet can travel over the agent's relay link, which a
// [relaylink.Attacher] keeps attached (relay.go). Beside it, the Conn keeps
// one UDP socket for direct paths, a [udpsock.Socket] (directsock.go): once
// the layer above has an E2E session with a peer, it starts a [Direct] for
// it, a state machine (direct.go) that looks for a direct path by hole
// punching, moves the peer's packets onto it when a probe crosses, and
// back to the relay when probes stop crossing or the packets themselves
// do. The session above sees the same peer address throughout and notices
// nothing. WriteTo picks the path per packet; ReadFrom returns the packets
// of both.
//
// Where the relay forwards datagrams on its UDP port (server-hello
// extension 3), the same socket is bound there (relayudp.go), and a
// Direct keeps a second path to its peer through that port: the UDP relay
// path (relaypath.go), which packets take when no direct path works, with
// the probes, heartbeats, data check and fallback of direct paths. So a
// packet goes direct if it can, else through the relay's UDP port, else
// over the relay's TCP link, where a session to an [Addr] starts.
//
// Packets travel a third way, over the LAN (lan.go), where a session can
// start with no relay at all: a client that found a device on its LAN
// dials its session at a LAN peer ([Conn.LANAddr]), whose packets go
// straight to that UDP address from the same socket, and a device that
// accepts LAN peers ([DirectOptions.AcceptLAN]) answers from there. The
// session's TLS pins both keys as over the relay, and the device
// authorizes the client's key as always.
//
// A client of a fleet may be attached to several relays: its own, and
// those its relay redirected it to, where its devices are (redirect.go);
// a device's packets go over the relay that holds it, and a device gone
// silent is looked for again, so that the client follows it to another
// relay when its own dies.
//
// The Conn knows neither relay frames nor socket options: relaylink and
// udpsock, below it, know nothing of peers, paths or the session above.
package paths

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/udpsock"
)

// An Addr is a peer on the path layer: an agent's ID and, for clients, the
// instance (process) of that ID. It implements [net.Addr].
type Addr relayproto.Addr

// Network implements [net.Addr].
func (a Addr) Network() string { return "burrow" }

// String implements [net.Addr].
func (a Addr) String() string {
	if a.Instance == 0 {
		return a.ID.String()
	}
	return fmt.Sprintf("%s/%016x", a.ID, a.Instance)
}

// A peer is the [net.Addr] that ReadFrom returns for an Addr. Peers are
// interned, so that reading a packet allocates nothing, and carry their
// string, because QUIC compares addresses that are not UDP by String.
type peer struct {
	addr   Addr
	str    string
	direct atomic.Pointer[Direct] // the peer's direct path search, if any

	// Clients of a fleet (see redirect.go): the relay a redirect named for
	// this device, whether a packet came from it yet, and, until one
	// did, the last packets sent to it.
	via        atomic.Pointer[relaylink.Attacher]
	heard      atomic.Bool
	lastHeard  atomic.Int64 // Conn.now of the last packet from it over a relay; 0 if none
	lastLocate int64        // Conn.now of the last locate for it; the relocate loop's
	heldMu     sync.Mutex
	held       [][]byte // guarded by heldMu
}

func (p *peer) Network() string { return "burrow" }
func (p *peer) String() string  { return p.str }

// maxPeers bounds the interned peers; past it the table starts afresh,
// which is safe because peers are compared by String, not identity.
const maxPeers = 4096

// peerOf returns the interned peer for a.
func (c *Conn) peerOf(a Addr) *peer {
	c.peersMu.RLock()
	p := c.peers[a]
	c.peersMu.RUnlock()
	if p != nil {
		return p
	}
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	if p = c.peers[a]; p == nil {
		if len(c.peers) >= maxPeers {
			c.peers = make(map[Addr]*peer)
		}
		p = &peer{addr: a, str: a.String()}
		if c.ds != nil {
			c.ds.mu.Lock()
			if d := c.ds.byPeer[a]; d != nil {
				p.direct.Store(d)
			}
			c.ds.mu.Unlock()
		}
		c.peers[a] = p
	}
	return p
}

// peerFor returns the peer of an address given to the Conn's methods (an
// [Addr] or one that ReadFrom returned), or nil for any other address.
func (c *Conn) peerFor(a net.Addr) *peer {
	switch a := a.(type) {
	case Addr:
		return c.peerOf(a)
	case *peer:
		return a
	}
	return nil
}

// Config configures a [Conn].
type Config struct {
	// Identity is the agent's key. Required.
	Identity *identity.Identity
	// Role is the agent's role on the relay. Required.
	Role relayproto.Role
	// Relay is the relay to attach to. Required.
	Relay relaylink.RelayConfig
	// RelayFallback lists more relay addresses, checked as Relay says,
	// and Region is the agent's region among a fleet's relays, as
	// [relaylink.Config.Fallback] and [relaylink.Config.Region] say.
	// Empty: Relay alone, and no region.
	RelayFallback []string
	Region        string
	// Dial opens the TCP connection to the relay. Nil uses a [net.Dialer].
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives attach and detach events. Nil discards them.
	Logger *slog.Logger
	// OnPeerGone, if set, is called (on the relay reader's goroutine; it
	// must not block) when the relay could not deliver to a peer.
	OnPeerGone func(PeerGone)
	// QueueLen bounds the packets waiting to be read and to be sent; beyond
	// it packets are dropped and counted. Zero means 1024.
	QueueLen int
	// MinBackoff and MaxBackoff bound the wait between attach attempts.
	// Zero means 250ms and 8s.
	MinBackoff, MaxBackoff time.Duration
	// ReattachSpread spreads the return of agents that lost the relay at
	// the same moment (it crashed or restarted), as
	// [relaylink.Config.ReattachSpread] says. Zero means no spread.
	ReattachSpread time.Duration
	// EnrollToken, for a device, is presented to a relay that has not
	// enrolled it yet, and OnEnrolled is called once it has, as
	// [relaylink.Config.EnrollToken] and [relaylink.Config.OnEnrolled]
	// say. An empty token presents none.
	EnrollToken string
	OnEnrolled  func()
	// OnRemoved, if set, is called when the relay sends the agent away
	// because its operator removed it, as [relaylink.Config.OnRemoved]
	// says.
	OnRemoved func()
	// Access, for a device, says who may reach it: the client IDs, and the
	// relay tokens of its pending invites. It is asked at every attach and
	// after [Conn.AccessChanged]; the relay routes no one else to the
	// device. Nil lets no one through.
	Access func() (clients []identity.ID, invites [][32]byte)

	// Direct configures direct paths.
	Direct DirectOptions
}

// DirectOptions configure a Conn's UDP socket: its direct paths, and
// the UDP relay path (relayudp.go), which share it.
type DirectOptions struct {
	// Disable turns direct paths off: no candidates, no search, no
	// direct probe answered. The zero value looks for direct paths.
	Disable bool
	// NoRelayUDP turns the UDP relay path off: no binding at the relay's
	// UDP port, packets through the relay go over its TCP link only. The
	// zero value uses the UDP relay path where the relay offers it. With
	// both Disable and NoRelayUDP, the Conn opens no UDP socket and
	// [Conn.StartDirect] fails with [ErrNoDirect].
	NoRelayUDP bool
	// Port is the UDP port of the socket; zero picks one.
	Port int
	// Addrs, if set, are the addresses offered to peers as this agent's
	// direct candidates (with the socket's port) instead of its
	// interfaces' addresses. The address the relay sees is offered too.
	Addrs []netip.Addr
	// ListenUDP, if set, opens the socket instead (tests use it to put
	// the socket in a network namespace, or on an in-memory network).
	ListenUDP func() (udpsock.Conn, error)
	// InterfaceAddrs, if set, lists the interface addresses instead of
	// the system (tests).
	InterfaceAddrs func() ([]netip.Addr, error)
	// AcceptLAN, for a device, lets a client on one of its links start a
	// session over the LAN, with no relay: a QUIC handshake packet from
	// an on-link address that no peer claims makes a LAN peer of it
	// (lan.go says which addresses are on-link, and how many such peers
	// are kept). The zero value drops QUIC packets from addresses no
	// Direct proved, as from any stranger. Either way, [Conn.LANAddr]
	// works while the Conn has its UDP socket.
	AcceptLAN bool
}

func (c *Config) validate() error {
	switch {
	case c.Identity == nil:
		return errors.New("paths: Config.Identity is required")
	case c.Role != relayproto.RoleDevice && c.Role != relayproto.RoleClient:
		return errors.New("paths: Config.Role must be device or client")
	case c.Relay.Addr == "":
		return errors.New("paths: Config.Relay.Addr is required")
	case c.MinBackoff < 0 || c.MaxBackoff < 0 || c.ReattachSpread < 0:
		return errors.New("paths: negative backoff or reattach spread")
	}
	for _, addr := range append([]string{c.Relay.Addr}, c.RelayFallback...) {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("paths: relay address %q: %w (want host:port)", addr, err)
		}
	}
	return nil
}

// PeerGone reports that the relay could not deliver a packet to Peer.
type PeerGone struct {
	Peer     Addr
	Reason   relayproto.GoneReason
	LastSeen time.Time // zero if unknown
}

// Status describes a [Conn]'s relay attachment, and counts its packets.
type Status struct {
	relaylink.Status
	// Sent, Received and Dropped count packets since the Conn started.
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	Dropped  uint64 `json:"dropped"`
}

// A Conn is an agent's packet connection to its peers. Create it with
// [Listen]; it attaches to the relay in the background and keeps doing so
// until closed. It is safe for concurrent use.
type Conn struct {
	// Set by Listen, then only read.
	cfg      Config
	log      *slog.Logger
	instance uint64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	relay   *relaylink.Attacher // the relay path
	fleet   fleetRelays         // clients: the other relays of a fleet, by redirect
	inFleet atomic.Bool         // clients: the first link's relay was vouched for by a fleet ID
	ds      *directSocket       // the direct paths; nil if off

	intentsMu sync.Mutex
	intents   map[identity.ID][32]byte // a client's pairing intents; guarded by intentsMu

	recvq        chan inPacket
	readDeadline deadline

	peersMu sync.RWMutex
	peers   map[Addr]*peer // guarded by peersMu

	epoch time.Time // for now

	sent, received, dropped atomic.Uint64
}

// now returns the monotonic time since the Conn started, cheaply
// comparable in atomics.
func (c *Conn) now() int64 { return int64(time.Since(c.epoch)) }

// An inPacket waits in the receive queue: a packet of the relay, or one of
// a direct path, whose bytes are (*buf)[:n].
type inPacket struct {
	relayed *relaylink.Packet
	buf     *[]byte // from packetPool
	n       int
	from    net.Addr // a *peer or a *lanPeer
}

func (p inPacket) bytes() []byte {
	if p.relayed != nil {
		return p.relayed.Data
	}
	return (*p.buf)[:p.n]
}

func (p inPacket) release() {
	if p.relayed != nil {
		p.relayed.Release()
	} else {
		packetPool.Put(p.buf)
	}
}

// ErrClosed is returned by a closed [Conn]'s methods; it matches net.ErrClosed.
var ErrClosed = fmt.Errorf("paths: %w", net.ErrClosed)

// Listen returns a Conn for cfg and starts attaching to the relay.
func Listen(cfg Config) (*Conn, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 1024
	}
	var inst [8]byte
	rand.Read(inst[:])
	c := &Conn{
		cfg:          cfg,
		log:          cfg.Logger,
		instance:     binary.BigEndian.Uint64(inst[:]) | 1, // never 0
		recvq:        make(chan inPacket, cfg.QueueLen),
		readDeadline: makeDeadline(),
		peers:        make(map[Addr]*peer),
		epoch:        time.Now(),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("relay", cfg.Relay.Addr)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if !cfg.Direct.Disable || !cfg.Direct.NoRelayUDP {
		if err := c.listenDirect(); err != nil {
			// The relay still carries everything.
			c.log.Warn("direct paths and the UDP relay path are off", "err", err)
		}
	}
	c.relay = relaylink.Attach(c.relayConfig())
	if cfg.Role == relayproto.RoleClient && !cfg.Relay.ID.IsZero() {
		c.wg.Go(c.relocateLoop)
	}
	return c, nil
}

// directOn reports whether the Conn looks for direct paths.
func (c *Conn) directOn() bool { return c.ds != nil && !c.cfg.Direct.Disable }

// relayUDPOn reports whether the Conn uses the UDP relay path.
func (c *Conn) relayUDPOn() bool { return c.ds != nil && !c.cfg.Direct.NoRelayUDP }

// LocalAddr returns the agent's own address.
func (c *Conn) LocalAddr() net.Addr {
	a := Addr{ID: c.cfg.Identity.ID()}
	if c.cfg.Role == relayproto.RoleClient {
		a.Instance = c.instance
	}
	return a
}

// WriteTo sends b to the peer addr, which must be an [Addr], a LAN peer
// ([Conn.LANAddr]) or an address ReadFrom returned: over the peer's direct
// path if it has a working one, else over the relay's UDP port if that
// path works, else over the relay's TCP link; to a LAN peer, straight to
// its address. It never blocks: with no link to the relay, or a full
// send queue, the packet is dropped (and counted), as a network would; the
// E2E session retransmits.
func (c *Conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c.ctx.Err() != nil {
		return 0, ErrClosed
	}
	var dst Addr
	var p *peer
	switch a := addr.(type) {
	case Addr:
		dst = a
		if c.ds != nil || c.cfg.Role == relayproto.RoleClient {
			p = c.peerOf(a)
		}
	case *peer:
		dst, p = a.addr, a
	case *lanPeer:
		return c.writeLAN(b, a)
	default:
		return 0, fmt.Errorf("paths: address %v is %T, want paths.Addr", addr, addr)
	}
	if len(b) > relayproto.MaxPacketLen {
		return 0, fmt.Errorf("paths: packet of %d bytes exceeds %d", len(b), relayproto.MaxPacketLen)
	}
	if p != nil {
		if d := p.direct.Load(); d != nil && d.send(b) {
			c.sent.Add(1)
			return len(b), nil
		}
	}
	if p != nil {
		if via := p.via.Load(); via != nil && via.Send(relayproto.Addr(dst), b) {
			c.sent.Add(1)
			return len(b), nil
		}
		if c.inFleet.Load() && !p.heard.Load() {
			p.hold(b)
		}
	}
	if !c.relay.Send(relayproto.Addr(dst), b) {
		c.dropped.Add(1)
		return len(b), nil
	}
	c.sent.Add(1)
	return len(b), nil
}

// writeLAN sends b straight to the LAN peer p.
func (c *Conn) writeLAN(b []byte, p *lanPeer) (int, error) {
	if c.ds == nil {
		return 0, ErrNoSocket // p is another Conn's
	}
	if len(b) > MaxDirectPacket {
		return 0, fmt.Errorf("paths: packet of %d bytes exceeds %d", len(b), MaxDirectPacket)
	}
	c.ds.lan.sending(p)
	if !c.ds.enqueue(b, p.ap) {
		c.dropped.Add(1)
		return len(b), nil
	}
	c.sent.Add(1)
	return len(b), nil
}

// ReadFrom reads the next packet from any peer.
func (c *Conn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case pkt := <-c.recvq:
		n := copy(p, pkt.bytes())
		pkt.release()
		return n, pkt.from, nil
	case <-c.ctx.Done():
		return 0, nil, ErrClosed
	case <-c.readDeadline.wait():
		return 0, nil, os.ErrDeadlineExceeded
	}
}

// deliver queues a received packet for ReadFrom, dropping it if the queue is
// full.
func (c *Conn) deliver(pkt inPacket) {
	select {
	case c.recvq <- pkt:
		c.received.Add(1)
	default:
		pkt.release()
		c.dropped.Add(1)
	}
}

// SetReadDeadline implements [net.PacketConn].
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.readDeadline.set(t)
	return nil
}

// SetWriteDeadline implements [net.PacketConn]; writes never block, so it
// has nothing to do.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline implements [net.PacketConn].
func (c *Conn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadBuffer and SetWriteBuffer exist so that QUIC, finding them, does
// not warn about socket buffers: the queues here are sized by Config.
func (c *Conn) SetReadBuffer(int) error { return nil }

// SetWriteBuffer: see [Conn.SetReadBuffer].
func (c *Conn) SetWriteBuffer(int) error { return nil }

// closeDrain bounds how long Close waits for queued packets to be written.
const closeDrain = 500 * time.Millisecond

// Close sends what is queued (for up to half a second), detaches from the
// relay and waits for every goroutine the Conn started. It is idempotent.
func (c *Conn) Close() error {
	open := c.ctx.Err() == nil
	if open {
		// What the E2E sessions sent last (a QUIC close, say) goes out.
		if c.ds != nil {
			c.ds.sock.Flush(closeDrain)
		}
		c.relay.Drain(closeDrain)
	}
	c.cancel()
	c.closeFleetRelays(open)
	c.relay.Close()
	if c.ds != nil {
		c.ds.sock.Close()
	}
	c.wg.Wait()
	for {
		select {
		case pkt := <-c.recvq:
			pkt.release()
			continue
		default:
		}
		return nil
	}
}

// deadline is a settable read deadline, like the one of net.Pipe.
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer   // guarded by mu
	cancel chan struct{} // closed when the deadline passes; guarded by mu
}

func makeDeadline() deadline { return deadline{cancel: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired and closed it; wait is already done
	}
	d.timer = nil
	closed := false
	select {
	case <-d.cancel:
		closed = true
	default:
	}
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		ch := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(ch) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}
