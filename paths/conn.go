// Package paths carries an agent's E2E packets to its peers. A [Conn] is a
// [net.PacketConn] whose addresses are peers ([Addr]: an agent ID), not
// sockets; the E2E session above sees one stable address per peer.
//
// Every packet can travel over the agent's relay session: a TLS connection
// to the relay, kept alive and re-established with backoff when it is lost
// (see relay.go). Beside it, the Conn keeps one UDP socket for direct paths
// (see direct.go): once the layer above has an E2E session with a peer, it
// starts a [Direct] for it, which looks for a direct path by hole punching,
// moves the peer's packets onto it when a probe crosses, and back to the
// relay when probes stop crossing or the packets themselves do. The session above sees the same peer
// address throughout and notices nothing. On both paths packets travel in
// batches: a TLS record to the relay holds a burst of them, and the direct
// socket sends and receives a burst with one system call where the kernel
// segments and coalesces UDP (see direct_send.go).
package paths

import (
	"context"
	"crypto/rand"
	"crypto/x509"
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
	"github.com/burrow-tunnel/burrow/relayproto"
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

// RelayConfig says which relay an agent attaches to and how it checks it.
type RelayConfig struct {
	// Addr is the relay's host:port. Required.
	Addr string
	// ID pins the relay's key: the relay must present, in the TLS
	// handshake, a certificate whose key has this ID, whoever signed it
	// (RootCAs are not used). If zero, the relay's certificate must chain
	// to a trusted root for Addr's host instead (RootCAs).
	ID identity.ID
	// RootCAs are the roots a CA-signed relay certificate is checked
	// against when ID is zero; nil means the system roots.
	RootCAs *x509.CertPool
}

// Config configures a [Conn].
type Config struct {
	// Identity is the agent's key. Required.
	Identity *identity.Identity
	// Role is the agent's role on the relay. Required.
	Role relayproto.Role
	// Relay is the relay to attach to. Required.
	Relay RelayConfig
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
	// the same moment (it crashed or restarted: their connections were
	// closed or reset together). After such a loss the agent waits a
	// random time in [0, ReattachSpread) before its first attempt, and at
	// least a random time in [ReattachSpread/2, ReattachSpread) between
	// attempts until it is attached again, so that a relay coming back
	// sees its agents return evenly over ReattachSpread rather than all
	// at once. A session lost to silence (keepalive) is not spread: its
	// agents noticed at different moments already. Zero means no spread.
	ReattachSpread time.Duration
	// EnrollToken, for a device, is presented to a relay that has not
	// enrolled it yet: at each attach until the relay first admits the
	// device, and never after, so that a device the relay's operator
	// removes is not enrolled again by it. Empty presents none.
	EnrollToken string
	// OnEnrolled, if set, is called once when the relay first admits a
	// device that has an EnrollToken (it is enrolled there; the token is
	// no longer needed), on the attach loop's goroutine: it must not
	// block.
	OnEnrolled func()
	// Access, for a device, says who may reach it: the client IDs, and the
	// relay tokens of its pending invites. It is asked at every attach and
	// after [Conn.AccessChanged]; the relay routes no one else to the
	// device. Nil lets no one through.
	Access func() (clients []identity.ID, invites [][32]byte)

	// Direct configures direct paths.
	Direct DirectOptions
}

// DirectOptions configure a Conn's direct paths.
type DirectOptions struct {
	// Disable keeps every packet on the relay: no UDP socket, no direct
	// paths.
	Disable bool
	// Port is the UDP port of the socket for direct paths; zero picks one.
	Port int
	// Addrs, if set, are the addresses offered to peers as this agent's
	// direct candidates (with the socket's port) instead of its
	// interfaces' addresses. The address the relay sees is offered too.
	Addrs []netip.Addr
	// ListenUDP, if set, opens the socket instead (tests use it to put
	// the socket in a network namespace).
	ListenUDP func() (UDPConn, error)
	// InterfaceAddrs, if set, lists the interface addresses instead of
	// the system (tests).
	InterfaceAddrs func() ([]netip.Addr, error)
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
	if _, _, err := net.SplitHostPort(c.Relay.Addr); err != nil {
		return fmt.Errorf("paths: relay address %q: %w (want host:port)", c.Relay.Addr, err)
	}
	return nil
}

// PeerGone reports that the relay could not deliver a packet to Peer.
type PeerGone struct {
	Peer     Addr
	Reason   relayproto.GoneReason
	LastSeen time.Time // zero if unknown
}

// Status describes a [Conn]'s relay attachment.
type Status struct {
	Attached     bool          `json:"attached"`
	Draining     bool          `json:"draining,omitempty"` // the relay is shutting down: it closes this session soon
	Relay        string        `json:"relay"`              // the relay's address
	RelayID      identity.ID   `json:"relay_id,omitzero"`  // proven by the relay in this session
	Since        time.Time     `json:"since"`              // when the current state began
	ObservedAddr string        `json:"observed,omitempty"` // our address as the relay sees it
	RTT          time.Duration `json:"rtt,omitempty"`
	// LastError is why the last attach attempt or session failed; nil
	// while attached. Error is its text, which survives JSON.
	LastError error  `json:"-"`
	Error     string `json:"error,omitempty"`
	// Sent, Received and Dropped count packets since the Conn started.
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	Dropped  uint64 `json:"dropped"`
}

// A Conn is an agent's packet connection to its peers. Create it with
// [Listen]; it attaches to the relay in the background and keeps doing so
// until closed. It is safe for concurrent use.
type Conn struct {
	cfg      Config
	log      *slog.Logger
	instance uint64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	recvq chan inPacket
	cur   atomic.Pointer[relaySession] // nil while detached
	// wanted wakes an attach loop that waits for a reason to attach (after
	// the relay closed an unused client session): a packet to send, or a
	// wait for attachment.
	wanted chan struct{}

	mu      sync.Mutex
	status  Status        // guarded by mu
	changed chan struct{} // closed and replaced on every status change; guarded by mu

	readDeadline deadline

	peersMu sync.RWMutex
	peers   map[Addr]*peer // guarded by peersMu

	ctlMu      sync.Mutex
	intents    map[identity.ID][32]byte // a client's pairing intents; guarded by ctlMu
	ctlVersion uint64                   // counts changes to the above; guarded by ctlMu

	ds    *directSocket // nil if direct paths are off
	epoch time.Time     // for now

	sent, received, dropped atomic.Uint64
}

// now returns the monotonic time since the Conn started, cheaply
// comparable in atomics.
func (c *Conn) now() int64 { return int64(time.Since(c.epoch)) }

// An inPacket waits in the receive queue; its bytes are (*buf)[off:end].
type inPacket struct {
	buf      *[]byte
	off, end int
	from     *peer
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
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 8 * time.Second
	}
	if cfg.Dial == nil {
		d := &net.Dialer{KeepAlive: -1}
		cfg.Dial = d.DialContext
	}
	var inst [8]byte
	rand.Read(inst[:])
	c := &Conn{
		cfg:          cfg,
		log:          cfg.Logger,
		instance:     binary.BigEndian.Uint64(inst[:]) | 1, // never 0
		recvq:        make(chan inPacket, cfg.QueueLen),
		wanted:       make(chan struct{}, 1),
		changed:      make(chan struct{}),
		readDeadline: makeDeadline(),
		peers:        make(map[Addr]*peer),
		epoch:        time.Now(),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("relay", cfg.Relay.Addr)
	c.status = Status{Relay: cfg.Relay.Addr, Since: time.Now()}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if !cfg.Direct.Disable {
		if err := c.listenDirect(); err != nil {
			// The relay still carries everything.
			c.log.Warn("direct paths are off", "err", err)
		} else {
			c.wg.Go(c.directReadLoop)
			c.wg.Go(c.directWriteLoop)
		}
	}
	c.wg.Go(c.attachLoop)
	return c, nil
}

// LocalAddr returns the agent's own address.
func (c *Conn) LocalAddr() net.Addr {
	a := Addr{ID: c.cfg.Identity.ID()}
	if c.cfg.Role == relayproto.RoleClient {
		a.Instance = c.instance
	}
	return a
}

// Status returns the relay attachment's state.
func (c *Conn) Status() Status {
	c.mu.Lock()
	st := c.status
	c.mu.Unlock()
	st.Sent, st.Received, st.Dropped = c.sent.Load(), c.received.Load(), c.dropped.Load()
	if st.LastError != nil {
		st.Error = st.LastError.Error()
	}
	return st
}

// setStatus applies f to the status and wakes every waiter.
func (c *Conn) setStatus(f func(*Status)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.status)
	close(c.changed)
	c.changed = make(chan struct{})
}

// WaitAttached waits until the Conn is attached to the relay. It returns
// early with the attach error if an attempt failed for a reason that
// retrying will not fix by itself (a key mismatch, a refusal); the Conn
// keeps retrying in the background all the same.
func (c *Conn) WaitAttached(ctx context.Context) error {
	for {
		c.mu.Lock()
		st, ch := c.status, c.changed
		c.mu.Unlock()
		if st.Attached {
			return nil
		}
		// After the status it read, so that an attach loop that has just
		// detached (and forgotten earlier wants) sees this one.
		c.want()
		if st.LastError != nil && isPermanent(st.LastError) {
			return st.LastError
		}
		select {
		case <-ch:
		case <-c.ctx.Done():
			return ErrClosed
		case <-ctx.Done():
			if st.LastError != nil {
				return fmt.Errorf("not attached to relay %s: %w", c.cfg.Relay.Addr, st.LastError)
			}
			return fmt.Errorf("not attached to relay %s yet: %w", c.cfg.Relay.Addr, context.Cause(ctx))
		}
	}
}

// want tells the attach loop that the relay is wanted now.
func (c *Conn) want() {
	select {
	case c.wanted <- struct{}{}:
	default:
	}
}

// WriteTo sends b to the peer addr, which must be an [Addr] or an address
// ReadFrom returned: over the peer's direct path if it has a working one,
// else over the relay. It never blocks: with no relay session, or a full
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
		if c.ds != nil {
			p = c.peerOf(a)
		}
	case *peer:
		dst, p = a.addr, a
	default:
		return 0, fmt.Errorf("paths: address %v is %T, want paths.Addr", addr, addr)
	}
	if len(b) > relayproto.MaxPacketLen {
		return 0, fmt.Errorf("paths: packet of %d bytes exceeds %d", len(b), relayproto.MaxPacketLen)
	}
	if p != nil {
		if d := p.direct.Load(); d != nil && len(b) <= MaxDirectPacket && d.send(b) {
			c.sent.Add(1)
			return len(b), nil
		}
	}
	rs := c.cur.Load()
	if rs == nil {
		c.want()
	}
	if rs == nil || !rs.send(relayproto.Addr(dst), b) {
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
		n := copy(p, (*pkt.buf)[pkt.off:pkt.end])
		packetPool.Put(pkt.buf)
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
		packetPool.Put(pkt.buf)
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
	if c.ctx.Err() == nil {
		// What the E2E sessions sent last (a QUIC close, say) goes out.
		if c.ds != nil {
			c.ds.flush(closeDrain)
		}
		if rs := c.cur.Load(); rs != nil {
			rs.drain(closeDrain)
		}
	}
	c.cancel()
	if c.ds != nil {
		c.ds.udp.Close()
	}
	c.wg.Wait()
	for {
		select {
		case pkt := <-c.recvq:
			packetPool.Put(pkt.buf)
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
