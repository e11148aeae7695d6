package relay

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

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
	// state: an idle agent then costs only what its attachment keeps.
	if !s.goTracked(func() {
		if a := s.accept(conn, brw); a != nil {
			// A fresh goroutine, with a small stack, waits for the agent's
			// frames for as long as it stays attached; the handshake's
			// deeper stack goes away with this one.
			if !s.goTracked(a.run) {
				a.run()
			}
		}
	}) {
		conn.Close()
	}
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

// accept authenticates the agent on conn and returns its registered
// attachment, or closes conn and returns nil.
func (s *Server) accept(conn net.Conn, brw *bufio.ReadWriter) *attachment {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return nil
	}
	s.pending[conn] = struct{}{}
	s.mu.Unlock()
	a, err := s.handshake(conn, brw)
	timedOut := s.pre.done(conn)
	s.mu.Lock()
	delete(s.pending, conn)
	s.mu.Unlock()
	if err != nil {
		s.noteHandshakeFailure(err, timedOut)
		s.log.Info("agent refused", "remote", conn.RemoteAddr().String(), "err", err)
		conn.Close()
		return nil
	}
	return a
}

// tlsState returns the TLS state of conn or of the connection it wraps.
func tlsState(conn net.Conn) (tls.ConnectionState, bool) {
	c, ok := conn.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		return tls.ConnectionState{}, false
	}
	return c.ConnectionState(), true
}

// handshake authenticates the agent and registers its attachment, all
// within the handshake deadline. A [refusal] is sent to the agent before
// it is returned.
func (s *Server) handshake(conn net.Conn, brw *bufio.ReadWriter) (*attachment, error) {
	conn.SetDeadline(time.Now().Add(s.hsTimeout))
	// The 101 answer is buffered; send it now so the agent sees the upgrade
	// succeed even if the hello is slow.
	if err := brw.Flush(); err != nil {
		return nil, err
	}
	var who handshakeAgent
	a, err := s.authenticate(conn, brw, &who)
	if r, ok := errors.AsType[*refusal](err); ok {
		s.noteRefusal(conn.RemoteAddr(), who, r)
		p := relayproto.AppendRefuse(nil, relayproto.Refuse{Code: r.code, Message: r.msg})
		brw.Write(relayproto.AppendHeader(nil, relayproto.FrameRefuse, len(p)))
		brw.Write(p)
		brw.Flush()
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return a, nil
}

// authenticate reads the agent's hello (and a device's access list),
// registers its attachment and answers with the server hello. It returns
// a [*refusal] for what the agent is to be told, and says in who what it
// learned of the agent.
func (s *Server) authenticate(conn net.Conn, brw *bufio.ReadWriter, who *handshakeAgent) (*attachment, error) {
	st, ok := tlsState(conn)
	if !ok || st.Version != tls.VersionTLS13 {
		return nil, &refusal{relayproto.RefuseAuth, "relay sessions need TLS 1.3"}
	}
	exporter, err := st.ExportKeyingMaterial(relayproto.ExporterLabel, nil, relayproto.ExporterLen)
	if err != nil {
		return nil, &refusal{relayproto.RefuseAuth, "no TLS exporter: " + err.Error()}
	}
	hello, err := readHello(brw.Reader, exporter)
	if err != nil {
		return nil, err
	}
	id := identity.IDOf(hello.PublicKey)
	who.role, who.id = hello.Role, id
	version := min(hello.MaxVersion, relayproto.MaxVersion)
	if version < max(hello.MinVersion, relayproto.MinVersion) {
		return nil, &refusal{relayproto.RefuseVersion, fmt.Sprintf(
			"agent speaks protocol versions %d-%d, this relay %d-%d: upgrade the older of the two",
			hello.MinVersion, hello.MaxVersion, relayproto.MinVersion, relayproto.MaxVersion)}
	}
	spec := attachSpec{conn: conn, br: brw.Reader, role: hello.Role, addr: relayproto.Addr{ID: id, Instance: hello.Instance}}
	switch hello.Role {
	case relayproto.RoleDevice:
		if err := s.admitDevice(id, hello.Extensions); err != nil {
			code := relayproto.RefuseNotAllowed
			if errors.Is(err, ErrStateUnavailable) {
				// Not a verdict on the device: the relay cannot reach its
				// state now, and the device should try again soon.
				code = relayproto.RefuseOverloaded
			}
			return nil, &refusal{code, err.Error()}
		}
		spec.addr.Instance = 0 // a device is unique per ID
		// A device sends its access list right behind its hello; it
		// becomes reachable with it, never without.
		if spec.access, err = readAccessList(brw.Reader); err != nil {
			return nil, &badHelloError{&refusal{relayproto.RefuseAuth, "a device must send its access list after its hello: " + err.Error()}}
		}
	case relayproto.RoleClient:
		spec.ip = ipKey(conn.RemoteAddr())
	default:
		return nil, &refusal{relayproto.RefuseBadRole, fmt.Sprintf("unknown role %d", hello.Role)}
	}
	if s.cfg.UDPPort != 0 {
		rand.Read(spec.udpToken[:])
	}

	// Register before the agent hears it is attached, so that whatever it
	// sends next finds its peers routable; frames for it wait in its queue
	// until the write loop starts, after the hello.
	a := newAttachment(s, spec)
	if r := s.register(a, conn); r != nil {
		return nil, r
	}
	sh := relayproto.AppendServerHello(nil, s.serverHello(a, version), exporter, s.cfg.Identity.Sign)
	brw.Write(relayproto.AppendHeader(nil, relayproto.FrameServerHello, len(sh)))
	brw.Write(sh)
	if err := brw.Flush(); err != nil {
		s.detach(a)
		return nil, err
	}
	return a, nil
}

// readHello reads and checks the agent's client hello.
func readHello(r *bufio.Reader, exporter []byte) (relayproto.ClientHello, error) {
	t, n, err := relayproto.ReadHeader(r)
	if err != nil {
		return relayproto.ClientHello{}, fmt.Errorf("read hello: %w", err)
	}
	if t != relayproto.FrameClientHello {
		return relayproto.ClientHello{}, &badHelloError{&refusal{relayproto.RefuseAuth, fmt.Sprintf("expected client-hello, got %s", t)}}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return relayproto.ClientHello{}, fmt.Errorf("read hello: %w", err)
	}
	hello, err := relayproto.ParseClientHello(p, exporter)
	if err != nil {
		return relayproto.ClientHello{}, helloError(err)
	}
	return hello, nil
}

// serverHello is the relay's answer to the attached agent a.
func (s *Server) serverHello(a *attachment, version uint16) relayproto.ServerHello {
	h := relayproto.ServerHello{
		Version:         version,
		KeepAliveMillis: uint32(s.keepAlive / time.Millisecond),
		PublicKey:       s.cfg.Identity.PublicKey(),
		ObservedAddr:    a.remoteAddr().String(),
	}
	if s.cfg.UDPPort != 0 {
		h.Extensions = append(h.Extensions, relayproto.Extension{Type: relayproto.ExtUDPBinding,
			Value: relayproto.AppendUDPBinding(nil, relayproto.UDPBinding{Port: uint16(s.cfg.UDPPort), Token: a.bindingToken()})})
	}
	if a.udpChannel != 0 {
		h.Extensions = append(h.Extensions, relayproto.Extension{Type: relayproto.ExtUDPRelay,
			Value: relayproto.AppendUDPRelay(nil, relayproto.UDPRelay{Channel: a.udpChannel})})
	}
	return h
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
		err := s.cfg.Enroll(id, string(e.Value))
		s.noteEnrollment(err == nil)
		if err != nil {
			return fmt.Errorf("device %s is not enrolled on this relay, and its enrollment token was refused: %w", id, err)
		}
		s.log.Info("device enrolled", "id", id.String())
		return nil
	}
	return fmt.Errorf("device %s is not enrolled on this relay: give it an enrollment token (burrow relay token create) or ask the operator to allow this ID", id)
}

// register adds a, whose agent is on conn, to the registry, replacing (and
// sending away) an older attachment of the same device or client process,
// or says why it does not. It checks that the relay is open and adds a
// under one hold of mu, so that Close and Shutdown find a either still
// pending (and close its connection) or registered (and send it a
// go-away), never neither.
func (s *Server) register(a *attachment, conn net.Conn) *refusal {
	now := time.Now()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return &refusal{relayproto.RefuseShuttingDown, "relay is shutting down"}
	}
	if s.draining {
		s.mu.Unlock()
		return &refusal{relayproto.RefuseShuttingDown, "relay is shutting down: it is draining the sessions it has and admits no new one"}
	}
	if !a.isDevice() {
		a.markAllowed(now) // a new client has its grace period
	}
	rep, r := s.routes.add(a, now)
	if r == nil {
		s.noteAttach(a.role, rep.old != nil || rep.returned)
	}
	if r != nil {
		s.mu.Unlock()
		if r.code != relayproto.RefuseShuttingDown {
			s.stats.clientsRefused.Add(1)
		}
		return r
	}
	// From here Close reaches the attachment through the registry, with a
	// go-away, rather than by closing its connection.
	delete(s.pending, conn)
	if !a.isDevice() {
		s.startSweepLocked()
	}
	s.mu.Unlock()

	if s.udpRelayOn() {
		s.urelay.attach(a) // before the grant: a bind finds the channel
	}
	if s.cfg.UDPPort != 0 {
		s.udp.grant(a)
	}
	if a.isDevice() {
		s.reindex(a.address().ID)
		if s.cfg.Presence != nil {
			s.cfg.Presence.Attached(a.address().ID)
		}
	}
	if rep.old != nil {
		s.stats.replaced.Add(1)
		ga := relayproto.GoAway{Reason: relayproto.GoAwayReplaced, Message: "a newer session of this agent attached"}
		if a.isDevice() {
			if rep.retryAfter > 0 {
				s.log.Warn("device replaced again and again: are two copies of it running?", "id", a.address().ID.String(),
					"last_minute", rep.flaps, "retry_after", rep.retryAfter.String())
			}
			ga.RetryAfterMillis = uint32(rep.retryAfter / time.Millisecond)
		}
		rep.old.goAway(ga)
	}
	return nil
}
