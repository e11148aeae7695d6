//go:build unix

package relay

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// rawConnOf returns the socket under a TLS connection, if there is one.
func rawConnOf(conn net.Conn) syscall.RawConn {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return nil
	}
	sc, ok := tc.NetConn().(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// waitReadable blocks until rc has bytes to read (or is at EOF, or failed),
// without reading them, until the read deadline. Each check peeks at the
// socket without waiting, so readiness that came before the wait is never
// missed.
func waitReadable(rc syscall.RawConn) error {
	return rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// Readable, at EOF, or failed: the read that follows tells which.
		return !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EINTR)
	})
}
