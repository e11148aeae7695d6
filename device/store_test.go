package device

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/israce"
	"github.com/burrow-tunnel/burrow/pairing"
)

// The crash test runs the store's operations in a child process (this test
// binary again) and kills it with SIGKILL at random moments.
const tortureEnv = "BURROW_STORE_TORTURE_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(tortureEnv); dir != "" {
		torture(dir)
		return
	}
	goleak.VerifyTestMain(m)
}

// torture pairs and revokes users in the store at dir for ever. Operation
// n makes an invite named u<n>, redeems it for a client whose ID encodes n,
// and revokes every third user made.
func torture(dir string) {
	st, err := openStore(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Operation numbers are never reused: the next one is recorded, by an
	// atomic rename, before it starts.
	n := readNext(dir)
	for ; ; n++ {
		if err := os.WriteFile(dir+"/next.tmp", []byte(strconv.Itoa(n+1)), 0o600); err != nil {
			panic(err)
		}
		if err := os.Rename(dir+"/next.tmp", dir+"/next"); err != nil {
			panic(err)
		}
		secret := pairing.NewSecret()
		name := "u" + strconv.Itoa(n)
		if err := st.addInvite(pendingInvite{Verifier: secret.Verifier(), RelayToken: secret.RelayToken(),
			Role: "viewer", Name: name, Created: time.Now(), Expires: time.Now().Add(time.Hour)}); err != nil {
			panic(err)
		}
		var id identity.ID
		binary.BigEndian.PutUint64(id[:], uint64(n)+1)
		if _, err := st.redeem(secret.Verifier(), id, time.Now()); err != nil {
			panic(err)
		}
		if n%3 == 0 {
			if err := st.revoke(id); err != nil {
				panic(err)
			}
		}
		fmt.Println(n)
	}
}

// readNext returns the number of the next operation recorded in dir.
func readNext(dir string) int {
	b, err := os.ReadFile(dir + "/next")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(string(b))
	return n
}

// TestStoreSurvivesKill: pairing and revoking while being killed with
// SIGKILL at random moments, the store always opens cleanly, and every user
// is wholly there or wholly absent, its invite spent exactly when it is.
func TestStoreSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a process many times")
	}
	if israce.Enabled {
		t.Skip("slow with the race detector; .ci/run runs it without")
	}
	dir := t.TempDir()
	ops, kills := 0, 0
	for ; ops < 200 || kills < 50; kills++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), tortureEnv+"="+dir)
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		if strings.Contains(out.String(), "panic") {
			t.Fatalf("child failed:\n%s", out)
		}

		st, err := openStore(dir)
		if err != nil {
			t.Fatalf("after kill %d: the store does not open: %v", kills, err)
		}
		users, invites, err := st.load()
		if err != nil {
			t.Fatalf("after kill %d: %v", kills, err)
		}
		inviteNames := make(map[string]bool)
		for _, in := range invites {
			inviteNames[in.Name] = true
		}
		for _, u := range users {
			if u.Name == "" || u.Role != "viewer" || u.Paired.IsZero() || u.ID.IsZero() {
				t.Fatalf("after kill %d: a partial user: %+v", kills, u)
			}
			if inviteNames[u.Name] {
				t.Fatalf("after kill %d: user %s is there and its invite too", kills, u.Name)
			}
		}
		// A kill interrupts at most one operation; every other one is
		// wholly there: its user (every third revoked within the same
		// operation). So no more users are missing than kills so far.
		next := readNext(dir)
		missing := 0
		for n := 0; n < next; n++ {
			var id identity.ID
			binary.BigEndian.PutUint64(id[:], uint64(n)+1)
			if _, there := users[id]; there == (n%3 == 0) {
				missing++
			}
		}
		if missing > kills+1 {
			t.Fatalf("after kill %d: %d operations lost", kills, missing)
		}
		maxN := next - 1
		ops = maxN + 1
		st.close()
	}
	t.Logf("%d pair/revoke operations, %d kills, the store intact after every one", ops, kills)
}

func TestRedeemErrors(t *testing.T) {
	st, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	s := pairing.NewSecret()
	st.addInvite(pendingInvite{Verifier: s.Verifier(), Role: "r", Expires: time.Now().Add(-time.Second)})
	var id identity.ID
	if _, err := st.redeem(s.Verifier(), id, time.Now()); !errors.Is(err, ErrInviteExpired) {
		t.Fatalf("expired: %v", err)
	}
	if _, err := st.redeem(pairing.NewSecret().Verifier(), id, time.Now()); !errors.Is(err, ErrInviteUnknown) {
		t.Fatalf("unknown: %v", err)
	}
	// A second process cannot open the store while this one has it.
	if _, err := openStore(strings.TrimSuffix(st.db.Path(), "/device.db")); !errors.Is(err, ErrStateBusy) {
		t.Fatalf("second open: %v", err)
	}
}

func TestPairGuard(t *testing.T) {
	var g pairGuard
	now := time.Unix(1000, 0)
	for range 4 {
		g.fail(now)
	}
	if g.check(now) != 0 {
		t.Fatal("locked after 4 failures")
	}
	g.fail(now)
	if d := g.check(now); d != 10*time.Second {
		t.Fatalf("after 5 failures: locked for %v, want 10s", d)
	}
	now = now.Add(11 * time.Second)
	if g.check(now) != 0 {
		t.Fatal("still locked after 10s")
	}
	for range 5 {
		g.fail(now)
	}
	if d := g.check(now); d != 20*time.Second {
		t.Fatalf("second lockout: %v, want 20s", d)
	}
	// Failures spread over more than a minute do not add up.
	var h pairGuard
	for i := range 10 {
		h.fail(now.Add(time.Duration(i) * 20 * time.Second))
	}
	if h.check(now.Add(200*time.Second)) != 0 {
		t.Fatal("slow failures locked pairing")
	}
}

// TestCancelInviteAfterRedeem: cancelling an invite a pairing has just
// redeemed reports that it was no longer there, so that the device does
// not say "cancelled" about an invite that made a user; one still pending
// is cancelled, and cannot be redeemed after.
func TestCancelInviteAfterRedeem(t *testing.T) {
	st, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	used, pending := pairing.NewSecret(), pairing.NewSecret()
	for _, s := range []pairing.Secret{used, pending} {
		if err := st.addInvite(pendingInvite{Verifier: s.Verifier(), Role: "viewer", Expires: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.redeem(used.Verifier(), identity.ID{1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if found, err := st.cancelInvite(used.Verifier()); err != nil || found {
		t.Errorf("cancel of a redeemed invite: found %v, %v; want not found", found, err)
	}
	if found, err := st.cancelInvite(pending.Verifier()); err != nil || !found {
		t.Errorf("cancel of a pending invite: found %v, %v; want found", found, err)
	}
	if _, err := st.redeem(pending.Verifier(), identity.ID{2}, time.Now()); !errors.Is(err, ErrInviteUnknown) {
		t.Errorf("redeem after cancel: %v, want ErrInviteUnknown", err)
	}
}
