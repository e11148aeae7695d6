//go:build linux

package tunneltest

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/mountns"
	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/session"
)

// The device's state directory fails under the running device: its file
// system fills up, or turns read-only. Pairing must then fail with a clear
// error on both sides, the users already there keep working, and nothing
// stored is lost. Each test runs in a mount namespace of its own, on a file
// system that is really full or read-only: the tests run as root, for whom
// chmod stops nothing.

// A stateRig is a device with a state directory, one client from the
// config file, and a log to search.
type stateRig struct {
	t     *testing.T
	r     *Relay
	cfg   device.Config
	d     *device.Device
	logs  *syncBuffer
	fixed *identity.Identity // a client of the config file
}

func newStateRig(t *testing.T, dir string) *stateRig {
	t.Helper()
	rtsp := StartServer(t, Echo)
	g := &stateRig{t: t, r: StartRelay(t), logs: &syncBuffer{}, fixed: NewIdentity(t)}
	log := slog.New(slog.NewMultiHandler(Logger(t).Handler(), slog.NewTextHandler(g.logs, nil)))
	g.cfg = device.Config{
		Identity: NewIdentity(t),
		Name:     "cam",
		Services: map[string]string{"rtsp": rtsp.Addr},
		Roles:    map[string][]string{"viewer": {"rtsp"}},
		Clients:  map[identity.ID][]string{g.fixed.ID(): {"rtsp"}},
		StateDir: dir,
		Logger:   log.With("role", "device"),
	}
	g.d = StartDevice(t, g.r, g.cfg)
	return g
}

// restart stops the device and starts it again on the same state.
func (g *stateRig) restart() {
	g.t.Helper()
	g.stop()
	g.d = StartDevice(g.t, g.r, g.cfg)
}

// restartReadOnly stops the device, remounts its state directory
// read-only, and starts the device again on it.
func (g *stateRig) restartReadOnly() {
	g.t.Helper()
	g.stop()
	mountns.Remount(g.t, g.cfg.StateDir, true)
	g.d = StartDevice(g.t, g.r, g.cfg)
}

func (g *stateRig) stop() {
	g.t.Helper()
	if err := g.d.Close(); err != nil {
		g.t.Fatal(err)
	}
}

func (g *stateRig) invite(name string) pairing.Invite {
	g.t.Helper()
	inv, err := g.d.Invite("viewer", time.Hour, name)
	if err != nil {
		g.t.Fatalf("invite %s: %v", name, err)
	}
	return inv
}

// pair pairs a new client with inv and returns its identity, or the error.
func (g *stateRig) pair(inv pairing.Invite) (*identity.Identity, error) {
	g.t.Helper()
	id := NewIdentity(g.t)
	c := StartClient(g.t, g.r, id)
	defer c.Close()
	// The device tells the relay about a new invite in the background:
	// until it has, the relay turns the client away.
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, err := c.Pair(ctx10(g.t), inv)
		if err == nil || !strings.Contains(err.Error(), "no pending invite") || time.Now().After(deadline) {
			return id, err
		}
	}
}

// paired pairs a new client under name with a new invite.
func (g *stateRig) paired(name string) *identity.Identity {
	g.t.Helper()
	id, err := g.pair(g.invite(name))
	if err != nil {
		g.t.Fatalf("pair %s: %v", name, err)
	}
	return id
}

// works checks that each client opens a working tunnel, in a session of
// its own that it then closes (so that the device records when it was last
// seen).
func (g *stateRig) works(ids ...*identity.Identity) {
	g.t.Helper()
	for _, id := range ids {
		c := StartClient(g.t, g.r, id)
		if err := echoOnce(g.t, c, g.d.ID(), "rtsp"); err != nil {
			g.t.Fatalf("client %s: %v", id.ID().Short(), err)
		}
		c.Close()
	}
	// Wait until the device has seen every session end.
	for deadline := time.Now().Add(5 * time.Second); len(g.d.Status().Sessions) > 0; {
		if time.Now().After(deadline) {
			g.t.Fatalf("sessions still open: %+v", g.d.Status().Sessions)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hasUsers checks that the device lets in exactly these paired clients.
func (g *stateRig) hasUsers(ids ...*identity.Identity) {
	g.t.Helper()
	want := make(map[identity.ID]bool)
	for _, id := range ids {
		want[id.ID()] = true
	}
	n := 0
	for _, u := range g.d.Users() {
		if u.FromConfig {
			continue
		}
		n++
		if !want[u.ID] {
			g.t.Fatalf("unexpected user %+v", u)
		}
	}
	if n != len(want) {
		g.t.Fatalf("%d paired users, want %d: %+v", n, len(want), g.d.Users())
	}
}

// inviteFails checks that making an invite fails with target, in words
// naming the state directory and containing words, and so does the admin
// API (what burrow device invite prints).
func (g *stateRig) inviteFails(target error, words string) {
	g.t.Helper()
	_, err := g.d.Invite("viewer", time.Hour, "")
	if !errors.Is(err, target) || !strings.Contains(err.Error(), g.cfg.StateDir) || !strings.Contains(err.Error(), words) {
		g.t.Fatalf("invite: err = %v; want %v, naming %s, saying %q", err, target, g.cfg.StateDir, words)
	}
	g.t.Logf("device: %v", err)
	rec := httptest.NewRecorder()
	g.d.AdminHandler().ServeHTTP(rec, httptest.NewRequest("POST", "/invites", strings.NewReader(`{"role":"viewer"}`)))
	if rec.Code/100 != 5 || !strings.Contains(rec.Body.String(), words) {
		g.t.Fatalf("admin API: %d %s", rec.Code, rec.Body)
	}
}

// pairFails checks that pairing with inv fails on the client with a reply
// that says the device could not store it.
func (g *stateRig) pairFails(inv pairing.Invite, words string) {
	g.t.Helper()
	_, err := g.pair(inv)
	if !errors.Is(err, session.ErrUnavailable) || !strings.Contains(err.Error(), "could not store the pairing") || !strings.Contains(err.Error(), words) {
		g.t.Fatalf("pair: err = %v; want the device could not store it (%s)", err, words)
	}
	g.t.Logf("client: %v", err)
}

// lastSeenWarnings counts the log lines about recording when users were
// last seen.
func (g *stateRig) lastSeenWarnings() int {
	return strings.Count(g.logs.String(), "last seen")
}

// checkDB runs bbolt's consistency check on the device's database.
func checkDB(t *testing.T, dir string) {
	t.Helper()
	db, err := bolt.Open(dir+"/device.db", 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("the state does not open: %v", err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	if err != nil {
		t.Fatalf("the state is corrupt: %v", err)
	}
}

// invitesUntilFull makes invites, through the admin API (what burrow
// device invite does) or directly, until one fails; that failure must say
// that the state directory is full. It returns the invites made.
func (g *stateRig) invitesUntilFull(admin bool) []pairing.Invite {
	g.t.Helper()
	var made []pairing.Invite
	for range 50 {
		if !admin {
			inv, err := g.d.Invite("viewer", time.Hour, "")
			if err == nil {
				made = append(made, inv)
				continue
			}
			if !errors.Is(err, device.ErrStateFull) || !strings.Contains(err.Error(), g.cfg.StateDir+" is full") {
				g.t.Fatalf("invite: err = %v; want ErrStateFull, naming %s", err, g.cfg.StateDir)
			}
			g.t.Logf("%d invites, then: %v", len(made), err)
			return made
		}
		rec := httptest.NewRecorder()
		g.d.AdminHandler().ServeHTTP(rec, httptest.NewRequest("POST", "/invites", strings.NewReader(`{"role":"viewer"}`)))
		if rec.Code == 200 {
			var ans device.InviteAnswer
			if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil {
				g.t.Fatal(err)
			}
			inv, err := pairing.Parse(ans.Invite)
			if err != nil {
				g.t.Fatal(err)
			}
			made = append(made, inv)
			continue
		}
		if rec.Code != 507 || !strings.Contains(rec.Body.String(), g.cfg.StateDir+" is full") {
			g.t.Fatalf("admin API: %d %s", rec.Code, rec.Body)
		}
		g.t.Logf("%d invites through the admin API, then: %d %s", len(made), rec.Code, rec.Body)
		return made
	}
	g.t.Fatalf("%d invites saved on a full disk", len(made))
	return nil
}

// TestStateDirFull: the state directory's file system fills up to the
// last byte under a running device. The database reuses the pages it
// freed, so some invites and pairings still fit; the first that does not
// fails with an error that says why, on the device and on the client.
// Users (paired and from the config file) keep opening tunnels; the device
// restarts on the full disk with everything; once space is freed, pairing
// works again without a restart; nothing acknowledged was lost.
func TestStateDirFull(t *testing.T) {
	if !mountns.Enter(t) {
		return
	}
	dir := mountns.Tmpfs(t, 1<<20)
	g := newStateRig(t, dir)
	alice := g.paired("alice")
	var early []pairing.Invite
	for range 20 {
		early = append(early, g.invite(""))
	}
	filler, size := mountns.Fill(t, dir)
	t.Logf("filled %s with %d bytes", dir, size)

	saved := g.invitesUntilFull(true)
	saved = append(saved, g.invitesUntilFull(false)...)
	paired := []*identity.Identity{alice}
	var unspent []pairing.Invite
	for i, inv := range early {
		id, err := g.pair(inv)
		if err == nil {
			paired = append(paired, id)
			continue
		}
		if !errors.Is(err, session.ErrUnavailable) || !strings.Contains(err.Error(), "could not store the pairing: its storage is full") {
			t.Fatalf("pair on the full disk: %v", err)
		}
		t.Logf("%d pairings, then: %v", i, err)
		unspent = early[i:]
		break
	}
	if unspent == nil {
		t.Fatalf("%d pairings saved on a full disk", len(early))
	}
	g.works(append(paired, g.fixed)...)
	g.works(append(paired, g.fixed)...)
	if n := g.lastSeenWarnings(); n > 1 {
		t.Fatalf("%d log lines about last seen times:\n%s", n, g.logs)
	}

	// A restart on the full disk keeps everything.
	g.restart()
	g.hasUsers(paired...)
	g.works(append(paired, g.fixed)...)

	// Space again: pairing works, without a restart, with the invite that
	// did not fit too.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for _, inv := range []pairing.Invite{unspent[0], g.invite("")} {
		id, err := g.pair(inv)
		if err != nil {
			t.Fatalf("pairing after space was freed: %v", err)
		}
		paired = append(paired, id)
	}
	g.restart()
	g.hasUsers(paired...)
	g.works(append(paired, g.fixed)...)
	// Every invite saved on the full disk, or made before, is there.
	for _, inv := range slices.Concat(saved, unspent[1:]) {
		id, err := g.pair(inv)
		if err != nil {
			t.Fatalf("an invite saved before the restart: %v", err)
		}
		paired = append(paired, id)
	}
	g.hasUsers(paired...)
	g.stop()
	checkDB(t, dir)
}

// TestStateDirFailsReadOnly: the kernel remounts the state directory's
// file system read-only under the running device, as it does when a disk
// or SD card fails. Invites and pairing fail with errors that say so;
// users keep opening tunnels, with one log line about their last-seen
// times; the device restarts on the read-only file system; after a repair
// everything is there and pairing works.
func TestStateDirFailsReadOnly(t *testing.T) {
	if !mountns.Enter(t) {
		return
	}
	fs := mountns.NewExt4(t, 4<<20)
	g := newStateRig(t, fs.Dir)
	alice := g.paired("alice")
	pre := g.invite("pre")
	fs.Fail()

	g.inviteFails(device.ErrStateReadOnly, "read-only")
	g.pairFails(pre, "read-only")
	for range 5 {
		g.works(alice, g.fixed)
	}
	if n := g.lastSeenWarnings(); n != 1 {
		t.Fatalf("%d log lines about last seen times, want 1:\n%s", n, g.logs)
	}

	// A restart on the read-only file system: users still get in.
	g.restart()
	g.hasUsers(alice)
	g.works(alice, g.fixed)
	g.inviteFails(device.ErrStateReadOnly, "read-only")

	// Repaired (as at the next boot): everything is there.
	g.stop()
	fs.Repair()
	checkDB(t, fs.Dir)
	g.restart()
	g.hasUsers(alice)
	bob, err := g.pair(pre)
	if err != nil {
		t.Fatalf("the invite made before the failure: %v", err)
	}
	carol := g.paired("carol")
	g.hasUsers(alice, bob, carol)
	g.works(alice, bob, carol, g.fixed)
	g.stop()
	checkDB(t, fs.Dir)
}

// TestStateDirReadOnlyAtStart: the device starts on a read-only state
// directory (a read-only root file system, say): paired users get in and
// pairing fails clearly; when the file system becomes writable, pairing
// works without a restart.
func TestStateDirReadOnlyAtStart(t *testing.T) {
	if !mountns.Enter(t) {
		return
	}
	dir := mountns.Tmpfs(t, 1<<20)
	g := newStateRig(t, dir)
	alice := g.paired("alice")
	pre := g.invite("pre")
	g.restartReadOnly()
	g.hasUsers(alice)
	g.works(alice, g.fixed)
	g.inviteFails(device.ErrStateReadOnly, "read-only")
	g.pairFails(pre, "read-only")

	mountns.Remount(t, dir, false)
	bob, err := g.pair(pre)
	if err != nil {
		t.Fatalf("pairing once the file system is writable: %v", err)
	}
	g.works(alice, bob, g.fixed)
	g.restart()
	g.hasUsers(alice, bob)
	g.stop()
	checkDB(t, dir)
}

// TestRevokeOnReadOnlyState: a revocation while the state directory is
// read-only takes effect at once (the user's open tunnel closes, its next
// one is refused) and says that it is not saved yet; the device saves it
// once the file system is writable again, without a restart, and the user
// stays out after one.
func TestRevokeOnReadOnlyState(t *testing.T) {
	if !mountns.Enter(t) {
		return
	}
	dir := mountns.Tmpfs(t, 1<<20)
	g := newStateRig(t, dir)
	alice := g.paired("alice")
	bob := g.paired("bob")
	g.restartReadOnly()

	bc := StartClient(t, g.r, bob)
	tun, err := bc.Dial(ctx10(t), g.d.ID(), "rtsp")
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()

	// What burrow device revoke prints.
	rec := httptest.NewRecorder()
	g.d.AdminHandler().ServeHTTP(rec, httptest.NewRequest("DELETE", "/users/bob", nil))
	for _, words := range []string{"bob is revoked", "not saved", dir + " is read-only", "a restart before that would let bob in again"} {
		if rec.Code != 503 || !strings.Contains(rec.Body.String(), words) {
			t.Fatalf("admin API: %d %s; want 503 saying %q", rec.Code, rec.Body, words)
		}
	}
	t.Logf("revoke: %s", rec.Body)
	tun.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := tun.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("bob's open tunnel: read err = %v, want it closed", err)
	}
	waitUnreachable(t, bc, g.d.ID())
	bc.Close()
	// Revoking again tries again, and says the same.
	if _, err := g.d.Revoke("bob"); !errors.Is(err, device.ErrRevocationNotSaved) || !errors.Is(err, device.ErrStateReadOnly) {
		t.Fatalf("second revoke: err = %v", err)
	}
	st := g.d.Status()
	if !slices.Equal(st.NotSaved, []string{"bob"}) || !strings.Contains(st.StateError, "read-only") {
		t.Fatalf("status: not saved %q, state error %q", st.NotSaved, st.StateError)
	}
	g.hasUsers(alice)
	g.works(alice, g.fixed)

	// Writable again: the revocation is saved without a restart (here when
	// alice's next session ends; otherwise within 10 s).
	mountns.Remount(t, dir, false)
	g.works(alice)
	for deadline := time.Now().Add(5 * time.Second); len(g.d.Status().NotSaved) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("revocation still not saved: %+v", g.d.Status())
		}
	}
	if s := g.d.Status().StateError; s != "" {
		t.Fatalf("state error after the remount: %s", s)
	}
	g.restart()
	g.hasUsers(alice)
	bc = StartClient(t, g.r, bob)
	if _, err := bc.Dial(ctx10(t), g.d.ID(), "rtsp"); !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("bob after the restart: err = %v, want unreachable", err)
	}
	bc.Close()
	g.works(alice, g.fixed)
	g.stop()
	checkDB(t, dir)
}
