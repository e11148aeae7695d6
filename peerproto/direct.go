package peerproto

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// The datagrams of a direct path travel on the agents' UDP sockets beside
// the session's QUIC packets, which always have bit 0x40 of their first
// byte set; the types below (and the relay's binding datagrams, package
// relayproto) have it clear.

// DatagramType says what a direct-path datagram is.
type DatagramType byte

// Datagram types. Each comment gives the datagram's layout after the type
// byte; integers are big-endian.
const (
	// DatagramProbe: pathID [8], txid [8], mac [16], zero padding. At
	// least [ProbeMinLen] bytes in all (so that a reply is never larger
	// than its probe), [MaxPacketLen] when it must show that the path
	// carries the largest packets. The mac is the first 16 bytes of
	// HMAC-SHA256(key, type ‖ pathID ‖ txid). Receivers ignore what the
	// padding holds.
	DatagramProbe DatagramType = 0x21
	// DatagramReply: pathID [8], txid [8], received u64, mac [16];
	// [ReplyLen] bytes. It echoes a probe's pathID and txid; received
	// counts the QUIC packets the replier has taken from the prober over
	// direct paths (the data check). The mac is the first 16 bytes of
	// HMAC-SHA256(key, type ‖ pathID ‖ txid ‖ received).
	DatagramReply DatagramType = 0x22
	// DatagramOpener: pathID [8]; [OpenerLen] bytes. Sent with a TTL of 2
	// to open the sender's NAT towards the peer; it is not meant to
	// arrive, and a receiver does nothing with it.
	DatagramOpener DatagramType = 0x23
)

func (t DatagramType) String() string {
	switch t {
	case DatagramProbe:
		return "probe"
	case DatagramReply:
		return "reply"
	case DatagramOpener:
		return "opener"
	}
	return fmt.Sprintf("datagram-0x%02x", byte(t))
}

// Sizes of direct-path datagrams and their fields.
const (
	PathIDLen = 8
	TxIDLen   = 8
	MACLen    = 16
	// ProbeMinLen is the smallest probe: as large as a reply.
	ProbeMinLen = ReplyLen
	// ReplyLen is the size of every reply.
	ReplyLen = 1 + PathIDLen + TxIDLen + 8 + MACLen
	// OpenerLen is the size of every opener.
	OpenerLen = 1 + PathIDLen
	// MaxPacketLen is the largest datagram an agent sends on a direct path
	// (a QUIC packet or a full-size probe): a path is used only once a
	// probe this big has crossed it.
	MaxPacketLen = 1452
)

// ExporterLabel is the TLS exporter label (RFC 8446 §7.5, no context) of
// the key under which the two ends of a session sign their probes and
// replies; [KeyLen] bytes of it. Only the two ends know it.
const ExporterLabel = "burrow direct path"

// KeyLen is the length of the key exported with [ExporterLabel].
const KeyLen = 32

// Labels of the path IDs, hashed under the key.
const (
	initiatorLabel = "burrow direct path initiator"
	responderLabel = "burrow direct path responder"
)

// PathID returns the path ID of the probes one side sends under key: the
// initiator's (the client's) if initiator is true, else the responder's.
// It is the first 8 bytes of HMAC-SHA256(key, "burrow direct path
// initiator") or of HMAC-SHA256(key, "burrow direct path responder").
func PathID(key []byte, initiator bool) [PathIDLen]byte {
	label := responderLabel
	if initiator {
		label = initiatorLabel
	}
	return [PathIDLen]byte(sum(key, []byte(label)))
}

// sum returns HMAC-SHA256(key, the concatenation of parts).
func sum(key []byte, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

// A Datagram is a parsed direct-path datagram: a [Probe], [Reply] or
// [Opener].
type Datagram interface {
	isDatagram()
}

// A Probe asks the peer to answer with a [Reply] from where it arrives.
type Probe struct {
	PathID [PathIDLen]byte // names the prober's direction of one search
	TxID   [TxIDLen]byte   // numbers the prober's probes under one key, from 1
	MAC    [MACLen]byte
	// Len is the size of the datagram, padding included. [AppendProbe]
	// pads to ProbeMinLen at least.
	Len int
}

// A Reply answers a [Probe].
type Reply struct {
	PathID [PathIDLen]byte // the probe's
	TxID   [TxIDLen]byte   // the probe's
	// Received counts the QUIC packets the replier has taken from the
	// prober over direct paths.
	Received uint64
	MAC      [MACLen]byte
}

// An Opener opens the sender's NAT towards the peer.
type Opener struct {
	PathID [PathIDLen]byte // the sender's
}

func (Probe) isDatagram()  {}
func (Reply) isDatagram()  {}
func (Opener) isDatagram() {}

func (p Probe) mac(key []byte) [MACLen]byte {
	return [MACLen]byte(sum(key, []byte{byte(DatagramProbe)}, p.PathID[:], p.TxID[:]))
}

// Signed returns p with the MAC key gives it.
func (p Probe) Signed(key []byte) Probe {
	p.MAC = p.mac(key)
	return p
}

// Valid reports whether p carries the MAC key gives it.
func (p Probe) Valid(key []byte) bool {
	m := p.mac(key)
	return hmac.Equal(m[:], p.MAC[:])
}

func (r Reply) mac(key []byte) [MACLen]byte {
	return [MACLen]byte(sum(key, []byte{byte(DatagramReply)}, r.PathID[:], r.TxID[:],
		binary.BigEndian.AppendUint64(nil, r.Received)))
}

// Signed returns r with the MAC key gives it.
func (r Reply) Signed(key []byte) Reply {
	r.MAC = r.mac(key)
	return r
}

// Valid reports whether r carries the MAC key gives it.
func (r Reply) Valid(key []byte) bool {
	m := r.mac(key)
	return hmac.Equal(m[:], r.MAC[:])
}

// AppendProbe appends a probe of p.Len bytes (ProbeMinLen if fewer),
// zero-padded.
func AppendProbe(b []byte, p Probe) []byte {
	start := len(b)
	b = append(append(append(append(b, byte(DatagramProbe)), p.PathID[:]...), p.TxID[:]...), p.MAC[:]...)
	n := max(p.Len, ProbeMinLen) - (len(b) - start)
	return append(b, make([]byte, n)...)
}

// AppendReply appends a reply.
func AppendReply(b []byte, r Reply) []byte {
	b = append(append(append(b, byte(DatagramReply)), r.PathID[:]...), r.TxID[:]...)
	b = binary.BigEndian.AppendUint64(b, r.Received)
	return append(b, r.MAC[:]...)
}

// AppendOpener appends an opener.
func AppendOpener(b []byte, o Opener) []byte {
	return append(append(b, byte(DatagramOpener)), o.PathID[:]...)
}

// ParseDatagram parses a direct-path datagram. A datagram of another type
// (a QUIC packet, a relay's binding response) fails with
// [ErrUnknownType]. It checks sizes only: the caller checks the MAC
// ([Probe.Valid], [Reply.Valid]) under the key the path ID names.
func ParseDatagram(b []byte) (Datagram, error) {
	if len(b) == 0 {
		return nil, ErrTruncated
	}
	t := DatagramType(b[0])
	switch t {
	case DatagramProbe:
		if len(b) < ProbeMinLen {
			return nil, fmt.Errorf("%w: probe of %d bytes", ErrTruncated, len(b))
		}
		return Probe{PathID: [8]byte(b[1:9]), TxID: [8]byte(b[9:17]), MAC: [16]byte(b[17:33]), Len: len(b)}, nil
	case DatagramReply:
		if err := wantLen(t, b, ReplyLen); err != nil {
			return nil, err
		}
		return Reply{PathID: [8]byte(b[1:9]), TxID: [8]byte(b[9:17]),
			Received: binary.BigEndian.Uint64(b[17:25]), MAC: [16]byte(b[25:41])}, nil
	case DatagramOpener:
		if err := wantLen(t, b, OpenerLen); err != nil {
			return nil, err
		}
		return Opener{PathID: [8]byte(b[1:9])}, nil
	}
	return nil, fmt.Errorf("%w: datagram type 0x%02x", ErrUnknownType, b[0])
}

// wantLen checks that datagram b of type t is n bytes long.
func wantLen(t DatagramType, b []byte, n int) error {
	switch {
	case len(b) < n:
		return fmt.Errorf("%w: %s of %d bytes", ErrTruncated, t, len(b))
	case len(b) > n:
		return fmt.Errorf("%w: %s of %d bytes", ErrMalformed, t, len(b))
	}
	return nil
}
