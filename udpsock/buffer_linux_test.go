package udpsock

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketBuffers: a Socket asks for socketBuffer of receive and send
// buffer, as much of it as the system allows.
func TestSocketBuffers(t *testing.T) {
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := New(u, Config{Receive: func([]byte, netip.AddrPort) {}})
	defer s.Close()
	rc, err := u.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		opt  int
		max  string
		name string
	}{{unix.SO_RCVBUF, "rmem_max", "receive"}, {unix.SO_SNDBUF, "wmem_max", "send"}} {
		b, err := os.ReadFile("/proc/sys/net/core/" + c.max)
		if err != nil {
			t.Skip(err)
		}
		limit, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		var got int
		rc.Control(func(fd uintptr) { got, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, c.opt) })
		if err != nil {
			t.Fatal(err)
		}
		// The kernel reports twice what it was asked, for its overhead.
		if want := min(socketBuffer, limit); got < want {
			t.Errorf("%s buffer %d bytes, want at least %d (asked %d, the system allows %d)", c.name, got, want, socketBuffer, limit)
		}
	}
}
