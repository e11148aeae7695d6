package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// headerTimeout bounds how long a device waits for a request header on a
// new stream, and a client for the reply.
const headerTimeout = 10 * time.Second

// A Tunnel is one tunnelled TCP connection: a QUIC stream whose header has
// been sent (client) or accepted (device). It is a [net.Conn] with
// half-close ([Tunnel.CloseWrite]) and abort ([Tunnel.Abort]).
type Tunnel struct {
	str  *quic.Stream
	sess *Session

	// A client tunnel reads the device's reply once, bounded by the
	// context it was started with; device tunnels have no service here.
	service   string
	ctx       context.Context
	stopCtx   func() bool
	replyOnce sync.Once
	replyErr  error
	mu        sync.Mutex
	replied   bool // guarded by mu; once set, ctx no longer touches deadlines
}

// ID returns the tunnel's stream number, unique within its session.
func (t *Tunnel) ID() int64 { return int64(t.str.StreamID()) }

// Read reads from the peer. On a client tunnel whose reply has not been
// read yet, it reads the reply first and fails with a [*RefusedError] if
// the device refused.
func (t *Tunnel) Read(p []byte) (int, error) {
	if err := t.Reply(); err != nil {
		return 0, err
	}
	return t.str.Read(p)
}

// Write writes to the peer. On a client tunnel whose device refused it,
// Write fails with the [*RefusedError] rather than the stream error the
// refusal caused.
func (t *Tunnel) Write(p []byte) (int, error) {
	n, err := t.str.Write(p)
	if err != nil && t.service != "" {
		if rerr := t.Reply(); rerr != nil {
			return n, rerr
		}
	}
	return n, err
}

// CloseWrite ends the write direction (the peer reads EOF); reading goes on.
func (t *Tunnel) CloseWrite() error { return t.str.Close() }

// Close ends both directions gracefully: buffered data is still delivered
// and the peer reads EOF.
func (t *Tunnel) Close() error {
	t.str.CancelRead(streamClosed)
	return t.str.Close()
}

// Abort resets both directions: the peer's reads and writes fail at once,
// as with a TCP reset.
func (t *Tunnel) Abort() {
	t.str.CancelWrite(streamAborted)
	t.str.CancelRead(streamAborted)
}

// LocalAddr returns this agent's path-layer address.
func (t *Tunnel) LocalAddr() net.Addr { return t.sess.conn.LocalAddr() }

// RemoteAddr returns the peer's path-layer address.
func (t *Tunnel) RemoteAddr() net.Addr { return t.sess.conn.RemoteAddr() }

// SetDeadline implements [net.Conn].
func (t *Tunnel) SetDeadline(d time.Time) error { return t.str.SetDeadline(d) }

// SetReadDeadline implements [net.Conn].
func (t *Tunnel) SetReadDeadline(d time.Time) error { return t.str.SetReadDeadline(d) }

// SetWriteDeadline implements [net.Conn].
func (t *Tunnel) SetWriteDeadline(d time.Time) error { return t.str.SetWriteDeadline(d) }

// IsAbort reports whether err means the peer aborted the tunnel (rather
// than closing it).
func IsAbort(err error) bool {
	se, ok := errors.AsType[*quic.StreamError](err)
	return ok && se.Remote && se.ErrorCode == streamAborted
}

// Reply waits for the device's answer to the request, once. It returns nil
// if the device accepted, a [*RefusedError] if it refused, the cause of the
// tunnel's context if that ended first, or the error that ended the stream.
func (t *Tunnel) Reply() error {
	t.replyOnce.Do(func() {
		if t.service == "" { // device side
			return
		}
		t.str.SetReadDeadline(time.Now().Add(headerTimeout))
		var rep Reply
		err := context.Cause(t.ctx) // the context may have ended before the deadline moved
		if err == nil {
			rep, err = ReadReply(t.str)
		}
		t.mu.Lock()
		t.replied = true
		t.str.SetReadDeadline(time.Time{})
		t.mu.Unlock()
		t.stopCtx()
		switch {
		case err != nil && t.ctx.Err() != nil:
			t.replyErr = context.Cause(t.ctx)
		case err != nil:
			t.replyErr = t.sess.streamError(fmt.Errorf("tunnel to %q: no reply from the device: %w", t.service, err))
		case rep.Code != CodeOK:
			t.replyErr = &RefusedError{Device: t.sess.peer, Service: t.service, Reply: rep}
		}
	})
	return t.replyErr
}

// streamError explains a stream failure by the session's end, if it ended
// because the device does not know this client.
func (s *Session) streamError(err error) error {
	for _, e := range []error{err, context.Cause(s.conn.Context())} {
		if code, msg, ok := PeerClosedError(e); ok && (code == CloseNotAuthorized || code == CloseRevoked) {
			return &RefusedError{Device: s.peer, Reply: Reply{Code: CodeNotAuthorized, Detail: msg}, revoked: code == CloseRevoked}
		}
	}
	return err
}

// StartTunnel opens a tunnel to service and sends its request without
// waiting for the reply: bytes written now travel with the request, saving
// a round trip. The reply is read by the first [Tunnel.Read] (or
// [Tunnel.Reply]); a refusal surfaces there. ctx bounds opening the stream
// and waiting for the reply, not the tunnel's life after that.
func (s *Session) StartTunnel(ctx context.Context, service string) (*Tunnel, error) {
	if err := ValidService(service); err != nil {
		return nil, err
	}
	str, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, s.streamError(fmt.Errorf("open tunnel: %w", err))
	}
	if _, err := str.Write(AppendRequest(nil, Request{Kind: KindTunnel, Service: service})); err != nil {
		str.CancelRead(streamAborted)
		str.CancelWrite(streamAborted)
		return nil, s.streamError(fmt.Errorf("open tunnel: %w", err))
	}
	t := &Tunnel{str: str, sess: s, service: service, ctx: ctx}
	t.stopCtx = context.AfterFunc(ctx, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if !t.replied {
			t.str.SetReadDeadline(time.Now())
		}
	})
	return t, nil
}

// OpenTunnel opens a tunnel to service and waits for the device's reply.
// A refusal is a [*RefusedError].
func (s *Session) OpenTunnel(ctx context.Context, service string) (*Tunnel, error) {
	t, err := s.StartTunnel(ctx, service)
	if err != nil {
		return nil, err
	}
	if err := t.Reply(); err != nil {
		t.Abort()
		return nil, err
	}
	return t, nil
}

// An Incoming is a tunnel stream a client opened, not yet answered.
type Incoming struct {
	str  *quic.Stream
	sess *Session
}

// AcceptTunnel waits for the client to open a tunnel. Read the request
// with [Incoming.Request] on a goroutine of its own: a client may be slow
// to send it.
func (s *Session) AcceptTunnel(ctx context.Context) (*Incoming, error) {
	str, err := s.conn.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return &Incoming{str: str, sess: s}, nil
}

// ID returns the stream number.
func (in *Incoming) ID() int64 { return int64(in.str.StreamID()) }

// Request reads the tunnel's request header.
func (in *Incoming) Request() (Request, error) {
	in.str.SetReadDeadline(time.Now().Add(headerTimeout))
	defer in.str.SetReadDeadline(time.Time{})
	return ReadRequest(in.str)
}

// Accept answers ok and returns the tunnel.
func (in *Incoming) Accept() (*Tunnel, error) {
	if _, err := in.str.Write(AppendReply(nil, Reply{Code: CodeOK})); err != nil {
		in.str.CancelRead(streamAborted)
		in.str.CancelWrite(streamAborted)
		return nil, err
	}
	return &Tunnel{str: in.str, sess: in.sess}, nil
}

// Refuse answers with a refusal and closes the stream; nothing the client
// sent is read.
func (in *Incoming) Refuse(rep Reply) error { return in.Answer(rep) }
