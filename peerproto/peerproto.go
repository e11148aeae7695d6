// Package peerproto is the wire format between two agents, end to end:
// the datagrams of a direct path (probe, reply, opener) and the MACs that
// tie them to one session, the path layer's signalling messages
// (candidates, ready, lost), and the messages of the session's control
// stream (path, ping, pong). It only encodes and decodes: the paths
// package runs the direct-path search and the session package serves the
// control stream. It imports nothing of burrow, and never touches a socket
// or a stream beyond reading one message ([ReadControl]). PROTOCOL.md
// beside this file describes the same messages without Go, with the
// tunnel-stream header of package session.
//
// # Protocol flow
//
// A client and a device share an E2E session (QUIC over the relay). On
// its control stream, [ControlPath] messages carry the path layer's
// signalling, in order:
//
//  1. The client starts a search round: [Candidates] lists the addresses
//     at which its UDP socket may be reached (its interfaces' addresses,
//     and the address the relay's UDP port saw it send from). The device
//     joins the round with its own [Candidates].
//  2. On the peer's candidates, each side sends each of them an [Opener]
//     with a TTL of 2 (it opens this side's NAT to the peer and dies before
//     the peer's), then [Ready].
//  3. Once it has sent openers and heard ready, each side sends a [Probe]
//     to each candidate of the peer, several times a second, at
//     [MaxPacketLen] bytes. The peer answers each fresh probe with a
//     [Reply] to the address it came from. Both carry a MAC under a key
//     exported from the session's TLS ([ExporterLabel]), so only the peer
//     can make one. An answered probe proves the address it went to.
//  4. Packets go over the proven path. Smaller probes keep checking it;
//     each reply says how many packets the replier has taken from the
//     prober over direct paths (the data check). A side whose path loses
//     the packets drops it and tells the peer with [Lost].
//
// The control stream also carries [Ping] and [Pong], which measure the
// round trip through the path in use. Unknown message types are skipped:
// a newer peer may send more.
//
// # Versions
//
//	1  first version. The version is that of the session's ALPN protocol
//	   ("burrow/1"); the tunnel-stream header has a version byte of its own.
package peerproto

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Errors returned by the parsers, matched with [errors.Is].
var (
	// ErrTruncated: the message ends before its fields do.
	ErrTruncated = errors.New("peerproto: message truncated")
	// ErrMalformed: a field is out of range, or bytes are left over.
	ErrMalformed = errors.New("peerproto: malformed message")
	// ErrUnknownType: the message is well framed but of a type this
	// package does not know. A newer peer's message: skip it.
	ErrUnknownType = errors.New("peerproto: unknown message type")
)

// Address families of [netip.AddrPort] fields.
const (
	family4 = 4
	family6 = 6
)

// appendAddrPort appends an IP address and port: family u8 (4 or 6), ip
// [4|16], port u16. An IPv4-mapped IPv6 address is written as IPv4. It is
// the encoding of the relay's UDP binding response, so that an agent
// offers the address the relay told it as it was told.
func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		a := ip.As4()
		b = append(append(b, family4), a[:]...)
	} else {
		a := ip.As16()
		b = append(append(b, family6), a[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// parseAddrPort parses an address written by appendAddrPort at the start
// of b and returns it with the bytes after it. An IPv4-mapped IPv6 address
// comes back as IPv4.
func parseAddrPort(b []byte) (netip.AddrPort, []byte, error) {
	var ip netip.Addr
	switch {
	case len(b) == 0:
		return netip.AddrPort{}, nil, ErrTruncated
	case b[0] == family4 && len(b) >= 7:
		ip, b = netip.AddrFrom4([4]byte(b[1:5])), b[5:]
	case b[0] == family6 && len(b) >= 19:
		ip, b = netip.AddrFrom16([16]byte(b[1:17])).Unmap(), b[17:]
	case b[0] == family4 || b[0] == family6:
		return netip.AddrPort{}, nil, ErrTruncated
	default:
		return netip.AddrPort{}, nil, ErrMalformed
	}
	return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b)), b[2:], nil
}
