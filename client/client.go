// Package client is burrow's receiver: the agent on the user's machine. It
// opens tunnels to services on devices ([Client.Dial]) and serves local
// listeners whose every connection becomes a tunnel ([Client.Forward]).
//
// A Client keeps one E2E session per device and reuses it for every
// tunnel; it re-establishes a lost session on the next tunnel. Devices are
// pinned by ID: a device that proves another key is never spoken to.
//
// The path layer, the end-to-end endpoint and the serving of control
// streams are package agent's, as on a device; this package holds the
// receiver's own part: which devices it reaches and how (one session per
// device, dialed on demand, dropped when the relay says the device left),
// pairing, the local listeners, and the home directory of known devices
// (home.go). It must not decide anything for a device: the device
// authorizes every tunnel itself.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/agent"
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
	// NoLAN keeps the client off the LAN: sessions start over the relay
	// only. False: each session is also dialed on the LAN, where a device
	// announces itself (mDNS, under a tag only those who know its ID can
	// compute), at the same time as over the relay; a session there wins,
	// and one starts there with the relay down. Off as well when direct
	// paths and the UDP relay path both are, which leaves no UDP socket.
	NoLAN bool
	// LANInterface names the one interface to look for devices on.
	// Empty: every interface that is up, not loopback and can multicast.
	LANInterface string
}

func (c *Config) validate() error {
	if c.Identity == nil {
		return errors.New("client: Config.Identity is required")
	}
	return nil
}

// A Client is a running receiver. Create it with [New]; it is safe for
// concurrent use.
type Client struct {
	cfg   Config
	log   *slog.Logger
	agent *agent.Agent

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // dials and control streams

	mu      sync.Mutex
	devices map[identity.ID]*deviceConn // guarded by mu
	closed  bool                        // guarded by mu
}

// A deviceConn is what the client holds for one device: the session with
// it, or the dial that will produce it, and the session's control stream.
type deviceConn struct {
	// ready is closed when the dial ends; the dial sets sess or err
	// before, and they do not change after.
	ready  chan struct{}
	sess   *session.Session
	onLAN  bool // sess started on the LAN, not through the relay
	err    error
	cancel context.CancelCauseFunc // of the dial in progress
	// relayCancel, if not nil, ends only the dial over the relay while
	// the LAN is tried too; guarded by Client.mu.
	relayCancel context.CancelCauseFunc

	// ctlReady is closed once the session's control stream is open (ctl)
	// or failed to open (ctlErr); they are set before, and do not change
	// after.
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
	c := &Client{cfg: cfg, log: cfg.Logger, devices: make(map[identity.ID]*deviceConn)}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	a, err := agent.Start(paths.Config{
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
	c.agent = a
	return c, nil
}

// ID returns the client's ID.
func (c *Client) ID() identity.ID { return c.cfg.Identity.ID() }

// WaitAttached waits until the client is attached to its relay; see
// [paths.Conn.WaitAttached].
func (c *Client) WaitAttached(ctx context.Context) error {
	return c.agent.Paths().WaitAttached(ctx)
}

// RelayStatus returns the client's relay attachment.
func (c *Client) RelayStatus() paths.Status { return c.agent.Paths().Status() }

// peerGone is called by the path layer when the relay could not deliver to
// a peer. It must not block.
func (c *Client) peerGone(g paths.PeerGone) {
	c.mu.Lock()
	defer c.mu.Unlock()
	dc := c.devices[g.Peer.ID]
	if dc == nil {
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
	case <-dc.ready:
		if dc.onLAN {
			return // the relay speaks of the device's place there only
		}
		if dc.sess != nil && !dc.goneSet {
			dc.goneSet = true
			dc.recvWhenGone = dc.sess.Stats().PacketsReceived
			dc.goneCancel(err)
		}
	default:
		// A dial is in progress: fail it now rather than at its timeout,
		// or only its part over the relay while the LAN is tried too.
		if dc.relayCancel != nil {
			dc.relayCancel(err)
		} else {
			dc.cancel(err)
		}
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
	dc := c.devices[device]
	if dc != nil {
		select {
		case <-dc.ready:
			if !c.usableLocked(dc) {
				delete(c.devices, device)
				dc = nil
			}
		default:
		}
	}
	if dc == nil {
		dc = &deviceConn{ready: make(chan struct{}), ctlReady: make(chan struct{})}
		dc.gone, dc.goneCancel = context.WithCancelCause(c.ctx)
		c.devices[device] = dc
		dialCtx, cancel := context.WithCancelCause(c.ctx)
		dc.cancel = cancel
		c.wg.Go(func() { c.dial(dialCtx, dc, device) })
	}
	c.mu.Unlock()

	select {
	case <-dc.ready:
	case <-ctx.Done():
		return nil, nil, context.Cause(ctx)
	}
	if dc.err != nil {
		return nil, nil, dc.err
	}
	c.mu.Lock()
	gone := dc.gone
	c.mu.Unlock()
	return dc.sess, gone, nil
}

// usableLocked reports whether a finished dial's session can carry new
// tunnels; an unusable one is closed.
func (c *Client) usableLocked(dc *deviceConn) bool {
	if dc.err != nil || dc.sess.Context().Err() != nil {
		return false
	}
	if dc.goneSet {
		if dc.sess.Stats().PacketsReceived == dc.recvWhenGone {
			// Not a word from the device since the relay said it left.
			dc.sess.Close(session.CloseNormal, "device went offline")
			return false
		}
		// The device answered since; it is back.
		dc.goneSet = false
		dc.gone, dc.goneCancel = context.WithCancelCause(c.ctx)
	}
	return true
}

// dial establishes a session with device and publishes it in dc.
func (c *Client) dial(ctx context.Context, dc *deviceConn, device identity.ID) {
	defer close(dc.ready)
	defer dc.cancel(nil)
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.DialTimeout,
		fmt.Errorf("no answer from device %s within %s", device.Short(), c.cfg.DialTimeout))
	defer cancel()
	if c.cfg.NoLAN || c.agent.Paths().DirectPort() == 0 {
		dc.sess, dc.err = c.agent.Dial(ctx, device)
	} else {
		dc.sess, dc.onLAN, dc.err = c.race(ctx, dc, device)
	}
	if dc.err == nil {
		c.wg.Go(func() { c.runControl(dc, device) })
	}
}

// runControl opens and serves the control stream of dc's session: pings,
// and the search for a direct path.
func (c *Client) runControl(dc *deviceConn, device identity.ID) {
	log := c.log.With("device", device.String())
	dc.ctl, dc.ctlErr = c.agent.OpenControl(dc.sess, log)
	close(dc.ctlReady)
	if dc.ctlErr == nil {
		c.agent.ServeControl(c.ctx, dc.sess, dc.ctl, log)
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
	dc := c.devices[device]
	c.mu.Unlock()
	if dc == nil || dc.sess != s {
		return PingResult{}, errors.New("client: the session ended")
	}
	select {
	case <-dc.ctlReady:
	case <-ctx.Done():
		return PingResult{}, context.Cause(ctx)
	}
	if dc.ctlErr != nil {
		return PingResult{}, dc.ctlErr
	}
	rtt, err := dc.ctl.Ping(ctx)
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
	if dc := c.devices[device]; dc != nil {
		select {
		case <-dc.ready:
			if dc.sess != nil {
				return dc.sess.Path()
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
	for _, dc := range devices {
		<-dc.ready
		if dc.sess != nil {
			dc.sess.Close(session.CloseNormal, "client closed")
		}
	}
	err := c.agent.Close()
	c.wg.Wait()
	return err
}
