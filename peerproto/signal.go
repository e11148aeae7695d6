package peerproto

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/burrow-tunnel/burrow/identity"
)

// The path layer's signalling messages travel inside the session, in
// order, each as the payload of a [ControlPath] message. Every one starts
// with type u8, round u32: the search round it belongs to, numbered by
// the initiator from 1. A message for a newer round than the receiver's
// starts that round there.

// SignalType says what a signalling message is.
type SignalType byte

// Signalling message types. Each comment gives the layout after the type
// byte; integers are big-endian.
const (
	// SignalCandidates: round u32, count u8,
	// count × (family u8 (4 or 6), ip [4|16], port u16); count ≤
	// [MaxCandidates]. The addresses at which the sender's UDP socket may
	// be reached.
	SignalCandidates SignalType = 1
	// SignalReady: round u32. The sender has sent its openers to the
	// peer's candidates of this round.
	SignalReady SignalType = 2
	// SignalLost: round u32. The sender's direct path lost the packets
	// sent over it (the data check); taken in any round.
	SignalLost SignalType = 3
	// SignalRelays: round u32 (0: it belongs to no round), count u8,
	// count × (relay ID [32], channel u32); count ≤ [MaxRelays]. The
	// relays whose UDP port forwards datagrams to the sender (the UDP
	// relay path, relayproto's PROTOCOL.md), and the sender's channel at
	// each. It replaces the previous list; an empty one says the sender
	// takes no more datagrams through a relay.
	SignalRelays SignalType = 4
)

func (t SignalType) String() string {
	switch t {
	case SignalCandidates:
		return "candidates"
	case SignalReady:
		return "ready"
	case SignalLost:
		return "lost"
	case SignalRelays:
		return "relays"
	}
	return fmt.Sprintf("signal-%d", byte(t))
}

// Limits of signalling messages.
const (
	// SignalHeaderLen is the type and round every signalling message
	// starts with.
	SignalHeaderLen = 5
	// MaxCandidates bounds a candidates message.
	MaxCandidates = 16
	// MaxRelays bounds a relays message.
	MaxRelays = 4
	// MaxSignalLen is the largest signalling message of a known type: 16
	// IPv6 candidates. It fits a control message ([MaxControlLen]).
	MaxSignalLen = SignalHeaderLen + 1 + MaxCandidates*(1+16+2)
)

// A Signal is a parsed signalling message: [Candidates], [Ready], [Lost]
// or [Relays].
type Signal interface {
	isSignal()
}

// Candidates lists the addresses at which the sender's UDP socket may be
// reached, for one search round.
type Candidates struct {
	Round uint32
	Addrs []netip.AddrPort
}

// Ready says the sender has sent its openers this round.
type Ready struct {
	Round uint32
}

// Lost says the sender's direct path lost the packets sent over it.
type Lost struct {
	Round uint32
}

// Relays lists the relays that forward datagrams to the sender, and its
// channel at each.
type Relays struct {
	Round  uint32
	Relays []RelayChannel
}

// A RelayChannel is an agent's channel at a relay.
type RelayChannel struct {
	Relay   identity.ID
	Channel uint32
}

func (Candidates) isSignal() {}
func (Ready) isSignal()      {}
func (Lost) isSignal()       {}
func (Relays) isSignal()     {}

// AppendRelays appends a relays message with the first MaxRelays of
// r.Relays.
func AppendRelays(b []byte, r Relays) []byte {
	rs := r.Relays[:min(len(r.Relays), MaxRelays)]
	b = binary.BigEndian.AppendUint32(append(b, byte(SignalRelays)), r.Round)
	b = append(b, byte(len(rs)))
	for _, rc := range rs {
		b = binary.BigEndian.AppendUint32(append(b, rc.Relay[:]...), rc.Channel)
	}
	return b
}

// AppendCandidates appends a candidates message with the first
// MaxCandidates of c.Addrs.
func AppendCandidates(b []byte, c Candidates) []byte {
	addrs := c.Addrs[:min(len(c.Addrs), MaxCandidates)]
	b = binary.BigEndian.AppendUint32(append(b, byte(SignalCandidates)), c.Round)
	b = append(b, byte(len(addrs)))
	for _, a := range addrs {
		b = appendAddrPort(b, a)
	}
	return b
}

// AppendReady appends a ready message.
func AppendReady(b []byte, r Ready) []byte {
	return binary.BigEndian.AppendUint32(append(b, byte(SignalReady)), r.Round)
}

// AppendLost appends a lost message.
func AppendLost(b []byte, l Lost) []byte {
	return binary.BigEndian.AppendUint32(append(b, byte(SignalLost)), l.Round)
}

// ParseSignal parses a whole signalling message. One of a type this
// package does not know fails with [ErrUnknownType] (once it has a type
// and a round): a newer peer's, to be skipped. The addresses of
// [Candidates] are new memory; IPv4-mapped ones come back as IPv4.
func ParseSignal(b []byte) (Signal, error) {
	if len(b) < SignalHeaderLen {
		return nil, fmt.Errorf("%w: signalling message of %d bytes", ErrTruncated, len(b))
	}
	t, round, body := SignalType(b[0]), binary.BigEndian.Uint32(b[1:5]), b[5:]
	switch t {
	case SignalCandidates:
		addrs, err := parseCandidates(body)
		if err != nil {
			return nil, err
		}
		return Candidates{Round: round, Addrs: addrs}, nil
	case SignalReady, SignalLost:
		if len(body) != 0 {
			return nil, fmt.Errorf("%w: %s of %d bytes", ErrMalformed, t, len(b))
		}
		if t == SignalReady {
			return Ready{Round: round}, nil
		}
		return Lost{Round: round}, nil
	case SignalRelays:
		rs, err := parseRelays(body)
		if err != nil {
			return nil, err
		}
		return Relays{Round: round, Relays: rs}, nil
	}
	return nil, fmt.Errorf("%w: signalling message type %d", ErrUnknownType, b[0])
}

// parseCandidates parses the body of a candidates message: count u8 and
// the addresses.
func parseCandidates(b []byte) ([]netip.AddrPort, error) {
	if len(b) < 1 {
		return nil, fmt.Errorf("%w: candidates without a count", ErrTruncated)
	}
	n := int(b[0])
	if n > MaxCandidates {
		return nil, fmt.Errorf("%w: %d candidates", ErrMalformed, n)
	}
	b = b[1:]
	out := make([]netip.AddrPort, 0, n)
	for range n {
		var a netip.AddrPort
		var err error
		if a, b, err = parseAddrPort(b); err != nil {
			return nil, fmt.Errorf("%w: candidate %d of %d", err, len(out)+1, n)
		}
		out = append(out, a)
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the candidates", ErrMalformed, len(b))
	}
	return out, nil
}

// parseRelays parses the body of a relays message: count u8 and the
// relays.
func parseRelays(b []byte) ([]RelayChannel, error) {
	const each = identity.IDLen + 4
	if len(b) < 1 {
		return nil, fmt.Errorf("%w: relays without a count", ErrTruncated)
	}
	n := int(b[0])
	switch {
	case n > MaxRelays:
		return nil, fmt.Errorf("%w: %d relays", ErrMalformed, n)
	case len(b)-1 < n*each:
		return nil, fmt.Errorf("%w: %d relays in %d bytes", ErrTruncated, n, len(b)-1)
	case len(b)-1 > n*each:
		return nil, fmt.Errorf("%w: %d bytes after the relays", ErrMalformed, len(b)-1-n*each)
	}
	out := make([]RelayChannel, n)
	for i := range out {
		e := b[1+i*each:]
		out[i] = RelayChannel{Relay: identity.ID(e[:identity.IDLen]), Channel: binary.BigEndian.Uint32(e[identity.IDLen:each])}
	}
	return out, nil
}
