package fleetstate

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/natstest"
)

// A testRelay is one relay's Presence on its own NATS connection, with
// the devices its OnTaken was called with.
type testRelay struct {
	id    identity.ID
	nc    *nats.Conn
	p     *Presence
	taken chan identity.ID
}

// openPresence opens a Presence for a new relay ID; cfg's Conn, Relay and
// Logger are filled in.
func openPresence(t testing.TB, url string, cfg PresenceConfig) *testRelay {
	t.Helper()
	r := &testRelay{id: randomID(), nc: connectNATS(t, url), taken: make(chan identity.ID, 16)}
	cfg.Conn, cfg.Relay, cfg.Logger = r.nc, r.id, testLogger(t)
	p, err := OpenPresence(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	p.OnTaken(func(id identity.ID) {
		select {
		case r.taken <- id:
		default:
		}
	})
	r.p = p
	return r
}

// locatedAt reports whether r locates dev at want (the zero ID: nowhere).
func (r *testRelay) locatedAt(dev, want identity.ID) bool {
	got, ok := r.p.Locate(dev)
	if want.IsZero() {
		return !ok
	}
	return ok && got == want
}

// settled waits until r has written all it was told.
func (r *testRelay) settled(t testing.TB) {
	t.Helper()
	eventually(t, "presence writes done", func() bool { return !r.p.pending() })
}

// TestPresenceLocate: an attach at A is located at A by B and C, a detach
// takes it away; an attach at B after one at A wins, A is told the device
// was taken, and A's late detach does not erase B's record.
func TestPresenceLocate(t *testing.T) {
	ns := natstest.Start(t)
	a, b, c := openPresence(t, ns.URL(), PresenceConfig{}), openPresence(t, ns.URL(), PresenceConfig{}), openPresence(t, ns.URL(), PresenceConfig{})
	dev := randomID()

	start := time.Now()
	a.p.Attached(dev)
	if !a.locatedAt(dev, a.id) {
		t.Fatal("A does not locate its own device at once")
	}
	eventually(t, "B and C locate the device at A", func() bool { return b.locatedAt(dev, a.id) && c.locatedAt(dev, a.id) })
	t.Logf("attach at A located by B and C after %v", time.Since(start))
	if live := b.p.Live(); len(live) != 3 || !slices.Contains(live, a.id) || !slices.Contains(live, c.id) {
		t.Fatalf("B's live relays: %v", live)
	}

	a.p.Detached(dev)
	eventually(t, "the device is nowhere", func() bool {
		return a.locatedAt(dev, identity.ID{}) && b.locatedAt(dev, identity.ID{}) && c.locatedAt(dev, identity.ID{})
	})

	a.p.Attached(dev)
	a.settled(t)
	eventually(t, "C locates the device at A", func() bool { return c.locatedAt(dev, a.id) })
	b.p.Attached(dev)
	select {
	case id := <-a.taken:
		if id != dev {
			t.Fatalf("A told that %v was taken, want %v", id, dev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("A not told that B took the device")
	}
	eventually(t, "C locates the device at B", func() bool { return c.locatedAt(dev, b.id) })
	// The relay drops the stale session, which detaches it: too late.
	a.p.Detached(dev)
	a.settled(t)
	e, err := b.p.presence.Get(t.Context(), dev.String())
	if err != nil {
		t.Fatalf("B's record after A's late detach: %v", err)
	}
	if rec, err := decode[presenceRecord](e.Value()); err != nil || rec.Relay != b.id.String() {
		t.Fatalf("record after A's late detach: %s (%v)", e.Value(), err)
	}
	for _, r := range []*testRelay{a, b, c} {
		if !r.locatedAt(dev, b.id) {
			t.Fatalf("relay %v does not locate the device at B", r.id.Short())
		}
	}
	select {
	case id := <-b.taken:
		t.Fatalf("B told that %v was taken", id)
	default:
	}
}

// TestPresenceLiveness: a relay that closes is at once no longer where its
// devices are; one that stops refreshing without a word (killed) lapses
// within its TTL and a refresh.
func TestPresenceLiveness(t *testing.T) {
	ns := natstest.Start(t)
	cfg := PresenceConfig{LivenessTTL: 600 * time.Millisecond, LivenessRefresh: 200 * time.Millisecond}
	a, b, k := openPresence(t, ns.URL(), cfg), openPresence(t, ns.URL(), cfg), openPresence(t, ns.URL(), cfg)
	devA, devK := randomID(), randomID()
	a.p.Attached(devA)
	k.p.Attached(devK)
	eventually(t, "B locates both devices", func() bool { return b.locatedAt(devA, a.id) && b.locatedAt(devK, k.id) })
	// Longer than the TTL: the refreshes keep both relays live.
	time.Sleep(time.Second)
	if !b.locatedAt(devA, a.id) || !b.locatedAt(devK, k.id) {
		t.Fatal("refreshed relays lapsed")
	}

	start := time.Now()
	a.p.Close()
	eventually(t, "B no longer locates A's device", func() bool { return b.locatedAt(devA, identity.ID{}) })
	t.Logf("closed relay gone after %v", time.Since(start))

	start = time.Now()
	k.nc.Close() // killed: no refresh, no deletion
	eventually(t, "B no longer locates K's device", func() bool { return b.locatedAt(devK, identity.ID{}) })
	lapse := time.Since(start)
	t.Logf("killed relay lapsed after %v (TTL %v, refresh %v)", lapse, cfg.LivenessTTL, cfg.LivenessRefresh)
	if lapse < cfg.LivenessTTL-cfg.LivenessRefresh {
		t.Fatalf("killed relay lapsed after %v, before its TTL", lapse)
	}
	if live := b.p.Live(); len(live) != 1 || live[0] != b.id {
		t.Fatalf("B's live relays: %v", live)
	}
}

// TestPresenceNATSOutage: while NATS is down, relays locate devices from
// memory, past the liveness TTL; attaches and detaches made meanwhile are
// written when NATS is back, each device's latest state winning, and the
// watches and refreshes resume.
func TestPresenceNATSOutage(t *testing.T) {
	ns := natstest.Start(t)
	cfg := PresenceConfig{LivenessTTL: 600 * time.Millisecond, LivenessRefresh: 200 * time.Millisecond, Timeout: time.Second}
	a, b := openPresence(t, ns.URL(), cfg), openPresence(t, ns.URL(), cfg)
	before, during, flapped := randomID(), randomID(), randomID()
	a.p.Attached(before)
	a.p.Attached(flapped)
	eventually(t, "B locates A's devices", func() bool { return b.locatedAt(before, a.id) && b.locatedAt(flapped, a.id) })

	ns.Stop()
	a.p.Attached(during)
	a.p.Detached(flapped)
	a.p.Attached(flapped)
	a.p.Detached(flapped)
	time.Sleep(1500 * time.Millisecond) // past the TTL
	if !b.locatedAt(before, a.id) {
		t.Fatal("B lost A's device while NATS was down")
	}
	ns.Restart()
	start := time.Now()
	eventually(t, "B learns the attach and detach made while NATS was down", func() bool {
		return b.locatedAt(during, a.id) && b.locatedAt(flapped, identity.ID{}) && b.locatedAt(before, a.id)
	})
	t.Logf("caught up %v after NATS came back", time.Since(start))
	a.settled(t)
	// The refreshes resumed: A stays live past its TTL.
	time.Sleep(time.Second)
	if !b.locatedAt(during, a.id) {
		t.Fatal("A lapsed after NATS came back")
	}
	// And the watches did: a new attach at B reaches A.
	dev := randomID()
	b.p.Attached(dev)
	eventually(t, "A locates a new device at B", func() bool { return a.locatedAt(dev, b.id) })
}

// TestPresenceStaleRecords: a relay that restarts deletes the records
// its earlier run left, and locates nothing there.
func TestPresenceStaleRecords(t *testing.T) {
	ns := natstest.Start(t)
	a := openPresence(t, ns.URL(), PresenceConfig{})
	dev := randomID()
	if _, err := a.p.presence.Put(t.Context(), dev.String(), encode(presenceRecord{V: FormatVersion, Relay: a.id.String()})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the stale record is deleted", func() bool {
		_, err := a.p.presence.Get(t.Context(), dev.String())
		return err == jetstream.ErrKeyNotFound
	})
	if a.locatedAt(dev, a.id) {
		t.Fatal("stale record located")
	}
}

// TestPresenceScale attaches 10,000 devices spread over three relays at
// once, then moves 3,000 of them to another relay at a steady 1,000 a
// second, and logs how fast their records are written (from Attached to
// the change seen by a watcher of the bucket), how often the old relay is
// told, and what NATS stores per device.
func TestPresenceScale(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	const devices, moves = 10_000, 3_000
	ns := natstest.Start(t)
	relays := []*testRelay{openPresence(t, ns.URL(), PresenceConfig{}), openPresence(t, ns.URL(), PresenceConfig{}), openPresence(t, ns.URL(), PresenceConfig{})}
	// As the relay does: drop the stale session, which detaches it.
	var taken atomic.Int64
	for _, r := range relays {
		r.p.OnTaken(func(id identity.ID) {
			taken.Add(1)
			r.p.Detached(id)
		})
	}
	ids := make([]identity.ID, devices)
	for i := range ids {
		ids[i] = randomID()
	}
	w, err := relays[0].p.presence.WatchAll(t.Context(), jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	elapsed, lat := measureWrites(t, w, ids, relays, func(i int) int { return i % 3 }, 0)
	t.Logf("%d attaches at once over 3 relays: %.0f writes/s; from Attached to the change seen: p50 %v, p99 %v, max %v",
		devices, devices/elapsed.Seconds(), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
	elapsed, lat = measureWrites(t, w, ids[:moves], relays, func(i int) int { return (i + 1) % 3 }, time.Millisecond)
	t.Logf("%d moves to another relay, one a millisecond: %.0f writes/s; from Attached to the change seen: p50 %v, p99 %v, max %v",
		moves, moves/elapsed.Seconds(), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
	for _, r := range relays {
		eventually(t, "every relay locates the last device moved", func() bool { return r.locatedAt(ids[moves-1], relays[moves%3].id) })
	}
	eventually(t, "the old relays told of every move", func() bool { return taken.Load() == moves })

	js, err := jetstream.New(relays[0].nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(t.Context(), "KV_"+PresenceBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("NATS stores %d bytes for %d device records: %d bytes per device", info.State.Bytes, info.State.Msgs, info.State.Bytes/max(info.State.Msgs, 1))
}

// measureWrites attaches ids[i] at relays[at(i)], pausing gap between
// attaches, and returns how long until w saw every record name its relay,
// and the sorted latencies from each Attached to its record.
func measureWrites(t *testing.T, w jetstream.KeyWatcher, ids []identity.ID, relays []*testRelay, at func(int) int, gap time.Duration) (time.Duration, []time.Duration) {
	t.Helper()
	index := make(map[string]int, len(ids))
	for i, id := range ids {
		index[id.String()] = i
	}
	attached := make([]atomic.Int64, len(ids))
	landed := make([]time.Duration, len(ids))
	start := time.Now()
	go func() {
		for i, id := range ids {
			attached[i].Store(time.Now().UnixNano())
			relays[at(i)].p.Attached(id)
			if gap > 0 {
				time.Sleep(gap)
			}
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for n := 0; n < len(ids); {
		select {
		case e := <-w.Updates():
			i, ok := index[e.Key()]
			if !ok || landed[i] != 0 {
				continue
			}
			if rec, err := decode[presenceRecord](e.Value()); err != nil || rec.Relay != relays[at(i)].id.String() {
				continue
			}
			landed[i] = time.Since(time.Unix(0, attached[i].Load()))
			n++
		case <-ctx.Done():
			t.Fatalf("only %d of %d records landed", n, len(ids))
		}
	}
	elapsed := time.Since(start)
	slices.Sort(landed)
	return elapsed, landed
}
