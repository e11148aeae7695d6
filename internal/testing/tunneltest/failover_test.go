package tunneltest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/natstest"
)

// A watchedReader reads a stream into a hash, noting the longest time
// between two reads.
type watchedReader struct {
	n        int64
	maxStall time.Duration
	last     time.Time
}

func (w *watchedReader) copy(r io.Reader) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	w.last = time.Now()
	for {
		k, err := r.Read(buf)
		if k > 0 {
			now := time.Now()
			w.maxStall = max(w.maxStall, now.Sub(w.last))
			w.last = now
			h.Write(buf[:k])
			w.n += int64(k)
		}
		if err == io.EOF {
			return [32]byte(h.Sum(nil)), nil
		}
		if err != nil {
			return [32]byte{}, err
		}
	}
}

// TestFleetFailover: a relay of a fleet dies (as in a crash: its
// connections close without a go-away and its NATS connection with them),
// or goes dark (blackholed: nothing moves to or from it, nothing closes),
// while it carries a checksummed stream from a device to a client. The
// device attaches to its next relay, presence follows, the client
// follows the device there, and the stream completes intact: the
// end-to-end session moves to the new relay as a change of path. Once
// with the client on another relay (it is redirected to the device's new
// one), once with the client on the relay that dies (it moves to its own
// next relay, and from there to the device's).
func TestFleetFailover(t *testing.T) {
	for _, tc := range []struct {
		name       string
		sameRelay  bool
		blackhole  bool
		streamSize int64
	}{
		{"killed, client elsewhere", false, false, 48 << 20},
		{"killed, client on the same relay", true, false, 48 << 20},
		{"blackholed, client elsewhere", false, true, 48 << 20},
		{"blackholed, client on the same relay", true, true, 48 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) { testFailover(t, tc.sameRelay, tc.blackhole, tc.streamSize) })
	}
}

func testFailover(t *testing.T, sameRelay, blackhole bool, size int64) {
	f := NewFleet(t, 3, NATSPresence(t, natstest.Start(t).URL()))
	f.Start()
	did := NewIdentity(t)
	bi, next := f.Home(did.ID())
	var cid *identity.Identity
	for cid = NewIdentity(t); ; cid = NewIdentity(t) {
		if h, _ := f.Home(cid.ID()); (h == bi) == sameRelay {
			break
		}
	}
	ai, _ := f.Home(cid.ID())

	const seed = 7
	src := StartServer(t, func(c *net.TCPConn) {
		defer c.Close()
		StreamOf(c, seed, size)
	})
	d := StartDevice(t, f.Relays[bi], device.Config{
		Identity: did,
		Relay:    f.Pin(bi),
		Services: map[string]string{"source": src.Addr},
		Clients:  map[identity.ID][]string{cid.ID(): {"source"}},
	})
	f.WaitLocated(d.ID(), bi)
	c := NewClient(t, client.Config{Identity: cid, Relay: f.Pin(ai)})
	tun, err := c.Dial(ctx10(t), d.ID(), "source")
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	want := StreamSum(seed, size)

	var wr watchedReader
	type result struct {
		sum [32]byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		sum, err := wr.copy(tun)
		done <- result{sum, err}
	}()
	time.Sleep(300 * time.Millisecond)
	killed := time.Now()
	if blackhole {
		f.Blackhole(bi)
	} else {
		f.Kill(bi)
	}
	f.WaitLocated(d.ID(), next)
	reattached := time.Since(killed)
	var res result
	select {
	case res = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the stream did not complete within 60s of the kill")
	}
	if res.err != nil {
		t.Fatalf("the stream failed after %d bytes: %v", wr.n, res.err)
	}
	if wr.n != size || !bytes.Equal(res.sum[:], want[:]) {
		t.Fatalf("the stream ended after %d of %d bytes, checksum match %v", wr.n, size, res.sum == want)
	}
	t.Logf("relay lost; device located at its next relay after %v; stream intact (%d MiB), longest stall %v",
		reattached.Round(time.Millisecond), size>>20, wr.maxStall.Round(time.Millisecond))
}

// TestFleetDrainSaysWhere: a fleet relay that drains tells each of its
// devices which live relay to go to when it closes. The device's own next
// relay is dark (its dial would hang until it times out, 10s); told, the
// device goes straight to the one after it.
func TestFleetDrainSaysWhere(t *testing.T) {
	f := NewFleet(t, 3, NATSPresence(t, natstest.Start(t).URL()))
	f.Start()
	did := NewIdentity(t)
	home, next := f.Home(did.ID())
	third := 3 - home - next
	d := StartDevice(t, f.Relays[home], device.Config{
		Identity: did,
		Relay:    f.Pin(home),
		Services: map[string]string{"echo": StartServer(t, Echo).Addr},
		Clients:  map[identity.ID][]string{NewIdentity(t).ID(): {"echo"}},
	})
	f.WaitLocated(d.ID(), home)
	f.Blackhole(next)
	live := f.Relays[home].Presence.(interface{ Live() []identity.ID })
	for deadline := time.Now().Add(10 * time.Second); slices.Contains(live.Live(), f.Relays[next].Identity.ID()); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the dark relay is still live to the others after 10s")
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	f.Relays[home].Shutdown(ctx)
	closed := time.Now()
	want := f.Relays[third].Identity.ID()
	for d.Status().Relay.RelayID != want || !d.Status().Relay.Attached {
		if time.Since(closed) > 5*time.Second {
			t.Fatalf("the device is at %s 5s after its relay drained, want the third relay", d.Status().Relay.Relay)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("attached to the relay the draining one named %v after it closed", time.Since(closed).Round(time.Millisecond))
}
