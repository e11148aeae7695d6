//go:build !unix

package paths

import "errors"

// Without a way to set the TTL, no openers are sent: direct paths are
// still found where no NAT or a forgiving one is in the way.

func socketTTL(udp UDPConn) (ttl4, hops6 int, ok bool) {
	if ts, isTest := udp.(ttlSetter); isTest {
		return ts.DefaultTTL(), ts.DefaultTTL(), true
	}
	return 0, 0, false
}

func setSocketTTL(udp UDPConn, ttl4, hops6 int) error {
	if ts, isTest := udp.(ttlSetter); isTest {
		return ts.SetTTL(ttl4)
	}
	return errors.ErrUnsupported
}
