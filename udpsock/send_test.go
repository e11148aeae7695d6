package udpsock

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// full is the size of a full QUIC packet on a direct path.
const full = 1452

// TestSendBatches: a batch of datagrams to two addresses, of mixed
// sizes and longer than one segmented send may be, arrives whole and in
// order at each address, from a real socket (IPv4 and dual stack), with
// the socket's segmentation and without; where the kernel segments, runs
// of datagrams went out in single sends.
func TestSendBatches(t *testing.T) {
	for _, network := range []string{"udp4", "udp"} {
		for _, gso := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/segmenting=%v", network, gso), func(t *testing.T) {
				testSendBatches(t, network, gso)
			})
		}
	}
}

func testSendBatches(t *testing.T, network string, gso bool) {
	var rx [2]*net.UDPConn
	var to [2]netip.AddrPort
	for i := range rx {
		var err error
		if rx[i], err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
			t.Fatal(err)
		}
		defer rx[i].Close()
		rx[i].SetReadBuffer(4 << 20)
		to[i] = rx[i].LocalAddr().(*net.UDPAddr).AddrPort()
	}
	u, err := net.ListenUDP(network, &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	ds := New(u, Config{QueueLen: 16, Receive: func([]byte, netip.AddrPort) {}})
	defer ds.Close()
	if gso && !ds.gso.Load() {
		if runtime.GOOS == "linux" {
			t.Fatal("the socket does not segment sends")
		}
		t.Skip("no UDP segmentation on " + runtime.GOOS)
	}
	ds.gso.Store(gso)

	// Runs: 10 full datagrams and a short one to A; 3 to B; two small ones
	// of different sizes to A; 70 to B (more than one send may carry).
	type spec struct{ to, n, size int }
	var want [2][][]byte
	var batch []outDatagram
	seq := 0
	for _, s := range []spec{{0, 10, full}, {0, 1, 600}, {1, 3, full}, {0, 1, 100}, {0, 1, 200}, {1, 70, 1200}} {
		for range s.n {
			p := bytes.Repeat([]byte{byte(seq)}, s.size)
			p[0], p[1] = byte(seq>>8), byte(seq)
			seq++
			bp := bufPool.Get().(*[]byte)
			*bp = append((*bp)[:0], p...)
			batch = append(batch, outDatagram{buf: bp, n: len(p), to: to[s.to]})
			want[s.to] = append(want[s.to], p)
		}
	}
	ds.sendBatch(batch, nil)

	buf := make([]byte, 2048)
	for i := range rx {
		rx[i].SetReadDeadline(time.Now().Add(5 * time.Second))
		for k, w := range want[i] {
			n, _, err := rx[i].ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("address %d, datagram %d of %d: %v", i, k, len(want[i]), err)
			}
			if !bytes.Equal(buf[:n], w) {
				t.Fatalf("address %d, datagram %d: %d bytes starting % x, want %d starting % x", i, k, n, buf[:min(n, 4)], len(w), w[:4])
			}
		}
	}
	sent := len(want[0]) + len(want[1])
	t.Logf("%d datagrams, %d of them in segmented sends", sent, ds.segmented.Load())
	if gso {
		// Only the two small datagrams to A go alone (the second is
		// larger than the first), and the run of 70 splits in two: 84 of
		// the 86 datagrams go in 4 sends.
		if n := ds.segmented.Load(); n != uint64(sent-2) {
			t.Fatalf("%d datagrams went in segmented sends, want %d", n, sent-2)
		}
	} else if n := ds.segmented.Load(); n != 0 {
		t.Fatalf("%d datagrams segmented with segmentation off", n)
	}
}

// TestWriteSegmentedRefusal: a send the kernel will not segment (more
// segments than it takes) is reported as errNoSegmenting, on which the
// writer falls back to one send a datagram.
func TestWriteSegmentedRefusal(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("segmentation is Linux's")
	}
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	to := u.LocalAddr().(*net.UDPAddr).AddrPort()
	if err := writeSegmented(u, make([]byte, 10*100), 100, to); err != nil {
		t.Fatalf("10 segments: %v", err)
	}
	if err := writeSegmented(u, make([]byte, 200*100), 100, to); !errors.Is(err, errNoSegmenting) {
		t.Fatalf("200 segments: err = %v, want errNoSegmenting", err)
	}
}

// TestFlush: Flush returns once every datagram queued before it is sent,
// so that a closing agent sends what its sessions wrote last (their QUIC
// close) before the socket goes.
func TestFlush(t *testing.T) {
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	s, err := Listen(0, Config{QueueLen: 64, Receive: func([]byte, netip.AddrPort) {}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if !s.Enqueue([]byte{byte(i)}, to) {
			t.Fatal("queue full")
		}
	}
	s.Flush(5 * time.Second)
	s.Close()
	rx.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 16)
	for i := range 40 {
		n, _, err := rx.ReadFromUDPAddrPort(buf)
		if err != nil || n != 1 || buf[0] != byte(i) {
			t.Fatalf("datagram %d: %d bytes % x, %v", i, n, buf[:n], err)
		}
	}
}

// TestCoalescedRead: a burst sent as one segmented send reaches a
// coalescing socket as one read, whose segments are the datagrams sent;
// each is handled as a datagram of its own.
func TestCoalescedRead(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("coalescing is Linux's")
	}
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	if !enableCoalescing(rx) {
		t.Fatal("the socket does not coalesce")
	}
	tx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	var sent []byte
	for i := range 11 {
		size := full
		if i == 10 {
			size = 600
		}
		sent = append(sent, bytes.Repeat([]byte{0x40 | byte(i)}, size)...)
	}
	if err := writeSegmented(tx, sent, full, rx.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	b, oob := make([]byte, 1<<16), make([]byte, oobLen)
	rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got [][]byte
	for len(got) < 11 {
		n, seg, from, err := readCoalesced(rx, b, oob)
		if err != nil {
			t.Fatal(err)
		}
		if from != tx.LocalAddr().(*net.UDPAddr).AddrPort() {
			t.Fatalf("from %v", from)
		}
		t.Logf("read of %d bytes in segments of %d", n, seg)
		for off := 0; off < n; off += seg {
			got = append(got, bytes.Clone(b[off:min(off+seg, n)]))
		}
	}
	if len(got) != 11 || len(got[10]) != 600 {
		t.Fatalf("%d datagrams, the last of %d bytes", len(got), len(got[len(got)-1]))
	}
	for i, d := range got {
		if !bytes.Equal(d, bytes.Repeat([]byte{0x40 | byte(i)}, len(d))) || i < 10 && len(d) != full {
			t.Fatalf("datagram %d: %d bytes of % x...", i, len(d), d[:2])
		}
	}
}
