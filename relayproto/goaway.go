package relayproto

import (
	"encoding/binary"
	"fmt"
)

// GoAwayReason says why a relay sent go-away.
type GoAwayReason byte

// Go-away reasons.
const (
	GoAwayShutdown GoAwayReason = 1 // the relay is stopping
	GoAwayReplaced GoAwayReason = 2 // a newer session of the same device took over
	GoAwayIdle     GoAwayReason = 3 // the agent sent nothing for too long
	GoAwayRemoved  GoAwayReason = 4 // the operator no longer allows this agent
	// GoAwayUnused: no device attached to the relay allows this client
	// (its access list does not name it, and no pair intent of the client
	// matches a pending invite). The client reattaches once it has
	// something to send, or after RetryAfterMillis.
	GoAwayUnused GoAwayReason = 5
)

func (g GoAwayReason) String() string {
	switch g {
	case GoAwayShutdown:
		return "relay shutting down"
	case GoAwayReplaced:
		return "replaced by a newer session"
	case GoAwayIdle:
		return "idle"
	case GoAwayRemoved:
		return "removed"
	case GoAwayUnused:
		return "no device here allows this client"
	}
	return fmt.Sprintf("go-away-%d", byte(g))
}

// GoAway tells an agent the relay is closing its session.
type GoAway struct {
	Reason           GoAwayReason
	RetryAfterMillis uint32
	Message          string
}

// AppendGoAway appends the payload of a go-away frame.
func AppendGoAway(b []byte, f GoAway) []byte {
	b = binary.BigEndian.AppendUint32(append(b, byte(f.Reason)), f.RetryAfterMillis)
	return appendMessage(b, f.Message)
}

// ParseGoAway parses the payload of a go-away frame.
func ParseGoAway(p []byte) (GoAway, error) {
	r := reader{b: p}
	f := GoAway{Reason: GoAwayReason(r.u8()), RetryAfterMillis: r.u32()}
	f.Message = parseMessage(&r)
	return f, r.done()
}

// Drain tells an agent the relay is draining: its session goes on, and the
// relay closes it within WithinMillis (0 if the relay did not say).
type Drain struct {
	WithinMillis uint32
	Message      string
}

// AppendDrain appends the payload of a drain frame.
func AppendDrain(b []byte, f Drain) []byte {
	return appendMessage(binary.BigEndian.AppendUint32(b, f.WithinMillis), f.Message)
}

// ParseDrain parses the payload of a drain frame.
func ParseDrain(p []byte) (Drain, error) {
	r := reader{b: p}
	f := Drain{WithinMillis: r.u32()}
	f.Message = parseMessage(&r)
	return f, r.done()
}
