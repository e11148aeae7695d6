//go:build linux

package device

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/mountns"
	"github.com/burrow-tunnel/burrow/pairing"
)

func testInvite(name string) pendingInvite {
	s := pairing.NewSecret()
	now := time.Now()
	return pendingInvite{Verifier: s.Verifier(), RelayToken: s.RelayToken(), Role: "viewer",
		Name: name, Created: now, Expires: now.Add(time.Hour)}
}

func testClient(n int) identity.ID {
	var id identity.ID
	binary.BigEndian.PutUint64(id[:], uint64(n)+1)
	return id
}

// checkDB runs bbolt's consistency check on the database in dir.
func checkDB(t *testing.T, dir string) {
	t.Helper()
	db, err := bolt.Open(dir+"/device.db", 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("the database does not open: %v", err)
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
		t.Fatalf("the database is corrupt: %v", err)
	}
}

// TestStoreDiskFull: on a full file system, a write the store cannot make
// fails with ErrStateFull naming the directory; every write it
// acknowledged is kept; the store opens again while the disk is full; once
// space is freed, writes work again on the same handle.
func TestStoreDiskFull(t *testing.T) {
	if !mountns.Enter(t) {
		return
	}
	dir := mountns.Tmpfs(t, 1<<20)
	st, err := openStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { st.close() }()
	var users []identity.ID
	for n := range 5 {
		in := testInvite("")
		if err := st.addInvite(in); err != nil {
			t.Fatal(err)
		}
		if _, err := st.redeem(in.Verifier, testClient(n), time.Now()); err != nil {
			t.Fatal(err)
		}
		users = append(users, testClient(n))
	}
	filler, size := mountns.Fill(t, dir)
	t.Logf("filled %s with %d bytes", dir, size)

	// Invites until one does not fit.
	invites := make(map[[32]byte]bool)
	var failure error
	for n := 0; n < 1000 && failure == nil; n++ {
		in := testInvite("")
		if failure = st.addInvite(in); failure == nil {
			invites[in.Verifier] = true
		}
	}
	t.Logf("%d invites saved on the full disk, then: %v", len(invites), failure)
	if failure == nil {
		t.Fatal("1000 invites saved on a full disk")
	}
	if !errors.Is(failure, ErrStateFull) || !strings.Contains(failure.Error(), dir) {
		t.Fatalf("error %q: want ErrStateFull, naming %s", failure, dir)
	}
	// Touches and more invites after the failure: each succeeds and is
	// kept, or fails the same way.
	for n := range 20 {
		if err := st.touch(users[n%len(users)], time.Now()); err != nil && !errors.Is(err, ErrStateFull) {
			t.Fatalf("touch: %v", err)
		}
		in := testInvite("")
		switch err := st.addInvite(in); {
		case err == nil:
			invites[in.Verifier] = true
		case !errors.Is(err, ErrStateFull):
			t.Fatalf("invite: %v", err)
		}
	}
	check := func(when string) {
		t.Helper()
		gotUsers, gotInvites, err := st.load()
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		for _, id := range users {
			if _, ok := gotUsers[id]; !ok {
				t.Fatalf("%s: user %s lost", when, id.Short())
			}
		}
		for v := range invites {
			if _, ok := gotInvites[v]; !ok {
				t.Fatalf("%s: an acknowledged invite was lost", when)
			}
		}
		if len(gotInvites) != len(invites) {
			t.Fatalf("%s: %d invites stored, %d acknowledged", when, len(gotInvites), len(invites))
		}
	}
	check("on the full disk")

	// A restart while the disk is still full.
	if err := st.close(); err != nil {
		t.Fatal(err)
	}
	checkDB(t, dir)
	if st, err = openStore(dir); err != nil {
		t.Fatalf("the store does not open on a full disk: %v", err)
	}
	check("reopened on the full disk")

	// Space freed: the same handle writes again.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	in := testInvite("after")
	if err := st.addInvite(in); err != nil {
		t.Fatalf("with space again: %v", err)
	}
	invites[in.Verifier] = true
	if _, err := st.redeem(in.Verifier, testClient(100), time.Now()); err != nil {
		t.Fatalf("with space again: %v", err)
	}
	delete(invites, in.Verifier)
	users = append(users, testClient(100))
	st.close()
	checkDB(t, dir)
	if st, err = openStore(dir); err != nil {
		t.Fatal(err)
	}
	check("after freeing space")
}
