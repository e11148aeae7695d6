package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Certificate returns a self-signed TLS certificate for the identity's key.
// Peers check it by pinning the key ([VerifyPinned]), never by its issuer,
// names or dates, so its fields are informational: the subject is the ID.
// exts are added to the certificate as they are (a fleet relay's carries
// its fleet map in one).
func (i *Identity) Certificate(exts ...pkix.Extension) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: i.id.String()},
		DNSNames:     []string{i.id.String()},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(20, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},

		ExtraExtensions: exts,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, i.PublicKey(), i.priv)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parse certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: i.priv, Leaf: leaf}, nil
}

// ErrKeyMismatch is matched (with [errors.Is]) by every [KeyMismatchError].
var ErrKeyMismatch = errors.New("key mismatch")

// A KeyMismatchError reports that a peer proved a key other than the one
// pinned for it.
type KeyMismatchError struct {
	Peer     string // what the peer is: "device", "relay", …
	Expected ID
	Got      ID // zero if the peer presented no usable key
}

func (e *KeyMismatchError) Error() string {
	got := "no Ed25519 key"
	if !e.Got.IsZero() {
		got = e.Got.String()
	}
	return fmt.Sprintf("key mismatch: expected %s %s, got %s (check the %s ID you were given)",
		e.Peer, e.Expected, got, e.Peer)
}

// Is makes every KeyMismatchError match [ErrKeyMismatch].
func (e *KeyMismatchError) Is(target error) bool { return target == ErrKeyMismatch }

// ErrNoPeerKey is returned when a TLS peer presented no Ed25519 certificate.
var ErrNoPeerKey = errors.New("peer presented no Ed25519 certificate")

// PeerID returns the ID of the key in the peer's leaf certificate.
func PeerID(cs tls.ConnectionState) (ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return ID{}, ErrNoPeerKey
	}
	pub, ok := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
	if !ok {
		return ID{}, ErrNoPeerKey
	}
	return IDOf(pub), nil
}

// VerifyPinned returns a [tls.Config.VerifyConnection] function that accepts
// only a peer whose leaf key has the given ID, and fails with a
// [*KeyMismatchError] naming peer otherwise. It runs on resumed sessions too.
// The peer certificate's issuer, names and dates are deliberately not
// checked: the key is the identity.
func VerifyPinned(peer string, want ID) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		got, err := PeerID(cs)
		if err != nil {
			return &KeyMismatchError{Peer: peer, Expected: want}
		}
		if got != want {
			return &KeyMismatchError{Peer: peer, Expected: want, Got: got}
		}
		return nil
	}
}

// VerifyAnyKey is a [tls.Config.VerifyConnection] function that accepts any
// peer proving an Ed25519 key. The caller authorizes the resulting [PeerID]
// itself.
func VerifyAnyKey(cs tls.ConnectionState) error {
	_, err := PeerID(cs)
	return err
}
