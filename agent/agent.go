// Package agent is what every burrow agent runs beneath its role: the path
// layer (package paths: the relay attachment and the direct paths), the
// end-to-end endpoint on it (package session), and each session's control
// stream, with the log lines that go with them.
//
//	client, device   policy: who may do what, pairing, services, known devices
//	     │  Dial, DialLAN, Listen, OpenControl, ServeControl, LogClosed
//	agent            paths.Listen, then session.NewEndpoint(pc, {Paths: pc})
//	     │
//	session          QUIC; its control stream carries the direct-path signalling
//	     │  packets; ▼ StartDirect, Receive (the peer's messages); ▲ Signal (ours)
//	paths.Conn       over the relay, a direct UDP path or the LAN, to the peer
//
// The client and the device differ in policy, not in this wiring, so it
// lives here once. A client dials sessions, through the relay
// ([Agent.Dial]) or straight to a device on its LAN ([Agent.DialLAN]), and
// opens their control streams ([Agent.OpenControl]); a device accepts
// sessions ([Agent.Listen]) and, once it has decided to, their control
// streams; both serve a control stream with [Agent.ServeControl]. It is
// not part of package session, which runs sessions over any packet
// connection (a plain UDP socket in its tests) and must not know how an
// agent attaches to a relay.
//
// An Agent holds no policy: it never decides who may open a session, a
// tunnel or a control stream, and reads no configuration file or flag.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/lan"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/session"
)

// An Agent is an agent's path layer and end-to-end endpoint. Create it with
// [Start]; it is safe for concurrent use.
type Agent struct {
	// Set by Start, then only read.
	log       *slog.Logger
	role      relayproto.Role
	directOff bool // sessions stay on the relay's TCP link
	pc        *paths.Conn
	ep        *session.Endpoint

	wg sync.WaitGroup // the watchers Dial starts
}

// Start starts an agent with the path layer cfg describes: it attaches to
// the relay in the background. The endpoint on it uses cfg.Identity and
// looks for direct paths and the UDP relay path unless cfg.Direct turns
// both off.
func Start(cfg paths.Config) (*Agent, error) {
	pc, err := paths.Listen(cfg)
	if err != nil {
		return nil, err
	}
	scfg := session.Config{Identity: cfg.Identity, Paths: pc}
	if cfg.Role == relayproto.RoleDevice && cfg.Direct.AcceptLAN {
		// A handshake on the LAN is answered only for a client that
		// knows the device's ID (lan.Hello): the device's key, which the
		// answer shows, names it.
		hellos := lan.NewHelloChecker(cfg.Identity.ID(), nil)
		scfg.AcceptHello = func(remote net.Addr, serverName string) error {
			if !paths.IsLAN(remote) {
				return nil // through a relay, which admitted the client
			}
			return hellos.Check(serverName)
		}
	}
	ep, err := session.NewEndpoint(pc, scfg)
	if err != nil {
		pc.Close()
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{log: log, role: cfg.Role, directOff: cfg.Direct.Disable && cfg.Direct.NoRelayUDP, pc: pc, ep: ep}, nil
}

// Paths returns the agent's path layer: its relay attachment (status,
// waiting for it) and what the roles tell the relay (a device's access
// list, a client's pairing intents).
func (a *Agent) Paths() *paths.Conn { return a.pc }

// Close ends every session abruptly (close them first to tell peers),
// detaches from the relay and waits for the goroutines the agent started.
func (a *Agent) Close() error {
	a.ep.Close()
	err := a.pc.Close()
	a.wg.Wait()
	return err
}

// Dial opens a session to device, whose key must have that ID, once the
// agent is attached to its relay; ctx bounds both, and its cause is the
// error if it ends first (a key mismatch excepted). Dial logs the
// session's opening, or its failure, and its end.
func (a *Agent) Dial(ctx context.Context, device identity.ID) (*session.Session, error) {
	if err := a.pc.WaitAttached(ctx); err != nil {
		return nil, fmt.Errorf("cannot reach device %s: %w", device.Short(), err)
	}
	return a.dial(ctx, device, paths.Addr{ID: device}, session.DialOptions{}, "path", "relay")
}

// A session on the LAN cannot move to another path: when its path dies
// (the client left the network), it ends, and the next tunnel dials
// again, through the relay if the LAN is gone. So its keepalives are
// frequent and its idle timeout short, for it to end within seconds
// rather than the half minute of a session that can move.
const (
	lanKeepAlive   = 2 * time.Second
	lanIdleTimeout = 7 * time.Second
)

// DialLAN opens a session to device at addr, a UDP address on this agent's
// LAN (the device's direct socket, which discovery found), without waiting
// for the relay: the session runs over the LAN and no relay carries it.
// The device's key must have the ID device, as in [Agent.Dial] (else the
// error is an [identity.ErrKeyMismatch]); ctx bounds the handshake, and its
// cause is the error if it ends first. Its first message carries a hello
// (lan.Hello) that proves it knows the device's ID, without which a device
// on the LAN does not answer. It fails at once if the agent has no UDP
// socket (direct paths and the UDP relay path are both off). It logs as
// Dial does, with path=lan and the address.
func (a *Agent) DialLAN(ctx context.Context, device identity.ID, addr netip.AddrPort) (*session.Session, error) {
	to, err := a.pc.LANAddr(addr)
	if err != nil {
		return nil, fmt.Errorf("cannot reach device %s on the LAN: %w", device.Short(), err)
	}
	return a.dial(ctx, device, to, session.DialOptions{ServerName: lan.Hello(device, time.Now()),
		KeepAlive: lanKeepAlive, IdleTimeout: lanIdleTimeout}, "path", "lan", "addr", addr.String())
}

// dial opens a session to device at to with opts, logging its opening
// with the key-value pairs where (its path), or its failure, and its end.
func (a *Agent) dial(ctx context.Context, device identity.ID, to net.Addr, opts session.DialOptions, where ...any) (*session.Session, error) {
	log := a.log.With("device", device.String())
	start := time.Now()
	s, err := a.ep.DialWith(ctx, to, device, opts)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, identity.ErrKeyMismatch) {
			err = cause
		}
		if errors.Is(err, context.Canceled) {
			// Given up by the caller: another path won, or it stops.
			log.Debug("session dial abandoned", where...)
		} else {
			log.Warn("session failed", append(where, "err", err)...)
		}
		return nil, err
	}
	log.Info("session opened", append(where, "handshake", time.Since(start).Round(time.Microsecond).String())...)
	a.wg.Go(func() {
		<-s.Context().Done()
		a.LogClosed(log, s)
	})
	return s, nil
}

// Listen starts accepting sessions. Any client proving a key is accepted:
// the caller decides whether to keep it.
func (a *Agent) Listen() (*session.Listener, error) { return a.ep.Listen() }

// LogClosed logs the end of s on log: why it ended, extra (key-value pairs
// the role adds) and its transport figures.
func (a *Agent) LogClosed(log *slog.Logger, s *session.Session, extra ...any) {
	reason := a.role.String() + " closed"
	if cause := context.Cause(s.Context()); cause != nil {
		reason = cause.Error()
	}
	st := s.Stats()
	attrs := append([]any{"reason", reason}, extra...)
	attrs = append(attrs, "bytes_sent", st.BytesSent, "bytes_received", st.BytesReceived, "packets_lost", st.PacketsLost)
	log.Info("session closed", attrs...)
}

// controlTimeout bounds opening a session's control stream.
const controlTimeout = 10 * time.Second

// OpenControl opens the control stream of s, a session this agent dialed,
// within 10s. Without one (the device refused it, or the
// session ended) the session works, but stays on the relay, and a live one
// says so on log.
func (a *Agent) OpenControl(s *session.Session, log *slog.Logger) (*session.Control, error) {
	ctx, cancel := context.WithTimeout(s.Context(), controlTimeout)
	defer cancel()
	ctl, err := s.OpenControl(ctx)
	if err != nil && s.Context().Err() == nil {
		log.Debug("no control stream: the session stays on the relay", "err", err)
	}
	return ctl, err
}

// ServeControl serves ctl, the control stream of s, until it or the
// session ends: it answers pings and, unless direct paths and the UDP
// relay path are off, looks for them, logging each change of path on log. The
// end of a stream whose session goes on is logged too, unless ctx, the
// role's, is done: the role is stopping, and closes its sessions.
func (a *Agent) ServeControl(ctx context.Context, s *session.Session, ctl *session.Control, log *slog.Logger) {
	err := ctl.Run(session.ControlOptions{
		DisableDirect: a.directOff,
		OnPath:        func(p paths.PathInfo) { log.Info("session path", p.LogAttrs()...) },
	})
	if s.Context().Err() == nil && ctx.Err() == nil {
		log.Debug("control stream ended", "err", err)
	}
}
