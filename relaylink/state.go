package relaylink

import (
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// State is what an agent tells its relay besides packets: a device's
// access list and a client's pairing intents. It is state, not a
// message: the whole of it goes out first thing on every new Link, so that
// a relay that restarted learns it before anything else, and again
// whenever it changes.
type State struct {
	// Access, for a device, lists who the relay may route to it: client
	// IDs and the relay tokens of its pending invites. A device always
	// sends its list, even an empty one; a client sends none.
	Access []relayproto.AccessEntry
	// Intents, for a client, are the invites it is pairing with, so that
	// the relay lets it through to their devices.
	Intents []relayproto.PairIntent
}

// AccessList returns the access entries of clients and invites.
func AccessList(clients []identity.ID, invites [][32]byte) []relayproto.AccessEntry {
	entries := make([]relayproto.AccessEntry, 0, len(clients)+len(invites))
	for _, id := range clients {
		entries = append(entries, relayproto.AccessEntry{Kind: relayproto.AccessClient, Value: id})
	}
	for _, t := range invites {
		entries = append(entries, relayproto.AccessEntry{Kind: relayproto.AccessInvite, Value: t})
	}
	return entries
}

// frames encodes st as the frames an agent of role sends: a device's
// access list in as many frames as it takes, then one frame per intent.
func (st State) frames(role relayproto.Role) [][]byte {
	var frames [][]byte
	if role == relayproto.RoleDevice {
		entries := st.Access
		for first := true; first || len(entries) > 0; first = false {
			n := min(len(entries), relayproto.MaxAccessPerFrame)
			var flags byte
			if first {
				flags |= relayproto.AccessFirst
			}
			if n == len(entries) {
				flags |= relayproto.AccessLast
			}
			p := relayproto.AppendAccess(nil, flags, entries[:n])
			frames = append(frames, append(relayproto.AppendHeader(nil, relayproto.FrameAccess, len(p)), p...))
			entries = entries[n:]
		}
	}
	for _, in := range st.Intents {
		p := relayproto.AppendPairIntent(nil, in)
		frames = append(frames, append(relayproto.AppendHeader(nil, relayproto.FramePairIntent, len(p)), p...))
	}
	return frames
}
