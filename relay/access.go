package relay

import (
	"fmt"
	"maps"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// Access: who may reach a device. A device sends its access list (clients
// and the tokens of its pending invites) after its hello and whenever it
// changes; a client sends a pair intent (device, invite token) before it
// pairs. The relay forwards a client's packets to a device only if that
// list allows it (see routes.go).

// An accessSet is who may reach a device. It is never changed once made;
// a new list replaces it whole.
type accessSet struct {
	clients map[identity.ID]struct{}
	invites map[[32]byte]struct{}
}

func newAccessSet(entries []relayproto.AccessEntry) *accessSet {
	a := &accessSet{}
	for _, e := range entries {
		switch e.Kind {
		case relayproto.AccessClient:
			if a.clients == nil {
				a.clients = make(map[identity.ID]struct{})
			}
			a.clients[identity.ID(e.Value)] = struct{}{}
		case relayproto.AccessInvite:
			if a.invites == nil {
				a.invites = make(map[[32]byte]struct{})
			}
			a.invites[e.Value] = struct{}{}
		}
	}
	return a
}

// allows reports whether client may reach the device: it is listed, or it
// presented the token of a pending invite.
func (a *accessSet) allows(client identity.ID, token [32]byte) bool {
	if _, ok := a.clients[client]; ok {
		return true
	}
	if token == ([32]byte{}) {
		return false
	}
	_, ok := a.invites[token]
	return ok
}

// maxIntents bounds the pairing intents a client may hold at once.
const maxIntents = 8

// deviceState handles an access or pair-intent frame.
func (a *attachment) deviceState(t relayproto.FrameType, p []byte) error {
	switch {
	case t == relayproto.FrameAccess && a.role == relayproto.RoleDevice:
		flags, entries, err := relayproto.ParseAccess(p, a.accessBuild)
		if err != nil {
			return err
		}
		if flags&relayproto.AccessFirst != 0 {
			entries = append(entries[:0], entries[len(a.accessBuild):]...)
		}
		if len(entries) > relayproto.MaxAccessEntries {
			return fmt.Errorf("%w: access list of more than %d entries", relayproto.ErrMalformed, relayproto.MaxAccessEntries)
		}
		a.accessBuild = entries
		if flags&relayproto.AccessLast != 0 {
			a.access.Store(newAccessSet(entries))
			a.accessBuild = nil
			a.srv.accessChanged(a.addr.ID)
		}
	case t == relayproto.FramePairIntent && a.role == relayproto.RoleClient:
		f, err := relayproto.ParsePairIntent(p)
		if err != nil {
			return err
		}
		intents := make(map[identity.ID][32]byte, maxIntents)
		if old := a.intents.Load(); old != nil {
			maps.Copy(intents, *old)
		}
		if _, ok := intents[f.Device]; !ok && len(intents) >= maxIntents {
			for k := range intents { // forget one
				delete(intents, k)
				break
			}
		}
		intents[f.Device] = f.Token
		a.intents.Store(&intents)
	}
	return nil
}

// pairIntents returns the client's pairing intents (device → invite
// token), or nil; the map is never changed once stored.
func (a *attachment) pairIntents() map[identity.ID][32]byte {
	if m := a.intents.Load(); m != nil {
		return *m
	}
	return nil
}

// intent returns the invite token of the client's pairing intent for
// device, or zero.
func (a *attachment) intent(device identity.ID) [32]byte {
	if m := a.intents.Load(); m != nil {
		return (*m)[device]
	}
	return [32]byte{}
}
