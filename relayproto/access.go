package relayproto

import (
	"encoding/binary"
	"fmt"

	"github.com/burrow-tunnel/burrow/identity"
)

// Access list entry kinds.
const (
	AccessClient byte = 1 // a client ID that may reach the device
	AccessInvite byte = 2 // the relay token of a pending invite
)

// Access frame flags.
const (
	AccessFirst byte = 1 << 0 // the first frame of a new list
	AccessLast  byte = 1 << 1 // the list is complete
)

// An AccessEntry is one entry of a device's access list.
type AccessEntry struct {
	Kind  byte
	Value [32]byte
}

// AppendAccess appends the payload of an access frame. It holds at most
// MaxAccessPerFrame entries; callers split longer lists.
func AppendAccess(b []byte, flags byte, entries []AccessEntry) []byte {
	b = append(b, flags)
	b = binary.BigEndian.AppendUint16(b, uint16(len(entries)))
	for _, e := range entries {
		b = append(append(b, e.Kind), e.Value[:]...)
	}
	return b
}

// ParseAccess parses the payload of an access frame, appending its
// entries to dst.
func ParseAccess(p []byte, dst []AccessEntry) (flags byte, entries []AccessEntry, err error) {
	r := reader{b: p}
	flags = r.u8()
	n := int(r.u16())
	if r.err == nil && n > MaxAccessPerFrame {
		return 0, dst, fmt.Errorf("%w: %d access entries in one frame", ErrMalformed, n)
	}
	for range n {
		e := AccessEntry{Kind: r.u8()}
		copy(e.Value[:], r.take(32))
		if r.err != nil {
			break
		}
		dst = append(dst, e)
	}
	return flags, dst, r.done()
}

// PairIntent is a client's notice that it is pairing with Device using
// the invite whose relay token is Token.
type PairIntent struct {
	Device identity.ID
	Token  [32]byte
}

// AppendPairIntent appends the payload of a pair-intent frame.
func AppendPairIntent(b []byte, f PairIntent) []byte {
	return append(append(b, f.Device[:]...), f.Token[:]...)
}

// ParsePairIntent parses the payload of a pair-intent frame.
func ParsePairIntent(p []byte) (PairIntent, error) {
	r := reader{b: p}
	var f PairIntent
	copy(f.Device[:], r.take(32))
	copy(f.Token[:], r.take(32))
	return f, r.done()
}
