//go:build !linux

package udpsock

import (
	"errors"
	"net"
	"net/netip"
)

// canSegment reports whether the kernel segments UDP sends: only Linux's
// does here.
func canSegment(Conn) bool { return false }

var errNoSegmenting = errors.New("udpsock: UDP segmentation unsupported")

func writeSegmented(*net.UDPConn, []byte, int, netip.AddrPort) error { return errNoSegmenting }

// enableCoalescing: only Linux coalesces received datagrams here.
func enableCoalescing(Conn) bool { return false }

const oobLen = 0

func readCoalesced(*net.UDPConn, []byte, []byte) (int, int, netip.AddrPort, error) {
	return 0, 0, netip.AddrPort{}, errNoSegmenting
}
