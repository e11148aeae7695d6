package device

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"time"

	berrors "go.etcd.io/bbolt/errors"
)

// Why the state directory cannot be written, matched with [errors.Is]
// against a [*StateError].
var (
	ErrStateFull     = errors.New("state directory is full")
	ErrStateReadOnly = errors.New("state directory is read-only")
	ErrStateDenied   = errors.New("state directory is not writable by the agent")
)

// A StateError reports that the device could not save to its state
// directory. The device goes on serving the users it has; what needed
// saving (an invite, a pairing) did not happen, and can be done again once
// the directory is writable. A revocation is the exception: it is in force
// at once, and saved later ([ErrRevocationNotSaved]).
type StateError struct {
	Dir   string // the state directory
	Cause error  // ErrStateFull, ErrStateReadOnly, ErrStateDenied, or nil if unknown
	Err   error  // what failed
}

func (e *StateError) Error() string {
	if fix := e.fix(); fix != "" {
		return e.problem() + ": " + fix + "; paired users can still connect"
	}
	return e.problem()
}

// problem says what is wrong with the state directory.
func (e *StateError) problem() string {
	switch e.Cause {
	case ErrStateFull:
		return fmt.Sprintf("state directory %s is full (no space left on its file system)", e.Dir)
	case ErrStateReadOnly:
		return fmt.Sprintf("state directory %s is read-only (its file system is mounted read-only, or the kernel made it read-only after a storage error)", e.Dir)
	case ErrStateDenied:
		return fmt.Sprintf("state directory %s is not writable by this agent (permission denied)", e.Dir)
	}
	return fmt.Sprintf("writing state directory %s failed: %v", e.Dir, e.Err)
}

// fix says what the device's owner can do about it, or "".
func (e *StateError) fix() string {
	switch e.Cause {
	case ErrStateFull:
		return "free some space there"
	case ErrStateReadOnly:
		return "check the storage and make it writable"
	case ErrStateDenied:
		return "give the user it runs as write access to it"
	}
	return ""
}

func (e *StateError) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Err}
	}
	return []error{e.Cause, e.Err}
}

// clientDetail says, to the client whose pairing could not be stored, why
// and what to do; it names no path of the device.
func (e *StateError) clientDetail() string {
	why := "its storage failed"
	switch e.Cause {
	case ErrStateFull:
		why = "its storage is full"
	case ErrStateReadOnly:
		why = "its storage is read-only"
	case ErrStateDenied:
		why = "its storage is not writable"
	}
	return "the device could not store the pairing: " + why + "; the invite stays valid: use it again once the device's owner has fixed that"
}

// stateCause tells why writing the state directory dir failed with err:
// ErrStateFull, ErrStateReadOnly, ErrStateDenied, or nil for another
// reason (an I/O error, a corrupt file).
func stateCause(dir string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return ErrStateFull
	case errors.Is(err, syscall.EROFS), errors.Is(err, berrors.ErrDatabaseReadOnly):
		return ErrStateReadOnly
	case errors.Is(err, fs.ErrPermission):
		return ErrStateDenied
	}
	// bbolt reports some failures as text only (growing the file): ask
	// the file system.
	return fsCause(dir)
}

// A failureLog rate-limits the warnings of a failure that may repeat on
// every session: the first, then one per failureLogEvery at most.
type failureLog struct {
	failing    bool
	logged     time.Time
	suppressed int
}

const failureLogEvery = 10 * time.Minute

// touched logs the result of recording when a user was last seen. Its
// failure (a full or read-only state directory) affects nothing else, so
// it is logged once, then at most every failureLogEvery.
func (d *Device) touched(err error) {
	now := time.Now()
	d.mu.Lock()
	l := &d.seenLog
	var logIt bool
	var suppressed int
	switch {
	case err != nil && (!l.failing || now.Sub(l.logged) >= failureLogEvery):
		logIt, suppressed = true, l.suppressed
		l.failing, l.logged, l.suppressed = true, now, 0
	case err != nil:
		l.suppressed++
	case l.failing:
		logIt, suppressed = true, l.suppressed
		l.failing, l.suppressed = false, 0
	}
	d.mu.Unlock()
	switch {
	case !logIt:
	case err != nil:
		d.log.Warn("cannot record when users were last seen (tunnels are not affected)",
			"err", err, "failures_not_logged", suppressed, "next_log_after", failureLogEvery.String())
	default:
		d.log.Info("recording when users were last seen works again", "failures_not_logged", suppressed)
	}
}
