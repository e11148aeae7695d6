//go:build !linux

package paths

import (
	"errors"
	"net"
	"net/netip"
)

// canSegment reports whether the kernel segments UDP sends: only Linux's
// does here.
func canSegment(UDPConn) bool { return false }

var errNoSegmenting = errors.New("paths: UDP segmentation unsupported")

func writeSegmented(*net.UDPConn, []byte, int, netip.AddrPort) error { return errNoSegmenting }
