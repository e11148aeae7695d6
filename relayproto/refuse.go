package relayproto

import "fmt"

// RefuseCode says why a relay refused an agent.
type RefuseCode byte

// Refuse codes.
const (
	RefuseVersion      RefuseCode = 1 // no common protocol version
	RefuseAuth         RefuseCode = 2 // the hello did not prove a key
	RefuseNotAllowed   RefuseCode = 3 // this device may not attach here
	RefuseBadRole      RefuseCode = 4 // unknown role
	RefuseOverloaded   RefuseCode = 5 // try again later
	RefuseShuttingDown RefuseCode = 6 // relay is shutting down
	// RefuseTooMany: the agent's address (an IPv6 /64) holds as many
	// sessions of its role as the relay allows one address; try again
	// once one of them has ended.
	RefuseTooMany RefuseCode = 7
)

func (c RefuseCode) String() string {
	switch c {
	case RefuseVersion:
		return "unsupported version"
	case RefuseAuth:
		return "authentication failed"
	case RefuseNotAllowed:
		return "not allowed"
	case RefuseBadRole:
		return "unknown role"
	case RefuseOverloaded:
		return "overloaded"
	case RefuseShuttingDown:
		return "shutting down"
	case RefuseTooMany:
		return "too many sessions from this address"
	}
	return fmt.Sprintf("refuse-%d", byte(c))
}

// Refuse is a relay's refusal of an agent.
type Refuse struct {
	Code    RefuseCode
	Message string
}

// AppendRefuse appends the payload of a refuse frame.
func AppendRefuse(b []byte, f Refuse) []byte {
	return appendMessage(append(b, byte(f.Code)), f.Message)
}

// ParseRefuse parses the payload of a refuse frame.
func ParseRefuse(p []byte) (Refuse, error) {
	r := reader{b: p}
	f := Refuse{Code: RefuseCode(r.u8())}
	f.Message = parseMessage(&r)
	return f, r.done()
}
