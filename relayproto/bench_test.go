package relayproto

import (
	"testing"

	"github.com/burrow-tunnel/burrow/internal/testing/israce"
)

// BenchmarkPacketFrame encodes a packet frame's header and parses it back,
// as the path layer and the relay do for every packet.
func BenchmarkPacketFrame(b *testing.B) {
	pkt := make([]byte, 1200)
	buf := make([]byte, 0, HeaderLen+AddrLen+len(pkt))
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		f := append(AppendPacketHeader(buf[:0], FrameSendPacket, testAddr, len(pkt)), pkt...)
		t, n, err := ParseHeader(f)
		if err != nil || t != FrameSendPacket {
			b.Fatal(err)
		}
		if _, _, err := ParsePacket(f[HeaderLen : HeaderLen+int(n)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClientHello signs and verifies a hello, the relay's work per
// attach.
func BenchmarkClientHello(b *testing.B) {
	h := ClientHello{MinVersion: 1, MaxVersion: 1, Role: RoleDevice, Instance: 1, PublicKey: testPub}
	b.ReportAllocs()
	for b.Loop() {
		p := AppendClientHello(nil, h, testExporter, sign)
		if _, err := ParseClientHello(p, testExporter); err != nil {
			b.Fatal(err)
		}
	}
}

func TestPacketFrameDoesNotAllocate(t *testing.T) {
	if israce.Enabled {
		t.Skip("the race detector makes sync.Pool drop items; .ci/run runs this without it")
	}
	pkt := make([]byte, 1200)
	buf := make([]byte, 0, HeaderLen+AddrLen+len(pkt))
	n := testing.AllocsPerRun(1000, func() {
		f := append(AppendPacketHeader(buf[:0], FrameSendPacket, testAddr, len(pkt)), pkt...)
		_, m, _ := ParseHeader(f)
		ParsePacket(f[HeaderLen : HeaderLen+int(m)])
	})
	if n != 0 {
		t.Fatalf("%v allocations per packet frame, want 0", n)
	}
}
