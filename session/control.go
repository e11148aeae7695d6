package session

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/burrow-tunnel/burrow/paths"
)

// The control stream. Once a session is up, the client opens one stream of
// kind [KindControl]; the device accepts it only from clients it knows.
// Both sides then send messages on it, in either direction:
//
//	message: type u8, len u16, payload [len]   (len ≤ 1024)
//	  1 path: a signalling message of the path layer ([paths.Direct])
//	  2 ping: id u64
//	  3 pong: id u64, echoing a ping's
//
// Messages of unknown types are skipped.
const (
	ctlPath byte = 1
	ctlPing byte = 2
	ctlPong byte = 3

	maxControlLen = 1024
)

// directKeyLabel names the TLS exporter of the key that direct-path probes
// carry: only the two ends of the session know it.
const directKeyLabel = "burrow direct path"

// ErrBadControl is returned for a malformed control message.
var ErrBadControl = errors.New("session: malformed control message")

// A Control is a session's control stream. Call [Control.Run] to serve it.
type Control struct {
	str       *quic.Stream
	sess      *Session
	initiator bool // the client's end

	wmu sync.Mutex // serializes writes

	mu    sync.Mutex
	pings map[uint64]chan struct{} // waiting for a pong; guarded by mu
}

// OpenControl opens the session's control stream and waits for the device
// to accept it. A device that does not know this client refuses with a
// [*RefusedError].
func (s *Session) OpenControl(ctx context.Context) (*Control, error) {
	str, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, s.streamError(fmt.Errorf("control stream: %w", err))
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(headerTimeout)
	}
	str.SetDeadline(deadline)
	if _, err := str.Write(AppendRequest(nil, Request{Kind: KindControl})); err != nil {
		str.CancelRead(streamAborted)
		str.CancelWrite(streamAborted)
		return nil, s.streamError(fmt.Errorf("control stream: %w", err))
	}
	rep, err := ReadReply(str)
	if err != nil {
		str.CancelRead(streamAborted)
		str.CancelWrite(streamAborted)
		return nil, s.streamError(fmt.Errorf("control stream: no answer from the device: %w", err))
	}
	if rep.Code != CodeOK {
		str.CancelRead(streamAborted)
		str.CancelWrite(streamAborted)
		return nil, &RefusedError{Device: s.peer, Reply: rep}
	}
	str.SetDeadline(time.Time{})
	return newControl(str, s, true), nil
}

// AcceptControl answers ok to a control stream request and returns the
// stream.
func (in *Incoming) AcceptControl() (*Control, error) {
	if _, err := in.str.Write(AppendReply(nil, Reply{Code: CodeOK})); err != nil {
		in.str.CancelRead(streamAborted)
		in.str.CancelWrite(streamAborted)
		return nil, err
	}
	return newControl(in.str, in.sess, false), nil
}

func newControl(str *quic.Stream, s *Session, initiator bool) *Control {
	return &Control{str: str, sess: s, initiator: initiator, pings: make(map[uint64]chan struct{})}
}

// ControlOptions configure [Control.Run].
type ControlOptions struct {
	// DisableDirect keeps this session on the relay.
	DisableDirect bool
	// OnPath, if set, is called (on a goroutine of Run's) with the path
	// whenever it changes.
	OnPath func(paths.PathInfo)
}

// pathWatchEvery is how often Run looks at the path for OnPath.
const pathWatchEvery = time.Second

// Run serves the control stream until it or the session ends: it answers
// pings and, unless direct paths are off or the endpoint has no
// [PathLayer], looks for a direct path with the peer. The search runs in
// the path layer; Run carries its signalling both ways (see [PathLayer]).
// It returns why the stream ended.
func (c *Control) Run(opts ControlOptions) error {
	var direct *paths.Direct
	if !opts.DisableDirect && c.sess.paths != nil {
		tlsState := c.sess.conn.ConnectionState().TLS
		key, err := tlsState.ExportKeyingMaterial(directKeyLabel, nil, 32)
		if err != nil {
			return fmt.Errorf("control: direct path key: %w", err)
		}
		direct, err = c.sess.paths.StartDirect(c.sess.conn.RemoteAddr(), paths.DirectConfig{
			Key:       key,
			Initiator: c.initiator,
			Signal:    func(msg []byte) { c.write(ctlPath, msg) },
		})
		if err != nil && !errors.Is(err, paths.ErrNoDirect) {
			return fmt.Errorf("control: %w", err)
		}
	}
	if direct != nil {
		defer direct.Close()
	}
	if opts.OnPath != nil {
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { c.watchPath(done, opts.OnPath) })
		defer func() {
			close(done)
			wg.Wait()
		}()
	}
	defer c.str.CancelWrite(streamClosed)
	defer c.str.CancelRead(streamClosed)
	buf := make([]byte, maxControlLen)
	for {
		typ, msg, err := readControl(c.str, buf)
		if err != nil {
			if errors.Is(err, ErrBadControl) {
				return err
			}
			return c.sess.streamError(err)
		}
		switch typ {
		case ctlPath:
			if direct != nil {
				if err := direct.Receive(msg); err != nil {
					return fmt.Errorf("control: %w", err)
				}
			}
		case ctlPing:
			c.write(ctlPong, msg)
		case ctlPong:
			c.mu.Lock()
			id := binary.BigEndian.Uint64(msg)
			if ch := c.pings[id]; ch != nil {
				close(ch)
				delete(c.pings, id)
			}
			c.mu.Unlock()
		}
	}
}

// readControl reads one control message into buf (maxControlLen bytes)
// and returns its type and payload. Pings and pongs must carry 8 bytes.
func readControl(r io.Reader, buf []byte) (byte, []byte, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[1:]))
	if n > maxControlLen {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrBadControl, n)
	}
	if (hdr[0] == ctlPing || hdr[0] == ctlPong) && n != 8 {
		return 0, nil, fmt.Errorf("%w: ping or pong of %d bytes", ErrBadControl, n)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[0], buf[:n], nil
}

// appendControl appends a control message.
func appendControl(b []byte, typ byte, payload []byte) []byte {
	b = binary.BigEndian.AppendUint16(append(b, typ), uint16(len(payload)))
	return append(b, payload...)
}

// watchPath calls onPath whenever the path changes, until done is closed.
func (c *Control) watchPath(done chan struct{}, onPath func(paths.PathInfo)) {
	last := c.sess.Path()
	t := time.NewTicker(pathWatchEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-done:
			return
		}
		if p := c.sess.Path(); p.Direct != last.Direct || p.Addr != last.Addr {
			last = p
			onPath(p)
		}
	}
}

// write sends one control message; a failure shows in Run's read.
func (c *Control) write(typ byte, payload []byte) {
	if len(payload) > maxControlLen {
		return
	}
	b := appendControl(make([]byte, 0, 3+len(payload)), typ, payload)
	c.wmu.Lock()
	c.str.Write(b)
	c.wmu.Unlock()
}

// Ping measures the round trip of a ping on the control stream (through
// the session's current path). Run must be serving the stream.
func (c *Control) Ping(ctx context.Context) (time.Duration, error) {
	var idb [8]byte
	rand.Read(idb[:])
	id := binary.BigEndian.Uint64(idb[:])
	ch := make(chan struct{})
	c.mu.Lock()
	c.pings[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pings, id)
		c.mu.Unlock()
	}()
	start := time.Now()
	c.write(ctlPing, idb[:])
	select {
	case <-ch:
		return time.Since(start), nil
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	case <-c.sess.conn.Context().Done():
		return 0, c.sess.streamError(context.Cause(c.sess.conn.Context()))
	}
}
