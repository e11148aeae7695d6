package paths

import (
	"bytes"
	"crypto/rand"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/memnet"
	"github.com/burrow-tunnel/burrow/peerproto"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/udpsock"
)

// A datagram is one the tests saw on the network.
type datagram struct {
	from netip.AddrPort
	b    []byte
}

// directPair is a device and a client attached to one in-memory relay, each
// with a socket on an in-memory UDP network, and a Direct on each side
// whose signalling the test carries.
type directPair struct {
	dev, cli     *Conn
	dSock, cSock *memnet.UDPConn
	dDir, cDir   *Direct
	udp          *memnet.UDPNet
	relayStats   func() uint64 // packets the relay forwarded
	relayID      identity.ID
	// stalled, when set, holds back lost messages, as a session whose
	// packets the lossy path swallowed would.
	stalled atomic.Bool
}

func newDirectPair(t *testing.T) *directPair {
	t.Helper()
	return newDirectPairOpts(t, DirectOptions{})
}

// newDirectPairOpts is newDirectPair with the Disable and NoRelayUDP of
// opts.
func newDirectPairOpts(t *testing.T, opts DirectOptions) *directPair {
	t.Helper()
	m := newMemNet()
	srv := startRelay(t, m, 15*time.Second)
	un := memnet.NewUDP()
	p := &directPair{udp: un, relayStats: func() uint64 { return srv.Stats().PacketsForwarded }, relayID: srv.ID()}
	p.dSock = un.Listen("10.0.0.1:4000")
	p.cSock = un.Listen("10.0.0.2:5000")
	devID, _ := identity.Generate()
	cliID, _ := identity.Generate()
	var err error
	p.dev, err = Listen(Config{Identity: devID, Role: relayproto.RoleDevice,
		Relay: relaylink.RelayConfig{Addr: "relay:443", ID: srv.ID()}, Dial: m.Dial,
		Access: func() ([]identity.ID, [][32]byte) { return []identity.ID{cliID.ID()}, nil },
		Direct: DirectOptions{ListenUDP: func() (udpsock.Conn, error) { return p.dSock, nil },
			Addrs: []netip.Addr{p.dSock.Addr().Addr()}, Disable: opts.Disable, NoRelayUDP: opts.NoRelayUDP}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.dev.Close() })
	p.cli, err = Listen(Config{Identity: cliID, Role: relayproto.RoleClient,
		Relay: relaylink.RelayConfig{Addr: "relay:443", ID: srv.ID()}, Dial: m.Dial,
		Direct: DirectOptions{ListenUDP: func() (udpsock.Conn, error) { return p.cSock, nil },
			Addrs: []netip.Addr{p.cSock.Addr().Addr()}, Disable: opts.Disable, NoRelayUDP: opts.NoRelayUDP}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cli.Close() })
	for _, c := range []*Conn{p.dev, p.cli} {
		if err := c.WaitAttached(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// start starts a Direct on each side with key, their signalling carried in
// order by one goroutine per direction.
func (p *directPair) start(t *testing.T, key []byte) {
	t.Helper()
	toDev, toCli := make(chan []byte, 64), make(chan []byte, 64)
	var err error
	p.cDir, err = p.cli.StartDirect(p.dev.LocalAddr(), DirectConfig{Key: key, Initiator: true,
		Signal: func(m []byte) { toDev <- m }})
	if err != nil {
		t.Fatal(err)
	}
	p.dDir, err = p.dev.StartDirect(p.cli.LocalAddr(), DirectConfig{Key: key,
		Signal: func(m []byte) { toCli <- m }})
	if err != nil {
		t.Fatal(err)
	}
	carry := func(ch chan []byte, d *Direct) {
		for {
			select {
			case m := <-ch:
				if p.stalled.Load() && len(m) > 0 && peerproto.SignalType(m[0]) == peerproto.SignalLost {
					continue
				}
				if err := d.Receive(m); err != nil {
					t.Errorf("Receive: %v", err)
				}
			case <-d.done:
				return
			}
		}
	}
	go carry(toDev, p.dDir)
	go carry(toCli, p.cDir)
	t.Cleanup(func() {
		p.cDir.Close()
		p.dDir.Close()
	})
}

// exchange sends one packet each way and checks that both arrive.
func (p *directPair) exchange(t *testing.T) {
	t.Helper()
	want := make([]byte, 1200)
	rand.Read(want)
	want[0] |= 0x40 // as a QUIC packet's first byte
	buf := make([]byte, 2048)
	for _, dir := range []struct{ from, to *Conn }{{p.cli, p.dev}, {p.dev, p.cli}} {
		if _, err := dir.from.WriteTo(want, dir.to.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		dir.to.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := dir.to.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		if from.String() != dir.from.LocalAddr().String() || !bytes.Equal(buf[:n], want) {
			t.Fatalf("got %d bytes from %v", n, from)
		}
	}
}

func newKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// waitPath polls until both sides' paths satisfy ok, or fails after limit.
func (p *directPair) waitPath(t *testing.T, limit time.Duration, ok func(PathInfo) bool, what string) time.Duration {
	t.Helper()
	start := time.Now()
	for !ok(p.cDir.Path()) || !ok(p.dDir.Path()) {
		if time.Since(start) > limit {
			t.Fatalf("%s: not after %v: client %v, device %v", what, limit, p.cDir.Path(), p.dDir.Path())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func isDirect(pi PathInfo) bool { return pi.Direct }
func isRelay(pi PathInfo) bool  { return !pi.Direct }

// TestDirectPath: two agents that can reach each other go direct within
// a second, and then the relay forwards none of their packets.
func TestDirectPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPair(t)
		p.exchange(t) // over the relay
		p.start(t, newKey())
		took := p.waitPath(t, time.Second, isDirect, "direct")
		if got, want := p.cDir.Path().Addr, p.dSock.Addr(); got != want {
			t.Fatalf("client's path goes to %v, want %v", got, want)
		}
		if got, want := p.dDir.Path().Addr, p.cSock.Addr(); got != want {
			t.Fatalf("device's path goes to %v, want %v", got, want)
		}
		if p.cli.Path(p.dev.LocalAddr()) != p.cDir.Path() {
			t.Fatalf("Conn.Path %v, Direct.Path %v", p.cli.Path(p.dev.LocalAddr()), p.cDir.Path())
		}
		t.Logf("direct after %v, rtt %v", took, p.cDir.Path().RTT)
		p.exchangeDirect(t, 50)
	})
}

// exchangeDirect exchanges n packets each way and checks that the relay
// forwarded none of them.
func (p *directPair) exchangeDirect(t *testing.T, n int) {
	t.Helper()
	before := p.relayStats()
	for range n {
		p.exchange(t)
	}
	if fwd := p.relayStats() - before; fwd != 0 {
		t.Fatalf("the relay forwarded %d packets on a direct path", fwd)
	}
}

// TestDirectDataLossQuietSide: the path answers probes but drops data,
// and one side sends too little to judge the path itself (a receiver whose
// acknowledgements answer data that no longer comes, one every 2s here).
// The side that sends finds the loss and stops answering probes on that
// path; the quiet side falls back too, within 3s, rather than when it has
// sent enough into the hole, or when the lost message, which the stalled
// session above would carry, gets through.
func TestDirectDataLossQuietSide(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPair(t)
		p.start(t, newKey())
		p.waitPath(t, time.Second, isDirect, "direct")
		pkt := make([]byte, 1000)
		pkt[0] = 0x40 // as a QUIC packet's first byte
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				p.dev.WriteTo(pkt, p.cli.LocalAddr())
				if i%100 == 0 {
					p.cli.WriteTo(pkt, p.dev.LocalAddr())
				}
			}
		})
		defer func() { close(stop); wg.Wait() }()
		time.Sleep(time.Second)
		p.stalled.Store(true)
		p.udp.SetDrop(func(_, _ netip.AddrPort, b []byte) bool { return len(b) > 0 && b[0]&0x40 != 0 })
		took := p.waitPath(t, 3*time.Second, isRelay, "back on the relay")
		t.Logf("both on the relay %v after data stopped crossing", took)
	})
}

// TestDirectFallback: when the direct path stops carrying datagrams,
// packets go over the relay within 3s (here within about one second) and
// still arrive; once the path works again, the agents find it again.
func TestDirectFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPair(t)
		p.start(t, newKey())
		p.waitPath(t, time.Second, isDirect, "direct")

		// Packets flow, as a stream's would.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			pkt := make([]byte, 100)
			pkt[0] = 0x40
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
					p.cli.WriteTo(pkt, p.dev.LocalAddr())
					p.dev.WriteTo(pkt, p.cli.LocalAddr())
				}
			}
		})
		wg.Go(func() { drain(p.dev, stop) })
		wg.Go(func() { drain(p.cli, stop) })
		time.Sleep(time.Second)

		p.udp.SetDrop(func(_, _ netip.AddrPort, _ []byte) bool { return true })
		cut := time.Now()
		took := p.waitPath(t, 3*time.Second, isRelay, "back on the relay")
		t.Logf("on the relay %v after the cut", took)
		// Packets arrive over the relay.
		before := p.relayStats()
		time.Sleep(500 * time.Millisecond)
		if p.relayStats()-before < 10 {
			t.Fatalf("relay forwarded %d packets after the cut", p.relayStats()-before)
		}
		close(stop)
		wg.Wait()
		p.exchange(t)

		// Cut long enough for the path to be given up, then lifted.
		time.Sleep(10*time.Second - time.Since(cut))
		p.udp.SetDrop(nil)
		took = p.waitPath(t, retryMax+discoveryFor, isDirect, "direct again")
		t.Logf("direct again %v after the cut was lifted", took)
		p.exchange(t)
	})
}

func drain(c *Conn, stop chan struct{}) {
	buf := make([]byte, 2048)
	for {
		select {
		case <-stop:
			return
		default:
		}
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		c.ReadFrom(buf)
	}
}

// TestDirectSpoofing: datagrams from the peer's real address that do not
// carry the agreed key never move a path, never keep a dead one alive, and
// never make the agent accept packets from an address.
func TestDirectSpoofing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPair(t)
		// The agents cannot reach each other, but an attacker sees every
		// datagram and can send from any address.
		var mu sync.Mutex
		var seen []datagram
		var dst []netip.AddrPort
		p.udp.SetTap(func(from, to netip.AddrPort, b []byte) {
			mu.Lock()
			seen = append(seen, datagram{from: from, b: bytes.Clone(b)})
			dst = append(dst, to)
			mu.Unlock()
		})
		p.udp.SetDrop(func(from, to netip.AddrPort, b []byte) bool {
			return from == p.dSock.Addr() || from == p.cSock.Addr()
		})
		p.start(t, newKey())
		for range 30 {
			time.Sleep(100 * time.Millisecond)
			mu.Lock()
			for i, d := range seen {
				if len(d.b) == 0 || d.b[0] != byte(peerproto.DatagramProbe) {
					continue
				}
				// A reply with the probe's path ID and txid, and a wrong
				// MAC; a probe of the attacker's own with a wrong MAC; the
				// probe itself reflected; a QUIC-looking packet.
				reply := append([]byte{byte(peerproto.DatagramReply)}, d.b[1:peerproto.ReplyLen]...)
				reply[20] ^= 1
				probe := bytes.Clone(d.b)
				probe[25] ^= 1
				quic := append([]byte{0x40}, d.b[1:100]...)
				for _, b := range [][]byte{reply, probe, d.b, quic} {
					p.udp.Inject(dst[i], d.from, b)
				}
			}
			seen, dst = nil, nil
			mu.Unlock()
		}
		if p.cDir.Path().Direct || p.dDir.Path().Direct {
			t.Fatalf("spoofed datagrams moved a path: client %v, device %v", p.cDir.Path(), p.dDir.Path())
		}
		if n := len(*p.cli.ds.routes.Load()) + len(*p.dev.ds.routes.Load()); n != 0 {
			t.Fatalf("%d addresses accepted as the peer's", n)
		}
		if p.cli.ds.strange.Load() == 0 || p.dev.ds.strange.Load() == 0 || p.cli.ds.dropped.Load() == 0 {
			t.Fatal("the spoofed datagrams did not arrive")
		}
		p.udp.SetTap(nil)
		p.udp.SetDrop(nil)
		// The real path still works.
		p.waitPath(t, retryMax+discoveryFor, isDirect, "direct once the path works")
	})
}

// TestDirectRoundsLimited: a peer (known to the device, but hostile) that
// starts a search round every 100ms, each naming 16 addresses of its
// choice, gets the device to join at most peerRoundBurst rounds and then
// one per peerRoundEvery, so the probes it can aim at others stay bounded.
func TestDirectRoundsLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPair(t)
		var victims []netip.AddrPort
		for i := range peerproto.MaxCandidates {
			victims = append(victims, netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), 9))
		}
		var probes atomic.Int64
		p.udp.SetTap(func(from, to netip.AddrPort, b []byte) {
			if from == p.dSock.Addr() && len(b) > 0 && b[0] == byte(peerproto.DatagramProbe) && slices.Contains(victims, to) {
				probes.Add(1)
			}
		})
		var joined atomic.Int64
		d, err := p.dev.StartDirect(p.cli.LocalAddr(), DirectConfig{Key: newKey(), Signal: func(m []byte) {
			if peerproto.SignalType(m[0]) == peerproto.SignalReady {
				joined.Add(1)
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		const flood = time.Minute
		rounds := 0
		for start := time.Now(); time.Since(start) < flood; time.Sleep(100 * time.Millisecond) {
			rounds++
			cands := peerproto.AppendCandidates(nil, peerproto.Candidates{Round: uint32(rounds), Addrs: victims})
			if err := d.Receive(cands); err != nil {
				t.Fatal(err)
			}
			if err := d.Receive(peerproto.AppendReady(nil, peerproto.Ready{Round: uint32(rounds)})); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(discoveryFor)
		synctest.Wait()
		most := int64(peerRoundBurst + flood/peerRoundEvery)
		t.Logf("%d rounds asked for in %v: %d joined (at most %d allowed), %d probes (%d KB) to the named addresses",
			rounds, flood, joined.Load(), most, probes.Load(), probes.Load()*MaxDirectPacket/1000)
		if n := joined.Load(); n == 0 || n > most {
			t.Fatalf("joined %d of %d rounds, want 1 to %d", n, rounds, most)
		}
	})
}

// TestDirectReplay: once the path is cut, replaying the peer's earlier
// valid replies (from its address) does not keep the path in use.
func TestDirectReplay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPair(t)
		var mu sync.Mutex
		var replies []datagram
		var dst []netip.AddrPort
		p.udp.SetTap(func(from, to netip.AddrPort, b []byte) {
			if len(b) > 0 && b[0] == byte(peerproto.DatagramReply) {
				mu.Lock()
				replies = append(replies, datagram{from: from, b: bytes.Clone(b)})
				dst = append(dst, to)
				mu.Unlock()
			}
		})
		p.start(t, newKey())
		p.waitPath(t, time.Second, isDirect, "direct")
		time.Sleep(3 * time.Second) // heartbeats: more replies to capture
		p.udp.SetTap(nil)
		p.udp.SetDrop(func(from, to netip.AddrPort, b []byte) bool { return true })
		mu.Lock()
		if len(replies) < 2 {
			t.Fatalf("captured %d replies", len(replies))
		}
		old, to := replies, dst
		mu.Unlock()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				for i, d := range old {
					p.udp.Inject(d.from, to[i], d.b)
				}
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		})
		p.waitPath(t, 3*time.Second, isRelay, "back on the relay despite replays")
		close(stop)
		wg.Wait()
	})
}

// TestDirectOff: with direct paths and the UDP relay path disabled there
// is no socket and no Direct; everything goes over the relay.
func TestDirectOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newMemNet()
		srv := startRelay(t, m, 15*time.Second)
		id, _ := identity.Generate()
		c, err := Listen(Config{Identity: id, Role: relayproto.RoleClient,
			Relay: relaylink.RelayConfig{Addr: "relay:443", ID: srv.ID()}, Dial: m.Dial, Direct: DirectOptions{Disable: true, NoRelayUDP: true}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.StartDirect(Addr{ID: id.ID()}, DirectConfig{Key: newKey(), Signal: func([]byte) {}}); err != ErrNoDirect {
			t.Fatalf("StartDirect: %v, want ErrNoDirect", err)
		}
		if c.LocalCandidates() != nil || c.Path(Addr{ID: id.ID()}).Direct {
			t.Fatal("direct state with direct paths off")
		}
	})
}

// TestCandidates: a Direct offers its candidates, the address the relay
// saw first, in a candidates message of the round.
func TestCandidates(t *testing.T) {
	cands := []netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.1:4000"),
		netip.MustParseAddrPort("[2001:db8::1]:443"),
	}
	observed := netip.MustParseAddrPort("203.0.113.7:40000")
	d := &Direct{c: &Conn{cfg: Config{Direct: DirectOptions{Addrs: []netip.Addr{cands[0].Addr(), cands[1].Addr()}}}}}
	d.c.ds = &directSocket{port: 4000}
	d.c.ds.observed.Store(&observed)
	m, err := peerproto.ParseSignal(d.candidatesMsg(7))
	want := peerproto.Candidates{Round: 7, Addrs: []netip.AddrPort{observed, cands[0], netip.AddrPortFrom(cands[1].Addr(), 4000)}}
	if err != nil || !reflect.DeepEqual(m, want) {
		t.Fatalf("got %v, %v; want %v", m, err, want)
	}
}

// flow keeps packets going both ways between a pair, one each way every
// 20ms, as a stream's would, and records when each side last got one.
type flow struct {
	last    [2]atomic.Int64 // time.Now().UnixNano() of the last packet the device [0] and the client [1] got
	maxGap  atomic.Int64    // the longest wait for a packet, on either side, while measuring
	measure atomic.Bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

// startFlow starts a flow; close stops it.
func (p *directPair) startFlow() *flow {
	f := &flow{stop: make(chan struct{})}
	now := time.Now().UnixNano()
	f.last[0].Store(now)
	f.last[1].Store(now)
	f.wg.Go(func() {
		pkt := make([]byte, 1000)
		pkt[0] = 0x40 // as a QUIC packet's first byte
		for {
			select {
			case <-f.stop:
				return
			case <-time.After(20 * time.Millisecond):
				p.cli.WriteTo(pkt, p.dev.LocalAddr())
				p.dev.WriteTo(pkt, p.cli.LocalAddr())
			}
		}
	})
	for i, c := range []*Conn{p.dev, p.cli} {
		f.wg.Go(func() {
			buf := make([]byte, 2048)
			for {
				select {
				case <-f.stop:
					return
				default:
				}
				c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				if _, _, err := c.ReadFrom(buf); err == nil {
					now := time.Now().UnixNano()
					if gap := now - f.last[i].Swap(now); f.measure.Load() && gap > f.maxGap.Load() {
						f.maxGap.Store(gap)
					}
				}
			}
		})
	}
	return f
}

// gap returns how long the side that has waited longer has waited for a
// packet.
func (f *flow) gap() time.Duration {
	oldest := min(f.last[0].Load(), f.last[1].Load())
	return time.Duration(time.Now().UnixNano() - oldest)
}

func (f *flow) close() {
	close(f.stop)
	f.wg.Wait()
}

// TestDirectReplayFromElsewhere: an attacker who sees every probe and reply
// the agents exchange on their direct path sends copies of each, again and
// again, to its destination from 16 addresses of its own. None of them is taken
// for the peer's, the peer's own address is never forgotten, and packets
// keep crossing the direct path all along. (Before, a replayed probe was
// answered and its source recorded as the peer's: 8 of them evicted the
// peer's real address, and the device dropped the client's packets while
// both sides went on calling the path direct.)
func TestDirectReplayFromElsewhere(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPair(t)
		agents := []netip.AddrPort{p.dSock.Addr(), p.cSock.Addr()}
		var attackers []netip.AddrPort
		for i := range 2 * maxRoutes {
			attackers = append(attackers, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 66}), uint16(6000+i)))
		}
		var mu sync.Mutex
		var seen []datagram
		var dst []netip.AddrPort
		p.udp.SetTap(func(from, to netip.AddrPort, b []byte) {
			if len(b) > 0 && (b[0] == byte(peerproto.DatagramProbe) || b[0] == byte(peerproto.DatagramReply)) && slices.Contains(agents, from) && slices.Contains(agents, to) {
				mu.Lock()
				seen = append(seen, datagram{from: from, b: bytes.Clone(b)})
				dst = append(dst, to)
				mu.Unlock()
			}
		})
		p.start(t, newKey())
		p.waitPath(t, time.Second, isDirect, "direct")
		f := p.startFlow()
		defer f.close()
		time.Sleep(time.Second)
		f.measure.Store(true)
		before := p.relayStats()

		// Every 50ms the attacker sends the last 8 datagrams it saw, new
		// and old, from each of its addresses.
		const attack = 10 * time.Second
		replays := 0
		for start := time.Now(); time.Since(start) < attack; {
			time.Sleep(50 * time.Millisecond)
			mu.Lock()
			if k := len(seen) - 8; k > 0 {
				seen, dst = seen[k:], dst[k:]
			}
			got, to := slices.Clone(seen), slices.Clone(dst)
			mu.Unlock()
			for i, d := range got {
				for _, a := range attackers {
					p.udp.Inject(a, to[i], d.b)
					replays++
				}
			}
			for _, side := range []struct {
				name string
				c    *Conn
				dir  *Direct
				peer netip.AddrPort
			}{{"device", p.dev, p.dDir, p.cSock.Addr()}, {"client", p.cli, p.cDir, p.dSock.Addr()}} {
				routes := *side.c.ds.routes.Load()
				for _, a := range attackers {
					if routes[a] != nil {
						t.Fatalf("after %v the %s takes the attacker's %v for its peer", time.Since(start), side.name, a)
					}
				}
				if routes[side.peer] == nil {
					t.Fatalf("after %v the %s no longer accepts its peer's packets from %v", time.Since(start), side.name, side.peer)
				}
				if pi := side.dir.Path(); !pi.Direct || pi.Addr != side.peer {
					t.Fatalf("after %v the %s's path is %v, want direct %v", time.Since(start), side.name, pi, side.peer)
				}
			}
			if g := f.gap(); g > time.Second {
				t.Fatalf("after %v a side has had no packet for %v", time.Since(start), g)
			}
		}
		t.Logf("%d datagrams replayed in %v; longest wait for a packet %v; replays dropped: device %d, client %d",
			replays, attack, time.Duration(f.maxGap.Load()), p.dev.ds.replayed.Load(), p.cli.ds.replayed.Load())
		if n := p.relayStats() - before; n != 0 {
			t.Fatalf("the relay forwarded %d packets during the attack", n)
		}
	})
}

// TestDirectDataLoss: the direct path carries probes but loses every
// end-to-end packet (say, a middlebox drops what looks like QUIC): though
// every probe is answered, packets go back to the relay within 3s, keep
// arriving there, and the path is not trusted again while it loses them.
func TestDirectDataLoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPair(t)
		p.start(t, newKey())
		p.waitPath(t, time.Second, isDirect, "direct")
		f := p.startFlow()
		defer f.close()
		time.Sleep(time.Second)

		p.udp.SetDrop(func(_, _ netip.AddrPort, b []byte) bool { return len(b) > 0 && b[0]&0x40 != 0 })
		took := p.waitPath(t, 3*time.Second, isRelay, "back on the relay")
		t.Logf("on the relay %v after data stopped crossing", took)
		f.measure.Store(true)
		f.maxGap.Store(0)
		// The agents may try the path again now and then (it answers
		// probes), but never long enough to stall the flow.
		const watch = 30 * time.Second
		before := p.relayStats()
		for start := time.Now(); time.Since(start) < watch; time.Sleep(100 * time.Millisecond) {
			if g := f.gap(); g > 3*time.Second {
				t.Fatalf("%v after the loss began, a side has had no packet for %v", time.Since(start)+took, g)
			}
		}
		t.Logf("longest wait for a packet over %v: %v; relay forwarded %d packets", watch, time.Duration(f.maxGap.Load()), p.relayStats()-before)
		if n := p.relayStats() - before; n < uint64(watch/(20*time.Millisecond)) {
			t.Fatalf("the relay forwarded %d packets in %v", n, watch)
		}
		// Once the path carries data again, it is used again.
		p.udp.SetDrop(nil)
		p.waitPath(t, lostRetryMax+discoveryFor, isDirect, "direct again once data crosses")
	})
}

// TestDirectDataCheckQuiet: the data check does not move a quiet or
// one-way session off a working path: idle, sending one way only, and
// after one lost packet followed by silence, the path stays direct.
func TestDirectDataCheckQuiet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPair(t)
		p.start(t, newKey())
		p.waitPath(t, time.Second, isDirect, "direct")
		p.exchange(t)
		stayDirect := func(what string, d time.Duration) {
			t.Helper()
			for start := time.Now(); time.Since(start) < d; time.Sleep(100 * time.Millisecond) {
				if !p.cDir.Path().Direct || !p.dDir.Path().Direct {
					t.Fatalf("%s: off the direct path after %v: client %v, device %v", what, time.Since(start), p.cDir.Path(), p.dDir.Path())
				}
			}
		}
		stayDirect("idle", 30*time.Second)

		// One way: the client sends, the device never answers.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { drain(p.dev, stop) })
		wg.Go(func() {
			pkt := make([]byte, 1000)
			pkt[0] = 0x40
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
					p.cli.WriteTo(pkt, p.dev.LocalAddr())
				}
			}
		})
		stayDirect("one way", 10*time.Second)
		close(stop)
		wg.Wait()

		// One packet lost, then silence.
		var once atomic.Bool
		p.udp.SetDrop(func(_, _ netip.AddrPort, b []byte) bool {
			return len(b) > 0 && b[0]&0x40 != 0 && once.CompareAndSwap(false, true)
		})
		pkt := make([]byte, 100)
		pkt[0] = 0x40
		p.cli.WriteTo(pkt, p.dev.LocalAddr())
		stayDirect("one packet lost", 10*time.Second)
		p.exchange(t)
	})
}

// TestDirectProbeBack: a path that only the peer's probes find (here the
// client offers an address where nothing listens, as when its NAT gives
// it another port for every destination) is found both ways: the device
// probes back to where the client's probes came from, and goes direct
// once that answers.
func TestDirectProbeBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPair(t)
		p.cli.cfg.Direct.Addrs = []netip.Addr{netip.MustParseAddr("10.0.0.99")}
		p.start(t, newKey())
		p.waitPath(t, time.Second, isDirect, "direct")
		if got, want := p.dDir.Path().Addr, p.cSock.Addr(); got != want {
			t.Fatalf("device's path goes to %v, want %v", got, want)
		}
		p.exchangeDirect(t, 20)
	})
}

// TestDirectFreshReplay: an attacker on the way from the client to the
// device drops the client's probes and sends them to the device itself,
// from 16 addresses of its own, so that each is new to the device. The
// device answers them and probes the attacker's addresses back (at most
// 20 a second), but takes none of them for the client's, and its own path
// goes to the client's real address.
func TestDirectFreshReplay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newDirectPair(t)
		var attackers []netip.AddrPort
		for i := range 2 * maxRoutes {
			attackers = append(attackers, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, 66}), uint16(6000+i)))
		}
		var mu sync.Mutex
		var stolen [][]byte
		var backs atomic.Int64
		p.udp.SetTap(func(from, to netip.AddrPort, b []byte) {
			if len(b) > 0 && b[0] == byte(peerproto.DatagramProbe) && from == p.cSock.Addr() && to == p.dSock.Addr() {
				mu.Lock()
				stolen = append(stolen, bytes.Clone(b))
				mu.Unlock()
			}
			if len(b) > 0 && b[0] == byte(peerproto.DatagramProbe) && from == p.dSock.Addr() && slices.Contains(attackers, to) {
				backs.Add(1)
			}
		})
		p.udp.SetDrop(func(from, to netip.AddrPort, b []byte) bool {
			return len(b) > 0 && b[0] == byte(peerproto.DatagramProbe) && from == p.cSock.Addr()
		})
		p.start(t, newKey())
		const attack = 10 * time.Second
		for start := time.Now(); time.Since(start) < attack; time.Sleep(50 * time.Millisecond) {
			mu.Lock()
			got := stolen
			stolen = nil
			mu.Unlock()
			for _, b := range got {
				for _, a := range attackers {
					p.udp.Inject(a, p.dSock.Addr(), b)
				}
			}
			routes := *p.dev.ds.routes.Load()
			for _, a := range attackers {
				if routes[a] != nil {
					t.Fatalf("after %v the device takes the attacker's %v for the client's", time.Since(start), a)
				}
			}
			if pi := p.dDir.Path(); pi.Direct && pi.Addr != p.cSock.Addr() {
				t.Fatalf("after %v the device's path goes to %v", time.Since(start), pi.Addr)
			}
		}
		if pi := p.dDir.Path(); !pi.Direct || pi.Addr != p.cSock.Addr() {
			t.Fatalf("device's path %v, want direct %v", pi, p.cSock.Addr())
		}
		most := int64(probeBackBurst + attack/probeBackEvery)
		t.Logf("%d probes sent back to the attacker's addresses in %v (at most %d)", backs.Load(), attack, most)
		if n := backs.Load(); n == 0 || n > most {
			t.Fatalf("%d probes sent back to the attacker, want 1 to %d", n, most)
		}
	})
}

// TestReplayFilter: each txid is fresh once; those more than replayWindow
// below the highest seen, and 0, never are; txids may arrive out of order.
func TestReplayFilter(t *testing.T) {
	var f replayFilter
	steps := []struct {
		n     uint64
		fresh bool
	}{
		{0, false},
		{1, true}, {1, false},
		{3, true}, {2, true}, {3, false}, {2, false},
		{replayWindow + 2, true}, // 2 falls out of the window, 3 stays
		{2, false}, {3, false}, {4, true}, {4, false},
		{replayWindow + 1, true}, {replayWindow + 1, false},
		{10 * replayWindow, true}, // a jump forgets the window
		{9*replayWindow + 1, true}, {9 * replayWindow, false}, {10*replayWindow - 1, true},
	}
	for i, s := range steps {
		if got := f.fresh(s.n); got != s.fresh {
			t.Fatalf("step %d: fresh(%d) = %v, want %v", i, s.n, got, s.fresh)
		}
	}
}
