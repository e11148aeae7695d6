package relay

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// The relay's timers, tested in synctest bubbles: agents reach the relay
// through Accept over in-memory TLS connections (net.Pipe), and the
// bubble's clock stands still until every goroutine waits, so that the
// tests see exactly when the relay acts.

// newBubbleServer starts a relay inside the current bubble; it is closed
// when the test ends.
func newBubbleServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.Identity = newIdentity(t)
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// pipeConnect connects an agent to srv in memory, through TLS and
// [Server.Accept], without a hello.
func pipeConnect(t *testing.T, srv *Server) *agent {
	t.Helper()
	c, s := net.Pipe()
	go func() {
		tc := tls.Server(s, srv.TLSConfig())
		if err := tc.Handshake(); err != nil {
			tc.Close()
			return
		}
		srv.Accept(t.Context(), tc, bufio.NewReader(tc))
	}()
	cc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err := cc.Handshake(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &agent{t: t, conn: cc, br: bufio.NewReader(cc)}
}

// pipeAttach connects and authenticates as id with role.
func pipeAttach(t *testing.T, srv *Server, id *identity.Identity, role relayproto.Role) *agent {
	t.Helper()
	a := pipeConnect(t, srv)
	a.hello(id, role, 1, 1, a.exporter())
	if typ, p := a.read(); typ != relayproto.FrameServerHello {
		f, _ := relayproto.ParseRefuse(p)
		t.Fatalf("got %s %+v, want server-hello", typ, f)
	}
	return a
}

// hangUp waits for the relay to close a's connection (reading whatever
// comes before) and returns when it did; it fails if nothing ends within
// limit.
func (a *agent) hangUp(limit time.Duration) time.Time {
	a.t.Helper()
	a.conn.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, a.br)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		a.t.Fatalf("the relay kept the connection for %v", limit)
	}
	return time.Now()
}

// ping reports whether the relay answers a's ping.
func (a *agent) ping() bool {
	a.t.Helper()
	if _, err := a.conn.Write(append(relayproto.AppendHeader(nil, relayproto.FramePing, 8), "are you?"...)); err != nil {
		return false
	}
	a.conn.SetReadDeadline(time.Now().Add(time.Second))
	typ, n, err := relayproto.ReadHeader(a.br)
	if err != nil || typ != relayproto.FramePong {
		return false
	}
	_, err = a.br.Discard(int(n))
	return err == nil
}

// TestHandshakeDeadline: the whole handshake, however the agent trickles
// it, must end within HandshakeTimeout (10s by default) of the connection;
// an agent that authenticates in time has the deadline cleared and stays.
func TestHandshakeDeadline(t *testing.T) {
	const timeout = 10 * time.Second
	t.Run("silent", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			srv := newBubbleServer(t, Config{AllowDevice: allowAll})
			a := pipeConnect(t, srv)
			start := time.Now()
			if took := a.hangUp(time.Minute).Sub(start); took != timeout {
				t.Fatalf("silent agent closed after %v, want %v", took, timeout)
			}
		})
	})
	t.Run("trickle", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			srv := newBubbleServer(t, Config{AllowDevice: allowAll})
			a := pipeConnect(t, srv)
			start := time.Now()
			id := newIdentity(t)
			hello := relayproto.AppendClientHello(nil, relayproto.ClientHello{
				MinVersion: 1, MaxVersion: 1, Role: relayproto.RoleClient, Instance: 7, PublicKey: id.PublicKey(),
			}, a.exporter(), id.Sign)
			frame := append(relayproto.AppendHeader(nil, relayproto.FrameClientHello, len(hello)), hello...)
			// A byte every second keeps each read short, never the whole.
			stop := make(chan struct{})
			go func() {
				for _, b := range frame {
					select {
					case <-time.After(time.Second):
					case <-stop:
						return
					}
					if _, err := a.conn.Write([]byte{b}); err != nil {
						return
					}
				}
			}()
			took := a.hangUp(time.Minute).Sub(start)
			close(stop)
			if took != timeout {
				t.Fatalf("trickling agent closed after %v, want %v", took, timeout)
			}
		})
	})
	t.Run("late", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			srv := newBubbleServer(t, Config{AllowDevice: allowAll})
			a := pipeConnect(t, srv)
			time.Sleep(timeout - time.Millisecond)
			a.hello(newIdentity(t), relayproto.RoleDevice, 1, 1, a.exporter())
			if typ, _ := a.read(); typ != relayproto.FrameServerHello {
				t.Fatalf("got %s, want server-hello", typ)
			}
			time.Sleep(2 * timeout)
			if !a.ping() {
				t.Fatal("the handshake deadline closed an attached agent")
			}
		})
	})
}

// TestIdleAgentDetached: an agent that sends a frame at least every
// 3×KeepAlive stays attached for as long as it does; one that falls
// silent is detached 3×KeepAlive after its last frame (the deadline moves
// in steps of KeepAlive/4, so up to that much sooner), without a go-away.
func TestIdleAgentDetached(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const keepAlive = 15 * time.Second
		srv := newBubbleServer(t, Config{AllowDevice: allowAll})
		a := pipeAttach(t, srv, newIdentity(t), relayproto.RoleDevice)
		for i := range 10 {
			time.Sleep(3*keepAlive - time.Second)
			if !a.ping() {
				t.Fatalf("ping %d, after %v of quiet: detached", i+1, 3*keepAlive-time.Second)
			}
		}
		last := time.Now()
		gone := a.hangUp(10 * keepAlive)
		if took := gone.Sub(last); took > 3*keepAlive || took <= 3*keepAlive-keepAlive/4 {
			t.Fatalf("silent agent detached %v after its last frame, want within %v of %v", took, keepAlive/4, 3*keepAlive)
		}
		synctest.Wait()
		if st := srv.Stats(); st.Devices != 0 {
			t.Fatalf("stats %+v after the agent was detached", st)
		}
	})
}

// TestFlappingDeviceWaits: two copies of one device replace each other;
// past flapFree replacements a minute, the replaced copy is told to wait
// flapStep longer for each, and once a minute has passed without a
// replacement it need not wait at all.
func TestFlappingDeviceWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A long keepalive: the copies stay quiet for a minute.
		srv := newBubbleServer(t, Config{AllowDevice: allowAll, KeepAlive: time.Hour})
		id := newIdentity(t)
		prev := pipeAttach(t, srv, id, relayproto.RoleDevice)
		replace := func(want time.Duration) {
			t.Helper()
			next := pipeAttach(t, srv, id, relayproto.RoleDevice)
			ga := prev.expectGoAway(time.Second)
			if ga.Reason != relayproto.GoAwayReplaced || time.Duration(ga.RetryAfterMillis)*time.Millisecond != want {
				t.Fatalf("replaced copy told %s, retry after %d ms; want %s after %v", ga.Reason, ga.RetryAfterMillis, relayproto.GoAwayReplaced, want)
			}
			prev = next
		}
		for _, want := range []time.Duration{0, 0, 10 * time.Second, 20 * time.Second, 30 * time.Second} {
			replace(want)
			time.Sleep(5 * time.Second)
		}
		time.Sleep(flapWindow)
		replace(0)
		if st := srv.Stats(); st.Replaced != 6 || st.Devices != 1 {
			t.Fatalf("stats %+v, want 6 replaced and 1 device", st)
		}
	})
}

// TestUnusedClientSweepTiming: with the default grace of 20s, a client no
// device allows is sent away between three quarters of a grace and a grace
// and a quarter after it attached; one a device allows stays as long as
// it does, and goes within the same bounds once the device has left.
func TestUnusedClientSweepTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const grace = 20 * time.Second
		srv := newBubbleServer(t, Config{AllowDevice: allowAll, KeepAlive: time.Hour})
		devID, friendID := newIdentity(t), newIdentity(t)
		dev := pipeAttach(t, srv, devID, relayproto.RoleDevice)
		dev.allow(friendID)
		friend := pipeAttach(t, srv, friendID, relayproto.RoleClient)
		stranger := pipeAttach(t, srv, newIdentity(t), relayproto.RoleClient)
		start := time.Now()
		ga := stranger.expectGoAway(2 * grace)
		if took := time.Since(start); ga.Reason != relayproto.GoAwayUnused || took < grace*3/4 || took > grace*5/4 {
			t.Fatalf("stranger told %s after %v, want %s within %v-%v", ga.Reason, took, relayproto.GoAwayUnused, grace*3/4, grace*5/4)
		}
		time.Sleep(5 * grace)
		if !friend.ping() {
			t.Fatal("a client the device allows was sent away")
		}
		dev.conn.Close()
		synctest.Wait()
		left := time.Now()
		if ga := friend.expectGoAway(2 * grace); ga.Reason != relayproto.GoAwayUnused {
			t.Fatalf("friend of a departed device told %s", ga.Reason)
		}
		if took := time.Since(left); took < grace*3/4 || took > grace*5/4 {
			t.Fatalf("friend of a departed device sent away after %v, want within %v-%v", took, grace*3/4, grace*5/4)
		}
	})
}
