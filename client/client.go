// Package client is burrow's receiver: the agent on the user's machine. It
// opens tunnels to services on devices ([Client.Dial]) and serves local
// listeners whose every connection becomes a tunnel ([Client.Forward]).
//
// A Client keeps one E2E session per device and reuses it for every
// tunnel; it re-establishes a lost session on the next tunnel. Devices are
// pinned by ID: a device that proves another key is never spoken to.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/pipe"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/session"
)

// Config configures a [Client].
type Config struct {
	// Identity is the client's key; devices authorize its ID. Required.
	Identity *identity.Identity
	// Relay is the relay the client attaches to. Required.
	Relay relaylink.RelayConfig
	// Logger receives one line per significant event. Nil discards logs.
	Logger *slog.Logger
	// DialRelay opens the TCP connection to the relay. Nil uses net.Dialer.
	DialRelay func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialTimeout bounds establishing a session with a device, relay
	// attachment included. Zero means 15s.
	DialTimeout time.Duration
	// Direct configures direct paths to devices (on unless disabled).
	Direct paths.DirectOptions
}

func (c *Config) validate() error {
	if c.Identity == nil {
		return errors.New("client: Config.Identity is required")
	}
	return nil
}

// ErrOffline is matched by every [*OfflineError].
var ErrOffline = errors.New("device offline")

// An OfflineError reports that the relay has no session from the device.
type OfflineError struct {
	Device   identity.ID
	Relay    string
	LastSeen time.Time // zero if the relay does not know
}

func (e *OfflineError) Error() string {
	seen := ""
	if !e.LastSeen.IsZero() {
		seen = fmt.Sprintf(", last seen %s ago", time.Since(e.LastSeen).Round(time.Second))
	}
	return fmt.Sprintf("device %s is offline: it is not attached to relay %s%s", e.Device.Short(), e.Relay, seen)
}

// Is makes an OfflineError match [ErrOffline].
func (e *OfflineError) Is(target error) bool { return target == ErrOffline }

// A NotAllowedError reports that the relay does not route this client to
// the device, because the device has not allowed it: the relay enforces
// the device's own list. It matches [session.ErrNotAuthorized].
type NotAllowedError struct {
	Device identity.ID
	Relay  string
}

func (e *NotAllowedError) Error() string {
	return fmt.Sprintf("not authorized by the device: device %s has not allowed this client, so relay %s drops its packets; ask the device owner for an invite (burrow pair)",
		e.Device.Short(), e.Relay)
}

// Is makes a NotAllowedError match [session.ErrNotAuthorized].
func (e *NotAllowedError) Is(target error) bool { return target == session.ErrNotAuthorized }

// ErrUnreachable is matched by every [*UnreachableError].
var ErrUnreachable = errors.New("device unreachable")

// An UnreachableError reports that the relay does not route this client to
// the device and does not say why: the device is offline, or it has not
// allowed this client. A relay tells the difference (and when the device
// was last seen) only to clients the device allowed, so that a stranger
// learns nothing of it.
type UnreachableError struct {
	Device identity.ID
	Relay  string
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("device %s is unreachable through relay %s: it is offline, or it has not authorized this client (the relay does not say which to a client the device has not allowed). "+
		"If you paired with it, check that it runs and is attached (burrow device status) and that you were not revoked; if not, ask its owner for an invite (burrow pair)",
		e.Device.Short(), e.Relay)
}

// Is makes an UnreachableError match [ErrUnreachable].
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }

// A Client is a running receiver. Create it with [New]; it is safe for
// concurrent use.
type Client struct {
	cfg Config
	log *slog.Logger
	pc  *paths.Conn
	ep  *session.Endpoint

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // dials and session watchers

	mu      sync.Mutex
	devices map[identity.ID]*deviceSession // guarded by mu
	closed  bool                           // guarded by mu
}

// A deviceSession is the client's session with one device, or the dial
// that will produce it.
type deviceSession struct {
	ready  chan struct{} // closed when the dial ends
	sess   *session.Session
	err    error
	cancel context.CancelCauseFunc // of the dial in progress

	// ctlReady is closed once the session's control stream is open (ctl)
	// or failed to open (ctlErr).
	ctlReady chan struct{}
	ctl      *session.Control
	ctlErr   error

	// gone is cancelled, with an *OfflineError, when the relay says the
	// device is gone while this session is up: tunnels waiting for the
	// device's reply fail at once. recvWhenGone is how many packets the
	// session had received then; if it receives more, the device is back
	// and a fresh gone context is made.
	gone         context.Context         // guarded by Client.mu
	goneCancel   context.CancelCauseFunc // guarded by Client.mu
	goneSet      bool                    // guarded by Client.mu
	recvWhenGone uint64                  // guarded by Client.mu
}

// New starts a client: it attaches to the relay in the background.
func New(cfg Config) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 15 * time.Second
	}
	c := &Client{cfg: cfg, log: cfg.Logger, devices: make(map[identity.ID]*deviceSession)}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	pc, err := paths.Listen(paths.Config{
		Identity:   cfg.Identity,
		Role:       relayproto.RoleClient,
		Relay:      cfg.Relay,
		Dial:       cfg.DialRelay,
		Logger:     cfg.Logger,
		OnPeerGone: c.peerGone,
		Direct:     cfg.Direct,
	})
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	ep, err := session.NewEndpoint(pc, session.Config{Identity: cfg.Identity})
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("client: %w", err)
	}
	c.pc, c.ep = pc, ep
	return c, nil
}

// ID returns the client's ID.
func (c *Client) ID() identity.ID { return c.cfg.Identity.ID() }

// WaitAttached waits until the client is attached to its relay; see
// [paths.Conn.WaitAttached].
func (c *Client) WaitAttached(ctx context.Context) error { return c.pc.WaitAttached(ctx) }

// RelayStatus returns the client's relay attachment.
func (c *Client) RelayStatus() paths.Status { return c.pc.Status() }

// peerGone is called by the path layer when the relay could not deliver to
// a peer. It must not block.
func (c *Client) peerGone(g paths.PeerGone) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ds := c.devices[g.Peer.ID]
	if ds == nil {
		return
	}
	var err error
	switch g.Reason {
	case relayproto.GoneOffline:
		err = &OfflineError{Device: g.Peer.ID, Relay: c.cfg.Relay.Addr, LastSeen: g.LastSeen}
	case relayproto.GoneNotAuthorized:
		err = &NotAllowedError{Device: g.Peer.ID, Relay: c.cfg.Relay.Addr}
	case relayproto.GoneUnreachable:
		err = &UnreachableError{Device: g.Peer.ID, Relay: c.cfg.Relay.Addr}
	default:
		err = fmt.Errorf("relay %s will not route to device %s (%s)", c.cfg.Relay.Addr, g.Peer.ID.Short(), g.Reason)
	}
	select {
	case <-ds.ready:
		if ds.sess != nil && !ds.goneSet {
			ds.goneSet = true
			ds.recvWhenGone = ds.sess.Stats().PacketsReceived
			ds.goneCancel(err)
		}
	default:
		// A dial is in progress: fail it now rather than at its timeout.
		ds.cancel(err)
	}
}

// session returns the session with device, dialing it if there is none (or
// the one there is has ended), and a context cancelled if the relay says
// the device has gone.
func (c *Client) session(ctx context.Context, device identity.ID) (*session.Session, context.Context, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, nil, errors.New("client is closed")
	}
	ds := c.devices[device]
	if ds != nil {
		select {
		case <-ds.ready:
			if !c.usableLocked(ds) {
				delete(c.devices, device)
				ds = nil
			}
		default:
		}
	}
	if ds == nil {
		ds = &deviceSession{ready: make(chan struct{}), ctlReady: make(chan struct{})}
		ds.gone, ds.goneCancel = context.WithCancelCause(c.ctx)
		c.devices[device] = ds
		dialCtx, cancel := context.WithCancelCause(c.ctx)
		ds.cancel = cancel
		c.wg.Go(func() { c.dial(dialCtx, ds, device) })
	}
	c.mu.Unlock()

	select {
	case <-ds.ready:
	case <-ctx.Done():
		return nil, nil, context.Cause(ctx)
	}
	if ds.err != nil {
		return nil, nil, ds.err
	}
	c.mu.Lock()
	gone := ds.gone
	c.mu.Unlock()
	return ds.sess, gone, nil
}

// usableLocked reports whether a finished dial's session can carry new
// tunnels; an unusable one is closed.
func (c *Client) usableLocked(ds *deviceSession) bool {
	if ds.err != nil || ds.sess.Context().Err() != nil {
		return false
	}
	if ds.goneSet {
		if ds.sess.Stats().PacketsReceived == ds.recvWhenGone {
			// Not a word from the device since the relay said it left.
			ds.sess.Close(session.CloseNormal, "device went offline")
			return false
		}
		// The device answered since; it is back.
		ds.goneSet = false
		ds.gone, ds.goneCancel = context.WithCancelCause(c.ctx)
	}
	return true
}

// dial establishes a session with device and publishes it in ds.
func (c *Client) dial(ctx context.Context, ds *deviceSession, device identity.ID) {
	defer close(ds.ready)
	defer ds.cancel(nil)
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.DialTimeout,
		fmt.Errorf("no answer from device %s within %s", device.Short(), c.cfg.DialTimeout))
	defer cancel()
	if err := c.pc.WaitAttached(ctx); err != nil {
		ds.err = fmt.Errorf("cannot reach device %s: %w", device.Short(), err)
		return
	}
	start := time.Now()
	s, err := c.ep.Dial(ctx, paths.Addr{ID: device}, device)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, identity.ErrKeyMismatch) {
			err = cause
		}
		c.log.Warn("session failed", "device", device.String(), "err", err)
		ds.err = err
		return
	}
	c.log.Info("session opened", "device", device.String(), "path", "relay",
		"handshake", time.Since(start).Round(time.Microsecond).String())
	ds.sess = s
	c.wg.Go(func() { c.runControl(ds, device) })
	c.wg.Go(func() {
		<-s.Context().Done()
		st := s.Stats()
		c.log.Info("session closed", "device", device.String(), "reason", context.Cause(s.Context()).Error(),
			"bytes_sent", st.BytesSent, "bytes_received", st.BytesReceived, "packets_lost", st.PacketsLost)
	})
}

// controlTimeout bounds opening a session's control stream.
const controlTimeout = 10 * time.Second

// runControl opens and serves the control stream of ds's session: pings,
// and the search for a direct path.
func (c *Client) runControl(ds *deviceSession, device identity.ID) {
	log := c.log.With("device", device.String())
	ctx, cancel := context.WithTimeout(ds.sess.Context(), controlTimeout)
	ds.ctl, ds.ctlErr = ds.sess.OpenControl(ctx)
	cancel()
	close(ds.ctlReady)
	if ds.ctlErr != nil {
		if ds.sess.Context().Err() == nil {
			log.Debug("no control stream: the session stays on the relay", "err", ds.ctlErr)
		}
		return
	}
	err := ds.ctl.Run(session.ControlOptions{
		DisableDirect: c.cfg.Direct.Disable,
		OnPath:        func(p paths.PathInfo) { log.Info("session path", p.LogAttrs()...) },
	})
	if ds.sess.Context().Err() == nil && c.ctx.Err() == nil {
		log.Debug("control stream ended", "err", err)
	}
}

// A PingResult is one ping's outcome.
type PingResult struct {
	RTT  time.Duration
	Path paths.PathInfo // the path the session used when the answer came
}

// Ping measures the round trip to device through the session's control
// stream, opening the session if needed.
func (c *Client) Ping(ctx context.Context, device identity.ID) (PingResult, error) {
	s, _, err := c.session(ctx, device)
	if err != nil {
		return PingResult{}, err
	}
	c.mu.Lock()
	ds := c.devices[device]
	c.mu.Unlock()
	if ds == nil || ds.sess != s {
		return PingResult{}, errors.New("client: the session ended")
	}
	select {
	case <-ds.ctlReady:
	case <-ctx.Done():
		return PingResult{}, context.Cause(ctx)
	}
	if ds.ctlErr != nil {
		return PingResult{}, ds.ctlErr
	}
	rtt, err := ds.ctl.Ping(ctx)
	if err != nil {
		return PingResult{}, err
	}
	return PingResult{RTT: rtt, Path: s.Path()}, nil
}

// Path says how packets of the session with device travel now (over the
// relay if there is no session).
func (c *Client) Path(device identity.ID) paths.PathInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ds := c.devices[device]; ds != nil {
		select {
		case <-ds.ready:
			if ds.sess != nil {
				return ds.sess.Path()
			}
		default:
		}
	}
	return paths.PathInfo{}
}

// Dial opens a tunnel to service on device and waits for the device to
// accept it. Refusals are [*session.RefusedError]s; an unattached device is
// an [*OfflineError]; a device proving another key is an
// [*identity.KeyMismatchError].
func (c *Client) Dial(ctx context.Context, device identity.ID, service string) (*session.Tunnel, error) {
	t, release, err := c.open(ctx, device, service, true)
	if err != nil {
		return nil, err
	}
	release()
	return t, nil
}

// open opens a tunnel. With wait it waits for the device's reply;
// without, the reply is read by the tunnel's first Read. Opening and
// waiting end early if ctx is done or the device goes away; release frees
// what watches for that, once the reply is in.
func (c *Client) open(ctx context.Context, device identity.ID, service string, wait bool) (t *session.Tunnel, release func(), err error) {
	if err := session.ValidService(service); err != nil {
		return nil, nil, err
	}
	// A session that died since it was cached gets one fresh retry.
	for attempt := 0; ; attempt++ {
		s, gone, err := c.session(ctx, device)
		if err != nil {
			return nil, nil, err
		}
		octx, cancel := context.WithCancelCause(ctx)
		stop := context.AfterFunc(gone, func() { cancel(context.Cause(gone)) })
		release := func() {
			stop()
			cancel(nil)
		}
		if wait {
			t, err = s.OpenTunnel(octx, service)
		} else {
			t, err = s.StartTunnel(octx, service)
		}
		if err == nil {
			return t, release, nil
		}
		release()
		if _, refused := errors.AsType[*session.RefusedError](err); refused {
			return nil, nil, err
		}
		if attempt > 0 || s.Context().Err() == nil || ctx.Err() != nil {
			return nil, nil, err
		}
	}
}

// Forward serves ln until ctx is done or ln fails: every accepted
// connection becomes a tunnel to service on device, half-closes and aborts
// included. On return ln is closed and every connection it accepted has
// been closed.
func (c *Client) Forward(ctx context.Context, ln net.Listener, device identity.ID, service string) error {
	if err := session.ValidService(service); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = make(map[net.Conn]struct{})
	)
	defer func() {
		mu.Lock()
		for conn := range conns {
			pipe.Abort(conn)
		}
		mu.Unlock()
		wg.Wait()
	}()
	log := c.log.With("device", device.String(), "service", service)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("forward %s: %w", ln.Addr(), err)
		}
		mu.Lock()
		conns[conn] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, conn)
				mu.Unlock()
			}()
			c.forwardConn(ctx, conn, device, service, log)
		})
	}
}

// forwardConn joins one accepted connection to a new tunnel.
func (c *Client) forwardConn(ctx context.Context, conn net.Conn, device identity.ID, service string, log *slog.Logger) {
	local, ok := conn.(pipe.Conn)
	if !ok {
		log.Error("local connection cannot half-close", "type", fmt.Sprintf("%T", conn))
		conn.Close()
		return
	}
	start := time.Now()
	t, release, err := c.open(ctx, device, service, false)
	if err != nil {
		log.Error("tunnel failed", "from", conn.RemoteAddr().String(), "err", err)
		pipe.Abort(conn)
		return
	}
	defer release()
	log = log.With("stream", t.ID())
	log.Debug("tunnel opened", "from", conn.RemoteAddr().String())
	res := pipe.Join(local, t)
	attrs := []any{"bytes_out", res.AToB, "bytes_in", res.BToA, "duration", time.Since(start).Round(time.Millisecond).String()}
	if res.Err != nil {
		if _, refused := errors.AsType[*session.RefusedError](res.Err); refused {
			log.Error("tunnel refused", "err", res.Err)
			return
		}
		attrs = append(attrs, "err", res.Err)
	}
	log.Info("tunnel closed", attrs...)
}

// Close closes every session (and so every tunnel), detaches from the
// relay and waits for the goroutines the client started. It is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	devices := c.devices
	c.devices = nil
	c.mu.Unlock()
	c.cancel()
	for _, ds := range devices {
		<-ds.ready
		if ds.sess != nil {
			ds.sess.Close(session.CloseNormal, "client closed")
		}
	}
	c.ep.Close()
	err := c.pc.Close()
	c.wg.Wait()
	return err
}
