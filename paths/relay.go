package paths

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// attachTimeout bounds one attach attempt: TCP, TLS, upgrade and hellos.
const attachTimeout = 10 * time.Second

// stableSession is how long a relay session must last for the backoff to
// start again from its minimum.
const stableSession = 10 * time.Second

// A RefusedError is the relay's refusal of this agent.
type RefusedError struct {
	Relay string
	relayproto.Refuse
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("relay %s refused this agent (%s): %s", e.Relay, e.Code, e.Message)
}

// An UntrustedRelayError reports a relay certificate that is neither pinned
// nor signed by a trusted authority.
type UntrustedRelayError struct {
	Relay string
	Err   error
}

func (e *UntrustedRelayError) Error() string {
	return fmt.Sprintf("relay %s: certificate not trusted (%v): pin the relay with its ID (relay_id, --relay-id)", e.Relay, e.Err)
}

func (e *UntrustedRelayError) Unwrap() error { return e.Err }

// isPermanent reports whether err is an attach failure that retrying alone
// will not fix: someone has to change a configuration somewhere. A relay
// that is overloaded, shutting down (draining) or holding as many sessions
// from this address as it takes refuses only for now.
func isPermanent(err error) bool {
	if refused, ok := errors.AsType[*RefusedError](err); ok {
		switch refused.Code {
		case relayproto.RefuseOverloaded, relayproto.RefuseShuttingDown, relayproto.RefuseTooMany:
			return false
		}
		return true
	}
	var untrusted *UntrustedRelayError
	return errors.Is(err, identity.ErrKeyMismatch) || errors.As(err, &untrusted)
}

// attachLoop keeps the Conn attached to the relay until it is closed.
func (c *Conn) attachLoop() {
	b := backoff{min: c.cfg.MinBackoff, max: c.cfg.MaxBackoff}
	var (
		lastMsg    string    // the last attach error logged
		lastLogged time.Time // and when
		spreading  bool      // returning to a relay that dropped everyone (ReattachSpread)
	)
	for c.ctx.Err() == nil {
		rs, err := c.attach(c.ctx)
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			// The same failure again is logged once a minute, not at
			// every attempt.
			level := slog.LevelWarn
			if isPermanent(err) {
				level = slog.LevelError
			}
			if msg := err.Error(); msg == lastMsg && time.Since(lastLogged) < time.Minute {
				level = slog.LevelDebug
			} else {
				lastMsg, lastLogged = msg, time.Now()
			}
			c.log.Log(c.ctx, level, "relay attach failed", "err", err)
			c.setStatus(func(s *Status) { s.LastError = err; s.Since = time.Now() })
			if isPermanent(err) {
				b.n = 64 // only a configuration change helps: retry slowly
			}
			wait := b.next()
			if spreading {
				wait = max(wait, c.spread(0.5))
			}
			c.sleep(wait)
			continue
		}
		lastMsg, spreading = "", false
		start := time.Now()
		c.cur.Store(rs)
		// State that changed while attaching goes out now.
		if frames, v := c.stateFrames(); v != rs.stateSent {
			rs.sendBlocking(frames)
		}
		c.setStatus(func(s *Status) {
			*s = Status{Attached: true, Relay: c.cfg.Relay.Addr, RelayID: rs.relayID, Since: start, ObservedAddr: rs.observed}
		})
		c.log.Info("attached to relay", "relay_id", rs.relayID.String(), "observed_addr", rs.observed)
		if c.cfg.EnrollToken != "" {
			// Admitted, so enrolled: the token is not sent again (only
			// this goroutine reads it).
			c.cfg.EnrollToken = ""
			if c.cfg.OnEnrolled != nil {
				c.cfg.OnEnrolled()
			}
		}
		if c.ds != nil && rs.udpBinding != nil {
			c.wg.Go(func() { c.bind(rs, *rs.udpBinding) })
		}
		err = rs.serve(c)
		// Wants from while attached do not count; from here on, every
		// one does (see WaitAttached, WriteTo).
		c.unwant()
		c.cur.Store(nil)
		if c.ctx.Err() != nil {
			return
		}
		c.setStatus(func(s *Status) { s.Attached, s.Draining, s.LastError, s.Since = false, false, err, time.Now() })
		if time.Since(start) >= stableSession {
			b.reset()
		}
		wait := b.next()
		switch ga := rs.goAway.Load(); {
		case ga != nil && ga.Reason == relayproto.GoAwayUnused:
			// No device on the relay allows this client: it is of no use
			// there until it has something to send (a tunnel to open, a
			// packet of a session), or, to keep its status fresh, until
			// the relay's wait is over; never sooner than the backoff, so
			// that a relay that says so at once cannot make it loop.
			retry := time.Duration(ga.RetryAfterMillis) * time.Millisecond
			c.log.Info("relay closed this client's session: no device there allows it now; attaching again when there is something to send",
				"retry_in", max(retry, wait).String())
			since := time.Now()
			c.waitWanted(max(retry, wait))
			c.sleep(wait - time.Since(since))
			continue
		case ga != nil:
			wait = max(wait, time.Duration(ga.RetryAfterMillis)*time.Millisecond)
		case c.cfg.ReattachSpread > 0 && !errors.Is(err, errRelayIdle):
			// Closed or reset without a word: the relay (or its host)
			// went down, for every agent at once.
			spreading = true
			wait = max(wait, c.spread(0))
		}
		attrs := []any{"err", err, "after", time.Since(start).Round(time.Millisecond).String(), "retry_in", wait.Round(time.Millisecond).String()}
		if rs.drainNotice.Load() != nil {
			// Announced: the relay said it would close the session.
			c.log.Info("detached from draining relay", attrs...)
		} else {
			c.log.Warn("detached from relay", attrs...)
		}
		c.sleep(wait)
	}
}

// spread returns a random wait in [from·ReattachSpread, ReattachSpread).
func (c *Conn) spread(from float64) time.Duration {
	s := c.cfg.ReattachSpread
	lo := time.Duration(from * float64(s))
	return lo + rand.N(s-lo)
}

// unwant forgets that the relay was wanted.
func (c *Conn) unwant() {
	select {
	case <-c.wanted:
	default:
	}
}

// waitWanted waits until the relay is wanted (see Conn.want), d has
// passed or the Conn closes.
func (c *Conn) waitWanted(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.wanted:
	case <-t.C:
	case <-c.ctx.Done():
	}
}

func (c *Conn) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.ctx.Done():
	}
}

// backoff is capped exponential backoff with jitter: the n-th wait is
// drawn uniformly from [d/2, d) where d = min·2ⁿ, capped at max, so agents
// that lost the same relay at the same moment do not return in step.
type backoff struct {
	min, max time.Duration
	n        int
	rand     func(n int64) int64 // nil means math/rand/v2
}

func (b *backoff) next() time.Duration {
	d := b.max
	if b.n < 32 {
		d = min(b.min<<b.n, b.max)
	}
	b.n++
	r := rand.Int64N
	if b.rand != nil {
		r = b.rand
	}
	half := d / 2
	return half + time.Duration(r(int64(d-half)))
}

func (b *backoff) reset() { b.n = 0 }

// A relaySession is one attached TLS session to the relay. The read loop
// (serve) owns br; the write loop owns writes to conn.
type relaySession struct {
	conn      *tls.Conn
	br        *bufio.Reader
	relayID   identity.ID
	observed  string
	keepAlive time.Duration
	// udpBinding is the relay's offer to tell the direct socket its
	// public address; nil if it made none.
	udpBinding *relayproto.UDPBinding

	ctx    context.Context
	cancel context.CancelCauseFunc
	sendq  chan *[]byte // encoded frames; bounded, producers never block

	goAway      atomic.Pointer[relayproto.GoAway]
	drainNotice atomic.Pointer[relayproto.Drain] // the relay's, if it sent one
	pingSent    atomic.Int64                     // UnixNano of the outstanding ping, 0 if none
	hdr         [relayproto.HeaderLen]byte
	flushed     chan struct{} // closed when the write loop reaches flushMarker
	drainOnce   sync.Once     // queues flushMarker at most once
	// stateSent is the version of the access list and intents this session
	// sent while attaching (see stateFrames).
	stateSent uint64
}

// flushMarker, queued behind other frames, makes the write loop flush and
// close relaySession.flushed.
var flushMarker = new([]byte)

// drain waits (up to timeout) until every frame queued so far is written,
// so that a closing agent's last packets (its sessions' close notices)
// reach the relay.
func (rs *relaySession) drain(timeout time.Duration) {
	queued := false
	rs.drainOnce.Do(func() {
		select {
		case rs.sendq <- flushMarker:
			queued = true
		default:
		}
	})
	if !queued {
		return
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-rs.flushed:
	case <-rs.ctx.Done():
	case <-t.C:
	}
}

// attach dials the relay, checks its key, upgrades and exchanges hellos.
func (c *Conn) attach(ctx context.Context) (*relaySession, error) {
	ctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	relay := c.cfg.Relay
	host, _, _ := net.SplitHostPort(relay.Addr)

	raw, err := c.cfg.Dial(ctx, "tcp", relay.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial relay: %w", err)
	}
	protos := []string{"http/1.1"}
	if !relay.ID.IsZero() {
		// Asks a relay with a CA-signed certificate for its identity
		// certificate, the only one a pinning agent accepts.
		protos = append(protos, relayproto.ALPNPinned)
	}
	conn := tls.Client(raw, &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         host,
		NextProtos:         protos,
		InsecureSkipVerify: true, // checked by verifyRelay, pin or chain
		VerifyConnection:   verifyRelay(relay, host),
	})
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Now()) })
	defer stop()
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("relay TLS handshake: %w", err)
	}
	st := conn.ConnectionState()
	exporter, err := st.ExportKeyingMaterial(relayproto.ExporterLabel, nil, relayproto.ExporterLen)
	if err != nil {
		return nil, fmt.Errorf("relay TLS exporter: %w", err)
	}

	// Send the upgrade and the hello together; the hello is bound to this
	// TLS connection, so it needs no answer first.
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: %s\r\nUser-Agent: burrow\r\n\r\n",
		relayproto.UpgradePath, relay.Addr, relayproto.UpgradeToken)
	ch := relayproto.ClientHello{
		MinVersion: relayproto.MinVersion,
		MaxVersion: relayproto.MaxVersion,
		Role:       c.cfg.Role,
		Instance:   c.instance,
		PublicKey:  c.cfg.Identity.PublicKey(),
	}
	if c.cfg.EnrollToken != "" && c.cfg.Role == relayproto.RoleDevice {
		ch.Extensions = append(ch.Extensions, relayproto.Extension{Type: relayproto.ExtEnrollToken, Value: []byte(c.cfg.EnrollToken)})
	}
	hello := relayproto.AppendClientHello(nil, ch, exporter, c.cfg.Identity.Sign)
	msg := append([]byte(req), relayproto.AppendHeader(nil, relayproto.FrameClientHello, len(hello))...)
	msg = append(msg, hello...)
	// Right behind the hello goes what the relay must know before anything
	// else: a device's access list (the relay makes the device reachable
	// only once it has it), a client's pairing intents.
	frames, sent := c.stateFrames()
	for _, f := range frames {
		msg = append(msg, f...)
	}
	if _, err := conn.Write(msg); err != nil {
		return nil, fmt.Errorf("relay upgrade: %w", err)
	}
	br := bufio.NewReaderSize(conn, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, fmt.Errorf("relay upgrade: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, fmt.Errorf("relay upgrade: %s answered %q, not 101 Switching Protocols: is it a burrow relay?", relay.Addr, resp.Status)
	}

	t, n, err := relayproto.ReadHeader(br)
	if err != nil {
		return nil, fmt.Errorf("relay hello: %w", err)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		return nil, fmt.Errorf("relay hello: %w", err)
	}
	switch t {
	case relayproto.FrameRefuse:
		f, err := relayproto.ParseRefuse(p)
		if err != nil {
			return nil, fmt.Errorf("relay refuse: %w", err)
		}
		return nil, &RefusedError{Relay: relay.Addr, Refuse: f}
	case relayproto.FrameServerHello:
	default:
		return nil, fmt.Errorf("relay hello: got %s frame", t)
	}
	sh, err := relayproto.ParseServerHello(p, exporter)
	if err != nil {
		return nil, fmt.Errorf("relay hello: %w", err)
	}
	relayID := identity.IDOf(sh.PublicKey)
	// A pinned ID was checked in the TLS handshake already; the hello,
	// signed by the identity key, must name the same.
	if !relay.ID.IsZero() && relayID != relay.ID {
		return nil, &identity.KeyMismatchError{Peer: "relay", Expected: relay.ID, Got: relayID}
	}
	if sh.Version < relayproto.MinVersion || sh.Version > relayproto.MaxVersion {
		return nil, fmt.Errorf("relay chose protocol version %d, outside %d-%d", sh.Version, relayproto.MinVersion, relayproto.MaxVersion)
	}
	keepAlive := time.Duration(sh.KeepAliveMillis) * time.Millisecond
	if keepAlive < time.Second {
		keepAlive = time.Second
	}
	ok = true
	rs := &relaySession{
		conn:      conn,
		br:        br,
		relayID:   relayID,
		observed:  sh.ObservedAddr,
		keepAlive: keepAlive,
		sendq:     make(chan *[]byte, c.cfg.QueueLen),
		flushed:   make(chan struct{}),
	}
	rs.ctx, rs.cancel = context.WithCancelCause(c.ctx)
	rs.stateSent = sent
	for _, e := range sh.Extensions {
		if e.Type == relayproto.ExtUDPBinding {
			if b, err := relayproto.ParseUDPBinding(e.Value); err == nil {
				rs.udpBinding = &b
			}
		}
	}
	return rs, nil
}

// verifyRelay checks the relay's certificate inside the TLS handshake, so
// that nothing of the agent's (its hello, access list, enrollment token,
// pairing intents) reaches a relay that fails the check. With a pinned ID,
// the leaf's key must have that ID and nothing else counts: a certificate
// that chains to a trusted root but holds another key is refused (a relay
// with a CA-signed certificate serves pinning agents its identity
// certificate; they ask with [relayproto.ALPNPinned]). Without a pin, the
// certificate must chain to a trusted root for host.
func verifyRelay(relay RelayConfig, host string) func(tls.ConnectionState) error {
	if !relay.ID.IsZero() {
		return identity.VerifyPinned("relay", relay.ID)
	}
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return &UntrustedRelayError{Relay: relay.Addr, Err: errors.New("no certificate")}
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			DNSName:       host,
			Roots:         relay.RootCAs,
			Intermediates: inter,
		})
		if err != nil {
			return &UntrustedRelayError{Relay: relay.Addr, Err: err}
		}
		return nil
	}
}

// packetBufLen holds the largest packet frame, header included.
const packetBufLen = relayproto.HeaderLen + relayproto.AddrLen + relayproto.MaxPacketLen

var packetPool = sync.Pool{New: func() any { b := make([]byte, packetBufLen); return &b }}

// writerPool holds write buffers of relay sessions busy right now.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}

// send queues a packet for dst. It reports false if the packet was dropped.
func (rs *relaySession) send(dst relayproto.Addr, p []byte) bool {
	bp := packetPool.Get().(*[]byte)
	*bp = append(relayproto.AppendPacketHeader((*bp)[:0], relayproto.FrameSendPacket, dst, len(p)), p...)
	select {
	case rs.sendq <- bp:
		return true
	default:
		packetPool.Put(bp)
		return false
	}
}

// serve runs the session until it fails or c is closed, and returns why it
// ended.
func (rs *relaySession) serve(c *Conn) error {
	var wg sync.WaitGroup
	wg.Go(func() { rs.cancel(rs.writeLoop()) })
	// Closing the TCP connection wakes both loops at once.
	stop := context.AfterFunc(rs.ctx, func() { rs.conn.NetConn().Close() })
	err := rs.readLoop(c)
	stop()
	rs.cancel(err)
	wg.Wait()
	if rs.goAway.Load() != nil {
		// The relay is closing the session: a TLS close would wait (up to
		// 5s) to send it an alert it may no longer read.
		rs.conn.NetConn().Close()
	} else {
		rs.conn.Close()
	}
	for {
		select {
		case bp := <-rs.sendq:
			if bp != flushMarker {
				packetPool.Put(bp)
			}
			continue
		default:
		}
		break
	}
	if cause := context.Cause(rs.ctx); cause != nil {
		return cause
	}
	return err
}

var (
	errRelayIdle    = errors.New("relay sent nothing for 3 keepalive intervals")
	errStateNotSent = errors.New("could not send the access list to the relay: its session is stalled")
)

func (rs *relaySession) readLoop(c *Conn) error {
	var deadlineSetAt time.Time
	for {
		if now := time.Now(); now.Sub(deadlineSetAt) > rs.keepAlive/4 {
			rs.conn.SetReadDeadline(now.Add(3 * rs.keepAlive))
			deadlineSetAt = now
		}
		if _, err := io.ReadFull(rs.br, rs.hdr[:]); err != nil {
			return rs.readErr(err)
		}
		t, n, err := relayproto.ParseHeader(rs.hdr[:])
		if err != nil {
			return err
		}
		switch t {
		case relayproto.FrameRecvPacket:
			if n < relayproto.AddrLen {
				return fmt.Errorf("%w: short recv-packet", relayproto.ErrMalformed)
			}
			bp := packetPool.Get().(*[]byte)
			buf := (*bp)[:n]
			if _, err := io.ReadFull(rs.br, buf); err != nil {
				packetPool.Put(bp)
				return rs.readErr(err)
			}
			src, _ := relayproto.ParseAddr(buf)
			c.deliver(inPacket{buf: bp, off: relayproto.AddrLen, end: int(n), from: c.peerOf(Addr(src))})
		case relayproto.FramePeerGone:
			p := make([]byte, n)
			if _, err := io.ReadFull(rs.br, p); err != nil {
				return rs.readErr(err)
			}
			f, err := relayproto.ParsePeerGone(p)
			if err != nil {
				return err
			}
			if c.cfg.OnPeerGone != nil {
				g := PeerGone{Peer: Addr(f.Peer), Reason: f.Reason}
				if f.LastSeenUnix != 0 {
					g.LastSeen = time.Unix(int64(f.LastSeenUnix), 0)
				}
				c.cfg.OnPeerGone(g)
			}
		case relayproto.FramePong:
			var p [8]byte
			if n != 8 {
				return fmt.Errorf("%w: pong of %d bytes", relayproto.ErrMalformed, n)
			}
			if _, err := io.ReadFull(rs.br, p[:]); err != nil {
				return rs.readErr(err)
			}
			if sent := rs.pingSent.Swap(0); sent != 0 {
				rtt := time.Duration(time.Now().UnixNano() - sent)
				c.setStatus(func(s *Status) { s.RTT = rtt })
			}
		case relayproto.FramePing:
			var p [8]byte
			if n != 8 {
				return fmt.Errorf("%w: ping of %d bytes", relayproto.ErrMalformed, n)
			}
			if _, err := io.ReadFull(rs.br, p[:]); err != nil {
				return rs.readErr(err)
			}
			rs.sendControl(relayproto.FramePong, p[:])
		case relayproto.FrameDrain:
			p := make([]byte, n)
			if _, err := io.ReadFull(rs.br, p); err != nil {
				return rs.readErr(err)
			}
			f, err := relayproto.ParseDrain(p)
			if err != nil {
				return err
			}
			// Nothing changes here: the session, and the E2E sessions on
			// it, go on until the relay closes it with a go-away; the
			// reattach after that is the usual one.
			if rs.drainNotice.Swap(&f) == nil {
				c.setStatus(func(s *Status) { s.Draining = true })
				attrs := []any{"msg", f.Message}
				if f.WithinMillis != 0 {
					attrs = append(attrs, "closes_within", (time.Duration(f.WithinMillis) * time.Millisecond).String())
				}
				c.log.Info("relay is draining: keeping this session and its tunnels until the relay closes it", attrs...)
			}
		case relayproto.FrameGoAway:
			p := make([]byte, n)
			if _, err := io.ReadFull(rs.br, p); err != nil {
				return rs.readErr(err)
			}
			f, err := relayproto.ParseGoAway(p)
			if err != nil {
				return err
			}
			rs.goAway.Store(&f)
			return fmt.Errorf("relay said go away: %s (%s)", f.Reason, f.Message)
		default:
			if _, err := rs.br.Discard(int(n)); err != nil {
				return rs.readErr(err)
			}
		}
	}
}

func (rs *relaySession) readErr(err error) error {
	if cause := context.Cause(rs.ctx); cause != nil {
		return cause
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return errRelayIdle
	}
	if errors.Is(err, io.EOF) {
		return errors.New("relay closed the connection")
	}
	return err
}

// sendControl queues a small control frame, dropping it if the queue is full.
func (rs *relaySession) sendControl(t relayproto.FrameType, payload []byte) {
	bp := packetPool.Get().(*[]byte)
	*bp = append(relayproto.AppendHeader((*bp)[:0], t, len(payload)), payload...)
	select {
	case rs.sendq <- bp:
	default:
		packetPool.Put(bp)
	}
}

// writeLoop writes queued frames, batching whatever is queued into one
// flush, and pings the relay every keepalive interval.
func (rs *relaySession) writeLoop() error {
	ping := time.NewTicker(rs.keepAlive)
	defer ping.Stop()
	var deadlineSetAt time.Time
	for {
		var bp *[]byte
		select {
		case bp = <-rs.sendq:
		case <-ping.C:
			var p [8]byte
			binary.BigEndian.PutUint64(p[:], rand.Uint64())
			rs.pingSent.Store(time.Now().UnixNano())
			bp = packetPool.Get().(*[]byte)
			*bp = append(relayproto.AppendHeader((*bp)[:0], relayproto.FramePing, 8), p[:]...)
		case <-rs.ctx.Done():
			return nil
		}
		if now := time.Now(); now.Sub(deadlineSetAt) > rs.keepAlive/4 {
			rs.conn.SetWriteDeadline(now.Add(3 * rs.keepAlive))
			deadlineSetAt = now
		}
		if err := rs.writeBatch(bp); err != nil {
			return fmt.Errorf("write to relay: %w", err)
		}
	}
}

// writeBatch writes bp and every frame queued behind it with one flush.
func (rs *relaySession) writeBatch(bp *[]byte) error {
	w := writerPool.Get().(*bufio.Writer)
	w.Reset(rs.conn)
	defer func() {
		w.Reset(nil)
		writerPool.Put(w)
	}()
	yielded := false
	for {
		if bp == flushMarker {
			err := w.Flush()
			close(rs.flushed)
			if err != nil {
				return err
			}
		} else {
			_, err := w.Write(*bp)
			packetPool.Put(bp)
			if err != nil {
				return err
			}
		}
		select {
		case bp = <-rs.sendq:
			yielded = false
			continue
		default:
		}
		// Let the producers (the E2E sessions) run once before paying a
		// TLS record and a syscall: under load they queue more packets,
		// and when idle this costs nothing.
		if !yielded {
			yielded = true
			runtime.Gosched()
			select {
			case bp = <-rs.sendq:
				yielded = false
				continue
			default:
			}
		}
		return w.Flush()
	}
}
