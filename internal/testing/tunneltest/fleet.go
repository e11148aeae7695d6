package tunneltest

import (
	"net"
	"sync/atomic"
	"testing"

	"github.com/burrow-tunnel/burrow/fleet"
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

// Start starts every relay.
func (f *Fleet) Start() {
	for _, r := range f.Relays {
		r.Start()
	}
}

// Pin returns the configuration of an agent that attaches to relay i and
// pins the fleet.
func (f *Fleet) Pin(i int) relaylink.RelayConfig {
	return relaylink.RelayConfig{Addr: f.Relays[i].Addr, ID: f.Key.ID()}
}
