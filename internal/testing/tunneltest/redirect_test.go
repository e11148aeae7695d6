package tunneltest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
)

// sharedPresence is a fleet's presence table in memory, for the tests of
// routing that need no NATS (package fleetstate keeps the real one, and
// its tests and the fleet tests run it on a real NATS server).
type sharedPresence struct {
	mu sync.Mutex
	at map[identity.ID]identity.ID
}

func (p *sharedPresence) of(relayID identity.ID) relay.Presence {
	return presenceOf{p, relayID}
}

type presenceOf struct {
	p    *sharedPresence
	self identity.ID
}

func (r presenceOf) Attached(id identity.ID) {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	r.p.at[id] = r.self
}

func (r presenceOf) Detached(id identity.ID) {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	if r.p.at[id] == r.self {
		delete(r.p.at, id)
	}
}

func (r presenceOf) Locate(id identity.ID) (identity.ID, bool) {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	at, ok := r.p.at[id]
	return at, ok
}

// TestFleetRedirect: a client attached to relay A reaches a device attached
// to relay B: A redirects it, and no packet goes from relay to relay. A
// stranger is redirected too (A does not know the device's access list)
// but B keeps it out.
func TestFleetRedirect(t *testing.T) {
	shared := &sharedPresence{at: map[identity.ID]identity.ID{}}
	f := NewFleet(t, 3, func(_ int, id identity.ID) relay.Presence { return shared.of(id) })
	f.Start()
	a, b := f.Relays[0], f.Relays[1]

	srv := StartServer(t, Echo)
	cid := NewIdentity(t)
	d := StartDevice(t, b, device.Config{
		Relay:    f.Pin(1),
		Services: map[string]string{"echo": srv.Addr},
		Clients:  map[identity.ID][]string{cid.ID(): {"echo"}},
	})
	c := NewClient(t, client.Config{Identity: cid, Relay: f.Pin(0)})
	if err := c.WaitAttached(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := echoOnce(t, c, d.ID(), "echo"); err != nil {
		t.Fatal(err)
	}
	t.Logf("first echo through a redirect in %v", time.Since(start))
	if st := a.Server().Stats(); st.Redirects == 0 || st.PacketsForwarded != 0 {
		t.Fatalf("relay A: %d redirects, %d packets forwarded; want some redirects and no packet", st.Redirects, st.PacketsForwarded)
	}
	if st := b.Server().Stats(); st.PacketsForwarded == 0 {
		t.Fatal("relay B forwarded nothing")
	}

	stranger := NewClient(t, client.Config{Relay: f.Pin(0)})
	_, err := stranger.Dial(ctx10(t), d.ID(), "echo")
	if _, ok := err.(*client.UnreachableError); !ok {
		t.Fatalf("a stranger dialing through a redirect: %v (%T), want UnreachableError", err, err)
	}
	t.Log(err)

	// A client that pins relay A alone, not the fleet, follows no
	// redirect: the relay holding the device is not the one it trusts.
	single := NewClient(t, client.Config{Identity: cid, Relay: relaylink.RelayConfig{Addr: a.Addr, ID: a.Identity.ID()}})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := single.Dial(ctx, d.ID(), "echo"); err == nil {
		t.Fatal("a client pinning one relay reached a device on another")
	}
	if st := single.RelayStatus(); st.RelayID != a.Identity.ID() {
		t.Fatalf("the single-relay client is attached to %s, want relay A", st.RelayID)
	}
}
