// Package relaylink is an agent's link to its relay: one TLS connection,
// upgraded from HTTP, over which the agent proves its key and then sends
// and receives the frames of relayproto.
//
// A [Link] is one such connection. [Dial] opens it: TCP, TLS with the
// relay's certificate checked against a pinned relay ID, a pinned fleet ID
// (the relay shows the fleet's signed map: package fleet) or a trusted
// root ([RelayConfig]), the HTTP upgrade, and the hello/challenge exchange,
// with the agent's state (a device's access list, a client's pairing
// intents: [State]) sent right behind the hello. [Link.Read] returns what
// the relay sends as typed messages ([*Packet], [relayproto.PeerGone],
// [relayproto.Redirect], [relayproto.Drain], [relayproto.GoAway], [Pong])
// and answers its pings; a write loop sends what is queued in batches, one
// TLS record for a burst of packets, pings the relay every keepalive
// interval, and ends a Link whose relay went silent while packets were
// moving within seconds ([ErrSilent], silence.go).
//
// An [Attacher] keeps an agent attached: it dials, serves the Link until
// it ends, and dials again with backoff, spread after a relay crash, or
// only on demand after the relay closed an unused client. Given several
// relays, or once a relay pinned by its fleet's ID has shown the fleet
// map ([Link.FleetMap]), it moves between them: the next one at once when
// one goes down, home (the first of [fleet.Order]) when it can. It lives
// here, beside the Link, rather than in the path layer, because everything
// it decides is about the relay: when to dial again and which relay, what
// the relay said on leaving (go-away, drain), which state to send again
// at every attach and when the enrollment token is no longer presented.
// The path layer above gives it packets to send and takes the packets it
// delivers, and knows nothing of frames, handshakes or retries.
//
// This package carries opaque packets: it never imports the path layer,
// the end-to-end session or QUIC, and holds no key that could read what
// the packets carry. Of burrow it imports only identity, fleet,
// relayproto and internal/backoff.
package relaylink

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// RelayConfig says which relay an agent attaches to and how it checks it.
type RelayConfig struct {
	// Addr is the relay's host:port. Required.
	Addr string
	// ID pins the relay's key: the relay must present, in the TLS
	// handshake, a certificate whose key has this ID, whoever signed it
	// (RootCAs are not used). ID may instead be a fleet's ID: then the
	// relay's certificate must carry the fleet map signed by the key with
	// this ID and listing the certificate's key (see package fleet). If
	// zero, the relay's certificate must chain to a trusted root for
	// Addr's host instead (RootCAs).
	ID identity.ID
	// RootCAs are the roots a CA-signed relay certificate is checked
	// against when ID is zero; nil means the system roots.
	RootCAs *x509.CertPool
}

// An AttachRefusedError is the relay's refusal of this agent, in answer to
// its hello.
type AttachRefusedError struct {
	Relay string
	relayproto.Refuse
}

func (e *AttachRefusedError) Error() string {
	return fmt.Sprintf("relay %s refused this agent (%s): %s", e.Relay, e.Code, e.Message)
}

// An UntrustedRelayError reports a relay certificate that is neither pinned
// nor signed by a trusted authority.
type UntrustedRelayError struct {
	Relay string
	Err   error
}

func (e *UntrustedRelayError) Error() string {
	return fmt.Sprintf("relay %s: certificate not trusted (%v): pin the relay with its ID (relay_id, --relay-id)", e.Relay, e.Err)
}

func (e *UntrustedRelayError) Unwrap() error { return e.Err }

var (
	// ErrIdle ends a Link on which the relay sent nothing, not even a
	// ping, for 3 keepalive intervals: the network went dark.
	ErrIdle = errors.New("relay sent nothing for 3 keepalive intervals")
	// ErrClosed is returned by a closed [Attacher]'s WaitAttached and a
	// closed [Link]'s Read; it matches net.ErrClosed.
	ErrClosed = fmt.Errorf("relaylink: %w", net.ErrClosed)

	errStateNotSent = errors.New("could not send the access list to the relay: its session is stalled")
)

// isPermanent reports whether err is an attach failure that retrying alone
// will not fix: someone has to change a configuration somewhere. A relay
// that is overloaded, shutting down (draining) or holding as many sessions
// from this address as it takes refuses only for now; so does a fleet
// relay showing a map older than one this agent has seen, which may only
// be slow to pick up the new map.
func isPermanent(err error) bool {
	if _, ok := errors.AsType[*fleet.RollbackError](err); ok {
		return false
	}
	if refused, ok := errors.AsType[*AttachRefusedError](err); ok {
		switch refused.Code {
		case relayproto.RefuseOverloaded, relayproto.RefuseShuttingDown, relayproto.RefuseTooMany:
			return false
		}
		return true
	}
	var untrusted *UntrustedRelayError
	return errors.Is(err, identity.ErrKeyMismatch) || errors.Is(err, fleet.ErrRefused) || errors.As(err, &untrusted)
}
