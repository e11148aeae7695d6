package relay

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/israce"
	"github.com/burrow-tunnel/burrow/internal/testing/linktest"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// udpRelay is a relay serving TCP and UDP on loopback.
type udpTestRelay struct {
	srv  *Server
	addr string         // TCP
	udp  netip.AddrPort // UDP
}

// serveUDPRelay serves a relay with the UDP relay path on.
func serveUDPRelay(t *testing.T, cfg Config) udpTestRelay {
	t.Helper()
	return serveUDPOn(t, cfg, true)
}

// serveUDPOn serves a relay on TCP and on a UDP port, the UDP relay path on
// or off.
func serveUDPOn(t *testing.T, cfg Config, relayUDP bool) udpTestRelay {
	t.Helper()
	cfg.NoUDPRelay = !relayUDP
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	cfg.AllowDevice = allowAll
	cfg.UDPPort = pc.LocalAddr().(*net.UDPAddr).Port
	srv, addr := serve(t, cfg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeUDP(pc)
	}()
	t.Cleanup(func() { srv.Close(); <-done })
	return udpTestRelay{srv: srv, addr: addr, udp: pc.LocalAddr().(*net.UDPAddr).AddrPort()}
}

// A udpTestAgent is an agent attached with a real relay link, with a UDP
// socket of its own on loopback.
type udpTestAgent struct {
	t       *testing.T
	r       udpTestRelay
	id      *identity.Identity
	link    *relaylink.Link
	token   [16]byte
	channel uint32
	sock    *net.UDPConn
	tag     [relayproto.UDPTagLen]byte
	buf     []byte
}

// dialUDPAgent attaches id with role; a device allows the clients named.
func dialUDPAgent(t *testing.T, r udpTestRelay, role relayproto.Role, allow ...*identity.Identity) *udpTestAgent {
	t.Helper()
	a := &udpTestAgent{t: t, r: r, id: newIdentity(t), buf: make([]byte, 2048)}
	return a.dial(role, linktest.State(role, allow...))
}

func (a *udpTestAgent) dial(role relayproto.Role, st relaylink.State) *udpTestAgent {
	a.t.Helper()
	at := linktest.AttachUDP(a.t, relaylink.Config{
		Relay: relaylink.RelayConfig{Addr: a.r.addr, ID: a.r.srv.ID()}, Identity: a.id, Role: role, Instance: 1,
	}, st)
	a.link, a.token, a.channel = at.Link, at.Token, at.Channel
	a.sock = listenLoopbackUDP(a.t)
	return a
}

func listenLoopbackUDP(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// write sends p to the relay's UDP port from the agent's socket.
func (a *udpTestAgent) write(p []byte) { writeUDP(a.t, a.sock, a.r.udp, p) }

func writeUDP(t *testing.T, c *net.UDPConn, to netip.AddrPort, p []byte) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(p, to); err != nil {
		t.Fatal(err)
	}
}

// next returns the next datagram the agent's socket receives; it fails the
// test if none comes within a few seconds, or if it is not from the relay.
func (a *udpTestAgent) next() []byte {
	a.t.Helper()
	a.sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := a.sock.ReadFromUDPAddrPort(a.buf)
	if err != nil {
		a.t.Fatalf("no datagram from the relay: %v", err)
	}
	if from != a.r.udp {
		a.t.Fatalf("datagram from %v, not from the relay %v", from, a.r.udp)
	}
	return a.buf[:n]
}

// bind binds the agent's socket and keeps the tag.
func (a *udpTestAgent) bind() {
	a.t.Helper()
	txid := [8]byte{9, 8, 7}
	req := relayproto.AppendUDPBind(nil, a.token, txid)
	a.write(req)
	p := a.next()
	if len(p) > len(req) {
		a.t.Fatalf("bound of %d bytes answers a bind of %d", len(p), len(req))
	}
	gotTx, tag, addr, err := relayproto.ParseUDPBound(p)
	if err != nil || gotTx != txid || addr != a.sock.LocalAddr().(*net.UDPAddr).AddrPort() {
		a.t.Fatalf("bound %x: %v %v %v", p, gotTx, addr, err)
	}
	a.tag = tag
}

// confirm sends a keepalive and expects its alive, the first datagram to
// come: nothing was forwarded to the agent before.
func (a *udpTestAgent) confirm(seq uint64) {
	a.t.Helper()
	ka := relayproto.AppendUDPKeepalive(nil, relayproto.UDPKeepalive, a.tag, seq)
	a.write(ka)
	p := a.next()
	typ, tag, gotSeq, err := relayproto.ParseUDPKeepalive(p)
	if err != nil || typ != relayproto.UDPAlive || tag != a.tag || gotSeq != seq || len(p) != len(ka) {
		a.t.Fatalf("got %x, want alive %d with the tag", p, seq)
	}
}

// send sends pkt to channel with the agent's tag.
func (a *udpTestAgent) send(channel uint32, pkt []byte) {
	a.write(append(relayproto.AppendUDPData(nil, relayproto.UDPSend, a.tag, channel), pkt...))
}

// recv expects the next datagram to be a recv of pkt from the agent from.
func (a *udpTestAgent) recv(from *udpTestAgent, pkt []byte) {
	a.t.Helper()
	p := a.next()
	typ, tag, ch, got, err := relayproto.ParseUDPData(p)
	if err != nil || typ != relayproto.UDPRecv || tag != a.tag || ch != from.channel || !bytes.Equal(got, pkt) {
		a.t.Fatalf("got %x (%v), want recv of %q from channel %d with the tag", p, err, pkt, from.channel)
	}
}

// udpPair attaches a device that allows a client, both bound and confirmed.
func udpPair(t *testing.T, r udpTestRelay) (dev, cli *udpTestAgent) {
	t.Helper()
	cliID := newIdentity(t)
	dev = dialUDPAgent(t, r, relayproto.RoleDevice, cliID)
	cli = &udpTestAgent{t: t, r: r, id: cliID, buf: make([]byte, 2048)}
	cli.dial(relayproto.RoleClient, relaylink.State{})
	for _, a := range []*udpTestAgent{dev, cli} {
		a.bind()
		a.confirm(1)
	}
	return dev, cli
}

func wantDrops(t *testing.T, srv *Server, want map[UDPDrop]uint64) {
	t.Helper()
	st := srv.Stats()
	for _, d := range UDPDrops {
		if st.UDPDropped[d] != want[d] {
			t.Errorf("dropped %s: %d, want %d", d, st.UDPDropped[d], want[d])
		}
	}
}

// TestUDPRelayExchange: a client and a device exchange packets over the
// UDP relay path once both bindings are confirmed, and not before.
func TestUDPRelayExchange(t *testing.T) {
	r := serveUDPRelay(t, Config{})
	cliID := newIdentity(t)
	dev := dialUDPAgent(t, r, relayproto.RoleDevice, cliID)
	cli := &udpTestAgent{t: t, r: r, id: cliID, buf: make([]byte, 2048)}
	cli.dial(relayproto.RoleClient, relaylink.State{})
	if dev.channel == cli.channel {
		t.Fatalf("both agents have channel %d", dev.channel)
	}
	dev.bind()
	cli.bind()
	if st := r.srv.Stats(); st.UDPBindings != 2 || st.UDPBindingsConfirmed != 0 {
		t.Fatalf("bindings %d, confirmed %d; want 2 and 0", st.UDPBindings, st.UDPBindingsConfirmed)
	}
	// The client's send confirms its own binding, but the device's is
	// not confirmed: nothing goes to it.
	cli.send(dev.channel, []byte("too early"))
	dev.confirm(1) // the first datagram the device gets is its alive
	cli.send(dev.channel, []byte("hello device"))
	dev.recv(cli, []byte("hello device"))
	dev.send(cli.channel, []byte("hello client"))
	cli.recv(dev, []byte("hello client"))
	big := bytes.Repeat([]byte{0xab}, relayproto.MaxUDPPacket)
	cli.send(dev.channel, big)
	dev.recv(cli, big)

	st := r.srv.Stats()
	if st.UDPForwarded != 3 || st.UDPForwardedBytes != uint64(len("hello device")+len("hello client")+len(big)) {
		t.Errorf("forwarded %d packets, %d bytes", st.UDPForwarded, st.UDPForwardedBytes)
	}
	if st.UDPBindings != 2 || st.UDPBindingsConfirmed != 2 {
		t.Errorf("bindings %d, confirmed %d; want 2 and 2", st.UDPBindings, st.UDPBindingsConfirmed)
	}
	if st.PacketsForwarded != 0 {
		t.Errorf("%d packets went over TCP", st.PacketsForwarded)
	}
	wantDrops(t, r.srv, map[UDPDrop]uint64{UDPDropUnconfirmed: 1})
	// The dashboard's snapshot and the sessions metric see the pair.
	if snap := r.srv.Snapshot(); len(snap.Pairs) != 1 || !snap.Pairs[0].Relayed {
		t.Errorf("snapshot pairs %+v, want the client and device, relayed", snap.Pairs)
	}
}

// TestUDPRelayAttacks: datagrams that the relay must not forward are
// dropped and counted, each under its reason, while a legitimate exchange
// goes on.
func TestUDPRelayAttacks(t *testing.T) {
	r := serveUDPRelay(t, Config{})
	dev, cli := udpPair(t, r)
	other := dialUDPAgent(t, r, relayproto.RoleClient) // no device allows it
	other.bind()
	other.confirm(1)
	closed := dialUDPAgent(t, r, relayproto.RoleDevice, cli.id) // leaves before it binds
	strict := dialUDPAgent(t, r, relayproto.RoleDevice)         // allows nobody
	strict.bind()
	strict.confirm(1)

	want := map[UDPDrop]uint64{}
	// A spoofed datagram from the client's address, which cannot carry
	// its tag.
	spoofed := cli.tag
	spoofed[0] ^= 1
	cli.write(append(relayproto.AppendUDPData(nil, relayproto.UDPSend, spoofed, dev.channel), "spoofed"...))
	want[UDPDropWrongTag]++
	// The client's datagram sent again from another agent's bound
	// address.
	other.write(append(relayproto.AppendUDPData(nil, relayproto.UDPSend, cli.tag, dev.channel), "replayed"...))
	want[UDPDropWrongTag]++
	// The other client's own datagram to a device that does not allow it,
	// and the client's to one that allows nobody.
	other.send(dev.channel, []byte("not allowed"))
	cli.send(strict.channel, []byte("not allowed either"))
	want[UDPDropNotAllowed] += 2
	// A client to a client.
	cli.send(other.channel, []byte("client to client"))
	want[UDPDropNotAllowed]++
	// A channel nobody has.
	cli.send(dev.channel^cli.channel^other.channel^strict.channel|1, []byte("nobody"))
	want[UDPDropUnknownChannel]++
	// Too large, and a type only the relay sends.
	cli.write(append(relayproto.AppendUDPData(nil, relayproto.UDPSend, cli.tag, dev.channel), make([]byte, relayproto.MaxUDPPacket+1)...))
	cli.write(append(relayproto.AppendUDPData(nil, relayproto.UDPRecv, dev.tag, cli.channel), "fake recv"...))
	want[UDPDropMalformed] += 2
	// The binding token of a session that has ended.
	closed.link.Close()
	for r.srv.Stats().Devices != 2 {
		time.Sleep(10 * time.Millisecond)
	}
	closed.write(relayproto.AppendUDPBind(nil, closed.token, [8]byte{1}))
	want[UDPDropUnknownToken]++

	// A flood from an unbound address, carrying the client's tag, while
	// the client and the device go on.
	flood := listenLoopbackUDP(t)
	for i := range 20 {
		for range 50 {
			writeUDP(t, flood, r.udp, append(relayproto.AppendUDPData(nil, relayproto.UDPSend, cli.tag, dev.channel), "flood"...))
		}
		want[UDPDropUnbound] += 50
		pkt := []byte{byte(i), 'o', 'k'}
		cli.send(dev.channel, pkt)
		dev.recv(cli, pkt) // the first datagram the device gets: nothing above reached it
		dev.send(cli.channel, pkt)
		cli.recv(dev, pkt)
	}
	// Nothing reached the others either: their next datagram is the
	// answer to their keepalive.
	other.confirm(2)
	strict.confirm(2)
	// The ended session's address got no answer: the answer to a binding
	// request is the first datagram it gets.
	closed.write(relayproto.AppendBindingRequest(nil, cli.token, [8]byte{2}))
	if p := closed.next(); p[0] != relayproto.UDPBindingResponse {
		t.Fatalf("the ended session's bind was answered: %x", p)
	}
	// Nor did the flood's.
	writeUDP(t, flood, r.udp, relayproto.AppendBindingRequest(nil, cli.token, [8]byte{3}))
	flood.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	if n, _, err := flood.ReadFromUDPAddrPort(buf); err != nil || buf[0] != relayproto.UDPBindingResponse {
		t.Fatalf("the flood's address got %x (%v), want only the binding response", buf[:n], err)
	}
	wantDrops(t, r.srv, want)
	if st := r.srv.Stats(); st.UDPForwarded != 40 {
		t.Errorf("forwarded %d, want 40", st.UDPForwarded)
	}
}

// TestUDPRelayRebinding: a bind from a new address (a NAT that gave the
// agent a new port) replaces the binding; the old address gets nothing
// more and its datagrams are dropped.
func TestUDPRelayRebinding(t *testing.T) {
	r := serveUDPRelay(t, Config{})
	dev, cli := udpPair(t, r)
	old := cli.sock
	oldTag := cli.tag
	cli.sock = listenLoopbackUDP(t)
	cli.bind()
	// Until the new address confirms, nothing goes anywhere.
	dev.send(cli.channel, []byte("unconfirmed"))
	cli.confirm(2)
	dev.send(cli.channel, []byte("moved"))
	cli.recv(dev, []byte("moved"))
	cli.send(dev.channel, []byte("from the new port"))
	dev.recv(cli, []byte("from the new port"))
	// The old address is bound no more.
	writeUDP(t, old, r.udp, append(relayproto.AppendUDPData(nil, relayproto.UDPSend, oldTag, dev.channel), "stale"...))
	writeUDP(t, old, r.udp, relayproto.AppendBindingRequest(nil, cli.token, [8]byte{3}))
	old.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := old.ReadFromUDPAddrPort(buf)
	if err != nil || buf[0] != relayproto.UDPBindingResponse {
		t.Fatalf("the old address got %x (%v), want only the binding response", buf[:n], err)
	}
	wantDrops(t, r.srv, map[UDPDrop]uint64{UDPDropUnconfirmed: 1, UDPDropUnbound: 1})
	if st := r.srv.Stats(); st.UDPBindings != 2 {
		t.Errorf("%d bindings, want 2", st.UDPBindings)
	}
}

// TestUDPBindingExpires: a binding that has heard nothing for a minute is
// dropped, and nothing is forwarded to it after.
func TestUDPBindingExpires(t *testing.T) {
	r := serveUDPRelay(t, Config{})
	dev, cli := udpPair(t, r)
	r.srv.urelay.sweep(nil, time.Now().Add(-udpBindingTTL).UnixNano())
	if st := r.srv.Stats(); st.UDPBindings != 2 {
		t.Fatalf("fresh bindings swept: %d left", st.UDPBindings)
	}
	r.srv.urelay.sweep(nil, time.Now().Add(time.Second).UnixNano()) // a minute later
	if st := r.srv.Stats(); st.UDPBindings != 0 {
		t.Fatalf("%d bindings left", st.UDPBindings)
	}
	cli.send(dev.channel, []byte("expired"))
	dev.write(relayproto.AppendBindingRequest(nil, dev.token, [8]byte{4}))
	if p := dev.next(); p[0] != relayproto.UDPBindingResponse {
		t.Fatalf("an expired binding got %x", p)
	}
	wantDrops(t, r.srv, map[UDPDrop]uint64{UDPDropUnbound: 1})
}

// TestUDPRelayOff: without UDPRelay, the server hello offers no channel and
// binds are not answered; binding requests still are.
func TestUDPRelayOff(t *testing.T) {
	r := serveUDPOn(t, Config{}, false)
	link, err := relaylink.Dial(context.Background(), relaylink.Config{
		Relay: relaylink.RelayConfig{Addr: r.addr, ID: r.srv.ID()}, Identity: newIdentity(t), Role: relayproto.RoleClient, Instance: 1,
	}, relaylink.State{})
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	b, ok := link.UDPBinding()
	if _, relayed := link.UDPRelay(); !ok || relayed {
		t.Fatalf("binding offered %v, relay path offered %v; want true, false", ok, relayed)
	}
	a := &udpTestAgent{t: t, r: r, sock: listenLoopbackUDP(t), buf: make([]byte, 2048)}
	a.write(relayproto.AppendUDPBind(nil, b.Token, [8]byte{1}))
	a.write(relayproto.AppendBindingRequest(nil, b.Token, [8]byte{2}))
	if p := a.next(); p[0] != relayproto.UDPBindingResponse {
		t.Fatalf("got %x, want only the binding response", p)
	}
	if st := r.srv.Stats(); st.UDPIgnored != 1 || st.UDPBindings != 0 {
		t.Fatalf("ignored %d, bindings %d; want 1 and 0", st.UDPIgnored, st.UDPBindings)
	}
}

// TestUDPForwardDoesNotAllocate: forwarding over the UDP relay path
// allocates nothing per packet, anywhere in the process.
func TestUDPForwardDoesNotAllocate(t *testing.T) {
	if israce.Enabled {
		t.Skip("the race detector allocates; .ci/run runs this without it")
	}
	r := serveUDPRelay(t, Config{})
	dev, cli := udpPair(t, r)
	const burst = 16
	datagram := append(relayproto.AppendUDPData(nil, relayproto.UDPSend, cli.tag, dev.channel), make([]byte, 1200)...)
	buf := make([]byte, 2048)
	dev.sock.SetReadDeadline(time.Time{})
	once := func() {
		for range burst {
			if _, err := cli.sock.WriteToUDPAddrPort(datagram, r.udp); err != nil {
				t.Fatal(err)
			}
		}
		for range burst {
			if _, _, err := dev.sock.ReadFromUDPAddrPort(buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	for range 50 {
		once()
	}
	perPacket := testing.AllocsPerRun(200, once) / burst
	if perPacket >= 0.5 {
		t.Fatalf("%.2f allocations per forwarded packet, want 0", perPacket)
	}
	t.Logf("%.2f allocations per packet", perPacket)
}

// TestUDPBindingMemory: a bound agent costs the relay less than 1 KiB
// more than an attached one (channel, binding and their map entries).
func TestUDPBindingMemory(t *testing.T) {
	const n = 10_000
	var r udpRelay
	r.init()
	agents := make([]*attachment, n)
	for i := range agents {
		agents[i] = &attachment{}
	}
	from := make([]byte, 32) // as a pktinfo control message
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	for i, a := range agents {
		r.attach(a)
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 40000)
		if _, ok := r.bind(a, addr, nil, bytes.Clone(from), [8]byte{}, 1); !ok {
			t.Fatal("bind failed")
		}
	}
	per := float64(heap()-before) / n
	runtime.KeepAlive(agents)
	runtime.KeepAlive(&r)
	if per > 1024 {
		t.Fatalf("%.0f bytes per bound agent, want at most 1 KiB", per)
	}
	t.Logf("%.0f bytes per bound agent", per)
}

// TestUDPRelayLastWords: the datagrams an agent sends just before it
// closes its TCP session (a QUIC close), read by the relay after the
// session has ended, still reach the peer; nothing is sent to the agent
// that left, it gets no alive, and after the grace its sends are dropped.
func TestUDPRelayLastWords(t *testing.T) {
	r := serveUDPRelay(t, Config{})
	dev, cli := udpPair(t, r)
	cli.link.Close()
	for deadline := time.Now().Add(10 * time.Second); r.srv.Stats().Clients != 0; {
		if time.Now().After(deadline) {
			t.Fatal("the client's session did not end at the relay")
		}
		time.Sleep(time.Millisecond)
	}
	cli.send(dev.channel, []byte("goodbye"))
	dev.recv(cli, []byte("goodbye"))
	// To the client that left: nothing (its channel is freed).
	dev.send(cli.channel, []byte("still there?"))
	if st := r.srv.Stats(); st.UDPBindings != 1 {
		t.Errorf("%d bindings counted, want the device's only", st.UDPBindings)
	}
	// Its keepalive gets no answer; after the grace its sends are dropped.
	cli.write(relayproto.AppendUDPKeepalive(nil, relayproto.UDPKeepalive, cli.tag, 2))
	now := time.Now().Add(udpLeaveGrace + time.Second)
	r.srv.urelay.mu.RLock()
	b := r.srv.urelay.byAddr[netip.MustParseAddrPort(cli.sock.LocalAddr().String())]
	r.srv.urelay.mu.RUnlock()
	if b == nil || r.srv.urelay.taken(b.addr, b, cli.tag, now.UnixNano()) != nil {
		t.Error("a binding whose agent left was taken after the grace")
	}
	dev.confirm(7) // the device gets its alive, and nothing before it
	wantDrops(t, r.srv, map[UDPDrop]uint64{UDPDropUnknownChannel: 1, UDPDropUnbound: 2})
}

// TestUDPBindTakeover: a bind that another agent sends with a forged
// source address, that of a confirmed binding, does not knock that
// binding off its address: the other's binding waits until its tag comes
// back from the address, which only the address's owner can make happen.
// The same bind sent again gets the same tag.
func TestUDPBindTakeover(t *testing.T) {
	r := serveUDPRelay(t, Config{})
	dev, cli := udpPair(t, r)
	// The same bind again: the same tag, and the binding stays confirmed.
	tag := cli.tag
	cli.bind()
	if cli.tag != tag {
		t.Fatal("the same bind sent again got a new tag")
	}
	// Another client, attached with its own token, binds "from" the
	// client's address (a forged source: here, the client's own socket).
	thief := &udpTestAgent{t: t, r: r, id: newIdentity(t), buf: make([]byte, 2048)}
	thief.dial(relayproto.RoleClient, relaylink.State{})
	cli.write(relayproto.AppendUDPBind(nil, thief.token, [8]byte{6}))
	stolen := cli.next() // the bound answer goes to the address, the client's
	_, thiefTag, _, err := relayproto.ParseUDPBound(stolen)
	if err != nil {
		t.Fatalf("bound %x: %v", stolen, err)
	}
	// The client's binding still works, both ways.
	cli.send(dev.channel, []byte("still mine"))
	dev.recv(cli, []byte("still mine"))
	dev.send(cli.channel, []byte("still yours"))
	cli.recv(dev, []byte("still yours"))
	if st := r.srv.Stats(); st.UDPBindings != 2 || st.UDPBindingsConfirmed != 2 {
		t.Errorf("bindings %d, confirmed %d; want the client's and the device's", st.UDPBindings, st.UDPBindingsConfirmed)
	}
	// Had the thief owned the address, its tag would have come back from
	// it: then the address is its.
	cli.write(relayproto.AppendUDPKeepalive(nil, relayproto.UDPKeepalive, thiefTag, 1))
	if p := cli.next(); p[0] != relayproto.UDPAlive {
		t.Fatalf("the pending binding's keepalive got %x, want alive", p)
	}
	cli.write(relayproto.AppendUDPKeepalive(nil, relayproto.UDPKeepalive, cli.tag, 2))
	thief.tag = thiefTag
	thief.sock = cli.sock
	thief.confirm(3) // the next datagram is the answer to this, not to the client's
	wantDrops(t, r.srv, map[UDPDrop]uint64{UDPDropWrongTag: 1})
}
