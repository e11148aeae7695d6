// Package identity holds the keys that name every burrow agent and relay.
//
// An agent's identity is an Ed25519 key pair. Its [ID] is the SHA-256 hash of
// the public key's SubjectPublicKeyInfo (the RFC 7469 "pin-sha256" of the key),
// so an ID is self-certifying: whoever presents a key can be checked against an
// ID without asking anyone. Keys travel as self-signed X.509 certificates in
// TLS 1.3 and are checked by pinning ([VerifyPinned]); no certificate authority
// is involved between agents.
//
// It is the bottom layer: it imports nothing of burrow but the file
// permission checks, and holds no network code.
package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/burrow-tunnel/burrow/internal/fileperm"
)

// IDLen is the length of an [ID] in bytes.
const IDLen = sha256.Size

// An ID names an agent or relay: the SHA-256 of its public key's
// SubjectPublicKeyInfo. The zero ID names no one.
type ID [IDLen]byte

// encoding is lowercase RFC 4648 base32 without padding: letters and the
// digits 2–7 only, so an ID is safe unquoted in a shell, a URL or YAML.
var encoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// idStringLen is the length of [ID.String]: 52 characters.
var idStringLen = encoding.EncodedLen(IDLen)

// shortLen is the length of [ID.Short].
const shortLen = 8

// ErrInvalidID is returned (wrapped) by [ParseID] for a string that is not an ID.
var ErrInvalidID = errors.New("invalid ID")

// String returns the full 52-character form of id.
func (id ID) String() string { return encoding.EncodeToString(id[:]) }

// Short returns the first 8 characters of id, for logs and humans. It is not
// unique enough to pin a key; configuration always takes the full form.
func (id ID) Short() string { return id.String()[:shortLen] }

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// MarshalText implements [encoding.TextMarshaler].
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements [encoding.TextUnmarshaler].
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// ParseID parses the full form of an ID. Case and surrounding space are
// ignored, so an ID copied from anywhere parses.
func ParseID(s string) (ID, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) != idStringLen {
		if len(s) == shortLen {
			return ID{}, fmt.Errorf("%w %q: this is the short form; use the full %d-character ID", ErrInvalidID, s, idStringLen)
		}
		return ID{}, fmt.Errorf("%w %q: want %d characters, got %d", ErrInvalidID, s, idStringLen, len(s))
	}
	var id ID
	n, err := encoding.Decode(id[:], []byte(s))
	if err != nil || n != IDLen {
		return ID{}, fmt.Errorf("%w %q: only letters a-z and digits 2-7 may appear", ErrInvalidID, s)
	}
	// The last character carries one bit; its other four must be zero, so
	// that an ID has one spelling only.
	if encoding.EncodeToString(id[:]) != s {
		return ID{}, fmt.Errorf("%w %q: not an ID (its last character would be a or q): check for a typo", ErrInvalidID, s)
	}
	return id, nil
}

// IDOf returns the ID of a public key.
func IDOf(pub ed25519.PublicKey) ID {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		// Only an invalid key length makes this fail; callers hold real keys.
		panic(fmt.Sprintf("identity: marshal public key: %v", err))
	}
	return ID(sha256.Sum256(der))
}

// An Identity is a private key and the ID it proves. It is safe for
// concurrent use.
type Identity struct {
	priv ed25519.PrivateKey
	id   ID
}

// Generate returns a new random identity.
func Generate() (*Identity, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return FromPrivateKey(priv), nil
}

// FromPrivateKey returns the identity of an Ed25519 private key.
func FromPrivateKey(priv ed25519.PrivateKey) *Identity {
	return &Identity{priv: priv, id: IDOf(priv.Public().(ed25519.PublicKey))}
}

// ID returns the identity's ID.
func (i *Identity) ID() ID { return i.id }

// PublicKey returns the identity's public key.
func (i *Identity) PublicKey() ed25519.PublicKey { return i.priv.Public().(ed25519.PublicKey) }

// PrivateKey returns the identity's private key.
func (i *Identity) PrivateKey() ed25519.PrivateKey { return i.priv }

// Sign signs msg with the identity's key.
func (i *Identity) Sign(msg []byte) []byte { return ed25519.Sign(i.priv, msg) }

// pemType is the PEM block type of a key file: PKCS #8, readable by OpenSSL.
const pemType = "PRIVATE KEY"

// ErrUnsafePermissions is matched by the error of [Load] or [Save] for a
// key file, or a directory holding one, that another user owns or may
// read or change (see [Load]).
var ErrUnsafePermissions = fileperm.ErrUnsafe

// Load reads an identity from a PEM-encoded PKCS #8 Ed25519 key file. On
// Unix it refuses (as ssh does) a key file that other users may read or
// write, or that a user other than the agent's or root owns, and a key in
// a directory that such a user owns or that others may write: whoever
// reads the key is the agent, and whoever can replace it decides who the
// agent is. The error matches [ErrUnsafePermissions] and says how to fix
// it.
func Load(path string) (*Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read identity: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read identity: %w", err)
	}
	if err := fileperm.CheckKey(path, fi); err != nil {
		return nil, fmt.Errorf("identity %s: %w", path, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read identity: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemType {
		return nil, fmt.Errorf("read identity %s: not a PEM %q block", path, pemType)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("read identity %s: %w", path, err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("read identity %s: key is %T, want an Ed25519 key", path, key)
	}
	return FromPrivateKey(priv), nil
}

// LoadOrCreate loads the identity at path, or creates a new one there (mode
// 0600, parent directories 0700) if the file does not exist. created reports
// whether a new key was written.
func LoadOrCreate(path string) (id *Identity, created bool, err error) {
	id, err = Load(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return id, false, err
	}
	id, err = Generate()
	if err != nil {
		return nil, false, err
	}
	if err := id.Save(path); err != nil {
		// Another process may have created the key first; use that one.
		if errors.Is(err, fs.ErrExist) {
			id, err = Load(path)
			return id, false, err
		}
		return nil, false, err
	}
	return id, true, nil
}

// Save writes the identity's key to path (mode 0600). It never overwrites
// an existing file: a key is a name, and losing it loses every pairing.
// Like [Load], it refuses a directory that another user owns or may write.
func (i *Identity) Save(path string) error {
	der, err := x509.MarshalPKCS8PrivateKey(i.priv)
	if err != nil {
		return fmt.Errorf("encode identity: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write identity: %w", err)
	}
	if err := fileperm.CheckDir(filepath.Dir(path), "directory"); err != nil {
		return fmt.Errorf("identity %s: %w", path, err)
	}
	// Write a temporary file and link it into place, so a crash never leaves
	// a half-written key at path and a concurrent creator never sees one.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".identity-*")
	if err != nil {
		return fmt.Errorf("write identity: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write identity: %w", err)
	}
	if err := pem.Encode(tmp, &pem.Block{Type: pemType, Bytes: der}); err != nil {
		tmp.Close()
		return fmt.Errorf("write identity: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write identity: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write identity: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("write identity: %w", err)
	}
	return nil
}
