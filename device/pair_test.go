package device

import (
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
)

// TestPairGuards: failures lock the client that made them and the invite
// they named, nothing else; the per-client records stay within their cap.
func TestPairGuards(t *testing.T) {
	var gs pairGuards
	now := time.Unix(1000, 0)
	client := func(n int) identity.ID { return identity.ID{byte(n), byte(n >> 8), 1} }
	mallory, alice := client(1), client(2)
	invite, other := [32]byte{1}, [32]byte{2}

	// A client guessing blind (naming no pending invite) locks itself.
	for range maxFailures {
		gs.fail(mallory, nil, now)
	}
	if wait, inv := gs.check(mallory, invite, now); wait != baseLockout || inv {
		t.Fatalf("mallory after %d failures: locked for %v (invite locked: %v), want %v", maxFailures, wait, inv, baseLockout)
	}
	if wait, _ := gs.check(alice, invite, now); wait != 0 {
		t.Fatalf("alice locked out for %v by mallory's failures", wait)
	}

	// Wrong secrets for one invite, each from a new key, lock that
	// invite for everyone, and no other.
	for i := range maxFailures {
		locked, wait := gs.fail(client(100+i), &invite, now)
		if locked != (i == maxFailures-1) || locked && wait != baseLockout {
			t.Fatalf("failure %d for the invite: locked %v for %v", i+1, locked, wait)
		}
	}
	if wait, inv := gs.check(alice, invite, now); wait != baseLockout || !inv {
		t.Fatalf("alice with the guessed invite: locked for %v (invite locked: %v), want %v", wait, inv, baseLockout)
	}
	if wait, _ := gs.check(alice, other, now); wait != 0 {
		t.Fatalf("another invite locked for %v", wait)
	}
	gs.forgetInvites(func(token [32]byte) bool { return token != invite })
	if wait, _ := gs.check(alice, invite, now); wait != 0 {
		t.Fatal("the guard of an invite no longer pending was kept")
	}

	// The per-client records are capped: past the cap, a new client's
	// failures are not counted; once old records are idle they make room.
	for i := range maxGuardedClients {
		gs.fail(client(2000+i), nil, now)
	}
	if n := len(gs.clients); n != maxGuardedClients {
		t.Fatalf("%d client records, want the cap %d", n, maxGuardedClients)
	}
	for range maxFailures {
		gs.fail(client(9998), nil, now)
	}
	if _, kept := gs.clients[client(9998)]; kept || len(gs.clients) != maxGuardedClients {
		t.Fatalf("a client past the cap was recorded (%d records)", len(gs.clients))
	}
	later := now.Add(failureWindow + time.Second)
	gs.fail(client(9999), nil, later)
	if n := len(gs.clients); n != 1 {
		t.Fatalf("%d client records after the others went idle, want 1", n)
	}
}
