package device

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ErrUnknownInvite: no pending invite has the ID given.
var ErrUnknownInvite = errors.New("no such pending invite")

// PendingInvite describes an invite waiting for its client, without its
// secret: enough for the owner to recognise it and cancel it.
type PendingInvite struct {
	// ID names the invite for CancelInvite: 8 hex digits derived from
	// the secret's verifier, which is all the device keeps of it.
	ID      string    `json:"id"`
	Role    string    `json:"role"`
	Name    string    `json:"name,omitempty"` // the user's name once paired; "" for user-<short ID>
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	// UsesLeft is how many clients may still pair with it: an invite is
	// single-use, so this is 1 while it is pending.
	UsesLeft int `json:"uses_left"`
}

// inviteID is the ID of the invite whose secret has verifier v. It says
// nothing of the secret that v does not, and the relay never sees v (it
// knows the invite by its relay token).
func inviteID(v [32]byte) string { return hex.EncodeToString(v[:4]) }

func (in pendingInvite) describe() PendingInvite {
	return PendingInvite{ID: inviteID(in.Verifier), Role: in.Role, Name: in.Name,
		Created: in.Created, Expires: in.Expires, UsesLeft: 1}
}

// Invites returns the pending invites that have not expired, the one
// that expires first first.
func (d *Device) Invites() []PendingInvite {
	now := time.Now()
	d.mu.Lock()
	var out []PendingInvite
	for _, in := range d.invites {
		if now.Before(in.Expires) {
			out = append(out, in.describe())
		}
	}
	d.mu.Unlock()
	slices.SortFunc(out, func(a, b PendingInvite) int {
		if c := a.Expires.Compare(b.Expires); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// CancelInvite cancels the pending invite with this ID (see
// [PendingInvite.ID]): it is removed from the state directory, and the
// relay is told at once that it no longer admits clients pairing with
// it; a client presenting it later is refused as for a used invite.
func (d *Device) CancelInvite(id string) (PendingInvite, error) {
	if d.st == nil {
		return PendingInvite{}, ErrNoState
	}
	id = strings.ToLower(strings.TrimSpace(id))
	d.mu.Lock()
	var found *pendingInvite
	for _, in := range d.invites {
		if inviteID(in.Verifier) == id {
			found = &in
			break
		}
	}
	d.mu.Unlock()
	if found == nil {
		return PendingInvite{}, fmt.Errorf("%w %q: burrow device invites lists them", ErrUnknownInvite, id)
	}
	pending, err := d.st.cancelInvite(found.Verifier)
	if err != nil {
		return PendingInvite{}, fmt.Errorf("cannot cancel invite %s: %w", id, err)
	}
	if !pending {
		// Redeemed between the look-up and the delete: cancelling is
		// too late, and saying it worked would hide a new user.
		return PendingInvite{}, fmt.Errorf("%w: invite %s was used a moment ago: see burrow device users, and burrow device revoke NAME to undo it", ErrUnknownInvite, id)
	}
	d.mu.Lock()
	delete(d.invites, found.Verifier)
	delete(d.guards.invites, found.RelayToken)
	d.mu.Unlock()
	d.agent.Paths().AccessChanged()
	d.log.Info("invite cancelled", "invite", id, "role", found.Role, "name", found.Name)
	return found.describe(), nil
}
