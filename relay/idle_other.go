//go:build !unix

package relay

import (
	"net"
	"syscall"
)

// rawConnOf returns nil here: attachments wait inside their TLS read.
func rawConnOf(net.Conn) syscall.RawConn { return nil }

func waitReadable(syscall.RawConn) error { panic("unreachable") }
