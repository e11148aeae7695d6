package paths

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/burrow-tunnel/burrow/identity"
)

// TestRelayUDPStreamLoopback: on loopback, with real sockets, a QUIC
// stream between two agents without direct paths moves onto the UDP
// relay path; when the relay's UDP port stops forwarding, the stream goes
// on over the relay's TCP link, and back over UDP when it forwards again;
// every byte arrives, in order.
func TestRelayUDPStreamLoopback(t *testing.T) {
	cli, dev, relayID := pairWith(t, DirectOptions{Disable: true})
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f := startForwarder(t, u, u.LocalAddr().(*net.UDPAddr).AddrPort())
	f.bind(dev, relayID, devChannel)
	f.bind(cli, relayID, cliChannel)
	p := &directPair{dev: dev, cli: cli}
	p.start(t, newKey())
	p.waitPath(t, 10*time.Second, isRelayUDP, "relay udp")

	// A QUIC session over the two Conns, sized as the session package
	// sizes its packets.
	id, _ := identity.Generate()
	cert, err := id.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	qcfg := &quic.Config{InitialPacketSize: MaxPacket, DisablePathMTUDiscovery: true, MaxIdleTimeout: 30 * time.Second}
	str := &quic.Transport{Conn: dev}
	defer str.Close()
	ln, err := str.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"test"}}, qcfg)
	if err != nil {
		t.Fatal(err)
	}
	ctr := &quic.Transport{Conn: cli}
	defer ctr.Close()
	conn, err := ctr.Dial(t.Context(), dev.LocalAddr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"test"}}, qcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	sconn, err := ln.Accept(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer sconn.CloseWithError(0, "")

	var stop atomic.Bool
	var read atomic.Int64
	var wg sync.WaitGroup
	var sent, got [sha256.Size]byte
	var werr, rerr error
	wg.Go(func() {
		s, err := conn.OpenStream()
		if err != nil {
			werr = err
			return
		}
		h := sha256.New()
		chunk := make([]byte, 64<<10)
		for !stop.Load() {
			rand.Read(chunk)
			h.Write(chunk)
			if _, werr = s.Write(chunk); werr != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		copy(sent[:], h.Sum(nil))
		werr = s.Close()
	})
	wg.Go(func() {
		s, err := sconn.AcceptStream(t.Context())
		if err != nil {
			rerr = err
			return
		}
		h := sha256.New()
		buf := make([]byte, 64<<10)
		for {
			n, err := s.Read(buf)
			h.Write(buf[:n])
			read.Add(int64(n))
			if err == io.EOF {
				break
			}
			if err != nil {
				rerr = err
				return
			}
		}
		copy(got[:], h.Sum(nil))
	})
	progress := func(what string, n int64) {
		t.Helper()
		for start, from := time.Now(), read.Load(); read.Load()-from < n; time.Sleep(10 * time.Millisecond) {
			if time.Since(start) > 20*time.Second {
				t.Fatalf("%s: %d bytes in 20s", what, read.Load()-from)
			}
		}
	}
	progress("on the UDP relay path", 2<<20)
	f.drop.Store(true)
	took := p.waitPath(t, 3*time.Second, onTCP, "back on the relay's TCP link")
	t.Logf("on TCP %v after the cut", took)
	progress("on the TCP link", 2<<20)
	f.drop.Store(false)
	took = p.waitPath(t, 60*time.Second, isRelayUDP, "relay udp again")
	t.Logf("relay udp again %v after the port forwards again", took)
	fwd := f.forwarded.Load()
	progress("on the UDP relay path again", 2<<20)
	if f.forwarded.Load()-fwd < 1000 {
		t.Fatalf("the forwarder forwarded %d datagrams for 2 MiB", f.forwarded.Load()-fwd)
	}
	stop.Store(true)
	wg.Wait()
	if werr != nil || rerr != nil {
		t.Fatalf("write: %v, read: %v", werr, rerr)
	}
	if !bytes.Equal(sent[:], got[:]) {
		t.Fatalf("%d bytes arrived, not those sent", read.Load())
	}
	t.Logf("%d MiB arrived intact", read.Load()>>20)
}
