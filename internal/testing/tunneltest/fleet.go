package tunneltest

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/fleetstate"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
)

// A Fleet is relays on loopback that share one signed fleet map.
type Fleet struct {
	t      testing.TB
	Key    *identity.Identity // the fleet key
	Relays []*Relay
	shown  atomic.Pointer[[]byte]
	conns  trackedConns
}

// NewFleet returns n relays, not started, listed in a map signed by a new
// fleet key (region "test"), each with the presence presence(i) returns
// (nil: none). Start them with [Fleet.Start].
func NewFleet(t testing.TB, n int, presence func(i int, id identity.ID) relay.Presence) *Fleet {
	t.Helper()
	f := &Fleet{t: t, Key: NewIdentity(t)}
	m := fleet.Map{Version: 1}
	for i := range n {
		r := NewRelay(t)
		// The map lists the relay's address, so take one first.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		r.Addr = ln.Addr().String()
		ln.Close()
		r.FleetMap = func() []byte { return *f.shown.Load() }
		r.Wrap = func(c net.Conn) net.Conn {
			fc := &freezableConn{Conn: c, frozen: make(chan struct{})}
			f.conns.add(r, fc)
			return fc
		}
		if presence != nil {
			r.Presence = presence(i, r.Identity.ID())
		}
		m = m.With(fleet.Relay{ID: r.Identity.ID(), Addr: r.Addr, Region: "test"})
		f.Relays = append(f.Relays, r)
	}
	f.Show(m)
	return f
}

// Show makes m, signed by the fleet key, the map every relay shows.
func (f *Fleet) Show(m fleet.Map) {
	f.t.Helper()
	b, err := fleet.AppendMap(nil, m, f.Key)
	if err != nil {
		f.t.Fatal(err)
	}
	f.shown.Store(&b)
}

// Start starts every relay. A relay whose presence is a
// fleetstate.Presence drops a device that attached to another relay.
func (f *Fleet) Start() {
	for _, r := range f.Relays {
		r.Start()
		if p, ok := r.Presence.(*fleetstate.Presence); ok {
			p.OnTaken(func(id identity.ID) {
				if srv := r.Server(); srv != nil {
					srv.Moved(id)
				}
			})
		}
	}
}

// NATSPresence returns, for NewFleet, the presence of each relay in the
// NATS server at url (a natstest.Server, say), with a liveness TTL of 2s,
// on a NATS connection of its own. Each is closed when the test ends.
func NATSPresence(t testing.TB, url string) func(int, identity.ID) relay.Presence {
	return func(_ int, id identity.ID) relay.Presence {
		t.Helper()
		nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p, err := fleetstate.OpenPresence(ctx, fleetstate.PresenceConfig{
			Conn: nc, Relay: id, LivenessTTL: 2 * time.Second, LivenessRefresh: 500 * time.Millisecond,
			Logger: Logger(t).With("role", "presence"),
		})
		if err != nil {
			nc.Close()
			t.Fatal(err)
		}
		natsConns.Store(p, nc)
		t.Cleanup(func() {
			p.Close()
			nc.Close()
		})
		return p
	}
}

// natsConns are the NATS connections of NATSPresence's presences, so that
// Kill can cut one.
var natsConns sync.Map // *fleetstate.Presence → *nats.Conn

// Kill stops relay i as a crash would: its NATS connection is cut first
// (its liveness lapses, nothing it would write on leaving is written), then
// every agent's connection closes without a go-away, then the relay.
func (f *Fleet) Kill(i int) {
	r := f.Relays[i]
	if nc, ok := natsConns.Load(r.Presence); ok {
		nc.(*nats.Conn).Close()
	}
	f.conns.closeAll(r)
	r.Stop()
}

// Blackhole makes relay i go dark, as a network that drops everything
// to and from it: its NATS connection is cut (its liveness lapses), and
// its agents' connections, and any made from now on, carry nothing either
// way and close nothing. The relay itself runs on.
func (f *Fleet) Blackhole(i int) {
	r := f.Relays[i]
	if nc, ok := natsConns.Load(r.Presence); ok {
		nc.(*nats.Conn).Close()
	}
	f.conns.freezeAll(r)
}

// trackedConns are the agents' connections of each relay, for Kill and
// Blackhole.
type trackedConns struct {
	mu     sync.Mutex
	conns  map[*Relay][]*freezableConn
	frozen map[*Relay]bool
}

func (tc *trackedConns) add(r *Relay, c *freezableConn) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.conns == nil {
		tc.conns = make(map[*Relay][]*freezableConn)
		tc.frozen = make(map[*Relay]bool)
	}
	tc.conns[r] = append(tc.conns[r], c)
	if tc.frozen[r] {
		c.freeze()
	}
}

func (tc *trackedConns) closeAll(r *Relay) {
	tc.mu.Lock()
	conns := tc.conns[r]
	delete(tc.conns, r)
	tc.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func (tc *trackedConns) freezeAll(r *Relay) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.frozen[r] = true
	for _, c := range tc.conns[r] {
		c.freeze()
	}
}

// A freezableConn is a relay's connection to an agent that can go dark:
// once frozen, reads wait until it is closed and writes vanish.
type freezableConn struct {
	net.Conn
	once   sync.Once
	frozen chan struct{}
	closed atomic.Bool
}

// ConnectionState is the TLS state of the connection beneath, which the
// relay checks.
func (c *freezableConn) ConnectionState() tls.ConnectionState {
	return c.Conn.(interface{ ConnectionState() tls.ConnectionState }).ConnectionState()
}

func (c *freezableConn) freeze() { c.once.Do(func() { close(c.frozen) }) }

func (c *freezableConn) isFrozen() bool {
	select {
	case <-c.frozen:
		return true
	default:
		return false
	}
}

func (c *freezableConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	for c.isFrozen() && err == nil {
		// What the agent sent is lost; wait for more, or the close.
		n, err = c.Conn.Read(p)
	}
	return n, err
}

func (c *freezableConn) Write(p []byte) (int, error) {
	if c.isFrozen() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// WaitLocated waits until the presence of every running relay (not
// killed, not blackholed) locates the device at relay i.
func (f *Fleet) WaitLocated(device identity.ID, i int) {
	f.t.Helper()
	want := f.Relays[i].Identity.ID()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		all := true
		for _, r := range f.Relays {
			if nc, ok := natsConns.Load(r.Presence); r.Server() == nil || ok && nc.(*nats.Conn).IsClosed() {
				continue
			}
			if at, ok := r.Presence.Locate(device); !ok || at != want {
				all = false
			}
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("the fleet does not locate device %s at relay %d after 10s", device.Short(), i)
		}
	}
}

// Home returns the index of the relay that is the home of the agent id
// (the first of fleet.Order), and of its next relay.
func (f *Fleet) Home(id identity.ID) (home, next int) {
	var relays []fleet.Relay
	for _, r := range f.Relays {
		relays = append(relays, fleet.Relay{ID: r.Identity.ID(), Addr: r.Addr, Region: "test"})
	}
	order := fleet.Order(id, relays, "")
	index := func(id identity.ID) int {
		for i, r := range f.Relays {
			if r.Identity.ID() == id {
				return i
			}
		}
		return -1
	}
	return index(order[0].ID), index(order[1].ID)
}

// ClientAwayFrom returns a new client identity whose home relay is not
// relay i.
func (f *Fleet) ClientAwayFrom(i int) *identity.Identity {
	for {
		id := NewIdentity(f.t)
		if h, _ := f.Home(id.ID()); h != i {
			return id
		}
	}
}

// Pin returns the configuration of an agent that attaches to relay i and
// pins the fleet.
func (f *Fleet) Pin(i int) relaylink.RelayConfig {
	return relaylink.RelayConfig{Addr: f.Relays[i].Addr, ID: f.Key.ID()}
}
