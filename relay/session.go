package relay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// A session is one attached agent. Its read loop (run) owns the read side
// of conn; its send queue's writer owns the write side while it runs.
//
// An idle session holds no buffers and one goroutine, the read loop, which
// waits for the first byte of the next frame with nothing but its own
// five-byte header array. Buffers are borrowed from pools while frames
// flow: a reader while the agent sends, a writer while frames wait for it.
type session struct {
	srv  *Server
	conn net.Conn
	src  io.Reader       // bytes buffered by the upgrade, then conn
	raw  syscall.RawConn // the socket under conn's TLS, if known
	role relayproto.Role
	addr relayproto.Addr // Instance is 0 for devices

	q *sendQueue

	endOnce  sync.Once
	ended    atomic.Pointer[error] // why the session ended; nil while it runs
	finished chan struct{}         // closed when finish is done

	goAwayOnce sync.Once
	goAwayMsg  atomic.Pointer[relayproto.GoAway] // sent as the session closes

	start             time.Time
	pktsIn, pktsOut   atomic.Uint64
	bytesIn, bytesOut atomic.Uint64
	dropped           atomic.Uint64

	// Devices: who may reach this device, once it has said (nil until then).
	access atomic.Pointer[accessSet]
	// udpToken lets the agent ask the relay's UDP port for its address.
	udpToken [16]byte
	// Clients: the address the session counts against (see ipKey); not
	// valid if it is not counted per address.
	ip netip.Addr
	// Clients: the last time (Unix nanoseconds) the sweep found a device
	// that allows this client (see Server.sweepClients).
	allowedAt atomic.Int64
	// Clients: pairing intents, device → invite token; replaced whole by
	// the read loop, read by routing and the sweep.
	intents atomic.Pointer[map[identity.ID][32]byte]

	// Owned by the read loop.
	readDeadline time.Time // the idle deadline in force
	hdr          [relayproto.HeaderLen]byte
	accessBuild  []relayproto.AccessEntry // a device's list being received
	touched      []*session               // queues pushed to since the last kick
	// Owned by the queue's writer.
	writeDeadlineAt time.Time
}

// packetBufLen holds the largest packet frame, header included.
const packetBufLen = relayproto.HeaderLen + relayproto.AddrLen + relayproto.MaxPacketLen

var packetPool = sync.Pool{New: func() any { b := make([]byte, packetBufLen); return &b }}

// readerPool and writerPool hold the buffers of sessions busy right now.
// A reader holds a whole TLS record (16 KiB) and a frame.
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 20<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}
)

func newSession(s *Server, conn net.Conn, br *bufio.Reader, role relayproto.Role, addr relayproto.Addr) *session {
	sess := &session{
		srv:      s,
		conn:     conn,
		src:      conn,
		role:     role,
		addr:     addr,
		start:    time.Now(),
		finished: make(chan struct{}),
	}
	// Keep what the upgrade's reader already holds, and not the reader.
	if n := br.Buffered(); n > 0 {
		pre, _ := br.Peek(n)
		sess.src = io.MultiReader(bytes.NewReader(bytes.Clone(pre)), conn)
	} else {
		sess.raw = rawConnOf(conn)
	}
	sess.q = newSendQueue(s.queueLen, s.writers, sess.writeBatch, func(err error) {
		sess.end(fmt.Errorf("write to agent: %w", err))
	})
	return sess
}

// end ends the session with cause, once: the blocked read wakes now, and
// a blocked write soon, leaving the closing read loop a moment to send a
// pending go-away.
func (sess *session) end(cause error) {
	sess.endOnce.Do(func() {
		sess.ended.Store(&cause)
		now := time.Now()
		sess.conn.SetReadDeadline(now)
		sess.conn.SetWriteDeadline(now.Add(time.Second))
	})
}

// cause returns why the session ended, or nil while it runs.
func (sess *session) cause() error {
	if p := sess.ended.Load(); p != nil {
		return *p
	}
	return nil
}

var errIdle = errors.New("no frame for 3 keepalive intervals")

// goAway makes the session send f and close.
func (sess *session) goAway(f relayproto.GoAway) {
	sess.goAwayOnce.Do(func() {
		sess.goAwayMsg.Store(&f)
		sess.end(fmt.Errorf("go-away: %s", f.Reason))
	})
}

// run serves the session. It returns when the session ends or, sooner,
// when the agent falls quiet and another goroutine takes over (see serve);
// sess.finished is closed once the session has ended and been cleaned up.
func (sess *session) run() {
	sess.srv.log.Info("agent attached", sess.logAttrs()...)
	sess.serve()
}

// errQuiet ends a read loop that found its agent idle (see readFirstByte).
var errQuiet = errors.New("quiet")

// serve runs the read loop. When the agent falls quiet, it hands the wait
// for the next frame to a new goroutine that does only that, and returns:
// a goroutine keeps the stack its deepest call needed, and the read loop's
// is deep (TLS), while an idle agent's wait needs almost none. Thousands of
// idle agents then cost a small stack each.
func (sess *session) serve() {
	err := sess.readLoop()
	if err == errQuiet {
		if sess.srv.goTracked(sess.waitAndServe) {
			return
		}
		err = errors.New("relay is shutting down")
	}
	sess.finish(err)
}

// waitAndServe waits for the quiet agent's next bytes, then serves it.
func (sess *session) waitAndServe() {
	if err := waitReadable(sess.raw); err != nil {
		sess.finish(sess.readErr(err))
		return
	}
	sess.serve()
}

// finish ends the session with err: it unregisters it, sends a pending
// go-away, closes the connection and logs.
func (sess *session) finish(err error) {
	s := sess.srv
	sess.end(err)
	s.unregister(sess)
	sess.q.close() // waits for a running writer
	if ga := sess.goAwayMsg.Load(); ga != nil {
		p := relayproto.AppendGoAway(nil, *ga)
		sess.conn.SetWriteDeadline(time.Now().Add(time.Second))
		sess.conn.Write(append(relayproto.AppendHeader(nil, relayproto.FrameGoAway, len(p)), p...))
	}
	sess.conn.Close()
	s.log.Info("agent detached", append(sess.logAttrs(),
		"reason", sess.cause().Error(),
		"duration", time.Since(sess.start).Round(time.Millisecond).String(),
		"packets_in", sess.pktsIn.Load(), "bytes_in", sess.bytesIn.Load(),
		"packets_out", sess.pktsOut.Load(), "bytes_out", sess.bytesOut.Load(),
		"dropped", sess.dropped.Load())...)
	close(sess.finished)
}

// logAttrs name the session in log lines. They are made when needed, not
// kept: an idle session should hold nothing it does not use.
func (sess *session) logAttrs() []any {
	attrs := []any{"agent", sess.role.String(), "id", sess.addr.ID.String(), "remote", sess.conn.RemoteAddr().String()}
	if sess.role == relayproto.RoleClient {
		attrs = append(attrs, "instance", fmt.Sprintf("%016x", sess.addr.Instance))
	}
	return attrs
}

// readLoop reads frames until the connection fails or the session ends.
// Frames for other agents are queued as they are read; their writers are
// kicked once the frames at hand are done, before a read that may block,
// so that a burst costs each destination one wake-up and one write.
func (sess *session) readLoop() error {
	s := sess.srv
	idle := 3 * s.keepAlive
	var br *bufio.Reader
	defer func() {
		if br != nil {
			br.Reset(nil)
			readerPool.Put(br)
		}
		sess.kick()
	}()
	for {
		if now := time.Now(); now.Add(idle).Sub(sess.readDeadline) > s.keepAlive/4 {
			if err := sess.setReadDeadline(now.Add(idle)); err != nil {
				return err
			}
		}
		if br == nil {
			// Wait for the next frame holding no buffer.
			sess.kick()
			if err := sess.readFirstByte(); err != nil {
				if err == errQuiet {
					return err
				}
				return sess.readErr(err)
			}
			br = readerPool.Get().(*bufio.Reader)
			br.Reset(sess.src)
			if _, err := io.ReadFull(br, sess.hdr[1:]); err != nil {
				return sess.readErr(err)
			}
		} else {
			if br.Buffered() < relayproto.HeaderLen {
				sess.kick()
			}
			if _, err := io.ReadFull(br, sess.hdr[:]); err != nil {
				return sess.readErr(err)
			}
		}
		t, n, err := relayproto.ParseHeader(sess.hdr[:])
		if err != nil {
			return err
		}
		if br.Buffered() < int(n) {
			sess.kick()
		}
		switch t {
		case relayproto.FrameSendPacket:
			if n < relayproto.AddrLen {
				return fmt.Errorf("%w: short send-packet", relayproto.ErrMalformed)
			}
			bp := packetPool.Get().(*[]byte)
			buf := (*bp)[:relayproto.HeaderLen+int(n)]
			if _, err := io.ReadFull(br, buf[relayproto.HeaderLen:]); err != nil {
				packetPool.Put(bp)
				return sess.readErr(err)
			}
			sess.forward(bp, buf)
		case relayproto.FrameAccess, relayproto.FramePairIntent:
			p := make([]byte, n)
			if _, err := io.ReadFull(br, p); err != nil {
				return sess.readErr(err)
			}
			if err := sess.control(t, p); err != nil {
				return err
			}
		case relayproto.FramePing:
			var p [8]byte
			if n != 8 {
				return fmt.Errorf("%w: ping of %d bytes", relayproto.ErrMalformed, n)
			}
			if _, err := io.ReadFull(br, p[:]); err != nil {
				return sess.readErr(err)
			}
			sess.sendControl(sess, append(relayproto.AppendHeader(make([]byte, 0, relayproto.HeaderLen+8), relayproto.FramePong, 8), p[:]...))
		default:
			// Pongs and frame types this relay does not know are skipped
			// without allocating.
			if _, err := br.Discard(int(n)); err != nil {
				return sess.readErr(err)
			}
		}
		if br.Buffered() == 0 {
			br.Reset(nil)
			readerPool.Put(br)
			br = nil
		}
	}
}

// idleProbe is how long a session waits for a frame inside its TLS read
// before it counts as idle and waits on its socket instead.
const idleProbe = 2 * time.Second

// setReadDeadline moves the idle deadline. The session may have ended just
// before, its wake-up undone by the move: then it returns why it ended.
func (sess *session) setReadDeadline(t time.Time) error {
	sess.conn.SetReadDeadline(t)
	sess.readDeadline = t
	return sess.cause()
}

// readFirstByte reads the first byte of the next frame into hdr[0]. After
// idleProbe without one it returns errQuiet, if the session can then wait
// on its socket (waitReadable): TLS then holds no complete record, and the
// rest of a partial one must come from the socket.
func (sess *session) readFirstByte() error {
	if sess.raw != nil {
		probe := time.Now().Add(idleProbe)
		if sess.readDeadline.Before(probe) {
			probe = sess.readDeadline
		}
		sess.conn.SetReadDeadline(probe)
		if err := sess.cause(); err != nil {
			return err
		}
		_, err := io.ReadFull(sess.src, sess.hdr[:1])
		if err == nil {
			return sess.setReadDeadline(sess.readDeadline)
		}
		if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() || time.Now().After(sess.readDeadline) {
			return err
		}
		if err := sess.setReadDeadline(sess.readDeadline); err != nil {
			return err
		}
		return errQuiet
	}
	_, err := io.ReadFull(sess.src, sess.hdr[:1])
	return err
}

// maxIntents bounds the pairing intents a client may hold at once.
const maxIntents = 8

// control handles an access or pair-intent frame.
func (sess *session) control(t relayproto.FrameType, p []byte) error {
	switch {
	case t == relayproto.FrameAccess && sess.role == relayproto.RoleDevice:
		flags, entries, err := relayproto.ParseAccess(p, sess.accessBuild)
		if err != nil {
			return err
		}
		if flags&relayproto.AccessFirst != 0 {
			entries = append(entries[:0], entries[len(sess.accessBuild):]...)
		}
		if len(entries) > relayproto.MaxAccessEntries {
			return fmt.Errorf("%w: access list of more than %d entries", relayproto.ErrMalformed, relayproto.MaxAccessEntries)
		}
		sess.accessBuild = entries
		if flags&relayproto.AccessLast != 0 {
			sess.srv.setAccess(sess, newAccessSet(entries))
			sess.accessBuild = nil
		}
	case t == relayproto.FramePairIntent && sess.role == relayproto.RoleClient:
		f, err := relayproto.ParsePairIntent(p)
		if err != nil {
			return err
		}
		intents := make(map[identity.ID][32]byte, maxIntents)
		if old := sess.intents.Load(); old != nil {
			maps.Copy(intents, *old)
		}
		if _, ok := intents[f.Device]; !ok && len(intents) >= maxIntents {
			for k := range intents { // forget one
				delete(intents, k)
				break
			}
		}
		intents[f.Device] = f.Token
		sess.intents.Store(&intents)
	}
	return nil
}

// intent returns the invite token of the client's pairing intent for
// device, or zero.
func (sess *session) intent(device identity.ID) [32]byte {
	if m := sess.intents.Load(); m != nil {
		return (*m)[device]
	}
	return [32]byte{}
}

// An accessSet is who may reach a device. It is never changed once made;
// a new list replaces it whole.
type accessSet struct {
	clients map[identity.ID]struct{}
	invites map[[32]byte]struct{}
}

func newAccessSet(entries []relayproto.AccessEntry) *accessSet {
	a := &accessSet{}
	for _, e := range entries {
		switch e.Kind {
		case relayproto.AccessClient:
			if a.clients == nil {
				a.clients = make(map[identity.ID]struct{})
			}
			a.clients[identity.ID(e.Value)] = struct{}{}
		case relayproto.AccessInvite:
			if a.invites == nil {
				a.invites = make(map[[32]byte]struct{})
			}
			a.invites[e.Value] = struct{}{}
		}
	}
	return a
}

// allows reports whether client may reach the device: it is listed, or it
// presented the token of a pending invite.
func (a *accessSet) allows(client identity.ID, token [32]byte) bool {
	if _, ok := a.clients[client]; ok {
		return true
	}
	if token == ([32]byte{}) {
		return false
	}
	_, ok := a.invites[token]
	return ok
}

// kick starts the writers of the queues pushed to since the last kick.
func (sess *session) kick() {
	for i, to := range sess.touched {
		to.q.kick()
		sess.touched[i] = nil
	}
	sess.touched = sess.touched[:0]
}

// touch notes that a frame was queued for to.
func (sess *session) touch(to *session) {
	for _, t := range sess.touched {
		if t == to {
			return
		}
	}
	sess.touched = append(sess.touched, to)
}

// readErr turns a read error into the session's end cause.
func (sess *session) readErr(err error) error {
	if cause := sess.cause(); cause != nil {
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

// forward routes one send-packet frame, read into buf (which is *bp sliced,
// with room for a frame header in front), to its destination.
func (sess *session) forward(bp *[]byte, buf []byte) {
	s := sess.srv
	payload := buf[relayproto.HeaderLen:]
	dst, err := relayproto.ParseAddr(payload)
	if err != nil {
		packetPool.Put(bp)
		return
	}
	pktLen := len(payload) - relayproto.AddrLen
	sess.pktsIn.Add(1)
	sess.bytesIn.Add(uint64(pktLen))
	to, gone := s.route(sess, dst)
	if to == nil {
		packetPool.Put(bp)
		if gone.Reason == 0 {
			return
		}
		s.gone.Add(1)
		p := relayproto.AppendPeerGone(relayproto.AppendHeader(make([]byte, 0, 64), relayproto.FramePeerGone, relayproto.AddrLen+9), gone)
		sess.sendControl(sess, p)
		return
	}
	// Rewrite the frame in place: header, then the source address where
	// the destination was. The packet bytes do not move.
	relayproto.AppendPacketHeader(buf[:0], relayproto.FrameRecvPacket, sess.addr, pktLen)
	if !to.q.push(outFrame{buf: bp, n: len(buf)}) {
		packetPool.Put(bp)
		to.dropped.Add(1)
		s.dropped.Add(1)
		return
	}
	sess.touch(to)
	s.forwarded.Add(1)
	s.forwardedBytes.Add(uint64(pktLen))
}

// sendControl queues a control frame for to, dropping it if the queue is
// full: every control frame is advisory or repeated.
func (sess *session) sendControl(to *session, b []byte) {
	if !to.q.push(outFrame{ctl: b}) {
		to.dropped.Add(1)
		sess.srv.dropped.Add(1)
		return
	}
	sess.touch(to)
}

// writeBatch writes a batch of frames with one flush; the write buffer is
// borrowed only for the batch. It runs on the queue's writer.
func (sess *session) writeBatch(batch []outFrame) error {
	var err error
	if now := time.Now(); now.Sub(sess.writeDeadlineAt) > sess.srv.keepAlive/4 {
		sess.conn.SetWriteDeadline(now.Add(3 * sess.srv.keepAlive))
		sess.writeDeadlineAt = now
		err = sess.cause()
	}
	w := writerPool.Get().(*bufio.Writer)
	w.Reset(sess.conn)
	for _, f := range batch {
		if err == nil {
			if f.buf == nil {
				_, err = w.Write(f.ctl)
			} else {
				_, err = w.Write((*f.buf)[:f.n])
				sess.pktsOut.Add(1)
				sess.bytesOut.Add(uint64(f.n - relayproto.HeaderLen - relayproto.AddrLen))
			}
		}
		f.release()
	}
	if err == nil {
		err = w.Flush()
	}
	w.Reset(nil)
	writerPool.Put(w)
	return err
}
