//go:build !linux

package relay

import "net"

// roomCheck is Linux's only: elsewhere the relay cannot tell whether a
// write would wait, so every batch goes to a writer goroutine.
type roomCheck struct{}

func newRoomCheck(net.Conn) *roomCheck { return nil }

func (*roomCheck) room(int) bool { return false }
