package fleet

import (
	"crypto/rand"
	"testing"

	"github.com/burrow-tunnel/burrow/identity"
)

func randomID() identity.ID {
	var id identity.ID
	rand.Read(id[:])
	return id
}

// TestOrderSpreadsAndMovesOnlyTheLost checks the rendezvous order: devices
// spread evenly over the relays, and removing a relay moves only the
// devices whose home it was, spread evenly over the rest.
func TestOrderSpreadsAndMovesOnlyTheLost(t *testing.T) {
	var relays []Relay
	for range 4 {
		relays = append(relays, Relay{ID: randomID(), Addr: "127.0.0.1:1"})
	}
	lost := relays[1].ID
	rest := Map{Relays: relays}.Without(lost).Relays
	const devices = 20000
	homes := map[identity.ID]int{}
	moved := map[identity.ID]int{}
	for range devices {
		d := randomID()
		before := Order(d, relays, "")
		after := Order(d, rest, "")
		if len(before) != 4 || len(after) != 3 {
			t.Fatalf("order lengths %d, %d", len(before), len(after))
		}
		homes[before[0].ID]++
		if before[0].ID != lost {
			if after[0].ID != before[0].ID {
				t.Fatalf("a device whose home stayed moved")
			}
			continue
		}
		if after[0].ID != before[1].ID {
			t.Fatalf("a moved device did not go to its second relay")
		}
		moved[after[0].ID]++
	}
	for _, r := range relays {
		if n := homes[r.ID]; n < devices/4*9/10 || n > devices/4*11/10 {
			t.Errorf("relay has %d of %d devices; want about a quarter", n, devices)
		}
	}
	for _, r := range rest {
		if n, want := moved[r.ID], homes[lost]/3; n < want*8/10 || n > want*12/10 {
			t.Errorf("relay took %d of the lost relay's %d devices; want about a third", n, homes[lost])
		}
	}
}

// TestOrderPrefersRegion checks that a device's region comes first, and
// that a region with no relay falls back to all of them.
func TestOrderPrefersRegion(t *testing.T) {
	relays := []Relay{
		{ID: randomID(), Region: "eu"}, {ID: randomID(), Region: "us"},
		{ID: randomID(), Region: "eu"}, {ID: randomID(), Region: "us"},
	}
	for range 100 {
		d := randomID()
		o := Order(d, relays, "us")
		if o[0].Region != "us" || o[1].Region != "us" || o[2].Region != "eu" {
			t.Fatalf("region us not first: %+v", o)
		}
		if a, b := Order(d, relays, "ap"), Order(d, relays, ""); a[0].ID != b[0].ID {
			t.Fatalf("an unknown region does not order like no region")
		}
	}
	if relays[0].Region != "eu" || relays[1].Region != "us" {
		t.Fatal("Order changed its argument")
	}
}
