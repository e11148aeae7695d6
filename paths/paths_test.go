package paths

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/israce"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memNet is an in-memory network of net.Pipe connections between agents
// and one relay, for synctest bubbles. Each connection can be cut.
type memNet struct {
	accept    chan net.Conn
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	down      atomic.Bool // dials fail while set
	mu        sync.Mutex
	conns     []*memConn
	relayEnds []net.Conn // the relay's ends of conns
}

func newMemNet() *memNet { return &memNet{accept: make(chan net.Conn), done: make(chan struct{})} }

func (m *memNet) Dial(ctx context.Context, _, _ string) (net.Conn, error) {
	if m.down.Load() {
		return nil, errors.New("connection refused")
	}
	a, b := net.Pipe()
	select {
	case m.accept <- b:
	case <-m.done:
		return nil, errors.New("connection refused")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c := &memConn{Conn: a, cut: make(chan struct{}), closed: make(chan struct{})}
	m.mu.Lock()
	m.conns = append(m.conns, c)
	m.relayEnds = append(m.relayEnds, b)
	m.mu.Unlock()
	return c, nil
}

// crash is the relay process dying: every connection is closed from the
// relay's end at once, and dials fail until down is cleared.
func (m *memNet) crash() {
	m.down.Store(true)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, b := range m.relayEnds {
		b.Close()
	}
	m.relayEnds, m.conns = nil, nil
}

// blackhole makes every open connection silently drop what is written and
// never deliver anything more, like a network that went dark.
func (m *memNet) blackhole() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.conns {
		c.once.Do(func() { close(c.cut) })
	}
}

func (m *memNet) Accept() (net.Conn, error) {
	select {
	case c := <-m.accept:
		return c, nil
	case <-m.done:
		return nil, net.ErrClosed
	}
}

func (m *memNet) Close() error {
	m.closeOnce.Do(func() { close(m.done) })
	return nil
}

func (m *memNet) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// memConn is an agent's end of a pipe that can be blackholed: once cut,
// writes vanish and reads wait for their deadline, whatever the other end
// does (its close never arrives either).
type memConn struct {
	net.Conn
	cut       chan struct{}
	once      sync.Once
	closed    chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	deadline  time.Time // read deadline; guarded by mu
}

func (c *memConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	select {
	case <-c.cut:
	default:
		return n, err
	}
	for {
		c.mu.Lock()
		d := c.deadline
		c.mu.Unlock()
		if !d.IsZero() && !time.Now().Before(d) {
			return 0, os.ErrDeadlineExceeded
		}
		select {
		case <-c.closed:
			return 0, net.ErrClosed
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (c *memConn) Write(p []byte) (int, error) {
	select {
	case <-c.cut:
		return len(p), nil
	default:
		return c.Conn.Write(p)
	}
}

func (c *memConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *memConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.Conn.SetDeadline(t)
}

func (c *memConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// startRelay serves a relay on m inside the bubble.
func startRelay(t *testing.T, m *memNet, keepAlive time.Duration) *relay.Server {
	return startRelayWith(t, m, relay.Config{KeepAlive: keepAlive})
}

// startRelayWith starts a relay with cfg (its identity made, every device
// allowed) on m.
func startRelayWith(t *testing.T, m *memNet, cfg relay.Config) *relay.Server {
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Identity = id
	cfg.AllowDevice = func(identity.ID) bool { return true }
	srv, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(tls.NewListener(m, srv.TLSConfig()))
	t.Cleanup(func() {
		hs.Close()
		srv.Close()
	})
	return srv
}

func attached(c *Conn) bool { return c.Status().Attached }

// waitStatus waits until c's status satisfies ok and returns when it did.
func waitStatus(c *Conn, ok func(Status) bool) time.Time {
	for {
		st, ch := c.relay.Watch()
		if ok(Status{Status: st}) {
			return time.Now()
		}
		<-ch
	}
}

// TestKeepAliveDetectsDeadRelay: when the network goes dark without a
// reset, the agent notices within 3 keepalive intervals and attaches again.
func TestKeepAliveDetectsDeadRelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const keepAlive = 10 * time.Second
		m := newMemNet()
		srv := startRelay(t, m, keepAlive)
		id, _ := identity.Generate()
		c, err := Listen(Config{Identity: id, Role: relayproto.RoleDevice,
			Relay: relaylink.RelayConfig{Addr: "relay:443", ID: srv.ID()}, Dial: m.Dial, Direct: DirectOptions{Disable: true, NoRelayUDP: true}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.WaitAttached(t.Context()); err != nil {
			t.Fatal(err)
		}
		// Idle but alive: still attached after many intervals.
		time.Sleep(10 * keepAlive)
		synctest.Wait()
		if !attached(c) {
			t.Fatalf("detached while idle: %v", c.Status().LastError)
		}

		m.blackhole()
		dark := time.Now()
		detached := waitStatus(c, func(s Status) bool { return !s.Attached })
		if took := detached.Sub(dark); took > 3*keepAlive {
			t.Fatalf("dead relay noticed after %v, want within %v", took, 3*keepAlive)
		}
		if err := c.Status().LastError; !errors.Is(err, relaylink.ErrIdle) {
			t.Fatalf("detach reason %v", err)
		}
		// The relay also dropped the dark session.
		for srv.Stats().Devices != 0 {
			if time.Since(dark) > 3*keepAlive+time.Second {
				t.Fatal("relay kept the dead session")
			}
			time.Sleep(100 * time.Millisecond)
		}
		// A new connection works: the agent attaches again by itself.
		if err := c.WaitAttached(t.Context()); err != nil {
			t.Fatal(err)
		}
	})
}

// TestReattachAfterOutage: while the relay is unreachable the agent retries
// with growing, capped waits; once it is back the agent attaches within one
// capped wait.
func TestReattachAfterOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMemNet()
		srv := startRelay(t, m, 15*time.Second)
		id, _ := identity.Generate()
		var dials atomic.Int64
		dial := func(ctx context.Context, n, a string) (net.Conn, error) {
			dials.Add(1)
			return m.Dial(ctx, n, a)
		}
		m.down.Store(true)
		c, err := Listen(Config{Identity: id, Role: relayproto.RoleClient,
			Relay: relaylink.RelayConfig{Addr: "relay:443", ID: srv.ID()}, Dial: dial, Direct: DirectOptions{Disable: true, NoRelayUDP: true}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		time.Sleep(10 * time.Minute)
		// Waits grow from 250ms to a cap of 8s (each drawn from [d/2, d)):
		// over 10 minutes that is between 75 and 160 attempts, not
		// thousands, and not a handful.
		if n := dials.Load(); n < 75 || n > 160 {
			t.Fatalf("%d attempts in 10 minutes of outage", n)
		}
		m.down.Store(false)
		back := time.Now()
		if err := c.WaitAttached(t.Context()); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(back); took > 8*time.Second {
			t.Fatalf("attached %v after the relay came back, want within the 8s cap", took)
		}
	})
}

// TestReattachAfterRelayCrashIsSpread: 1,000 devices lose the relay at
// the same instant (it crashed: every connection closed at once, new ones
// refused until it is back). Every device notices at once; whatever the
// outage, their attempts are spread out: no second (any window of one
// second, the outage included) holds more than 20% of them, and all are
// attached again within the spread and a capped wait of the relay's
// return. Without the spread the first second after a short outage holds
// nearly all of them.
func TestReattachAfterRelayCrashIsSpread(t *testing.T) {
	const spread = 15 * time.Second
	agents, outages := 1000, []time.Duration{time.Second, 5 * time.Second, time.Minute}
	if israce.Enabled {
		// The handshakes are slow under the race detector; .ci/run runs
		// the whole test without it too.
		agents, outages = 250, outages[:1]
	}
	for _, outage := range outages {
		t.Run(outage.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				m := newMemNet()
				srv := startRelay(t, m, 15*time.Second)
				var mu sync.Mutex
				var crashed time.Time
				var attempts []time.Duration // since the crash
				dial := func(ctx context.Context, n, a string) (net.Conn, error) {
					mu.Lock()
					if !crashed.IsZero() {
						attempts = append(attempts, time.Since(crashed))
					}
					mu.Unlock()
					return m.Dial(ctx, n, a)
				}
				conns := make([]*Conn, agents)
				for i := range conns {
					id, _ := identity.Generate()
					c, err := Listen(Config{Identity: id, Role: relayproto.RoleDevice,
						Relay: relaylink.RelayConfig{Addr: "relay:443", ID: srv.ID()}, Dial: dial,
						Direct: DirectOptions{Disable: true, NoRelayUDP: true}, ReattachSpread: spread})
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					conns[i] = c
				}
				for _, c := range conns {
					if err := c.WaitAttached(t.Context()); err != nil {
						t.Fatal(err)
					}
				}
				// Long enough attached for the backoff to have reset.
				time.Sleep(time.Minute)

				mu.Lock()
				crashed = time.Now()
				mu.Unlock()
				m.crash()
				synctest.Wait()
				for i, c := range conns {
					if attached(c) {
						t.Fatalf("agent %d did not notice the crash", i)
					}
				}
				time.Sleep(outage)
				m.down.Store(false)
				back := time.Now()
				var last time.Duration
				for _, c := range conns {
					if err := c.WaitAttached(t.Context()); err != nil {
						t.Fatal(err)
					}
					last = max(last, time.Since(back))
				}
				// The last ones waited out the spread, and then at most
				// one spread wait.
				if last > 2*spread {
					t.Errorf("last agent back %v after the relay, want within %v", last, 2*spread)
				}
				mu.Lock()
				defer mu.Unlock()
				busiest, at := busiestSecond(attempts)
				t.Logf("outage %v: %d attempts, at most %d (%.0f%%) in one second (from %v); all back %v after the relay",
					outage, len(attempts), busiest, 100*float64(busiest)/float64(len(attempts)), at.Round(time.Millisecond), last.Round(time.Millisecond))
				if busiest*5 > len(attempts) {
					t.Errorf("%d of %d attempts within one second (from %v after the crash), want at most 20%%",
						busiest, len(attempts), at)
				}
				if srv.Stats().Devices != agents {
					t.Errorf("relay has %d devices attached, want %d", srv.Stats().Devices, agents)
				}
			})
		})
	}
}

// busiestSecond returns the most times in any window of one second, and
// where that window starts.
func busiestSecond(times []time.Duration) (int, time.Duration) {
	times = slices.Clone(times)
	slices.Sort(times)
	best, at, j := 0, time.Duration(0), 0
	for i, t := range times {
		for t-times[j] >= time.Second {
			j++
		}
		if i-j+1 > best {
			best, at = i-j+1, times[j]
		}
	}
	return best, at
}

// countingConn counts the writes reaching the network.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestWritesBatched: a burst of packets leaves in far fewer writes than
// packets.
func TestWritesBatched(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMemNet()
		srv := startRelay(t, m, 15*time.Second)
		id, _ := identity.Generate()
		var cc *countingConn
		dial := func(ctx context.Context, n, a string) (net.Conn, error) {
			c, err := m.Dial(ctx, n, a)
			if err != nil {
				return nil, err
			}
			cc = &countingConn{Conn: c}
			return cc, nil
		}
		c, err := Listen(Config{Identity: id, Role: relayproto.RoleClient,
			Relay: relaylink.RelayConfig{Addr: "relay:443", ID: srv.ID()}, Dial: dial, Direct: DirectOptions{Disable: true, NoRelayUDP: true}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.WaitAttached(t.Context()); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		before := cc.writes.Load()
		const packets = 500
		pkt := make([]byte, 1200)
		dst := Addr{ID: id.ID()} // nobody; the relay answers peer-gone
		for range packets {
			c.WriteTo(pkt, dst)
		}
		synctest.Wait()
		// Each TLS record is one write; a record holds up to 16 KiB, about
		// 13 of these frames.
		writes := cc.writes.Load() - before
		if writes > packets/8 {
			t.Fatalf("%d packets took %d writes", packets, writes)
		}
		t.Logf("%d packets in %d writes", packets, writes)
	})
}

// TestFlappingDamped: two copies of one device (same key) replace each
// other at the relay; the relay makes each replaced copy wait longer and
// longer, so that after the first minute there are only a few
// replacements a minute, not a storm.
func TestFlappingDamped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMemNet()
		srv := startRelay(t, m, 15*time.Second)
		id, _ := identity.Generate()
		for range 2 {
			c, err := Listen(Config{Identity: id, Role: relayproto.RoleDevice,
				Relay: relaylink.RelayConfig{Addr: "relay:443", ID: srv.ID()}, Dial: m.Dial, Direct: DirectOptions{Disable: true, NoRelayUDP: true}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		var perMinute []uint64
		last := uint64(0)
		for range 4 {
			time.Sleep(time.Minute)
			n := srv.Stats().Replaced
			perMinute = append(perMinute, n-last)
			last = n
		}
		t.Logf("replacements per minute: %v", perMinute)
		if last == 0 {
			t.Fatal("the two copies never replaced each other")
		}
		for i, n := range perMinute[1:] {
			if n > 6 {
				t.Fatalf("minute %d: %d replacements (all: %v)", i+2, n, perMinute)
			}
		}
	})
}

// countingClient starts a relay with cfg on m and a client of it, and
// counts the client's dials of the relay.
func countingClient(t *testing.T, m *memNet, cfg relay.Config) (*Conn, *atomic.Int64) {
	srv := startRelayWith(t, m, cfg)
	id, _ := identity.Generate()
	dials := new(atomic.Int64)
	dial := func(ctx context.Context, n, a string) (net.Conn, error) {
		dials.Add(1)
		return m.Dial(ctx, n, a)
	}
	c, err := Listen(Config{Identity: id, Role: relayproto.RoleClient,
		Relay: relaylink.RelayConfig{Addr: "relay:443", ID: srv.ID()}, Dial: dial, Direct: DirectOptions{Disable: true, NoRelayUDP: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, dials
}

// TestUnusedClientAttachesOnDemand: a client whose session the relay
// closes because no device there allows it does not come back by itself
// until it has something to send (then at once) or the relay's wait is
// over.
func TestUnusedClientAttachesOnDemand(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const grace = 5 * time.Second
		m := newMemNet()
		c, dials := countingClient(t, m, relay.Config{ClientGrace: grace})
		if err := c.WaitAttached(t.Context()); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		closed := waitStatus(c, func(s Status) bool { return !s.Attached })
		if took := closed.Sub(start); took < grace || took > grace*5/4+time.Second {
			t.Fatalf("closed %v after attaching, want after the %v grace", took, grace)
		}
		if err := c.Status().LastError; err == nil || !strings.Contains(err.Error(), relayproto.GoAwayUnused.String()) {
			t.Fatalf("detach reason %v", err)
		}
		time.Sleep(50 * time.Second)
		if n := dials.Load(); n != 1 || attached(c) {
			t.Fatalf("%d dials and attached %v with nothing to send", n, attached(c))
		}
		// Something to send: it attaches at once.
		want := time.Now()
		c.WriteTo([]byte{0x40, 1, 2, 3}, Addr{ID: identity.ID{1}})
		if took := waitStatus(c, func(s Status) bool { return s.Attached }).Sub(want); took > time.Second {
			t.Fatalf("attached %v after a packet was sent", took)
		}
		// Closed again, and back after the relay's wait with nothing to
		// send.
		closed = waitStatus(c, func(s Status) bool { return !s.Attached })
		if took := waitStatus(c, func(s Status) bool { return s.Attached }).Sub(closed); took < time.Minute || took > 91*time.Second {
			t.Fatalf("back %v after the second close, want after the relay's wait (1m to 1m30s)", took)
		}
		if n := dials.Load(); n != 3 {
			t.Fatalf("%d dials, want 3", n)
		}
	})
}

// TestUnusedClientBacksOff: a relay that closes a client as unused at once,
// again and again, while the client always has something to send, meets
// the client's backoff, not a loop of attaches.
func TestUnusedClientBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMemNet()
		c, dials := countingClient(t, m, relay.Config{ClientGrace: 10 * time.Millisecond})
		for range 600 { // a packet every 100ms for a minute
			c.WriteTo([]byte{0x40}, Addr{ID: identity.ID{1}})
			time.Sleep(100 * time.Millisecond)
		}
		// Backoff from 250ms doubling to 8s: some 10-15 attaches in a
		// minute, where an attach at every packet would be hundreds.
		if n := dials.Load(); n > 20 {
			t.Fatalf("%d attaches in a minute", n)
		}
	})
}
