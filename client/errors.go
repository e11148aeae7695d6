package client

import (
	"errors"
	"fmt"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/session"
)

// ErrOffline is matched by every [*OfflineError].
var ErrOffline = errors.New("device offline")

// An OfflineError reports that the device is not attached to the relay.
type OfflineError struct {
	Device   identity.ID
	Relay    string
	LastSeen time.Time // zero if the relay does not know
}

func (e *OfflineError) Error() string {
	seen := ""
	if !e.LastSeen.IsZero() {
		seen = fmt.Sprintf(", last seen %s ago", time.Since(e.LastSeen).Round(time.Second))
	}
	return fmt.Sprintf("device %s is offline: it is not attached to relay %s%s", e.Device.Short(), e.Relay, seen)
}

// Is makes an OfflineError match [ErrOffline].
func (e *OfflineError) Is(target error) bool { return target == ErrOffline }

// A NotAllowedError reports that the relay does not route this client to
// the device, because the device has not allowed it: the relay enforces
// the device's own list. It matches [session.ErrNotAuthorized].
type NotAllowedError struct {
	Device identity.ID
	Relay  string
}

func (e *NotAllowedError) Error() string {
	return fmt.Sprintf("not authorized by the device: device %s has not allowed this client, so relay %s drops its packets; ask the device owner for an invite (burrow pair)",
		e.Device.Short(), e.Relay)
}

// Is makes a NotAllowedError match [session.ErrNotAuthorized].
func (e *NotAllowedError) Is(target error) bool { return target == session.ErrNotAuthorized }

// ErrUnreachable is matched by every [*UnreachableError].
var ErrUnreachable = errors.New("device unreachable")

// An UnreachableError reports that the relay does not route this client to
// the device and does not say why: the device is offline, or it has not
// allowed this client. A relay tells the difference (and when the device
// was last seen) only to clients the device allowed, so that a stranger
// learns nothing of it.
type UnreachableError struct {
	Device identity.ID
	Relay  string
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("device %s is unreachable through relay %s: it is offline, or it has not authorized this client (the relay does not say which to a client the device has not allowed). "+
		"If you paired with it, check that it runs and is attached (burrow device status) and that you were not revoked; if not, ask its owner for an invite (burrow pair)",
		e.Device.Short(), e.Relay)
}

// Is makes an UnreachableError match [ErrUnreachable].
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }
