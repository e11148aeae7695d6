package agent_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/agent"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/session"
)

// deadRelay returns the address of a closed TCP port on loopback: a relay
// that refuses every attach.
func deadRelay(t *testing.T) relaylink.RelayConfig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return relaylink.RelayConfig{Addr: addr, ID: tunneltest.NewIdentity(t).ID()}
}

// startUnattached starts an agent whose relay is unreachable.
func startUnattached(t *testing.T, id *identity.Identity, role relayproto.Role, direct paths.DirectOptions) (*agent.Agent, *logBuffer) {
	t.Helper()
	logs := new(logBuffer)
	a, err := agent.Start(paths.Config{
		Identity: id,
		Role:     role,
		Relay:    deadRelay(t),
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Direct:   direct,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, logs
}

// serveEcho accepts dev's sessions until the test ends: it serves their
// control streams and echoes their tunnels.
func serveEcho(t *testing.T, dev *agent.Agent, logs *logBuffer) {
	t.Helper()
	ln, err := dev.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	log := slog.New(slog.NewTextHandler(logs, nil))
	wg.Go(func() {
		for {
			s, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			wg.Go(func() {
				defer s.Close(session.CloseNormal, "")
				for {
					in, err := s.AcceptTunnel(ctx)
					if err != nil {
						return
					}
					wg.Go(func() {
						req, err := in.Request()
						if err != nil {
							return
						}
						if req.Kind == session.KindControl {
							if ctl, err := in.AcceptControl(); err == nil {
								dev.ServeControl(ctx, s, ctl, log)
							}
							return
						}
						tun, err := in.Accept()
						if err != nil {
							return
						}
						defer tun.Close()
						io.Copy(tun, tun)
					})
				}
			})
		}
	})
}

// lanDevice starts a device agent with an unreachable relay, on loopback,
// serving sessions, and returns it with the address of its UDP socket.
func lanDevice(t *testing.T, id *identity.Identity, direct paths.DirectOptions) (*agent.Agent, netip.AddrPort, *logBuffer) {
	t.Helper()
	dev, logs := startUnattached(t, id, relayproto.RoleDevice, direct)
	serveEcho(t, dev, logs)
	port := dev.Paths().DirectPort()
	if port == 0 {
		t.Fatal("the device has no UDP socket")
	}
	return dev, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), logs
}

var lanOn = paths.DirectOptions{Addrs: tunneltest.Loopback.Addrs, AcceptLAN: true}

// TestDialLAN: with no relay reachable by either agent, a client opens a
// session to a device that accepts LAN peers at its UDP address; a tunnel
// carries bytes both ways, the path is the LAN, a ping crosses the control
// stream, and the opening is logged with path=lan and the address.
func TestDialLAN(t *testing.T) {
	did, cid := tunneltest.NewIdentity(t), tunneltest.NewIdentity(t)
	_, addr, devLogs := lanDevice(t, did, lanOn)
	cli, cliLogs := startUnattached(t, cid, relayproto.RoleClient, tunneltest.Loopback)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := cli.DialLAN(ctx, did.ID(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(session.CloseNormal, "") })
	cliLogs.waitFor(t, `msg="session opened"`, "device="+did.ID().String(), "path=lan", "addr="+addr.String())
	if s.PeerID() != did.ID() {
		t.Fatalf("peer %v, want %v", s.PeerID(), did.ID())
	}

	tun, err := s.OpenTunnel(ctx, "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	msg := []byte("over the LAN, no relay")
	if _, err := tun.Write(msg); err != nil {
		t.Fatal(err)
	}
	tun.CloseWrite()
	got, err := io.ReadAll(tun)
	if err != nil || string(got) != string(msg) {
		t.Fatalf("echo: %q, %v; want %q", got, err, msg)
	}

	p := s.Path()
	if !p.Direct || !p.LAN || p.Addr != addr || p.RelayUDP {
		t.Fatalf("path %+v, want the LAN to %v", p, addr)
	}
	if got, want := p.String(), "lan 127.0.0.1:"+strconv.Itoa(int(addr.Port())); got != want {
		t.Fatalf("path %q, want %q", got, want)
	}
	if got := s.RemoteAddr().String(); got != "lan/"+addr.String() {
		t.Fatalf("remote address %q", got)
	}

	log := slog.New(slog.NewTextHandler(cliLogs, nil))
	ctl, err := cli.OpenControl(s, log)
	if err != nil {
		t.Fatal(err)
	}
	var served sync.WaitGroup
	served.Go(func() { cli.ServeControl(t.Context(), s, ctl, log) })
	defer served.Wait()
	defer s.Close(session.CloseNormal, "")
	if rtt, err := ctl.Ping(ctx); err != nil || rtt <= 0 {
		t.Fatalf("ping: %v, %v", rtt, err)
	}
	if st := cli.Paths().Status(); st.Attached {
		t.Fatalf("the client attached to a relay: %+v", st)
	}
	s.Close(session.CloseNormal, "done")
	cliLogs.waitFor(t, `msg="session closed"`, "device="+did.ID().String())
	if strings.Contains(devLogs.String(), "level=ERROR") {
		t.Fatalf("device errors:\n%s", devLogs)
	}
}

// TestDialLANStranger: a client that does not know the device's ID (it
// dials another) is refused before the device shows its key, which would
// name the device: it learns nothing, and the device logs no error.
func TestDialLANStranger(t *testing.T) {
	_, addr, devLogs := lanDevice(t, tunneltest.NewIdentity(t), lanOn)
	cli, logs := startUnattached(t, tunneltest.NewIdentity(t), relayproto.RoleClient, tunneltest.Loopback)
	other := tunneltest.NewIdentity(t).ID()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := cli.DialLAN(ctx, other, addr)
	if s != nil {
		s.Close(session.CloseNormal, "")
	}
	if _, learned := errors.AsType[*identity.KeyMismatchError](err); learned || !errors.Is(err, session.ErrHandshakeRefused) {
		t.Fatalf("dial: %v, want the handshake refused (and no key shown)", err)
	}
	logs.waitFor(t, `msg="session failed"`, "path=lan", "device="+other.String())
	if strings.Contains(devLogs.String(), "level=ERROR") {
		t.Fatalf("device errors:\n%s", devLogs)
	}
}

// TestDialLANKeyMismatch: a session over the LAN pins the device's key as
// one over the relay does: an impostor at the address, which answers any
// hello with a key of its own, gets a key mismatch.
func TestDialLANKeyMismatch(t *testing.T) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	impostor, err := session.NewEndpoint(conn, session.Config{Identity: tunneltest.NewIdentity(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer impostor.Close()
	ln, err := impostor.Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, logs := startUnattached(t, tunneltest.NewIdentity(t), relayproto.RoleClient, tunneltest.Loopback)
	device := tunneltest.NewIdentity(t).ID()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if s, err := cli.DialLAN(ctx, device, conn.LocalAddr().(*net.UDPAddr).AddrPort()); !errors.Is(err, identity.ErrKeyMismatch) {
		if s != nil {
			s.Close(session.CloseNormal, "")
		}
		t.Fatalf("dial: %v, want a key mismatch", err)
	}
	logs.waitFor(t, `msg="session failed"`, "path=lan", "device="+device.String())
}

// TestDialLANRefused: a device that does not accept LAN peers drops the
// client's packets (and counts them): the dial runs out of time.
func TestDialLANRefused(t *testing.T) {
	did := tunneltest.NewIdentity(t)
	dev, addr, _ := lanDevice(t, did, tunneltest.Loopback)
	cli, _ := startUnattached(t, tunneltest.NewIdentity(t), relayproto.RoleClient, tunneltest.Loopback)
	why := errors.New("no answer on the LAN")
	ctx, cancel := context.WithTimeoutCause(t.Context(), time.Second, why)
	defer cancel()
	if s, err := cli.DialLAN(ctx, did.ID(), addr); !errors.Is(err, why) {
		if s != nil {
			s.Close(session.CloseNormal, "")
		}
		t.Fatalf("dial: %v, want %v", err, why)
	}
	if st := dev.Paths().SocketStats(); st.Dropped == 0 || st.LANPeers != 0 {
		t.Fatalf("device socket %+v, want dropped packets and no LAN peer", st)
	}
}

// TestDialLANNoSocket: an agent without a UDP socket cannot dial over the
// LAN.
func TestDialLANNoSocket(t *testing.T) {
	cli, _ := startUnattached(t, tunneltest.NewIdentity(t), relayproto.RoleClient, paths.DirectOptions{Disable: true, NoRelayUDP: true})
	_, err := cli.DialLAN(t.Context(), tunneltest.NewIdentity(t).ID(), netip.MustParseAddrPort("127.0.0.1:9"))
	if !errors.Is(err, paths.ErrNoSocket) {
		t.Fatalf("dial: %v, want %v", err, paths.ErrNoSocket)
	}
}

// TestLANSessionEndsWhenPathDies: a session on the LAN cannot move to
// another path, so when its path dies (here a forwarder between the two
// agents stops forwarding, as when the client leaves the network) it ends
// within its short idle timeout, and the next dial can go elsewhere; a
// session that can move waits three times as long.
func TestLANSessionEndsWhenPathDies(t *testing.T) {
	did := tunneltest.NewIdentity(t)
	_, devAddr, _ := lanDevice(t, did, lanOn)
	cli, _ := startUnattached(t, tunneltest.NewIdentity(t), relayproto.RoleClient, tunneltest.Loopback)

	// The forwarder: the client's side on one socket, the device's on
	// another; it stops forwarding when cut is closed.
	front, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	back, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	cut := make(chan struct{})
	var client atomic.Pointer[netip.AddrPort]
	forward := func(from, to *net.UDPConn, dst func() (netip.AddrPort, bool)) {
		buf := make([]byte, 2048)
		for {
			n, src, err := from.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if from == front {
				client.Store(&src)
			}
			select {
			case <-cut:
				continue
			default:
			}
			if ap, ok := dst(); ok {
				to.WriteToUDPAddrPort(buf[:n], ap)
			}
		}
	}
	go forward(front, back, func() (netip.AddrPort, bool) { return devAddr, true })
	go forward(back, front, func() (netip.AddrPort, bool) {
		if p := client.Load(); p != nil {
			return *p, true
		}
		return netip.AddrPort{}, false
	})

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := cli.DialLAN(ctx, did.ID(), front.LocalAddr().(*net.UDPAddr).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(session.CloseNormal, "")
	close(cut)
	cutAt := time.Now()
	select {
	case <-s.Context().Done():
		t.Logf("the session ended %v after its path died", time.Since(cutAt).Round(100*time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("the session on the LAN still stands 20s after its path died")
	}
}
