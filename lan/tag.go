// Package lan finds paired devices on the local network with no relay: a
// device agent announces itself with mDNS/DNS-SD ([Announce]) and a client
// looks for the devices it knows ([Find]).
//
// What a device publishes must not let a stranger on the LAN identify it
// or follow it over time. The DNS-SD instance name (and the host name the
// service points at) is a [Tag]: an HMAC keyed by the device's ID over the
// current time [Window], which only holders of the ID (its paired clients)
// can compute or link from one window to the next. The TXT record carries
// only the announcement's version. The rest of the answer, the addresses
// and the UDP port, is what any host on the LAN sees of the device's
// traffic anyway. A match tells a client where to try, nothing more: the
// end-to-end session that follows pins the device's key as over the relay,
// so an impostor answering with a copied tag gets nowhere. The device, for
// its part, answers a session on the LAN only for a client whose first
// message carries a [Hello] (hello.go): its key, which a handshake shows,
// would name it to anyone else.
//
// The package only finds: it opens no session and holds no policy. Among
// burrow's packages it imports only identity.
package lan

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
)

// WindowLength is how long a [Tag] is announced before the next replaces
// it. Ten minutes: short enough that a stranger who watches the LAN links
// a device's announcements for at most that long, long enough that
// matching the adjacent windows ([Candidates]) absorbs a clock skew of up
// to ten minutes between device and client, and much longer than the
// 120 s mDNS caches keep an answer.
const WindowLength = 10 * time.Minute

// TagLen is the length of a [Tag] in bytes: 128 bits, so that tags of
// different devices or windows do not collide by chance.
const TagLen = 16

// tagLabel separates this use of the device ID as an HMAC key from any
// other, and versions it.
const tagLabel = "burrow lan tag v1"

// A Tag names a device on the LAN for one window.
type Tag [TagLen]byte

// String returns the tag in lowercase hex, as it appears in the
// announcement's instance and host names.
func (t Tag) String() string { return hex.EncodeToString(t[:]) }

// ParseTag parses the hex form of a tag ([Tag.String]); ok is false for
// anything else.
func ParseTag(s string) (t Tag, ok bool) {
	if len(s) != 2*TagLen {
		return Tag{}, false
	}
	if _, err := hex.Decode(t[:], []byte(s)); err != nil {
		return Tag{}, false
	}
	return t, true
}

// Window returns the number of the window t falls in: whole
// [WindowLength]s since the Unix epoch (negative before it).
func Window(t time.Time) int64 {
	s, n := t.Unix(), int64(WindowLength/time.Second)
	w := s / n
	if s%n < 0 { // Go's division truncates toward zero; windows floor
		w--
	}
	return w
}

// TagOf returns the tag of device in window: HMAC-SHA256 keyed by the
// device ID's bytes over the label "burrow lan tag v1" followed by the
// window number (8 bytes, big-endian), truncated to [TagLen] bytes.
func TagOf(device identity.ID, window int64) Tag {
	m := hmac.New(sha256.New, device[:])
	m.Write([]byte(tagLabel))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(window))
	m.Write(b[:])
	var t Tag
	copy(t[:], m.Sum(nil))
	return t
}

// Candidates returns the tags a client matches for device around window:
// those of window-1, window and window+1, so that clocks apart by up to a
// window still meet.
func Candidates(device identity.ID, window int64) [3]Tag {
	return [3]Tag{TagOf(device, window-1), TagOf(device, window), TagOf(device, window+1)}
}
