package udpsock

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestLowTTLOnSystemSocket: low-TTL datagrams leave a real socket (IPv4
// and dual stack), and the socket's own TTL and hop limit come back after.
func TestLowTTLOnSystemSocket(t *testing.T) {
	for _, network := range []string{"udp4", "udp"} {
		t.Run(network, func(t *testing.T) {
			rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer rx.Close()
			u, err := net.ListenUDP(network, &net.UDPAddr{})
			if err != nil {
				t.Fatal(err)
			}
			s := New(u, Config{Receive: func([]byte, netip.AddrPort) {}})
			defer s.Close()
			ttl4, hops6, ok := socketTTL(u)
			if !ok || ttl4 < 32 {
				t.Fatalf("socket TTL %d, %v", ttl4, ok)
			}
			to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
			msg := []byte{0x23, 1, 2, 3, 4, 5, 6, 7, 8}
			if err := s.WriteLowTTL([][]byte{msg}, []netip.AddrPort{to}, 2); err != nil {
				t.Fatalf("WriteLowTTL: %v", err)
			}
			rx.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			if n, _, err := rx.ReadFromUDPAddrPort(buf); err != nil || n != len(msg) {
				t.Fatalf("low-TTL datagram: %d bytes, %v", n, err)
			}
			if t4, h6, _ := socketTTL(u); t4 != ttl4 || h6 != hops6 {
				t.Fatalf("TTL after WriteLowTTL %d/%d, want %d/%d", t4, h6, ttl4, hops6)
			}
		})
	}
}
