package fleet

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io/fs"
	"sync"

	"github.com/burrow-tunnel/burrow/identity"
)

// ExtensionOID identifies the X.509 extension in which a fleet relay's
// self-signed certificate carries the signed fleet map (see FORMAT.md).
// The extension is not critical: a TLS stack that does not know it
// ignores it.
var ExtensionOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 61529, 14, 1}

// Extension returns the certificate extension carrying a signed map.
func Extension(signed []byte) pkix.Extension {
	return pkix.Extension{Id: ExtensionOID, Critical: false, Value: signed}
}

// CreateKey creates a new fleet key at path (mode 0600, parent
// directories 0700). It never overwrites a file: a lost or replaced fleet
// key orphans every agent that pins its ID.
func CreateKey(path string) (*identity.Identity, error) {
	key, err := identity.Generate()
	if err != nil {
		return nil, err
	}
	if err := key.Save(path); errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("fleet key %s exists already: a fleet has one key, which agents pin; use it, or remove the file only to start a new fleet that no agent trusts yet: %w", path, err)
	} else if err != nil {
		return nil, fmt.Errorf("fleet key: %w", err)
	}
	return key, nil
}

// LoadKey reads the fleet key at path, with the checks of
// [identity.Load] (no key that other users may read or replace).
func LoadKey(path string) (*identity.Identity, error) {
	key, err := identity.Load(path)
	if err != nil {
		return nil, fmt.Errorf("fleet key: %w", err)
	}
	return key, nil
}

// Versions remembers, per fleet, the highest map version accepted, and
// refuses lower ones. Its zero value remembers nothing; it is safe for
// concurrent use.
type Versions struct {
	mu      sync.Mutex
	highest map[identity.ID]uint64 // guarded by mu
}

// A RollbackError is a fleet map older than one the agent has accepted.
type RollbackError struct {
	Relay    string // the relay's address, if known
	Fleet    identity.ID
	Version  uint64 // shown by the relay
	Accepted uint64 // the highest accepted before
	RelayID  identity.ID
}

func (e *RollbackError) Error() string {
	return fmt.Sprintf("relay %s (ID %s) shows version %d of the map of fleet %s, older than version %d seen before: it may have been removed from the fleet; use another relay of the fleet",
		orUnknown(e.Relay), e.RelayID.Short(), e.Version, e.Fleet.Short(), e.Accepted)
}

// Is makes every RollbackError match [ErrRefused].
func (e *RollbackError) Is(target error) bool { return target == ErrRefused }

// Accept records version v of fleet f, or fails with a [*RollbackError]
// if a higher version was accepted before.
func (vs *Versions) Accept(f identity.ID, v uint64) error {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if h := vs.highest[f]; v < h {
		return &RollbackError{Fleet: f, Version: v, Accepted: h}
	}
	if vs.highest == nil {
		vs.highest = make(map[identity.ID]uint64)
	}
	vs.highest[f] = v
	return nil
}

// Highest returns the highest version of fleet f accepted, 0 if none.
func (vs *Versions) Highest(f identity.ID) uint64 {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	return vs.highest[f]
}

// VerifyRelay returns a [tls.Config.VerifyConnection] function that
// accepts a relay whose leaf certificate's key has the pinned ID (a relay
// pinned by its own ID), or whose certificate carries a map of the fleet
// with the pinned ID, signed by that fleet's key, no older than any
// version seen accepts (versions records it), and listing the leaf's key.
// addr names the relay in errors. A relay without a map whose key is not
// the pinned one fails with an [*identity.KeyMismatchError]; one refused
// for its map, with an error matching [ErrRefused].
func VerifyRelay(pinned identity.ID, addr string, versions *Versions) func(tls.ConnectionState) error {
	pinnedKey := identity.VerifyPinned("relay", pinned)
	return func(cs tls.ConnectionState) error {
		err := pinnedKey(cs)
		if err == nil || len(cs.PeerCertificates) == 0 {
			return err
		}
		_, err = VerifyCertificate(cs.PeerCertificates[0], pinned, addr, versions)
		return err
	}
}

// VerifyCertificate checks the fleet map a relay's certificate carries
// against the pinned fleet ID, as [VerifyRelay] does for a key other than
// the pinned one, and returns the map.
func VerifyCertificate(leaf *x509.Certificate, pinned identity.ID, addr string, versions *Versions) (Map, error) {
	pub, ok := leaf.PublicKey.(ed25519.PublicKey)
	if !ok {
		return Map{}, &identity.KeyMismatchError{Peer: "relay", Expected: pinned}
	}
	relayID := identity.IDOf(pub)
	var signed []byte
	for _, e := range leaf.Extensions {
		if e.Id.Equal(ExtensionOID) {
			signed = e.Value
		}
	}
	if signed == nil {
		return Map{}, &identity.KeyMismatchError{Peer: "relay", Expected: pinned, Got: relayID}
	}
	m, err := Verify(signed, pinned)
	if err != nil {
		if ff, ok := err.(*ForeignFleetError); ok {
			ff.Relay = addr
			return Map{}, ff
		}
		return Map{}, fmt.Errorf("relay %s shows a fleet map that does not check (%w): %w", orUnknown(addr), ErrRefused, err)
	}
	if versions != nil {
		if err := versions.Accept(m.FleetID, m.Version); err != nil {
			rb := err.(*RollbackError)
			rb.Relay, rb.RelayID = addr, relayID
			return Map{}, rb
		}
	}
	if _, ok := m.Relay(relayID); !ok {
		return Map{}, &NotInFleetError{Relay: addr, RelayID: relayID, Fleet: m.FleetID, MapVersion: m.Version}
	}
	return m, nil
}
