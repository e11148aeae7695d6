package relay

import (
	"io"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/internal/testing/israce"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// BenchmarkForward measures the relay forwarding 1,200-byte packets from a
// client to a device over real TLS connections on loopback: per packet,
// the relay's read, route, queue and batched write (and the TLS and TCP
// work of both agents, which share the machine). The sender keeps at most
// a window of packets in flight, as a congestion-controlled sender would,
// so that none is dropped.
func BenchmarkForward(b *testing.B) {
	srv, addr := serve(b, Config{AllowDevice: allowAll})
	cliID := newIdentity(b)
	dev := attach(b, addr, newIdentity(b), relayproto.RoleDevice)
	dev.allow(cliID) // a device nobody may reach gets no packet
	cli := attach(b, addr, cliID, relayproto.RoleClient)
	const pkt, burst, window = 1200, 16, 512
	frame := append(relayproto.AppendPacketHeader(nil, relayproto.FrameSendPacket, relayproto.Addr{ID: dev.id.ID()}, pkt), make([]byte, pkt)...)
	batch := make([]byte, 0, burst*len(frame))
	for range burst {
		batch = append(batch, frame...)
	}
	dev.conn.SetReadDeadline(time.Time{})
	b.SetBytes(pkt)
	b.ReportAllocs()
	b.ResetTimer()
	// The device acknowledges every burst it has read in full.
	acks := make(chan struct{}, b.N/burst+2)
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, burst*(relayproto.HeaderLen+relayproto.AddrLen+pkt))
		for got := 0; got < b.N; got += burst {
			n := min(burst, b.N-got)
			if _, err := io.ReadFull(dev.br, buf[:n*(relayproto.HeaderLen+relayproto.AddrLen+pkt)]); err != nil {
				done <- err
				return
			}
			acks <- struct{}{}
		}
		done <- nil
	}()
	inFlight := 0
	for sent := 0; sent < b.N; sent += burst {
		for inFlight >= window {
			<-acks
			inFlight -= burst
		}
		n := min(burst, b.N-sent)
		if _, err := cli.conn.Write(batch[:n*len(frame)]); err != nil {
			b.Fatal(err)
		}
		inFlight += n
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if d := srv.Stats().PacketsDropped; d != 0 {
		b.Fatalf("%d packets dropped", d)
	}
}

// TestForwardDoesNotAllocate guards the relay's steady state: forwarding
// allocates nothing per packet, anywhere in the process (relay and both
// test agents included). Bursts of packets are sent, as agents send them,
// so that what the TLS package allocates per record (not per packet)
// amortizes; a single allocation per packet would show as one or more.
func TestForwardDoesNotAllocate(t *testing.T) {
	if israce.Enabled {
		t.Skip("the race detector makes sync.Pool drop items; .ci/run runs this without it")
	}
	_, addr := serve(t, Config{AllowDevice: allowAll})
	cliID := newIdentity(t)
	dev := attach(t, addr, newIdentity(t), relayproto.RoleDevice)
	dev.allow(cliID)
	cli := attach(t, addr, cliID, relayproto.RoleClient)
	const pkt, burst = 1200, 10
	frame := append(relayproto.AppendPacketHeader(nil, relayproto.FrameSendPacket, relayproto.Addr{ID: dev.id.ID()}, pkt), make([]byte, pkt)...)
	batch := make([]byte, 0, burst*len(frame))
	for range burst {
		batch = append(batch, frame...)
	}
	got := make([]byte, burst*(relayproto.HeaderLen+relayproto.AddrLen+pkt))
	dev.conn.SetReadDeadline(time.Time{})
	once := func() {
		if _, err := cli.conn.Write(batch); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(dev.br, got); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 { // warm the pools
		once()
	}
	perPacket := testing.AllocsPerRun(300, once) / burst
	if perPacket >= 0.5 {
		t.Fatalf("%.2f allocations per forwarded packet, want 0", perPacket)
	}
	t.Logf("%.2f allocations per packet (the TLS package's, per record)", perPacket)
}
