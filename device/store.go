package device

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/burrow-tunnel/burrow/identity"
)

// The device's state: paired users and pending invites, in an embedded
// database (bbolt) in the state directory. Every change is one
// transaction, written and synced before it is acknowledged, so a crash at
// any point leaves the old state or the new one. Invites are stored by
// verifier and relay token only, never by their secret.

// A User is a client the device lets in.
type User struct {
	ID       identity.ID `json:"id"`
	Name     string      `json:"name"`
	Role     string      `json:"role,omitempty"`     // paired users
	Services []string    `json:"services,omitempty"` // users from the config file
	Paired   time.Time   `json:"paired,omitzero"`
	LastSeen time.Time   `json:"last_seen,omitzero"`
	// FromConfig marks a user listed under clients in the config file: it
	// is changed there, not by pairing or revocation.
	FromConfig bool `json:"from_config,omitempty"`
}

// An invite waiting for its client.
type pendingInvite struct {
	Verifier   [32]byte  `json:"verifier"`
	RelayToken [32]byte  `json:"relay_token"`
	Role       string    `json:"role"`
	Name       string    `json:"name,omitempty"` // the user's name, once paired
	Created    time.Time `json:"created"`
	Expires    time.Time `json:"expires"`
}

var (
	bucketUsers   = []byte("users")
	bucketInvites = []byte("invites")
)

type store struct{ db *bolt.DB }

// ErrStateBusy is returned when another process (a running device agent)
// has the state open.
var ErrStateBusy = errors.New("device state is in use by another process (is the device agent running?)")

// openStore opens (creating if needed) the store in dir.
func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	path := filepath.Join(dir, "device.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w", path, ErrStateBusy)
		}
		return nil, fmt.Errorf("open device state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketUsers, bucketInvites} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open device state %s: %w", path, err)
	}
	return &store{db: db}, nil
}

func (st *store) close() error { return st.db.Close() }

// load returns the paired users and the pending invites.
func (st *store) load() (map[identity.ID]User, map[[32]byte]pendingInvite, error) {
	users := make(map[identity.ID]User)
	invites := make(map[[32]byte]pendingInvite)
	err := st.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketUsers).ForEach(func(k, v []byte) error {
			var u User
			if len(k) != identity.IDLen || json.Unmarshal(v, &u) != nil {
				return fmt.Errorf("user record %x is corrupt", k)
			}
			users[u.ID] = u
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketInvites).ForEach(func(k, v []byte) error {
			var in pendingInvite
			if json.Unmarshal(v, &in) != nil {
				return fmt.Errorf("invite record %x is corrupt", k)
			}
			invites[in.Verifier] = in
			return nil
		})
	})
	return users, invites, err
}

func (st *store) addInvite(in pendingInvite) error {
	v, _ := json.Marshal(in)
	return st.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketInvites).Put(in.Verifier[:], v)
	})
}

// Errors of redeeming an invite.
var (
	ErrInviteUnknown = errors.New("invite unknown or already used")
	ErrInviteExpired = errors.New("invite expired")
)

// redeem spends the invite with verifier on client, in one transaction:
// the invite is gone and the user is there, or neither changed. A user
// name already taken gets a suffix.
func (st *store) redeem(verifier [32]byte, client identity.ID, now time.Time) (User, error) {
	var u User
	err := st.db.Update(func(tx *bolt.Tx) error {
		ib, ub := tx.Bucket(bucketInvites), tx.Bucket(bucketUsers)
		v := ib.Get(verifier[:])
		if v == nil {
			return ErrInviteUnknown
		}
		var in pendingInvite
		if err := json.Unmarshal(v, &in); err != nil {
			return fmt.Errorf("invite record: %w", err)
		}
		if now.After(in.Expires) {
			return ErrInviteExpired
		}
		if err := ib.Delete(verifier[:]); err != nil {
			return err
		}
		base := in.Name
		if base == "" {
			base = "user-" + client.Short()
		}
		taken := func(n string) bool {
			found := false
			ub.ForEach(func(k, v []byte) error {
				var other User
				if json.Unmarshal(v, &other) == nil && other.Name == n && other.ID != client {
					found = true
				}
				return nil
			})
			return found
		}
		name := base
		for i := 2; taken(name); i++ {
			name = fmt.Sprintf("%s-%d", base, i)
		}
		u = User{ID: client, Name: name, Role: in.Role, Paired: now.UTC()}
		rec, _ := json.Marshal(u)
		return ub.Put(client[:], rec)
	})
	return u, err
}

// revoke removes the paired user id.
func (st *store) revoke(id identity.ID) error {
	return st.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUsers).Delete(id[:])
	})
}

// touch records when a user was last seen.
func (st *store) touch(id identity.ID, seen time.Time) error {
	return st.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketUsers)
		v := b.Get(id[:])
		if v == nil {
			return nil // revoked meanwhile
		}
		var u User
		if err := json.Unmarshal(v, &u); err != nil {
			return err
		}
		u.LastSeen = seen.UTC()
		rec, _ := json.Marshal(u)
		return b.Put(id[:], rec)
	})
}

// dropInvites deletes the invites with these verifiers.
func (st *store) dropInvites(verifiers [][32]byte) error {
	return st.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketInvites)
		for _, v := range verifiers {
			if err := b.Delete(v[:]); err != nil {
				return err
			}
		}
		return nil
	})
}
