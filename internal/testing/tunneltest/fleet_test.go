package tunneltest

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/relaylink"
)

// TestFleetInvitePair: a device that pins its relay by the fleet's ID
// issues invites that carry the fleet ID; a client pairing with one checks
// the relay by the fleet map, pairs and reaches the device; once the fleet
// removes the relay from its map, a client with such an invite refuses the
// relay and says why.
func TestFleetInvitePair(t *testing.T) {
	key := NewIdentity(t)
	r := NewRelay(t)
	// The map lists the relay's address, so take one first.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.Addr = ln.Addr().String()
	ln.Close()
	var shown atomic.Pointer[[]byte]
	show := func(version uint64, relays ...identity.ID) {
		m := fleet.Map{Version: version}
		for _, id := range relays {
			m = m.With(fleet.Relay{ID: id, Addr: r.Addr, Region: "test"})
		}
		b, err := fleet.AppendMap(nil, m, key)
		if err != nil {
			t.Fatal(err)
		}
		shown.Store(&b)
	}
	show(1, r.Identity.ID())
	r.FleetMap = func() []byte { return *shown.Load() }
	r.Start()

	fleetPin := relaylink.RelayConfig{Addr: r.Addr, ID: key.ID()}
	rtsp := StartServer(t, Echo)
	d := StartDevice(t, r, device.Config{
		Relay:    fleetPin,
		Services: map[string]string{"rtsp": rtsp.Addr},
		Roles:    map[string][]string{"viewer": {"rtsp"}},
		StateDir: t.TempDir(),
	})
	inv, err := d.Invite("viewer", time.Minute, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if inv, err = pairing.Parse(inv.String()); err != nil {
		t.Fatal(err)
	}
	if inv.RelayID != key.ID() || !strings.Contains(inv.String(), "relay_id="+key.ID().String()) {
		t.Fatalf("the invite pins relay %s, want the fleet %s: %s", inv.RelayID, key.ID(), inv)
	}
	alice := NewClient(t, client.Config{Relay: relaylink.RelayConfig{Addr: inv.Relay, ID: inv.RelayID}})
	if _, err := alice.Pair(ctx10(t), inv); err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(t, alice, d.ID(), "rtsp"); err != nil {
		t.Fatal(err)
	}

	// The fleet removes the relay: a client with an invite refuses it.
	inv2, err := d.Invite("viewer", time.Minute, "bob")
	if err != nil {
		t.Fatal(err)
	}
	show(2, NewIdentity(t).ID())
	bob := NewClient(t, client.Config{Relay: relaylink.RelayConfig{Addr: inv2.Relay, ID: inv2.RelayID}})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err = bob.WaitAttached(ctx)
	if !errors.Is(err, fleet.ErrRefused) || !strings.Contains(err.Error(), "is not in the map") {
		t.Fatalf("a client pinning the fleet, at a relay the map no longer lists: %v", err)
	}
	t.Log(err)
	if _, err := bob.Pair(ctx10(t), inv2); err == nil {
		t.Fatal("bob paired through a relay the fleet removed")
	}
}
