package relay

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
)

// A State is where a relay keeps who may attach as a device: the devices
// it enrolled, the enrollment tokens it issued, and when devices were
// removed. [Store] keeps it on the relay's disk, for a relay of its own;
// a fleet of relays shares one in NATS JetStream (package fleetstate). The
// admin API ([AdminHandler]) and the relay's Config (AllowDevice: Enrolled;
// Enroll: Enroll) take either. Implementations are safe for concurrent use.
type State interface {
	// Enrolled reports whether the device id is enrolled. It is asked at
	// every device attachment, so it answers from memory.
	Enrolled(id identity.ID) bool
	// Enroll enrolls the device id with token, spending one use of it (see
	// [Store.Enroll]); it fails with an error that wraps ErrTokenUnknown,
	// ErrTokenExpired, ErrTokenBeforeRemoval or ErrStateUnavailable.
	Enroll(id identity.ID, token string) error
	// CreateToken issues a token good for uses devices until ttl from now.
	CreateToken(uses int, ttl time.Duration) (string, error)
	// CreateNamedToken issues a single-use token, valid until ttl from
	// now, that gives the device it enrolls the name name (see
	// [CheckDeviceName]). A name is for one device: a token for several
	// carries none.
	CreateNamedToken(name string, ttl time.Duration) (string, error)
	// SetName gives the enrolled device id the name name, "" none
	// (ErrNotEnrolled if the device is not enrolled).
	SetName(id identity.ID, name string) error
	// Remove un-enrolls the device id (ErrNotEnrolled if it is not) and
	// records when, so that tokens issued before cannot enroll it again.
	Remove(id identity.ID) error
	// Devices returns the enrolled devices, oldest enrollment first, with
	// their names.
	Devices() ([]EnrolledDevice, error)
}

var _ State = (*Store)(nil)

// ErrStateUnavailable is wrapped by the errors of a [State] that cannot
// reach where it keeps the state (a fleet's NATS servers): the relay then
// admits only the devices it knows to be enrolled, and enrolls, issues
// and removes nothing until the state is back.
var ErrStateUnavailable = errors.New("relay state unavailable")

// NewEnrollToken returns a new enrollment token: 128 random bits, in the
// alphabet of IDs, behind "enroll-".
func NewEnrollToken() string {
	var b [16]byte
	rand.Read(b[:])
	return "enroll-" + tokenEncoding.EncodeToString(b[:])
}

// EnrollTokenHash is what a [State] keeps of a token: its hash, never the
// token. Case and surrounding space do not count, as they do not for IDs.
func EnrollTokenHash(token string) [sha256.Size]byte {
	return sha256.Sum256([]byte("burrow enrollment token\x00" + strings.ToLower(strings.TrimSpace(token))))
}

// CheckTokenLimits checks the uses (at least 1) and lifetime (more than 0)
// asked of a new enrollment token.
func CheckTokenLimits(uses int, ttl time.Duration) error {
	if uses < 1 {
		return fmt.Errorf("token uses must be at least 1, got %d", uses)
	}
	if ttl <= 0 {
		return fmt.Errorf("token lifetime must be more than 0, got %v: give how long it may enroll devices (a token for a production line can last long, 8760h say)", ttl)
	}
	return nil
}

// MaxDeviceNameLen is the longest name a device may have at the relay.
const MaxDeviceNameLen = 64

// CheckDeviceName checks a device's name at the relay: 1 to 64 letters,
// digits, '.', '_' or '-', starting with a letter or a digit; one word, so
// that it fits after the ID on a device list's line.
func CheckDeviceName(name string) error {
	if name == "" || len(name) > MaxDeviceNameLen {
		return fmt.Errorf("device name %q: want 1 to %d characters", name, MaxDeviceNameLen)
	}
	for i, c := range name {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return fmt.Errorf("device name %q: want letters, digits, '.', '_' and '-', starting with a letter or a digit", name)
		}
	}
	return nil
}
