package client

import (
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/pairing"
)

// TestSavePaired: a paired device is saved under the invite's name (or
// the name asked for, or its short ID) and is found again by that name,
// with the relay it was paired through.
func TestSavePaired(t *testing.T) {
	dev, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	relay, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	inv := pairing.Invite{Device: dev.ID(), Relay: "relay.example.com:443", RelayID: relay.ID(),
		Expires: time.Now().Add(time.Hour), Name: "cam"}
	for _, tt := range []struct{ asked, invName, want string }{
		{"", "cam", "cam"},
		{"front-door", "cam", "front-door"},
		{"", "", dev.ID().Short()},
	} {
		inv.Name = tt.invName
		name, err := InviteName(inv, tt.asked)
		if err != nil || name != tt.want {
			t.Fatalf("InviteName(%q, %q) = %q, %v; want %q", tt.invName, tt.asked, name, err, tt.want)
		}
	}
	if _, err := InviteName(inv, "no spaces allowed"); err == nil {
		t.Error("InviteName accepted an invalid name")
	}
	home := Home{Dir: t.TempDir()}
	if _, err := home.SavePaired("cam", inv, Paired{Role: "viewer", Services: []string{"rtsp"}}); err != nil {
		t.Fatal(err)
	}
	kd, err := home.Device("cam")
	if err != nil {
		t.Fatal(err)
	}
	if kd.ID != dev.ID() || kd.Role != "viewer" || kd.RelayConfig() != InviteRelay(inv) {
		t.Errorf("saved %+v, want device %s, role viewer, relay %+v", kd, dev.ID(), InviteRelay(inv))
	}
}

// TestDefaultHomeDir: BURROW_HOME names the home.
func TestDefaultHomeDir(t *testing.T) {
	t.Setenv("BURROW_HOME", "/somewhere/else")
	if dir, err := DefaultHomeDir(); err != nil || dir != "/somewhere/else" {
		t.Errorf("DefaultHomeDir() = %q, %v; want /somewhere/else", dir, err)
	}
}
