package relay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// An attachment is one attached agent: a device or client process that
// authenticated to the relay and stays on its connection. (The end-to-end
// session between a client and a device runs inside the packets that
// attachments exchange; the relay never sees it.)
//
// Its read loop (run) owns the read side of conn; its send queue's writer
// owns the write side while it runs. The [Server] reaches an attachment only
// through its methods, and the attachment reaches the Server only through
// the Server's.
//
// An idle attachment holds no buffers and one goroutine, the read loop,
// which waits for the first byte of the next frame with nothing but its own
// five-byte header array. Buffers are borrowed from pools while frames
// flow: a reader while the agent sends, a writer while frames wait for it.
type attachment struct {
	// Immutable after newAttachment.
	srv      *Server
	conn     net.Conn
	src      io.Reader       // bytes buffered by the upgrade, then conn
	raw      syscall.RawConn // the socket under conn's TLS, if known
	role     relayproto.Role
	addr     relayproto.Addr // Instance is 0 for devices
	ip       netip.Addr      // clients: the address counted against (see ipKey); not valid if not counted
	udpToken [16]byte        // lets the agent ask the relay's UDP port for its address
	start    time.Time
	q        *sendQueue
	bc       *agentConn    // nil if writes cannot be gathered
	finished chan struct{} // closed when finish is done

	// udpChannel names the agent on the UDP relay path; 0 if none. Set by
	// register before the agent's token is granted, then immutable.
	udpChannel uint32

	// Set once, by end and goAway.
	endOnce    sync.Once
	ended      atomic.Pointer[error] // why the attachment ended; nil while it runs
	goAwayOnce sync.Once
	goAwayMsg  atomic.Pointer[relayproto.GoAway] // sent as the attachment closes
	farewell   atomic.Pointer[[]byte]            // a frame sent just before the go-away (a draining fleet relay's redirect)

	// Clients: when they were last redirected to another relay, per
	// device; nil until the first redirect.
	redirects atomic.Pointer[redirectLog]

	// Atomic counters, for the log line of its end.
	pktsIn, pktsOut   atomic.Uint64
	bytesIn, bytesOut atomic.Uint64
	dropped           atomic.Uint64

	// Devices: who may reach this device, once it has said (nil until
	// then); stored by the read loop, read by routing.
	access atomic.Pointer[accessSet]
	// Clients: the last time (Unix nanoseconds) a device allowed this
	// client, as the sweep found (see Server.sweepClients).
	allowedAt atomic.Int64
	// Clients: pairing intents, device → invite token; replaced whole by
	// the read loop, read by routing and the sweep.
	intents atomic.Pointer[map[identity.ID][32]byte]
	// Clients: the devices it sent packets to lately, for Snapshot;
	// the pointer is immutable after newAttachment (nil for devices, so
	// that an idle device holds none), the marks written by the read loop.
	marks *peerMarks

	// Owned by the read loop.
	readDeadline time.Time // the idle deadline in force
	frameAt      int64     // when the frame at hand was begun (Unix nanoseconds), to the read's wait
	hdr          [relayproto.HeaderLen]byte
	accessBuild  []relayproto.AccessEntry // a device's list being received
	touched      []*attachment            // queues pushed to since the last kick

	// Owned by the queue's writer.
	writeDeadlineAt time.Time
}

// readerPool and writerPool hold the buffers of attachments busy right
// now. A reader holds a whole TLS record (16 KiB) and a frame.
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 20<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}
)

// An attachSpec is what the handshake learned of an agent.
type attachSpec struct {
	conn     net.Conn
	br       *bufio.Reader // the upgrade's reader: it may hold the agent's first frames
	role     relayproto.Role
	addr     relayproto.Addr
	ip       netip.Addr
	access   *accessSet // devices: the list sent behind the hello
	udpToken [16]byte
}

func newAttachment(s *Server, spec attachSpec) *attachment {
	a := &attachment{
		srv:      s,
		conn:     spec.conn,
		src:      spec.conn,
		role:     spec.role,
		addr:     spec.addr,
		ip:       spec.ip,
		udpToken: spec.udpToken,
		start:    time.Now(),
		finished: make(chan struct{}),
	}
	if spec.access != nil {
		a.access.Store(spec.access)
	}
	if !a.isDevice() {
		a.marks = new(peerMarks)
	}
	// Keep what the upgrade's reader already holds, and not the reader.
	if n := spec.br.Buffered(); n > 0 {
		pre, _ := spec.br.Peek(n)
		a.src = io.MultiReader(bytes.NewReader(bytes.Clone(pre)), spec.conn)
	} else {
		a.raw = rawConnOf(spec.conn)
	}
	a.q = s.newSendQueue(a.writeBatch, func(err error) {
		a.end(fmt.Errorf("write to agent: %w", err))
	})
	if rc := newRoomCheck(spec.conn); rc != nil {
		a.q.room = rc.room
	}
	if tc, ok := spec.conn.(interface{ NetConn() net.Conn }); ok {
		a.bc, _ = tc.NetConn().(*agentConn)
	}
	return a
}

// isDevice reports whether the agent is a device (else it is a client).
func (a *attachment) isDevice() bool { return a.role == relayproto.RoleDevice }

// address is the agent's address: its ID and, for a client, its instance.
func (a *attachment) address() relayproto.Addr { return a.addr }

// countedIP is the address a client counts against; not valid if it does
// not count.
func (a *attachment) countedIP() netip.Addr { return a.ip }

// bindingToken is the token the agent presents to the relay's UDP port.
func (a *attachment) bindingToken() [16]byte { return a.udpToken }

// remoteAddr is the address the agent connected from.
func (a *attachment) remoteAddr() net.Addr { return a.conn.RemoteAddr() }

// accessSet returns who may reach the device, or nil until it has said.
func (a *attachment) accessSet() *accessSet { return a.access.Load() }

// markAllowed notes that a device allowed the client at now.
func (a *attachment) markAllowed(now time.Time) { a.allowedAt.Store(now.UnixNano()) }

// allowedSince reports whether a device allowed the client at or after t.
func (a *attachment) allowedSince(t time.Time) bool { return a.allowedAt.Load() > t.UnixNano() }

// done is closed once the attachment has ended and been cleaned up.
func (a *attachment) done() <-chan struct{} { return a.finished }

// end ends the attachment with cause, once: the blocked read wakes now,
// and a blocked write soon, leaving the closing read loop a moment to send
// a pending go-away.
func (a *attachment) end(cause error) {
	a.endOnce.Do(func() {
		a.ended.Store(&cause)
		now := time.Now()
		a.conn.SetReadDeadline(now)
		a.conn.SetWriteDeadline(now.Add(time.Second))
	})
}

// cause returns why the attachment ended, or nil while it runs.
func (a *attachment) cause() error {
	if p := a.ended.Load(); p != nil {
		return *p
	}
	return nil
}

var errIdle = errors.New("no frame for 3 keepalive intervals")

// goAway makes the attachment send f and close.
func (a *attachment) goAway(f relayproto.GoAway) {
	a.goAwayOnce.Do(func() {
		a.goAwayMsg.Store(&f)
		a.end(fmt.Errorf("go-away: %s", f.Reason))
	})
}

// notify queues the advisory notice b and starts the writer; a
// full queue drops it.
func (a *attachment) notify(b []byte) {
	if a.q.push(outFrame{ctl: b}) {
		a.q.kick()
	}
}

// run serves the attachment. It returns when the attachment ends or,
// sooner, when the agent falls quiet and another goroutine takes over (see
// serve); done is closed once the attachment has ended and been cleaned
// up.
func (a *attachment) run() {
	a.srv.logger().Info("agent attached", a.logAttrs()...)
	a.serve(false)
}

// errQuiet ends a read loop that found its agent idle (see readFirstByte).
var errQuiet = errors.New("quiet")

// serve runs the read loop. When the agent falls quiet, it hands the wait
// for the next frame to a new goroutine that does only that, and returns:
// a goroutine keeps the stack its deepest call needed, and the read loop's
// is deep (TLS), while an idle agent's wait needs almost none. Thousands of
// idle agents then cost a small stack each. woke says that the agent was
// quiet until now (see readLoop).
func (a *attachment) serve(woke bool) {
	err := a.readLoop(woke)
	if err == errQuiet {
		if a.srv.goTracked(a.waitAndServe) {
			return
		}
		err = errors.New("relay is shutting down")
	}
	a.finish(err)
}

// waitAndServe waits for the quiet agent's next bytes, then serves it.
func (a *attachment) waitAndServe() {
	if err := waitReadable(a.raw); err != nil {
		a.finish(a.readErr(err))
		return
	}
	a.serve(true)
}

// finish ends the attachment with err: it detaches it from the server,
// sends a pending go-away, closes the connection and logs.
func (a *attachment) finish(err error) {
	a.end(err)
	a.srv.detach(a)
	a.q.close() // waits for a running writer
	if ga := a.goAwayMsg.Load(); ga != nil {
		var b []byte
		if fw := a.farewell.Load(); fw != nil {
			b = append(b, *fw...)
		}
		p := relayproto.AppendGoAway(nil, *ga)
		b = append(relayproto.AppendHeader(b, relayproto.FrameGoAway, len(p)), p...)
		a.conn.SetWriteDeadline(time.Now().Add(time.Second))
		a.conn.Write(b)
	}
	a.conn.Close()
	a.srv.logger().Info("agent detached", append(a.logAttrs(),
		"reason", a.cause().Error(),
		"duration", time.Since(a.start).Round(time.Millisecond).String(),
		"packets_in", a.pktsIn.Load(), "bytes_in", a.bytesIn.Load(),
		"packets_out", a.pktsOut.Load(), "bytes_out", a.bytesOut.Load(),
		"dropped", a.dropped.Load())...)
	close(a.finished)
}

// logAttrs name the attachment in log lines. They are made when needed,
// not kept: an idle attachment should hold nothing it does not use.
func (a *attachment) logAttrs() []any {
	attrs := []any{"agent", a.role.String(), "id", a.addr.ID.String(), "remote", a.conn.RemoteAddr().String()}
	if a.role == relayproto.RoleClient {
		attrs = append(attrs, "instance", fmt.Sprintf("%016x", a.addr.Instance))
	}
	return attrs
}

// readLoop reads frames until the connection fails or the attachment
// ends. Frames for other agents are queued as they are read; their writers
// are kicked once the frames at hand are done, before a read that may
// block, so that a burst costs each destination one wake-up and one write.
//
// An agent that woke from quiet (woke) with a lone frame, as an idle
// agent's keepalive ping, is back to the shallow wait after wakeProbe; one
// that sends a second frame meanwhile is busy, and waits idleProbe from
// then on.
func (a *attachment) readLoop(woke bool) error {
	keepAlive := a.srv.keepAliveInterval()
	idle := 3 * keepAlive
	frames := 0 // handled
	var br *bufio.Reader
	defer func() {
		if br != nil {
			br.Reset(nil)
			readerPool.Put(br)
		}
		a.kick()
	}()
	for {
		now := time.Now()
		a.frameAt = now.UnixNano()
		if now.Add(idle).Sub(a.readDeadline) > keepAlive/4 {
			if err := a.setReadDeadline(now.Add(idle)); err != nil {
				return err
			}
		}
		if br == nil {
			// Wait for the next frame holding no buffer.
			a.kick()
			probe := idleProbe
			if woke && frames < 2 {
				probe = wakeProbe
			}
			if err := a.readFirstByte(probe); err != nil {
				if err == errQuiet {
					return err
				}
				return a.readErr(err)
			}
			br = readerPool.Get().(*bufio.Reader)
			br.Reset(a.src)
			if _, err := io.ReadFull(br, a.hdr[1:]); err != nil {
				return a.readErr(err)
			}
		} else {
			if br.Buffered() < relayproto.HeaderLen {
				a.kick()
			}
			if _, err := io.ReadFull(br, a.hdr[:]); err != nil {
				return a.readErr(err)
			}
		}
		t, n, err := relayproto.ParseHeader(a.hdr[:])
		if err != nil {
			return err
		}
		if br.Buffered() < int(n) {
			a.kick()
		}
		if err := a.handleFrame(br, t, n); err != nil {
			return err
		}
		frames++
		if br.Buffered() == 0 {
			br.Reset(nil)
			readerPool.Put(br)
			br = nil
		}
	}
}

// handleFrame reads the payload of a frame of type t and length n from br
// and acts on it.
func (a *attachment) handleFrame(br *bufio.Reader, t relayproto.FrameType, n uint32) error {
	switch t {
	case relayproto.FrameSendPacket:
		if n < relayproto.AddrLen {
			return fmt.Errorf("%w: short send-packet", relayproto.ErrMalformed)
		}
		bp := packetPool.Get().(*[]byte)
		buf := (*bp)[:relayproto.HeaderLen+int(n)]
		if _, err := io.ReadFull(br, buf[relayproto.HeaderLen:]); err != nil {
			packetPool.Put(bp)
			return a.readErr(err)
		}
		a.forward(bp, buf)
	case relayproto.FrameAccess, relayproto.FramePairIntent:
		p := make([]byte, n)
		if _, err := io.ReadFull(br, p); err != nil {
			return a.readErr(err)
		}
		return a.deviceState(t, p)
	case relayproto.FramePing:
		var p [8]byte
		if n != 8 {
			return fmt.Errorf("%w: ping of %d bytes", relayproto.ErrMalformed, n)
		}
		if _, err := io.ReadFull(br, p[:]); err != nil {
			return a.readErr(err)
		}
		a.sendNotice(a, append(relayproto.AppendHeader(make([]byte, 0, relayproto.HeaderLen+8), relayproto.FramePong, 8), p[:]...))
	case relayproto.FrameLocate:
		var p [identity.IDLen]byte
		if _, err := io.ReadFull(br, p[:n]); err != nil {
			return a.readErr(err)
		}
		if device, err := relayproto.ParseLocate(p[:n]); err == nil {
			a.srv.locate(a, device)
		}
	default:
		// Pongs and frame types this relay does not know are skipped
		// without allocating.
		if _, err := br.Discard(int(n)); err != nil {
			return a.readErr(err)
		}
	}
	return nil
}

// idleProbe is how long an attachment waits for a frame inside its TLS
// read before it counts as idle and waits on its socket instead.
const idleProbe = 2 * time.Second

// wakeProbe is idleProbe after a lone frame that woke a quiet agent. Idle
// devices ping every keepalive interval (5s on a relay of a fleet): waiting
// idleProbe after each ping kept some 40% of them on the read loop's deep
// stack (about 8 KiB against 2 KiB) at any moment.
const wakeProbe = 250 * time.Millisecond

// setReadDeadline moves the idle deadline. The attachment may have ended
// just before, its wake-up undone by the move: then it returns why it
// ended.
func (a *attachment) setReadDeadline(t time.Time) error {
	a.conn.SetReadDeadline(t)
	a.readDeadline = t
	return a.cause()
}

// readFirstByte reads the first byte of the next frame into hdr[0]. After
// probe without one it returns errQuiet, if the attachment can then
// wait on its socket (waitReadable): TLS then holds no complete record, and
// the rest of a partial one must come from the socket.
func (a *attachment) readFirstByte(probe time.Duration) error {
	if a.raw != nil {
		until := time.Now().Add(probe)
		if a.readDeadline.Before(until) {
			until = a.readDeadline
		}
		a.conn.SetReadDeadline(until)
		if err := a.cause(); err != nil {
			return err
		}
		_, err := io.ReadFull(a.src, a.hdr[:1])
		if err == nil {
			return a.setReadDeadline(a.readDeadline)
		}
		if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() || time.Now().After(a.readDeadline) {
			return err
		}
		if err := a.setReadDeadline(a.readDeadline); err != nil {
			return err
		}
		return errQuiet
	}
	_, err := io.ReadFull(a.src, a.hdr[:1])
	return err
}

// kick writes the frames queued since the last kick, on the read loop
// where the destination's socket has room for them (see
// sendQueue.kickInline), else by starting the destination's writer.
func (a *attachment) kick() {
	for i, to := range a.touched {
		to.q.kickInline()
		a.touched[i] = nil
	}
	a.touched = a.touched[:0]
}

// touch notes that a frame was queued for to.
func (a *attachment) touch(to *attachment) {
	for _, t := range a.touched {
		if t == to {
			return
		}
	}
	a.touched = append(a.touched, to)
}

// readErr turns a read error into the attachment's end cause.
func (a *attachment) readErr(err error) error {
	if cause := a.cause(); cause != nil {
		return cause
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return errIdle
	}
	if errors.Is(err, io.EOF) {
		return errors.New("agent closed the connection")
	}
	return err
}

// forward routes one send-packet frame, read into buf (which is *bp
// sliced, with room for a frame header in front), to its destination. It
// runs for every packet: it takes the routing lock for reading and nothing
// else but the destination queue's lock.
func (a *attachment) forward(bp *[]byte, buf []byte) {
	payload := buf[relayproto.HeaderLen:]
	dst, err := relayproto.ParseAddr(payload)
	if err != nil {
		packetPool.Put(bp)
		return
	}
	pktLen := len(payload) - relayproto.AddrLen
	a.pktsIn.Add(1)
	a.bytesIn.Add(uint64(pktLen))
	to, gone := a.srv.route(a, dst)
	if to == nil {
		packetPool.Put(bp)
		if gone.Reason == 0 || a.srv.redirect(a, dst) {
			return
		}
		a.srv.countPeerGone()
		p := relayproto.AppendPeerGone(relayproto.AppendHeader(make([]byte, 0, 64), relayproto.FramePeerGone, relayproto.AddrLen+9), gone)
		a.sendNotice(a, p)
		return
	}
	// Rewrite the frame in place: header, then the source address where
	// the destination was. The packet bytes do not move.
	relayproto.AppendPacketHeader(buf[:0], relayproto.FrameRecvPacket, a.addr, pktLen)
	if !to.q.push(outFrame{buf: bp, n: len(buf)}) {
		packetPool.Put(bp)
		to.dropped.Add(1)
		a.srv.countDropped()
		return
	}
	a.touch(to)
	a.srv.countForwarded(pktLen)
	if a.marks != nil {
		a.marks.mark(peerKey(dst.ID), a.frameAt)
	}
}

// sendNotice queues a notice (a frame other than a packet) for to,
// dropping it if the queue is full: every notice is advisory or repeated.
func (a *attachment) sendNotice(to *attachment, b []byte) {
	if !to.q.push(outFrame{ctl: b}) {
		to.dropped.Add(1)
		a.srv.countDropped()
		return
	}
	a.touch(to)
}

// writeBatch writes a batch of frames with one flush, and the TLS records
// of the flush with one system call where the connection gathers them
// (agentConn); the write buffer is borrowed only for the batch. It runs on
// the queue's writer.
func (a *attachment) writeBatch(batch []outFrame) error {
	var err error
	keepAlive := a.srv.keepAliveInterval()
	if now := time.Now(); now.Sub(a.writeDeadlineAt) > keepAlive/4 {
		a.conn.SetWriteDeadline(now.Add(3 * keepAlive))
		a.writeDeadlineAt = now
		err = a.cause()
	}
	w := writerPool.Get().(*bufio.Writer)
	w.Reset(a.conn)
	if a.bc != nil {
		a.bc.hold()
	}
	for _, f := range batch {
		if err == nil {
			if f.buf == nil {
				_, err = w.Write(f.ctl)
			} else {
				_, err = w.Write((*f.buf)[:f.n])
				a.pktsOut.Add(1)
				a.bytesOut.Add(uint64(f.n - relayproto.HeaderLen - relayproto.AddrLen))
			}
		}
		f.release()
	}
	if err == nil {
		err = w.Flush()
	}
	if a.bc != nil {
		if e := a.bc.release(); err == nil {
			err = e
		}
	}
	w.Reset(nil)
	writerPool.Put(w)
	return err
}
