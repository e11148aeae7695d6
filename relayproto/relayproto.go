// Package relayproto is the wire format between an agent (device or client)
// and a relay: framing, frame types, their payload layouts, the protocol
// version and the size limits. It only encodes and decodes; the relay
// package routes and the paths package dials. PROTOCOL.md beside this file
// describes the same protocol without Go.
//
// # Protocol flow
//
//  1. The agent opens TLS 1.3 to the relay's HTTPS port and checks the
//     relay inside the handshake, before it sends a byte of its own. An
//     agent given the relay's ID pins it: it offers [ALPNPinned] after
//     "http/1.1", the relay answers with the self-signed certificate of its
//     identity key (even if it also has a CA-signed one), and the agent
//     accepts only a key with that ID, whatever CA signed the certificate.
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
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"

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

// Signature contexts, prefixed to what each hello signs.
const (
	clientHelloContext = "burrow relay client hello\x00"
	serverHelloContext = "burrow relay server hello\x00"
)

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

// Role says what kind of agent is attaching.
type Role byte

// Roles.
const (
	RoleDevice Role = 1
	RoleClient Role = 2
)

func (r Role) String() string {
	switch r {
	case RoleDevice:
		return "device"
	case RoleClient:
		return "client"
	}
	return fmt.Sprintf("role-%d", byte(r))
}

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

// reader consumes a payload front to back; the first short read sets
// ErrTruncated and every later read returns zero values.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = ErrTruncated
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() byte {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// done returns the first error, or ErrMalformed if bytes are left over.
func (r *reader) done() error {
	if r.err != nil {
		return r.err
	}
	if len(r.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(r.b))
	}
	return nil
}

// ClientHello is the agent's first frame.
type ClientHello struct {
	MinVersion, MaxVersion uint16
	Role                   Role
	// Instance tells apart processes sharing one key; it stays the same
	// across reconnects of one process.
	Instance  uint64
	PublicKey ed25519.PublicKey
	// Extensions are type-length-value fields that newer agents may send;
	// a relay skips the types it does not know. See [Extension].
	Extensions []Extension
}

// An Extension is an optional hello field: type u8, length u16, value.
type Extension struct {
	Type  byte
	Value []byte
}

func appendExtensions(b []byte, exts []Extension) []byte {
	lenAt := len(b)
	b = append(b, 0, 0)
	for _, e := range exts {
		b = append(b, e.Type)
		b = binary.BigEndian.AppendUint16(b, uint16(len(e.Value)))
		b = append(b, e.Value...)
	}
	binary.BigEndian.PutUint16(b[lenAt:], uint16(len(b)-lenAt-2))
	return b
}

func parseExtensions(r *reader) []Extension {
	er := reader{b: r.take(int(r.u16()))}
	var exts []Extension
	for r.err == nil && er.err == nil && len(er.b) > 0 {
		t := er.u8()
		v := er.take(int(er.u16()))
		if er.err == nil {
			exts = append(exts, Extension{Type: t, Value: v})
		}
	}
	if r.err == nil && er.err != nil {
		r.err = fmt.Errorf("%w: extension overruns its block", ErrMalformed)
	}
	return exts
}

// AppendClientHello appends the payload of a signed client hello. sign
// signs the bytes it is given with the agent's key.
func AppendClientHello(b []byte, h ClientHello, exporter []byte, sign func([]byte) []byte) []byte {
	start := len(b)
	b = binary.BigEndian.AppendUint16(b, h.MinVersion)
	b = binary.BigEndian.AppendUint16(b, h.MaxVersion)
	b = append(b, byte(h.Role))
	b = binary.BigEndian.AppendUint64(b, h.Instance)
	b = append(b, h.PublicKey...)
	b = appendExtensions(b, h.Extensions)
	return append(b, sign(signedBytes(clientHelloContext, exporter, b[start:]))...)
}

// ParseClientHello parses a client hello and verifies its signature over
// exporter. The key and extension values of the result alias p.
func ParseClientHello(p []byte, exporter []byte) (ClientHello, error) {
	r := reader{b: p}
	var h ClientHello
	h.MinVersion = r.u16()
	h.MaxVersion = r.u16()
	h.Role = Role(r.u8())
	h.Instance = r.u64()
	h.PublicKey = ed25519.PublicKey(r.take(ed25519.PublicKeySize))
	h.Extensions = parseExtensions(&r)
	signed := p[:len(p)-len(r.b)]
	sig := r.take(ed25519.SignatureSize)
	if err := r.done(); err != nil {
		return ClientHello{}, err
	}
	if h.MinVersion > h.MaxVersion || h.MinVersion == 0 {
		return ClientHello{}, fmt.Errorf("%w: version range %d..%d", ErrMalformed, h.MinVersion, h.MaxVersion)
	}
	if !ed25519.Verify(h.PublicKey, signedBytes(clientHelloContext, exporter, signed), sig) {
		return ClientHello{}, ErrBadSignature
	}
	return h, nil
}

// ServerHello is the relay's answer to a valid client hello.
type ServerHello struct {
	Version uint16
	// KeepAlive is how often the agent must send a ping.
	KeepAliveMillis uint32
	// PublicKey is the relay's identity key, proven by the signature even
	// when the TLS certificate is a CA-signed one.
	PublicKey ed25519.PublicKey
	// ObservedAddr is the agent's address as the relay sees it ("ip:port").
	ObservedAddr string
	Extensions   []Extension
}

// AppendServerHello appends the payload of a signed server hello.
func AppendServerHello(b []byte, h ServerHello, exporter []byte, sign func([]byte) []byte) []byte {
	start := len(b)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	b = binary.BigEndian.AppendUint32(b, h.KeepAliveMillis)
	b = append(b, h.PublicKey...)
	addr := h.ObservedAddr
	if len(addr) > 255 {
		addr = ""
	}
	b = append(b, byte(len(addr)))
	b = append(b, addr...)
	b = appendExtensions(b, h.Extensions)
	return append(b, sign(signedBytes(serverHelloContext, exporter, b[start:]))...)
}

// ParseServerHello parses a server hello and verifies its signature over
// exporter. The key and extension values of the result alias p.
func ParseServerHello(p []byte, exporter []byte) (ServerHello, error) {
	r := reader{b: p}
	var h ServerHello
	h.Version = r.u16()
	h.KeepAliveMillis = r.u32()
	h.PublicKey = ed25519.PublicKey(r.take(ed25519.PublicKeySize))
	h.ObservedAddr = string(r.take(int(r.u8())))
	h.Extensions = parseExtensions(&r)
	signed := p[:len(p)-len(r.b)]
	sig := r.take(ed25519.SignatureSize)
	if err := r.done(); err != nil {
		return ServerHello{}, err
	}
	if !ed25519.Verify(h.PublicKey, signedBytes(serverHelloContext, exporter, signed), sig) {
		return ServerHello{}, ErrBadSignature
	}
	return h, nil
}

func signedBytes(context string, exporter, payload []byte) []byte {
	m := make([]byte, 0, len(context)+len(exporter)+len(payload))
	return append(append(append(m, context...), exporter...), payload...)
}

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

func appendMessage(b []byte, msg string) []byte {
	if len(msg) > MaxMessageLen {
		msg = msg[:MaxMessageLen]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

func parseMessage(r *reader) string {
	n := r.u16()
	if n > MaxMessageLen && r.err == nil {
		r.err = fmt.Errorf("%w: message of %d bytes", ErrMalformed, n)
	}
	return string(r.take(int(n)))
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

// Hello extension types.
const (
	// ExtEnrollToken (client hello, devices): an enrollment token, which a
	// relay that does not know the device yet may accept to enroll it.
	ExtEnrollToken byte = 1
	// ExtUDPBinding (server hello): the relay's UDP port u16 and this
	// session's binding token [16]; see [AppendBindingRequest].
	ExtUDPBinding byte = 2
)

// UDPBinding is the value of a server hello's ExtUDPBinding.
type UDPBinding struct {
	Port  uint16
	Token [16]byte
}

// AppendUDPBinding appends the extension value of b.
func AppendUDPBinding(dst []byte, b UDPBinding) []byte {
	return append(binary.BigEndian.AppendUint16(dst, b.Port), b.Token[:]...)
}

// ParseUDPBinding parses the extension value of a UDP binding.
func ParseUDPBinding(p []byte) (UDPBinding, error) {
	r := reader{b: p}
	b := UDPBinding{Port: r.u16()}
	copy(b.Token[:], r.take(16))
	return b, r.done()
}

// The relay's UDP port answers binding requests: an agent learns the
// address its UDP socket has as the relay sees it (its public address
// behind NAT). Only agents attached over TCP can ask, with their session's
// binding token; anything else gets no answer, and an answer is never
// larger than its request, so the port is no reflector. The types have
// bit 0x40 clear, so that an agent's UDP socket tells them from QUIC
// packets, which always have it set.
//
//	request:  type u8 (0x31), token [16], txid [8], padding to BindingRequestLen
//	response: type u8 (0x32), txid [8], family u8 (4 or 6), ip [4|16], port u16
const (
	UDPBindingRequest  byte = 0x31
	UDPBindingResponse byte = 0x32
	// BindingRequestLen is the size of every binding request.
	BindingRequestLen = 64
)

// AppendBindingRequest appends a binding request.
func AppendBindingRequest(b []byte, token [16]byte, txid [8]byte) []byte {
	start := len(b)
	b = append(append(append(b, UDPBindingRequest), token[:]...), txid[:]...)
	return append(b, make([]byte, BindingRequestLen-(len(b)-start))...)
}

// ParseBindingRequest parses a binding request.
func ParseBindingRequest(p []byte) (token [16]byte, txid [8]byte, err error) {
	if len(p) != BindingRequestLen || p[0] != UDPBindingRequest {
		return token, txid, ErrMalformed
	}
	copy(token[:], p[1:17])
	copy(txid[:], p[17:25])
	return token, txid, nil
}

// AppendBindingResponse appends a binding response.
func AppendBindingResponse(b []byte, txid [8]byte, addr netip.AddrPort) []byte {
	return AppendAddrPort(append(append(b, UDPBindingResponse), txid[:]...), addr)
}

// ParseBindingResponse parses a binding response.
func ParseBindingResponse(p []byte) (txid [8]byte, addr netip.AddrPort, err error) {
	if len(p) < 9 || p[0] != UDPBindingResponse {
		return txid, addr, ErrMalformed
	}
	copy(txid[:], p[1:9])
	addr, rest, err := ParseAddrPort(p[9:])
	if err == nil && len(rest) != 0 {
		err = ErrMalformed
	}
	return txid, addr, err
}

// AppendAddrPort appends an IP address and port as the binding response
// (and the agents' direct-path candidates) carry them: family u8 (4 or 6),
// ip [4|16], port u16. An IPv4-mapped IPv6 address is written as IPv4.
func AppendAddrPort(b []byte, ap netip.AddrPort) []byte {
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		a := ip.As4()
		b = append(append(b, 4), a[:]...)
	} else {
		a := ip.As16()
		b = append(append(b, 6), a[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// ParseAddrPort parses an address written by [AppendAddrPort] at the start
// of b and returns it with the bytes after it.
func ParseAddrPort(b []byte) (netip.AddrPort, []byte, error) {
	var ip netip.Addr
	switch {
	case len(b) >= 7 && b[0] == 4:
		ip, b = netip.AddrFrom4([4]byte(b[1:5])), b[5:]
	case len(b) >= 19 && b[0] == 6:
		ip, b = netip.AddrFrom16([16]byte(b[1:17])).Unmap(), b[17:]
	default:
		return netip.AddrPort{}, nil, ErrMalformed
	}
	return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b)), b[2:], nil
}

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
