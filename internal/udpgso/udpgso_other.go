//go:build !linux

package udpgso

import "net"

// OOBLen is zero: there are no such control messages here.
const OOBLen = 0

// CanSegment: only Linux's kernel segments UDP sends here.
func CanSegment(*net.UDPConn) bool { return false }

// EnableCoalescing: only Linux's kernel coalesces received datagrams here.
func EnableCoalescing(*net.UDPConn) bool { return false }

// AppendSegment is never called where no socket can segment.
func AppendSegment(oob []byte, size int) []byte { return oob }

// Refused: every segmented send is refused here.
func Refused(error) bool { return true }

// SegmentSize: no read is coalesced here.
func SegmentSize([]byte) int { return 0 }
