// Package session is the end-to-end layer between a client and a device:
// a QUIC connection (quic-go) over a path-layer [net.PacketConn], with TLS
// 1.3 in which both sides present their identity keys and pin each other.
// Whatever carries the packets (a relay, or the LAN) sees only sealed QUIC
// packets. In burrow, "session" means this connection and nothing else.
//
// Each tunnelled TCP connection is one QUIC stream ([Tunnel]). The stream
// starts with a [Request] naming a service, and the device answers with a
// [Reply] before any service byte flows (header.go). One more stream, the
// control stream ([Control]), carries pings and the path layer's
// signalling: over it the two agents find a direct path, which the path
// layer then uses under the session without the session noticing. The
// path layer comes in explicitly, as a [PathLayer] in [Config]; the
// signalling flows through [Control.Run] (pathlayer.go).
//
// The package runs sessions over any packet connection: it must not attach
// to a relay or decide who may do what. Attaching is package agent's, and
// authorizing the roles' (packages client and device).
package session

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
)

// ALPN names the E2E protocol and its version in the TLS handshake.
const ALPN = "burrow/1"

// PacketSize is the size of the QUIC packets a session sends: the largest
// every path carries (see [paths.MaxPacket]).
const PacketSize = paths.MaxPacket

// A CloseCode says why a session was closed.
type CloseCode = quic.ApplicationErrorCode

// Connection close codes a session uses, beyond QUIC's own.
const (
	CloseNormal        CloseCode = 0
	CloseNotAuthorized CloseCode = 0x101 // the device does not know this client
	CloseRevoked       CloseCode = 0x102 // the device revoked this client
	CloseShutdown      CloseCode = 0x103 // the agent is stopping
	CloseRemoved       CloseCode = 0x104 // the relay's operator removed the device
)

// Stream reset codes.
const (
	streamClosed  quic.StreamErrorCode = 0 // the reader is done; not an error
	streamAborted quic.StreamErrorCode = 1 // the TCP connection behind it broke
)

// Config configures an [Endpoint].
type Config struct {
	// Identity is this agent's key, presented to peers. Required.
	Identity *identity.Identity
	// KeepAlive is how often an idle session sends a ping. Zero means 10s.
	KeepAlive time.Duration
	// IdleTimeout closes a session that heard nothing from its peer for
	// this long. Zero means 30s.
	IdleTimeout time.Duration
	// MaxTunnels bounds the tunnels a peer may have open at once in one
	// session. Zero means 4096.
	MaxTunnels int64
	// AcceptHello, if set, is asked about every handshake a listener
	// receives, before the endpoint answers it at all (so before it shows
	// its key): remote is the client's path-layer address and serverName
	// the TLS server name it gave. An error refuses the handshake. Nil
	// answers every handshake.
	AcceptHello func(remote net.Addr, serverName string) error
	// Paths is the path layer under the endpoint's packet connection
	// (usually that connection itself), over which sessions look for a
	// direct path to their peer. Nil: no direct path is looked for, and
	// [Session.Path] reports the relay.
	Paths PathLayer
}

// An Endpoint runs E2E sessions over one path-layer packet connection: it
// dials sessions (client) and accepts them (device). It is safe for
// concurrent use.
type Endpoint struct {
	cfg   Config
	cert  tls.Certificate
	tr    *quic.Transport
	qcfg  *quic.Config
	paths PathLayer // Config.Paths; nil if there is none
}

// NewEndpoint returns an endpoint on pc. The endpoint does not own pc:
// close it after [Endpoint.Close].
func NewEndpoint(pc net.PacketConn, cfg Config) (*Endpoint, error) {
	if cfg.Identity == nil {
		return nil, errors.New("session: Config.Identity is required")
	}
	cert, err := cfg.Identity.Certificate()
	if err != nil {
		return nil, err
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 10 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.MaxTunnels == 0 {
		cfg.MaxTunnels = 4096
	}
	e := &Endpoint{cfg: cfg, cert: cert, paths: cfg.Paths}
	// The reset key comes from the identity key, so that a restarted agent
	// can still tell a peer that the session it remembers is gone.
	rk, err := hkdf.Key(sha256.New, cfg.Identity.PrivateKey().Seed(), nil, "burrow quic stateless reset", 32)
	if err != nil {
		return nil, err
	}
	resetKey := quic.StatelessResetKey(rk)
	e.tr = &quic.Transport{Conn: pc, StatelessResetKey: &resetKey}
	e.qcfg = &quic.Config{
		HandshakeIdleTimeout:           10 * time.Second,
		MaxIdleTimeout:                 cfg.IdleTimeout,
		KeepAlivePeriod:                cfg.KeepAlive,
		MaxIncomingStreams:             cfg.MaxTunnels,
		MaxIncomingUniStreams:          -1,
		InitialStreamReceiveWindow:     256 << 10,
		MaxStreamReceiveWindow:         8 << 20,
		InitialConnectionReceiveWindow: 1 << 20,
		MaxConnectionReceiveWindow:     32 << 20,
		InitialPacketSize:              PacketSize,
		DisablePathMTUDiscovery:        true,
	}
	return e, nil
}

// Close ends every session of the endpoint abruptly. Close sessions first
// to tell peers.
func (e *Endpoint) Close() error { return e.tr.Close() }

// Dial opens a session to the device at addr whose key must have the ID
// device.
func (e *Endpoint) Dial(ctx context.Context, addr net.Addr, device identity.ID) (*Session, error) {
	return e.DialWith(ctx, addr, device, DialOptions{})
}

// DialOptions are what a dial may set beyond the endpoint's [Config].
type DialOptions struct {
	// ServerName is the TLS server name: the hello a device that checks
	// hellos ([Config.AcceptHello]) asks for. Empty: "burrow".
	ServerName string
	// KeepAlive and IdleTimeout replace the endpoint's for this session
	// (QUIC's idle timeout is the shorter of both ends'). Zero: the
	// endpoint's.
	KeepAlive, IdleTimeout time.Duration
}

// DialWith is Dial with opts.
func (e *Endpoint) DialWith(ctx context.Context, addr net.Addr, device identity.ID, opts DialOptions) (*Session, error) {
	serverName := opts.ServerName
	if serverName == "" {
		serverName = "burrow"
	}
	qcfg := e.qcfg
	if opts.KeepAlive != 0 || opts.IdleTimeout != 0 {
		qcfg = qcfg.Clone()
		if opts.KeepAlive != 0 {
			qcfg.KeepAlivePeriod = opts.KeepAlive
		}
		if opts.IdleTimeout != 0 {
			qcfg.MaxIdleTimeout = opts.IdleTimeout
		}
	}
	conf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{e.cert},
		NextProtos:         []string{ALPN},
		ServerName:         serverName,
		InsecureSkipVerify: true, // VerifyConnection pins the key
		VerifyConnection:   identity.VerifyPinned("device", device),
	}
	c, err := e.tr.Dial(ctx, addr, conf, qcfg)
	if err != nil {
		return nil, dialError(err)
	}
	return &Session{conn: c, peer: device, paths: e.paths}, nil
}

// ErrHandshakeRefused is the error of a dial whose peer refused the
// handshake before it answered (see [Config.AcceptHello]): on the LAN, a
// device that the hello was not made for.
var ErrHandshakeRefused = errors.New("session: the peer refused the handshake")

// alertInternal is the QUIC error of a TLS internal_error alert, which a
// server sends when its GetConfigForClient refuses a handshake.
const alertInternal = quic.TransportErrorCode(0x100 + 80)

// dialError turns a QUIC dial failure into the error a user should see.
func dialError(err error) error {
	if km, ok := errors.AsType[*identity.KeyMismatchError](err); ok {
		return km
	}
	if te, ok := errors.AsType[*quic.TransportError](err); ok && te.Remote && te.ErrorCode == alertInternal {
		return fmt.Errorf("%w (%v)", ErrHandshakeRefused, err)
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok && ae.Remote && (ae.ErrorCode == CloseNotAuthorized || ae.ErrorCode == CloseRevoked) {
		return &RefusedError{Reply: Reply{Code: CodeNotAuthorized, Detail: ae.ErrorMessage}, revoked: ae.ErrorCode == CloseRevoked}
	}
	return err
}

// Listen starts accepting sessions from clients. Any client proving a key
// is accepted; the caller authorizes [Session.PeerID] itself.
func (e *Endpoint) Listen() (*Listener, error) {
	conf := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{e.cert},
		NextProtos:             []string{ALPN},
		ClientAuth:             tls.RequireAnyClientCert,
		VerifyConnection:       identity.VerifyAnyKey,
		SessionTicketsDisabled: true,
	}
	if accept := e.cfg.AcceptHello; accept != nil {
		conf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			var remote net.Addr
			if hello.Conn != nil {
				remote = hello.Conn.RemoteAddr()
			}
			return nil, accept(remote, hello.ServerName)
		}
	}
	l, err := e.tr.Listen(conf, e.qcfg)
	if err != nil {
		return nil, err
	}
	return &Listener{l: l, paths: e.paths}, nil
}

// A Listener accepts sessions.
type Listener struct {
	l     *quic.Listener
	paths PathLayer
}

// Accept waits for the next session. It fails only when the listener is
// closed or ctx is done.
func (l *Listener) Accept(ctx context.Context) (*Session, error) {
	for {
		c, err := l.l.Accept(ctx)
		if err != nil {
			return nil, err
		}
		peer, err := identity.PeerID(c.ConnectionState().TLS)
		if err != nil {
			// The handshake requires a key, so this does not happen; if
			// it did, it would concern this peer only.
			c.CloseWithError(CloseNotAuthorized, "no client key")
			continue
		}
		return &Session{conn: c, peer: peer, paths: l.paths}, nil
	}
}

// Close stops accepting sessions; open ones go on.
func (l *Listener) Close() error { return l.l.Close() }

// A Session is an E2E connection between one client and one device. It is
// safe for concurrent use.
type Session struct {
	conn  *quic.Conn
	peer  identity.ID
	paths PathLayer // nil if the packets cannot take a direct path
}

// PeerID returns the ID of the key the peer proved.
func (s *Session) PeerID() identity.ID { return s.peer }

// RemoteAddr returns the peer's path-layer address.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// Context is cancelled when the session ends; its cause says why.
func (s *Session) Context() context.Context { return s.conn.Context() }

// Close ends the session, telling the peer code and msg.
func (s *Session) Close(code CloseCode, msg string) error {
	return s.conn.CloseWithError(code, msg)
}

// Stats are a session's transport figures.
type Stats struct {
	RTT                                       time.Duration
	BytesSent, BytesReceived                  uint64
	PacketsSent, PacketsReceived, PacketsLost uint64
}

// Stats returns the session's transport figures.
func (s *Session) Stats() Stats {
	st := s.conn.ConnectionStats()
	return Stats{
		RTT:             st.SmoothedRTT,
		BytesSent:       st.BytesSent,
		BytesReceived:   st.BytesReceived,
		PacketsSent:     st.PacketsSent,
		PacketsReceived: st.PacketsReceived,
		PacketsLost:     st.PacketsLost,
	}
}

// A RefusedError is a device's refusal of a tunnel (or, with
// CodeNotAuthorized, of the whole session).
type RefusedError struct {
	Device  identity.ID
	Service string
	Reply
	revoked bool // the device revoked this client's access
	pairing bool // a refusal of a pairing request
}

// Sentinels matched by [RefusedError] with [errors.Is], one per code.
var (
	ErrNotAuthorized      = errors.New("not authorized")
	ErrUnknownService     = errors.New("unknown service")
	ErrServiceUnreachable = errors.New("service unreachable")
	ErrRateLimited        = errors.New("rate limited")
	ErrUnavailable        = errors.New("unavailable")
)

func (e *RefusedError) Is(target error) bool {
	switch e.Code {
	case CodeNotAuthorized:
		return target == ErrNotAuthorized
	case CodeUnknownService:
		return target == ErrUnknownService
	case CodeServiceUnreachable:
		return target == ErrServiceUnreachable
	case CodeRateLimited:
		return target == ErrRateLimited
	case CodeUnavailable:
		return target == ErrUnavailable
	}
	return false
}

func (e *RefusedError) Error() string {
	dev := "the device"
	if !e.Device.IsZero() {
		dev = "device " + e.Device.Short()
	}
	if e.pairing {
		if e.Code == CodeUnavailable {
			return fmt.Sprintf("pairing with %s failed: %s", dev, e.Detail)
		}
		return fmt.Sprintf("%s refused the invite: %s", dev, e.Detail)
	}
	switch e.Code {
	case CodeNotAuthorized:
		if e.revoked {
			return fmt.Sprintf("not authorized: %s revoked this client's access", dev)
		}
		if e.Service == "" {
			return fmt.Sprintf("not authorized: %s does not know this client; ask its owner for an invite", dev)
		}
		return fmt.Sprintf("not authorized for service %q on %s: ask its owner to grant it to you", e.Service, dev)
	case CodeUnknownService:
		return fmt.Sprintf("unknown service %q on %s; services you may use: %s", e.Service, dev, quoteList(e.Allowed))
	case CodeServiceUnreachable:
		return fmt.Sprintf("service %q is unreachable on %s: %s", e.Service, dev, e.Detail)
	case CodeRateLimited:
		return fmt.Sprintf("%s refused service %q: too many tunnels too fast; try again shortly", dev, e.Service)
	case CodeUnavailable:
		return fmt.Sprintf("%s cannot serve %q now: %s", dev, e.Service, e.Detail)
	}
	return fmt.Sprintf("%s refused service %q: %s (%s)", dev, e.Service, e.Code, e.Detail)
}

// PeerClosedError reports why the peer closed the session, if it said.
func PeerClosedError(err error) (code quic.ApplicationErrorCode, msg string, ok bool) {
	ae, isApp := errors.AsType[*quic.ApplicationError](err)
	if !isApp || !ae.Remote {
		return 0, "", false
	}
	return ae.ErrorCode, ae.ErrorMessage, true
}
