//go:build linux

package main

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/burrow-tunnel/burrow/internal/testing/netns"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
)

// nsDialer dials from inside a namespace, for NATS.
type nsDialer struct {
	n  *netns.Net
	ns string
}

func (d nsDialer) Dial(network, addr string) (net.Conn, error) {
	var c net.Conn
	err := d.n.Do(d.ns, func() (err error) {
		c, err = net.DialTimeout(network, addr, 5*time.Second)
		return err
	})
	return c, err
}

// TestBinaryFleetBlackhole is TestBinaryFleetFailover with the relay
// blackholed instead of killed, in network namespaces: a router (hub)
// between a nats-server, three relays and the agents, each in a namespace
// of its own. The relay holding the device keeps running while the
// router drops everything to and from it (its agents and its NATS link
// alike: nothing is closed, nothing answers), under a checksummed 200 MiB
// stream from the device to the client. The device must be located at
// another relay within 6s, and the stream must stall less than 8s and
// complete intact; then the relay's network comes back, and the relay
// drops its stale session of the device.
func TestBinaryFleetBlackhole(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped with -short: it streams 200 MiB per round")
	}
	n := netns.New(t)
	n.Add("hub", "nats", "r0", "r1", "r2", "ag")
	leaf := func(ns, hubIf string, subnet int) string {
		n.Link("hub", hubIf, fmt.Sprintf("10.77.%d.1/24", subnet), ns, "eth0", fmt.Sprintf("10.77.%d.2/24", subnet))
		n.In(ns, "ip", "route", "add", "default", "via", fmt.Sprintf("10.77.%d.1", subnet))
		return fmt.Sprintf("10.77.%d.2", subnet)
	}
	n.In("hub", "sysctl", "-qw", "net.ipv4.ip_forward=1")
	natsIP := leaf("nats", "tonats", 8)
	leaf("ag", "toag", 9)
	dir := t.TempDir()
	ns := startCmd(t, "nats-server", exec.Command("ip", "netns", "exec", n.Name("nats"),
		natsServerBinary(t), "-js", "-sd", filepath.Join(dir, "nats"), "-a", natsIP, "-p", "4222"))
	ns.waitFor(reNATSReady, 0, 10*time.Second)
	natsURL := "nats://" + natsIP + ":4222"
	in := func(name string, args ...string) []string {
		return append([]string{"ip", "netns", "exec", n.Name(name), binary(t)}, offLAN(args)...)
	}
	runIn := func(name string, args ...string) string {
		t.Helper()
		a := in(name, args...)
		out, err := exec.Command(a[0], a[1:]...).Output()
		if err != nil {
			t.Fatalf("%s: %v", strings.Join(a, " "), err)
		}
		return strings.TrimSpace(string(out))
	}

	key := filepath.Join(dir, "fleet.key")
	fleetID := strings.TrimSpace(mustRun(t, "fleet", "init", "--key", key))
	type relayNS struct {
		ns, hubIf, id, addr, data string
		p                         *proc
	}
	relays := make([]*relayNS, 3)
	byID := map[string]*relayNS{}
	for i := range relays {
		r := &relayNS{ns: fmt.Sprintf("r%d", i), hubIf: fmt.Sprintf("to%d", i), data: filepath.Join(dir, fmt.Sprintf("relay%d", i))}
		r.addr = leaf(r.ns, r.hubIf, i) + ":4430"
		r.id = strings.TrimSpace(mustRun(t, "relay", "id", "--data", r.data))
		runIn("ag", "fleet", "add", "--key", key, "--nats", natsURL, "--relay-id", r.id, "--addr", r.addr, "--region", "test")
		a := in(r.ns, "relay", "--listen", r.addr, "--data", r.data, "--nats", natsURL, "--no-udp", "--drain", "0")
		r.p = startCmd(t, "relay "+r.ns, exec.Command(a[0], a[1:]...))
		r.p.waitFor(reRelayListening, 0, 10*time.Second)
		relays[i], byID[r.id] = r, r
	}

	// The service on the device, and the test's end of the tunnel, in the
	// agents' namespace.
	var srcLn net.Listener
	if err := n.Do("ag", func() (err error) { srcLn, err = net.Listen("tcp", "127.0.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer srcLn.Close()
	go func() {
		for {
			c, err := srcLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tunneltest.StreamOf(c, streamSeed, failoverStream)
			}()
		}
	}()
	sum := tunneltest.StreamSum(streamSeed, failoverStream)
	want := sum[:]

	clientKey := filepath.Join(dir, "client.key")
	clientID := strings.TrimSpace(mustRun(t, "id", "--identity", clientKey))
	token := runIn("ag", "relay", "token", "create", "--data", relays[0].data)
	cfg, camID := streamDevice(t, dir, []string{relays[0].addr, relays[1].addr, relays[2].addr}, fleetID, token, srcLn.Addr().String(), clientID)
	a := in("ag", "device", "--config", cfg)
	cam := startCmd(t, "cam", exec.Command(a[0], a[1:]...))
	cam.waitFor(reAttached, 0, 10*time.Second)
	a = in("ag", "connect", camID, "source", "--relay", relays[0].addr, "--relay-id", fleetID, "--identity", clientKey, "--no-direct")
	conn := startCmd(t, "connect", exec.Command(a[0], a[1:]...))
	m, _ := conn.waitFor(reListening, 0, 10*time.Second)
	local := m[1]

	nc, err := nats.Connect(natsURL, nats.SetCustomDialer(nsDialer{n, "ag"}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	presence := presenceOf(t, nc, camID)
	holder := func() (*relayNS, uint64) {
		id, rev := presence()
		return byID[id], rev
	}

	const rounds = 2
	for round := range rounds {
		var at *relayNS
		var rev uint64
		for deadline := time.Now().Add(10 * time.Second); at == nil; time.Sleep(20 * time.Millisecond) {
			at, rev = holder()
			if time.Now().After(deadline) {
				t.Fatalf("round %d: no relay holds the device after 10s", round)
			}
		}
		var c net.Conn
		if err := n.Do("ag", func() (err error) { c, err = net.Dial("tcp", local); return err }); err != nil {
			t.Fatal(err)
		}
		quarter, done := readStream(c)
		select {
		case <-quarter:
		case res := <-done:
			t.Fatalf("round %d: the stream ended after %d bytes before the blackhole: %v", round, res.n, res.err)
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: a quarter of the stream did not arrive in 30s", round)
		}
		before := at.p.lineCount()
		drop := [][]string{{"-i", at.hubIf, "-j", "DROP"}, {"-o", at.hubIf, "-j", "DROP"}}
		for _, rule := range drop {
			n.In("hub", append([]string{"iptables", "-I", "FORWARD"}, rule...)...)
		}
		cut := time.Now()
		var moved time.Duration
		for {
			if r, v := holder(); v > rev && r != nil && r != at {
				moved = time.Since(cut)
				break
			}
			if time.Since(cut) > 30*time.Second {
				t.Fatalf("round %d: the device was not located at another relay within 30s of the blackhole", round)
			}
			time.Sleep(10 * time.Millisecond)
		}
		res := <-done
		if !res.intact(want) {
			t.Fatalf("round %d: stream of %d of %d bytes, error %v", round, res.n, failoverStream, res.err)
		}
		t.Logf("round %d: blackholed the relay at %s; device located elsewhere after %v; 200 MiB intact, longest stall %v",
			round, at.addr, moved.Round(time.Millisecond), res.stall.Round(time.Millisecond))
		if moved > 6*time.Second || res.stall > 8*time.Second {
			t.Errorf("round %d: device located elsewhere after %v (want ≤ 6s), stall %v (want ≤ 8s)", round, moved, res.stall)
		}
		for _, rule := range drop {
			n.In("hub", append([]string{"iptables", "-D", "FORWARD"}, rule...)...)
		}
		// Back on the network, the relay drops the session it still had:
		// the device's closing of it gets through, or the relay learns
		// from NATS that the device attached elsewhere.
		gone := regexp.MustCompile(`(agent detached" agent=device id=` + camID + `|dropping its session here id=` + camID + `)`)
		at.p.waitFor(gone, before, 30*time.Second)
	}
}
