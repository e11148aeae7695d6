package paths

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/israce"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// pair attaches a client and a device to a relay on loopback.
func pair(tb testing.TB) (cli, dev *Conn) {
	tb.Helper()
	cli, dev, _ = pairWith(tb, DirectOptions{})
	return cli, dev
}

// pairWith is pair with direct options, and returns the relay's ID too.
func pairWith(tb testing.TB, direct DirectOptions) (cli, dev *Conn, relayID identity.ID) {
	tb.Helper()
	rid, _ := identity.Generate()
	srv, err := relay.New(relay.Config{Identity: rid, AllowDevice: func(identity.ID) bool { return true }})
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	cliID, _ := identity.Generate()
	open := func(role relayproto.Role) *Conn {
		id := cliID
		var access func() ([]identity.ID, [][32]byte)
		if role == relayproto.RoleDevice {
			id, _ = identity.Generate()
			access = func() ([]identity.ID, [][32]byte) { return []identity.ID{cliID.ID()}, nil }
		}
		c, err := Listen(Config{Identity: id, Role: role, Relay: relaylink.RelayConfig{Addr: ln.Addr().String(), ID: rid.ID()},
			Access: access, Direct: direct})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.WaitAttached(ctx); err != nil {
			tb.Fatal(err)
		}
		return c
	}
	cli, dev = open(relayproto.RoleClient), open(relayproto.RoleDevice)
	// The relay routes to the device once its access list is in: probe
	// until a packet arrives.
	buf := make([]byte, 2048)
	for deadline := time.Now().Add(10 * time.Second); ; {
		cli.WriteTo([]byte("probe"), dev.LocalAddr())
		dev.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, _, err := dev.ReadFrom(buf); err == nil {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatal("the relay never routed to the device")
		}
	}
	// Drain probes still in flight.
	for {
		dev.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, _, err := dev.ReadFrom(buf); err != nil {
			break
		}
	}
	dev.SetReadDeadline(time.Time{})
	return cli, dev, rid.ID()
}

// BenchmarkPath measures 1,200-byte packets from a client's Conn through a
// relay to a device's Conn, a window of them in flight: the path layer's
// send and receive queues, framing, batching and TLS, and the relay.
func BenchmarkPath(b *testing.B) {
	cli, dev := pair(b)
	dst := dev.LocalAddr()
	const pkt, window = 1200, 256
	msg := make([]byte, pkt)
	b.SetBytes(pkt)
	b.ReportAllocs()
	b.ResetTimer()
	got := make(chan struct{}, window)
	dev.SetReadDeadline(time.Now().Add(time.Minute))
	go func() {
		buf := make([]byte, 2048)
		for range b.N {
			if _, _, err := dev.ReadFrom(buf); err != nil {
				close(got)
				return
			}
			got <- struct{}{}
		}
	}()
	inFlight := 0
	for range b.N {
		for inFlight >= window {
			if _, ok := <-got; !ok {
				b.Fatal("packets lost")
			}
			inFlight--
		}
		cli.WriteTo(msg, dst)
		inFlight++
	}
	for ; inFlight > 0; inFlight-- {
		if _, ok := <-got; !ok {
			b.Fatal("packets lost")
		}
	}
}

// TestPathDoesNotAllocate guards the path layer's steady state: sending and
// receiving packets allocates nothing per packet (the TLS package's
// allocation per record aside).
func TestPathDoesNotAllocate(t *testing.T) {
	if israce.Enabled {
		t.Skip("the race detector makes sync.Pool drop items; .ci/run runs this without it")
	}
	cli, dev := pair(t)
	dst := dev.LocalAddr()
	const burst = 10
	msg := make([]byte, 1200)
	buf := make([]byte, 2048)
	dev.SetReadDeadline(time.Time{})
	once := func() {
		for range burst {
			cli.WriteTo(msg, dst)
		}
		for range burst {
			if _, _, err := dev.ReadFrom(buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	for range 100 {
		once()
	}
	perPacket := testing.AllocsPerRun(300, once) / burst
	if perPacket >= 0.5 {
		t.Fatalf("%.2f allocations per packet, want 0", perPacket)
	}
	t.Logf("%.2f allocations per packet", perPacket)
}
