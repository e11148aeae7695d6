package udpsock_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/internal/testing/memnet"
	"github.com/burrow-tunnel/burrow/udpsock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// lowTTL is what becomes of a datagram sent with a TTL of 2.
type lowTTL int

const (
	arrives     lowTTL = iota // it arrives (loopback is one hop)
	dies                      // it is sent and dies on the way (memnet)
	unsupported               // it is not sent: the TTL cannot be set
)

// plainConn hides the TTL methods of a memnet socket: a socket that
// cannot set its TTL.
type plainConn struct{ udpsock.Conn }

// TestSocket runs the same checks on a real loopback socket and on the
// in-memory fake, with and without TTLs: a datagram sent now arrives, a
// queued batch (runs of datagrams to one address, several sizes) arrives
// whole and in order once flushed, and a low-TTL send does what the
// socket can do, after which the socket's own TTL is back.
func TestSocket(t *testing.T) {
	system := func(t *testing.T) (a, b udpsock.Conn) {
		listen := func() *net.UDPConn {
			u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			u.SetReadBuffer(4 << 20)
			return u
		}
		return listen(), listen()
	}
	fake := func(t *testing.T) (a, b udpsock.Conn) {
		n := memnet.NewUDP()
		return n.Listen("10.0.0.1:4000"), n.Listen("10.0.0.2:5000")
	}
	for _, tc := range []struct {
		name   string
		listen func(t *testing.T) (a, b udpsock.Conn)
		lowTTL lowTTL
	}{
		{"system", system, arrives},
		{"memnet", fake, dies},
		{"memnet-no-ttl", func(t *testing.T) (a, b udpsock.Conn) {
			a, b = fake(t)
			return plainConn{a}, b
		}, unsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca, cb := tc.listen(t)
			got := make(chan []byte, 1024)
			from := make(chan netip.AddrPort, 1024)
			a := udpsock.New(ca, udpsock.Config{Receive: func([]byte, netip.AddrPort) {}})
			defer a.Close()
			b := udpsock.New(cb, udpsock.Config{Receive: func(p []byte, f netip.AddrPort) {
				got <- bytes.Clone(p)
				from <- f
			}})
			defer b.Close()
			aAddr := ca.LocalAddr().(*net.UDPAddr).AddrPort()
			bAddr := cb.LocalAddr().(*net.UDPAddr).AddrPort()
			if b.Port() != bAddr.Port() {
				t.Fatalf("Port %d, want %d", b.Port(), bAddr.Port())
			}
			expect := func(what string, want []byte) {
				t.Helper()
				select {
				case p := <-got:
					if f := <-from; f != aAddr {
						t.Fatalf("%s: from %v, want %v", what, f, aAddr)
					}
					if !bytes.Equal(p, want) {
						t.Fatalf("%s: got %d bytes % x..., want %d % x...", what, len(p), p[:min(len(p), 4)], len(want), want[:min(len(want), 4)])
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("%s: nothing arrived", what)
				}
			}
			nothing := func(what string) {
				t.Helper()
				select {
				case p := <-got:
					t.Fatalf("%s: %d bytes arrived", what, len(p))
				case <-time.After(100 * time.Millisecond):
				}
			}

			// Sent now.
			if err := a.WriteTo([]byte("hello"), bAddr); err != nil {
				t.Fatal(err)
			}
			expect("WriteTo", []byte("hello"))

			// Queued: runs of one size, a shorter one ending each.
			var want [][]byte
			for i, size := range []int{1452, 1452, 1452, 600, 1200, 1200, 100, 200, 1452} {
				p := bytes.Repeat([]byte{byte(i)}, size)
				if !a.Enqueue(p, bAddr) {
					t.Fatalf("datagram %d: queue full", i)
				}
				want = append(want, p)
			}
			a.Flush(5 * time.Second)
			for i, w := range want {
				expect(fmt.Sprintf("queued datagram %d", i), w)
			}

			// Low TTL, then the socket's own TTL again.
			err := a.WriteLowTTL([][]byte{[]byte("opener")}, []netip.AddrPort{bAddr}, 2)
			switch tc.lowTTL {
			case arrives:
				if err != nil {
					t.Fatalf("WriteLowTTL: %v", err)
				}
				expect("low TTL", []byte("opener"))
			case dies:
				if err != nil {
					t.Fatalf("WriteLowTTL: %v", err)
				}
				nothing("low TTL")
			case unsupported:
				if !errors.Is(err, errors.ErrUnsupported) {
					t.Fatalf("WriteLowTTL: %v, want ErrUnsupported", err)
				}
				nothing("low TTL")
			}
			if err := a.WriteTo([]byte("after"), bAddr); err != nil {
				t.Fatal(err)
			}
			expect("after the low TTL", []byte("after"))
		})
	}
}

// TestCloseStopsLoops: Close returns once the loops are done, and a closed
// socket neither sends nor blocks.
func TestCloseStopsLoops(t *testing.T) {
	n := memnet.NewUDP()
	c := n.Listen("10.0.0.1:4000")
	s := udpsock.New(c, udpsock.Config{Receive: func([]byte, netip.AddrPort) {}})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Enqueue([]byte{1}, netip.MustParseAddrPort("10.0.0.2:1"))
	s.Flush(time.Second)
	if err := s.WriteTo([]byte{1}, netip.MustParseAddrPort("10.0.0.2:1")); err == nil {
		t.Fatal("WriteTo on a closed socket succeeded")
	}
}
