package relaylink

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// A Link is one attached TLS connection to the relay; [Dial] opens it.
// One goroutine reads it ([Link.Read]); a write loop, started by Dial and
// stopped by [Link.Close], owns its writes. Send, SendState and Drain are
// safe for concurrent use.
type Link struct {
	conn       *tls.Conn
	role       relayproto.Role
	addr       string // the address dialed
	relayID    identity.ID
	fleetMap   *fleet.Map // the map the relay showed, if pinned by its fleet's ID
	observed   string
	keepAlive  time.Duration
	udpBinding *relayproto.UDPBinding // the relay's offer to tell a UDP socket its address; nil if none
	udpRelay   *relayproto.UDPRelay   // the agent's channel on the relay's UDP relay path; nil if none

	ctx     context.Context
	cancel  context.CancelCauseFunc
	stopNet func() bool    // stops closing the TCP connection when ctx ends
	writer  sync.WaitGroup // the write loop
	sendq   chan *[]byte   // encoded frames; bounded, producers never block

	goAway    atomic.Bool  // the relay said go away
	pingSent  atomic.Int64 // UnixNano of the outstanding ping, 0 if none
	flushed   chan struct{}
	drainOnce sync.Once // queues flushMarker at most once
	closeOnce sync.Once
	silence   silence // the write loop's check of a relay gone silent

	// Owned by the reader.
	br            *bufio.Reader
	hdr           [relayproto.HeaderLen]byte
	deadlineSetAt time.Time
}

// A Packet is an end-to-end packet the relay delivered from From, in a
// pooled buffer: Data is valid until Release, which its taker calls once.
type Packet struct {
	From relayproto.Addr
	Data []byte
	buf  []byte
}

// Release returns the packet's buffer to the pool.
func (p *Packet) Release() {
	p.Data = nil
	packetPool.Put(p)
}

// A Pong is the answer to the Link's last keepalive ping: RTT is the round
// trip to the relay.
type Pong struct{ RTT time.Duration }

// framePool holds frames on their way to the write loop, which returns
// them; the largest is a packet frame.
var framePool = sync.Pool{New: func() any {
	b := make([]byte, relayproto.HeaderLen+relayproto.AddrLen+relayproto.MaxPacketLen)
	return &b
}}

// packetPool holds the Packets Read returns.
var packetPool = sync.Pool{New: func() any {
	return &Packet{buf: make([]byte, relayproto.AddrLen+relayproto.MaxPacketLen)}
}}

// writerPool holds write buffers of links busy right now.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}

// flushMarker, queued behind other frames, makes the write loop flush and
// close Link.flushed.
var flushMarker = new([]byte)

// errLinkClosed ends a Link closed by its owner.
var errLinkClosed = errors.New("relay link closed")

func newLink(ctx context.Context, cfg Config, conn *tls.Conn, br *bufio.Reader, relayID identity.ID, sh relayproto.ServerHello) *Link {
	l := &Link{
		conn:      conn,
		br:        br,
		role:      cfg.Role,
		addr:      cfg.Relay.Addr,
		relayID:   relayID,
		observed:  sh.ObservedAddr,
		keepAlive: max(time.Duration(sh.KeepAliveMillis)*time.Millisecond, time.Second),
		sendq:     make(chan *[]byte, cfg.QueueLen),
		flushed:   make(chan struct{}),
	}
	l.takeExtensions(sh.Extensions)
	l.ctx, l.cancel = context.WithCancelCause(ctx)
	// Closing the TCP connection wakes the reader and the writer at once.
	l.stopNet = context.AfterFunc(l.ctx, func() { conn.NetConn().Close() })
	l.writer.Go(func() { l.cancel(l.writeLoop()) })
	return l
}

// takeExtensions takes the server hello's extensions the Link knows,
// skipping malformed ones as unknown ones are.
func (l *Link) takeExtensions(exts []relayproto.Extension) {
	for _, e := range exts {
		switch e.Type {
		case relayproto.ExtUDPBinding:
			if b, err := relayproto.ParseUDPBinding(e.Value); err == nil {
				l.udpBinding = &b
			}
		case relayproto.ExtUDPRelay:
			if r, err := relayproto.ParseUDPRelay(e.Value); err == nil {
				l.udpRelay = &r
			}
		}
	}
}

// RelayID is the relay's ID, proven in the handshake.
func (l *Link) RelayID() identity.ID { return l.relayID }

// FleetMap returns the fleet map the relay showed in the handshake, checked
// against the pinned fleet ID, if the Link's relay was pinned by its
// fleet's ID (see [RelayConfig]).
func (l *Link) FleetMap() (fleet.Map, bool) {
	if l.fleetMap == nil {
		return fleet.Map{}, false
	}
	return *l.fleetMap, true
}

// ObservedAddr is the agent's address as the relay sees it.
func (l *Link) ObservedAddr() string { return l.observed }

// RemoteAddr is the relay's address.
func (l *Link) RemoteAddr() net.Addr { return l.conn.RemoteAddr() }

// UDPBinding returns the relay's offer to tell the agent's UDP socket the
// address it sees it from, if the relay made one.
func (l *Link) UDPBinding() (relayproto.UDPBinding, bool) {
	if l.udpBinding == nil {
		return relayproto.UDPBinding{}, false
	}
	return *l.udpBinding, true
}

// UDPRelay returns the agent's channel on the relay's UDP relay path, if
// the relay offers the path. It is of use only with [Link.UDPBinding]:
// the datagrams go to that UDP port, and the binding token binds to it.
func (l *Link) UDPRelay() (relayproto.UDPRelay, bool) {
	if l.udpRelay == nil || l.udpBinding == nil {
		return relayproto.UDPRelay{}, false
	}
	return *l.udpRelay, true
}

// Context is done once the Link ends; its cause says why.
func (l *Link) Context() context.Context { return l.ctx }

// Send queues a packet for dst. It never blocks: it reports false, having
// dropped the packet, if the queue is full.
func (l *Link) Send(dst relayproto.Addr, p []byte) bool {
	bp := framePool.Get().(*[]byte)
	*bp = append(relayproto.AppendPacketHeader((*bp)[:0], relayproto.FrameSendPacket, dst, len(p)), p...)
	select {
	case l.sendq <- bp:
		l.silence.packets.Add(1)
		return true
	default:
		framePool.Put(bp)
		return false
	}
}

// SendState queues st, which must not be dropped: it waits for room, a
// second at most, and ends the Link if the relay takes nothing in that
// time (it would route on a stale access list).
func (l *Link) SendState(st State) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for _, f := range st.frames(l.role) {
		bp := framePool.Get().(*[]byte)
		*bp = append((*bp)[:0], f...)
		select {
		case l.sendq <- bp:
		case <-l.ctx.Done():
			framePool.Put(bp)
			return
		case <-t.C:
			framePool.Put(bp)
			l.cancel(errStateNotSent)
			return
		}
	}
}

// sendNotice queues a small notice (a frame other than a packet),
// dropping it if the queue is full.
func (l *Link) sendNotice(t relayproto.FrameType, payload []byte) {
	bp := framePool.Get().(*[]byte)
	*bp = append(relayproto.AppendHeader((*bp)[:0], t, len(payload)), payload...)
	select {
	case l.sendq <- bp:
	default:
		framePool.Put(bp)
	}
}

// Drain waits (up to timeout) until every frame queued so far is written,
// so that a closing agent's last packets (its sessions' close notices)
// reach the relay.
func (l *Link) Drain(timeout time.Duration) {
	queued := false
	l.drainOnce.Do(func() {
		select {
		case l.sendq <- flushMarker:
			queued = true
		default:
		}
	})
	if !queued {
		return
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-l.flushed:
	case <-l.ctx.Done():
	case <-t.C:
	}
}

// Close ends the Link, waits for its write loop and closes the connection:
// with a TLS close notice, unless the relay said go away (it may no longer
// read one, and the close would wait up to 5s to send it). Frames still
// queued are dropped. Close is idempotent.
func (l *Link) Close() error {
	l.closeOnce.Do(func() {
		// A clean end leaves the TCP connection open for the close notice.
		l.stopNet()
		l.cancel(errLinkClosed)
		l.writer.Wait()
		if l.goAway.Load() {
			l.conn.NetConn().Close()
		} else {
			l.conn.Close()
		}
		for {
			select {
			case bp := <-l.sendq:
				if bp != flushMarker {
					framePool.Put(bp)
				}
				continue
			default:
			}
			return
		}
	})
	return nil
}

// Read returns the next message from the relay: a [*Packet], a
// [relayproto.PeerGone], a [relayproto.Redirect], a [relayproto.Drain], a
// [relayproto.GoAway] (the relay closes the Link now: nothing follows) or
// a [Pong]. It answers the relay's pings itself and skips frames it does not know. It fails once
// the Link ends, with the cause: the relay's silence ([ErrIdle]), a
// malformed frame, the write loop's error, or [ErrClosed]. Only one
// goroutine may call Read.
func (l *Link) Read() (any, error) {
	for {
		if now := time.Now(); now.Sub(l.deadlineSetAt) > l.keepAlive/4 {
			l.conn.SetReadDeadline(now.Add(3 * l.keepAlive))
			l.deadlineSetAt = now
		}
		if _, err := io.ReadFull(l.br, l.hdr[:]); err != nil {
			return nil, l.readErr(err)
		}
		t, n, err := relayproto.ParseHeader(l.hdr[:])
		if err != nil {
			return nil, err
		}
		l.silence.framesIn.Add(1)
		var m any
		switch t {
		case relayproto.FrameRecvPacket:
			l.silence.packets.Add(1)
			m, err = l.readPacket(n)
		case relayproto.FramePing, relayproto.FramePong:
			m, err = l.readPing(t, n)
		case relayproto.FramePeerGone:
			m, err = readFrame(l, n, relayproto.ParsePeerGone)
		case relayproto.FrameDrain:
			m, err = readFrame(l, n, relayproto.ParseDrain)
		case relayproto.FrameRedirect:
			m, err = readFrame(l, n, relayproto.ParseRedirect)
		case relayproto.FrameGoAway:
			m, err = readFrame(l, n, relayproto.ParseGoAway)
			if err == nil {
				l.goAway.Store(true)
			}
		default:
			if _, err := l.br.Discard(int(n)); err != nil {
				return nil, l.readErr(err)
			}
		}
		if m != nil || err != nil {
			return m, err
		}
	}
}

// readPacket reads the payload of a recv-packet frame of n bytes.
func (l *Link) readPacket(n uint32) (*Packet, error) {
	if n < relayproto.AddrLen {
		return nil, fmt.Errorf("%w: short recv-packet", relayproto.ErrMalformed)
	}
	p := packetPool.Get().(*Packet)
	buf := p.buf[:n]
	if _, err := io.ReadFull(l.br, buf); err != nil {
		packetPool.Put(p)
		return nil, l.readErr(err)
	}
	p.From, _ = relayproto.ParseAddr(buf)
	p.Data = buf[relayproto.AddrLen:]
	return p, nil
}

// readPing reads a ping, which it answers, or a pong, which it returns
// (as a Pong) if it answers the outstanding ping.
func (l *Link) readPing(t relayproto.FrameType, n uint32) (any, error) {
	var p [8]byte
	if n != 8 {
		return nil, fmt.Errorf("%w: %s of %d bytes", relayproto.ErrMalformed, t, n)
	}
	if _, err := io.ReadFull(l.br, p[:]); err != nil {
		return nil, l.readErr(err)
	}
	if t == relayproto.FramePing {
		l.sendNotice(relayproto.FramePong, p[:])
		return nil, nil
	}
	if sent := l.pingSent.Swap(0); sent != 0 {
		return Pong{RTT: time.Duration(time.Now().UnixNano() - sent)}, nil
	}
	return nil, nil
}

// readFrame reads a frame's payload of n bytes and parses it.
func readFrame[F any](l *Link, n uint32, parse func([]byte) (F, error)) (any, error) {
	p := make([]byte, n)
	if _, err := io.ReadFull(l.br, p); err != nil {
		return nil, l.readErr(err)
	}
	f, err := parse(p)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (l *Link) readErr(err error) error {
	if cause := context.Cause(l.ctx); cause != nil {
		if cause == errLinkClosed {
			return ErrClosed
		}
		return cause
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return ErrIdle
	}
	if errors.Is(err, io.EOF) {
		return errors.New("relay closed the connection")
	}
	return err
}

// writeLoop writes queued frames, batching whatever is queued into one
// flush, pings the relay every keepalive interval, and ends the Link if
// the relay goes silent while packets are moving (see silence.go).
func (l *Link) writeLoop() error {
	ping := time.NewTicker(l.keepAlive)
	defer ping.Stop()
	check := time.NewTicker(silenceTick)
	defer check.Stop()
	var deadlineSetAt time.Time
	for {
		var bp *[]byte
		select {
		case bp = <-l.sendq:
		case <-ping.C:
			bp = l.ping()
		case now := <-check.C:
			probe, err := l.silence.check(now)
			if err != nil {
				return err
			}
			if !probe {
				continue
			}
			bp = l.ping()
		case <-l.ctx.Done():
			return nil
		}
		if now := time.Now(); now.Sub(deadlineSetAt) > l.keepAlive/4 {
			l.conn.SetWriteDeadline(now.Add(3 * l.keepAlive))
			deadlineSetAt = now
		}
		if err := l.writeBatch(bp); err != nil {
			return fmt.Errorf("write to relay: %w", err)
		}
	}
}

// ping returns a ping frame, and notes when it went for the pong's RTT.
func (l *Link) ping() *[]byte {
	var p [8]byte
	binary.BigEndian.PutUint64(p[:], rand.Uint64())
	l.pingSent.Store(time.Now().UnixNano())
	bp := framePool.Get().(*[]byte)
	*bp = append(relayproto.AppendHeader((*bp)[:0], relayproto.FramePing, 8), p[:]...)
	return bp
}

// writeBatch writes bp and every frame queued behind it with one flush.
func (l *Link) writeBatch(bp *[]byte) error {
	w := writerPool.Get().(*bufio.Writer)
	w.Reset(l.conn)
	defer func() {
		w.Reset(nil)
		writerPool.Put(w)
	}()
	yielded := false
	for {
		if bp == flushMarker {
			err := w.Flush()
			close(l.flushed)
			if err != nil {
				return err
			}
		} else {
			_, err := w.Write(*bp)
			framePool.Put(bp)
			if err != nil {
				return err
			}
		}
		select {
		case bp = <-l.sendq:
			yielded = false
			continue
		default:
		}
		// Let the producers (the E2E sessions) run once before paying a
		// TLS record and a syscall: under load they queue more packets,
		// and when idle this costs nothing.
		if !yielded {
			yielded = true
			runtime.Gosched()
			select {
			case bp = <-l.sendq:
				yielded = false
				continue
			default:
			}
		}
		return w.Flush()
	}
}

// Locate asks the relay, one of a fleet, where the device is attached; it
// answers with a redirect, if it knows. The frame is dropped if the queue
// is full.
func (l *Link) Locate(device identity.ID) {
	l.sendNotice(relayproto.FrameLocate, device[:])
}
