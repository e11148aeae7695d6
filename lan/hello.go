package lan

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
)

// The hello: a device on the LAN takes a session from a stranger's
// address, so the device must not show its key (which names it: its ID
// is the key's hash) to whoever opens a handshake, or anyone on the LAN
// could learn its ID and then compute its tags and follow it from window
// to window. A client that dials a device on the LAN therefore names, as
// the TLS server name of its first message, a hello: a fresh nonce and an
// HMAC keyed by the device's ID over the nonce and the current window,
// which only holders of the ID (its paired clients, and holders of one of
// its invites) can compute. The device checks it before it answers at
// all, and each nonce is taken once, so a hello copied off the air opens
// nothing either.

const (
	helloLabel  = "burrow lan hello v1"
	helloNonce  = 12 // bytes of nonce
	helloMAC    = 16 // bytes of HMAC kept
	helloSuffix = ".lan.burrow"
	// maxHellos bounds the nonces remembered per window: a device takes
	// far fewer sessions than that in ten minutes, and only holders of its
	// ID can make a hello that is remembered at all.
	maxHellos = 10000
)

// helloMACOf returns the MAC of a hello for device in window with nonce.
func helloMACOf(device identity.ID, window int64, nonce []byte) []byte {
	m := hmac.New(sha256.New, device[:])
	m.Write([]byte(helloLabel))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(window))
	m.Write(b[:])
	m.Write(nonce)
	return m.Sum(nil)[:helloMAC]
}

// Hello returns a fresh hello for device at now: the TLS server name a
// client gives when it dials the device on the LAN, "NONCE-MAC.lan.burrow"
// in lowercase hex.
func Hello(device identity.ID, now time.Time) string {
	nonce := make([]byte, helloNonce)
	rand.Read(nonce)
	return hex.EncodeToString(nonce) + "-" + hex.EncodeToString(helloMACOf(device, Window(now), nonce)) + helloSuffix
}

// ErrBadHello is the error of a handshake on the LAN whose hello is
// missing, wrong or used before.
var ErrBadHello = errors.New("lan: no valid hello: the client does not know this device's ID")

// A HelloChecker checks the hellos of the sessions a device takes on the
// LAN. It is safe for concurrent use.
type HelloChecker struct {
	device identity.ID
	now    func() time.Time

	mu   sync.Mutex
	seen map[int64]map[[helloNonce]byte]struct{} // nonces taken, by window; guarded by mu
}

// NewHelloChecker returns a checker of hellos for device; now is its
// clock (nil: time.Now).
func NewHelloChecker(device identity.ID, now func() time.Time) *HelloChecker {
	if now == nil {
		now = time.Now
	}
	return &HelloChecker{device: device, now: now, seen: make(map[int64]map[[helloNonce]byte]struct{})}
}

// Check reports whether name is a hello for the device, made in its
// window or one beside it (clocks apart by up to a window meet), and not
// seen before; it fails with [ErrBadHello] otherwise.
func (c *HelloChecker) Check(name string) error {
	body, ok := strings.CutSuffix(name, helloSuffix)
	if !ok {
		return ErrBadHello
	}
	nonceHex, macHex, ok := strings.Cut(body, "-")
	if !ok || len(nonceHex) != 2*helloNonce || len(macHex) != 2*helloMAC {
		return ErrBadHello
	}
	var nonce [helloNonce]byte
	mac := make([]byte, helloMAC)
	if _, err := hex.Decode(nonce[:], []byte(nonceHex)); err != nil {
		return ErrBadHello
	}
	if _, err := hex.Decode(mac, []byte(macHex)); err != nil {
		return ErrBadHello
	}
	w := Window(c.now())
	for _, win := range []int64{w, w - 1, w + 1} {
		if hmac.Equal(mac, helloMACOf(c.device, win, nonce[:])) {
			return c.take(w, win, nonce)
		}
	}
	return ErrBadHello
}

// take remembers nonce, of a hello made in window win, at the checker's
// window w, and fails if it was taken before. Nonces of windows that can
// no longer be valid are forgotten.
func (c *HelloChecker) take(w, win int64, nonce [helloNonce]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for old := range c.seen {
		if old < w-1 {
			delete(c.seen, old)
		}
	}
	seen := c.seen[win]
	if seen == nil {
		seen = make(map[[helloNonce]byte]struct{})
		c.seen[win] = seen
	}
	if _, dup := seen[nonce]; dup || len(seen) >= maxHellos {
		return ErrBadHello
	}
	seen[nonce] = struct{}{}
	return nil
}
