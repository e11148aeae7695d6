package device

import (
	"time"

	"github.com/burrow-tunnel/burrow/identity"
)

// Guessing at invites. A pairing request carries a secret and names the
// invite it is for, by the invite's relay token. A wrong secret counts
// against the client that sent it and against the invite it names: 5
// within a minute lock that client, or that invite, for a while (see
// [pairGuard]). So a client's failures lock out only itself, and the
// invites whose relay tokens it knows: its own (whose secret it holds
// anyway) and, for the relay, any pending one (but the relay can drop any
// pairing's packets anyway). A client that guesses blind, as a paired user
// trying for a better role would, knows no other invite's relay token: its
// requests name no pending invite, and are refused without any secret
// being checked.
//
// The bound per invite holds however many keys the guessers make: an
// invite takes about 5 wrong secrets per 10 minutes once its lockouts have
// grown, some 5,000 over the longest invite life (7 days). Against a
// 128-bit secret that is a chance below 2^-115 of a hit; even unbounded,
// the relay could not test enough secrets to matter. The lock is a second
// line, and a signal: the owner is told when an invite is locked.
//
// The per-client records are capped (maxGuardedClients); past the cap, a
// new client's failures go uncounted, which costs nothing since only
// wrong secrets for a named pending invite are guesses, and those count
// against the invite. Pairing warnings are rate-limited device-wide, so a
// flood of refused requests does not flood the log.

// A pairGuard refuses pairing for a while after repeated failures: 5
// failures within a minute lock for 10 s, doubling with each lockout that
// follows within an hour (up to 10 minutes). Each client and each pending
// invite has one.
type pairGuard struct {
	failures    int
	firstFail   time.Time
	lockouts    int
	lastLockout time.Time
	lockedUntil time.Time
}

const (
	maxFailures   = 5
	failureWindow = time.Minute
	baseLockout   = 10 * time.Second
	maxLockout    = 10 * time.Minute
)

// check returns how long pairing stays refused, 0 if it is open.
func (g *pairGuard) check(now time.Time) time.Duration {
	if now.Before(g.lockedUntil) {
		return g.lockedUntil.Sub(now)
	}
	return 0
}

// fail records a failure, and reports whether it locked g.
func (g *pairGuard) fail(now time.Time) bool {
	if now.Sub(g.firstFail) > failureWindow {
		g.failures, g.firstFail = 0, now
	}
	g.failures++
	if g.failures < maxFailures {
		return false
	}
	if now.Sub(g.lastLockout) > time.Hour {
		g.lockouts = 0
	}
	lock := min(baseLockout<<g.lockouts, maxLockout)
	g.lockouts++
	g.lastLockout, g.lockedUntil = now, now.Add(lock)
	g.failures = 0
	return true
}

// idle reports whether g neither locks nor counts anything at now:
// forgetting it loses only the doubling of later lockouts.
func (g *pairGuard) idle(now time.Time) bool {
	return !now.Before(g.lockedUntil) && now.Sub(g.firstFail) > failureWindow
}

// maxGuardedClients caps the clients whose pairing failures are counted.
const maxGuardedClients = 1024

// pairGuards are the pairGuards of clients and of invites. The zero value
// is ready to use.
type pairGuards struct {
	clients map[identity.ID]*pairGuard
	invites map[[32]byte]*pairGuard // by relay token
}

// check returns how long a request from client for invite stays refused,
// and whether it is the invite (rather than the client) that is locked.
func (gs *pairGuards) check(client identity.ID, invite [32]byte, now time.Time) (time.Duration, bool) {
	if g := gs.clients[client]; g != nil {
		if wait := g.check(now); wait > 0 {
			return wait, false
		}
	}
	if g := gs.invites[invite]; g != nil {
		if wait := g.check(now); wait > 0 {
			return wait, true
		}
	}
	return 0, false
}

// fail records a failure of client, naming invite if it is pending (nil
// otherwise). It reports whether it locked the invite, and for how long.
func (gs *pairGuards) fail(client identity.ID, invite *[32]byte, now time.Time) (bool, time.Duration) {
	if g := gs.client(client, now); g != nil {
		g.fail(now)
	}
	if invite == nil {
		return false, 0
	}
	if gs.invites == nil {
		gs.invites = make(map[[32]byte]*pairGuard)
	}
	g := gs.invites[*invite]
	if g == nil {
		g = new(pairGuard)
		gs.invites[*invite] = g
	}
	if g.fail(now) {
		return true, g.check(now)
	}
	return false, 0
}

// client returns client's guard, making one if there is room; nil if
// there is none.
func (gs *pairGuards) client(id identity.ID, now time.Time) *pairGuard {
	if g := gs.clients[id]; g != nil {
		return g
	}
	if gs.clients == nil {
		gs.clients = make(map[identity.ID]*pairGuard)
	}
	if len(gs.clients) >= maxGuardedClients {
		gs.forgetIdle(now)
		if len(gs.clients) >= maxGuardedClients {
			return nil
		}
	}
	g := new(pairGuard)
	gs.clients[id] = g
	return g
}

// forgetIdle drops the guards of clients that are idle at now.
func (gs *pairGuards) forgetIdle(now time.Time) {
	for id, g := range gs.clients {
		if g.idle(now) {
			delete(gs.clients, id)
		}
	}
}

// forgetInvites drops the guards of invites that are no longer pending.
func (gs *pairGuards) forgetInvites(pending func([32]byte) bool) {
	for token := range gs.invites {
		if !pending(token) {
			delete(gs.invites, token)
		}
	}
}
