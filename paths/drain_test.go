package paths

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// subListener takes m's connections until it is closed, leaving m open for
// the next relay.
type subListener struct {
	m    *memNet
	done chan struct{}
	once sync.Once
}

func (l *subListener) Accept() (net.Conn, error) {
	select {
	case <-l.done:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.m.accept:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *subListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *subListener) Addr() net.Addr { return pipeAddr{} }

// serveRelayOn serves a relay of id on m until stop is called.
func serveRelayOn(t *testing.T, m *memNet, id *identity.Identity, quiet time.Duration) (srv *relay.Server, stop func()) {
	srv, err := relay.New(relay.Config{Identity: id, AllowDevice: func(identity.ID) bool { return true }, DrainQuiet: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ln := &subListener{m: m, done: make(chan struct{})}
	hs := &http.Server{Handler: srv}
	go hs.Serve(tls.NewListener(ln, srv.TLSConfig()))
	stop = func() {
		hs.Close()
		srv.Close()
	}
	t.Cleanup(stop)
	return srv, stop
}

// A leaving is when an agent detached, and when its state changed next
// (a try at a relay, failed or not).
type leaving struct{ detached, next time.Time }

// watchLeaving reports c's next leaving.
func watchLeaving(c *Conn) <-chan leaving {
	out := make(chan leaving, 1)
	go func() {
		var l leaving
		for {
			st, ch := c.relay.Watch()
			switch {
			case l.detached.IsZero() && !st.Attached:
				l.detached = st.Since
			case !l.detached.IsZero() && !st.Since.Equal(l.detached):
				l.next = st.Since
				out <- l
				return
			}
			<-ch
		}
	}()
	return out
}

// waitStatusWithin waits up to d until c's status satisfies ok and returns
// when it did.
func waitStatusWithin(t *testing.T, c *Conn, d time.Duration, what string, ok func(Status) bool) time.Time {
	t.Helper()
	timeout := time.After(d)
	for {
		rst, ch := c.relay.Watch()
		st := Status{Status: rst}
		if ok(st) {
			return time.Now()
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("not %s within %v: %+v", what, d, st)
		}
	}
}

// TestDrainKeepsSession: when the relay drains, both agents hear it and
// keep their sessions, which carry packets until the relay closes them at
// the end of the drain; neither hears that its peer left, and both come
// back once a relay is there again, no sooner than the relay asked. An
// agent that tries to attach during the drain is refused for now, not for
// good.
func TestDrainKeepsSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMemNet()
		relayID, _ := identity.Generate()
		srv, stop := serveRelayOn(t, m, relayID, -1)
		devID, _ := identity.Generate()
		cliID, _ := identity.Generate()
		var gone atomic.Int64
		listen := func(id *identity.Identity, role relayproto.Role, access func() ([]identity.ID, [][32]byte)) *Conn {
			c, err := Listen(Config{Identity: id, Role: role, Relay: relaylink.RelayConfig{Addr: "relay:443", ID: relayID.ID()},
				Dial: m.Dial, Direct: DirectOptions{Disable: true, NoRelayUDP: true}, Access: access,
				OnPeerGone: func(g PeerGone) { gone.Add(1) }})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if err := c.WaitAttached(t.Context()); err != nil {
				t.Fatal(err)
			}
			return c
		}
		dev := listen(devID, relayproto.RoleDevice, func() ([]identity.ID, [][32]byte) { return []identity.ID{cliID.ID()}, nil })
		cli := listen(cliID, relayproto.RoleClient, nil)

		// The device answers every packet; the client counts the answers.
		var answers atomic.Int64
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := dev.ReadFrom(buf)
				if err != nil {
					return
				}
				dev.WriteTo(buf[:n], from)
			}
		}()
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := cli.ReadFrom(buf); err != nil {
					return
				}
				answers.Add(1)
			}
		}()
		roundTrip := func() bool {
			before := answers.Load()
			cli.WriteTo([]byte("ping"), Addr{ID: devID.ID()})
			time.Sleep(100 * time.Millisecond)
			return answers.Load() > before
		}
		if !roundTrip() {
			t.Fatal("no answer before the drain")
		}

		const period = 10 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), period)
		defer cancel()
		drained := make(chan error, 1)
		start := time.Now()
		go func() { drained <- srv.Shutdown(ctx) }()
		for _, c := range []*Conn{dev, cli} {
			waitStatusWithin(t, c, time.Second, "draining", func(s Status) bool { return s.Draining })
		}

		// Refused for now: the third agent keeps trying, WaitAttached does
		// not give up on it.
		late, err := Listen(Config{Identity: relayID, Role: relayproto.RoleClient, Relay: relaylink.RelayConfig{Addr: "relay:443", ID: relayID.ID()},
			Dial: m.Dial, Direct: DirectOptions{Disable: true, NoRelayUDP: true}})
		if err != nil {
			t.Fatal(err)
		}
		defer late.Close()
		// (Over net.Pipe, which buffers nothing, both ends' TLS close
		// notices wait for their 5s timeout before the refusal is known.)
		waitStatusWithin(t, late, time.Minute, "refused", func(s Status) bool { return s.LastError != nil })
		if refused, ok := errors.AsType[*relaylink.AttachRefusedError](late.Status().LastError); !ok || refused.Code != relayproto.RefuseShuttingDown {
			t.Fatalf("attaching during the drain: %v, want a refusal for now", late.Status().LastError)
		}
		wctx, wcancel := context.WithTimeout(t.Context(), time.Second)
		waitFrom := time.Now()
		if err := late.WaitAttached(wctx); err == nil || time.Since(waitFrom) < time.Second {
			t.Fatalf("WaitAttached during the drain returned %v after %v, want it to wait for its context", err, time.Since(waitFrom))
		}
		wcancel()

		// Packets flow until the drain period is over, up to the last
		// moments of it.
		for time.Since(start) < period-200*time.Millisecond {
			if !roundTrip() {
				t.Fatalf("no answer %v into the drain", time.Since(start))
			}
			if !dev.Status().Attached || !cli.Status().Attached {
				t.Fatalf("an agent detached %v into the drain", time.Since(start))
			}
		}
		leaves := map[*Conn]<-chan leaving{dev: watchLeaving(dev), cli: watchLeaving(cli)}
		// Through the close: bursts, so that the relay is still reading
		// some when it closes the device's session.
		bursts := make(chan struct{})
		go func() {
			defer close(bursts)
			for time.Since(start) < period+time.Second {
				for range 100 {
					cli.WriteTo([]byte("ping"), Addr{ID: devID.ID()})
				}
				time.Sleep(time.Millisecond)
			}
		}()
		if err := <-drained; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown returned %v", err)
		}
		if took := time.Since(start); took < period {
			t.Fatalf("the drain took %v, less than its period", took)
		}
		// The agents read their go-away, and try a relay again (the old
		// one, which fails, or the new one below) no sooner than it asked:
		// 0.5s at least.
		detached := map[*Conn]time.Time{}
		for c, leave := range leaves {
			select {
			case l := <-leave:
				if wait := l.next.Sub(l.detached); wait < 500*time.Millisecond {
					t.Fatalf("tried a relay again %v after the go-away", wait)
				}
				detached[c] = l.detached
			case <-time.After(time.Minute):
				t.Fatal("an agent did not detach, or never tried a relay again")
			}
		}
		<-bursts
		if n := gone.Load(); n != 0 {
			t.Fatalf("agents were told %d times that a peer left", n)
		}

		// A relay is back: both agents reattach, no sooner after their
		// go-away than the relay asked (0.5s at least), and packets flow
		// again.
		stop()
		serveRelayOn(t, m, relayID, -1)
		for _, c := range []*Conn{dev, cli} {
			at := waitStatusWithin(t, c, 10*time.Second, "attached again", func(s Status) bool { return s.Attached })
			if wait := at.Sub(detached[c]); wait < 500*time.Millisecond {
				t.Fatalf("reattached %v after the go-away", wait)
			}
		}
		if !roundTrip() {
			t.Fatal("no answer through the new relay")
		}
	})
}
