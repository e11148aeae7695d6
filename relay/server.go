// Package relay is the burrow relay: it authenticates agents, keeps one
// attachment per attached agent and routes opaque E2E packets between
// clients and devices by their IDs.
//
// The relay only ever sees [relayproto] frames. It holds no key that could
// decrypt tunnel traffic: what it forwards are QUIC packets sealed between
// client and device. So that it stays unable to, it must never import
// quic-go, nor the end-to-end session package (session) or the agent's
// path layer (paths); a test checks its import graph.
//
// A [Server] is an [http.Handler]: agents attach through an HTTP upgrade on
// the relay's HTTPS port ([relayproto.UpgradePath]), so one port serves
// everything. [Server.Serve] runs the HTTPS listener itself; an operator
// with an HTTPS server of their own can mount the Server on it instead.
//
// [Server.ServeUDP] answers attached agents' binding requests on a UDP
// port, telling each the public address of its UDP socket, which agents
// need to find a direct path to each other; the relay takes no part in
// that path. On the same port it is the UDP relay path (unless
// [Config.NoUDPRelay]): it forwards agents' end-to-end packets as
// datagrams, without the TLS hop of their sessions, from an address an
// agent proved it receives at to the address its peer proved, under the
// same routing rules as on TCP; datagrams it may not forward are dropped
// and counted by reason ([UDPDrop]).
//
// Devices attach only if the relay enrolled them; clients need no
// enrollment, so the relay bounds the clients attached per address and in
// all, never counting devices against those bounds, and detaches a client
// that no attached device allows (see [Config.MaxClients],
// [Config.ClientGrace]). A client a device has not allowed learns nothing
// of that device, not even whether it is online.
//
// In a fleet ([Config.FleetMap], [Config.Presence]), the relay records
// which devices are attached to it, and answers a client asking for a
// device attached to another relay of the fleet with a redirect to that
// relay (redirect.go): no packet goes from relay to relay. A device that
// attached elsewhere since is dropped here ([Server.Moved]).
//
// [Server.Close] stops the relay at once. [Server.Shutdown] drains it
// first: it accepts no one new but keeps forwarding between the agents it
// has, so that open tunnels can finish, and then closes.
//
// The package has one file per concern: the server's lifecycle and drain
// (server.go), its configuration and counters (config.go), the counts of
// refusals, handshake failures and attaches and the recent refusals
// (events.go), the HTTP upgrade and the agents' handshake (handshake.go),
// the registry of attached agents that routes packets (routes.go), who
// may reach a device: access lists and pair intents (access.go), one
// attached agent's read loop and forwarding (attachment.go) and send
// queue (queue.go), the bounds on clients (clients.go) and on
// unauthenticated connections (preauth.go), the UDP port: binding
// service and read loop (udpbind.go), the UDP relay path's channels,
// bindings and forwarding (udprelay.go) and its batched socket I/O
// (udpio.go, udpbatch_linux.go), and the operator's side: admin API, enrollment store,
// device list, certificate files and the certificate that carries a
// fleet's map (certfile.go), and the snapshot of attached agents and
// relayed pairs an operator's dashboard shows (snapshot.go).
package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// A Server is a relay. Create it with [New]; it is safe for concurrent use.
//
// Its state is split by concern, each part with a lock of its own: the
// lifecycle below (mu), the registry of attached agents (routes), the
// index of who allows whom (idx), the UDP binding tokens (udp) and the
// preauth bounds (pre), the channels and bindings of the UDP relay path
// (urelay). Locks are taken in the order mu, idx, routes and never the
// other way; udp, urelay and pre are taken alone.
type Server struct {
	// Immutable after New.
	cfg      Config
	log      *slog.Logger
	cert     tls.Certificate // self-signed; used when cfg.GetCertificate is nil
	fleet    *fleetCert      // the certificate with the fleet map; nil without cfg.FleetMap
	settings                 // cfg's numbers, defaults filled in
	closedCh chan struct{}   // closed by Close
	pre      *preauth        // bounds Serve's connections until they attach (own lock)
	writers  *writers        // write every attachment's send queue

	// Each guarded by a lock of its own, or atomic.
	routes routes     // attached agents (own lock)
	idx    allowIndex // clients → devices that allow them (own lock)
	udp    udpGrants  // binding tokens (own lock)
	urelay udpRelay   // channels and bindings of the UDP relay path (own lock)
	stats  counters   // atomic
	events events     // atomic
	// The last refusals (own lock).
	refused refusalLog
	wg      sync.WaitGroup

	mu       sync.Mutex
	closed   bool                        // guarded by mu
	draining bool                        // Shutdown has begun; guarded by mu
	https    map[*http.Server]struct{}   // from Serve; guarded by mu
	pending  map[net.Conn]struct{}       // hijacked, not yet attached; guarded by mu
	udps     map[net.PacketConn]struct{} // from ServeUDP; guarded by mu
	sweeping bool                        // sweepClients runs; guarded by mu
}

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
		cfg:      cfg,
		log:      cfg.Logger,
		cert:     cert,
		settings: cfg.settings(),
		closedCh: make(chan struct{}),
		https:    make(map[*http.Server]struct{}),
		pending:  make(map[net.Conn]struct{}),
		udps:     make(map[net.PacketConn]struct{}),
		udp:      udpGrants{byToken: make(map[[16]byte]*udpGrant)},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.FleetMap != nil {
		if s.fleet, err = newFleetCert(cfg.Identity, cfg.FleetMap, s.log); err != nil {
			return nil, err
		}
	}
	s.writers = newWriters(&s.wg)
	s.pre = newPreauth(s.hsTimeout, s.pendingPerIP, s.maxPending)
	s.routes.init(s.clientLim)
	s.urelay.init()
	return s, nil
}

// ID returns the relay's ID.
func (s *Server) ID() identity.ID { return s.cfg.Identity.ID() }

// isClosed reports whether Close has begun.
func (s *Server) isClosed() bool {
	select {
	case <-s.closedCh:
		return true
	default:
		return false
	}
}

// Draining reports whether the relay admits no new agent any more: a
// drain ([Server.Shutdown]) has begun, or it is closed.
func (s *Server) Draining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining || s.closed
}

// TLSConfig returns the TLS configuration agents must be served with:
// TLS 1.3 only, the relay's certificate, HTTP/1.1.
func (s *Server) TLSConfig() *tls.Config {
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"http/1.1"},
	}
	if s.cfg.GetCertificate != nil || s.fleet != nil {
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
	return hs.ServeTLS(agentListener{ln}, "", "")
}

// Accept serves one agent on conn, a TLS 1.3 connection (or a wrapper with
// a ConnectionState method) that has been upgraded: the next bytes from br
// are the agent's hello. Accept owns conn and always closes it; it returns
// when the agent detaches, ctx is cancelled or the server is closed.
func (s *Server) Accept(ctx context.Context, conn net.Conn, br *bufio.Reader) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	done := make(chan struct{})
	if !s.goTracked(func() {
		defer close(done)
		if a := s.accept(conn, bufio.NewReadWriter(br, bufio.NewWriter(conn))); a != nil {
			a.run()
			<-a.done()
		}
	}) {
		conn.Close()
		return
	}
	<-done
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

// What attachments ask of their server. Each is small enough to inline:
// route, the counters and the settings are on the forwarding path.

// route finds the attachment a packet from src to dst goes to (see
// [routes.route]).
func (s *Server) route(src *attachment, dst relayproto.Addr) (*attachment, relayproto.PeerGone) {
	return s.routes.route(src, dst)
}

// detach takes a, which has ended, out of the registry and its binding
// token out of the UDP service.
func (s *Server) detach(a *attachment) {
	s.udp.revoke(a)
	s.urelay.detach(a)
	current := s.routes.remove(a, time.Now())
	if a.isDevice() {
		s.reindex(a.address().ID)
		if current && s.cfg.Presence != nil {
			s.cfg.Presence.Detached(a.address().ID)
		}
	}
}

// accessChanged tells the server that the attached device has a new
// access set.
func (s *Server) accessChanged(device identity.ID) { s.reindex(device) }

// newSendQueue makes an attachment's send queue, written by the server's
// writers.
func (s *Server) newSendQueue(write func([]outFrame) error, fail func(error)) *sendQueue {
	return newSendQueue(s.queueLen, s.writers, write, fail)
}

func (s *Server) logger() *slog.Logger             { return s.log }
func (s *Server) keepAliveInterval() time.Duration { return s.keepAlive }
func (s *Server) countPeerGone()                   { s.stats.gone.Add(1) }
func (s *Server) countDropped()                    { s.stats.dropped.Add(1) }

func (s *Server) countForwarded(n int) {
	s.stats.forwarded.Add(1)
	s.stats.forwardedBytes.Add(uint64(n))
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
	s.mu.Unlock()
	// An agent registered from now on would be refused: whatever attached
	// before is in devices or clients. One replaced by a newer attachment
	// has had its go-away already.
	devices, clients := s.routes.close()
	spread := retrySpread(len(devices) + len(clients))
	bye := func(a *attachment, after time.Duration) {
		wait := after + mrand.N(spread)
		a.goAway(relayproto.GoAway{Reason: relayproto.GoAwayShutdown,
			RetryAfterMillis: uint32(wait / time.Millisecond), Message: "relay is shutting down"})
	}
	for _, a := range devices {
		bye(a, closeRetryAfter)
	}
	for _, a := range clients {
		bye(a, closeRetryAfter+spread+clientRetryLag)
	}
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
// keep your connection; the relay closes it within ctx's deadline, if ctx
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
	https, udps := s.https, slices.Collect(maps.Keys(s.udps))
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
		s.announceDrain(ctx)
	}
	reason, err := s.waitDrain(ctx)
	if !errors.Is(err, http.ErrServerClosed) {
		st := s.Stats()
		s.log.Info("drain over", "reason", reason, "after", time.Since(start).Round(time.Millisecond).String(),
			"devices", st.Devices, "clients", st.Clients)
	}
	s.Close()
	return err
}

// announceDrain tells every attached agent that the relay is draining.
// Registration is closed by now, so that none attached later misses it.
func (s *Server) announceDrain(ctx context.Context) {
	devices, clients := s.routes.all()
	f := relayproto.Drain{Message: "relay is shutting down: keep your session, the relay closes it when its tunnels are done"}
	if dl, ok := ctx.Deadline(); ok {
		f.WithinMillis = uint32(min(max(time.Until(dl)/time.Millisecond, 1), math.MaxUint32))
	}
	p := relayproto.AppendDrain(nil, f)
	frame := append(relayproto.AppendHeader(nil, relayproto.FrameDrain, len(p)), p...)
	for _, a := range slices.Concat(devices, clients) {
		a.notify(frame) // advisory, like every notice
	}
	s.sendDevicesOn(devices)
	attrs := []any{"sessions", len(devices) + len(clients), "devices", len(devices), "clients", len(clients)}
	if f.WithinMillis != 0 {
		attrs = append(attrs, "within", (time.Duration(f.WithinMillis) * time.Millisecond).String())
	}
	s.log.Info("relay draining", attrs...)
}

// waitDrain waits until the drain is over and says why: the reason
// Shutdown logs and the error it returns.
func (s *Server) waitDrain(ctx context.Context) (string, error) {
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	last, lastAt := s.stats.forwarded.Load(), time.Now()
	for {
		_, clients := s.routes.count()
		now := time.Now()
		if n := s.stats.forwarded.Load(); n != last {
			last, lastAt = n, now
		}
		switch {
		case s.isClosed():
			// Close empties the routes (after it marks the relay
			// closed): a drain it ended must say so, not that the
			// clients left.
			return "closed", http.ErrServerClosed
		case clients == 0:
			return "no client attached", nil
		case s.quiet > 0 && now.Sub(lastAt) >= s.quiet:
			return "no packet forwarded for " + s.quiet.String(), nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return "drain period over", ctx.Err()
		case <-s.closedCh:
			return "closed", http.ErrServerClosed
		}
	}
}
