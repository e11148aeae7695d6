package relay

import (
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// TestSnapshot: a snapshot shows the attached device and client with their
// counters, and the pair once the relay has forwarded a packet of the
// client to the device; the pair goes with the device.
func TestSnapshot(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll})
	devID, cliID := newIdentity(t), newIdentity(t)
	dev := attach(t, addr, devID, relayproto.RoleDevice)
	cli := attach(t, addr, cliID, relayproto.RoleClient)
	dev.allow(cliID)

	snap := srv.Snapshot()
	if len(snap.Devices) != 1 || snap.Devices[0].ID != devID.ID() || snap.Devices[0].Instance != 0 {
		t.Fatalf("devices %+v", snap.Devices)
	}
	if len(snap.Clients) != 1 || snap.Clients[0].ID != cliID.ID() || snap.Clients[0].Instance != 7 {
		t.Fatalf("clients %+v", snap.Clients)
	}
	if !strings.HasPrefix(snap.Devices[0].Remote, "127.0.0.1:") || snap.Devices[0].Since.After(snap.Taken) {
		t.Fatalf("device %+v at %v", snap.Devices[0], snap.Taken)
	}
	if len(snap.Pairs) != 0 {
		t.Fatalf("pairs %+v before any packet", snap.Pairs)
	}

	before := time.Now()
	cli.sendTo(devID.ID(), "sealed")
	if typ, _ := dev.read(); typ != relayproto.FrameRecvPacket {
		t.Fatalf("device got %s", typ)
	}
	snap = srv.Snapshot()
	want := Pair{Client: cliID.ID(), ClientInstance: 7, Device: devID.ID(), Relayed: true}
	if len(snap.Pairs) != 1 {
		t.Fatalf("pairs %+v, want one", snap.Pairs)
	}
	p := snap.Pairs[0]
	last := p.LastRelayed
	p.LastRelayed = time.Time{}
	if p != want || last.Before(before.Add(-3*time.Second)) || last.After(snap.Taken) {
		t.Fatalf("pair %+v last relayed %v, want %+v between %v and %v", p, last, want, before, snap.Taken)
	}
	if c := snap.Clients[0]; c.PacketsIn != 1 || c.BytesIn != 6 {
		t.Fatalf("client counters %+v", c)
	}
	if d := snap.Devices[0]; d.PacketsOut != 1 || d.BytesOut != 6 {
		t.Fatalf("device counters %+v", d)
	}

	dev.conn.Close()
	waitFor(t, func() bool { return srv.Stats().Devices == 0 })
	if snap = srv.Snapshot(); len(snap.Pairs) != 0 || len(snap.Devices) != 0 {
		t.Fatalf("after the device left: %+v", snap)
	}
}

// waitFor polls cond until it holds, or fails the test after 5s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPeerMarks: marks keep the last devices a client sent to, replacing
// the one unused longest; a pair idle for RelayedWindow is no longer
// relayed; a device not attached is not shown.
func TestPeerMarks(t *testing.T) {
	var m peerMarks
	ids := make([]identity.ID, maxPeerMarks+1)
	byKey := make(map[uint64]identity.ID)
	for i := range ids {
		ids[i] = newIdentity(t).ID()
		byKey[peerKey(ids[i])] = ids[i]
	}
	t0 := time.Unix(1_700_000_000, 0)
	at := func(d time.Duration) int64 { return t0.Add(d).UnixNano() }
	for i := range maxPeerMarks {
		m.mark(peerKey(ids[i]), at(time.Duration(i)*time.Second))
	}
	m.mark(peerKey(ids[0]), at(10*time.Second))         // the first is used again
	m.mark(peerKey(ids[0]), at(10500*time.Millisecond)) // within the second: no store
	m.mark(peerKey(ids[maxPeerMarks]), at(11*time.Second))

	client := relayproto.Addr{ID: newIdentity(t).ID(), Instance: 3}
	got := make(map[identity.ID]Pair)
	for _, p := range m.appendPairs(nil, client, byKey, t0.Add(35*time.Second)) {
		if p.Client != client.ID || p.ClientInstance != 3 {
			t.Fatalf("pair %+v of another client", p)
		}
		got[p.Device] = p
	}
	if len(got) != maxPeerMarks {
		t.Fatalf("%d pairs, want %d", len(got), maxPeerMarks)
	}
	if _, ok := got[ids[1]]; ok {
		t.Error("the device unused longest was kept")
	}
	if p := got[ids[0]]; !p.LastRelayed.Equal(t0.Add(10*time.Second)) || !p.Relayed {
		t.Errorf("pair reused at 10s: %+v at 35s, want relayed at 10s", p)
	}
	if p := got[ids[2]]; p.Relayed {
		t.Errorf("pair last relayed at 2s is relayed at 35s: %+v", p)
	}
	delete(byKey, peerKey(ids[0]))
	if ps := m.appendPairs(nil, client, byKey, t0); len(ps) != maxPeerMarks-1 {
		t.Errorf("%d pairs with a device detached, want %d", len(ps), maxPeerMarks-1)
	}
	var none *peerMarks
	if ps := none.appendPairs(nil, client, byKey, t0); ps != nil {
		t.Errorf("a device's marks gave pairs %+v", ps)
	}
}
