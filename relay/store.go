package relay

import (
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/burrow-tunnel/burrow/identity"
)

// A Store is the relay's own state, kept in an embedded database (bbolt)
// in the relay's data directory: the devices it enrolled, the enrollment
// tokens it issued, and when devices were removed (so that a token issued
// before a device's removal cannot enroll it again). Every change is one transaction, so a crash
// leaves the old state or the new one. A Store is safe for concurrent use;
// one process at a time can open it.
type Store struct {
	db *bolt.DB

	mu       sync.RWMutex
	enrolled map[identity.ID]bool // mirror of the devices bucket; guarded by mu
}

var (
	bucketDevices = []byte("devices")
	bucketTokens  = []byte("tokens")
	bucketRemoved = []byte("removed") // device ID → removedRecord
)

// ErrStoreBusy is returned by [OpenStore] when another process (a running
// relay) has the store open.
var ErrStoreBusy = errors.New("relay state is in use by another process (is the relay running?)")

// OpenStore opens (creating if needed) the store at path.
func OpenStore(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w", path, ErrStoreBusy)
		}
		return nil, fmt.Errorf("open relay state: %w", err)
	}
	s := &Store{db: db, enrolled: make(map[identity.ID]bool)}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDevices, bucketTokens, bucketRemoved} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketDevices).ForEach(func(k, _ []byte) error {
			if len(k) == identity.IDLen {
				s.enrolled[identity.ID(k)] = true
			}
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open relay state: %w", err)
	}
	return s, nil
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// Check reports whether the store can be read, in a read transaction that
// only looks up its buckets: cheap enough for a readiness probe.
func (s *Store) Check() error {
	return s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketDevices) == nil {
			return errors.New("relay store: the devices bucket is missing")
		}
		return nil
	})
}

// Enrolled reports whether the device with id is enrolled.
func (s *Store) Enrolled(id identity.ID) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.enrolled[id]
}

// EnrolledDevice is a device the relay enrolled, or one its device list
// admits (Listed).
type EnrolledDevice struct {
	ID identity.ID `json:"id"`
	// Name is the device's name at the relay: given with its enrollment
	// token, set by [State.SetName], or after its ID in the device list;
	// "" if it has none.
	Name     string    `json:"name,omitempty"`
	Enrolled time.Time `json:"enrolled,omitzero"` // zero for a device only listed
	// Listed marks a device the relay's device list admits and that is
	// not enrolled.
	Listed   bool      `json:"listed,omitempty"`
	Online   bool      `json:"online"`
	LastSeen time.Time `json:"last_seen,omitzero"`
}

type deviceRecord struct {
	Enrolled time.Time `json:"enrolled"`
	Name     string    `json:"name,omitempty"`
}

type removedRecord struct {
	Removed time.Time `json:"removed"`
}

type tokenRecord struct {
	Uses    int       `json:"uses"`           // left
	Name    string    `json:"name,omitempty"` // of the device it enrolls
	Expires time.Time `json:"expires,omitzero"`
	Created time.Time `json:"created"`
}

var tokenEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// tokenKey is what the store keeps of a token: its hash, never the token.
func tokenKey(token string) []byte {
	h := EnrollTokenHash(token)
	return h[:]
}

// CreateToken issues an enrollment token good for uses devices (at least
// 1) until ttl from now (more than 0). The token is returned once; the
// store keeps only its hash.
func (s *Store) CreateToken(uses int, ttl time.Duration) (string, error) {
	return s.createToken(uses, ttl, "")
}

// CreateNamedToken issues a single-use enrollment token valid until ttl
// from now, which gives the device it enrolls the name name.
func (s *Store) CreateNamedToken(name string, ttl time.Duration) (string, error) {
	if err := CheckDeviceName(name); err != nil {
		return "", err
	}
	return s.createToken(1, ttl, name)
}

func (s *Store) createToken(uses int, ttl time.Duration, name string) (string, error) {
	if err := CheckTokenLimits(uses, ttl); err != nil {
		return "", err
	}
	token := NewEnrollToken()
	rec := tokenRecord{Uses: uses, Created: time.Now().UTC(), Name: name}
	rec.Expires = rec.Created.Add(ttl)
	v, _ := json.Marshal(rec)
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).Put(tokenKey(token), v)
	})
	if err != nil {
		return "", fmt.Errorf("save token: %w", err)
	}
	return token, nil
}

// Errors of [Store.Enroll], matched with [errors.Is].
var (
	ErrTokenUnknown = errors.New("enrollment token unknown or used up")
	ErrTokenExpired = errors.New("enrollment token expired")
	// ErrTokenBeforeRemoval: the device was removed after the token was
	// issued; only a token issued since can enroll it again.
	ErrTokenBeforeRemoval = errors.New("enrollment token issued before this device was removed")
)

// Enroll enrolls the device id with token, spending one use of it. A
// device already enrolled needs no token. A device that was removed can
// be enrolled again only with a token issued after its removal: the
// token it enrolled with, still in its configuration, must not undo the
// removal.
func (s *Store) Enroll(id identity.ID, token string) error {
	if s.Enrolled(id) {
		return nil
	}
	now := time.Now().UTC()
	err := s.db.Update(func(tx *bolt.Tx) error {
		tb := tx.Bucket(bucketTokens)
		key := tokenKey(token)
		v := tb.Get(key)
		if v == nil {
			return ErrTokenUnknown
		}
		var rec tokenRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("token record: %w", err)
		}
		if !rec.Expires.IsZero() && now.After(rec.Expires) {
			tb.Delete(key)
			return ErrTokenExpired
		}
		rb := tx.Bucket(bucketRemoved)
		if v := rb.Get(id[:]); v != nil {
			var removed removedRecord
			if err := json.Unmarshal(v, &removed); err != nil {
				return fmt.Errorf("removal record: %w", err)
			}
			if !rec.Created.After(removed.Removed) {
				return fmt.Errorf("%w (removed %s, token issued %s): issue a new token (burrow relay token create) to enroll it again",
					ErrTokenBeforeRemoval, removed.Removed.Format(time.RFC3339), rec.Created.Format(time.RFC3339))
			}
			if err := rb.Delete(id[:]); err != nil {
				return err
			}
		}
		if rec.Uses--; rec.Uses <= 0 {
			if err := tb.Delete(key); err != nil {
				return err
			}
		} else {
			v, _ := json.Marshal(rec)
			if err := tb.Put(key, v); err != nil {
				return err
			}
		}
		d, _ := json.Marshal(deviceRecord{Enrolled: now, Name: rec.Name})
		return tx.Bucket(bucketDevices).Put(id[:], d)
	})
	if errors.Is(err, ErrTokenExpired) {
		// The expired token was deleted; that change is worth keeping,
		// but bbolt rolled it back with the error. Delete it again.
		s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketTokens).Delete(tokenKey(token)) })
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.enrolled[id] = true
	s.mu.Unlock()
	return nil
}

// Add enrolls the device id without a token.
func (s *Store) Add(id identity.ID) error {
	d, _ := json.Marshal(deviceRecord{Enrolled: time.Now().UTC()})
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketRemoved).Delete(id[:]); err != nil {
			return err
		}
		return tx.Bucket(bucketDevices).Put(id[:], d)
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.enrolled[id] = true
	s.mu.Unlock()
	return nil
}

// ErrNotEnrolled is returned by [Store.Remove] for a device not enrolled.
var ErrNotEnrolled = errors.New("device not enrolled")

// Remove un-enrolls the device id, and records when: tokens issued before
// cannot enroll it again.
func (s *Store) Remove(id identity.ID) error {
	r, _ := json.Marshal(removedRecord{Removed: time.Now().UTC()})
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		if b.Get(id[:]) == nil {
			return ErrNotEnrolled
		}
		if err := tx.Bucket(bucketRemoved).Put(id[:], r); err != nil {
			return err
		}
		return b.Delete(id[:])
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.enrolled, id)
	s.mu.Unlock()
	return nil
}

// Devices returns the enrolled devices, oldest enrollment first.
func (s *Store) Devices() ([]EnrolledDevice, error) {
	var out []EnrolledDevice
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var rec deviceRecord
			if len(k) != identity.IDLen || json.Unmarshal(v, &rec) != nil {
				return nil
			}
			out = append(out, EnrolledDevice{ID: identity.ID(k), Enrolled: rec.Enrolled, Name: rec.Name})
			return nil
		})
	})
	slices.SortFunc(out, func(a, b EnrolledDevice) int { return a.Enrolled.Compare(b.Enrolled) })
	return out, err
}

// SetName gives the enrolled device id the name name ("" removes its
// name); ErrNotEnrolled if the device is not enrolled.
func (s *Store) SetName(id identity.ID, name string) error {
	if name != "" {
		if err := CheckDeviceName(name); err != nil {
			return err
		}
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		v := b.Get(id[:])
		if v == nil {
			return ErrNotEnrolled
		}
		var rec deviceRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("device record: %w", err)
		}
		rec.Name = name
		d, _ := json.Marshal(rec)
		return b.Put(id[:], d)
	})
}
