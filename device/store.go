package device

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/fileperm"
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

// The store is safe for concurrent use. When the state directory cannot be
// written (its file system is full, read-only or not the agent's), the
// store still serves what it holds, read-only if need be, and each write
// fails with a [*StateError]; a write tries the directory again, so the
// store recovers once the directory is writable, without a restart.
type store struct {
	dir, path string

	mu sync.Mutex // serializes every use of db, and reopening it
	// db is nil when nothing can be read (no state was ever saved and the
	// directory cannot be written). Guarded by mu.
	db *bolt.DB
	// ro: db is open read-only, the directory not being writable when it
	// was opened; writeErr says why. Guarded by mu.
	ro       bool
	writeErr error
}

// ErrStateBusy is returned when another process (a running device agent)
// has the state open.
var ErrStateBusy = errors.New("device state is in use by another process (is the device agent running?)")

// openStore opens (creating if needed) the store in dir. A directory that
// cannot be written is no error: the store then serves what it holds, and
// writable says why it cannot save. A directory that another user owns or
// may write is an error (matching [identity.ErrUnsafePermissions]), before
// anything in it is read: that user could decide whom the device lets in.
func openStore(dir string) (*store, error) {
	os.MkdirAll(dir, 0o700) // if it fails, openLocked says why
	if err := fileperm.CheckDir(dir, "state directory"); err != nil {
		return nil, err
	}
	st := &store{dir: dir, path: filepath.Join(dir, "device.db")}
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := st.openLocked(); err != nil {
		return nil, err
	}
	return st, nil
}

// openLocked opens the database read-write or, if the directory cannot be
// written, read-only, recording why in writeErr. It fails only when the
// state cannot be read at all, or another process has it.
func (st *store) openLocked() error {
	st.db, st.ro, st.writeErr = nil, false, nil
	err := os.MkdirAll(st.dir, 0o700)
	if err != nil {
		err = fmt.Errorf("state directory: %w", err)
	} else {
		var db *bolt.DB
		if db, err = openDB(st.path, false); err == nil {
			st.db = db
			return nil
		}
	}
	if errors.Is(err, ErrStateBusy) || stateCause(st.dir, err) == nil {
		return err
	}
	st.writeErr = &StateError{Dir: st.dir, Cause: stateCause(st.dir, err), Err: err}
	db, rerr := openDB(st.path, true)
	switch {
	case rerr == nil:
		st.db, st.ro = db, true
	case errors.Is(rerr, fs.ErrNotExist):
		// Nothing was ever saved: there is nothing to serve.
	default:
		return rerr
	}
	return nil
}

// openDB opens the database at path, read-only or read-write (then with
// its buckets).
func openDB(path string, readOnly bool) (*bolt.DB, error) {
	_, statErr := os.Stat(path)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: readOnly})
	if err != nil {
		if !readOnly && errors.Is(statErr, fs.ErrNotExist) {
			// A file half written (the disk filled up) would not open
			// next time: make it again then.
			os.Remove(path)
		}
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w", path, ErrStateBusy)
		}
		return nil, fmt.Errorf("open device state %s: %w", path, err)
	}
	if readOnly {
		return db, nil
	}
	// An update writes even when it changes nothing: make the buckets only
	// if they are missing, so that a full disk does not stop the start.
	err = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketUsers) == nil || tx.Bucket(bucketInvites) == nil {
			return errNoBuckets
		}
		return nil
	})
	if err != nil {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketUsers, bucketInvites} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open device state %s: %w", path, err)
	}
	return db, nil
}

var errNoBuckets = errors.New("no buckets")

func (st *store) close() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.db == nil {
		return nil
	}
	err := st.db.Close()
	st.db = nil
	return err
}

// writable returns why the store cannot save, or nil if, when last tried,
// it could.
func (st *store) writable() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.writeErr
}

// update runs fn in a write transaction, and reports a failure to commit
// it as a [*StateError]. Errors of fn itself are returned as they are, even
// when the store cannot be written: a wrong invite is still told apart
// from a failure to save a right one.
func (st *store) update(fn func(*bolt.Tx) error) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.writeErr != nil {
		// Not writable when last tried: it may be again (space freed,
		// file system remounted).
		st.reopenLocked()
	}
	if st.db == nil {
		return st.writeErr
	}
	if st.ro {
		err := st.db.View(func(tx *bolt.Tx) error {
			if tx.Bucket(bucketUsers) == nil || tx.Bucket(bucketInvites) == nil {
				return st.writeErr
			}
			return fn(tx)
		})
		if errors.Is(err, berrors.ErrTxNotWritable) {
			return st.writeErr
		}
		return err
	}
	var fnErr error
	err := st.db.Update(func(tx *bolt.Tx) error {
		fnErr = fn(tx)
		return fnErr
	})
	if err == nil || fnErr != nil {
		return err
	}
	// The commit failed and bbolt rolled it back: nothing of it counts,
	// and what was stored before is intact (bbolt writes new pages, then
	// the meta page that points to them). The next write opens the
	// database again first, so that it starts from a handle as fresh as
	// after a restart.
	st.writeErr = &StateError{Dir: st.dir, Cause: stateCause(st.dir, err), Err: err}
	return st.writeErr
}

// reopenLocked closes and opens the database again.
func (st *store) reopenLocked() {
	if st.db != nil {
		st.db.Close()
	}
	if err := st.openLocked(); err != nil {
		st.writeErr = &StateError{Dir: st.dir, Err: err}
	}
}

// load returns the paired users and the pending invites.
func (st *store) load() (map[identity.ID]User, map[[32]byte]pendingInvite, error) {
	users := make(map[identity.ID]User)
	invites := make(map[[32]byte]pendingInvite)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.db == nil {
		return users, invites, nil
	}
	err := st.db.View(func(tx *bolt.Tx) error {
		ub, ib := tx.Bucket(bucketUsers), tx.Bucket(bucketInvites)
		if ub == nil || ib == nil {
			return nil // never written
		}
		err := ub.ForEach(func(k, v []byte) error {
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
		return ib.ForEach(func(k, v []byte) error {
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
	return st.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketInvites).Put(in.Verifier[:], v)
	})
}

// Errors of redeeming an invite.
var (
	ErrInviteUnknown = errors.New("invite unknown or already used")
	ErrInviteExpired = errors.New("invite expired")
)

// A redeemed invite: the user it made, and what that changed.
type redeemed struct {
	User
	// Was is the client's record before, if it was paired already: its
	// role and name may have changed.
	Was *User
	// Asked is the name the invite asked for, if another user had it and
	// User.Name is that name with a suffix; "" otherwise.
	Asked string
}

// redeem spends the invite with verifier on client, in one transaction:
// the invite is gone and the user is there, or neither changed. A user
// name already taken gets a suffix. A client paired already keeps its
// name, unless the invite names another; it gets the invite's role.
func (st *store) redeem(verifier [32]byte, client identity.ID, now time.Time) (redeemed, error) {
	var r redeemed
	err := st.update(func(tx *bolt.Tx) error {
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
		if v := ub.Get(client[:]); v != nil {
			var was User
			if json.Unmarshal(v, &was) == nil {
				r.Was = &was
			}
		}
		base := in.Name
		if base == "" && r.Was != nil {
			base = r.Was.Name
		}
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
		if name != base && base == in.Name {
			r.Asked = base
		}
		r.User = User{ID: client, Name: name, Role: in.Role, Paired: now.UTC()}
		rec, _ := json.Marshal(r.User)
		return ub.Put(client[:], rec)
	})
	if err != nil {
		return redeemed{}, err
	}
	return r, nil
}

// revoke removes the paired user id.
func (st *store) revoke(id identity.ID) error {
	return st.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUsers).Delete(id[:])
	})
}

// touch records when a user was last seen.
func (st *store) touch(id identity.ID, seen time.Time) error {
	return st.update(func(tx *bolt.Tx) error {
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

// cancelInvite deletes the invite with this verifier, reporting whether
// it was still there: a pairing may have redeemed it a moment before.
func (st *store) cancelInvite(verifier [32]byte) (bool, error) {
	var found bool
	err := st.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketInvites)
		if found = b.Get(verifier[:]) != nil; !found {
			return nil
		}
		return b.Delete(verifier[:])
	})
	return found, err
}

// dropInvites deletes the invites with these verifiers.
func (st *store) dropInvites(verifiers [][32]byte) error {
	return st.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketInvites)
		for _, v := range verifiers {
			if err := b.Delete(v[:]); err != nil {
				return err
			}
		}
		return nil
	})
}
