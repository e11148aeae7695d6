package relayproto

import (
	"encoding/binary"
	"fmt"

	"github.com/burrow-tunnel/burrow/identity"
)

// An Addr names one attachment of an agent on a relay: the agent's ID and an
// instance number the agent chose for its process. A device is unique per ID
// and always has Instance 0 on the wire; clients sharing a key (several
// processes) are told apart by Instance.
type Addr struct {
	ID       identity.ID
	Instance uint64
}

// AppendAddr appends the 40-byte encoding of a.
func AppendAddr(b []byte, a Addr) []byte {
	return binary.BigEndian.AppendUint64(append(b, a.ID[:]...), a.Instance)
}

// ParseAddr parses an address from the start of b.
func ParseAddr(b []byte) (Addr, error) {
	if len(b) < AddrLen {
		return Addr{}, ErrTruncated
	}
	var a Addr
	copy(a.ID[:], b)
	a.Instance = binary.BigEndian.Uint64(b[identity.IDLen:AddrLen])
	return a, nil
}

// AppendPacketHeader appends the header of a send- or recv-packet frame
// whose packet is n bytes long; the packet bytes follow it.
func AppendPacketHeader(b []byte, t FrameType, a Addr, n int) []byte {
	return AppendAddr(AppendHeader(b, t, AddrLen+n), a)
}

// ParsePacket splits the payload of a send- or recv-packet frame.
func ParsePacket(p []byte) (Addr, []byte, error) {
	a, err := ParseAddr(p)
	if err != nil {
		return Addr{}, nil, err
	}
	if len(p)-AddrLen > MaxPacketLen {
		return Addr{}, nil, ErrFrameTooLarge
	}
	return a, p[AddrLen:], nil
}

// GoneReason says why a relay could not deliver to a peer.
type GoneReason byte

// Gone reasons.
const (
	GoneOffline    GoneReason = 1 // the peer is not attached to this relay
	GoneNotAllowed GoneReason = 2 // the relay does not route between these agents
	// GoneNotAuthorized: the device has not allowed this client (it is not
	// on the device's access list, nor pairing with a pending invite).
	// Relays no longer send it (they say GoneUnreachable, which does not
	// tell an online device from an offline one); agents still read it.
	GoneNotAuthorized GoneReason = 3
	// GoneUnreachable: the device is offline, or has not allowed this
	// client; the relay does not say which to a client it cannot tell the
	// device allows, so that a stranger learns nothing of the device.
	GoneUnreachable GoneReason = 4
)

func (g GoneReason) String() string {
	switch g {
	case GoneOffline:
		return "offline"
	case GoneNotAllowed:
		return "not allowed"
	case GoneNotAuthorized:
		return "not authorized by the device"
	case GoneUnreachable:
		return "offline or not authorized"
	}
	return fmt.Sprintf("gone-%d", byte(g))
}

// PeerGone tells an agent the relay could not deliver to Peer.
type PeerGone struct {
	Peer   Addr
	Reason GoneReason
	// LastSeenUnix is when the relay last had the peer attached, in Unix
	// seconds; 0 if it does not know.
	LastSeenUnix uint64
}

// AppendPeerGone appends the payload of a peer-gone frame.
func AppendPeerGone(b []byte, f PeerGone) []byte {
	b = append(AppendAddr(b, f.Peer), byte(f.Reason))
	return binary.BigEndian.AppendUint64(b, f.LastSeenUnix)
}

// ParsePeerGone parses the payload of a peer-gone frame.
func ParsePeerGone(p []byte) (PeerGone, error) {
	a, err := ParseAddr(p)
	if err != nil {
		return PeerGone{}, err
	}
	r := reader{b: p[AddrLen:]}
	f := PeerGone{Peer: a, Reason: GoneReason(r.u8()), LastSeenUnix: r.u64()}
	return f, r.done()
}

// ParsePing parses the payload of a ping or pong frame.
func ParsePing(p []byte) ([8]byte, error) {
	var d [8]byte
	if len(p) != 8 {
		if len(p) < 8 {
			return d, ErrTruncated
		}
		return d, ErrMalformed
	}
	copy(d[:], p)
	return d, nil
}
