package tunneltest

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
)

// pacedStream serves size bytes of randomStream(seed) in 64 KiB chunks,
// one every gap, so that a transfer lasts long enough to see the path
// change under it.
func pacedStream(seed uint64, size int64, gap time.Duration) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		src := randomStream(seed, size)
		for {
			if _, err := io.CopyN(c, src, 64<<10); err != nil {
				break
			}
			time.Sleep(gap)
		}
		c.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// directSetup starts a relay, a device and a client whose direct paths
// use the given options.
func directSetup(t *testing.T, services map[string]string, dev, cli paths.DirectOptions) (*Relay, *device.Device, *client.Client) {
	t.Helper()
	r := StartRelay(t)
	cid := NewIdentity(t)
	d := StartDevice(t, r, device.Config{
		Services: services,
		Clients:  map[identity.ID][]string{cid.ID(): {device.AllServices}},
		Direct:   dev,
	})
	c := NewClient(t, client.Config{Identity: cid, Relay: r.Pin(), Direct: cli})
	if err := c.WaitAttached(ctx10(t)); err != nil {
		t.Fatal(err)
	}
	return r, d, c
}

// TestDirectOverLoopback: a session starts on the relay and, with a live
// stream running, moves to a direct path; the stream's bytes arrive intact,
// the relay forwards nothing once the path is direct, and both ends
// report the direct path (status, ping).
func TestDirectOverLoopback(t *testing.T) {
	const size = 16 << 20
	srv := StartServer(t, pacedStream(5, size, 5*time.Millisecond))
	r, d, c := directSetup(t, map[string]string{"stream": srv.Addr}, Loopback, Loopback)
	forwarded := func() uint64 { return r.Server().Stats().PacketsForwarded }

	conn, err := net.Dial("tcp", Forward(t, c, d.ID(), "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		h, n, err := sum(conn)
		done <- result{h, n, err}
	}()

	start := time.Now()
	for !c.Path(d.ID()).Direct {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("no direct path after 5s: %v", c.Path(d.ID()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("direct after %v: %v", time.Since(start), c.Path(d.ID()))
	if before := forwarded(); before == 0 {
		t.Fatal("the relay forwarded nothing: the session did not start on it")
	}
	// Packets in flight when the path changed may still cross the relay.
	time.Sleep(500 * time.Millisecond)
	after := forwarded()

	res := <-done
	if res.err != nil || res.n != size {
		t.Fatalf("read %d bytes, %v", res.n, res.err)
	}
	if want, _, _ := sum(randomStream(5, size)); res.sum != want {
		t.Fatal("bytes differ")
	}
	if n := forwarded() - after; n != 0 {
		t.Fatalf("the relay forwarded %d packets after the path went direct", n)
	}
	if since := time.Since(start); since < time.Second {
		t.Fatalf("the stream ended %v after the switch: it did not run across it", since)
	}

	sessions := d.Status().Sessions
	if len(sessions) != 1 || !strings.HasPrefix(sessions[0].Path, "direct 127.0.0.1:") || sessions[0].RTT <= 0 {
		t.Fatalf("device status: %+v", sessions)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := c.Ping(ctx, d.ID())
	if err != nil {
		t.Fatal(err)
	}
	if !p.Path.Direct || p.RTT <= 0 {
		t.Fatalf("ping: %+v", p)
	}
}

// TestDirectDisabled: when either side has direct paths disabled, the
// session stays on the relay, whatever the other side offers, and works.
func TestDirectDisabled(t *testing.T) {
	off := Loopback
	off.Disable = true
	t.Run("client", func(t *testing.T) { testDirectDisabled(t, Loopback, off) })
	t.Run("device", func(t *testing.T) { testDirectDisabled(t, off, Loopback) })
}

func testDirectDisabled(t *testing.T, dev, cli paths.DirectOptions) {
	srv := StartServer(t, Echo)
	r, d, c := directSetup(t, map[string]string{"echo": srv.Addr}, dev, cli)
	if err := echoOnce(t, c, d.ID(), "echo"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if p := c.Path(d.ID()); p.Direct {
		t.Fatalf("path %v with direct paths disabled", p)
	}
	if s := d.Status().Sessions; len(s) != 1 || s[0].Path != "relay" {
		t.Fatalf("device status: %+v", s)
	}
	before := r.Server().Stats().PacketsForwarded
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := c.Ping(ctx, d.ID())
	if err != nil || p.Path.Direct {
		t.Fatalf("ping: %+v, %v", p, err)
	}
	if r.Server().Stats().PacketsForwarded == before {
		t.Fatal("the ping did not cross the relay")
	}
}
