package tunneltest

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
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

// TestPairAgainSaysWhatChanged: a client that pairs again through an
// invite of another role, or under another name, and a client whose
// invite names a user that exists, are told what they got, and the
// device's log says it too.
func TestPairAgainSaysWhatChanged(t *testing.T) {
	var logs syncBuffer
	rtsp := StartServer(t, Echo)
	r := StartRelay(t)
	d := StartDevice(t, r, device.Config{
		Services: map[string]string{"rtsp": rtsp.Addr, "http": "127.0.0.1:1"},
		Roles:    map[string][]string{"viewer": {"rtsp"}, "admin": {device.AllServices}},
		StateDir: t.TempDir(),
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
	})
	pair := func(c *client.Client, role, name string) client.Paired {
		t.Helper()
		inv, err := d.Invite(role, time.Minute, name)
		if err != nil {
			t.Fatal(err)
		}
		p, err := c.Pair(ctx10(t), inv)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	hasNote := func(p client.Paired, want string) {
		t.Helper()
		if !slices.ContainsFunc(p.Notes(), func(n string) bool { return strings.Contains(n, want) }) {
			t.Fatalf("paired %+v: notes %q, want one saying %q", p, p.Notes(), want)
		}
	}
	hasLog := func(want string) {
		t.Helper()
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("device log does not say %q:\n%s", want, logs.String())
		}
	}

	alice := StartClient(t, r, nil)
	if p := pair(alice, "viewer", "alice"); p.User != "alice" || p.Again() || len(p.Notes()) != 0 {
		t.Fatalf("first pairing: %+v, notes %q", p, p.Notes())
	}
	// Again, as admin, through an invite that names no one: alice keeps
	// her name, and is told of her new role.
	p := pair(alice, "admin", "")
	if p.Role != "admin" || p.User != "alice" || p.WasRole != "viewer" || p.WasName != "alice" {
		t.Fatalf("paired again: %+v", p)
	}
	hasNote(p, "you were paired with this device already, as viewer: you are now admin")
	hasLog(`msg="client paired again: its role changed from viewer to admin"`)
	hasLog(`name=alice role=admin was_name=alice was_role=viewer`)
	// Again, under another name.
	p = pair(alice, "admin", "carol")
	if p.User != "carol" || p.WasName != "alice" {
		t.Fatalf("renamed: %+v", p)
	}
	hasNote(p, "the device called you alice: it now calls you carol")
	hasLog("client paired again: renamed from alice to carol")
	// Again, the same: nothing changed, and it says so.
	hasNote(pair(alice, "admin", "carol"), "as admin: nothing changed")

	// Bob's invite names a user the device has.
	bob := StartClient(t, r, nil)
	p = pair(bob, "viewer", "carol")
	if p.User != "carol-2" || p.Asked != "carol" || p.Again() {
		t.Fatalf("name taken: %+v", p)
	}
	hasNote(p, "the name carol was taken by another user of the device: it calls you carol-2")
	hasLog("client paired: the name carol the invite asked for is another user's, so it is carol-2")

	var names []string
	for _, u := range d.Users() {
		names = append(names, u.Name+"/"+u.Role)
	}
	if want := []string{"carol/admin", "carol-2/viewer"}; !slices.Equal(names, want) {
		t.Fatalf("users %q, want %q", names, want)
	}
}
