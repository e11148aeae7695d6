//go:build !linux

package relay

import "net"

// sendSocket returns -1 here: the relay cannot tell whether a write would
// wait, so every batch goes to a writer goroutine.
func sendSocket(net.Conn) int { return -1 }

func sendRoom(fd, n int) bool { return false }
