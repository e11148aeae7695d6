//go:build !unix

package udpsock

import "errors"

// Without a way to set the TTL of a system socket here, WriteLowTTL reports
// errors.ErrUnsupported and sends nothing.

func socketTTL(udp Conn) (ttl4, hops6 int, ok bool) {
	if tc, modeled := udp.(TTLConn); modeled {
		return tc.DefaultTTL(), tc.DefaultTTL(), true
	}
	return 0, 0, false
}

func setSocketTTL(udp Conn, ttl4, hops6 int) error {
	if tc, modeled := udp.(TTLConn); modeled {
		return tc.SetTTL(ttl4)
	}
	return errors.ErrUnsupported
}
