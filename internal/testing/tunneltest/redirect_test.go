package tunneltest

import (
	"context"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/natstest"
	"github.com/burrow-tunnel/burrow/relaylink"
)

// TestFleetRedirect: a client attached to relay A reaches a device attached
// to relay B: A redirects it, and no packet goes from relay to relay. A
// stranger is redirected too (A does not know the device's access list)
// but B keeps it out.
func TestFleetRedirect(t *testing.T) {
	f := NewFleet(t, 3, NATSPresence(t, natstest.Start(t).URL()))
	f.Start()
	// Every agent attaches to its home relay: the device's is B, the
	// client's A.
	did := NewIdentity(t)
	bi, _ := f.Home(did.ID())
	cid := f.ClientAwayFrom(bi)
	ai, _ := f.Home(cid.ID())
	a, b := f.Relays[ai], f.Relays[bi]

	srv := StartServer(t, Echo)
	d := StartDevice(t, b, device.Config{
		Identity: did,
		Relay:    f.Pin(bi),
		Services: map[string]string{"echo": srv.Addr},
		Clients:  map[identity.ID][]string{cid.ID(): {"echo"}},
	})
	f.WaitLocated(d.ID(), bi)
	c := NewClient(t, client.Config{Identity: cid, Relay: f.Pin(ai)})
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

	sid := f.ClientAwayFrom(bi)
	si, _ := f.Home(sid.ID())
	stranger := NewClient(t, client.Config{Identity: sid, Relay: f.Pin(si)})
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

// TestFleetClientKeepsRelay: a client given the relay its device is on
// stays there, although its own home in the fleet's order is another
// relay: the relay it was given is where the device was found, and a
// move as its session starts would lose the device's first answers.
func TestFleetClientKeepsRelay(t *testing.T) {
	f := NewFleet(t, 3, NATSPresence(t, natstest.Start(t).URL()))
	f.Start()
	did := NewIdentity(t)
	bi, _ := f.Home(did.ID())
	cid := f.ClientAwayFrom(bi)
	d := StartDevice(t, f.Relays[bi], device.Config{
		Identity: did,
		Relay:    f.Pin(bi),
		Services: map[string]string{"echo": StartServer(t, Echo).Addr},
		Clients:  map[identity.ID][]string{cid.ID(): {"echo"}},
	})
	f.WaitLocated(d.ID(), bi)
	c := NewClient(t, client.Config{Identity: cid, Relay: f.Pin(bi)})
	if err := echoOnce(t, c, d.ID(), "echo"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if st := c.RelayStatus(); st.RelayID != f.Relays[bi].Identity.ID() {
		t.Fatalf("the client moved to %s; want it on the relay it was given, its device's", st.Relay)
	}
	if st := f.Relays[bi].Server().Stats(); st.Redirects != 0 {
		t.Fatalf("%d redirects: the client should have reached the device where it was", st.Redirects)
	}
}
