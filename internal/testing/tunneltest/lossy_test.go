//go:build linux

package tunneltest

import (
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/internal/testing/israce"
	"github.com/burrow-tunnel/burrow/internal/testing/netns"
)

// lossy is the impairment of the device's link in the lossy tests, in
// each direction: about 100 ms of round trip on that link alone.
var lossy = netns.Impairment{Delay: 50 * time.Millisecond, Jitter: 10 * time.Millisecond, Loss: 0.01}

// newLossyNet builds the network of the lossy tests:
//
//	dev ══ lossy ══ mid (relay; routes) ── cli
//	10.0.1.2   10.0.1.1 | 10.0.2.1        10.0.2.2
//
// The device's link (TUN devices, see [netns.Net.LossyLink]) delays and
// drops packets both ways as lossy says; the client's (a veth pair) is
// clean. Both paths between the agents cross the lossy link once: the
// relay's TCP session of the device, and the direct UDP path through mid.
// With noDirect, the agents keep every session on the relay.
func newLossyNet(t *testing.T, noDirect bool) (*nsNet, *netns.Lossy) {
	t.Helper()
	n := &nsNet{Net: netns.New(t), noDirect: noDirect, hosts: map[string]netip.Addr{
		"dev": netip.MustParseAddr("10.0.1.2"),
		"cli": netip.MustParseAddr("10.0.2.2"),
	}}
	n.Add("mid", "dev", "cli")
	link := n.LossyLink("mid", "tdev", "10.0.1.1/24", "dev", "tun0", "10.0.1.2/24", lossy)
	n.Link("mid", "vcli", "10.0.2.1/24", "cli", "eth0", "10.0.2.2/24")
	n.In("mid", "sysctl", "-qw", "net.ipv4.ip_forward=1")
	n.In("dev", "ip", "route", "add", "default", "dev", "tun0")
	n.In("cli", "ip", "route", "add", "default", "via", "10.0.2.1")
	n.startRelay(t, "mid", "10.0.1.1", 0)
	return n, link
}

// TestLossySlowNetwork: over a link that loses 1 % of the packets and
// delays each by 50 ms ± 10 ms, each way, a stream from a service on the
// device arrives whole (the SHA-256 of what the service sent and of what
// the client read are the stream's), on the relay (the device's TCP
// session crosses the link) and on a direct path (UDP crosses it).
//
// The relay path carries the 50 MiB. Through 1 % loss at this
// round trip a loss-based congestion control holds about 2 Mbit/s (the
// direct path: QUIC's; the relay path: TCP's if the kernel's is cubic, not
// bbr), so 50 MiB take minutes there; the direct path carries 8 MiB.
// Under the race detector or -short each carries less.
func TestLossySlowNetwork(t *testing.T) {
	for _, tc := range []struct {
		path        string
		size, small int64
	}{
		{"relay", 50 << 20, 8 << 20},
		{"direct", 8 << 20, 4 << 20},
	} {
		t.Run(tc.path, func(t *testing.T) {
			size := tc.size
			if israce.Enabled || testing.Short() {
				size = tc.small
			}
			testLossy(t, size, tc.path == "direct")
		})
	}
}

func testLossy(t *testing.T, size int64, wantDirect bool) {
	const seed = 12
	n, link := newLossyNet(t, !wantDirect)
	sent := make(chan [32]byte, 1)
	srv := StartServer(t, func(c *net.TCPConn) {
		h := sha256.New()
		c.ReadFrom(io.TeeReader(randomStream(seed, size), h))
		c.CloseWrite()
		sent <- [32]byte(h.Sum(nil))
	})
	echo := StartServer(t, Echo)
	d, c := n.pair(t, "dev", "cli", map[string]string{"stream": srv.Addr, "echo": echo.Addr})
	// The session is open, and on its path, before the stream starts.
	if err := echoOnce(t, c, d.ID(), "echo"); err != nil {
		t.Fatal(err)
	}
	if wantDirect {
		waitPath(t, c, d.ID(), 10*time.Second, direct, "direct path")
	}
	path := c.Path(d.ID())

	start := time.Now()
	tun, err := c.Dial(ctx10(t), d.ID(), "stream")
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	r := readStream(tun, size)
	if err := r.wait(t); err != nil {
		t.Fatalf("stream failed after %d of %d bytes, %v: %v", r.n.Load(), size, time.Since(start), err)
	}
	took := time.Since(start)
	want, _, _ := sum(randomStream(seed, size))
	if got := <-sent; got != want {
		t.Fatal("the service's SHA-256 of what it sent is not the stream's")
	}
	if r.sum != want {
		t.Fatal("the client's SHA-256 of what it read differs from what the service sent")
	}
	passed, dropped := link.Passed.Load(), link.Dropped.Load()
	how := "the device's TCP congestion control is " + congestionControl(n, "dev")
	if path.Direct {
		how = "QUIC's congestion control"
	}
	t.Logf("%d MiB in %v on %v: %.2f MiB/s (%.1f Mbit/s); the lossy link dropped %d of %d packets (%.2f %%); %s",
		size>>20, took.Round(time.Millisecond), path, float64(size)/(1<<20)/took.Seconds(), float64(size)*8/1e6/took.Seconds(),
		dropped, passed+dropped, 100*float64(dropped)/float64(passed+dropped), how)
	if now := c.Path(d.ID()); now.Direct != path.Direct {
		t.Errorf("the session changed path: %v at the start, %v at the end", path, now)
	}
}

// wait waits for the stream's end and returns its error; however slow
// the stream, the test fails if no byte arrives for 30s.
func (r *reader) wait(t *testing.T) error {
	t.Helper()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last, moved := int64(-1), time.Now()
	for {
		select {
		case err := <-r.done:
			return err
		case <-tick.C:
		}
		if k := r.n.Load(); k != last {
			last, moved = k, time.Now()
		} else if time.Since(moved) > 30*time.Second {
			t.Fatalf("the stream stalled for 30s after %d of %d bytes", k, r.size)
		}
	}
}

// congestionControl returns the default TCP congestion control of
// namespace ns.
func congestionControl(n *nsNet, ns string) string {
	var cc []byte
	err := n.Do(ns, func() error {
		var err error
		cc, err = os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
		return err
	})
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return strings.TrimSpace(string(cc))
}
