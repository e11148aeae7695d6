package paths

import (
	"context"
	"crypto/rand"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/peerproto"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// A udpPort is a UDP socket: a *net.UDPConn or a memnet.UDPConn.
type udpPort interface {
	ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error)
	WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error)
	Close() error
}

// testForwarder is a relay's UDP port as relayproto's PROTOCOL.md ("UDP
// relay path") describes it, reduced to what the agent side sees: bind
// with a token answered by bound with a new tag, keepalive by alive, and
// send forwarded as recv between confirmed bindings by channel. It routes
// any agent to any other.
type testForwarder struct {
	sock      udpPort
	addr      netip.AddrPort
	forwarded atomic.Int64
	nowhere   atomic.Int64 // sends to a channel no agent has
	binds     atomic.Int64 // answered
	keepalive atomic.Int64 // answered
	drop      atomic.Bool  // read and drop everything

	mu     sync.Mutex
	agents []*fwdAgent // guarded by mu
	done   sync.WaitGroup
}

type fwdAgent struct {
	token     [16]byte
	channel   uint32
	addr      netip.AddrPort
	tag       [relayproto.UDPTagLen]byte
	confirmed bool
}

func startForwarder(t *testing.T, sock udpPort, addr netip.AddrPort) *testForwarder {
	f := &testForwarder{sock: sock, addr: addr}
	f.done.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := sock.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if !f.drop.Load() && n > 0 {
				f.handle(buf[:n], from)
			}
		}
	})
	t.Cleanup(func() { sock.Close(); f.done.Wait() })
	return f
}

func (f *testForwarder) handle(b []byte, from netip.AddrPort) {
	f.mu.Lock()
	defer f.mu.Unlock()
	byTag := func(tag [relayproto.UDPTagLen]byte) *fwdAgent {
		for _, a := range f.agents {
			if a.addr == from && a.tag == tag {
				return a
			}
		}
		return nil
	}
	switch b[0] {
	case relayproto.UDPBind:
		token, txid, err := relayproto.ParseUDPBind(b)
		if err != nil {
			return
		}
		for _, a := range f.agents {
			if a.token == token {
				rand.Read(a.tag[:])
				a.addr, a.confirmed = from, false
				f.binds.Add(1)
				f.sock.WriteToUDPAddrPort(relayproto.AppendUDPBound(nil, txid, a.tag, from), from)
			}
		}
	case relayproto.UDPKeepalive:
		_, tag, seq, err := relayproto.ParseUDPKeepalive(b)
		if a := byTag(tag); err == nil && a != nil {
			a.confirmed = true
			f.keepalive.Add(1)
			f.sock.WriteToUDPAddrPort(relayproto.AppendUDPKeepalive(nil, relayproto.UDPAlive, tag, seq), from)
		}
	case relayproto.UDPSend:
		_, tag, ch, _, err := relayproto.ParseUDPData(b)
		src := byTag(tag)
		if err != nil || src == nil {
			return
		}
		src.confirmed = true
		if !slices.ContainsFunc(f.agents, func(a *fwdAgent) bool { return a.channel == ch }) {
			f.nowhere.Add(1)
		}
		for _, dst := range f.agents {
			if dst.channel == ch && dst.confirmed {
				relayproto.PutUDPDataHeader(b, relayproto.UDPRecv, dst.tag, src.channel)
				f.sock.WriteToUDPAddrPort(b, dst.addr)
				f.forwarded.Add(1)
			}
		}
	}
}

// bind makes c bind its UDP socket at the forwarder, as a link to relay
// with channel ch at it would, until c closes.
func (f *testForwarder) bind(c *Conn, relay identity.ID, ch uint32) {
	f.bindCtx(c.ctx, c, relay, ch)
}

// bindCtx is bind until ctx, the link's, ends.
func (f *testForwarder) bindCtx(ctx context.Context, c *Conn, relay identity.ID, ch uint32) {
	a := &fwdAgent{channel: ch}
	rand.Read(a.token[:])
	f.mu.Lock()
	f.agents = append(f.agents, a)
	f.mu.Unlock()
	rb := newRelayBinding(relay, f.addr, a.token, ch)
	c.wg.Go(func() { c.keepRelayBinding(ctx, rb) })
}

// tagOf returns the tag the forwarder gave the binding of channel ch.
func (f *testForwarder) tagOf(ch uint32) [relayproto.UDPTagLen]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.agents {
		if a.channel == ch {
			return a.tag
		}
	}
	return [relayproto.UDPTagLen]byte{}
}

func isRelayUDP(pi PathInfo) bool { return pi.RelayUDP && !pi.Direct }
func onTCP(pi PathInfo) bool      { return !pi.RelayUDP && !pi.Direct }

// Channels of the pair's agents at the forwarder.
const (
	devChannel = 7
	cliChannel = 9
)

// newRelayUDPPair is a directPair with direct paths off, both bound at a
// forwarder on the same in-memory network.
func newRelayUDPPair(t *testing.T) (*directPair, *testForwarder) {
	t.Helper()
	p := newDirectPairOpts(t, DirectOptions{Disable: true})
	addr := netip.MustParseAddrPort("10.0.0.9:3478")
	f := startForwarder(t, p.udp.Listen(addr.String()), addr)
	f.bind(p.dev, p.relayID, devChannel)
	f.bind(p.cli, p.relayID, cliChannel)
	return p, f
}

// TestRelayUDPPath: two agents without direct paths, bound at the relay's
// UDP port, move their packets onto the UDP relay path once their probes
// cross through it; then the relay's TCP link carries none of them. The
// bound answer tells the address the relay sees.
func TestRelayUDPPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, f := newRelayUDPPair(t)
		p.exchange(t) // over the relay's TCP link
		p.start(t, newKey())
		took := p.waitPath(t, 3*time.Second, isRelayUDP, "relay udp")
		t.Logf("relay udp after %v, rtt %v", took, p.cDir.Path().RTT)
		if s := p.cli.Path(p.dev.LocalAddr()).String(); s != "relay udp" {
			t.Fatalf("client's path %q, want relay udp", s)
		}
		if obs := p.cli.ds.observed.Load(); obs == nil || *obs != p.cSock.Addr() {
			t.Fatalf("observed address %v, want %v", obs, p.cSock.Addr())
		}
		before, fwd := p.relayStats(), f.forwarded.Load()
		for range 50 {
			p.exchange(t)
		}
		if n := p.relayStats() - before; n != 0 {
			t.Fatalf("the relay's TCP link carried %d packets on the UDP relay path", n)
		}
		if n := f.forwarded.Load() - fwd; n < 100 {
			t.Fatalf("the forwarder forwarded %d datagrams for 100 packets", n)
		}
		// Full-size packets fit; larger ones go over the TCP link.
		big := make([]byte, MaxPacket)
		big[0] = 0x40
		fwd = f.forwarded.Load()
		p.cli.WriteTo(big, p.dev.LocalAddr())
		buf := make([]byte, 2048)
		p.dev.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, _, err := p.dev.ReadFrom(buf); err != nil || n != MaxPacket || f.forwarded.Load() != fwd+1 {
			t.Fatalf("full-size packet: %d bytes, %v; forwarded %d", n, err, f.forwarded.Load()-fwd)
		}
	})
}

// TestRelayUDPFallback: while packets use the bindings, they are kept
// every second; when the relay's UDP port stops forwarding, packets go
// over the relay's TCP link within about a second and still arrive; when
// it forwards again (the bindings renewed meanwhile), they move back.
func TestRelayUDPFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, f := newRelayUDPPair(t)
		p.start(t, newKey())
		p.waitPath(t, 3*time.Second, isRelayUDP, "relay udp")
		fl := p.startFlow()
		defer fl.close()
		// While packets use them, the bindings are kept every second.
		k := f.keepalive.Load()
		time.Sleep(5 * time.Second)
		if n := f.keepalive.Load() - k; n < 8 {
			t.Fatalf("%d keepalives in 5s of packets through two bindings", n)
		}

		f.drop.Store(true)
		took := p.waitPath(t, 3*time.Second, onTCP, "back on the relay's TCP link")
		t.Logf("on TCP %v after the cut", took)
		before := p.relayStats()
		time.Sleep(500 * time.Millisecond)
		if n := p.relayStats() - before; n < 10 {
			t.Fatalf("the relay's TCP link carried %d packets after the cut", n)
		}
		if g := fl.gap(); g > 2*time.Second {
			t.Fatalf("no packet for %v after the cut", g)
		}
		// Long enough for the bindings to be given up and renewed.
		time.Sleep(8 * time.Second)
		f.drop.Store(false)
		took = p.waitPath(t, relayBindRetryMax+retryMax+discoveryFor, isRelayUDP, "relay udp again")
		t.Logf("relay udp again %v after the port forwards again", took)
		time.Sleep(500 * time.Millisecond)
		if g := fl.gap(); g > time.Second {
			t.Fatalf("no packet for %v on the UDP relay path", g)
		}
	})
}

// TestRelayUDPStrangers: a recv is taken only from the relay's address
// and with the binding's current tag.
func TestRelayUDPStrangers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, f := newRelayUDPPair(t)
		p.start(t, newKey())
		p.waitPath(t, 3*time.Second, isRelayUDP, "relay udp")
		pkt := []byte{0x40, 1, 2, 3}
		recv := func(tag [relayproto.UDPTagLen]byte) []byte {
			return append(relayproto.AppendUDPData(nil, relayproto.UDPRecv, tag, devChannel), pkt...)
		}
		tag := f.tagOf(cliChannel)
		wrong := tag
		wrong[0] ^= 1
		elsewhere := netip.MustParseAddrPort("10.0.0.66:3478")
		p.udp.Inject(f.addr, p.cSock.Addr(), recv(wrong))
		p.udp.Inject(elsewhere, p.cSock.Addr(), recv(tag))
		buf := make([]byte, 2048)
		p.cli.SetReadDeadline(time.Now().Add(time.Second))
		if n, from, err := p.cli.ReadFrom(buf); err == nil {
			t.Fatalf("took %d bytes from %v", n, from)
		}
		// The same from the relay's address with the tag is taken, as
		// the device's.
		p.udp.Inject(f.addr, p.cSock.Addr(), recv(tag))
		p.cli.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := p.cli.ReadFrom(buf)
		if err != nil || from.String() != p.dev.LocalAddr().String() || n != len(pkt) {
			t.Fatalf("genuine recv: %d bytes from %v, %v", n, from, err)
		}
	})
}

// TestRelaysSignal: each side's Direct tells the other where it is bound
// and its channel there, and tells it again when that changes.
func TestRelaysSignal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := newRelayUDPPair(t)
		p.start(t, newKey())
		p.waitPath(t, 3*time.Second, isRelayUDP, "relay udp")
		peerOf := func(d *Direct) []peerproto.RelayChannel {
			d.mu.Lock()
			defer d.mu.Unlock()
			return slices.Clone(d.rs.peer)
		}
		if got, want := peerOf(p.cDir), []peerproto.RelayChannel{{Relay: p.relayID, Channel: devChannel}}; !slices.Equal(got, want) {
			t.Fatalf("client heard %v, want %v", got, want)
		}
		if got, want := peerOf(p.dDir), []peerproto.RelayChannel{{Relay: p.relayID, Channel: cliChannel}}; !slices.Equal(got, want) {
			t.Fatalf("device heard %v, want %v", got, want)
		}
		// The device's binding is lost for good: the client hears so,
		// and its packets go over the TCP link.
		p.udp.SetDrop(func(from, _ netip.AddrPort, _ []byte) bool { return from == p.dSock.Addr() })
		for start := time.Now(); len(peerOf(p.cDir)) != 0; time.Sleep(100 * time.Millisecond) {
			if time.Since(start) > 30*time.Second {
				t.Fatal("the client still hears the device's binding")
			}
		}
		p.waitPath(t, 10*time.Second, onTCP, "on the TCP link")
		p.exchange(t)
	})
}

// TestRelayBinding: a binding is confirmed by a keepalive at once, kept
// by one every 20s when idle, made again when the relay's UDP port stops
// answering (with a new tag) and dropped when its link ends.
func TestRelayBinding(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPairOpts(t, DirectOptions{Disable: true})
		addr := netip.MustParseAddrPort("10.0.0.9:3478")
		f := startForwarder(t, p.udp.Listen(addr.String()), addr)
		ctx, endLink := context.WithCancel(t.Context())
		f.bindCtx(ctx, p.cli, p.relayID, cliChannel)
		time.Sleep(time.Second)
		want := []peerproto.RelayChannel{{Relay: p.relayID, Channel: cliChannel}}
		if got := p.cli.localRelays(); !slices.Equal(got, want) {
			t.Fatalf("bound at %v, want %v", got, want)
		}
		time.Sleep(60 * time.Second)
		// Keepalives at 0, 20, 40 and 60s.
		if b, k := f.binds.Load(), f.keepalive.Load(); b != 1 || k != 4 {
			t.Fatalf("idle for a minute: %d binds, %d keepalives; want 1 and 4", b, k)
		}
		tag := f.tagOf(cliChannel)
		f.drop.Store(true)
		time.Sleep(25 * time.Second) // the next keepalive and 3 more seconds
		if got := p.cli.localRelays(); len(got) != 0 {
			t.Fatalf("still bound at %v with no answer", got)
		}
		f.drop.Store(false)
		for start := time.Now(); len(p.cli.localRelays()) == 0; time.Sleep(100 * time.Millisecond) {
			if time.Since(start) > relayBindRetryMax+5*time.Second {
				t.Fatal("not bound again")
			}
		}
		if f.binds.Load() != 2 || f.tagOf(cliChannel) == tag {
			t.Fatalf("%d binds, tag %x (was %x)", f.binds.Load(), f.tagOf(cliChannel), tag)
		}
		endLink()
		time.Sleep(time.Second)
		if got := p.cli.localRelays(); len(got) != 0 {
			t.Fatalf("bound at %v after the link ended", got)
		}
	})
}

// TestRelayUDPPreference: with both paths, packets go direct; when the
// direct path stops carrying datagrams they go through the relay's UDP
// port, not its TCP link, and back direct once that works again.
func TestRelayUDPPreference(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPairOpts(t, DirectOptions{})
		addr := netip.MustParseAddrPort("10.0.0.9:3478")
		f := startForwarder(t, p.udp.Listen(addr.String()), addr)
		f.bind(p.dev, p.relayID, devChannel)
		f.bind(p.cli, p.relayID, cliChannel)
		p.start(t, newKey())
		p.waitPath(t, 3*time.Second, isDirect, "direct")
		fl := p.startFlow()
		defer fl.close()
		time.Sleep(time.Second)
		between := func(a, b netip.AddrPort) bool {
			return (a == p.dSock.Addr() || a == p.cSock.Addr()) && (b == p.dSock.Addr() || b == p.cSock.Addr())
		}
		p.udp.SetDrop(func(from, to netip.AddrPort, _ []byte) bool { return between(from, to) })
		took := p.waitPath(t, 3*time.Second, isRelayUDP, "relay udp")
		t.Logf("relay udp %v after the direct path was cut", took)
		before := p.relayStats()
		time.Sleep(time.Second)
		if n := p.relayStats() - before; n != 0 {
			t.Fatalf("the relay's TCP link carried %d packets while the UDP relay path worked", n)
		}
		p.udp.SetDrop(nil)
		p.waitPath(t, lostRetryMax, isDirect, "direct again")
	})
}

// TestRelaysSignalBounded: a peer that sends relays messages again and
// again, each naming other channels, leaves at most its last list in the
// channel table.
func TestRelaysSignalBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := newRelayUDPPair(t)
		p.start(t, newKey())
		p.waitPath(t, 3*time.Second, isRelayUDP, "relay udp")
		ds := p.cli.ds
		before := len(*ds.chans.Load())
		for i := range 1000 {
			var list []peerproto.RelayChannel
			for k := range peerproto.MaxRelays {
				list = append(list, peerproto.RelayChannel{Relay: identity.ID{byte(k), 1}, Channel: uint32(1_000_000 + i*10 + k)})
			}
			p.cDir.peerRelays(list)
		}
		if n := len(*ds.chans.Load()); n > before+peerproto.MaxRelays {
			t.Fatalf("%d channels in the table after 1000 relays messages, want at most %d", n, before+peerproto.MaxRelays)
		}
	})
}

// TestRelaysSignalPaced: a peer that keeps changing its relays message
// (alternating two made-up channels at the relay both are bound at, ten
// times a second for three minutes) restarts the agent's search of the
// UDP relay path only within its budget of search rounds (peerRoundBurst,
// then one per peerRoundEvery), not at every message: between allowed
// rounds the search backs off as it would after any fruitless round.
func TestRelaysSignalPaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, f := newRelayUDPPair(t)
		p.start(t, newKey())
		p.waitPath(t, 3*time.Second, isRelayUDP, "relay udp")
		const span, every = 3 * time.Minute, 100 * time.Millisecond
		for i := range int(span / every) {
			ch := uint32(7_000_000 + i%2)
			p.cDir.peerRelays([]peerproto.RelayChannel{{Relay: p.relayID, Channel: ch}})
			time.Sleep(every)
		}
		synctest.Wait()
		// Searching without a pause for the whole span would send
		// span/discoveryEvery probes.
		n, unpaced := f.nowhere.Load(), int64(span/discoveryEvery)
		t.Logf("%d probes to made-up channels in %v of relays messages (%d without a pause)", n, span, unpaced)
		if n > unpaced/2 {
			t.Fatalf("%d probes to made-up channels in %v of relays messages, want at most %d", n, span, unpaced/2)
		}
	})
}
