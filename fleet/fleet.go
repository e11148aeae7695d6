// Package fleet is the format of a relay fleet's trust: the fleet key, the
// fleet ID that agents pin, and the fleet map that the key signs.
//
// A fleet key is an Ed25519 key like any agent's or relay's, kept in a
// file ([CreateKey], [LoadKey]); its [identity.ID] is the fleet ID. Agents
// pin the fleet ID where they would pin one relay's ID, and accept a relay
// whose certificate carries a fleet map signed by that key and listing
// the certificate's key ([VerifyCertificate]). The map ([Map]) is
// versioned, so that an agent that has seen a newer map refuses an older
// one ([Versions]): a relay removed from the map cannot come back by
// showing a map from before its removal. FORMAT.md beside this file
// describes the encoding and the check without Go.
//
// It only encodes, decodes, signs and checks. It imports nothing of burrow
// but identity, holds no network code and must not: where the map is
// stored and how relays learn of it is the business of the packages
// above.
package fleet

import (
	"bytes"
	"cmp"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/burrow-tunnel/burrow/identity"
)

// FormatVersion is the first byte of a signed map: the encoding below.
const FormatVersion = 1

// Limits of a signed map, checked before anything is allocated.
const (
	// MaxMapLen is the largest signed map, in bytes. It travels in every
	// fleet relay's certificate.
	MaxMapLen = 64 << 10
	// MaxRelays bounds the relays of one map.
	MaxRelays = 1024
	// MaxAddrLen bounds a relay's host:port.
	MaxAddrLen = 255
	// MaxRegionLen bounds a relay's region name.
	MaxRegionLen = 63
)

// signContext prefixes the signed bytes, so that a fleet key's signature
// over a map can never be taken for its signature over anything else.
const signContext = "burrow fleet map v1\x00"

// fixedLen is the length of a signed map with no relay: format u8, key
// [32], version u64, count u16, signature [64].
const fixedLen = 1 + ed25519.PublicKeySize + 8 + 2 + ed25519.SignatureSize

var (
	// ErrTruncated is returned (wrapped) for a map that ends early.
	ErrTruncated = errors.New("fleet map truncated")
	// ErrMalformed is returned (wrapped) for a map that breaks the format.
	ErrMalformed = errors.New("malformed fleet map")
	// ErrBadSignature is returned (wrapped) for a map whose signature does
	// not verify with the key it carries.
	ErrBadSignature = errors.New("fleet map signature does not verify")
)

// A Relay is one relay of the fleet.
type Relay struct {
	ID     identity.ID // the relay's identity key's ID
	Addr   string      // host:port agents dial
	Region string      // free-form, for placement; may be empty
}

// A Map is the fleet's list of relays at one version. Its zero value is
// an empty map of no fleet.
type Map struct {
	// FleetID is the ID of the key that signed the map. [AppendMap]
	// ignores it (it signs with the key it is given); [ParseMap] and
	// [Verify] set it.
	FleetID identity.ID
	// Version increases with every change; an agent that has accepted a
	// version refuses a lower one.
	Version uint64
	// Relays, sorted by ID, each ID once.
	Relays []Relay
}

// Relay returns the relay of m with the given ID.
func (m Map) Relay(id identity.ID) (Relay, bool) {
	i, ok := slices.BinarySearchFunc(m.Relays, id, func(r Relay, id identity.ID) int { return bytes.Compare(r.ID[:], id[:]) })
	if !ok {
		return Relay{}, false
	}
	return m.Relays[i], true
}

// With returns a copy of m in which r replaces the relay with its ID, or
// is added, in order.
func (m Map) With(r Relay) Map {
	out := m
	out.Relays = slices.DeleteFunc(slices.Clone(m.Relays), func(x Relay) bool { return x.ID == r.ID })
	out.Relays = append(out.Relays, r)
	slices.SortFunc(out.Relays, func(a, b Relay) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	return out
}

// Without returns a copy of m without the relay with the given ID.
func (m Map) Without(id identity.ID) Map {
	out := m
	out.Relays = slices.DeleteFunc(slices.Clone(m.Relays), func(x Relay) bool { return x.ID == id })
	return out
}

// check reports a map that cannot be encoded.
func (m Map) check() error {
	if len(m.Relays) > MaxRelays {
		return fmt.Errorf("%w: %d relays, at most %d", ErrMalformed, len(m.Relays), MaxRelays)
	}
	for i, r := range m.Relays {
		if r.ID.IsZero() {
			return fmt.Errorf("%w: relay %d has the zero ID", ErrMalformed, i)
		}
		if i > 0 && bytes.Compare(m.Relays[i-1].ID[:], r.ID[:]) >= 0 {
			return fmt.Errorf("%w: relays not sorted by ID, or an ID twice (%s)", ErrMalformed, r.ID)
		}
		if len(r.Addr) == 0 || len(r.Addr) > MaxAddrLen {
			return fmt.Errorf("%w: relay %s: address of %d bytes, want 1 to %d", ErrMalformed, r.ID, len(r.Addr), MaxAddrLen)
		}
		if _, _, err := net.SplitHostPort(r.Addr); err != nil {
			return fmt.Errorf("%w: relay %s: address %q is not host:port", ErrMalformed, r.ID, r.Addr)
		}
		if len(r.Region) > MaxRegionLen {
			return fmt.Errorf("%w: relay %s: region of %d bytes, at most %d", ErrMalformed, r.ID, len(r.Region), MaxRegionLen)
		}
	}
	return nil
}

// AppendMap appends m, signed by key, to b. It fails for a map that
// breaks the format's rules (unsorted or repeated IDs, a limit exceeded,
// an address that is not host:port); m.FleetID is ignored.
func AppendMap(b []byte, m Map, key *identity.Identity) ([]byte, error) {
	if err := m.check(); err != nil {
		return b, err
	}
	start := len(b)
	b = append(b, FormatVersion)
	b = append(b, key.PublicKey()...)
	b = binary.BigEndian.AppendUint64(b, m.Version)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Relays)))
	for _, r := range m.Relays {
		b = append(b, r.ID[:]...)
		b = append(b, byte(len(r.Addr)))
		b = append(b, r.Addr...)
		b = append(b, byte(len(r.Region)))
		b = append(b, r.Region...)
	}
	if len(b)-start+ed25519.SignatureSize > MaxMapLen {
		return b[:start], fmt.Errorf("%w: %d bytes signed, at most %d", ErrMalformed, len(b)-start+ed25519.SignatureSize, MaxMapLen)
	}
	sig := key.Sign(signedBytes(b[start:]))
	return append(b, sig...), nil
}

func signedBytes(body []byte) []byte {
	return append([]byte(signContext), body...)
}

// ParseMap decodes a signed map and checks its signature with the key it
// carries; FleetID is that key's ID. It does not say whether the fleet is
// one to trust: [Verify] does, given the pinned fleet ID.
func ParseMap(b []byte) (Map, error) {
	if len(b) > MaxMapLen {
		return Map{}, fmt.Errorf("%w: %d bytes, at most %d", ErrMalformed, len(b), MaxMapLen)
	}
	if len(b) < fixedLen {
		return Map{}, ErrTruncated
	}
	if b[0] != FormatVersion {
		return Map{}, fmt.Errorf("%w: format %d, this agent knows %d: upgrade burrow", ErrMalformed, b[0], FormatVersion)
	}
	body, sig := b[:len(b)-ed25519.SignatureSize], b[len(b)-ed25519.SignatureSize:]
	r := body[1:]
	pub := ed25519.PublicKey(r[:ed25519.PublicKeySize])
	r = r[ed25519.PublicKeySize:]
	m := Map{FleetID: identity.IDOf(pub), Version: binary.BigEndian.Uint64(r)}
	n := int(binary.BigEndian.Uint16(r[8:]))
	r = r[10:]
	if n > MaxRelays {
		return Map{}, fmt.Errorf("%w: %d relays, at most %d", ErrMalformed, n, MaxRelays)
	}
	// Each relay takes 34 bytes at least: bound n before allocating.
	if n*(identity.IDLen+2) > len(r) {
		return Map{}, ErrTruncated
	}
	m.Relays = make([]Relay, 0, n)
	for range n {
		var rel Relay
		var ok bool
		if len(r) < identity.IDLen+1 {
			return Map{}, ErrTruncated
		}
		rel.ID = identity.ID(r[:identity.IDLen])
		r = r[identity.IDLen:]
		var addr, region []byte
		if addr, r, ok = cutString(r); !ok {
			return Map{}, ErrTruncated
		}
		if region, r, ok = cutString(r); !ok {
			return Map{}, ErrTruncated
		}
		rel.Addr, rel.Region = string(addr), string(region)
		m.Relays = append(m.Relays, rel)
	}
	if len(r) != 0 {
		return Map{}, fmt.Errorf("%w: %d bytes between the relays and the signature", ErrMalformed, len(r))
	}
	if err := m.check(); err != nil {
		return Map{}, err
	}
	if !ed25519.Verify(pub, signedBytes(body), sig) {
		return Map{}, ErrBadSignature
	}
	return m, nil
}

// cutString cuts a u8-length-prefixed string off the front of b.
func cutString(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return nil, nil, false
	}
	return b[1 : 1+int(b[0])], b[1+int(b[0]):], true
}

// Verify decodes a signed map, checks its signature, and checks that the
// key that signed it is the pinned fleet's. A map signed by another key
// fails with a [*ForeignFleetError].
func Verify(signed []byte, pinned identity.ID) (Map, error) {
	m, err := ParseMap(signed)
	if err != nil {
		return Map{}, err
	}
	if m.FleetID != pinned {
		return Map{}, &ForeignFleetError{Pinned: pinned, Got: m.FleetID}
	}
	return m, nil
}

// ErrRefused is matched (with [errors.Is]) by every error that refuses a
// relay for the fleet map it shows: [*ForeignFleetError],
// [*NotInFleetError], [*RollbackError].
var ErrRefused = errors.New("relay refused by the fleet map")

// A ForeignFleetError is a fleet map signed by a fleet other than the
// pinned one.
type ForeignFleetError struct {
	Relay  string // the relay's address, if known
	Pinned identity.ID
	Got    identity.ID
}

func (e *ForeignFleetError) Error() string {
	return fmt.Sprintf("relay %s shows a fleet map signed by fleet %s, not by the pinned fleet %s: it belongs to another fleet; check relay_id (the fleet ID \"burrow fleet init\" printed)",
		orUnknown(e.Relay), e.Got, e.Pinned)
}

// Is makes every ForeignFleetError match [ErrRefused].
func (e *ForeignFleetError) Is(target error) bool { return target == ErrRefused }

// A NotInFleetError is a relay whose key the pinned fleet's map does not
// list.
type NotInFleetError struct {
	Relay      string // the relay's address, if known
	RelayID    identity.ID
	Fleet      identity.ID
	MapVersion uint64
}

func (e *NotInFleetError) Error() string {
	return fmt.Sprintf("relay %s (ID %s) is not in the map of fleet %s (version %d): it was removed from the fleet or never added; use another relay of the fleet, or add it with \"burrow fleet add --relay-id %s\"",
		orUnknown(e.Relay), e.RelayID, e.Fleet.Short(), e.MapVersion, e.RelayID)
}

// Is makes every NotInFleetError match [ErrRefused].
func (e *NotInFleetError) Is(target error) bool { return target == ErrRefused }

func orUnknown(s string) string { return cmp.Or(s, "(unknown address)") }
