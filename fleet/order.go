package fleet

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"

	"github.com/burrow-tunnel/burrow/identity"
)

// Order returns relays in the order a device with the ID device tries
// them: those of region first (all of them if region is empty or none is
// in it), then the others, each group by rendezvous (highest random
// weight) hashing of the device's ID with the relay's. The first is the
// device's home relay. Every agent and relay computes the same order from
// the same map, and removing a relay moves only the devices whose home it
// was, spread evenly over the relays that remain. relays is not changed.
func Order(device identity.ID, relays []Relay, region string) []Relay {
	out := slices.Clone(relays)
	inRegion := func(r Relay) bool { return region == "" || r.Region == region }
	if !slices.ContainsFunc(out, inRegion) {
		inRegion = func(Relay) bool { return true }
	}
	weights := make(map[identity.ID]uint64, len(out))
	for _, r := range out {
		weights[r.ID] = weight(device, r.ID)
	}
	slices.SortStableFunc(out, func(a, b Relay) int {
		if ia, ib := inRegion(a), inRegion(b); ia != ib {
			if ia {
				return -1
			}
			return 1
		}
		wa, wb := weights[a.ID], weights[b.ID]
		switch {
		case wa > wb:
			return -1
		case wa < wb:
			return 1
		}
		return 0
	})
	return out
}

// weight is the rendezvous weight of relay for device.
func weight(device, relay identity.ID) uint64 {
	h := sha256.New()
	h.Write([]byte("burrow fleet home\x00"))
	h.Write(device[:])
	h.Write(relay[:])
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}
