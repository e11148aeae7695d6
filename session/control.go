package session

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/peerproto"
)

// The control stream. Once a session is up, the client opens one stream of
// kind [KindControl]; the device accepts it only from clients it knows.
// Both sides then send messages on it, in either direction: the path
// layer's signalling ([paths.Direct]), pings and pongs. Their wire format
// is package peerproto's; messages of unknown types are skipped.

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
	// DisableDirect keeps this session on the relay's TCP link: no Direct
	// (neither direct paths nor the UDP relay path).
	DisableDirect bool
	// OnPath, if set, is called (on a goroutine of Run's) with the path
	// whenever it changes.
	OnPath func(paths.PathInfo)
}

// pathWatchEvery is how often Run looks at the path for OnPath.
const pathWatchEvery = time.Second

// Run serves the control stream until it or the session ends: it answers
// pings and, unless direct paths are off, the endpoint has no [PathLayer]
// or the session runs over the LAN already, looks for a direct path with
// the peer. The search runs in
// the path layer; Run carries its signalling both ways (see [PathLayer]).
// It returns why the stream ended.
func (c *Control) Run(opts ControlOptions) error {
	var direct *paths.Direct
	if !opts.DisableDirect && c.sess.paths != nil {
		tlsState := c.sess.conn.ConnectionState().TLS
		key, err := tlsState.ExportKeyingMaterial(peerproto.ExporterLabel, nil, peerproto.KeyLen)
		if err != nil {
			return fmt.Errorf("control: direct path key: %w", err)
		}
		direct, err = c.sess.paths.StartDirect(c.sess.conn.RemoteAddr(), paths.DirectConfig{
			Key:       key,
			Initiator: c.initiator,
			Signal: func(msg []byte) {
				if len(msg) <= peerproto.MaxControlLen {
					c.write(peerproto.AppendPathMessage(nil, peerproto.PathMessage{Signal: msg}))
				}
			},
		})
		// A LAN peer's path is direct already (paths.ErrLANPeer).
		if err != nil && !errors.Is(err, paths.ErrNoDirect) && !errors.Is(err, paths.ErrLANPeer) {
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
	buf := make([]byte, peerproto.MaxControlLen)
	for {
		m, err := peerproto.ReadControl(c.str, buf)
		switch {
		case errors.Is(err, peerproto.ErrUnknownType):
			continue // a newer peer's: skipped
		case errors.Is(err, peerproto.ErrMalformed):
			return fmt.Errorf("control: %w", err)
		case err != nil:
			return c.sess.streamError(err)
		}
		switch m := m.(type) {
		case peerproto.PathMessage:
			if direct != nil {
				if err := direct.Receive(m.Signal); err != nil {
					return fmt.Errorf("control: %w", err)
				}
			}
		case peerproto.Ping:
			c.write(peerproto.AppendPong(nil, peerproto.Pong{ID: m.ID}))
		case peerproto.Pong:
			c.mu.Lock()
			if ch := c.pings[m.ID]; ch != nil {
				close(ch)
				delete(c.pings, m.ID)
			}
			c.mu.Unlock()
		}
	}
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
		if p := c.sess.Path(); p.Direct != last.Direct || p.Addr != last.Addr || p.RelayUDP != last.RelayUDP || p.LAN != last.LAN {
			last = p
			onPath(p)
		}
	}
}

// write sends one encoded control message; a failure shows in Run's read.
func (c *Control) write(msg []byte) {
	c.wmu.Lock()
	c.str.Write(msg)
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
	c.write(peerproto.AppendPing(nil, peerproto.Ping{ID: id}))
	select {
	case <-ch:
		return time.Since(start), nil
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	case <-c.sess.conn.Context().Done():
		return 0, c.sess.streamError(context.Cause(c.sess.conn.Context()))
	}
}
