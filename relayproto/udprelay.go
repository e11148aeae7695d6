package relayproto

import (
	"encoding/binary"
	"net/netip"
)

// The UDP relay path. A relay that offers [ExtUDPRelay] in its server hello
// forwards agents' end-to-end packets as datagrams on its UDP port (the
// port of [ExtUDPBinding]), beside the TCP session that stays the agent's
// link. The relay neither decrypts nor adds any cryptography of its own:
// the packets are the agents' QUIC packets, already encrypted and
// authenticated end to end.
//
//	bind:      type u8 (0x33), token [16], txid [8], zero padding to UDPBindLen       agent → relay
//	bound:     type u8 (0x34), txid [8], tag [8], family u8 (4 or 6), ip [4|16], port u16
//	                                                                                    relay → agent
//	send:      type u8 (0x35), tag [8], channel u32 (the destination's), packet         agent → relay
//	recv:      type u8 (0x36), tag [8] (the receiver's), channel u32 (the sender's), packet
//	                                                                                    relay → agent
//	keepalive: type u8 (0x37), tag [8], seq u64                                         agent → relay
//	alive:     type u8 (0x38), tag [8], seq u64                                         relay → agent
//
// A bind (with the session's binding token) binds the address it comes
// from to the agent's session, under a new random tag that only the bound
// reply carries: the tag then proves, in every datagram, that the sender
// receives at that address. Until a datagram with the tag has come back
// from the address, the relay forwards nothing to it; after, it takes
// send and keepalive datagrams from that address with that tag, and from
// nowhere else. A channel names an attached agent on the relay (the
// server hello's [UDPRelay] gives each its own); agents tell their peers
// theirs end to end. The relay rewrites a send into a recv in place, its
// 13-byte header only, and sends it to the destination's bound address,
// if the same rules as on TCP let the sender reach the destination. All
// types have bit 0x40 clear, as QUIC packets never do.
const (
	UDPBind      byte = 0x33
	UDPBound     byte = 0x34
	UDPSend      byte = 0x35
	UDPRecv      byte = 0x36
	UDPKeepalive byte = 0x37
	UDPAlive     byte = 0x38

	// UDPTagLen is the length of a binding's tag.
	UDPTagLen = 8
	// UDPBindLen is the size of every bind datagram: more than any answer.
	UDPBindLen = 64
	// UDPDataHeaderLen is the header of send and recv datagrams.
	UDPDataHeaderLen = 1 + UDPTagLen + 4
	// UDPKeepaliveLen is the size of keepalive and alive datagrams.
	UDPKeepaliveLen = 1 + UDPTagLen + 8
	// MaxUDPDatagram is the largest datagram on the UDP relay path: it
	// fits an IPv6 packet in a 1500-byte MTU.
	MaxUDPDatagram = 1452
	// MaxUDPPacket is the largest packet a send or recv carries.
	MaxUDPPacket = MaxUDPDatagram - UDPDataHeaderLen
)

// UDPRelay is the value of a server hello's [ExtUDPRelay]: the agent's
// channel on the relay, never 0.
type UDPRelay struct {
	Channel uint32
}

// AppendUDPRelay appends the extension value of r.
func AppendUDPRelay(dst []byte, r UDPRelay) []byte {
	return binary.BigEndian.AppendUint32(dst, r.Channel)
}

// ParseUDPRelay parses the extension value of a UDP relay.
func ParseUDPRelay(p []byte) (UDPRelay, error) {
	r := reader{b: p}
	u := UDPRelay{Channel: r.u32()}
	if err := r.done(); err != nil {
		return UDPRelay{}, err
	}
	if u.Channel == 0 {
		return UDPRelay{}, ErrMalformed
	}
	return u, nil
}

// AppendUDPBind appends a bind datagram.
func AppendUDPBind(b []byte, token [16]byte, txid [8]byte) []byte {
	start := len(b)
	b = append(append(append(b, UDPBind), token[:]...), txid[:]...)
	return append(b, make([]byte, UDPBindLen-(len(b)-start))...)
}

// ParseUDPBind parses a bind datagram.
func ParseUDPBind(p []byte) (token [16]byte, txid [8]byte, err error) {
	if len(p) != UDPBindLen || p[0] != UDPBind {
		return token, txid, ErrMalformed
	}
	copy(token[:], p[1:17])
	copy(txid[:], p[17:25])
	return token, txid, nil
}

// AppendUDPBound appends a bound datagram: the answer to a bind with the
// txid, the binding's tag and the address the bind came from.
func AppendUDPBound(b []byte, txid [8]byte, tag [UDPTagLen]byte, addr netip.AddrPort) []byte {
	return AppendAddrPort(append(append(append(b, UDPBound), txid[:]...), tag[:]...), addr)
}

// ParseUDPBound parses a bound datagram.
func ParseUDPBound(p []byte) (txid [8]byte, tag [UDPTagLen]byte, addr netip.AddrPort, err error) {
	if len(p) < 1+8+UDPTagLen || p[0] != UDPBound {
		return txid, tag, addr, ErrMalformed
	}
	copy(txid[:], p[1:9])
	copy(tag[:], p[9:17])
	addr, rest, err := ParseAddrPort(p[17:])
	if err == nil && len(rest) != 0 {
		err = ErrMalformed
	}
	return txid, tag, addr, err
}

// AppendUDPData appends the header of a send or recv datagram (typ); the
// packet follows it.
func AppendUDPData(b []byte, typ byte, tag [UDPTagLen]byte, channel uint32) []byte {
	return binary.BigEndian.AppendUint32(append(append(b, typ), tag[:]...), channel)
}

// ParseUDPData parses a send or recv datagram: its type, tag and channel,
// and the packet, which aliases p. A packet longer than [MaxUDPPacket] is
// malformed; an empty one is not.
func ParseUDPData(p []byte) (typ byte, tag [UDPTagLen]byte, channel uint32, packet []byte, err error) {
	if len(p) < UDPDataHeaderLen || (p[0] != UDPSend && p[0] != UDPRecv) || len(p) > MaxUDPDatagram {
		return 0, tag, 0, nil, ErrMalformed
	}
	copy(tag[:], p[1:9])
	return p[0], tag, binary.BigEndian.Uint32(p[9:13]), p[UDPDataHeaderLen:], nil
}

// PutUDPDataHeader rewrites the header at the start of p, a send or recv
// datagram, in place: the relay turns a send into a recv without moving
// the packet.
func PutUDPDataHeader(p []byte, typ byte, tag [UDPTagLen]byte, channel uint32) {
	p[0] = typ
	copy(p[1:9], tag[:])
	binary.BigEndian.PutUint32(p[9:13], channel)
}

// AppendUDPKeepalive appends a keepalive or alive datagram (typ).
func AppendUDPKeepalive(b []byte, typ byte, tag [UDPTagLen]byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(append(b, typ), tag[:]...), seq)
}

// ParseUDPKeepalive parses a keepalive or alive datagram.
func ParseUDPKeepalive(p []byte) (typ byte, tag [UDPTagLen]byte, seq uint64, err error) {
	if len(p) != UDPKeepaliveLen || (p[0] != UDPKeepalive && p[0] != UDPAlive) {
		return 0, tag, 0, ErrMalformed
	}
	copy(tag[:], p[1:9])
	return p[0], tag, binary.BigEndian.Uint64(p[9:17]), nil
}
