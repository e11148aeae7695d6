//go:build linux

package tunneltest

import (
	"context"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/israce"
	"github.com/burrow-tunnel/burrow/internal/testing/netns"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/udpsock"
)

// nsNet is a network of namespaces with a relay in one of them, for the
// tests that need real IP paths between the agents: NATs, lossy links.
type nsNet struct {
	*netns.Net
	hosts     map[string]netip.Addr // the agents' namespaces and addresses
	noDirect  bool                  // agents keep every session on the relay's TCP sessions
	relay     *relay.Server
	relayAddr string
	relayID   identity.ID
	relayUDP  int // the relay's UDP port
}

// newNATNet builds the test network of the direct-path tests:
//
//	         pub (relay; 10.0.1.1, 10.0.2.1; routes between the homes)
//	        /   \
//	ra (NAT)     rb (NAT)      WAN 10.0.1.2 / 10.0.2.2, MASQUERADE out of it
//	|   |        |             LAN 192.168.1.1 / 192.168.2.1
//	ha  hc       hb            192.168.1.2, 192.168.1.3 / 192.168.2.2
//
// ha and hc share ra's LAN (a bridge); hb is alone behind rb. Services run
// in the test's own namespace on loopback: the device dials them from
// there. masq is the MASQUERADE rule's options (e.g. --random-fully).
func newNATNet(t *testing.T, masq ...string) *nsNet {
	t.Helper()
	return newNATNetKeepAlive(t, 0, masq...)
}

// natHosts are the agents' namespaces and addresses in newNATNet.
var natHosts = map[string]netip.Addr{
	"ha": netip.MustParseAddr("192.168.1.2"),
	"hc": netip.MustParseAddr("192.168.1.3"),
	"hb": netip.MustParseAddr("192.168.2.2"),
}

// newNATNetKeepAlive is newNATNet with the relay's keepalive interval
// (zero: the default).
func newNATNetKeepAlive(t *testing.T, keepAlive time.Duration, masq ...string) *nsNet {
	t.Helper()
	n := &nsNet{Net: netns.New(t), hosts: natHosts}
	n.Add("pub", "ra", "rb", "ha", "hb", "hc")
	n.Link("pub", "pa", "10.0.1.1/24", "ra", "wan", "10.0.1.2/24")
	n.Link("pub", "pb", "10.0.2.1/24", "rb", "wan", "10.0.2.2/24")
	n.In("ra", "ip", "link", "add", "br0", "type", "bridge")
	n.In("ra", "ip", "addr", "add", "192.168.1.1/24", "dev", "br0")
	n.In("ra", "ip", "link", "set", "br0", "up")
	n.Link("ra", "la", "", "ha", "eth0", "192.168.1.2/24")
	n.Link("ra", "lc", "", "hc", "eth0", "192.168.1.3/24")
	n.In("ra", "ip", "link", "set", "la", "master", "br0")
	n.In("ra", "ip", "link", "set", "lc", "master", "br0")
	n.Link("rb", "lan", "192.168.2.1/24", "hb", "eth0", "192.168.2.2/24")
	for _, r := range []struct{ ns, via string }{{"ra", "10.0.1.1"}, {"rb", "10.0.2.1"}} {
		n.In(r.ns, "ip", "route", "add", "default", "via", r.via)
		n.In(r.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		n.In(r.ns, append([]string{"iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"}, masq...)...)
	}
	n.In("pub", "sysctl", "-qw", "net.ipv4.ip_forward=1")
	n.In("ha", "ip", "route", "add", "default", "via", "192.168.1.1")
	n.In("hc", "ip", "route", "add", "default", "via", "192.168.1.1")
	n.In("hb", "ip", "route", "add", "default", "via", "192.168.2.1")
	n.startRelay(t, "pub", "10.0.1.1", keepAlive)
	return n
}

// startRelay starts the relay in namespace ns, on TCP and UDP, reached at
// addr (one of ns's addresses), with the given keepalive interval (zero:
// the default).
func (n *nsNet) startRelay(t *testing.T, ns, addr string, keepAlive time.Duration) {
	t.Helper()
	id := NewIdentity(t)
	n.relayID = id.ID()
	var ln net.Listener
	var udp net.PacketConn
	err := n.Do(ns, func() error {
		var err error
		if ln, err = net.Listen("tcp", ":0"); err != nil {
			return err
		}
		// On all of ns's addresses: in newNATNet the relay must answer
		// the agent behind rb, which sends to 10.0.1.1 through the
		// interface of 10.0.2.1, from 10.0.1.1, or rb's NAT drops the
		// answer.
		udp, err = net.ListenPacket("udp", ln.Addr().String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	n.relayUDP = udp.LocalAddr().(*net.UDPAddr).Port
	n.relayAddr = netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(port)).String()
	n.relay, err = relay.New(relay.Config{
		Identity:    id,
		AllowDevice: func(identity.ID) bool { return true },
		UDPPort:     udp.LocalAddr().(*net.UDPAddr).Port,
		KeepAlive:   keepAlive,
		Logger:      Logger(t).With("role", "relay"),
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { n.relay.Serve(ln) })
	wg.Go(func() { n.relay.ServeUDP(udp) })
	t.Cleanup(func() {
		n.relay.Close()
		ln.Close()
		wg.Wait()
	})
}

// relayed counts the packets the relay forwarded, over TCP and over UDP.
func (n *nsNet) relayed() uint64 {
	st := n.relay.Stats()
	return st.PacketsForwarded + st.UDPForwarded
}

// agent returns the relay and direct-path settings of an agent in host.
func (n *nsNet) agent(host string) (relaylink.RelayConfig, func(ctx context.Context, network, addr string) (net.Conn, error), paths.DirectOptions) {
	dial := n.Dialer(host)
	direct := paths.DirectOptions{
		ListenUDP: func() (udpsock.Conn, error) {
			var c *net.UDPConn
			err := n.Do(host, func() error {
				var err error
				c, err = net.ListenUDP("udp4", &net.UDPAddr{})
				return err
			})
			return c, err
		},
		InterfaceAddrs: func() ([]netip.Addr, error) { return []netip.Addr{n.hosts[host]}, nil },
		Disable:        n.noDirect,
		NoRelayUDP:     n.noDirect, // the relay's TCP sessions, not its UDP port
	}
	return relaylink.RelayConfig{Addr: n.relayAddr, ID: n.relayID}, dial, direct
}

// pair starts a device in devHost serving services, and a client in
// cliHost that it knows.
func (n *nsNet) pair(t *testing.T, devHost, cliHost string, services map[string]string) (*device.Device, *client.Client) {
	t.Helper()
	cid := NewIdentity(t)
	rc, dial, direct := n.agent(devHost)
	d, err := device.New(device.Config{
		Identity:  NewIdentity(t),
		Relay:     rc,
		DialRelay: dial,
		Direct:    direct,
		NoLAN:     true,
		Services:  services,
		Clients:   map[identity.ID][]string{cid.ID(): {device.AllServices}},
		Logger:    Logger(t).With("role", "device"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	rc, dial, direct = n.agent(cliHost)
	c, err := client.New(client.Config{Identity: cid, Relay: rc, DialRelay: dial, Direct: direct, NoLAN: true,
		Logger: Logger(t).With("role", "client")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, w := range []interface{ WaitAttached(context.Context) error }{d, c} {
		if err := w.WaitAttached(ctx10(t)); err != nil {
			t.Fatal(err)
		}
	}
	return d, c
}

// waitPath polls c's path to dev until ok or limit, and returns how long it
// took.
func waitPath(t *testing.T, c *client.Client, dev identity.ID, limit time.Duration, ok func(paths.PathInfo) bool, what string) time.Duration {
	t.Helper()
	start := time.Now()
	for !ok(c.Path(dev)) {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %v (path %v)", what, limit, c.Path(dev))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func direct(p paths.PathInfo) bool   { return p.Direct }
func relayed(p paths.PathInfo) bool  { return !p.Direct }
func relayUDP(p paths.PathInfo) bool { return p.RelayUDP }
func relayTCP(p paths.PathInfo) bool { return !p.Direct && !p.RelayUDP }

// dropUDP is the rule, in pub, that cuts UDP between the NATs (add it with
// -I, remove it with -D).
var dropUDP = []string{"FORWARD", "-p", "udp", "-s", "10.0.0.0/16", "-d", "10.0.0.0/16", "-j", "DROP"}

// reader hashes a tunnel's bytes and records the longest wait between two
// reads.
type reader struct {
	n       atomic.Int64
	maxGap  atomic.Int64 // nanoseconds
	measure atomic.Bool  // maxGap is recorded only while set
	size    int64
	sum     [32]byte   // set before done is sent on
	done    chan error // the stream's end
}

// readStream reads size bytes of conn in the background.
func readStream(conn net.Conn, size int64) *reader {
	r := &reader{size: size, done: make(chan error, 1)}
	go func() {
		var err error
		r.sum, err = r.run(conn, size)
		r.done <- err
	}()
	return r
}

// check waits for the stream's end and checks that it carried
// randomStream(seed, size) intact.
func (r *reader) check(t *testing.T, seed uint64) {
	t.Helper()
	if err := <-r.done; err != nil {
		t.Fatalf("stream failed after %d bytes: %v", r.n.Load(), err)
	}
	if want, _, _ := sum(randomStream(seed, r.size)); r.sum != want {
		t.Fatal("the stream's bytes differ")
	}
}

func (r *reader) run(conn net.Conn, size int64) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	last := time.Now()
	for r.n.Load() < size {
		k, err := conn.Read(buf)
		h.Write(buf[:k])
		r.n.Add(int64(k))
		if now := time.Now(); r.measure.Load() {
			if gap := int64(now.Sub(last)); gap > r.maxGap.Load() {
				r.maxGap.Store(gap)
			}
			last = now
		} else {
			last = now
		}
		if err != nil && (err != io.EOF || r.n.Load() != size) {
			return [32]byte(h.Sum(nil)), err
		}
	}
	return [32]byte(h.Sum(nil)), nil
}

// streamServer serves a stream of size bytes, paced (a 64 KiB chunk per
// gap) if gap > 0.
func streamServer(t *testing.T, seed uint64, size int64, gap time.Duration) *Server {
	if gap > 0 {
		return StartServer(t, pacedStream(seed, size, gap))
	}
	return StartServer(t, func(c *net.TCPConn) {
		c.ReadFrom(randomStream(seed, size))
		c.CloseWrite()
	})
}

// TestNATDirectMidStream: two agents behind port-preserving NATs (plain
// MASQUERADE). A tunnel's stream starts on the relay (UDP between the NATs
// is held back until 2 MiB have arrived, so that the switch happens under
// a flowing stream); the session goes direct within 5s of opening; after
// the switch the relay forwards none of the session's packets; the stream
// arrives whole (done means 1 and 2).
func TestNATDirectMidStream(t *testing.T) {
	size := int64(200 << 20)
	if israce.Enabled || testing.Short() {
		size = 32 << 20
	}
	n := newNATNet(t)
	srv := streamServer(t, 7, size, 0)
	// UDP between the NATs is dropped until the stream flows on the relay.
	n.In("pub", append([]string{"iptables", "-I"}, dropUDP...)...)
	d, c := n.pair(t, "ha", "hb", map[string]string{"stream": srv.Addr})

	start := time.Now()
	tun, err := c.Dial(ctx10(t), d.ID(), "stream")
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	r := readStream(tun, size)

	for r.n.Load() < 2<<20 {
		time.Sleep(time.Millisecond)
	}
	if p := c.Path(d.ID()); p.Direct {
		t.Fatalf("path %v while UDP was dropped", p)
	}
	n.In("pub", append([]string{"iptables", "-D"}, dropUDP...)...)
	waitPath(t, c, d.ID(), 5*time.Second-time.Since(start), direct, "direct path")
	took := time.Since(start)
	atSwitch := r.n.Load()
	t.Logf("direct %v after the session opened, %d MiB into the stream: %v", took, atSwitch>>20, c.Path(d.ID()))
	if got := c.Path(d.ID()).Addr.Addr(); got != netip.MustParseAddr("10.0.1.2") {
		t.Fatalf("direct path to %v, want the device's NAT, 10.0.1.2", got)
	}
	time.Sleep(300 * time.Millisecond) // what was in flight on the relay
	before, beforeUDP := n.relay.Stats().PacketsForwarded, n.relay.Stats().UDPForwarded
	if before == 0 {
		t.Fatal("the relay forwarded nothing: the session did not start on it")
	}
	r.check(t, 7)
	if atSwitch >= size {
		t.Fatal("the stream ended before the switch")
	}
	// None of the stream's packets: not on the TCP relay path, and on
	// the UDP one only the probes that keep checking it (every 2s), and
	// what the device, which switches on its own, still had in flight.
	if fwd := n.relay.Stats().PacketsForwarded - before; fwd != 0 {
		t.Fatalf("the relay forwarded %d packets over TCP after the switch", fwd)
	}
	if fwd := n.relay.Stats().UDPForwarded - beforeUDP; fwd > 100 {
		t.Fatalf("the relay forwarded %d datagrams after the switch: the stream still crosses it", fwd)
	}
	t.Logf("%d MiB in %v", size>>20, time.Since(start).Round(time.Millisecond))
}

// TestNATRandomPorts: behind NATs that pick a random port for every
// destination (MASQUERADE --random-fully), no direct path exists; the
// session stays on the relay and works (done means 3).
func TestNATRandomPorts(t *testing.T) {
	n := newNATNet(t, "--random-fully")
	srv := StartServer(t, Echo)
	d, c := n.pair(t, "ha", "hb", map[string]string{"echo": srv.Addr})
	if err := echoOnce(t, c, d.ID(), "echo"); err != nil {
		t.Fatal(err)
	}
	// A whole search round, and then some.
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		if p := c.Path(d.ID()); p.Direct {
			t.Fatalf("direct path %v through port-randomizing NATs", p)
		}
		time.Sleep(50 * time.Millisecond)
	}
	before := n.relayed()
	if err := echoOnce(t, c, d.ID(), "echo"); err != nil {
		t.Fatal(err)
	}
	if n.relayed() == before {
		t.Fatal("the echo did not cross the relay")
	}
	// The relay's UDP port reaches both behind their NATs: the session
	// moved to the UDP relay path (TestNATRelayUDP covers it in full).
	if p := c.Path(d.ID()); !p.RelayUDP {
		t.Fatalf("path %v, want relay udp", p)
	}
}

// streamSize is what directStream sends: 48 MiB at about 4 MiB/s, 12s.
const streamSize = 48 << 20

// directStream builds the NAT network and starts a paced stream, seeded
// with seed, from a device service to the client, whose reader it returns
// once the session has been direct for a second.
func directStream(t *testing.T, seed uint64) (*nsNet, *device.Device, *client.Client, *reader) {
	t.Helper()
	n := newNATNet(t)
	srv := streamServer(t, seed, streamSize, 15*time.Millisecond)
	d, c := n.pair(t, "ha", "hb", map[string]string{"stream": srv.Addr})
	tun, err := c.Dial(ctx10(t), d.ID(), "stream")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tun.Close() })
	r := readStream(tun, streamSize)
	waitPath(t, c, d.ID(), 5*time.Second, direct, "direct path")
	time.Sleep(time.Second)
	return n, d, c, r
}

// TestNATCut: the direct path is cut mid-stream (UDP dropped between the
// NATs): within 3s the stream flows over the relay, with no error and
// intact bytes; once the drop is lifted the session goes direct again
// (done means 4).
func TestNATCut(t *testing.T) {
	n, d, c, r := directStream(t, 9)

	n.In("pub", append([]string{"iptables", "-I"}, dropUDP...)...)
	cut := time.Now()
	r.measure.Store(true)
	took := waitPath(t, c, d.ID(), 3*time.Second, relayed, "back on the relay")
	relayAt := n.relayed()
	time.Sleep(3 * time.Second)
	if n.relayed()-relayAt < 100 {
		t.Fatal("the stream does not flow over the relay")
	}
	gap := time.Duration(r.maxGap.Load())
	t.Logf("on the relay %v after the cut; longest wait for bytes %v", took, gap)
	if gap > 3*time.Second {
		t.Fatalf("the stream stalled %v after the cut", gap)
	}
	r.measure.Store(false)

	// Long enough for the path to be given up: it is found again by a
	// new search.
	time.Sleep(9*time.Second - time.Since(cut))
	n.In("pub", append([]string{"iptables", "-D"}, dropUDP...)...)
	took = waitPath(t, c, d.ID(), 40*time.Second, direct, "direct again after the cut was lifted")
	t.Logf("direct again %v after the cut was lifted", took)

	r.check(t, 9)
}

// TestNATSameLAN: two agents on one LAN, with no NAT between them, go
// direct over their local addresses (done means 5).
func TestNATSameLAN(t *testing.T) {
	n := newNATNet(t)
	web := HTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("lan")) }))
	d, c := n.pair(t, "ha", "hc", map[string]string{"http": web})
	if err := echoHTTP(t, c, d.ID()); err != nil {
		t.Fatal(err)
	}
	waitPath(t, c, d.ID(), 5*time.Second, direct, "direct path")
	if got := c.Path(d.ID()).Addr.Addr(); got != natHosts["ha"] {
		t.Fatalf("direct path to %v, want the device's LAN address %v", got, natHosts["ha"])
	}
	time.Sleep(300 * time.Millisecond)
	before := n.relayed()
	for range 5 {
		if err := echoHTTP(t, c, d.ID()); err != nil {
			t.Fatal(err)
		}
	}
	if fwd := n.relayed() - before; fwd != 0 {
		t.Fatalf("the relay forwarded %d packets of a direct session", fwd)
	}
}

// echoHTTP fetches the device's http service through a tunnel.
func echoHTTP(t *testing.T, c *client.Client, dev identity.ID) error {
	t.Helper()
	tun, err := c.Dial(ctx10(t), dev, "http")
	if err != nil {
		return err
	}
	defer tun.Close()
	tun.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := tun.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	var got []byte
	for {
		k, err := tun.Read(buf)
		got = append(got, buf[:k]...)
		if err != nil {
			break
		}
	}
	if len(got) < 3 || string(got[len(got)-3:]) != "lan" {
		t.Fatalf("http through the tunnel: %q", got)
	}
	return nil
}

// TestNATBlackhole: the path between the agents and the relay goes dark
// (iptables DROP, no reset): the relay and both agents notice within 3
// keepalive intervals, and everything reattaches and works once the path
// is back (issue 6, item 11).
func TestNATBlackhole(t *testing.T) {
	const keepAlive = time.Second
	n := newNATNetKeepAlive(t, keepAlive)
	srv := StartServer(t, Echo)
	d, c := n.pair(t, "ha", "hb", map[string]string{"echo": srv.Addr})
	if err := echoOnce(t, c, d.ID(), "echo"); err != nil {
		t.Fatal(err)
	}
	// In the home routers: the relay's own traffic does not cross pub's
	// FORWARD chain.
	drop := []string{"FORWARD", "-p", "tcp", "-j", "DROP"}
	for _, r := range []string{"ra", "rb"} {
		n.In(r, append([]string{"iptables", "-I"}, drop...)...)
	}
	dark := time.Now()
	for _, w := range []struct {
		name string
		gone func() bool
	}{
		{"relay", func() bool { st := n.relay.Stats(); return st.Devices == 0 && st.Clients == 0 }},
		{"device", func() bool { return !d.Status().Relay.Attached }},
		{"client", func() bool { return !c.RelayStatus().Attached }},
	} {
		for !w.gone() {
			if time.Since(dark) > 3*keepAlive+500*time.Millisecond {
				t.Fatalf("the %s did not notice the dead path within 3 keepalive intervals", w.name)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("%s noticed after %v", w.name, time.Since(dark).Round(time.Millisecond))
	}
	for _, r := range []string{"ra", "rb"} {
		n.In(r, append([]string{"iptables", "-D"}, drop...)...)
	}
	back := time.Now()
	for _, w := range []interface{ WaitAttached(context.Context) error }{d, c} {
		if err := w.WaitAttached(ctx10(t)); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("both reattached %v after the path came back", time.Since(back).Round(time.Millisecond))
	if err := echoOnce(t, c, d.ID(), "echo"); err != nil {
		t.Fatalf("after the path came back: %v", err)
	}
}
