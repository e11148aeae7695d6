package relay

import (
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// A Presence tells the relays of a fleet which of them holds each device,
// so that a relay asked for a device attached elsewhere can send the
// client there (package fleetstate keeps it in NATS JetStream). A relay
// of its own has none. Implementations are safe for concurrent use.
type Presence interface {
	// Attached records that the device id attached to this relay. It is
	// called on the attach path, so it returns at once: the record is
	// written in the background.
	Attached(id identity.ID)
	// Detached records that the device id left this relay, unless an
	// attach elsewhere has replaced the record since. It returns at once.
	Detached(id identity.ID)
	// Locate returns the relay holding the device id, if a live relay
	// (one whose liveness record has not expired) does. It is asked on
	// the forwarding path, so it answers from memory.
	Locate(id identity.ID) (relay identity.ID, ok bool)
}

// Moved detaches the device id, if it is attached here, because it
// attached to another relay of the fleet since: this attachment is stale
// (its relay lost the device without noticing, as when the network
// between them went dark).
func (s *Server) Moved(id identity.ID) {
	if d := s.routes.device(id); d != nil {
		s.log.Info("device attached to another relay of the fleet: dropping its session here", "id", id.String())
		d.goAway(relayproto.GoAway{Reason: relayproto.GoAwayReplaced, Message: "this device attached to another relay of the fleet"})
	}
}
