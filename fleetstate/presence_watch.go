package fleetstate

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/burrow-tunnel/burrow/identity"
)

// watchLoop keeps the presence map and the live relays current until ctx
// is done, as State.watchLoop keeps the enrolled devices: whenever the
// connection to NATS comes back after a loss, or a watch fails, it starts
// over from a full read of both buckets. loaded is closed once the first
// full read is done.
func (p *Presence) watchLoop(ctx context.Context, loaded chan struct{}) {
	defer p.wg.Done()
	resumeWatch(ctx, p.log, "presence", loaded, p.watch, p.freeze)
}

// freeze stops liveness from lapsing while this relay cannot hear the
// refreshes: it is this relay that is cut off, not the others.
func (p *Presence) freeze() {
	p.mu.Lock()
	if p.frozen.IsZero() {
		p.frozen = time.Now()
	}
	p.mu.Unlock()
}

// watch watches both buckets until ctx is done, a watch fails, or the
// connection to NATS was re-established (errReconnected).
func (p *Presence) watch(ctx context.Context, loaded func()) error {
	for !p.nc.IsConnected() {
		p.freeze()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(checkEvery):
		}
	}
	reconnects := p.nc.Stats().Reconnects
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wp, err := p.presence.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer wp.Stop()
	wr, err := p.relays.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer wr.Stop()
	tick := time.NewTicker(checkEvery)
	defer tick.Stop()
	// The keys seen during the first read of each bucket; nil after.
	seenDevices, seenRelays := make(map[identity.ID]bool), make(map[identity.ID]bool)
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-wp.Updates():
			switch {
			case !ok:
				return errors.New("the watch of the presence bucket ended")
			case e == nil:
				p.sweepDevices(seenDevices)
				seenDevices = nil
			default:
				if id, ok := p.applyPresence(e); ok && seenDevices != nil {
					seenDevices[id] = true
				}
			}
		case e, ok := <-wr.Updates():
			switch {
			case !ok:
				return errors.New("the watch of the relays bucket ended")
			case e == nil:
				p.sweepRelays(seenRelays)
				seenRelays = nil
			default:
				if id, ok := p.applyLiveness(e, seenRelays != nil); ok && seenRelays != nil {
					seenRelays[id] = true
				}
			}
		case <-tick.C:
			if p.nc.Stats().Reconnects != reconnects {
				return errReconnected
			}
			if !p.nc.IsConnected() {
				p.freeze()
			}
		}
		if seenDevices == nil && seenRelays == nil {
			p.thaw()
			loaded()
		}
	}
}

// thaw lets liveness lapse again, once the watches have caught up.
func (p *Presence) thaw() {
	p.mu.Lock()
	if !p.frozen.IsZero() && p.nc.IsConnected() {
		p.frozen = time.Time{}
	}
	p.mu.Unlock()
}

// applyPresence records e, a device's latest presence record, and reports
// the device's ID. It calls OnTaken if e is a newer change than this
// relay's record of a device attached here, and queues the deletion of a
// record of this relay's for a device not attached here (left by an
// earlier run of this relay, or by a write whose answer was lost).
func (p *Presence) applyPresence(e jetstream.KeyValueEntry) (identity.ID, bool) {
	id, err := identity.ParseID(e.Key())
	if err != nil {
		p.log.Warn("presence: key in the presence bucket is not a device ID; ignored", "key", e.Key())
		return id, false
	}
	var rec presenceRecord
	var holder identity.ID
	put := e.Operation() == jetstream.KeyValuePut
	if put {
		if rec, err = decode[presenceRecord](e.Value()); err == nil {
			holder, err = identity.ParseID(rec.Relay)
		}
		if err != nil {
			p.log.Warn("presence: record unreadable; the device counts as nowhere", "id", id.String(), "err", err)
			put = false
		}
	}
	p.mu.Lock()
	if put {
		p.entries[id] = entry{relay: p.relayIndexLocked(holder), rev: e.Revision()}
	} else {
		delete(p.entries, id)
	}
	o := p.mine[id]
	taken := o != nil && o.attached && !o.dirty && !o.busy && o.rev != 0 && e.Revision() > o.rev && (!put || holder != p.self)
	if o == nil && put && holder == p.self {
		o = &own{rev: e.Revision(), dirty: true}
		p.mine[id] = o
		p.enqueueLocked(id, o)
	}
	f := p.onTaken
	p.mu.Unlock()
	if taken && f != nil {
		f(id)
	}
	return id, true
}

// sweepDevices ends a first read that saw the devices of seen: the others
// have no record any more.
func (p *Presence) sweepDevices(seen map[identity.ID]bool) {
	p.mu.Lock()
	for id := range p.entries {
		if !seen[id] {
			delete(p.entries, id)
		}
	}
	p.mu.Unlock()
}

// applyLiveness records e, a relay's liveness key, and reports the
// relay's ID. The key counts for the TTL it states from when this relay
// saw it written: from now for a change seen as it happens, from when
// NATS stored it (no earlier than a TTL ago) during a first read.
func (p *Presence) applyLiveness(e jetstream.KeyValueEntry, firstRead bool) (identity.ID, bool) {
	r, err := identity.ParseID(e.Key())
	if err != nil {
		p.log.Warn("presence: key in the relays bucket is not a relay ID; ignored", "key", e.Key())
		return r, false
	}
	var exp time.Time
	if e.Operation() == jetstream.KeyValuePut {
		rec, err := decode[livenessRecord](e.Value())
		if err != nil {
			p.log.Warn("presence: liveness record unreadable; the relay counts as not live", "relay", r.String(), "err", err)
		} else {
			ttl := time.Duration(rec.TTLms) * time.Millisecond
			now := time.Now()
			written := now
			if c := e.Created(); firstRead && c.Before(now) {
				written = c
				if oldest := now.Add(-ttl); c.Before(oldest) {
					written = oldest
				}
			}
			exp = written.Add(ttl)
		}
	}
	p.mu.Lock()
	if exp.IsZero() {
		delete(p.expires, r)
	} else {
		p.expires[r] = exp
	}
	p.mu.Unlock()
	return r, true
}

// sweepRelays ends a first read that saw the relays of seen: the others'
// keys are gone.
func (p *Presence) sweepRelays(seen map[identity.ID]bool) {
	p.mu.Lock()
	for r := range p.expires {
		if !seen[r] {
			delete(p.expires, r)
		}
	}
	p.mu.Unlock()
}
