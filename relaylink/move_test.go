package relaylink

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// fleetNode is a fleet relay that a test stops, kills and starts again on
// the same address.
type fleetNode struct {
	*fleetRelay
	t     *testing.T
	mu    sync.Mutex
	srv   *relay.Server
	ln    net.Listener
	conns []net.Conn // accepted, for kill
}

// newFleet reserves n relay addresses, each with its node not started.
func newFleet(t *testing.T, n int) []*fleetNode {
	var nodes []*fleetNode
	for range n {
		r, ln := listen(t)
		ln.Close()
		nodes = append(nodes, &fleetNode{fleetRelay: r, t: t})
	}
	return nodes
}

// start serves the node on its address, showing the map it shows.
func (n *fleetNode) start() {
	t := n.t
	t.Helper()
	ln, err := net.Listen("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relay.New(relay.Config{Identity: n.id, AllowDevice: func(identity.ID) bool { return true },
		FleetMap: func() []byte { return *n.m.Load() }})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	n.mu.Lock()
	n.srv, n.ln, n.conns = srv, ln, nil
	n.mu.Unlock()
	go srv.Serve(trackingListener{ln, n})
	t.Cleanup(func() { srv.Close() })
}

// stop closes the relay as an operator does: it tells its agents to go
// away.
func (n *fleetNode) stop() { n.srv.Close() }

// kill drops the relay without a word: its listener and every connection
// close at once, as when its process is killed.
func (n *fleetNode) kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ln.Close()
	for _, c := range n.conns {
		c.Close()
	}
	go n.srv.Close()
}

type trackingListener struct {
	net.Listener
	n *fleetNode
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.mu.Lock()
		l.n.conns = append(l.n.conns, c)
		l.n.mu.Unlock()
	}
	return c, err
}

// dialCounter counts the agent's dials by address.
type dialCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (d *dialCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	if d.n == nil {
		d.n = make(map[string]int)
	}
	d.n[addr]++
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func (d *dialCounter) count(addr string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n[addr]
}

// ordered returns the nodes in the order the device dev tries them, by
// the map signed holds.
func ordered(t *testing.T, dev identity.ID, signed []byte, nodes []*fleetNode) []*fleetNode {
	t.Helper()
	m, err := fleet.ParseMap(signed)
	if err != nil {
		t.Fatal(err)
	}
	var out []*fleetNode
	for _, r := range fleet.Order(dev, m.Relays, "") {
		for _, n := range nodes {
			if n.id.ID() == r.ID {
				out = append(out, n)
			}
		}
	}
	return out
}

// waitOn waits until a is attached to node n, and returns how long that
// took.
func waitOn(t *testing.T, a *Attacher, n *fleetNode, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		st, ch := a.Watch()
		if st.Attached && st.RelayID == n.id.ID() {
			if st.Relay != n.addr {
				t.Fatalf("attached to relay %s (%s), status says address %s", n.id.ID().Short(), n.addr, st.Relay)
			}
			return time.Since(start)
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("not attached to relay %s within %v: %+v", n.addr, within, a.Status())
		}
	}
}

// TestAttacherRotates: a device that knows one relay of a fleet learns the
// fleet map there and moves to its home relay (the first of fleet.Order);
// when home goes away (closed, or killed without a word), it attaches to
// the next relay of its order at once, not after its ReattachSpread; when
// home is back, it moves home again.
func TestAttacherRotates(t *testing.T) {
	key, _ := identity.Generate()
	dev, _ := identity.Generate()
	nodes := newFleet(t, 3)
	v1 := signMap(t, key, 1, nodes[0].fleetRelay, nodes[1].fleetRelay, nodes[2].fleetRelay)
	for _, n := range nodes {
		n.show(v1)
		n.start()
	}
	order := ordered(t, dev.ID(), v1, nodes)
	home, next, boot := order[0], order[1], order[2]

	a := Attach(Config{
		Relay:          RelayConfig{Addr: boot.addr, ID: key.ID()},
		Identity:       dev,
		Role:           relayproto.RoleDevice,
		HomeInterval:   200 * time.Millisecond,
		ReattachSpread: 10 * time.Second,
		Logger:         testLogger(t),
	})
	defer a.Close()
	d := waitOn(t, a, home, 5*time.Second)
	t.Logf("configured with %s only: at home %s after %v", boot.addr, home.addr, d)

	home.stop()
	d = waitOn(t, a, next, 5*time.Second)
	t.Logf("home closed: at %s after %v", next.addr, d)
	if d > time.Second {
		t.Errorf("home closed: took %v to attach to the next relay, want at most 1s", d)
	}

	home.start()
	d = waitOn(t, a, home, 5*time.Second)
	t.Logf("home back: moved home after %v", d)

	home.kill()
	d = waitOn(t, a, next, 5*time.Second)
	t.Logf("home killed: at %s after %v", next.addr, d)
	if d > time.Second {
		t.Errorf("home killed: took %v to attach to the next relay, want at most 1s", d)
	}
}

// TestAttacherFollowsMap: a relay the newest map no longer lists is not
// dialed, though the older map put it next; a configured relay that
// refuses the agent for good is passed over for the next one.
func TestAttacherFollowsMap(t *testing.T) {
	key, _ := identity.Generate()
	other, _ := identity.Generate()
	dev, _ := identity.Generate()
	nodes := newFleet(t, 3)
	v1 := signMap(t, key, 1, nodes[0].fleetRelay, nodes[1].fleetRelay, nodes[2].fleetRelay)
	order := ordered(t, dev.ID(), v1, nodes)
	home, removed, last := order[0], order[1], order[2]
	removed.show(v1)
	removed.start()
	last.show(v1)
	last.start()
	alien := newFleet(t, 1)[0]
	alien.show(signMap(t, other, 1, alien.fleetRelay))
	alien.start()

	// Home is down; the first configured relay belongs to another fleet.
	var dials dialCounter
	a := Attach(Config{
		Relay:        RelayConfig{Addr: alien.addr, ID: key.ID()},
		Fallback:     []string{last.addr},
		Identity:     dev,
		Role:         relayproto.RoleDevice,
		Dial:         dials.dial,
		HomeInterval: 200 * time.Millisecond,
		Logger:       testLogger(t),
	})
	defer a.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := a.WaitAttached(ctx); err != nil {
		t.Fatalf("a relay of another fleet first, then a good one: %v", err)
	}
	waitOn(t, a, last, 5*time.Second)

	// The fleet removes a relay; home comes up with the new map, and the
	// device moves there and learns it.
	v2 := signMap(t, key, 2, home.fleetRelay, last.fleetRelay)
	for _, n := range []*fleetNode{home, removed, last} {
		n.show(v2)
	}
	home.start()
	waitOn(t, a, home, 5*time.Second)

	home.stop()
	waitOn(t, a, last, 5*time.Second)
	if n := dials.count(removed.addr); n != 0 {
		t.Errorf("the relay removed from the map was dialed %d times", n)
	}
}

// testLogger writes to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// TestCandidatesRound: a round starts after the relay just lost, which
// comes last; a relay that refused the agent for good is passed over
// while others remain, and the refusal is the attachment's state only
// once every relay refused.
func TestCandidatesRound(t *testing.T) {
	var c candidates
	c.init(Config{Relay: RelayConfig{Addr: "a:1"}, Fallback: []string{"b:1", "c:1"}})
	addrs := func(cs []candidate) (out []string) {
		for _, r := range cs {
			out = append(out, r.Addr)
		}
		return out
	}
	for _, tc := range []struct {
		after   int
		refused []string
		want    []string
		all     bool
	}{
		{-1, nil, []string{"a:1", "b:1", "c:1"}, false},
		{0, nil, []string{"b:1", "c:1", "a:1"}, false},
		{2, nil, []string{"a:1", "b:1", "c:1"}, false},
		{0, []string{"b:1"}, []string{"c:1", "a:1"}, false},
		{1, []string{"a:1", "b:1", "c:1"}, []string{"c:1", "a:1", "b:1"}, true},
	} {
		clear(c.refused)
		for _, r := range tc.refused {
			c.refuse(r)
		}
		if got := addrs(c.round(tc.after)); !slices.Equal(got, tc.want) || c.allRefused() != tc.all {
			t.Errorf("round after %d, refused %v: %v (all refused: %v), want %v (%v)", tc.after, tc.refused, got, c.allRefused(), tc.want, tc.all)
		}
	}
	c.admitted("b:1")
	if c.allRefused() {
		t.Error("b admitted the agent: not every relay refuses it")
	}
}
