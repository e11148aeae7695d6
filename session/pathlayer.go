package session

import (
	"net"

	"github.com/burrow-tunnel/burrow/paths"
)

// A PathLayer is the layer under an endpoint's packet connection that can
// move a peer's packets onto a direct path: a [*paths.Conn], given to
// [NewEndpoint] as [Config.Paths] beside itself as the connection. The
// session never asks its connection what it is; without a PathLayer (a
// plain UDP socket, in tests) sessions work the same and stay on whatever
// the connection does.
//
// The search for a direct path runs in the path layer, and its signalling
// crosses the session, explicitly, in both directions. Once a session's
// control stream is up, [Control.Run] calls StartDirect with a
// [paths.DirectConfig] whose Key is exported from the session's TLS (so
// only the two ends know it) and whose Signal is a send function of the
// session's: each message the search hands it goes to the peer on the
// control stream. Each message the peer's search sent arrives on the
// control stream, and Run hands it down with [paths.Direct.Receive]. The
// path layer never writes to the session, and the session never looks
// inside the messages.
type PathLayer interface {
	// StartDirect starts looking for a direct path to peer, the session's
	// remote address, and for the UDP relay path. It fails with
	// [paths.ErrNoDirect] if both are off, and with [paths.ErrLANPeer] if
	// peer is a LAN peer, whose path is direct already: Run goes on
	// without a search either way.
	StartDirect(peer net.Addr, cfg paths.DirectConfig) (*paths.Direct, error)
	// Path says how packets to peer travel now.
	Path(peer net.Addr) paths.PathInfo
}

var _ PathLayer = (*paths.Conn)(nil)

// Path says how the session's packets travel now: over the relay, or a
// direct path (over the LAN, if the session started there, with the
// session's own RTT, as no probe measures it). Without a [PathLayer] it
// reports the relay.
func (s *Session) Path() paths.PathInfo {
	if s.paths == nil {
		return paths.PathInfo{}
	}
	p := s.paths.Path(s.conn.RemoteAddr())
	if p.LAN && p.RTT == 0 {
		p.RTT = s.conn.ConnectionStats().SmoothedRTT
	}
	return p
}
