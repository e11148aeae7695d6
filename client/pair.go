package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/session"
)

// Paired is what pairing granted.
type Paired struct {
	Device   identity.ID
	Role     string
	Services []string
	// User is the name the device knows this client by; "" if the device
	// does not say (an older one).
	User string
	// Asked is the name the invite asked for, when another user of the
	// device had it and the device named this client User instead; ""
	// otherwise.
	Asked string
	// WasRole and WasName are this client's role and name on the device
	// before this pairing, when it was paired with it already; "" when
	// it was not (or the device does not say).
	WasRole, WasName string
}

// Again reports whether the client was paired with the device already.
func (p Paired) Again() bool { return p.WasRole != "" || p.WasName != "" }

// Notes says, one sentence each, what pairing changed that the user may
// not expect: another role or name than before, or another name than the
// invite's. None if nothing did.
func (p Paired) Notes() []string {
	var notes []string
	if p.Again() {
		switch {
		case p.WasRole != p.Role:
			notes = append(notes, fmt.Sprintf("you were paired with this device already, as %s: you are now %s", p.WasRole, p.Role))
		case p.WasName == p.User:
			notes = append(notes, fmt.Sprintf("you were paired with this device already, as %s: nothing changed", p.Role))
		}
		if p.WasName != p.User && p.User != "" {
			notes = append(notes, fmt.Sprintf("the device called you %s: it now calls you %s", p.WasName, p.User))
		}
	}
	if p.Asked != "" && p.User != "" {
		notes = append(notes, fmt.Sprintf("the name %s was taken by another user of the device: it calls you %s", p.Asked, p.User))
	}
	return notes
}

// Pair pairs this client with the device of inv: it tells the relay it
// holds an invite (by the invite's relay token), opens a session to the
// device pinning the invite's device ID, and proves the secret inside it.
// A device that proves another key fails with a key mismatch before the
// secret is sent. The client must be attached to the invite's relay.
func (c *Client) Pair(ctx context.Context, inv pairing.Invite) (Paired, error) {
	if inv.Relay != c.cfg.Relay.Addr || (!inv.RelayID.IsZero() && inv.RelayID != c.cfg.Relay.ID) {
		return Paired{}, fmt.Errorf("the invite is for relay %s, this client uses %s", inv.Relay, c.cfg.Relay.Addr)
	}
	if time.Now().After(inv.Expires) {
		return Paired{}, fmt.Errorf("the invite expired at %s: ask the device owner for a new one", inv.Expires.Local().Format(time.DateTime))
	}
	c.agent.Paths().SetPairIntent(inv.Device, inv.Secret.RelayToken())
	defer c.agent.Paths().ClearPairIntent(inv.Device)
	s, err := c.pairSession(ctx, inv.Device)
	if err != nil {
		if _, ok := errors.AsType[*NotAllowedError](err); ok {
			return Paired{}, fmt.Errorf("device %s has no pending invite with this secret at relay %s: it expired, was used, or was never made by this device", inv.Device.Short(), inv.Relay)
		}
		if _, ok := errors.AsType[*UnreachableError](err); ok {
			return Paired{}, fmt.Errorf("%w: device %s is offline, or has no pending invite with this secret at relay %s (it expired, was used, or was never made by this device); the relay does not say which",
				ErrUnreachable, inv.Device.Short(), inv.Relay)
		}
		return Paired{}, err
	}
	rep, info, err := s.Pair(ctx, inv.Secret.RelayToken(), inv.Secret[:])
	if err != nil {
		return Paired{}, err
	}
	p := Paired{Device: inv.Device, Role: rep.Detail, Services: rep.Allowed,
		User: info.User, Asked: info.Asked, WasRole: info.WasRole, WasName: info.WasName}
	args := []any{"device", inv.Device.String(), "role", p.Role, "user", p.User}
	if notes := p.Notes(); len(notes) > 0 {
		args = append(args, "changes", strings.Join(notes, "; "))
	}
	c.log.Info("paired", args...)
	return p, nil
}

// inviteLag is how long Pair keeps trying a device that the relay says it
// may not reach: an invite made a moment ago travels to the relay on the
// device's own link, and may arrive after this client's first packets.
const inviteLag = 2 * time.Second

// pairSession opens a session to device for pairing, trying again for up
// to inviteLag while the relay does not route this client to it.
func (c *Client) pairSession(ctx context.Context, device identity.ID) (*session.Session, error) {
	deadline := time.Now().Add(inviteLag)
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, 400*time.Millisecond) {
		s, _, err := c.session(ctx, device)
		_, notAllowed := errors.AsType[*NotAllowedError](err)
		_, unreachable := errors.AsType[*UnreachableError](err)
		if err == nil || !notAllowed && !unreachable || time.Now().Add(wait).After(deadline) {
			return s, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
	}
}
