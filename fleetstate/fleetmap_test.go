package fleetstate

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/natstest"
)

func openFleetMap(t *testing.T, url string) *FleetMap {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	f, err := OpenFleetMap(t.Context(), js)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func relayN(n byte) fleet.Relay {
	return fleet.Relay{ID: identity.ID{n, 1}, Addr: "127.0.0.1:443", Region: "eu"}
}

// TestFleetMapStore: the map is stored, read and changed with a version
// that increases; a change based on a stale read loses; a map of another
// fleet or an older version is refused; a watcher sees every new map.
func TestFleetMapStore(t *testing.T) {
	ns := natstest.Start(t)
	f := openFleetMap(t, ns.URL())
	ctx := t.Context()
	key, _ := identity.Generate()
	other, _ := identity.Generate()

	if _, _, _, err := f.Get(ctx); !errors.Is(err, ErrNoFleetMap) {
		t.Fatalf("Get of an empty bucket: %v", err)
	}
	var (
		mu   sync.Mutex
		seen []uint64
	)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	if err := f.Watch(wctx, func(b []byte) {
		m, err := fleet.Verify(b, key.ID())
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			seen = append(seen, m.Version)
		}
	}); err != nil {
		t.Fatal(err)
	}

	add := func(r fleet.Relay) func(fleet.Map) (fleet.Map, error) {
		return func(m fleet.Map) (fleet.Map, error) { return m.With(r), nil }
	}
	m, err := f.Change(ctx, key, add(relayN(1)))
	if err != nil || m.Version != 1 || len(m.Relays) != 1 {
		t.Fatalf("first change: %+v, %v", m, err)
	}
	if _, err := f.Change(ctx, key, add(relayN(2))); err != nil {
		t.Fatal(err)
	}
	signed, got, rev, err := f.Get(ctx)
	if err != nil || got.Version != 2 || len(got.Relays) != 2 || got.FleetID != key.ID() {
		t.Fatalf("Get: %+v, %v", got, err)
	}
	if _, err := fleet.Verify(signed, key.ID()); err != nil {
		t.Fatal(err)
	}

	sign := func(k *identity.Identity, m fleet.Map) []byte {
		b, err := fleet.AppendMap(nil, m, k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// A write based on revision rev wins once; the second, on the same
	// stale revision, loses.
	v3 := got.Without(relayN(1).ID)
	v3.Version = 3
	if err := f.Put(ctx, sign(key, v3), rev); err != nil {
		t.Fatalf("Put on the current revision: %v", err)
	}
	v4 := v3
	v4.Version = 4
	if err := f.Put(ctx, sign(key, v4), rev); !errors.Is(err, ErrFleetMapConflict) {
		t.Errorf("Put on a stale revision: %v, want a conflict", err)
	}
	if err := f.Put(ctx, sign(key, v3), 0); !errors.Is(err, ErrFleetMapConflict) {
		t.Errorf("Put as the first map: %v, want a conflict", err)
	}
	_, _, rev, _ = f.Get(ctx)
	old := v3
	old.Version = 2
	if err := f.Put(ctx, sign(key, old), rev); err == nil || !strings.Contains(err.Error(), "not newer") {
		t.Errorf("Put of an older version: %v", err)
	}
	if err := f.Put(ctx, sign(other, v4), rev); err == nil || !strings.Contains(err.Error(), "use that fleet's key") {
		t.Errorf("Put by another fleet's key: %v", err)
	}
	if _, err := f.Change(ctx, other, add(relayN(3))); err == nil || !strings.Contains(err.Error(), "use that fleet's key") {
		t.Errorf("Change with another fleet's key: %v", err)
	}

	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(seen)
		s := append([]uint64(nil), seen...)
		mu.Unlock()
		if n >= 3 {
			if s[0] != 1 || s[1] != 2 || s[2] != 3 || n != 3 {
				t.Errorf("watched versions %v, want [1 2 3]", s)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watched versions %v, want [1 2 3]", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFleetMapChangesAtOnce: changes made at the same time from two
// connections all land, each once, at a version of its own.
func TestFleetMapChangesAtOnce(t *testing.T) {
	ns := natstest.Start(t)
	f1, f2 := openFleetMap(t, ns.URL()), openFleetMap(t, ns.URL())
	key, _ := identity.Generate()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i, f := range []*FleetMap{f1, f2, f1, f2} {
		wg.Go(func() {
			_, err := f.Change(t.Context(), key, func(m fleet.Map) (fleet.Map, error) { return m.With(relayN(byte(i + 1))), nil })
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	_, m, _, err := f1.Get(t.Context())
	if err != nil || m.Version != 4 || len(m.Relays) != 4 {
		t.Fatalf("after four changes at once: version %d, %d relays, %v", m.Version, len(m.Relays), err)
	}
}
