package fleetstate

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/burrow-tunnel/burrow/identity"
)

// checkEvery is how often the watch looks at the NATS connection: a
// reconnection starts the watch over.
const checkEvery = 200 * time.Millisecond

// errReconnected ends a watch whose connection to NATS was lost and found
// again.
var errReconnected = errors.New("NATS connection re-established")

// resumeWatch runs watch until ctx is done, starting it over whenever it
// returns: at once after errReconnected (the connection to NATS came back,
// and a new watch reads every record again), a second later after any
// other error, which it logs as what failed, calling failed first. watch
// calls its loaded argument once its first full read is done; loaded is
// closed the first time.
func resumeWatch(ctx context.Context, log *slog.Logger, what string, loaded chan struct{},
	watch func(ctx context.Context, loaded func()) error, failed func()) {
	var once sync.Once
	markLoaded := func() { once.Do(func() { close(loaded) }) }
	for ctx.Err() == nil {
		err := watch(ctx, markLoaded)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errReconnected) {
			log.Info(what + ": NATS is back; reading it again")
			continue
		}
		log.Warn(what+": watch failed; answering from what the relay knew; retrying", "err", err)
		if failed != nil {
			failed()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// watchLoop keeps the copy of the enrolled devices current until ctx is
// done: it watches the devices bucket and, whenever the connection to NATS
// comes back after a loss, or the watch fails, starts over. Each start
// reads every device's latest record first, so that removals made while
// this relay could not hear of them are applied then. loaded is closed
// once the first full read is done.
func (s *State) watchLoop(ctx context.Context, loaded chan struct{}) {
	defer close(s.done)
	resumeWatch(ctx, s.log, "fleet state", loaded, s.watch, nil)
}

// watch watches the devices bucket until ctx is done, the watch fails, or
// the connection to NATS was re-established (errReconnected).
func (s *State) watch(ctx context.Context, loaded func()) error {
	for !s.nc.IsConnected() {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(checkEvery):
		}
	}
	reconnects := s.nc.Stats().Reconnects
	w, err := s.devices.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	tick := time.NewTicker(checkEvery)
	defer tick.Stop()
	seen := make(map[identity.ID]bool) // during the first read; nil after
	connected := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return errors.New("the watch ended")
			case e == nil:
				s.sweep(seen)
				seen = nil
				loaded()
			default:
				id, ok := s.apply(e, seen == nil)
				if ok && seen != nil {
					seen[id] = true
				}
			}
		case <-tick.C:
			if s.nc.Stats().Reconnects != reconnects {
				return errReconnected
			}
			if now := s.nc.IsConnected(); now != connected {
				if connected = now; !now {
					s.log.Warn("fleet state: NATS is unreachable; the relay admits only the devices it knows to be enrolled, and enrolls, issues tokens for and removes none until it is back")
				}
			}
		}
	}
}

// apply records e, a device's latest record, in the copy of the enrolled
// devices, and reports the device's ID. A device no longer enrolled is
// handed to OnRemove if it was enrolled here, or if e is a change made
// now (not part of the first read: a device removed long ago needs no
// disconnecting).
func (s *State) apply(e jetstream.KeyValueEntry, live bool) (identity.ID, bool) {
	id, err := identity.ParseID(e.Key())
	if err != nil {
		s.log.Warn("fleet state: key in the devices bucket is not a device ID; ignored", "key", e.Key())
		return id, false
	}
	var since time.Time
	var name string
	enrolled := false
	if e.Operation() == jetstream.KeyValuePut {
		rec, err := decode[deviceRecord](e.Value())
		switch {
		case err != nil:
			// Fail closed: a record this relay cannot read enrolls no one.
			s.log.Warn("fleet state: device record unreadable; the device counts as not enrolled", "id", id.String(), "err", err)
		case rec.Removed.IsZero() && !rec.Enrolled.IsZero():
			since, name, enrolled = rec.Enrolled, rec.Name, true
		}
	}
	s.mu.Lock()
	_, was := s.enrolled[id]
	if enrolled {
		s.enrolled[id] = unixNano(since)
	} else {
		delete(s.enrolled, id)
	}
	if enrolled && name != "" {
		s.names[id] = name
	} else {
		delete(s.names, id)
	}
	f := s.onRemove
	s.mu.Unlock()
	if !enrolled && (was || live) && f != nil {
		f(id)
	}
	return id, true
}

// sweep ends a first read that saw the devices of seen: any other device
// the copy held has lost its key altogether (a bucket purged or made
// again) and is no longer enrolled.
func (s *State) sweep(seen map[identity.ID]bool) {
	var gone []identity.ID
	s.mu.Lock()
	for id := range s.enrolled {
		if !seen[id] {
			gone = append(gone, id)
			delete(s.enrolled, id)
			delete(s.names, id)
		}
	}
	f := s.onRemove
	s.mu.Unlock()
	if f != nil {
		for _, id := range gone {
			f(id)
		}
	}
}
