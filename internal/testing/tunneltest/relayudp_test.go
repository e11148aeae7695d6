//go:build linux

package tunneltest

import (
	"strconv"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/internal/testing/israce"
)

// TestNATRelayUDP: two agents behind port-randomizing NATs (no direct
// path exists) reach each other over the UDP relay path. Blocking UDP to
// the relay mid-stream moves the session back to the TCP relay path
// within 3s, unblocking it moves the session back to UDP, and a
// checksummed 200 MiB stream arrives intact throughout (issue 16, done
// means 1).
func TestNATRelayUDP(t *testing.T) {
	size, gap := int64(200<<20), 8*time.Millisecond // about 8 MiB/s: some 25s
	if israce.Enabled || testing.Short() {
		size, gap = 64<<20, 10*time.Millisecond
	}
	n := newNATNet(t, "--random-fully")
	srv := streamServer(t, 21, size, gap)
	d, c := n.pair(t, "ha", "hb", map[string]string{"stream": srv.Addr})
	tun, err := c.Dial(ctx10(t), d.ID(), "stream")
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	r := readStream(tun, size)

	took := waitPath(t, c, d.ID(), 10*time.Second, relayUDP, "the UDP relay path")
	t.Logf("relay udp %v after the session opened", took)
	// flows waits until 100 more packets have crossed the path count
	// counts, for up to 8s: QUIC resends what a block swallowed once its
	// probe timeout, grown while nothing was acknowledged, fires.
	flows := func(what string, count func() uint64) {
		t.Helper()
		before := count()
		for deadline := time.Now().Add(8 * time.Second); count()-before < 100; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d packets in 8s: the stream does not flow %s", count()-before, what)
			}
		}
	}
	flows("over the relay's UDP port", func() uint64 { return n.relay.Stats().UDPForwarded })
	for r.n.Load() < 8<<20 { // well into the stream
		time.Sleep(time.Millisecond)
	}

	block := []string{"INPUT", "-p", "udp", "--dport", strconv.Itoa(n.relayUDP), "-j", "DROP"}
	n.In("pub", append([]string{"iptables", "-I"}, block...)...)
	r.measure.Store(true)
	took = waitPath(t, c, d.ID(), 3*time.Second, relayTCP, "back on the TCP relay path")
	flows("over the relay's TCP sessions", func() uint64 { return n.relay.Stats().PacketsForwarded })
	// The stream's bytes, not only acknowledgements and probes, cross
	// the TCP relay path while UDP to the relay is blocked.
	for atTCP, deadline := r.n.Load(), time.Now().Add(10*time.Second); r.n.Load() < min(atTCP+4<<20, size); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes of the stream in 10s on the TCP relay path", r.n.Load()-atTCP)
		}
		if p := c.Path(d.ID()); !relayTCP(p) {
			t.Fatalf("path %v while UDP to the relay is blocked", p)
		}
	}
	t.Logf("on the TCP relay path %v after UDP to the relay was blocked, %d MiB into the stream; longest wait for bytes %v",
		took, r.n.Load()>>20, time.Duration(r.maxGap.Load()))
	stall := 5 * time.Second // as in TestNATDataDropped: QUIC resends what the block swallowed
	if israce.Enabled {
		stall = 6 * time.Second
	}
	if gap := time.Duration(r.maxGap.Load()); gap > stall {
		t.Fatalf("the stream stalled %v", gap)
	}
	r.measure.Store(false)

	n.In("pub", append([]string{"iptables", "-D"}, block...)...)
	took = waitPath(t, c, d.ID(), 30*time.Second, relayUDP, "back on the UDP relay path")
	t.Logf("relay udp again %v after the block was lifted, %d MiB into the stream", took, r.n.Load()>>20)
	if r.n.Load() < size {
		flows("over the relay's UDP port again", func() uint64 { return n.relay.Stats().UDPForwarded })
	}
	r.check(t, 21)
	if p := c.Path(d.ID()); p.Direct {
		t.Fatalf("direct path %v through port-randomizing NATs", p)
	}
}
