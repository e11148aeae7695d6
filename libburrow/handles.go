package main

import (
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
)

// The handle table maps the ints C holds to the objects behind them, and
// keeps the last error message of each handle. Handle 0 is never an
// object: it keeps the errors of calls that had no valid handle.
var table = struct {
	mu   sync.Mutex
	next int32            // the last handle given out; guarded by mu
	objs map[int32]any    // *libClient or *libForward; guarded by mu
	msgs map[int32]string // last error of each open handle and of 0; guarded by mu
}{objs: make(map[int32]any), msgs: make(map[int32]string)}

// add registers obj and returns its handle, or 0 if none is left.
func add(obj any) int32 {
	table.mu.Lock()
	defer table.mu.Unlock()
	if table.next == 1<<31-1 {
		return 0
	}
	table.next++
	table.objs[table.next] = obj
	return table.next
}

// remove unregisters h and its message; it reports whether h was open.
func remove(h int32) (any, bool) {
	table.mu.Lock()
	defer table.mu.Unlock()
	obj, ok := table.objs[h]
	delete(table.objs, h)
	delete(table.msgs, h)
	return obj, ok
}

// A handleError is a call's handle that is not open or not of the kind
// the call takes; its message is kept with handle 0.
type handleError struct{ msg string }

func (e *handleError) Error() string { return e.msg }

// lookup returns the object of h as a T, or a *handleError.
func lookup[T any](h int32, kind string) (T, error) {
	table.mu.Lock()
	obj, ok := table.objs[h]
	table.mu.Unlock()
	t, isT := obj.(T)
	switch {
	case !ok:
		return t, &handleError{fmt.Sprintf("handle %d is not open: it was closed, or was never returned by burrow_client_new or burrow_forward", h)}
	case !isT:
		return t, &handleError{fmt.Sprintf("handle %d is not a %s handle", h, kind)}
	}
	return t, nil
}

// setErr records err as the last error of h, or of handle 0 if err is a
// *handleError or h is not open (any more).
func setErr(h int32, err error) {
	table.mu.Lock()
	defer table.mu.Unlock()
	if _, ok := table.objs[h]; !ok || errors.As(err, new(*handleError)) {
		h = 0
	}
	table.msgs[h] = err.Error()
}

// message returns the last error of h, and whether h is open (or 0).
func message(h int32) (string, bool) {
	table.mu.Lock()
	defer table.mu.Unlock()
	_, ok := table.objs[h]
	return table.msgs[h], ok || h == 0
}

// call runs the body of an exported function for handle h (0 if it has
// none) and returns its result, or -1 with its error kept (see setErr).
// A panic becomes -1 and a message: no Go panic may cross into C.
// callQuiet runs f as call does, but keeps no message: a panic is -1.
func callQuiet(f func() int32) (ret int32) {
	defer func() {
		if recover() != nil {
			ret = -1
		}
	}()
	return f()
}

func call(h int32, f func() (int32, error)) (ret int32) {
	defer func() {
		if r := recover(); r != nil {
			setErr(h, fmt.Errorf("internal error in libburrow: %v; please report it with this trace: %s", r, debug.Stack()))
			ret = -1
		}
	}()
	ret, err := f()
	if err != nil {
		setErr(h, err)
		return -1
	}
	return ret
}
