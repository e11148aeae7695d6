package client

import (
	"context"
	"errors"
	"fmt"
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
	rep, err := s.Pair(ctx, inv.Secret.RelayToken(), inv.Secret[:])
	if err != nil {
		return Paired{}, err
	}
	c.log.Info("paired", "device", inv.Device.String(), "role", rep.Detail)
	return Paired{Device: inv.Device, Role: rep.Detail, Services: rep.Allowed}, nil
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
