package relaylink

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// fleetRelay is a relay on loopback whose fleet map the test sets.
type fleetRelay struct {
	id   *identity.Identity
	addr string
	m    atomic.Pointer[[]byte] // the signed map it shows; nil: no fleet
}

func (r *fleetRelay) show(signed []byte) { r.m.Store(&signed) }

// listen reserves the relay's address, so that the map can list it before
// the relay starts.
func listen(t *testing.T) (*fleetRelay, net.Listener) {
	t.Helper()
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &fleetRelay{id: id, addr: ln.Addr().String()}, ln
}

// serve starts r on ln, with the map r shows (none if not set).
func (r *fleetRelay) serve(t *testing.T, ln net.Listener) {
	t.Helper()
	cfg := relay.Config{Identity: r.id, AllowDevice: func(identity.ID) bool { return true }}
	if r.m.Load() != nil {
		cfg.FleetMap = func() []byte { return *r.m.Load() }
	}
	srv, err := relay.New(cfg)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func signMap(t *testing.T, key *identity.Identity, version uint64, relays ...*fleetRelay) []byte {
	t.Helper()
	m := fleet.Map{Version: version}
	for _, r := range relays {
		m = m.With(fleet.Relay{ID: r.id.ID(), Addr: r.addr, Region: "test"})
	}
	b, err := fleet.AppendMap(nil, m, key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dialPinned attaches a device to addr, pinning pin, and closes the link.
func dialPinned(t *testing.T, addr string, pin identity.ID) (identity.ID, error) {
	t.Helper()
	dev, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	l, err := Dial(ctx, Config{Relay: RelayConfig{Addr: addr, ID: pin}, Identity: dev, Role: relayproto.RoleDevice}, State{})
	if err != nil {
		return identity.ID{}, err
	}
	defer l.Close()
	return l.RelayID(), nil
}

// TestFleetPin: an agent that pins a fleet ID attaches to any relay of the
// fleet's map; it refuses, in the TLS handshake, a relay of another fleet,
// one with no map, one the map does not list, and a relay removed from
// the map that shows the map from before its removal to an agent that
// has seen the newer one. Each refusal says why. A fleet
// relay pinned by its own ID works as any relay does.
func TestFleetPin(t *testing.T) {
	key, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := identity.Generate()
	a, lnA := listen(t)
	b, lnB := listen(t)
	c, lnC := listen(t)
	v1 := signMap(t, key, 1, a, b, c)
	for _, r := range []struct {
		r  *fleetRelay
		ln net.Listener
	}{{a, lnA}, {b, lnB}, {c, lnC}} {
		r.r.show(v1)
		r.r.serve(t, r.ln)
	}
	alien, lnAlien := listen(t)
	alien.show(signMap(t, other, 9, alien))
	alien.serve(t, lnAlien)
	single, lnSingle := listen(t)
	single.serve(t, lnSingle)
	fleetID := key.ID()

	for _, r := range []*fleetRelay{a, b, c} {
		got, err := dialPinned(t, r.addr, fleetID)
		if err != nil || got != r.id.ID() {
			t.Fatalf("attach to fleet relay %s: %v (relay ID %v)", r.addr, err, got)
		}
	}
	if _, err := dialPinned(t, a.addr, a.id.ID()); err != nil {
		t.Fatalf("a fleet relay pinned by its own ID: %v", err)
	}
	if _, err := dialPinned(t, single.addr, single.id.ID()); err != nil {
		t.Fatalf("a single relay pinned by its own ID: %v", err)
	}

	refused := func(name, addr string, want error, says string) {
		t.Helper()
		_, err := dialPinned(t, addr, fleetID)
		// A relay showing an older map may be one slow to pick up the new
		// one: only that refusal is worth retrying soon.
		_, rollback := errors.AsType[*fleet.RollbackError](err)
		if !errors.Is(err, want) || !strings.Contains(err.Error(), says) || isPermanent(err) == rollback {
			t.Errorf("%s: %v; want an error matching %v that says %q, permanent unless a rollback", name, err, want, says)
			return
		}
		t.Logf("%s: %v", name, err)
	}
	refused("relay of another fleet", alien.addr, fleet.ErrRefused, "belongs to another fleet")
	refused("relay with no fleet map", single.addr, identity.ErrKeyMismatch, "key mismatch")

	// The fleet removes c: version 2. a and b show it; c, compromised,
	// goes on showing version 1.
	v2 := signMap(t, key, 2, a, b)
	a.show(v2)
	b.show(v2)
	if _, err := dialPinned(t, a.addr, fleetID); err != nil {
		t.Fatalf("relay a with map 2: %v", err)
	}
	if got := fleetVersions.Highest(fleetID); got != 2 {
		t.Fatalf("highest version accepted %d, want 2", got)
	}
	refused("removed relay showing the old map", c.addr, fleet.ErrRefused, "older than version 2")
	c.show(v2)
	refused("relay not in the map", c.addr, fleet.ErrRefused, "is not in the map")
	if _, err := dialPinned(t, b.addr, fleetID); err != nil {
		t.Fatalf("relay b with map 2: %v", err)
	}
}
