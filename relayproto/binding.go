package relayproto

import (
	"encoding/binary"
	"net/netip"
)

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
// carries them: family u8 (4 or 6), ip [4|16], port u16. An IPv4-mapped
// IPv6 address is written as IPv4. The agents' direct-path candidates
// (package peerproto) use the same encoding.
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
// of b and returns it with the bytes after it. An IPv4-mapped address
// under family 6, which AppendAddrPort never writes, is malformed: every
// address has one encoding.
func ParseAddrPort(b []byte) (netip.AddrPort, []byte, error) {
	var ip netip.Addr
	switch {
	case len(b) >= 7 && b[0] == 4:
		ip, b = netip.AddrFrom4([4]byte(b[1:5])), b[5:]
	case len(b) >= 19 && b[0] == 6:
		ip, b = netip.AddrFrom16([16]byte(b[1:17])), b[17:]
		if ip.Is4In6() {
			return netip.AddrPort{}, nil, ErrMalformed
		}
	default:
		return netip.AddrPort{}, nil, ErrMalformed
	}
	return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b)), b[2:], nil
}
