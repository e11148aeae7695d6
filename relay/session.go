package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/relayproto"
)

// A session is one attached agent. The read loop (run) owns br and the
// read side of conn; the write loop owns the write side.
type session struct {
	srv  *Server
	conn net.Conn
	br   *bufio.Reader
	role relayproto.Role
	addr relayproto.Addr // Instance is 0 for devices

	ctx    context.Context
	cancel context.CancelCauseFunc
	sendq  chan outFrame // bounded; producers never block

	goAwayOnce sync.Once
	goAwayMsg  atomic.Pointer[relayproto.GoAway] // sent by the write loop before closing

	start             time.Time
	pktsIn, pktsOut   atomic.Uint64
	bytesIn, bytesOut atomic.Uint64
	dropped           atomic.Uint64
	readDeadlineAt    time.Time                  // owned by the read loop
	writeDeadlineAt   time.Time                  // owned by the write loop
	hdr               [relayproto.HeaderLen]byte // owned by the read loop
}

// An outFrame is queued for an agent's write loop. A packet frame carries
// its whole encoding in buf (header included); control frames carry theirs
// in ctl.
type outFrame struct {
	buf *[]byte // pooled; nil for a control frame
	n   int     // valid bytes of *buf
	ctl []byte
}

// packetBufLen holds the largest packet frame, header included.
const packetBufLen = relayproto.HeaderLen + relayproto.AddrLen + relayproto.MaxPacketLen

var packetPool = sync.Pool{New: func() any { b := make([]byte, packetBufLen); return &b }}

// writerPool holds the write buffers of sessions that are busy right now;
// an idle session holds none.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}

func newSession(s *Server, conn net.Conn, br *bufio.Reader, role relayproto.Role, addr relayproto.Addr) *session {
	sess := &session{
		srv:   s,
		conn:  conn,
		br:    br,
		role:  role,
		addr:  addr,
		sendq: make(chan outFrame, s.queueLen),
		start: time.Now(),
	}
	sess.ctx, sess.cancel = context.WithCancelCause(s.ctx)
	return sess
}

var (
	errReplaced = errors.New("replaced by a newer session")
	errIdle     = errors.New("no frame for 3 keepalive intervals")
)

// goAway makes the write loop send f and close the session.
func (sess *session) goAway(f relayproto.GoAway) {
	sess.goAwayOnce.Do(func() {
		sess.goAwayMsg.Store(&f)
		sess.cancel(fmt.Errorf("go-away: %s", f.Reason))
	})
}

// run serves the session until it ends, then unregisters it and closes the
// connection. It runs on the accepting goroutine.
func (sess *session) run() {
	s := sess.srv
	log := s.log.With("agent", sess.role.String(), "id", sess.addr.ID.String(), "remote", sess.conn.RemoteAddr().String())
	if sess.role == relayproto.RoleClient {
		log = log.With("instance", fmt.Sprintf("%016x", sess.addr.Instance))
	}
	log.Info("agent attached")

	writeDone := make(chan struct{})
	go func() {
		defer close(writeDone)
		sess.writeLoop()
	}()
	err := sess.readLoop()
	sess.cancel(err)
	<-writeDone
	sess.conn.Close()
	s.unregister(sess)
	// Return the buffers of frames nobody will write.
	for {
		select {
		case f := <-sess.sendq:
			if f.buf != nil {
				packetPool.Put(f.buf)
			}
			continue
		default:
		}
		break
	}
	cause := context.Cause(sess.ctx)
	log.Info("agent detached",
		"reason", cause.Error(),
		"duration", time.Since(sess.start).Round(time.Millisecond).String(),
		"packets_in", sess.pktsIn.Load(), "bytes_in", sess.bytesIn.Load(),
		"packets_out", sess.pktsOut.Load(), "bytes_out", sess.bytesOut.Load(),
		"dropped", sess.dropped.Load())
}

// readLoop reads frames until the connection fails or the session ends.
func (sess *session) readLoop() error {
	s := sess.srv
	idle := 3 * s.keepAlive
	stop := context.AfterFunc(sess.ctx, func() {
		// Wake the blocked read now, and a blocked write soon: the write
		// loop gets a moment to send a go-away.
		now := time.Now()
		sess.conn.SetReadDeadline(now)
		sess.conn.SetWriteDeadline(now.Add(time.Second))
	})
	defer stop()
	for {
		if now := time.Now(); now.Sub(sess.readDeadlineAt) > s.keepAlive/4 {
			sess.conn.SetReadDeadline(now.Add(idle))
			sess.readDeadlineAt = now
			// The session may have ended just before the deadline moved.
			if err := context.Cause(sess.ctx); err != nil {
				return err
			}
		}
		if _, err := io.ReadFull(sess.br, sess.hdr[:]); err != nil {
			return sess.readErr(err)
		}
		t, n, err := relayproto.ParseHeader(sess.hdr[:])
		if err != nil {
			return err
		}
		switch t {
		case relayproto.FrameSendPacket:
			if n < relayproto.AddrLen {
				return fmt.Errorf("%w: short send-packet", relayproto.ErrMalformed)
			}
			bp := packetPool.Get().(*[]byte)
			buf := (*bp)[:relayproto.HeaderLen+int(n)]
			if _, err := io.ReadFull(sess.br, buf[relayproto.HeaderLen:]); err != nil {
				packetPool.Put(bp)
				return sess.readErr(err)
			}
			sess.forward(bp, buf)
		case relayproto.FramePing:
			var p [8]byte
			if n != 8 {
				return fmt.Errorf("%w: ping of %d bytes", relayproto.ErrMalformed, n)
			}
			if _, err := io.ReadFull(sess.br, p[:]); err != nil {
				return sess.readErr(err)
			}
			sess.sendControl(append(relayproto.AppendHeader(make([]byte, 0, relayproto.HeaderLen+8), relayproto.FramePong, 8), p[:]...))
		default:
			// Pongs and frame types this relay does not know are skipped
			// without allocating.
			if _, err := sess.br.Discard(int(n)); err != nil {
				return sess.readErr(err)
			}
		}
	}
}

// readErr turns a read error into the session's end cause.
func (sess *session) readErr(err error) error {
	if cause := context.Cause(sess.ctx); cause != nil {
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
		s.gone.Add(1)
		p := relayproto.AppendPeerGone(relayproto.AppendHeader(make([]byte, 0, 64), relayproto.FramePeerGone, relayproto.AddrLen+9), gone)
		sess.sendControl(p)
		return
	}
	// Rewrite the frame in place: header, then the source address where
	// the destination was. The packet bytes do not move.
	relayproto.AppendPacketHeader(buf[:0], relayproto.FrameRecvPacket, sess.addr, pktLen)
	select {
	case to.sendq <- outFrame{buf: bp, n: len(buf)}:
		s.forwarded.Add(1)
		s.forwardedBytes.Add(uint64(pktLen))
	default:
		packetPool.Put(bp)
		to.dropped.Add(1)
		s.dropped.Add(1)
	}
}

// sendControl queues a control frame, dropping it if the queue is full:
// every control frame is advisory or repeated.
func (sess *session) sendControl(b []byte) {
	select {
	case sess.sendq <- outFrame{ctl: b}:
	default:
		sess.dropped.Add(1)
		sess.srv.dropped.Add(1)
	}
}

// writeLoop writes queued frames, batching whatever is queued into one
// flush, until the session ends; then it sends a pending go-away.
func (sess *session) writeLoop() {
	for sess.ctx.Err() == nil {
		select {
		case f := <-sess.sendq:
			if err := sess.writeBatch(f); err != nil {
				sess.cancel(err)
			}
		case <-sess.ctx.Done():
		}
	}
	if ga := sess.goAwayMsg.Load(); ga != nil {
		p := relayproto.AppendGoAway(nil, *ga)
		sess.conn.SetWriteDeadline(time.Now().Add(time.Second))
		sess.conn.Write(append(relayproto.AppendHeader(nil, relayproto.FrameGoAway, len(p)), p...))
	}
	sess.conn.Close()
}

// writeBatch writes f and every frame queued behind it, then flushes once.
// The write buffer is borrowed only for the batch.
func (sess *session) writeBatch(f outFrame) error {
	if now := time.Now(); now.Sub(sess.writeDeadlineAt) > sess.srv.keepAlive/4 {
		sess.conn.SetWriteDeadline(now.Add(3 * sess.srv.keepAlive))
		sess.writeDeadlineAt = now
		if err := context.Cause(sess.ctx); err != nil {
			return err
		}
	}
	w := writerPool.Get().(*bufio.Writer)
	w.Reset(sess.conn)
	defer func() {
		w.Reset(nil)
		writerPool.Put(w)
	}()
	for {
		if err := sess.writeFrame(w, f); err != nil {
			return err
		}
		select {
		case f = <-sess.sendq:
			continue
		default:
		}
		return w.Flush()
	}
}

func (sess *session) writeFrame(w *bufio.Writer, f outFrame) error {
	if f.buf == nil {
		_, err := w.Write(f.ctl)
		return err
	}
	_, err := w.Write((*f.buf)[:f.n])
	sess.pktsOut.Add(1)
	sess.bytesOut.Add(uint64(f.n - relayproto.HeaderLen - relayproto.AddrLen))
	packetPool.Put(f.buf)
	return err
}
