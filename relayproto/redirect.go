package relayproto

import (
	"github.com/burrow-tunnel/burrow/identity"
)

// MaxRelayAddrLen is the longest relay address a redirect carries, as in
// a fleet map.
const MaxRelayAddrLen = 255

// Redirect tells a client that Peer, a device it sent to, is attached to
// another relay of the same fleet: the relay whose key has the ID Relay,
// at Addr. The client attaches there (checking that relay against the
// fleet it pinned, and that its key has this ID) and sends to Peer there.
type Redirect struct {
	Peer  Addr
	Relay identity.ID
	Addr  string // host:port
}

// AppendRedirect appends the payload of a redirect frame.
func AppendRedirect(b []byte, f Redirect) []byte {
	b = append(AppendAddr(b, f.Peer), f.Relay[:]...)
	addr := f.Addr
	if len(addr) > MaxRelayAddrLen {
		addr = addr[:MaxRelayAddrLen]
	}
	b = append(b, byte(len(addr)))
	return append(b, addr...)
}

// ParseRedirect parses the payload of a redirect frame.
func ParseRedirect(p []byte) (Redirect, error) {
	a, err := ParseAddr(p)
	if err != nil {
		return Redirect{}, err
	}
	r := reader{b: p[AddrLen:]}
	f := Redirect{Peer: a}
	copy(f.Relay[:], r.take(identity.IDLen))
	f.Addr = string(r.take(int(r.u8())))
	if err := r.done(); err != nil {
		return Redirect{}, err
	}
	if f.Addr == "" {
		return Redirect{}, ErrMalformed
	}
	return f, nil
}

// ParseLocate parses the payload of a locate frame: a device's ID.
func ParseLocate(p []byte) (identity.ID, error) {
	var id identity.ID
	r := reader{b: p}
	copy(id[:], r.take(identity.IDLen))
	return id, r.done()
}
