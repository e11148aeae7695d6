// Package linktest attaches agents to a relay in tests with a real relay
// link, kept read as an agent keeps it, and hands over what the relay's
// server hello gave for its UDP port. It is test code: no production
// package may import it.
package linktest

import (
	"testing"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// An Attached is an agent's link to the relay, with its binding token and
// its channel on the UDP relay path.
type Attached struct {
	Link    *relaylink.Link
	Token   [16]byte
	Channel uint32
}

// AttachUDP dials the relay as cfg says, with state st, and reads the
// link until the test ends, when it closes it. It fails t unless the
// relay offers both its UDP binding and its UDP relay path.
func AttachUDP(t testing.TB, cfg relaylink.Config, st relaylink.State) Attached {
	t.Helper()
	link, err := relaylink.Dial(t.Context(), cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	go func() { // keeps the link read, as an agent does
		for {
			v, err := link.Read()
			if err != nil {
				return
			}
			if p, ok := v.(*relaylink.Packet); ok {
				p.Release()
			}
		}
	}()
	b, ok := link.UDPBinding()
	if !ok {
		t.Fatal("server hello offers no UDP binding")
	}
	ur, ok := link.UDPRelay()
	if !ok || ur.Channel == 0 {
		t.Fatalf("server hello offers no UDP relay path: %v %v", ur, ok)
	}
	return Attached{Link: link, Token: b.Token, Channel: ur.Channel}
}

// State is the relay state an agent of role attaches with: a device's
// allows the clients named, a client's is empty.
func State(role relayproto.Role, allow ...*identity.Identity) relaylink.State {
	var st relaylink.State
	if role == relayproto.RoleDevice {
		var ids []identity.ID
		for _, c := range allow {
			ids = append(ids, c.ID())
		}
		st.Access = relaylink.AccessList(ids, nil)
	}
	return st
}
