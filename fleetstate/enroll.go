package fleetstate

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
)

// Enroll enrolls the device id with token, spending one use of it, with
// the meaning of [relay.Store.Enroll]: a device already enrolled needs no
// token, and a removed device only a token issued after its removal. The
// use is spent by a compare-and-swap on the token's revision, so that the
// fleet's relays together spend each use once.
func (s *State) Enroll(id identity.ID, token string) error {
	if s.Enrolled(id) {
		return nil
	}
	ctx, cancel, err := s.op("enroll device")
	if err != nil {
		return err
	}
	defer cancel()
	dev, devRev, err := s.device(ctx, id)
	if err != nil {
		return err
	}
	if devRev != 0 && dev.Removed.IsZero() {
		// Enrolled through another relay a moment ago: the watch has not
		// brought it here yet.
		s.cache(id, dev.Enrolled)
		return nil
	}
	name, err := s.spend(ctx, token, dev.Removed)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	v := encode(deviceRecord{V: FormatVersion, Enrolled: now, Name: name})
	if devRev == 0 {
		_, err = s.devices.Create(ctx, id.String(), v)
	} else {
		_, err = s.devices.Update(ctx, id.String(), v, devRev)
	}
	switch {
	case conflict(err):
		return fmt.Errorf("enroll device: its record changed while it enrolled (it was enrolled or removed through another relay at the same moment): try again")
	case err != nil:
		return s.fail("enroll device", err)
	}
	s.cache(id, now)
	s.cacheName(id, name)
	return nil
}

// device reads the record of the device id from the stream's leader, and
// its revision (0 if there is none).
func (s *State) device(ctx context.Context, id identity.ID) (deviceRecord, uint64, error) {
	e, err := s.devices.Get(ctx, id.String())
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return deviceRecord{}, 0, nil
	}
	if err != nil {
		return deviceRecord{}, 0, s.fail("read device", err)
	}
	rec, err := decode[deviceRecord](e.Value())
	if err != nil {
		return deviceRecord{}, 0, fmt.Errorf("device %s: %w", id, err)
	}
	return rec, e.Revision(), nil
}

// tokenKey is a token's key in the tokens bucket.
func tokenKey(token string) string {
	h := relay.EnrollTokenHash(token)
	return hex.EncodeToString(h[:])
}

// spend spends one use of token, for a device removed at removed (zero if
// never), and returns the name the token gives the device: it reads the token from the stream's leader and writes it back
// with one use less (or deletes it for its last) only if its revision is
// still the one read; if another relay spent a use in between, it reads
// again.
func (s *State) spend(ctx context.Context, token string, removed time.Time) (string, error) {
	key := tokenKey(token)
	for {
		e, err := s.tokens.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return "", relay.ErrTokenUnknown
		}
		if err != nil {
			return "", s.fail("spend enrollment token", err)
		}
		rec, err := decode[tokenRecord](e.Value())
		if err != nil {
			return "", fmt.Errorf("enrollment token: %w", err)
		}
		now := time.Now().UTC()
		if now.After(rec.Expires) {
			// Worth deleting, but the refusal does not depend on it.
			s.tokens.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
			return "", relay.ErrTokenExpired
		}
		if !removed.IsZero() && !rec.Created.After(removed) {
			return "", fmt.Errorf("%w (removed %s, token issued %s): issue a new token (burrow relay token create) to enroll it again",
				relay.ErrTokenBeforeRemoval, removed.Format(time.RFC3339), rec.Created.Format(time.RFC3339))
		}
		if rec.Uses--; rec.Uses <= 0 {
			err = s.tokens.Delete(ctx, key, jetstream.LastRevision(e.Revision()))
		} else {
			_, err = s.tokens.Update(ctx, key, encode(rec), e.Revision())
		}
		switch {
		case err == nil:
			return rec.Name, nil
		case !conflict(err):
			return "", s.fail("spend enrollment token", err)
		case ctx.Err() != nil:
			return "", s.fail("spend enrollment token", ctx.Err())
		}
	}
}

// CreateToken issues an enrollment token good for uses devices (at least
// 1) until ttl from now (more than 0), at any relay of the fleet. The
// token is returned once; the bucket keeps only its hash.
func (s *State) CreateToken(uses int, ttl time.Duration) (string, error) {
	return s.createToken(uses, ttl, "")
}

// CreateNamedToken issues a single-use enrollment token valid until ttl
// from now, which gives the device it enrolls the name name.
func (s *State) CreateNamedToken(name string, ttl time.Duration) (string, error) {
	if err := relay.CheckDeviceName(name); err != nil {
		return "", err
	}
	return s.createToken(1, ttl, name)
}

func (s *State) createToken(uses int, ttl time.Duration, name string) (string, error) {
	if err := relay.CheckTokenLimits(uses, ttl); err != nil {
		return "", err
	}
	ctx, cancel, err := s.op("create enrollment token")
	if err != nil {
		return "", err
	}
	defer cancel()
	token := relay.NewEnrollToken()
	rec := tokenRecord{V: FormatVersion, Uses: uses, Created: time.Now().UTC(), Name: name}
	rec.Expires = rec.Created.Add(ttl)
	if _, err := s.tokens.Create(ctx, tokenKey(token), encode(rec)); err != nil {
		return "", s.fail("create enrollment token", err)
	}
	return token, nil
}

// Add enrolls the device id without a token.
func (s *State) Add(id identity.ID) error {
	ctx, cancel, err := s.op("add device")
	if err != nil {
		return err
	}
	defer cancel()
	now := time.Now().UTC()
	if _, err := s.devices.Put(ctx, id.String(), encode(deviceRecord{V: FormatVersion, Enrolled: now})); err != nil {
		return s.fail("add device", err)
	}
	s.cache(id, now)
	return nil
}

// Remove un-enrolls the device id, and records when: tokens issued before
// cannot enroll it again. Every relay of the fleet sees the removal in its
// watch and disconnects the device if it holds it (see [State.OnRemove]).
func (s *State) Remove(id identity.ID) error {
	err := s.updateEnrolled("remove device", id, func(deviceRecord) deviceRecord {
		return deviceRecord{V: FormatVersion, Removed: time.Now().UTC()}
	})
	if err == nil {
		s.mu.Lock()
		delete(s.enrolled, id)
		delete(s.names, id)
		s.mu.Unlock()
	}
	return err
}

// SetName gives the enrolled device id the name name ("" removes it), by
// a compare-and-swap on its record; every relay's watch sees the change.
func (s *State) SetName(id identity.ID, name string) error {
	if name != "" {
		if err := relay.CheckDeviceName(name); err != nil {
			return err
		}
	}
	err := s.updateEnrolled("name device", id, func(dev deviceRecord) deviceRecord {
		dev.Name = name
		return dev
	})
	if err == nil {
		s.cacheName(id, name)
	}
	return err
}

// updateEnrolled replaces the record of the enrolled device id with
// change(record), by compare-and-swap, again until no other relay's write
// came between; what names the operation in errors. It fails with
// relay.ErrNotEnrolled if the device is not enrolled.
func (s *State) updateEnrolled(what string, id identity.ID, change func(deviceRecord) deviceRecord) error {
	ctx, cancel, err := s.op(what)
	if err != nil {
		return err
	}
	defer cancel()
	for {
		dev, rev, err := s.device(ctx, id)
		if err != nil {
			return err
		}
		if rev == 0 || !dev.Removed.IsZero() {
			return relay.ErrNotEnrolled
		}
		_, err = s.devices.Update(ctx, id.String(), encode(change(dev)), rev)
		switch {
		case err == nil:
			return nil
		case !conflict(err):
			return s.fail(what, err)
		case ctx.Err() != nil:
			return s.fail(what, ctx.Err())
		}
	}
}

// cacheName records in memory the name of the enrolled device id.
func (s *State) cacheName(id identity.ID, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.enrolled[id]; !ok || name == "" {
		delete(s.names, id)
		return
	}
	s.names[id] = name
}

// cache records in memory that the device id is enrolled since t.
func (s *State) cache(id identity.ID, t time.Time) {
	s.mu.Lock()
	s.enrolled[id] = unixNano(t)
	s.mu.Unlock()
}
