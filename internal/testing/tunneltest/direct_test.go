package tunneltest

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/session"
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
	// Through the relay: its TCP session or, direct paths being off
	// only, its UDP port.
	if s := d.Status().Sessions; len(s) != 1 || s[0].Path != "relay" && s[0].Path != "relay udp" {
		t.Fatalf("device status: %+v", s)
	}
	relayed := func() uint64 { st := r.Server().Stats(); return st.PacketsForwarded + st.UDPForwarded }
	before := relayed()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := c.Ping(ctx, d.ID())
	if err != nil || p.Path.Direct {
		t.Fatalf("ping: %+v, %v", p, err)
	}
	if relayed() == before {
		t.Fatal("the ping did not cross the relay")
	}
}

// rawSession dials a bare E2E session to d as id (direct paths off); with
// an invite, as a client about to pair (the relay lets it through).
func rawSession(t *testing.T, r *Relay, id *identity.Identity, d *device.Device, inv *pairing.Invite) *session.Session {
	t.Helper()
	pc := ListenPaths(t, r, paths.Config{Identity: id, Role: relayproto.RoleClient})
	if inv != nil {
		pc.SetPairIntent(d.ID(), inv.Secret.RelayToken())
	}
	ep, err := session.NewEndpoint(pc, session.Config{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	s, err := ep.Dial(ctx10(t), paths.Addr{ID: d.ID()}, d.ID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(session.CloseNormal, "") })
	return s
}

// TestControlStream: the device grants one control stream per session,
// and only to clients it knows; pings cross it.
func TestControlStream(t *testing.T) {
	r := StartRelay(t)
	srv := StartServer(t, Echo)
	d := pairingDevice(t, r, srv.Addr, srv.Addr)
	known := NewIdentity(t)
	inv, err := d.Invite("viewer", time.Minute, "known")
	if err != nil {
		t.Fatal(err)
	}
	c := StartClient(t, r, known)
	if _, err := c.Pair(ctx10(t), inv); err != nil {
		t.Fatal(err)
	}

	s := rawSession(t, r, known, d, nil)
	ctl, err := s.OpenControl(ctx10(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ctl.Run(session.ControlOptions{}) }()
	if rtt, err := ctl.Ping(ctx10(t)); err != nil || rtt <= 0 {
		t.Fatalf("ping: %v, %v", rtt, err)
	}
	_, err = s.OpenControl(ctx10(t))
	var refused *session.RefusedError
	if !errors.As(err, &refused) || refused.Code != session.CodeBadRequest {
		t.Fatalf("second control stream: %v", err)
	}
	s.Close(session.CloseNormal, "")
	<-done

	// A client the device does not know (here, one about to pair, which
	// the relay lets through) gets none.
	inv2, err := d.Invite("viewer", time.Minute, "later")
	if err != nil {
		t.Fatal(err)
	}
	stranger := rawSession(t, r, NewIdentity(t), d, &inv2)
	if _, err := stranger.OpenControl(ctx10(t)); !errors.Is(err, session.ErrNotAuthorized) {
		t.Fatalf("stranger's control stream: %v", err)
	}
}

// TestRemovalEndsDirectSessions: the relay's operator removes a device
// whose session with a client runs on a direct path, which the relay does
// not carry: the device ends the session at once, the client's tunnel
// fails, and a new tunnel cannot be opened (the relay no longer admits
// the device). A session on a direct path used to go on.
func TestRemovalEndsDirectSessions(t *testing.T) {
	r, d, c := directSetup(t, map[string]string{"echo": StartServer(t, Echo).Addr}, Loopback, Loopback)
	tun, err := c.Dial(ctx10(t), d.ID(), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	for start := time.Now(); !c.Path(d.ID()).Direct; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("no direct path after 5s: %v", c.Path(d.ID()))
		}
	}
	r.Server().Disconnect(d.ID()) // what "burrow relay devices remove" does, beside un-enrolling
	removed := time.Now()
	buf := make([]byte, 4)
	for {
		tun.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := tun.Write([]byte("ping")); err != nil {
			t.Logf("the tunnel failed %v after the removal: %v", time.Since(removed).Round(time.Millisecond), err)
			break
		}
		if _, err := io.ReadFull(tun, buf); err != nil {
			t.Logf("the tunnel failed %v after the removal: %v", time.Since(removed).Round(time.Millisecond), err)
			break
		}
		if time.Since(removed) > 3*time.Second {
			t.Fatal("the tunnel on a direct path still echoes 3s after the device was removed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(d.Status().Sessions); n != 0 {
		t.Fatalf("the device still has %d sessions after its removal", n)
	}
}

// TestReloadClosesRemovedClients: a device's configuration reloaded
// without a client ends that client's session, and its new tunnels are
// refused; a service added is served.
func TestReloadClosesRemovedClients(t *testing.T) {
	r := StartRelay(t)
	echo := StartServer(t, Echo).Addr
	cid := NewIdentity(t)
	d := StartDevice(t, r, device.Config{
		Services: map[string]string{"echo": echo},
		Clients:  map[identity.ID][]string{cid.ID(): {"echo"}},
	})
	c := StartClient(t, r, cid)
	if err := echoOnce(t, c, d.ID(), "echo"); err != nil {
		t.Fatal(err)
	}
	other := NewIdentity(t)
	changed, err := d.Reload(device.Policy{
		Services: map[string]string{"echo": echo, "echo2": echo},
		Clients:  map[identity.ID][]string{other.ID(): {"echo2"}},
	})
	if err != nil || !slices.Equal(changed, []string{"services", "clients"}) {
		t.Fatalf("reload: %v, %v", changed, err)
	}
	for start := time.Now(); len(d.Status().Sessions) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatal("the removed client's session is still open 5s after the reload")
		}
	}
	if err := echoOnce(t, c, d.ID(), "echo"); err == nil {
		t.Fatal("a client the reload removed still opens tunnels")
	}
	if err := echoOnce(t, StartClient(t, r, other), d.ID(), "echo2"); err != nil {
		t.Fatalf("a client and service the reload added: %v", err)
	}
	if _, err := d.Reload(device.Policy{Services: map[string]string{"echo": echo}, Clients: map[identity.ID][]string{other.ID(): {"nope"}}}); err == nil {
		t.Fatal("a reload naming an undefined service was taken")
	}
}
