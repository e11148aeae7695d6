// Package relay is the burrow relay: it authenticates agents, keeps one
// session per attached agent and routes opaque E2E packets between clients
// and devices by their IDs.
//
// The relay only ever sees [relayproto] frames. It does not import the E2E
// session package and holds no key that could decrypt tunnel traffic: what
// it forwards are QUIC packets sealed between client and device.
//
// A [Server] is an [http.Handler]: agents attach through an HTTP upgrade on
// the relay's HTTPS port ([relayproto.UpgradePath]), so one port serves
// everything. [Server.Serve] runs the HTTPS listener itself; an operator
// with an HTTPS server of their own can mount the Server on it instead.
//
// [Server.ServeUDP] answers attached agents' binding requests on a UDP
// port, telling each the public address of its UDP socket, which agents
// need to find a direct path to each other; the relay takes no part in
// that path.
//
// Devices attach only if the relay enrolled them; clients need no
// enrollment, so the relay bounds their sessions per address and in all,
// never counting devices against those bounds, and closes a client
// session that no attached device allows (see [Config.MaxClients],
// [Config.ClientGrace]). A client a device has not allowed learns nothing
// of that device, not even whether it is online.
//
// [Server.Close] stops the relay at once. [Server.Shutdown] drains it
// first: it accepts no one new but keeps forwarding between the agents it
// has, so that open tunnels can finish, and then closes.
package relay

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// Config configures a [Server].
type Config struct {
	// Identity is the relay's key. Agents pin it by its ID. Required.
	Identity *identity.Identity

	// GetCertificate, if set, supplies the TLS certificate (for example a
	// CA-signed one that agents check against their trusted roots). If nil,
	// the relay serves a self-signed certificate of Identity's key. Agents
	// that pin the relay's ID accept only that certificate: a TLS
	// configuration from [Server.TLSConfig] serves it to them (they ask with
	// [relayproto.ALPNPinned]); one made otherwise must do the same.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)

	// AllowDevice reports whether a device may attach. Nil allows no
	// device: a relay admits only the devices it was told about.
	AllowDevice func(identity.ID) bool

	// UDPPort, if not zero, is the relay's UDP port for binding requests
	// (see ServeUDP): agents are told it, with a token for their session.
	UDPPort int

	// Enroll, if set, is asked about a device that AllowDevice does not
	// allow but that presents an enrollment token: nil admits (and
	// enrolls) it, an error refuses it and says why.
	Enroll func(id identity.ID, token string) error

	// Logger receives one line per significant event. Nil discards logs.
	Logger *slog.Logger

	// KeepAlive is how often agents must ping; a session silent for
	// 3×KeepAlive is closed. Zero means 15s.
	KeepAlive time.Duration

	// HandshakeTimeout bounds the time from connection to authenticated
	// session. Zero means 10s.
	HandshakeTimeout time.Duration

	// SendQueueLen is how many frames may wait for each agent; beyond it,
	// packets are dropped (and counted) rather than queued. Zero means 1024.
	SendQueueLen int

	// MaxPendingPerIP bounds the connections one address (an IPv6 /64)
	// may hold open before they authenticate; more are closed at once.
	// Zero means 64. (Only for [Server.Serve]'s own listener.)
	MaxPendingPerIP int

	// MaxPending bounds the connections, from all addresses, that have
	// not authenticated; past it, a new connection closes the oldest.
	// Zero means 10,000. (Only for [Server.Serve]'s own listener.)
	MaxPending int

	// MaxClients bounds the client sessions attached at once, from all
	// addresses; past it a client is refused as overloaded. Devices are
	// not counted: clients, which need no enrollment and so can be made
	// by anyone, never take a device's place. Zero means 10,000.
	MaxClients int

	// MaxClientsPerIP bounds the client sessions of one address (an IPv6
	// /64); past it a client is refused with [relayproto.RefuseTooMany].
	// Zero means 256.
	MaxClientsPerIP int

	// ClientGrace is how long a client session may stay attached while no
	// attached device allows it (names it in its access list, or lists
	// the invite of one of its pairing intents): then the relay closes it
	// with [relayproto.GoAwayUnused], and the client comes back when it
	// has something to send. Zero means 20s; negative means never.
	ClientGrace time.Duration

	// DrainQuiet ends a drain ([Server.Shutdown]) early once no packet has
	// been forwarded for this long: whatever tunnels are still open are
	// idle. Zero means 5s; negative means only the drain's context, or the
	// last client leaving, ends it.
	DrainQuiet time.Duration
}

func (c *Config) validate() error {
	if c.Identity == nil {
		return errors.New("relay: Config.Identity is required")
	}
	if c.KeepAlive < 0 || c.HandshakeTimeout < 0 || c.SendQueueLen < 0 || c.MaxPendingPerIP < 0 || c.MaxPending < 0 ||
		c.MaxClients < 0 || c.MaxClientsPerIP < 0 {
		return errors.New("relay: negative duration, queue length or limit in Config")
	}
	return nil
}

// Stats are counters of a [Server]'s work since it started.
type Stats struct {
	Devices, Clients int    // attached now
	Pending          int    // connections of Serve's that have not authenticated yet
	Replaced         uint64 // sessions replaced by a newer one of the same agent
	ClientsRefused   uint64 // clients refused for a limit (per address or in all)
	ClientsUnused    uint64 // client sessions closed because no device allowed them
	PacketsForwarded uint64 // delivered to a destination's queue
	BytesForwarded   uint64 // packet bytes delivered
	PacketsDropped   uint64 // dropped because a queue was full
	PeerGone         uint64 // peer-gone answers sent
	UDPAnswered      uint64 // binding requests answered
	UDPIgnored       uint64 // UDP datagrams not answered
}

// A Server is a relay. Create it with [New]; it is safe for concurrent use.
type Server struct {
	cfg       Config
	log       *slog.Logger
	cert      tls.Certificate // self-signed; used when cfg.GetCertificate is nil
	keepAlive time.Duration
	hsTimeout time.Duration
	queueLen  int
	quiet     time.Duration // DrainQuiet; 0 if off
	clientLim clientLimits

	wg sync.WaitGroup // every goroutine the server started

	mu        sync.RWMutex
	closed    bool                         // guarded by mu
	draining  bool                         // Shutdown has begun; guarded by mu
	closedCh  chan struct{}                // closed by Close
	devices   map[identity.ID]*session     // guarded by mu
	clients   map[relayproto.Addr]*session // guarded by mu
	lastSeen  map[identity.ID]offline      // devices that detached; guarded by mu
	https     map[*http.Server]struct{}    // from Serve; guarded by mu
	pending   map[net.Conn]struct{}        // hijacked, not yet attached; guarded by mu
	pre       *preauth                     // bounds Serve's connections until they attach
	flaps     map[identity.ID][]time.Time  // recent replacements of each device; guarded by mu
	udpTokens map[[16]byte]*udpGrant       // binding tokens; guarded by mu
	udps      map[net.PacketConn]struct{}  // from ServeUDP; guarded by mu
	clientsIP map[netip.Addr]int           // client sessions per address; guarded by mu
	sweeping  bool                         // sweepClients runs; guarded by mu

	writers *writers   // write every session's send queue
	idx     allowIndex // clients → devices that allow them (own lock)

	forwarded, forwardedBytes, dropped, gone atomic.Uint64
	udpAnswered, udpIgnored, replaced        atomic.Uint64
	clientsRefused, clientsUnused            atomic.Uint64
}

// maxLastSeen bounds the memory spent remembering when devices were seen.
const maxLastSeen = 100_000

// New returns a relay server.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cert, err := cfg.Identity.Certificate()
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		cert:      cert,
		keepAlive: cfg.KeepAlive,
		hsTimeout: cfg.HandshakeTimeout,
		queueLen:  cfg.SendQueueLen,
		devices:   make(map[identity.ID]*session),
		clients:   make(map[relayproto.Addr]*session),
		lastSeen:  make(map[identity.ID]offline),
		clientsIP: make(map[netip.Addr]int),
		https:     make(map[*http.Server]struct{}),
		pending:   make(map[net.Conn]struct{}),
		udpTokens: make(map[[16]byte]*udpGrant),
		udps:      make(map[net.PacketConn]struct{}),
		flaps:     make(map[identity.ID][]time.Time),
		closedCh:  make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.writers = newWriters(&s.wg)
	if s.keepAlive == 0 {
		s.keepAlive = 15 * time.Second
	}
	if s.hsTimeout == 0 {
		s.hsTimeout = 10 * time.Second
	}
	if s.queueLen == 0 {
		s.queueLen = 1024
	}
	switch {
	case cfg.DrainQuiet == 0:
		s.quiet = 5 * time.Second
	case cfg.DrainQuiet > 0:
		s.quiet = cfg.DrainQuiet
	}
	perIP := cfg.MaxPendingPerIP
	if perIP == 0 {
		perIP = 64
	}
	maxPending := cfg.MaxPending
	if maxPending == 0 {
		maxPending = 10_000
	}
	s.pre = newPreauth(s.hsTimeout, perIP, maxPending)
	s.clientLim = newClientLimits(cfg)
	return s, nil
}

// ID returns the relay's ID.
func (s *Server) ID() identity.ID { return s.cfg.Identity.ID() }

// TLSConfig returns the TLS configuration agents must be served with:
// TLS 1.3 only, the relay's certificate, HTTP/1.1.
func (s *Server) TLSConfig() *tls.Config {
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"http/1.1"},
	}
	if s.cfg.GetCertificate != nil {
		conf.GetCertificate = s.certificate
	} else {
		conf.Certificates = []tls.Certificate{s.cert}
	}
	return conf
}

// Serve accepts TLS connections on ln and serves agents on them until
// [Server.Close] or [Server.Shutdown]. It always returns a non-nil error;
// after either it is [http.ErrServerClosed].
func (s *Server) Serve(ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		TLSConfig:         s.TLSConfig(),
		ReadHeaderTimeout: s.hsTimeout,
		IdleTimeout:       s.hsTimeout,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		ConnState:         s.pre.connState,
		// Agents speak HTTP/1.1 (an upgrade); offering h2 in ALPN would
		// claim a protocol the relay does not serve.
		Protocols: new(http.Protocols),
	}
	hs.Protocols.SetHTTP1(true)
	s.mu.Lock()
	if s.closed || s.draining {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	s.https[hs] = struct{}{}
	s.mu.Unlock()
	return hs.ServeTLS(ln, "", "")
}

// ServeHTTP serves the agent upgrade at [relayproto.UpgradePath] and a short
// description of the relay at "/". The connection must carry TLS 1.3: the
// handshake signs a TLS exporter value.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == relayproto.UpgradePath:
	case r.URL.Path == "/" && r.Method == http.MethodGet:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "burrow relay\nid: %s\n", s.ID())
		return
	default:
		http.NotFound(w, r)
		return
	}
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", relayproto.UpgradeToken) {
		http.Error(w, "this endpoint is for burrow agents (Upgrade: "+relayproto.UpgradeToken+")", http.StatusUpgradeRequired)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "connection cannot be upgraded", http.StatusInternalServerError)
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		s.log.Debug("hijack failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + relayproto.UpgradeToken + "\r\nConnection: Upgrade\r\n\r\n")
	// Return at once, so that the HTTP server frees its per-connection
	// state: an idle agent then costs only what its session keeps.
	if !s.goTracked(func() {
		if sess := s.accept(conn, brw); sess != nil {
			// A fresh goroutine, with a small stack, waits for the agent's
			// frames for as long as it stays attached; the handshake's
			// deeper stack goes away with this one.
			if !s.goTracked(sess.run) {
				sess.run()
			}
		}
	}) {
		conn.Close()
	}
}

// ServeUDP answers binding requests on pc until [Server.Close] or
// [Server.Shutdown], which close pc (see
// relayproto.AppendBindingRequest): an agent attached over TCP learns the
// address its UDP socket has as the relay sees it. Requests that carry no
// current session's token get no answer; an answer is never larger than
// its request. A token is answered only from the address family its
// session came in on, and a few times in a while (udpAnswers in
// udpWindow): whoever learns a token can aim no more than that many small
// answers at anyone.
func (s *Server) ServeUDP(pc net.PacketConn) error {
	s.mu.Lock()
	if s.closed || s.draining {
		s.mu.Unlock()
		pc.Close()
		return net.ErrClosed
	}
	s.udps[pc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	// Answers leave from the address the request was sent to: on a relay
	// with several addresses, an answer from another one would not pass
	// the agent's NAT.
	udp, _ := pc.(*net.UDPConn)
	if udp != nil && !enablePktinfo(udp) {
		udp = nil
	}
	buf := make([]byte, 1500)
	oob := make([]byte, 256)
	for {
		var (
			n, oobn int
			from    netip.AddrPort
			err     error
		)
		if udp != nil {
			n, oobn, _, from, err = udp.ReadMsgUDPAddrPort(buf, oob)
		} else {
			var a net.Addr
			if n, a, err = pc.ReadFrom(buf); err == nil {
				if ua, ok := a.(*net.UDPAddr); ok {
					from = ua.AddrPort()
				}
			}
		}
		if err != nil {
			s.mu.RLock()
			closed := s.closed || s.draining
			s.mu.RUnlock()
			if closed {
				return net.ErrClosed
			}
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				continue
			}
			return err
		}
		tok, txid, err := relayproto.ParseBindingRequest(buf[:n])
		if err != nil {
			s.udpIgnored.Add(1)
			continue
		}
		s.mu.RLock()
		g := s.udpTokens[tok]
		s.mu.RUnlock()
		if g == nil || !from.IsValid() || !g.answer(from, time.Now()) {
			s.udpIgnored.Add(1)
			continue
		}
		resp := relayproto.AppendBindingResponse(buf[n:n], txid, from)
		if udp != nil {
			udp.WriteMsgUDPAddrPort(resp, replyOOB(oob[:oobn]), from)
		} else {
			pc.WriteTo(resp, net.UDPAddrFromAddrPort(from))
		}
		s.udpAnswered.Add(1)
	}
}

// goTracked runs f on a new goroutine that Close waits for, unless the
// server is closed.
func (s *Server) goTracked(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Go(f)
	return true
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// Accept serves one agent on conn, a TLS 1.3 connection (or a wrapper with
// a ConnectionState method) that has been upgraded: the next bytes from br
// are the agent's hello. Accept owns conn and always closes it; it returns
// when the session ends, ctx is cancelled or the server is closed.
func (s *Server) Accept(ctx context.Context, conn net.Conn, br *bufio.Reader) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	done := make(chan struct{})
	if !s.goTracked(func() {
		defer close(done)
		if sess := s.accept(conn, bufio.NewReadWriter(br, bufio.NewWriter(conn))); sess != nil {
			sess.run()
			<-sess.finished
		}
	}) {
		conn.Close()
		return
	}
	<-done
}

// accept authenticates the agent on conn and returns its registered
// session, or closes conn and returns nil.
func (s *Server) accept(conn net.Conn, brw *bufio.ReadWriter) *session {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return nil
	}
	s.pending[conn] = struct{}{}
	s.mu.Unlock()
	sess, err := s.handshake(conn, brw)
	s.pre.done(conn)
	s.mu.Lock()
	delete(s.pending, conn)
	s.mu.Unlock()
	if err != nil {
		s.log.Info("agent refused", "remote", conn.RemoteAddr().String(), "err", err)
		conn.Close()
		return nil
	}
	return sess
}

// tlsState returns the TLS state of conn or of the connection it wraps.
func tlsState(conn net.Conn) (tls.ConnectionState, bool) {
	c, ok := conn.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		return tls.ConnectionState{}, false
	}
	return c.ConnectionState(), true
}

// handshake authenticates the agent and registers its session.
func (s *Server) handshake(conn net.Conn, brw *bufio.ReadWriter) (*session, error) {
	conn.SetDeadline(time.Now().Add(s.hsTimeout))
	refuse := func(code relayproto.RefuseCode, msg string) error {
		p := relayproto.AppendRefuse(nil, relayproto.Refuse{Code: code, Message: msg})
		brw.Write(relayproto.AppendHeader(nil, relayproto.FrameRefuse, len(p)))
		brw.Write(p)
		brw.Flush()
		return fmt.Errorf("%s: %s", code, msg)
	}
	// The 101 answer is buffered; send it now so the agent sees the upgrade
	// succeed even if the hello is slow.
	if err := brw.Flush(); err != nil {
		return nil, err
	}
	st, ok := tlsState(conn)
	if !ok || st.Version != tls.VersionTLS13 {
		return nil, refuse(relayproto.RefuseAuth, "relay sessions need TLS 1.3")
	}
	exporter, err := st.ExportKeyingMaterial(relayproto.ExporterLabel, nil, relayproto.ExporterLen)
	if err != nil {
		return nil, refuse(relayproto.RefuseAuth, "no TLS exporter: "+err.Error())
	}
	t, n, err := relayproto.ReadHeader(brw)
	if err != nil {
		return nil, fmt.Errorf("read hello: %w", err)
	}
	if t != relayproto.FrameClientHello {
		return nil, refuse(relayproto.RefuseAuth, fmt.Sprintf("expected client-hello, got %s", t))
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(brw, p); err != nil {
		return nil, fmt.Errorf("read hello: %w", err)
	}
	hello, err := relayproto.ParseClientHello(p, exporter)
	if err != nil {
		return nil, refuse(relayproto.RefuseAuth, err.Error())
	}
	id := identity.IDOf(hello.PublicKey)
	version := min(hello.MaxVersion, relayproto.MaxVersion)
	if version < max(hello.MinVersion, relayproto.MinVersion) {
		return nil, refuse(relayproto.RefuseVersion, fmt.Sprintf(
			"agent speaks protocol versions %d-%d, this relay %d-%d: upgrade the older of the two",
			hello.MinVersion, hello.MaxVersion, relayproto.MinVersion, relayproto.MaxVersion))
	}
	addr := relayproto.Addr{ID: id, Instance: hello.Instance}
	switch hello.Role {
	case relayproto.RoleDevice:
		if err := s.admitDevice(id, hello.Extensions); err != nil {
			return nil, refuse(relayproto.RefuseNotAllowed, err.Error())
		}
		addr.Instance = 0 // a device is unique per ID
	case relayproto.RoleClient:
	default:
		return nil, refuse(relayproto.RefuseBadRole, fmt.Sprintf("unknown role %d", hello.Role))
	}

	// A device sends its access list right behind its hello; it becomes
	// reachable with it, never without.
	var access *accessSet
	if hello.Role == relayproto.RoleDevice {
		if access, err = readAccessList(brw.Reader); err != nil {
			return nil, refuse(relayproto.RefuseAuth, "a device must send its access list after its hello: "+err.Error())
		}
	}

	// Register before the agent hears it is attached, so that whatever it
	// sends next finds its peers routable; frames for it wait in its queue
	// until the write loop starts, after the hello.
	sess := newSession(s, conn, brw.Reader, hello.Role, addr)
	if access != nil {
		sess.access.Store(access)
	}
	if hello.Role == relayproto.RoleClient {
		sess.ip = ipKey(conn.RemoteAddr())
	}
	if r := s.register(sess); r != nil {
		return nil, refuse(r.code, r.msg)
	}
	if sess.role == relayproto.RoleDevice {
		s.reindex(sess.addr.ID)
	}
	hello2 := relayproto.ServerHello{
		Version:         version,
		KeepAliveMillis: uint32(s.keepAlive / time.Millisecond),
		PublicKey:       s.cfg.Identity.PublicKey(),
		ObservedAddr:    conn.RemoteAddr().String(),
	}
	if s.cfg.UDPPort != 0 {
		hello2.Extensions = append(hello2.Extensions, relayproto.Extension{Type: relayproto.ExtUDPBinding,
			Value: relayproto.AppendUDPBinding(nil, relayproto.UDPBinding{Port: uint16(s.cfg.UDPPort), Token: sess.udpToken})})
	}
	sh := relayproto.AppendServerHello(nil, hello2, exporter, s.cfg.Identity.Sign)
	brw.Write(relayproto.AppendHeader(nil, relayproto.FrameServerHello, len(sh)))
	brw.Write(sh)
	if err := brw.Flush(); err != nil {
		s.unregister(sess)
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return sess, nil
}

// readAccessList reads access frames up to a complete list.
func readAccessList(r *bufio.Reader) (*accessSet, error) {
	var entries []relayproto.AccessEntry
	for {
		t, n, err := relayproto.ReadHeader(r)
		if err != nil {
			return nil, err
		}
		if t != relayproto.FrameAccess {
			return nil, fmt.Errorf("got %s", t)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			return nil, err
		}
		var flags byte
		flags, entries, err = relayproto.ParseAccess(p, entries)
		if err != nil {
			return nil, err
		}
		if len(entries) > relayproto.MaxAccessEntries {
			return nil, fmt.Errorf("more than %d entries", relayproto.MaxAccessEntries)
		}
		if flags&relayproto.AccessLast != 0 {
			return newAccessSet(entries), nil
		}
	}
}

// admitDevice decides whether the device id may attach: it is allowed, or
// it presents an enrollment token that enrolls it.
func (s *Server) admitDevice(id identity.ID, exts []relayproto.Extension) error {
	if s.cfg.AllowDevice != nil && s.cfg.AllowDevice(id) {
		return nil
	}
	for _, e := range exts {
		if e.Type != relayproto.ExtEnrollToken || s.cfg.Enroll == nil {
			continue
		}
		if err := s.cfg.Enroll(id, string(e.Value)); err != nil {
			return fmt.Errorf("device %s is not enrolled on this relay, and its enrollment token was refused: %v", id, err)
		}
		s.log.Info("device enrolled", "id", id.String())
		return nil
	}
	return fmt.Errorf("device %s is not enrolled on this relay: give it an enrollment token (burrow relay token create) or ask the operator to allow this ID", id)
}

// A refusal is why the relay does not take an agent: the code it is told
// and a message that says why and what to do.
type refusal struct {
	code relayproto.RefuseCode
	msg  string
}

// register adds sess to the routing tables, replacing (and closing) an
// older session of the same device or client process, or says why it
// does not.
func (s *Server) register(sess *session) *refusal {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return &refusal{relayproto.RefuseShuttingDown, "relay is shutting down"}
	}
	if s.draining {
		return &refusal{relayproto.RefuseShuttingDown, "relay is shutting down: it is draining the sessions it has and admits no new one"}
	}
	var old *session
	if sess.role == relayproto.RoleClient {
		// A client coming back with the same key and instance takes its
		// own place, even from another address (whose count may then
		// pass the per-address bound by one such move: the total does
		// not grow); any other needs room.
		if old = s.clients[sess.addr]; old == nil {
			if r := s.admitClientLocked(sess); r != nil {
				s.clientsRefused.Add(1)
				return r
			}
		}
	}
	if s.cfg.UDPPort != 0 {
		rand.Read(sess.udpToken[:])
		s.udpTokens[sess.udpToken] = newUDPGrant(sess)
	}
	// From here Close reaches the session through the routing tables, with a
	// go-away, rather than by closing its connection.
	delete(s.pending, sess.conn)
	if sess.role == relayproto.RoleDevice {
		old = s.devices[sess.addr.ID]
		s.devices[sess.addr.ID] = sess
		delete(s.lastSeen, sess.addr.ID)
	} else {
		s.clients[sess.addr] = sess
		s.countClientLocked(sess, 1)
		if old != nil {
			s.countClientLocked(old, -1)
		}
		sess.allowedAt.Store(time.Now().UnixNano())
		s.startSweepLocked()
	}
	if old != nil {
		s.replaced.Add(1)
		ga := relayproto.GoAway{Reason: relayproto.GoAwayReplaced, Message: "a newer session of this agent attached"}
		if sess.role == relayproto.RoleDevice {
			wait := s.flapDelayLocked(sess.addr.ID, time.Now())
			if wait > 0 {
				s.log.Warn("device replaced again and again: are two copies of it running?", "id", sess.addr.ID.String(),
					"last_minute", len(s.flaps[sess.addr.ID]), "retry_after", wait.String())
			}
			ga.RetryAfterMillis = uint32(wait / time.Millisecond)
		}
		old.goAway(ga)
	}
	return nil
}

// Flapping: two copies of one device (a cloned firmware image, a restored
// backup) each replace the other as soon as they reattach. The replaced
// one is told to wait before retrying, longer the more often the device
// was replaced in the last minute, so that the relay sees a few
// replacements a minute rather than a storm.
const (
	flapWindow = time.Minute
	flapFree   = 2                // replacements a minute that cost nothing
	flapStep   = 10 * time.Second // added per replacement past flapFree
	maxFlaps   = 4096             // devices whose replacements are remembered
)

// flapDelayLocked records a replacement of device at now and returns how
// long the replaced session must wait before attaching again.
func (s *Server) flapDelayLocked(device identity.ID, now time.Time) time.Duration {
	recent := s.flaps[device][:0]
	for _, t := range s.flaps[device] {
		if now.Sub(t) < flapWindow {
			recent = append(recent, t)
		}
	}
	recent = append(recent, now)
	if len(s.flaps) >= maxFlaps {
		clear(s.flaps) // forget old storms rather than grow
	}
	s.flaps[device] = recent
	if len(recent) <= flapFree {
		return 0
	}
	return min(flapWindow, time.Duration(len(recent)-flapFree)*flapStep)
}

// unregister removes sess from the routing tables if it is still there.
func (s *Server) unregister(sess *session) {
	s.unregisterTables(sess)
	if sess.role == relayproto.RoleDevice {
		s.reindex(sess.addr.ID)
	}
}

// unregisterTables does the work of unregister under mu.
func (s *Server) unregisterTables(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.udpTokens[sess.udpToken]; g != nil && g.sess == sess {
		delete(s.udpTokens, sess.udpToken)
	}
	if sess.role == relayproto.RoleDevice {
		if s.devices[sess.addr.ID] == sess {
			delete(s.devices, sess.addr.ID)
			if len(s.lastSeen) < maxLastSeen {
				s.lastSeen[sess.addr.ID] = newOffline(time.Now(), sess.access.Load())
			}
		}
	} else if s.clients[sess.addr] == sess {
		delete(s.clients, sess.addr)
		s.countClientLocked(sess, -1)
	}
}

// route finds the session a packet from src to dst goes to. With no
// session, it returns what to tell src, or a zero PeerGone if src should be
// told nothing.
func (s *Server) route(src *session, dst relayproto.Addr) (*session, relayproto.PeerGone) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		// Every session is ending: a peer missing now is one the relay is
		// closing, not one that left, and agents must not hear that it did.
		return nil, relayproto.PeerGone{}
	}
	gone := relayproto.PeerGone{Peer: dst, Reason: relayproto.GoneOffline}
	switch src.role {
	case relayproto.RoleClient:
		// A device is reachable once it has said who may reach it, and
		// then only by them. Anyone else hears the same whether the
		// device is attached or not; only a client the device allowed
		// when it was last here hears that it is offline, and since when.
		token := src.intent(dst.ID)
		if d := s.devices[dst.ID]; d != nil {
			if acc := d.access.Load(); acc != nil && acc.allows(src.addr.ID, token) {
				return d, gone
			}
		} else if off, ok := s.lastSeen[dst.ID]; ok && off.allowed(src.addr.ID) {
			gone.LastSeenUnix = uint64(off.at.Unix())
			return nil, gone
		}
		gone.Reason = relayproto.GoneUnreachable
	case relayproto.RoleDevice:
		if c := s.clients[dst]; c != nil {
			return c, gone
		}
		if s.devices[dst.ID] != nil {
			gone.Reason = relayproto.GoneNotAllowed
		}
	}
	return nil, gone
}

// Online reports whether the device id is attached, and when it was last
// seen if it is not (zero if the relay does not know).
func (s *Server) Online(id identity.ID) (bool, time.Time) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.devices[id] != nil {
		return true, time.Time{}
	}
	return false, s.lastSeen[id].at
}

// Disconnect ends the session of the device id, if it is attached, with a
// go-away saying it was removed.
func (s *Server) Disconnect(id identity.ID) {
	s.mu.RLock()
	d := s.devices[id]
	s.mu.RUnlock()
	if d != nil {
		d.goAway(relayproto.GoAway{Reason: relayproto.GoAwayRemoved, Message: "this device is no longer enrolled on the relay"})
	}
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	s.mu.RLock()
	st := Stats{Devices: len(s.devices), Clients: len(s.clients)}
	s.mu.RUnlock()
	st.Pending = s.pre.pending()
	st.Replaced = s.replaced.Load()
	st.ClientsRefused = s.clientsRefused.Load()
	st.ClientsUnused = s.clientsUnused.Load()
	st.PacketsForwarded = s.forwarded.Load()
	st.BytesForwarded = s.forwardedBytes.Load()
	st.PacketsDropped = s.dropped.Load()
	st.PeerGone = s.gone.Load()
	st.UDPAnswered = s.udpAnswered.Load()
	st.UDPIgnored = s.udpIgnored.Load()
	return st
}

// Close stops the listeners started by [Server.Serve], tells every attached
// agent to go away, closes every connection and waits for every goroutine
// the server started. It is idempotent. During [Server.Shutdown], it ends
// the drain at once.
//
// Each agent is told to wait a different time before it comes back (see
// retrySpread), so that a relay restarted at once is not met by every
// agent in the same instant; devices are asked back before clients, so
// that a client that comes back finds its device there rather than
// hearing that it is offline.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	close(s.closedCh)
	https := s.https
	s.https = nil
	for c := range s.pending {
		c.Close()
	}
	for pc := range s.udps {
		pc.Close()
	}
	// A session replaced by a newer one has had its go-away already.
	spread := retrySpread(len(s.devices) + len(s.clients))
	bye := func(sess *session, after time.Duration) {
		wait := after + mrand.N(spread)
		sess.goAway(relayproto.GoAway{Reason: relayproto.GoAwayShutdown,
			RetryAfterMillis: uint32(wait / time.Millisecond), Message: "relay is shutting down"})
	}
	for sess := range maps.Values(s.devices) {
		bye(sess, closeRetryAfter)
	}
	for sess := range maps.Values(s.clients) {
		bye(sess, closeRetryAfter+spread+clientRetryLag)
	}
	s.mu.Unlock()
	for hs := range https {
		hs.Close()
	}
	s.writers.close()
	s.wg.Wait()
	return nil
}

// Agents told to go away by a closing relay wait closeRetryAfter and a
// random share of a spread that grows with their number, so that they
// come back at about reattachRate a second (within bounds). Clients wait
// one spread and clientRetryLag more than devices, so that they come back
// after the last device, even one slowed by its handshake.
const (
	closeRetryAfter = 500 * time.Millisecond
	clientRetryLag  = 500 * time.Millisecond
	reattachRate    = 1000
	minRetrySpread  = 250 * time.Millisecond
	maxRetrySpread  = 30 * time.Second
)

// retrySpread is the spread of the waits of n agents told to go away.
func retrySpread(n int) time.Duration {
	return min(max(time.Duration(n)*time.Second/reattachRate, minRetrySpread), maxRetrySpread)
}

// drainPoll is how often a drain checks whether it is over.
const drainPoll = 100 * time.Millisecond

// Shutdown shuts the server down gracefully: it drains it, then closes it
// as [Server.Close] does. Like [http.Server.Shutdown] it first stops
// accepting: it closes the listeners of [Server.Serve] and the sockets of
// [Server.ServeUDP], and refuses agents that still reach it (through
// [Server.Accept] or a connection in mid-handshake). Then it tells every
// attached agent that the relay is draining ([relayproto.FrameDrain]:
// keep your session; the relay closes it within ctx's deadline, if ctx
// has one) and goes on forwarding between them, so that open tunnels
// continue and can finish. The drain is over
//
//   - when ctx is done: give it the drain period as a deadline;
//   - when no client is attached any more: nothing can flow; or
//   - when no packet has been forwarded for [Config.DrainQuiet]: whatever
//     tunnels are open are idle (the keepalives of idle E2E sessions count
//     as packets, so that many of them can hold a drain to its deadline).
//
// Shutdown returns nil if the drain ended before ctx did, ctx's error if
// ctx ended it, and [http.ErrServerClosed] if [Server.Close] did (or had
// before Shutdown was called). It may be called more than once; every
// call returns when the server is closed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return http.ErrServerClosed
	}
	first := !s.draining
	s.draining = true
	var (
		https    = s.https
		udps     = slices.Collect(maps.Keys(s.udps))
		sessions = slices.Collect(maps.Values(s.devices))
	)
	sessions = slices.AppendSeq(sessions, maps.Values(s.clients))
	devices, clients := len(s.devices), len(s.clients)
	s.https = nil
	s.mu.Unlock()

	start := time.Now()
	if first {
		for hs := range https {
			hs.Close() // its listener, and connections not upgraded yet
		}
		for _, pc := range udps {
			pc.Close()
		}
		f := relayproto.Drain{Message: "relay is shutting down: keep your session, the relay closes it when its tunnels are done"}
		if dl, ok := ctx.Deadline(); ok {
			f.WithinMillis = uint32(min(max(time.Until(dl)/time.Millisecond, 1), math.MaxUint32))
		}
		p := relayproto.AppendDrain(nil, f)
		frame := append(relayproto.AppendHeader(nil, relayproto.FrameDrain, len(p)), p...)
		for _, sess := range sessions {
			// Advisory, like every control frame: a full queue drops it.
			if sess.q.push(outFrame{ctl: frame}) {
				sess.q.kick()
			}
		}
		attrs := []any{"sessions", devices + clients, "devices", devices, "clients", clients}
		if f.WithinMillis != 0 {
			attrs = append(attrs, "within", (time.Duration(f.WithinMillis) * time.Millisecond).String())
		}
		s.log.Info("relay draining", attrs...)
	}

	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	last, lastAt := s.forwarded.Load(), time.Now()
	var (
		err    error
		reason string
	)
	for reason == "" {
		s.mu.RLock()
		clients := len(s.clients)
		s.mu.RUnlock()
		now := time.Now()
		if n := s.forwarded.Load(); n != last {
			last, lastAt = n, now
		}
		switch {
		case clients == 0:
			reason = "no client attached"
		case s.quiet > 0 && now.Sub(lastAt) >= s.quiet:
			reason = "no packet forwarded for " + s.quiet.String()
		default:
			select {
			case <-tick.C:
			case <-ctx.Done():
				err, reason = ctx.Err(), "drain period over"
			case <-s.closedCh:
				err, reason = http.ErrServerClosed, "closed"
			}
		}
	}
	if !errors.Is(err, http.ErrServerClosed) {
		st := s.Stats()
		s.log.Info("drain over", "reason", reason, "after", time.Since(start).Round(time.Millisecond).String(),
			"devices", st.Devices, "clients", st.Clients)
	}
	s.Close()
	return err
}
