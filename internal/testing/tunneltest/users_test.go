package tunneltest

import (
	"testing"
	"time"
)

// TestUsersLastSeen: the device's user listing shows when a paired user
// was last seen as soon as its session closes, not only after a restart.
func TestUsersLastSeen(t *testing.T) {
	rtsp := StartServer(t, Echo)
	r := StartRelay(t)
	d := pairingDevice(t, r, rtsp.Addr, "127.0.0.1:1")
	inv, err := d.Invite("viewer", time.Minute, "alice")
	if err != nil {
		t.Fatal(err)
	}
	alice := StartClient(t, r, nil)
	if _, err := alice.Pair(ctx10(t), inv); err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(t, alice, d.ID(), "rtsp"); err != nil {
		t.Fatal(err)
	}
	if seen := d.Users()[0].LastSeen; !seen.IsZero() {
		t.Fatalf("last seen %v while the session is open", seen)
	}
	before := time.Now()
	alice.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		users := d.Users()
		if len(users) != 1 {
			t.Fatalf("users %+v", users)
		}
		if seen := users[0].LastSeen; !seen.IsZero() {
			if seen.Before(before.Add(-time.Second)) || seen.After(time.Now()) {
				t.Fatalf("last seen %v, want about %v", seen, before)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the user listing shows no last-seen time 5s after the session closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
