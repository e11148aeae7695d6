package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newIdentity(t testing.TB) *identity.Identity {
	t.Helper()
	id, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// serve starts a relay on loopback with cfg (Identity filled in).
func serve(t testing.TB, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Identity == nil {
		cfg.Identity = newIdentity(t)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return srv, ln.Addr().String()
}

// agent is a raw relay-protocol peer for tests.
type agent struct {
	t    testing.TB
	conn *tls.Conn
	br   *bufio.Reader
	id   *identity.Identity
}

// connect opens TLS and sends the upgrade, without a hello.
func connect(t testing.TB, addr string) *agent {
	t.Helper()
	return connectFrom(t, "", addr)
}

// connectFrom is connect from the loopback address local ("": any).
func connectFrom(t testing.TB, local, addr string) *agent {
	t.Helper()
	d := &net.Dialer{}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", relayproto.UpgradePath, relayproto.UpgradeToken)
	a := &agent{t: t, conn: conn, br: bufio.NewReader(conn)}
	resp, err := http.ReadResponse(a.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	return a
}

func (a *agent) exporter() []byte {
	st := a.conn.ConnectionState()
	e, err := st.ExportKeyingMaterial(relayproto.ExporterLabel, nil, relayproto.ExporterLen)
	if err != nil {
		a.t.Fatal(err)
	}
	return e
}

// hello sends a client hello and, for a device, an empty access list.
func (a *agent) hello(id *identity.Identity, role relayproto.Role, minV, maxV uint16, exporter []byte) {
	a.id = id
	p := relayproto.AppendClientHello(nil, relayproto.ClientHello{
		MinVersion: minV, MaxVersion: maxV, Role: role, Instance: 7, PublicKey: id.PublicKey(),
	}, exporter, id.Sign)
	a.write(relayproto.FrameClientHello, p)
	if role == relayproto.RoleDevice {
		a.write(relayproto.FrameAccess, relayproto.AppendAccess(nil, relayproto.AccessFirst|relayproto.AccessLast, nil))
	}
}

func (a *agent) write(t relayproto.FrameType, p []byte) {
	a.t.Helper()
	if _, err := a.conn.Write(append(relayproto.AppendHeader(nil, t, len(p)), p...)); err != nil {
		a.t.Fatal(err)
	}
}

func (a *agent) read() (relayproto.FrameType, []byte) {
	a.t.Helper()
	a.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	t, n, err := relayproto.ReadHeader(a.br)
	if err != nil {
		a.t.Fatalf("read frame: %v", err)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(a.br, p); err != nil {
		a.t.Fatal(err)
	}
	return t, p
}

// attach connects and authenticates as id with role.
func attach(t testing.TB, addr string, id *identity.Identity, role relayproto.Role) *agent {
	t.Helper()
	return attachFrom(t, "", addr, id, role)
}

// attachFrom is attach from the loopback address local.
func attachFrom(t testing.TB, local, addr string, id *identity.Identity, role relayproto.Role) *agent {
	t.Helper()
	a := connectFrom(t, local, addr)
	a.hello(id, role, 1, 1, a.exporter())
	if typ, p := a.read(); typ != relayproto.FrameServerHello {
		f, _ := relayproto.ParseRefuse(p)
		t.Fatalf("got %s %+v, want server-hello", typ, f)
	}
	return a
}

// allow sends a device's access list: these clients may reach it. It waits
// for the relay to have applied it (a ping answered after it).
func (a *agent) allow(clients ...*identity.Identity) {
	a.t.Helper()
	var entries []relayproto.AccessEntry
	for _, c := range clients {
		entries = append(entries, relayproto.AccessEntry{Kind: relayproto.AccessClient, Value: c.ID()})
	}
	a.write(relayproto.FrameAccess, relayproto.AppendAccess(nil, relayproto.AccessFirst|relayproto.AccessLast, entries))
	a.write(relayproto.FramePing, []byte("applied!"))
	for {
		if typ, p := a.read(); typ == relayproto.FramePong && string(p) == "applied!" {
			return
		}
	}
}

func (a *agent) refusal() relayproto.Refuse {
	a.t.Helper()
	typ, p := a.read()
	if typ != relayproto.FrameRefuse {
		a.t.Fatalf("got %s, want refuse", typ)
	}
	f, err := relayproto.ParseRefuse(p)
	if err != nil {
		a.t.Fatal(err)
	}
	return f
}

func allowAll(identity.ID) bool { return true }

func TestHandshakeRefusals(t *testing.T) {
	listed := newIdentity(t)
	_, addr := serve(t, Config{AllowDevice: func(id identity.ID) bool { return id == listed.ID() }})

	// A device the relay was not told about.
	stranger := newIdentity(t)
	a := connect(t, addr)
	a.hello(stranger, relayproto.RoleDevice, 1, 1, a.exporter())
	if f := a.refusal(); f.Code != relayproto.RefuseNotAllowed || !strings.Contains(f.Message, stranger.ID().String()) {
		t.Fatalf("unlisted device: %+v", f)
	}
	// No common version.
	a = connect(t, addr)
	a.hello(listed, relayproto.RoleDevice, 7, 9, a.exporter())
	if f := a.refusal(); f.Code != relayproto.RefuseVersion {
		t.Fatalf("version 7-9: %+v", f)
	}
	// A hello signed for another TLS connection: a replay.
	a = connect(t, addr)
	b := connect(t, addr)
	a.hello(listed, relayproto.RoleDevice, 1, 1, b.exporter())
	if f := a.refusal(); f.Code != relayproto.RefuseAuth {
		t.Fatalf("replayed hello: %+v", f)
	}
	// An unknown role.
	a = connect(t, addr)
	a.hello(listed, relayproto.Role(9), 1, 1, a.exporter())
	if f := a.refusal(); f.Code != relayproto.RefuseBadRole {
		t.Fatalf("role 9: %+v", f)
	}
	// Something other than a hello first.
	a = connect(t, addr)
	a.write(relayproto.FramePing, make([]byte, 8))
	if f := a.refusal(); f.Code != relayproto.RefuseAuth {
		t.Fatalf("ping before hello: %+v", f)
	}
	// The listed device gets in; so does any client.
	attach(t, addr, listed, relayproto.RoleDevice)
	attach(t, addr, stranger, relayproto.RoleClient)
}

func TestNilAllowDeviceAdmitsNoDevice(t *testing.T) {
	_, addr := serve(t, Config{})
	a := connect(t, addr)
	a.hello(newIdentity(t), relayproto.RoleDevice, 1, 1, a.exporter())
	if f := a.refusal(); f.Code != relayproto.RefuseNotAllowed {
		t.Fatalf("%+v", f)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	_, addr := serve(t, Config{AllowDevice: allowAll, HandshakeTimeout: 300 * time.Millisecond})
	a := connect(t, addr)
	start := time.Now()
	a.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := a.br.ReadByte()
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("silent agent: read %v after %v, want the relay to hang up", err, time.Since(start))
	}
}

func TestRouting(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll})
	devID, cliID := newIdentity(t), newIdentity(t)
	dev := attach(t, addr, devID, relayproto.RoleDevice)
	cli := attach(t, addr, cliID, relayproto.RoleClient)
	dev.allow(cliID)

	// Client → device: the device sees the client's address.
	pkt := []byte("sealed")
	cli.write(relayproto.FrameSendPacket, append(relayproto.AppendAddr(nil, relayproto.Addr{ID: devID.ID()}), pkt...))
	typ, p := dev.read()
	src, got, err := relayproto.ParsePacket(p)
	if typ != relayproto.FrameRecvPacket || err != nil || string(got) != "sealed" || src != (relayproto.Addr{ID: cliID.ID(), Instance: 7}) {
		t.Fatalf("device got %s from %v: %q %v", typ, src, got, err)
	}
	// Device → client: the client sees the device with instance 0.
	dev.write(relayproto.FrameSendPacket, append(relayproto.AppendAddr(nil, src), "back"...))
	typ, p = cli.read()
	src, got, _ = relayproto.ParsePacket(p)
	if typ != relayproto.FrameRecvPacket || string(got) != "back" || src != (relayproto.Addr{ID: devID.ID()}) {
		t.Fatalf("client got %s from %v: %q", typ, src, got)
	}
	// To a device that is not attached, and never allowed the client:
	// peer-gone, unreachable.
	absent := newIdentity(t).ID()
	cli.write(relayproto.FrameSendPacket, append(relayproto.AppendAddr(nil, relayproto.Addr{ID: absent}), pkt...))
	typ, p = cli.read()
	g, err := relayproto.ParsePeerGone(p)
	if typ != relayproto.FramePeerGone || err != nil || g.Peer.ID != absent || g.Reason != relayproto.GoneUnreachable {
		t.Fatalf("to an absent device: %s %+v %v", typ, g, err)
	}
	// Client → client is not routed.
	other := attach(t, addr, newIdentity(t), relayproto.RoleClient)
	cli.write(relayproto.FrameSendPacket, append(relayproto.AppendAddr(nil, relayproto.Addr{ID: other.id.ID(), Instance: 7}), pkt...))
	typ, p = cli.read()
	if g, _ := relayproto.ParsePeerGone(p); typ != relayproto.FramePeerGone || g.Reason != relayproto.GoneUnreachable {
		t.Fatalf("client to client: %s %+v", typ, g)
	}
	if st := srv.Stats(); st.Devices != 1 || st.Clients != 2 || st.PacketsForwarded != 2 || st.PeerGone != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestUnknownFramesSkipped(t *testing.T) {
	_, addr := serve(t, Config{AllowDevice: allowAll})
	a := attach(t, addr, newIdentity(t), relayproto.RoleClient)
	a.write(relayproto.FrameType(0x7e), make([]byte, 5000))
	a.write(relayproto.FramePing, []byte("12345678"))
	if typ, p := a.read(); typ != relayproto.FramePong || string(p) != "12345678" {
		t.Fatalf("got %s %q, want the pong", typ, p)
	}
	// A frame over its type's limit detaches the agent, before any allocation.
	a.conn.Write(relayproto.AppendHeader(nil, relayproto.FrameSendPacket, 0xFFFFFFFF))
	a.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(a.br); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("relay kept an agent that sent a 4 GiB frame")
		}
	}
}

func TestNewerDeviceAttachmentWins(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll})
	id := newIdentity(t)
	old := attach(t, addr, id, relayproto.RoleDevice)
	attach(t, addr, id, relayproto.RoleDevice)
	typ, p := old.read()
	f, err := relayproto.ParseGoAway(p)
	if typ != relayproto.FrameGoAway || err != nil || f.Reason != relayproto.GoAwayReplaced {
		t.Fatalf("old attachment got %s %+v %v, want go-away(replaced)", typ, f, err)
	}
	if st := srv.Stats(); st.Devices != 1 {
		t.Fatalf("%d devices attached", st.Devices)
	}
}

// TestOtherKeyCannotClaimDevice: an attach that claims an attached
// device's ID (its public key in the hello) but cannot sign with that key
// is refused, and the device's attachment stays; with the attacker's own
// key in the hello, it is another ID and touches nothing of the device's.
func TestOtherKeyCannotClaimDevice(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll})
	dev, attacker, c := newIdentity(t), newIdentity(t), newIdentity(t)
	d := attach(t, addr, dev, relayproto.RoleDevice)
	d.allow(c)

	a := connect(t, addr)
	p := relayproto.AppendClientHello(nil, relayproto.ClientHello{
		MinVersion: 1, MaxVersion: 1, Role: relayproto.RoleDevice, PublicKey: dev.PublicKey(),
	}, a.exporter(), attacker.Sign)
	a.write(relayproto.FrameClientHello, p)
	if f := a.refusal(); f.Code != relayproto.RefuseAuth || !strings.Contains(f.Message, "signature") {
		t.Fatalf("hello with the device's key signed by another: %+v", f)
	}
	attach(t, addr, attacker, relayproto.RoleDevice)

	// The device was neither replaced nor told to go away: it still gets
	// its client's packets.
	if st := srv.Stats(); st.Devices != 2 || st.Replaced != 0 {
		t.Fatalf("stats %+v: want 2 devices, none replaced", st)
	}
	cl := attach(t, addr, c, relayproto.RoleClient)
	cl.sendTo(dev.ID(), "still mine")
	for {
		typ, p := d.read()
		if typ == relayproto.FrameGoAway {
			t.Fatal("the device was told to go away")
		}
		if typ == relayproto.FrameRecvPacket {
			if _, pkt, err := relayproto.ParsePacket(p); err != nil || string(pkt) != "still mine" {
				t.Fatalf("device got %q, %v", pkt, err)
			}
			return
		}
	}
}

// TestQueueDropsNotBlocks: a device that stops reading fills its own queue;
// packets to it are dropped and counted, and other agents are not slowed.
func TestQueueDropsNotBlocks(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll, SendQueueLen: 16})
	stuck := newIdentity(t)
	cliID := newIdentity(t)
	attach(t, addr, stuck, relayproto.RoleDevice).allow(cliID) // then never reads again
	cli := attach(t, addr, cliID, relayproto.RoleClient)
	frame := append(relayproto.AppendPacketHeader(nil, relayproto.FrameSendPacket, relayproto.Addr{ID: stuck.ID()}, 1400), make([]byte, 1400)...)
	burst := make([]byte, 0, 1000*len(frame))
	for range 1000 {
		burst = append(burst, frame...)
	}
	for range 20 { // 28 MB: more than every socket buffer on the way
		if _, err := cli.conn.Write(burst); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	cli.write(relayproto.FramePing, []byte("stillok!"))
	for {
		typ, p := cli.read()
		if typ == relayproto.FramePong && string(p) == "stillok!" {
			break
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the sender waited %v for a pong behind a stuck receiver", took)
	}
	if st := srv.Stats(); st.PacketsDropped == 0 {
		t.Fatalf("no drops counted: %+v", st)
	}
}

func TestCloseSendsGoAway(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll})
	a := attach(t, addr, newIdentity(t), relayproto.RoleDevice)
	go srv.Close()
	typ, p := a.read()
	f, err := relayproto.ParseGoAway(p)
	if typ != relayproto.FrameGoAway || err != nil || f.Reason != relayproto.GoAwayShutdown {
		t.Fatalf("got %s %+v %v", typ, f, err)
	}
	srv.Close() // idempotent
}

// TestAccept serves an agent through Accept on a connection the caller
// upgraded itself, and detaches it when the context is cancelled.
func TestAccept(t *testing.T) {
	srv, err := New(Config{Identity: newIdentity(t), AllowDevice: allowAll})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	a, b := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tc := tls.Server(b, srv.TLSConfig())
		br := bufio.NewReader(tc)
		if _, err := http.ReadRequest(br); err != nil {
			tc.Close()
			return
		}
		io.WriteString(tc, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: burrow-relay\r\nConnection: Upgrade\r\n\r\n")
		srv.Accept(ctx, tc, br)
	}()
	pc, err := paths.Listen(paths.Config{
		Identity: newIdentity(t),
		Role:     relayproto.RoleDevice,
		Relay:    relaylink.RelayConfig{Addr: "relay:443", ID: srv.ID()},
		Dial: func(context.Context, string, string) (net.Conn, error) {
			return a, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	if err := pc.WaitAttached(wctx); err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.Devices != 1 {
		t.Fatalf("stats %+v", st)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after its context was cancelled")
	}
}

// TestAcceptOutlivesQuiet: an agent served through Accept that falls quiet
// (and so waits on another goroutine) keeps Accept waiting until it ends.
func TestAcceptOutlivesQuiet(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for an agent to fall quiet")
	}
	srv, err := New(Config{Identity: newIdentity(t), AllowDevice: allowAll})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		tc := tls.Server(c, srv.TLSConfig())
		br := bufio.NewReader(tc)
		if _, err := http.ReadRequest(br); err != nil {
			tc.Close()
			return
		}
		io.WriteString(tc, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: burrow-relay\r\nConnection: Upgrade\r\n\r\n")
		srv.Accept(ctx, tc, br)
	}()
	a := connect(t, ln.Addr().String())
	a.hello(newIdentity(t), relayproto.RoleClient, 1, 1, a.exporter())
	if typ, _ := a.read(); typ != relayproto.FrameServerHello {
		t.Fatalf("got %s", typ)
	}
	time.Sleep(idleProbe + 500*time.Millisecond) // quiet: the wait moves to another goroutine
	select {
	case <-returned:
		t.Fatal("Accept returned while its agent was attached")
	default:
	}
	// The quiet attachment still serves.
	a.write(relayproto.FramePing, []byte("12345678"))
	if typ, _ := a.read(); typ != relayproto.FramePong {
		t.Fatalf("got %s, want pong", typ)
	}
	cancel()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after its context was cancelled")
	}
}

func (a *agent) sendTo(dst identity.ID, pkt string) {
	a.t.Helper()
	a.write(relayproto.FrameSendPacket, append(relayproto.AppendAddr(nil, relayproto.Addr{ID: dst}), pkt...))
}

func (a *agent) expectGone(dst identity.ID, reason relayproto.GoneReason) {
	a.t.Helper()
	typ, p := a.read()
	g, err := relayproto.ParsePeerGone(p)
	if typ != relayproto.FramePeerGone || err != nil || g.Peer.ID != dst || g.Reason != reason {
		a.t.Fatalf("got %s %+v %v, want peer-gone (%s)", typ, g, err, reason)
	}
}

// TestDeviceMustSendAccessList: a device that sends something else after
// its hello is refused.
func TestDeviceMustSendAccessList(t *testing.T) {
	_, addr := serve(t, Config{AllowDevice: allowAll})
	a := connect(t, addr)
	id := newIdentity(t)
	a.write(relayproto.FrameClientHello, relayproto.AppendClientHello(nil, relayproto.ClientHello{
		MinVersion: 1, MaxVersion: 1, Role: relayproto.RoleDevice, Instance: 1, PublicKey: id.PublicKey(),
	}, a.exporter(), id.Sign))
	a.write(relayproto.FramePing, make([]byte, 8))
	if f := a.refusal(); f.Code != relayproto.RefuseAuth || !strings.Contains(f.Message, "access list") {
		t.Fatalf("%+v", f)
	}
}

// TestGating: the relay routes to a device only the clients on its access
// list, or pairing with one of its pending invites, and tells the others
// at once.
func TestGating(t *testing.T) {
	_, addr := serve(t, Config{AllowDevice: allowAll})
	devID, friendID, strangerID, pairerID := newIdentity(t), newIdentity(t), newIdentity(t), newIdentity(t)
	dev := attach(t, addr, devID, relayproto.RoleDevice)
	friend := attach(t, addr, friendID, relayproto.RoleClient)
	stranger := attach(t, addr, strangerID, relayproto.RoleClient)
	pairer := attach(t, addr, pairerID, relayproto.RoleClient)

	// The device attached with an empty list: no one gets through.
	friend.sendTo(devID.ID(), "early")
	friend.expectGone(devID.ID(), relayproto.GoneUnreachable)

	// A list across two frames: the friend and an invite token.
	token := [32]byte{42}
	dev.write(relayproto.FrameAccess, relayproto.AppendAccess(nil, relayproto.AccessFirst,
		[]relayproto.AccessEntry{{Kind: relayproto.AccessClient, Value: friendID.ID()}}))
	dev.write(relayproto.FrameAccess, relayproto.AppendAccess(nil, relayproto.AccessLast,
		[]relayproto.AccessEntry{{Kind: relayproto.AccessInvite, Value: token}}))
	dev.write(relayproto.FramePing, []byte("applied!"))
	if typ, _ := dev.read(); typ != relayproto.FramePong {
		t.Fatalf("got %s", typ)
	}

	friend.sendTo(devID.ID(), "hello")
	if typ, p := dev.read(); typ != relayproto.FrameRecvPacket || !strings.HasSuffix(string(p), "hello") {
		t.Fatalf("device got %s %q", typ, p)
	}
	stranger.sendTo(devID.ID(), "let me in")
	stranger.expectGone(devID.ID(), relayproto.GoneUnreachable)

	// A wrong token does not help; the listed one does.
	pairer.write(relayproto.FramePairIntent, relayproto.AppendPairIntent(nil, relayproto.PairIntent{Device: devID.ID(), Token: [32]byte{7}}))
	pairer.sendTo(devID.ID(), "guess")
	pairer.expectGone(devID.ID(), relayproto.GoneUnreachable)
	pairer.write(relayproto.FramePairIntent, relayproto.AppendPairIntent(nil, relayproto.PairIntent{Device: devID.ID(), Token: token}))
	pairer.sendTo(devID.ID(), "pairing")
	if typ, p := dev.read(); typ != relayproto.FrameRecvPacket || !strings.HasSuffix(string(p), "pairing") {
		t.Fatalf("device got %s %q", typ, p)
	}

	// A new list replaces the old one: the friend is out, the pairer (now
	// paired) is in, the invite is gone.
	dev.allow(pairerID)
	friend.sendTo(devID.ID(), "still?")
	friend.expectGone(devID.ID(), relayproto.GoneUnreachable)
	pairer.sendTo(devID.ID(), "paired")
	if typ, p := dev.read(); typ != relayproto.FrameRecvPacket || !strings.HasSuffix(string(p), "paired") {
		t.Fatalf("device got %s %q", typ, p)
	}
}

func TestEnrollment(t *testing.T) {
	st, err := OpenStore(filepath.Join(t.TempDir(), "relay.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, addr := serve(t, Config{AllowDevice: st.Enrolled, Enroll: st.Enroll})
	token, err := st.CreateToken(1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hello := func(id *identity.Identity, token string) *agent {
		a := connect(t, addr)
		h := relayproto.ClientHello{MinVersion: 1, MaxVersion: 1, Role: relayproto.RoleDevice, Instance: 1, PublicKey: id.PublicKey()}
		if token != "" {
			h.Extensions = []relayproto.Extension{{Type: relayproto.ExtEnrollToken, Value: []byte(token)}}
		}
		a.write(relayproto.FrameClientHello, relayproto.AppendClientHello(nil, h, a.exporter(), id.Sign))
		a.write(relayproto.FrameAccess, relayproto.AppendAccess(nil, relayproto.AccessFirst|relayproto.AccessLast, nil))
		return a
	}
	first, second := newIdentity(t), newIdentity(t)
	if f := hello(first, "").refusal(); f.Code != relayproto.RefuseNotAllowed || !strings.Contains(f.Message, "enrollment token") {
		t.Fatalf("no token: %+v", f)
	}
	if typ, _ := hello(first, token).read(); typ != relayproto.FrameServerHello {
		t.Fatalf("valid token: got %s", typ)
	}
	if !st.Enrolled(first.ID()) {
		t.Fatal("device not recorded")
	}
	// Enrolled now: no token needed.
	if typ, _ := hello(first, "").read(); typ != relayproto.FrameServerHello {
		t.Fatalf("enrolled device: got %s", typ)
	}
	// The token had one use.
	if f := hello(second, token).refusal(); f.Code != relayproto.RefuseNotAllowed || !strings.Contains(f.Message, "used up") {
		t.Fatalf("second use: %+v", f)
	}
	expired, _ := st.CreateToken(5, time.Nanosecond)
	time.Sleep(time.Millisecond)
	if f := hello(second, expired).refusal(); !strings.Contains(f.Message, "expired") {
		t.Fatalf("expired token: %+v", f)
	}
}

// serveUDP serves a relay whose UDP binding port is pc, and attaches a
// client to it over IPv4; it returns the relay, the client and the binding
// its server hello offered.
func serveUDP(t *testing.T, pc net.PacketConn) (*Server, *agent, relayproto.UDPBinding) {
	t.Helper()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	srv, addr := serve(t, Config{AllowDevice: allowAll, UDPPort: port})
	udpDone := make(chan struct{})
	go func() {
		defer close(udpDone)
		srv.ServeUDP(pc)
	}()
	t.Cleanup(func() { srv.Close(); <-udpDone })

	a := connect(t, addr)
	exp := a.exporter()
	a.hello(newIdentity(t), relayproto.RoleClient, 1, 1, exp)
	typ, p := a.read()
	if typ != relayproto.FrameServerHello {
		t.Fatalf("got %s, want server-hello", typ)
	}
	sh, err := relayproto.ParseServerHello(p, exp)
	if err != nil {
		t.Fatal(err)
	}
	var binding relayproto.UDPBinding
	for _, e := range sh.Extensions {
		if e.Type == relayproto.ExtUDPBinding {
			if binding, err = relayproto.ParseUDPBinding(e.Value); err != nil {
				t.Fatal(err)
			}
		}
	}
	if binding.Port != uint16(port) {
		t.Fatalf("hello offers UDP port %d, want %d", binding.Port, port)
	}
	return srv, a, binding
}

// TestUDPBindingIsNoReflector: the relay's UDP port answers only binding
// requests that carry a current attachment's token, with the address it
// saw, and never with more bytes than it received.
func TestUDPBindingIsNoReflector(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, a, binding := serveUDP(t, pc)

	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	relayUDP := pc.LocalAddr()
	// ask sends p and returns the answer, or nil after a quiet wait.
	ask := func(p []byte) []byte {
		t.Helper()
		if _, err := probe.WriteTo(p, relayUDP); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		probe.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, _, err := probe.ReadFrom(buf)
		if err != nil {
			return nil
		}
		if n > len(p) {
			t.Fatalf("answered %d bytes to a request of %d", n, len(p))
		}
		return buf[:n]
	}
	txid := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	wrong := binding.Token
	wrong[0] ^= 1
	good := relayproto.AppendBindingRequest(nil, binding.Token, txid)
	for name, p := range map[string][]byte{
		"empty":          {},
		"one byte":       {relayproto.UDPBindingRequest},
		"garbage":        []byte(strings.Repeat("x", 1200)),
		"wrong token":    relayproto.AppendBindingRequest(nil, wrong, txid),
		"short request":  good[:relayproto.BindingRequestLen-1],
		"long request":   append(append([]byte(nil), good...), 0),
		"zero token":     relayproto.AppendBindingRequest(nil, [16]byte{}, txid),
		"response frame": relayproto.AppendBindingResponse(nil, txid, probe.LocalAddr().(*net.UDPAddr).AddrPort()),
	} {
		if got := ask(p); got != nil {
			t.Errorf("%s: answered %x", name, got)
		}
	}
	resp := ask(good)
	if resp == nil {
		t.Fatal("an authenticated binding request got no answer")
	}
	gotTx, observed, err := relayproto.ParseBindingResponse(resp)
	if err != nil || gotTx != txid || observed != probe.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("answer %v %v %v, want txid %v and %v", gotTx, observed, err, txid, probe.LocalAddr())
	}
	if st := srv.Stats(); st.UDPAnswered != 1 || st.UDPIgnored != 8 {
		t.Fatalf("stats: answered %d ignored %d, want 1 and 8", st.UDPAnswered, st.UDPIgnored)
	}

	// Once the attachment ends, its token is worth nothing.
	a.conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for ask(good) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the token of an ended attachment is still answered")
		}
	}
}

// TestRemovedDeviceStaysRemoved: a removed device that presents the token
// it enrolled with (uses left) is refused, not enrolled again; other
// devices may still use that token, and a token issued after the removal
// enrolls the device again.
func TestRemovedDeviceStaysRemoved(t *testing.T) {
	st, err := OpenStore(filepath.Join(t.TempDir(), "relay.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, addr := serve(t, Config{AllowDevice: st.Enrolled, Enroll: st.Enroll})
	token, err := st.CreateToken(3, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hello := func(id *identity.Identity, token string) *agent {
		a := connect(t, addr)
		h := relayproto.ClientHello{MinVersion: 1, MaxVersion: 1, Role: relayproto.RoleDevice, Instance: 1, PublicKey: id.PublicKey(),
			Extensions: []relayproto.Extension{{Type: relayproto.ExtEnrollToken, Value: []byte(token)}}}
		a.write(relayproto.FrameClientHello, relayproto.AppendClientHello(nil, h, a.exporter(), id.Sign))
		a.write(relayproto.FrameAccess, relayproto.AppendAccess(nil, relayproto.AccessFirst|relayproto.AccessLast, nil))
		return a
	}
	dev := newIdentity(t)
	first := hello(dev, token)
	if typ, _ := first.read(); typ != relayproto.FrameServerHello {
		t.Fatalf("enrollment: got %s", typ)
	}
	// The operator removes it, as the admin API does.
	if err := st.Remove(dev.ID()); err != nil {
		t.Fatal(err)
	}
	srv.Disconnect(dev.ID())
	if ga := first.expectGoAway(5 * time.Second); ga.Reason != relayproto.GoAwayRemoved {
		t.Fatalf("go-away %+v", ga)
	}
	// It comes straight back with the token of its configuration.
	if f := hello(dev, token).refusal(); f.Code != relayproto.RefuseNotAllowed || !strings.Contains(f.Message, "before this device was removed") {
		t.Fatalf("removed device with its old token: %+v", f)
	}
	if st.Enrolled(dev.ID()) {
		t.Fatal("the removed device is enrolled again")
	}
	// The token's other uses still serve other devices.
	if typ, _ := hello(newIdentity(t), token).read(); typ != relayproto.FrameServerHello {
		t.Fatalf("another device with the token: got %s", typ)
	}
	// A token made after the removal brings the device back.
	time.Sleep(time.Millisecond)
	fresh, err := st.CreateToken(1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if typ, _ := hello(dev, fresh).read(); typ != relayproto.FrameServerHello {
		t.Fatalf("removed device with a new token: got %s", typ)
	}
}

// TestTokenLifetime: a token's lifetime must be more than zero; zero or a
// negative duration is an error, not a token that never expires.
func TestTokenLifetime(t *testing.T) {
	st, err := OpenStore(filepath.Join(t.TempDir(), "relay.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, ttl := range []time.Duration{0, -time.Hour, -time.Nanosecond} {
		if tok, err := st.CreateToken(1, ttl); err == nil || !strings.Contains(err.Error(), "more than 0") {
			t.Errorf("ttl %v: token %q, error %v", ttl, tok, err)
		}
	}
	if _, err := st.CreateToken(1, time.Minute); err != nil {
		t.Fatal(err)
	}
}

// TestQuietPingBackToWait: a quiet agent's lone keepalive ping is answered
// and its read loop hands the wait back to the socket after wakeProbe,
// not idleProbe; a second frame meanwhile keeps it on the read loop.
func TestQuietPingBackToWait(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for an agent to fall quiet")
	}
	_, addr := serve(t, Config{AllowDevice: allowAll})
	a := connect(t, addr)
	a.hello(newIdentity(t), relayproto.RoleClient, 1, 1, a.exporter())
	if typ, _ := a.read(); typ != relayproto.FrameServerHello {
		t.Fatalf("got %s", typ)
	}
	time.Sleep(idleProbe + 500*time.Millisecond) // quiet
	if n := readLoops(); n != 0 {
		t.Fatalf("%d read loops of a quiet agent, want 0", n)
	}
	ping := func() {
		t.Helper()
		a.write(relayproto.FramePing, []byte("12345678"))
		if typ, _ := a.read(); typ != relayproto.FramePong {
			t.Fatalf("got %s, want pong", typ)
		}
	}
	ping()
	time.Sleep(wakeProbe + 500*time.Millisecond)
	if n := readLoops(); n != 0 {
		t.Fatalf("%d read loops %v after a lone ping, want 0", n, wakeProbe+500*time.Millisecond)
	}
	ping()
	ping() // a second frame: the agent is busy
	time.Sleep(wakeProbe + 500*time.Millisecond)
	if n := readLoops(); n != 1 {
		t.Fatalf("%d read loops after two pings, want 1 (for idleProbe)", n)
	}
}

// readLoops counts the goroutines running an attachment's read loop.
func readLoops() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "relay.(*attachment).readLoop(")
}
