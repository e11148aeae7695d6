package relay

import (
	"net/netip"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// The routes tests run over a plain table: attachments without
// connections, times given by the test.

var tableStart = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

func testID(b byte) identity.ID { return identity.ID{b} }

// fakeDevice returns an attached-device stand-in that allows the clients
// listed (and the invites given), or nil access if allow is nil.
func fakeDevice(dev identity.ID, allow []relayproto.AccessEntry) *attachment {
	a := &attachment{role: relayproto.RoleDevice, addr: relayproto.Addr{ID: dev}}
	if allow != nil {
		a.access.Store(newAccessSet(allow))
	}
	return a
}

func fakeClient(cli identity.ID, instance uint64, ip string) *attachment {
	a := &attachment{role: relayproto.RoleClient, addr: relayproto.Addr{ID: cli, Instance: instance}}
	if ip != "" {
		a.ip = netip.MustParseAddr(ip)
	}
	return a
}

func listing(clients ...identity.ID) []relayproto.AccessEntry {
	e := []relayproto.AccessEntry{}
	for _, c := range clients {
		e = append(e, relayproto.AccessEntry{Kind: relayproto.AccessClient, Value: c})
	}
	return e
}

func mustAdd(t *testing.T, r *routes, a *attachment, now time.Time) replacement {
	t.Helper()
	rep, ref := r.add(a, now)
	if ref != nil {
		t.Fatalf("add %s %s: refused: %v", a.role, a.addr.ID.Short(), ref)
	}
	return rep
}

func testRoutes() *routes { return newRoutes(clientLimits{max: 100, perIP: 100}) }

// TestRoutesRoute: what a packet finds, from a client and from a device,
// as devices attach, say who may reach them and detach.
func TestRoutesRoute(t *testing.T) {
	r := testRoutes()
	dev, friend, pairer, stranger := testID(1), testID(2), testID(3), testID(4)
	token := [32]byte{9}
	d := fakeDevice(dev, append(listing(friend), relayproto.AccessEntry{Kind: relayproto.AccessInvite, Value: token}))
	f, p, s := fakeClient(friend, 1, ""), fakeClient(pairer, 1, ""), fakeClient(stranger, 1, "")
	p.intents.Store(&map[identity.ID][32]byte{dev: token})
	for _, a := range []*attachment{f, p, s} {
		mustAdd(t, r, a, tableStart)
	}
	to := func(src *attachment, dst relayproto.Addr) (*attachment, relayproto.GoneReason) {
		a, gone := r.route(src, dst)
		if a == nil && gone.Reason != 0 && gone.Peer != dst {
			t.Fatalf("peer-gone names %v, want %v", gone.Peer, dst)
		}
		return a, gone.Reason
	}
	devAddr := relayproto.Addr{ID: dev}

	// Absent, never seen: every client hears the same.
	for _, c := range []*attachment{f, p, s} {
		if a, why := to(c, devAddr); a != nil || why != relayproto.GoneUnreachable {
			t.Fatalf("absent device from %s: %v %s", c.addr.ID.Short(), a, why)
		}
	}
	// A device that has not said who may reach it is reachable by no one.
	silent := fakeDevice(dev, nil)
	mustAdd(t, r, silent, tableStart)
	if a, why := to(f, devAddr); a != nil || why != relayproto.GoneUnreachable {
		t.Fatalf("silent device: %v %s", a, why)
	}
	// Once it has, only by those it allows, listed or by invite.
	rep := mustAdd(t, r, d, tableStart)
	if rep.old != silent {
		t.Fatalf("replaced %v, want the silent attachment", rep.old)
	}
	for _, c := range []*attachment{f, p} {
		if a, _ := to(c, devAddr); a != d {
			t.Fatalf("allowed client %s: %v", c.addr.ID.Short(), a)
		}
	}
	if a, why := to(s, devAddr); a != nil || why != relayproto.GoneUnreachable {
		t.Fatalf("stranger to attached device: %v %s", a, why)
	}
	// The device reaches attached clients by their address, instance and
	// all; another device hears it is not allowed, an absent client that
	// it is offline.
	if a, _ := to(d, f.addr); a != f {
		t.Fatalf("device to client: %v", a)
	}
	if a, why := to(d, relayproto.Addr{ID: friend, Instance: 2}); a != nil || why != relayproto.GoneOffline {
		t.Fatalf("device to another instance: %v %s", a, why)
	}
	if a, why := to(d, relayproto.Addr{ID: dev}); a != nil || why != relayproto.GoneNotAllowed {
		t.Fatalf("device to device: %v %s", a, why)
	}

	// Removing the replaced attachment changes nothing.
	r.remove(silent, tableStart.Add(time.Second))
	if on, _ := r.online(dev); !on {
		t.Fatal("removing a replaced attachment took the device offline")
	}
	// The device leaves: the client it listed hears since when; the
	// pairer (allowed by invite only) and the stranger hear nothing more.
	left := tableStart.Add(time.Minute)
	r.remove(d, left)
	if on, at := r.online(dev); on || !at.Equal(left) {
		t.Fatalf("online %v, last seen %v, want offline since %v", on, at, left)
	}
	if _, gone := r.route(f, devAddr); gone.Reason != relayproto.GoneOffline || gone.LastSeenUnix != uint64(left.Unix()) {
		t.Fatalf("friend of a departed device: %+v", gone)
	}
	for _, c := range []*attachment{p, s} {
		if _, gone := r.route(c, devAddr); gone.Reason != relayproto.GoneUnreachable || gone.LastSeenUnix != 0 {
			t.Fatalf("%s: %+v", c.addr.ID.Short(), gone)
		}
	}
	// Coming back forgets the last-seen time.
	mustAdd(t, r, fakeDevice(dev, listing()), tableStart.Add(2*time.Minute))
	if on, at := r.online(dev); !on || !at.IsZero() {
		t.Fatalf("back: online %v, last seen %v", on, at)
	}
	if n, c := r.count(); n != 1 || c != 3 {
		t.Fatalf("count %d devices, %d clients", n, c)
	}

	// A closing registry says nothing of missing peers, and takes no one.
	devices, clients := r.close()
	if len(devices) != 1 || len(clients) != 3 {
		t.Fatalf("close returned %d devices, %d clients", len(devices), len(clients))
	}
	if a, gone := r.route(f, relayproto.Addr{ID: testID(99)}); a != nil || gone != (relayproto.PeerGone{}) {
		t.Fatalf("closing: %v %+v", a, gone)
	}
	if _, ref := r.add(fakeClient(testID(5), 1, ""), tableStart); ref == nil || ref.code != relayproto.RefuseShuttingDown {
		t.Fatalf("closing registry took a client: %v", ref)
	}
}

// TestRoutesClientBounds: clients are bounded per address and in all; a
// client process coming back takes its own place, even from another
// address; devices never count; a removed client frees its place.
func TestRoutesClientBounds(t *testing.T) {
	r := newRoutes(clientLimits{max: 3, perIP: 2})
	a1, a2 := fakeClient(testID(1), 1, "192.0.2.1"), fakeClient(testID(2), 1, "192.0.2.1")
	mustAdd(t, r, a1, tableStart)
	mustAdd(t, r, a2, tableStart)
	if _, ref := r.add(fakeClient(testID(3), 1, "192.0.2.1"), tableStart); ref == nil || ref.code != relayproto.RefuseTooMany {
		t.Fatalf("third from one address: %v", ref)
	}
	// The same key and instance replaces itself without needing room,
	// even from another address.
	back := fakeClient(testID(1), 1, "192.0.2.9")
	if rep := mustAdd(t, r, back, tableStart); rep.old != a1 {
		t.Fatalf("replaced %v, want the first attachment", rep.old)
	}
	if r.clientsIP[netip.MustParseAddr("192.0.2.1")] != 1 || r.clientsIP[netip.MustParseAddr("192.0.2.9")] != 1 {
		t.Fatalf("per-address counts %v", r.clientsIP)
	}
	// An uncounted address (not IP) counts only in all.
	mustAdd(t, r, fakeClient(testID(4), 1, ""), tableStart)
	if _, ref := r.add(fakeClient(testID(5), 1, "192.0.2.5"), tableStart); ref == nil || ref.code != relayproto.RefuseOverloaded {
		t.Fatalf("past the total: %v", ref)
	}
	for i := range 5 {
		mustAdd(t, r, fakeDevice(testID(byte(100+i)), listing()), tableStart)
	}
	r.remove(a1, tableStart) // replaced already: nothing changes
	r.remove(a2, tableStart)
	mustAdd(t, r, fakeClient(testID(5), 1, "192.0.2.5"), tableStart)
	r.remove(back, tableStart)
	if _, ok := r.clientsIP[netip.MustParseAddr("192.0.2.9")]; ok || len(r.clientsIP) != 1 {
		t.Fatalf("per-address counts after removals: %v", r.clientsIP)
	}
	if n, c := r.count(); n != 5 || c != 2 {
		t.Fatalf("count %d devices, %d clients", n, c)
	}
}

// TestFlapDamping: a device replaced more than flapFree times within
// flapWindow is told to wait flapStep longer per replacement past them, up
// to flapWindow; once its replacements age out of the window, they cost
// nothing again.
func TestFlapDamping(t *testing.T) {
	r := testRoutes()
	dev := testID(1)
	mustAdd(t, r, fakeDevice(dev, listing()), tableStart)
	for i, tc := range []struct {
		at    time.Duration // since tableStart
		wait  time.Duration
		flaps int
	}{
		{1 * time.Second, 0, 1},
		{2 * time.Second, 0, 2},
		{3 * time.Second, 10 * time.Second, 3},
		{4 * time.Second, 20 * time.Second, 4},
		{5 * time.Second, 30 * time.Second, 5},
		{6 * time.Second, 40 * time.Second, 6},
		{7 * time.Second, 50 * time.Second, 7},
		{8 * time.Second, time.Minute, 8},
		{9 * time.Second, time.Minute, 9},
		// A minute after the first five, four remain in the window.
		{65 * time.Second, 30 * time.Second, 5},
		// Long after, the slate is clean.
		{10 * time.Minute, 0, 1},
	} {
		rep := mustAdd(t, r, fakeDevice(dev, listing()), tableStart.Add(tc.at))
		if rep.old == nil || rep.retryAfter != tc.wait || rep.flaps != tc.flaps {
			t.Fatalf("replacement %d at %v: wait %v after %d flaps, want %v after %d", i+1, tc.at, rep.retryAfter, rep.flaps, tc.wait, tc.flaps)
		}
	}
	// A first attachment is no replacement, and clients never flap.
	if rep := mustAdd(t, r, fakeDevice(testID(2), listing()), tableStart); rep.old != nil || rep.retryAfter != 0 {
		t.Fatalf("first attachment: %+v", rep)
	}
	for range 5 {
		if rep := mustAdd(t, r, fakeClient(testID(3), 1, ""), tableStart); rep.retryAfter != 0 {
			t.Fatalf("client replacement: %+v", rep)
		}
	}
}

// TestFlapLogBounded: the flap log forgets everything rather than grow
// past maxFlaps devices.
func TestFlapLogBounded(t *testing.T) {
	f := flapLog{times: make(map[identity.ID][]time.Time)}
	for i := range maxFlaps + 10 {
		var dev identity.ID
		dev[0], dev[1] = byte(i), byte(i>>8)
		f.record(dev, tableStart)
		if len(f.times) > maxFlaps {
			t.Fatalf("%d devices remembered", len(f.times))
		}
	}
}

// TestRoutesIntent: a client's pairing intent lets it through only to the
// device whose invite it names, and only while that device lists it.
func TestRoutesIntent(t *testing.T) {
	r := testRoutes()
	token := [32]byte{7}
	inv := []relayproto.AccessEntry{{Kind: relayproto.AccessInvite, Value: token}}
	c := fakeClient(testID(1), 1, "")
	mustAdd(t, r, c, tableStart)
	if r.allowsIntent(c) {
		t.Fatal("a client without intents is allowed")
	}
	c.intents.Store(&map[identity.ID][32]byte{testID(2): token})
	if r.allowsIntent(c) {
		t.Fatal("allowed by an absent device")
	}
	mustAdd(t, r, fakeDevice(testID(3), inv), tableStart) // lists the invite, but the intent names another device
	if r.allowsIntent(c) {
		t.Fatal("allowed by a device the intent does not name")
	}
	mustAdd(t, r, fakeDevice(testID(2), inv), tableStart)
	if !r.allowsIntent(c) {
		t.Fatal("not allowed by the device whose invite it holds")
	}
	mustAdd(t, r, fakeDevice(testID(2), listing()), tableStart) // a new list without the invite
	if r.allowsIntent(c) {
		t.Fatal("allowed after the invite was withdrawn")
	}
}
