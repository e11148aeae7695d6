// Package relayproto is the wire format between an agent (device or client)
// and a relay: framing, frame types, their payload layouts, the protocol
// version and the size limits. It only encodes and decodes; the relay
// package routes and the paths package dials. PROTOCOL.md beside this file
// describes the same protocol without Go.
//
// It imports nothing of burrow but identity. relayproto.go holds the
// framing, the frame types and the limits; the payloads have a file each
// by concern: hello.go (hellos, roles, extensions), packet.go (addresses,
// packets, peer-gone, ping), access.go (access lists, pairing intents),
// refuse.go, goaway.go (go-away, drain) and binding.go (the relay's UDP
// binding datagrams); reader.go reads payloads.
//
// # Protocol flow
//
//  1. The agent opens TLS 1.3 to the relay's HTTPS port and checks the
//     relay inside the handshake, before it sends a byte of its own. An
//     agent given the relay's ID pins it: it offers [ALPNPinned] after
//     "http/1.1", the relay answers with the self-signed certificate of its
//     identity key (even if it also has a CA-signed one), and the agent
//     accepts only a key with that ID, whatever CA signed the certificate,
//     or, if the ID is a fleet's, a key that the fleet's signed map in the
//     certificate lists (see fleet/FORMAT.md).
//     An agent without an ID accepts a certificate chain to a trusted root.
//  2. The agent sends "GET /burrow HTTP/1.1" with "Upgrade: burrow-relay"
//     and, without waiting for the answer, its [ClientHello] frame. The hello
//     is signed by the agent's key over a TLS exporter value, so it proves the
//     key and cannot be replayed on another connection. A device follows it
//     with its access list ([FrameAccess]), a client with its pairing
//     intents ([FramePairIntent]).
//  3. The relay answers "101 Switching Protocols" and then either a
//     [ServerHello] (also signed over the exporter, with the relay's identity
//     key) or a [Refuse] frame, after which it closes. A device is reachable
//     from then on, by the clients its list names.
//  4. Frames flow both ways: [SendPacket] from the agent names a destination,
//     and the relay delivers it as [RecvPacket] naming the source, or answers
//     [PeerGone]. [Ping]/[Pong] keep the session alive. [Drain] says the
//     relay is draining: it keeps the session, admits no new one, and
//     closes within a given time. [GoAway] announces the relay is closing
//     the session. Unknown frame types are skipped.
//
// # Versions
//
//	1  first version.
//	   Added within version 1, as a frame type older agents skip: drain
//	   (0x31).
//	   Added within version 1, as values older agents report without
//	   knowing: refuse code 7 (too many sessions from one address),
//	   peer-gone reason 4 (offline or not authorized: what a client the
//	   device has not allowed is told, online or not), go-away reason 5
//	   (no device allows this client).
//	   Added within version 1: [ALPNPinned]. A relay that serves a
//	   CA-signed certificate must know it for agents that pin its ID; older
//	   ones ignore it, and those agents fail with a key mismatch.
package relayproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/burrow-tunnel/burrow/identity"
)

// Protocol versions this package speaks.
const (
	MinVersion = 1
	MaxVersion = 1
)

// HTTP upgrade of the relay's HTTPS port.
const (
	UpgradePath  = "/burrow"
	UpgradeToken = "burrow-relay"
)

// ALPNPinned is the ALPN protocol ID an agent that pins the relay's ID
// offers, after "http/1.1", to ask the relay for the self-signed
// certificate of its identity key rather than a CA-signed one. It is a
// signal, never negotiated: the relay still selects "http/1.1".
const ALPNPinned = "burrow-relay-id"

// ExporterLabel is the TLS exporter label (RFC 8446 §7.5) whose 32-byte
// value both hellos sign, binding them to one TLS connection.
const ExporterLabel = "EXPORTER-burrow-relay-v1"

// ExporterLen is the length of the exporter value.
const ExporterLen = 32

// Limits. Every length read from the wire is checked against one of these
// before anything is allocated.
const (
	// HeaderLen is the length of a frame header: type (1 byte) and payload
	// length (4 bytes, big-endian).
	HeaderLen = 5
	// MaxPacketLen is the largest E2E packet a relay carries.
	MaxPacketLen = 2048
	// MaxFrameLen is the largest payload of any frame, known or not.
	MaxFrameLen = 64 << 10
	// MaxHelloLen is the largest hello; it is read before authentication.
	MaxHelloLen = 2048
	// MaxMessageLen is the longest human-readable message in a frame.
	MaxMessageLen = 1024
	// AddrLen is the length of an encoded agent address.
	AddrLen = identity.IDLen + 8
	// MaxAccessPerFrame bounds the entries of one access frame.
	MaxAccessPerFrame = 1024
	// MaxAccessEntries bounds a device's whole access list.
	MaxAccessEntries = 64 * MaxAccessPerFrame
)

// FrameType says what a frame carries.
type FrameType byte

// Frame types. Each comment gives the payload layout; integers are
// big-endian.
const (
	// FrameClientHello (agent → relay, first frame):
	//   minVersion u16, maxVersion u16, role u8, instance u64,
	//   publicKey [32], extLen u16, ext [extLen], signature [64].
	// The signature covers clientHelloContext, the exporter value and every
	// payload byte before it.
	FrameClientHello FrameType = 0x01
	// FrameServerHello (relay → agent, after a valid client hello):
	//   version u16, keepAliveMillis u32, publicKey [32],
	//   observedAddrLen u8, observedAddr [observedAddrLen] ("ip:port"),
	//   extLen u16, ext [extLen], signature [64].
	// The signature covers serverHelloContext, the exporter value and every
	// payload byte before it.
	FrameServerHello FrameType = 0x02
	// FrameRefuse (relay → agent, instead of a server hello; then close):
	//   code u8, messageLen u16, message [messageLen].
	FrameRefuse FrameType = 0x03

	// FrameSendPacket (agent → relay): dst Addr [40], packet [rest].
	FrameSendPacket FrameType = 0x10
	// FrameRecvPacket (relay → agent): src Addr [40], packet [rest].
	FrameRecvPacket FrameType = 0x11
	// FramePeerGone (relay → agent): peer Addr [40], reason u8,
	// lastSeenUnix u64 (0 = unknown). The relay could not deliver to peer.
	FramePeerGone FrameType = 0x12

	// FrameAccess (device → relay): flags u8, count u16,
	// count × (kind u8, value [32]). The device's access list: the client
	// IDs that may reach it (kind 1) and the relay tokens of its pending
	// invites (kind 2). A list may span frames: the first has flag
	// AccessFirst, the last AccessLast; the relay applies a list once it
	// is complete, replacing the previous one. Until a device has sent a
	// complete list, the relay routes nothing to it.
	FrameAccess FrameType = 0x13
	// FramePairIntent (client → relay): device ID [32], token [32]. The
	// client is pairing with the device using the invite whose relay token
	// this is; while the device lists the token, the relay lets this
	// client reach it.
	FramePairIntent FrameType = 0x14
	// FrameRedirect (relay → agent): peer Addr [40], relay id [32],
	// addrLen u8, addr [addrLen]. To a client: the device peer is
	// attached to another relay of this relay's fleet, the one with that
	// ID at that address; the client sends to it there. To a device,
	// naming the device itself: the relay is draining, and that is the
	// relay to attach to next. Agents that do not know the frame skip it.
	FrameRedirect FrameType = 0x15
	// FrameLocate (client → relay): device ID [32]. The client asks a
	// fleet relay where the device is attached; the relay answers with a
	// redirect (naming itself if the device is attached there), or not at
	// all if it does not know. Relays that do not know the frame skip it.
	FrameLocate FrameType = 0x16

	// FramePing (either way): data [8]. The receiver answers FramePong.
	FramePing FrameType = 0x20
	// FramePong (either way): data [8], copied from the ping.
	FramePong FrameType = 0x21

	// FrameGoAway (relay → agent): reason u8, retryAfterMillis u32,
	// messageLen u16, message [messageLen]. The relay is closing the
	// session; the agent reconnects no sooner than retryAfter.
	FrameGoAway FrameType = 0x30
	// FrameDrain (relay → agent): withinMillis u32, messageLen u16,
	// message [messageLen]. The relay is shutting down gracefully: it
	// keeps this session and forwards its packets, admits no new session,
	// and closes this one (with a go-away) within withinMillis (0: it did
	// not say). An agent that does not know the frame skips it and keeps
	// its session, which is what the frame asks of it.
	FrameDrain FrameType = 0x31
)

func (t FrameType) String() string {
	switch t {
	case FrameClientHello:
		return "client-hello"
	case FrameServerHello:
		return "server-hello"
	case FrameRefuse:
		return "refuse"
	case FrameSendPacket:
		return "send-packet"
	case FrameRecvPacket:
		return "recv-packet"
	case FramePeerGone:
		return "peer-gone"
	case FrameAccess:
		return "access"
	case FramePairIntent:
		return "pair-intent"
	case FramePing:
		return "ping"
	case FramePong:
		return "pong"
	case FrameGoAway:
		return "go-away"
	case FrameDrain:
		return "drain"
	case FrameRedirect:
		return "redirect"
	case FrameLocate:
		return "locate"
	}
	return fmt.Sprintf("frame-0x%02x", byte(t))
}

// MaxLen returns the largest payload a frame of type t may have. Unknown
// types get [MaxFrameLen], so they can be skipped.
func (t FrameType) MaxLen() uint32 {
	switch t {
	case FrameClientHello, FrameServerHello:
		return MaxHelloLen
	case FrameRefuse:
		return 3 + MaxMessageLen
	case FrameSendPacket, FrameRecvPacket:
		return AddrLen + MaxPacketLen
	case FramePeerGone:
		return AddrLen + 1 + 8
	case FrameAccess:
		return 3 + MaxAccessPerFrame*(1+32)
	case FramePairIntent:
		return 64
	case FramePing, FramePong:
		return 8
	case FrameGoAway:
		return 7 + MaxMessageLen
	case FrameDrain:
		return 6 + MaxMessageLen
	case FrameRedirect:
		return AddrLen + identity.IDLen + 1 + MaxRelayAddrLen
	case FrameLocate:
		return identity.IDLen
	}
	return MaxFrameLen
}

// Errors returned by the parsers, matched with [errors.Is].
var (
	ErrTruncated     = errors.New("relayproto: frame truncated")
	ErrFrameTooLarge = errors.New("relayproto: frame too large")
	ErrMalformed     = errors.New("relayproto: malformed frame")
	ErrBadSignature  = errors.New("relayproto: bad hello signature")
)

// AppendHeader appends a frame header for a payload of n bytes.
func AppendHeader(b []byte, t FrameType, n int) []byte {
	return binary.BigEndian.AppendUint32(append(b, byte(t)), uint32(n))
}

// ParseHeader parses a frame header and checks the payload length against
// the type's limit.
func ParseHeader(b []byte) (FrameType, uint32, error) {
	if len(b) < HeaderLen {
		return 0, 0, ErrTruncated
	}
	t := FrameType(b[0])
	n := binary.BigEndian.Uint32(b[1:HeaderLen])
	if n > t.MaxLen() {
		return t, n, fmt.Errorf("%w: %s of %d bytes (limit %d)", ErrFrameTooLarge, t, n, t.MaxLen())
	}
	return t, n, nil
}

// ReadHeader reads and checks one frame header from r.
func ReadHeader(r io.Reader) (FrameType, uint32, error) {
	var hdr [HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, 0, err
	}
	return ParseHeader(hdr[:])
}
