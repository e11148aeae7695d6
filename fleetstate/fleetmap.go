// The fleet map in JetStream: one key of a KV bucket of its own, holding
// the signed map (package fleet). Operators change it with "burrow fleet
// add" and "remove" (an increase of the version, compare-and-swap on the
// KV revision, so that two changes at once cannot both win); relays read
// it at start and watch it while they run.

package fleetstate

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
)

// FleetMapBucket is the KV bucket that holds the fleet map, under the key
// fleetMapKey.
const (
	FleetMapBucket = "burrow_fleet_map"
	fleetMapKey    = "map"
	// fleetMapHistory is how many versions the bucket keeps, for an
	// operator looking back.
	fleetMapHistory = 16
)

var (
	// ErrNoFleetMap is returned (wrapped) when the bucket holds no map
	// yet.
	ErrNoFleetMap = errors.New("no fleet map in NATS yet: add the first relay with \"burrow fleet add\"")
	// ErrFleetMapConflict is returned (wrapped) by [FleetMap.Put] when the
	// map changed since it was read: read it again and retry.
	ErrFleetMapConflict = errors.New("the fleet map changed meanwhile")
)

// A FleetMap is the fleet map's bucket. It is safe for concurrent use.
type FleetMap struct {
	kv jetstream.KeyValue
}

// OpenFleetMap opens the fleet map's bucket, creating it (one replica,
// file storage) if it does not exist; a bucket created otherwise, with
// more replicas say, is used as it is.
func OpenFleetMap(ctx context.Context, js jetstream.JetStream) (*FleetMap, error) {
	kv, err := js.KeyValue(ctx, FleetMapBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      FleetMapBucket,
			Description: "burrow: the fleet's relays, signed by the fleet key",
			History:     fleetMapHistory,
			Storage:     jetstream.FileStorage,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, FleetMapBucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open the fleet map bucket %s: %w", FleetMapBucket, err)
	}
	return &FleetMap{kv: kv}, nil
}

// Get returns the signed map, its decoding (signature checked, not the
// fleet: see [fleet.Verify]) and its KV revision. With no map yet, it
// fails with [ErrNoFleetMap].
func (f *FleetMap) Get(ctx context.Context) (signed []byte, m fleet.Map, rev uint64, err error) {
	e, err := f.kv.Get(ctx, fleetMapKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fleet.Map{}, 0, ErrNoFleetMap
	}
	if err != nil {
		return nil, fleet.Map{}, 0, fmt.Errorf("read the fleet map: %w", err)
	}
	m, err = fleet.ParseMap(e.Value())
	if err != nil {
		return nil, fleet.Map{}, 0, fmt.Errorf("the fleet map in NATS (revision %d): %w", e.Revision(), err)
	}
	return e.Value(), m, e.Revision(), nil
}

// Put stores a signed map in place of the one at KV revision rev (0: the
// bucket holds no map). It fails with [ErrFleetMapConflict] if the map
// changed since rev; and, without writing, if the new map is not newer
// than the one stored or is signed by another fleet's key.
func (f *FleetMap) Put(ctx context.Context, signed []byte, rev uint64) error {
	m, err := fleet.ParseMap(signed)
	if err != nil {
		return err
	}
	if rev == 0 {
		if _, err := f.kv.Create(ctx, fleetMapKey, signed); errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("%w: a map was stored first", ErrFleetMapConflict)
		} else if err != nil {
			return fmt.Errorf("write the fleet map: %w", err)
		}
		return nil
	}
	e, err := f.kv.Get(ctx, fleetMapKey)
	if err != nil {
		return fmt.Errorf("read the fleet map: %w", err)
	}
	if e.Revision() != rev {
		return fmt.Errorf("%w (revision %d, not %d)", ErrFleetMapConflict, e.Revision(), rev)
	}
	if old, err := fleet.ParseMap(e.Value()); err == nil {
		if old.FleetID != m.FleetID {
			return fmt.Errorf("the fleet map in NATS is signed by fleet %s, not by this key (fleet %s): use that fleet's key", old.FleetID, m.FleetID)
		}
		if m.Version <= old.Version {
			return fmt.Errorf("fleet map version %d is not newer than version %d in NATS", m.Version, old.Version)
		}
	}
	if _, err := f.kv.Update(ctx, fleetMapKey, signed, rev); errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("%w: %v", ErrFleetMapConflict, err)
	} else if err != nil {
		return fmt.Errorf("write the fleet map: %w", err)
	}
	return nil
}

// Change applies change to the current map (an empty one if there is
// none) and stores the result, signed by key with the next version. If
// another change came in between, it reads the map again and applies
// change again, a few times. It returns the map stored.
func (f *FleetMap) Change(ctx context.Context, key *identity.Identity, change func(fleet.Map) (fleet.Map, error)) (fleet.Map, error) {
	for range 5 {
		_, cur, rev, err := f.Get(ctx)
		if err != nil && !errors.Is(err, ErrNoFleetMap) {
			return fleet.Map{}, err
		}
		if rev != 0 && cur.FleetID != key.ID() {
			return fleet.Map{}, fmt.Errorf("the fleet map in NATS is signed by fleet %s, not by this key (fleet %s): use that fleet's key", cur.FleetID, key.ID())
		}
		next, err := change(cur)
		if err != nil {
			return fleet.Map{}, err
		}
		next.Version = cur.Version + 1
		signed, err := fleet.AppendMap(nil, next, key)
		if err != nil {
			return fleet.Map{}, err
		}
		err = f.Put(ctx, signed, rev)
		if errors.Is(err, ErrFleetMapConflict) {
			continue
		}
		if err != nil {
			return fleet.Map{}, err
		}
		next.FleetID = key.ID()
		return next, nil
	}
	return fleet.Map{}, fmt.Errorf("%w five times: someone else is changing it; try again", ErrFleetMapConflict)
}

// Watch calls fn with the signed map stored now, if any, and then with
// every new one, on a goroutine of its own, until ctx is done. fn must
// check what it is given (a value in the bucket is not trusted by being
// there). Watch returns once the watch is set up.
func (f *FleetMap) Watch(ctx context.Context, fn func(signed []byte)) error {
	w, err := f.kv.Watch(ctx, fleetMapKey)
	if err != nil {
		return fmt.Errorf("watch the fleet map: %w", err)
	}
	go func() {
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				// nil marks the end of the values stored before the watch.
				if e != nil && e.Operation() == jetstream.KeyValuePut {
					fn(e.Value())
				}
			}
		}
	}()
	return nil
}
