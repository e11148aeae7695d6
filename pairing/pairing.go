// Package pairing is the invite a device owner hands to a new client: its
// format and the hashes derived from its secret. The device makes invites
// and checks them; the client parses them and proves the secret inside the
// end-to-end session; the relay only ever sees a hash of the secret.
//
// An invite is a URI:
//
//	burrow://pair?device=ID&relay=HOST:PORT&relay_id=ID&secret=S&expires=UNIX[&name=NAME]
//
// relay_id is absent when the relay has a CA-signed certificate. name is
// what the device calls itself; the client may store it under another.
//
// The package only encodes, parses and hashes: it keeps no state, decides
// no role and never sends anything.
package pairing

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
)

// SecretLen is the length of an invite secret in bytes (128 bits).
const SecretLen = 16

// A Secret is an invite's one-time secret.
type Secret [SecretLen]byte

var encoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewSecret returns a random secret.
func NewSecret() Secret {
	var s Secret
	rand.Read(s[:])
	return s
}

// String returns the secret's text form, as it appears in an invite.
func (s Secret) String() string { return encoding.EncodeToString(s[:]) }

// hash returns SHA-256 of a domain label and the secret, so that each use
// of the secret's hash is useless for the others.
func (s Secret) hash(label string) [32]byte {
	h := sha256.New()
	h.Write([]byte(label))
	h.Write(s[:])
	return [32]byte(h.Sum(nil))
}

// Verifier is what the device stores for a pending invite: it can check a
// presented secret against it, but it is not the secret.
func (s Secret) Verifier() [32]byte { return s.hash("burrow invite verifier\x00") }

// RelayToken is what the device tells the relay about a pending invite and
// what the pairing client presents to it: the relay learns neither the
// secret nor the device's verifier.
func (s Secret) RelayToken() [32]byte { return s.hash("burrow invite relay token\x00") }

// Matches reports, in constant time, whether s is the secret of verifier.
func (s Secret) Matches(verifier [32]byte) bool {
	v := s.Verifier()
	return subtle.ConstantTimeCompare(v[:], verifier[:]) == 1
}

// An Invite lets one client pair with a device.
type Invite struct {
	Device  identity.ID
	Relay   string      // host:port
	RelayID identity.ID // zero: the relay's certificate is CA-signed
	Secret  Secret
	Expires time.Time
	Name    string // the device's name for itself; may be empty
}

// ErrInvalid is matched by every error of [Parse].
var ErrInvalid = errors.New("invalid invite")

// MaxLen bounds the length of an invite string.
const MaxLen = 1024

// String returns the invite URI.
func (in Invite) String() string {
	q := url.Values{}
	q.Set("device", in.Device.String())
	q.Set("relay", in.Relay)
	if !in.RelayID.IsZero() {
		q.Set("relay_id", in.RelayID.String())
	}
	q.Set("secret", in.Secret.String())
	q.Set("expires", strconv.FormatInt(in.Expires.Unix(), 10))
	if in.Name != "" {
		q.Set("name", in.Name)
	}
	// Encode sorts keys; an invite reads the same whoever makes it.
	return "burrow://pair?" + q.Encode()
}

// Parse parses an invite URI. It checks the form of every field, not the
// expiry (the device decides that).
func Parse(s string) (Invite, error) {
	fail := func(format string, args ...any) (Invite, error) {
		return Invite{}, fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	s = strings.TrimSpace(s)
	if len(s) > MaxLen {
		return fail("%d characters, more than %d", len(s), MaxLen)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fail("not a URI")
	}
	if u.Scheme != "burrow" || u.Host != "pair" {
		return fail("want a burrow://pair?… URI, as printed by burrow device invite")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return fail("malformed query")
	}
	for k, v := range q {
		switch k {
		case "device", "relay", "relay_id", "secret", "expires", "name":
		default:
			return fail("unknown field %q", k)
		}
		if len(v) != 1 {
			return fail("field %q given %d times", k, len(v))
		}
	}
	var in Invite
	if in.Device, err = identity.ParseID(q.Get("device")); err != nil {
		return fail("device: %v", err)
	}
	in.Relay = q.Get("relay")
	if !validRelay(in.Relay) {
		return fail("relay %q: want host:port", in.Relay)
	}
	if r := q.Get("relay_id"); r != "" {
		if in.RelayID, err = identity.ParseID(r); err != nil {
			return fail("relay_id: %v", err)
		}
	}
	sec, err := encoding.DecodeString(q.Get("secret"))
	if err != nil || len(sec) != SecretLen {
		return fail("secret: want %d base32 characters", encoding.EncodedLen(SecretLen))
	}
	in.Secret = Secret(sec)
	exp, err := strconv.ParseInt(q.Get("expires"), 10, 64)
	if err != nil || exp <= 0 {
		return fail("expires: want a Unix time")
	}
	in.Expires = time.Unix(exp, 0)
	in.Name = q.Get("name")
	if in.Name != "" {
		if err := ValidName(in.Name); err != nil {
			return fail("name: %v", err)
		}
	}
	return in, nil
}

// maxRelayLen bounds the relay's address: a DNS name (at most 253
// characters) and a port.
const maxRelayLen = 255

// validRelay reports whether relay is a host:port as a relay's address
// is written: a DNS name or an IP address (IPv6 in brackets), and a port,
// in letters, digits and ".-_:[]" only. Anything else is no address an
// invite names, and would not survive being written again: escaped, it
// could outgrow MaxLen.
func validRelay(relay string) bool {
	if relay == "" || len(relay) > maxRelayLen {
		return false
	}
	for _, c := range []byte(relay) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte(".-_:[]", c) >= 0:
		default:
			return false
		}
	}
	_, _, err := net.SplitHostPort(relay)
	return err == nil
}

// ValidName checks a name for a device or a user: 1 to 63 characters of
// a-z, 0-9, '-', '_' and '.', starting with a letter or digit.
func ValidName(name string) error {
	if len(name) == 0 || len(name) > 63 {
		return fmt.Errorf("name %q: want 1 to 63 characters", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '-' || c == '_' || c == '.')
		if !ok {
			return fmt.Errorf("name %q: use lowercase letters, digits, '-', '_' and '.'", name)
		}
	}
	return nil
}
