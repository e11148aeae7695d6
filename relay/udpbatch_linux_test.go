package relay

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/internal/udpgso"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// TestUDPRelayCoalesced: a burst of datagrams that the client's kernel
// sends as one (UDP GSO) is read by the relay at once and forwarded to
// the device as one send, which reaches a socket that coalesces reads as
// one read again; every datagram arrives in order, rewritten, and the one
// with a wrong tag in the middle of the burst is dropped and counted.
func TestUDPRelayCoalesced(t *testing.T) {
	r := serveUDPRelay(t, Config{})
	dev, cli := udpPair(t, r)
	if !udpgso.CanSegment(cli.sock) || !udpgso.EnableCoalescing(dev.sock) {
		t.Skip("the kernel neither segments nor coalesces UDP")
	}
	const size, count, bad = 1200, 20, 7
	var burst []byte
	var want [][]byte
	for i := range count {
		tag := cli.tag
		if i == bad {
			tag[0] ^= 1
		}
		pkt := bytes.Repeat([]byte{byte(i)}, size-relayproto.UDPDataHeaderLen)
		if i == count-1 {
			pkt = pkt[:100] // a shorter last one, as GSO allows
		}
		burst = append(relayproto.AppendUDPData(burst, relayproto.UDPSend, tag, dev.channel), pkt...)
		if i != bad {
			want = append(want, pkt)
		}
	}
	var oob [udpgso.OOBLen]byte
	if _, _, err := cli.sock.WriteMsgUDPAddrPort(burst, udpgso.AppendSegment(oob[:0], size), r.udp); err != nil {
		t.Fatal(err)
	}

	buf, ctl := make([]byte, 1<<16), make([]byte, 128)
	var got [][]byte
	reads := 0
	dev.sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < len(want) {
		n, oobn, _, from, err := dev.sock.ReadMsgUDPAddrPort(buf, ctl)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), len(want), err)
		}
		if from != r.udp {
			t.Fatalf("datagram from %v", from)
		}
		reads++
		seg := udpgso.SegmentSize(ctl[:oobn])
		if seg <= 0 {
			seg = n
		}
		for off := 0; off < n; off += seg {
			p := buf[off:min(off+seg, n)]
			typ, tag, ch, pkt, err := relayproto.ParseUDPData(p)
			if err != nil || typ != relayproto.UDPRecv || tag != dev.tag || ch != cli.channel {
				t.Fatalf("datagram %d: %x… (%v)", len(got), p[:min(len(p), 16)], err)
			}
			got = append(got, bytes.Clone(pkt))
		}
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d: %d bytes of %d, want %d of %d", i, len(got[i]), got[i][0], len(want[i]), want[i][0])
		}
	}
	// The datagrams before the bad one went as one send, those after it
	// as another: the device read them in two.
	if reads != 2 {
		t.Errorf("the device read the %d datagrams in %d reads, want 2", len(want), reads)
	}
	if st := r.srv.Stats(); st.UDPForwarded != count-1 {
		t.Errorf("forwarded %d, want %d", st.UDPForwarded, count-1)
	}
	wantDrops(t, r.srv, map[UDPDrop]uint64{UDPDropWrongTag: 1})
}

// TestBatchWriteOneByOne: where the kernel cannot cut a run apart, the
// batch sends its datagrams one by one, in order; an address the socket
// refuses fails only its own datagrams.
func TestBatchWriteOneByOne(t *testing.T) {
	for _, gso := range []bool{true, false} {
		t.Run(fmt.Sprintf("gso=%v", gso), func(t *testing.T) {
			tx, rx := listenLoopbackUDP(t), listenLoopbackUDP(t)
			io := newBatchIO(tx, false).(*mmsgIO)
			io.gso = io.gso && gso
			to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
			var run []byte
			for i := range 5 {
				run = append(run, bytes.Repeat([]byte{byte(i)}, 300)...)
			}
			run = run[:len(run)-100]
			outs := []udpOut{
				{b: []byte("first"), addr: to},
				{b: run, seg: 300, addr: to, pkts: 5},
				{b: []byte("refused"), addr: netip.AddrPortFrom(to.Addr(), 0), pkts: 1}, // port 0: EINVAL
				{b: []byte("last"), addr: to},
			}
			if err := io.write(outs); err != nil {
				t.Fatal(err)
			}
			if outs[2].failed != 1 || outs[2].failedLen != len("refused") || outs[0].failed+outs[1].failed+outs[3].failed != 0 {
				t.Errorf("failed: %d %d %d %d", outs[0].failed, outs[1].failed, outs[2].failed, outs[3].failed)
			}
			want := [][]byte{[]byte("first")}
			for off := 0; off < len(run); off += 300 {
				want = append(want, run[off:min(off+300, len(run))])
			}
			want = append(want, []byte("last"))
			buf := make([]byte, 2048)
			rx.SetReadDeadline(time.Now().Add(5 * time.Second))
			for i, w := range want {
				n, err := rx.Read(buf)
				if err != nil {
					t.Fatalf("datagram %d: %v", i, err)
				}
				if !bytes.Equal(buf[:n], w) {
					t.Fatalf("datagram %d: %d bytes, want %d", i, n, len(w))
				}
			}
		})
	}
}
