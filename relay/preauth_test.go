package relay

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/relayproto"
)

// closedWithin reports whether the relay ends c within d: a read returns
// EOF or a reset rather than timing out.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

// TestPreauthSilent: a connection that sends nothing is closed once the
// handshake timeout after it connected has passed.
func TestPreauthSilent(t *testing.T) {
	const hs = 500 * time.Millisecond
	_, addr := serve(t, Config{AllowDevice: allowAll, HandshakeTimeout: hs})
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !closedWithin(c, 5*time.Second) {
		t.Fatal("a silent connection was kept open")
	}
	if took := time.Since(start); took > hs+500*time.Millisecond {
		t.Fatalf("closed after %v, want about %v", took, hs)
	}
}

// TestPreauthTrickle: a peer that sends each part of the handshake in time
// for that part's own deadline, a byte at a time, is still closed when the
// handshake timeout after it connected has passed.
func TestPreauthTrickle(t *testing.T) {
	const hs = time.Second
	_, addr := serve(t, Config{AllowDevice: allowAll, HandshakeTimeout: hs})
	start := time.Now()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	time.Sleep(hs / 2) // a slow start to the TLS handshake
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	// Then the upgrade request, a byte every 50ms: its own deadline, from
	// the end of the TLS handshake, would let it run to 1.5s.
	done := make(chan bool, 1)
	go func() { done <- closedWithin(raw, 5*time.Second) }()
	req := "GET /burrow HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\nUpgrade: burrow\r\n\r\n"
	for i := 0; i < len(req); i++ {
		if _, err := c.Write([]byte{req[i]}); err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !<-done {
		t.Fatal("a trickling connection was kept open")
	}
	if took := time.Since(start); took > hs+400*time.Millisecond {
		t.Fatalf("closed %v after connecting, want about %v", took, hs)
	}
}

// dialFrom connects to addr from the loopback address local; the
// connection is closed when the test ends.
func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestPreauthPerIP: one address holds at most MaxPendingPerIP connections
// that have not authenticated; others still get in, and an agent from
// that address attaches once one of its connections is gone.
func TestPreauthPerIP(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll, MaxPendingPerIP: 4})
	dial := func(local string) net.Conn { return dialFrom(t, local, addr) }
	var held []net.Conn
	for range 4 {
		held = append(held, dial("127.0.0.1"))
	}
	for srv.pre.pending() < 4 {
		time.Sleep(5 * time.Millisecond)
	}
	if !closedWithin(dial("127.0.0.1"), 2*time.Second) {
		t.Fatal("a fifth pending connection from one address was kept")
	}
	other := dial("127.0.0.2")
	if closedWithin(other, 300*time.Millisecond) {
		t.Fatal("a connection from another address was closed")
	}
	for _, c := range held {
		if closedWithin(c, 10*time.Millisecond) {
			t.Fatal("a held connection was closed early")
		}
	}
	held[0].Close()
	for srv.pre.pending() > 4 {
		time.Sleep(5 * time.Millisecond)
	}
	a := connect(t, addr) // from 127.0.0.1: room again
	a.conn.Close()
}

// TestPreauthGlobalCap: with MaxPending connections pending from many
// addresses, a new one closes the oldest (not the newest, and not any
// other), and a real agent still attaches.
func TestPreauthGlobalCap(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll, MaxPending: 3})
	dial := func(local string) net.Conn { return dialFrom(t, local, addr) }
	var held []net.Conn
	for i := range 3 {
		held = append(held, dial(fmt.Sprintf("127.0.0.%d", 10+i)))
		for srv.pre.pending() < i+1 {
			time.Sleep(time.Millisecond)
		}
	}
	newest := dial("127.0.0.20")
	if !closedWithin(held[0], 2*time.Second) {
		t.Fatal("the oldest pending connection was kept past the cap")
	}
	for _, c := range append(held[1:], newest) {
		if closedWithin(c, 50*time.Millisecond) {
			t.Fatal("a newer pending connection was closed")
		}
	}
	if n := srv.pre.pending(); n != 3 {
		t.Fatalf("%d pending, want 3", n)
	}
	// Full: a real agent gets in all the same.
	a := attach(t, addr, newIdentity(t), relayproto.RoleDevice)
	a.conn.Close()
}
