package tunneltest

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
)

// TestCancelInvite: the device lists its pending invites (without their
// secrets); a cancelled invite is gone from the list, the relay stops
// admitting a client pairing with it, and it pairs no one; the other
// invite still works.
func TestCancelInvite(t *testing.T) {
	rtsp := StartServer(t, Echo)
	r := StartRelay(t)
	d := pairingDevice(t, r, rtsp.Addr, "127.0.0.1:1")
	cancelled, err := d.Invite("viewer", time.Hour, "alice")
	if err != nil {
		t.Fatal(err)
	}
	kept, err := d.Invite("admin", time.Minute, "")
	if err != nil {
		t.Fatal(err)
	}
	list := d.Invites()
	if len(list) != 2 || list[0].Role != "admin" || list[1].Role != "viewer" || list[1].Name != "alice" ||
		list[0].UsesLeft != 1 || len(list[0].ID) != 8 || list[0].ID == list[1].ID {
		t.Fatalf("invites %+v, want the admin one (expiring first) then alice's", list)
	}
	if !list[1].Expires.Equal(cancelled.Expires) && !list[1].Expires.Truncate(time.Second).Equal(cancelled.Expires) {
		t.Fatalf("listed expiry %v, invite's %v", list[1].Expires, cancelled.Expires)
	}
	for _, in := range list {
		if strings.Contains(cancelled.String(), in.ID) || strings.Contains(kept.String(), in.ID) {
			t.Fatalf("invite ID %s appears in an invite string", in.ID)
		}
	}

	if _, err := d.CancelInvite("00000000"); !errors.Is(err, device.ErrUnknownInvite) {
		t.Fatalf("cancel unknown: %v", err)
	}
	got, err := d.CancelInvite(strings.ToUpper(list[1].ID))
	if err != nil || got.Name != "alice" {
		t.Fatalf("cancel: %+v, %v", got, err)
	}
	if l := d.Invites(); len(l) != 1 || l[0].ID != list[0].ID {
		t.Fatalf("invites after cancel: %+v", l)
	}
	if _, err := d.CancelInvite(list[1].ID); !errors.Is(err, device.ErrUnknownInvite) {
		t.Fatalf("cancel twice: %v", err)
	}

	// The relay no longer lists the invite's token: the client is stopped
	// there, as with a used invite.
	alice := StartClient(t, r, nil)
	if _, err := alice.Pair(ctx10(t), cancelled); err == nil || !strings.Contains(err.Error(), "expired, was used") {
		t.Fatalf("pair with a cancelled invite: err = %v", err)
	}
	if err := echoOnce(t, alice, d.ID(), "rtsp"); !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("alice after the cancelled invite: err = %v", err)
	}
	if n := len(d.Users()); n != 0 {
		t.Fatalf("%d users after a cancelled invite", n)
	}
	bob := StartClient(t, r, nil)
	if _, err := bob.Pair(ctx10(t), kept); err != nil {
		t.Fatalf("pair with the invite not cancelled: %v", err)
	}
	if l := d.Invites(); len(l) != 0 {
		t.Fatalf("invites after the last was used: %+v", l)
	}
}
