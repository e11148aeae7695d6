//go:build !linux

package relay

import "net"

// Elsewhere answers leave from the address the system picks, which is
// right for a relay with one address.
func enablePktinfo(*net.UDPConn) bool { return false }

func replyOOB([]byte) []byte { return nil }
