package device_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/agent"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/session"
)

// freeUDPPort returns a UDP port of loopback that was free a moment ago.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// deadRelay is a relay that refuses every attach: a closed port.
func deadRelay(t *testing.T) relaylink.RelayConfig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return relaylink.RelayConfig{Addr: ln.Addr().String(), ID: tunneltest.NewIdentity(t).ID()}
}

// TestUnknownSessionsBounded: while an invite is pending, clients the
// device does not know may hold a session, to pair; past maxUnknown (64)
// at once, one more is refused. Here over the LAN, with the relay down,
// where nothing but the device bounds them.
func TestUnknownSessionsBounded(t *testing.T) {
	port := freeUDPPort(t)
	d, err := device.New(device.Config{
		Identity:     tunneltest.NewIdentity(t),
		Relay:        deadRelay(t),
		Services:     map[string]string{"echo": "127.0.0.1:1"},
		Roles:        map[string][]string{"viewer": {"echo"}},
		StateDir:     t.TempDir(),
		Logger:       tunneltest.Logger(t).With("role", "device"),
		Direct:       paths.DirectOptions{Port: port, Addrs: tunneltest.Loopback.Addrs},
		LANInterface: "lo", // announced on loopback only, if at all
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Invite("viewer", time.Minute, ""); err != nil {
		t.Fatal(err)
	}
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	dial := func() *session.Session {
		t.Helper()
		a, err := agent.Start(paths.Config{Identity: tunneltest.NewIdentity(t), Role: relayproto.RoleClient,
			Relay: deadRelay(t), Direct: tunneltest.Loopback})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		s, err := a.DialLAN(ctx, d.ID(), to)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	var wg sync.WaitGroup
	sessions := make([]*session.Session, 64)
	for i := range sessions {
		wg.Go(func() { sessions[i] = dial() })
	}
	wg.Wait()
	// Each is taken, and none is closed.
	time.Sleep(200 * time.Millisecond)
	for i, s := range sessions {
		if s != nil && s.Context().Err() != nil {
			t.Fatalf("session %d of an unknown client closed: %v", i, context.Cause(s.Context()))
		}
	}
	extra := dial()
	select {
	case <-extra.Context().Done():
		if _, msg, ok := session.PeerClosedError(context.Cause(extra.Context())); !ok || !strings.Contains(msg, "too many clients pairing at once") {
			t.Fatalf("the 65th unknown client's session ended with %v", context.Cause(extra.Context()))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the 65th unknown client's session is still open")
	}
}
