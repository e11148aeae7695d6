package device

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/session"
)

// Pairing: the device owner makes an invite (Invite); a client presents its
// secret inside an E2E session (pair); the device adds the client with the
// invite's role, in the same transaction that spends the invite. The secret
// itself is never stored or logged: the store keeps its verifier, the relay
// is told its relay token.

// Limits on invites.
const (
	DefaultInviteTTL = 15 * time.Minute
	MaxInviteTTL     = 7 * 24 * time.Hour
	maxPending       = 100 // pending invites at once
)

// Errors of invites, users and revocation, matched with errors.Is.
var (
	ErrNoState        = errors.New("pairing needs a state directory (state in the config file)")
	ErrUnknownRole    = errors.New("unknown role")
	ErrUnknownUser    = errors.New("no such paired user")
	ErrConfigUser     = errors.New("user is defined in the config file")
	ErrTooManyInvites = errors.New("too many pending invites")
)

// Invite makes a single-use invite for a client with role, valid for ttl
// (0: DefaultInviteTTL). name, if set, is the user's name once paired.
func (d *Device) Invite(role string, ttl time.Duration, name string) (pairing.Invite, error) {
	if d.st == nil {
		return pairing.Invite{}, ErrNoState
	}
	if role == "" {
		roles := slices.Sorted(maps.Keys(d.policy().Roles))
		if len(roles) != 1 {
			return pairing.Invite{}, fmt.Errorf("%w: choose one with --role (defined: %s)", ErrUnknownRole, strings.Join(roles, ", "))
		}
		role = roles[0]
	}
	if _, ok := d.policy().Roles[role]; !ok {
		return pairing.Invite{}, fmt.Errorf("%w %q (defined in the config file: %s)", ErrUnknownRole, role, joinSorted(slices.Collect(maps.Keys(d.policy().Roles))))
	}
	if ttl == 0 {
		ttl = DefaultInviteTTL
	}
	if ttl < 0 || ttl > MaxInviteTTL {
		return pairing.Invite{}, fmt.Errorf("invite lifetime %v: want up to %v", ttl, MaxInviteTTL)
	}
	if name != "" {
		if err := pairing.ValidName(name); err != nil {
			return pairing.Invite{}, err
		}
	}
	now := time.Now()
	secret := pairing.NewSecret()
	in := pendingInvite{
		Verifier:   secret.Verifier(),
		RelayToken: secret.RelayToken(),
		Role:       role,
		Name:       name,
		Created:    now.UTC(),
		Expires:    now.Add(ttl).UTC(),
	}
	d.mu.Lock()
	if len(d.invites) >= maxPending {
		d.mu.Unlock()
		return pairing.Invite{}, fmt.Errorf("%w (%d): let some expire first", ErrTooManyInvites, maxPending)
	}
	d.mu.Unlock()
	if err := d.st.addInvite(in); err != nil {
		return pairing.Invite{}, fmt.Errorf("cannot save the invite: %w", err)
	}
	d.mu.Lock()
	d.invites[in.Verifier] = in
	d.mu.Unlock()
	d.agent.Paths().AccessChanged()
	d.log.Info("invite made", "role", role, "name", name, "expires", in.Expires.Format(time.RFC3339))
	return pairing.Invite{
		Device:  d.ID(),
		Relay:   d.cfg.Relay.Addr,
		RelayID: d.cfg.Relay.ID,
		Secret:  secret,
		Expires: in.Expires.Truncate(time.Second),
		Name:    d.cfg.Name,
	}, nil
}

// Users returns the clients the device lets in: those of the config file
// and those that paired, by name.
func (d *Device) Users() []User {
	d.mu.Lock()
	users := slices.Collect(maps.Values(d.users))
	d.mu.Unlock()
	for id, svcs := range d.policy().Clients {
		users = append(users, User{ID: id, Name: "config-" + id.Short(), Services: svcs, FromConfig: true})
	}
	slices.SortFunc(users, func(a, b User) int { return strings.Compare(a.Name, b.Name) })
	return users
}

// Revoke removes the paired user named by name or ID: its sessions and
// tunnels close at once, the relay stops routing it, and it cannot come
// back without a new invite.
//
// A revocation takes effect even when the state directory cannot be
// written: the user is shut out at once, and the error (matching
// [ErrRevocationNotSaved] and the [*StateError]) says that it is not saved
// yet. The device saves it as soon as it can; until then, a restart of the
// agent would let the user in again.
func (d *Device) Revoke(nameOrID string) (User, error) {
	if d.st == nil {
		return User{}, ErrNoState
	}
	d.revokeMu.Lock()
	defer d.revokeMu.Unlock()
	d.mu.Lock()
	u, found := d.findUserLocked(nameOrID, d.users)
	if !found {
		// Revoked already, but not saved: try again.
		u, found = d.findUserLocked(nameOrID, d.unsaved)
	}
	d.mu.Unlock()
	if !found {
		if id, err := identity.ParseID(nameOrID); err == nil {
			if _, ok := d.policy().Clients[id]; ok {
				return User{}, fmt.Errorf("%w: remove it from clients there", ErrConfigUser)
			}
		}
		return User{}, fmt.Errorf("%w %q", ErrUnknownUser, nameOrID)
	}
	err := d.st.revoke(u.ID)
	serr, unwritable := errors.AsType[*StateError](err)
	if err != nil && !unwritable {
		return User{}, fmt.Errorf("cannot revoke %s: %w", u.Name, err)
	}
	d.mu.Lock()
	delete(d.users, u.ID)
	if unwritable {
		d.unsaved[u.ID] = u
	} else {
		delete(d.unsaved, u.ID)
	}
	d.mu.Unlock()
	d.agent.Paths().AccessChanged()
	if _, still := d.policy().Clients[u.ID]; !still {
		d.closeSessionsOf(u.ID, session.CloseRevoked, "access revoked by the device owner")
	}
	if unwritable {
		err := &unsavedError{name: u.Name, err: serr}
		d.log.Error("user revoked, but the revocation is not saved", "name", u.Name, "client", u.ID.String(), "err", serr)
		return u, err
	}
	d.log.Info("user revoked", "name", u.Name, "client", u.ID.String())
	return u, nil
}

// findUserLocked finds the user named by name or ID in users.
func (d *Device) findUserLocked(nameOrID string, users map[identity.ID]User) (User, bool) {
	for _, u := range users {
		if u.Name == nameOrID || u.ID.String() == strings.ToLower(nameOrID) {
			return u, true
		}
	}
	return User{}, false
}

// ErrRevocationNotSaved: a revocation is in force but is not saved yet,
// the state directory not being writable.
var ErrRevocationNotSaved = errors.New("revocation not saved")

// An unsavedError reports a revocation in force but not saved.
type unsavedError struct {
	name string
	err  *StateError
}

func (e *unsavedError) Error() string {
	msg := fmt.Sprintf("%s is revoked: its sessions are closed and it is refused from now on; but the revocation is not saved, as %s", e.name, e.err.problem())
	if fix := e.err.fix(); fix != "" {
		msg += ": " + fix
	}
	return msg + fmt.Sprintf(". The device saves it as soon as it can (it tries every %s); a restart before that would let %s in again", sweepEvery, e.name)
}

func (e *unsavedError) Unwrap() []error { return []error{ErrRevocationNotSaved, e.err} }

// saveRevocations tries again to save the revocations not saved yet.
func (d *Device) saveRevocations() {
	d.mu.Lock()
	none := len(d.unsaved) == 0
	d.mu.Unlock()
	if none {
		return
	}
	d.revokeMu.Lock()
	defer d.revokeMu.Unlock()
	d.mu.Lock()
	pending := slices.Collect(maps.Values(d.unsaved))
	d.mu.Unlock()
	for _, u := range pending {
		if err := d.st.revoke(u.ID); err != nil {
			return // still not writable; the error was logged at the revocation
		}
		d.mu.Lock()
		delete(d.unsaved, u.ID)
		d.mu.Unlock()
		d.log.Info("revocation saved", "name", u.Name, "client", u.ID.String())
	}
}

// pairable reports whether an unknown client may keep a session, to pair:
// only while invites are pending.
func (d *Device) pairable() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	for _, in := range d.invites {
		if now.Before(in.Expires) {
			return true
		}
	}
	return false
}

// pair answers a pairing request on stream in.
func (d *Device) pair(s *session.Session, in *session.Incoming, req session.Request, log *slog.Logger) {
	client := s.PeerID()
	now := time.Now()
	if req.Invite == ([32]byte{}) {
		// No secret is checked: nothing to count.
		d.refusalWarn(log, "pairing refused: the request names no invite (an older client)")
		d.counters.pairRefused.Add(1)
		in.Answer(session.Reply{Code: session.CodeBadRequest,
			Detail: "the pairing request names no invite: update burrow on this client"})
		return
	}
	d.mu.Lock()
	wait, inviteLocked := d.guards.check(client, req.Invite, now)
	var inv pendingInvite
	found := false
	if wait == 0 {
		inv, found = d.inviteLocked(req.Invite)
	}
	d.mu.Unlock()
	switch {
	case wait > 0 && inviteLocked:
		// Refused without looking at the secret.
		d.refusalWarn(log, "pairing refused: the invite it names is locked after wrong secrets", "retry_in", wait.Round(time.Second).String())
		d.counters.pairRefused.Add(1)
		in.Answer(session.Reply{Code: session.CodeRateLimited,
			Detail: fmt.Sprintf("too many wrong secrets for this invite; try again in %s", wait.Round(time.Second))})
		return
	case wait > 0:
		d.refusalWarn(log, "pairing refused: too many failed attempts from this client", "retry_in", wait.Round(time.Second).String())
		d.counters.pairRefused.Add(1)
		in.Answer(session.Reply{Code: session.CodeRateLimited,
			Detail: fmt.Sprintf("too many failed pairing attempts; try again in %s", wait.Round(time.Second))})
		return
	case !found:
		// Not a guess at any invite: no secret was checked.
		d.pairFailed(client, nil, inv, now, log)
		d.refusalWarn(log, "pairing refused: invite unknown or already used")
		d.counters.pairRefused.Add(1)
		in.Answer(session.Reply{Code: session.CodeNotAuthorized, Detail: "invite unknown or already used: ask the device owner for a new one"})
		return
	case now.After(inv.Expires):
		log.Warn("pairing refused: invite expired")
		d.counters.pairRefused.Add(1)
		in.Answer(session.Reply{Code: session.CodeNotAuthorized, Detail: "invite expired: ask the device owner for a new one"})
		return
	case len(req.Secret) != pairing.SecretLen || !pairing.Secret(req.Secret).Matches(inv.Verifier):
		// A guess: whoever sent it knows the invite's relay token.
		d.pairFailed(client, &req.Invite, inv, now, log)
		d.refusalWarn(log, "pairing refused: wrong secret for a pending invite", "invite_name", inv.Name, "role", inv.Role)
		d.counters.pairRefused.Add(1)
		in.Answer(session.Reply{Code: session.CodeNotAuthorized, Detail: "invite unknown or already used: ask the device owner for a new one"})
		return
	}
	// A revocation of this client waiting to be saved must not delete the
	// new pairing: pairing again overrides it.
	d.revokeMu.Lock()
	r, err := d.st.redeem(inv.Verifier, client, now)
	if err == nil {
		d.mu.Lock()
		delete(d.unsaved, client)
		d.mu.Unlock()
	}
	d.revokeMu.Unlock()
	switch {
	case errors.Is(err, ErrInviteExpired):
		log.Warn("pairing refused: invite expired")
		d.counters.pairRefused.Add(1)
		in.Answer(session.Reply{Code: session.CodeNotAuthorized, Detail: "invite expired: ask the device owner for a new one"})
		return
	case errors.Is(err, ErrInviteUnknown):
		// The right secret, spent a moment ago by another client.
		log.Warn("pairing refused: invite already used")
		d.counters.pairRefused.Add(1)
		in.Answer(session.Reply{Code: session.CodeNotAuthorized, Detail: "invite unknown or already used: ask the device owner for a new one"})
		return
	case err != nil:
		// The invite is not spent: the client may use it again.
		log.Error("pairing failed: cannot save it", "err", err)
		detail := "the device could not store the pairing; the invite stays valid: use it again later"
		if serr, ok := errors.AsType[*StateError](err); ok {
			detail = serr.clientDetail()
		}
		d.counters.pairFailed.Add(1)
		in.Answer(session.Reply{Code: session.CodeUnavailable, Detail: detail})
		return
	}
	d.mu.Lock()
	delete(d.invites, inv.Verifier)
	delete(d.guards.invites, req.Invite)
	d.users[client] = r.User
	d.mu.Unlock()
	d.agent.Paths().AccessChanged()
	svcs := slices.DeleteFunc(slices.Clone(d.policy().Roles[r.Role]), func(s string) bool { return s == AllServices })
	if slices.Contains(d.policy().Roles[r.Role], AllServices) {
		svcs = d.serviceNames()
	}
	logPaired(log, r)
	info := session.PairInfo{User: r.Name, Asked: r.Asked}
	if r.Was != nil {
		info.WasRole, info.WasName = r.Was.Role, r.Was.Name
	}
	d.counters.pairOK.Add(1)
	in.AnswerPair(session.Reply{Code: session.CodeOK, Detail: r.Role, Allowed: svcs}, info)
}

// logPaired logs a pairing, saying what it changed: a client paired
// already may have got another role or name, and a name the invite asked
// for may have been another user's.
func logPaired(log *slog.Logger, r redeemed) {
	args := []any{"name", r.Name, "role", r.Role}
	var changes []string
	if r.Was != nil {
		args = append(args, "was_name", r.Was.Name, "was_role", r.Was.Role)
		if r.Was.Role != r.Role {
			changes = append(changes, fmt.Sprintf("its role changed from %s to %s", r.Was.Role, r.Role))
		}
		if r.Was.Name != r.Name {
			changes = append(changes, fmt.Sprintf("renamed from %s to %s", r.Was.Name, r.Name))
		}
	}
	if r.Asked != "" {
		args = append(args, "asked_name", r.Asked)
		changes = append(changes, fmt.Sprintf("the name %s the invite asked for is another user's, so it is %s", r.Asked, r.Name))
	}
	switch {
	case len(changes) > 0 && r.Was != nil:
		log.Warn("client paired again: "+strings.Join(changes, "; "), args...)
	case len(changes) > 0:
		log.Warn("client paired: "+strings.Join(changes, "; "), args...)
	case r.Was != nil:
		log.Info("client paired again: nothing changed", args...)
	default:
		log.Info("client paired", args...)
	}
}

// inviteLocked returns the pending invite whose relay token is token.
func (d *Device) inviteLocked(token [32]byte) (pendingInvite, bool) {
	for _, in := range d.invites {
		if in.RelayToken == token {
			return in, true
		}
	}
	return pendingInvite{}, false
}

// pairFailed records a failed pairing of client; invite, if not nil, is
// the relay token of the pending invite in it named. The owner is told
// when an invite is locked.
func (d *Device) pairFailed(client identity.ID, invite *[32]byte, in pendingInvite, now time.Time, log *slog.Logger) {
	d.mu.Lock()
	locked, wait := d.guards.fail(client, invite, now)
	d.mu.Unlock()
	if locked {
		log.Warn("invite locked: someone who knows its relay token (the relay, or whoever has the invite) sent wrong secrets for it",
			"invite_name", in.Name, "role", in.Role, "made", in.Created.Format(time.RFC3339), "locked_for", wait.String(),
			"fix", "if the person you invited cannot pair, make them a new invite, and look into the relay")
	}
}

// Pairing warnings: at most pairLogRate per second, in bursts of
// pairLogBurst, device-wide; the next one logged says how many were not.
const (
	pairLogRate  = 1
	pairLogBurst = 20
)

// refusalWarn logs a refusal (of a pairing, or of a session from an unknown
// client), unless too many came too fast: strangers must not flood the log.
func (d *Device) refusalWarn(log *slog.Logger, msg string, args ...any) {
	d.mu.Lock()
	ok := d.pairLog.Allow()
	skipped := d.pairLogSkipped
	if ok {
		d.pairLogSkipped = 0
	} else {
		d.pairLogSkipped++
	}
	d.mu.Unlock()
	if !ok {
		return
	}
	if skipped > 0 {
		args = append(args, "refusals_not_logged", skipped)
	}
	log.Warn(msg, args...)
}

// sweepEvery is how often expired invites are dropped, and revocations not
// saved are tried again.
const sweepEvery = 10 * time.Second

// sweep drops expired invites, from the store and the relay, and saves the
// revocations not saved yet.
func (d *Device) sweep() {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case now := <-t.C:
			d.saveRevocations()
			d.mu.Lock()
			var gone [][32]byte
			for v, in := range d.invites {
				if now.After(in.Expires) {
					gone = append(gone, v)
					delete(d.invites, v)
				}
			}
			d.guards.forgetInvites(func(token [32]byte) bool {
				_, ok := d.inviteLocked(token)
				return ok
			})
			d.guards.forgetIdle(now)
			d.mu.Unlock()
			if len(gone) == 0 {
				continue
			}
			if d.st != nil {
				if err := d.st.dropInvites(gone); err != nil {
					d.log.Warn("dropping expired invites failed", "err", err)
				}
			}
			d.agent.Paths().AccessChanged()
		}
	}
}
