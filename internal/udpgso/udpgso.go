// Package udpgso is what UDP segmentation offload (GSO: one send, many
// datagrams) and receive coalescing (GRO: one read, many datagrams) need
// of the system's socket API: turning them on, and the control messages
// that carry a segment size. The agent's socket (udpsock) and the relay's
// UDP port both use it. Only Linux has them here; elsewhere every
// function reports that the socket cannot.
//
// A leaf helper: it imports nothing of burrow.
package udpgso

import "errors"

// ErrRefused says that the kernel refused to segment a send (the socket,
// its route or its device cannot), as [Refused] tells from a send's error.
var ErrRefused = errors.New("udpgso: UDP segmentation refused")

// Bounds of one segmented send: the kernel's limit on segments, and the
// largest UDP payload.
const (
	MaxSegments = 64
	MaxSendLen  = 65507
)
