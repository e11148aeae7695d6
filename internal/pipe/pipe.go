// Package pipe joins two connections, copying bytes both ways with TCP's
// semantics end to end: a half-close on one side becomes a half-close on
// the other, and an abort (reset) on one side aborts the other. It never
// reads what it copies.
package pipe

import (
	"errors"
	"io"
	"net"
	"sync"
)

// A Conn is one side of a join: a connection whose write direction can be
// closed on its own.
type Conn interface {
	io.ReadWriteCloser
	CloseWrite() error
}

// An aborter resets a connection instead of closing it gracefully.
type aborter interface{ Abort() }

// Abort resets c: a TCP connection is closed with a reset, a connection
// with an Abort method is aborted, anything else is closed.
func Abort(c io.Closer) {
	switch c := c.(type) {
	case aborter:
		c.Abort()
	case *net.TCPConn:
		c.SetLinger(0)
		c.Close()
	default:
		c.Close()
	}
}

// Result reports what a join moved and how it ended.
type Result struct {
	AToB, BToA int64
	// Err is the first error that aborted the join; nil if both
	// directions ended with a clean close.
	Err error
}

// bufSize is the copy buffer of each direction.
const bufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// Join copies a to b and b to a until both directions have ended, then
// closes both. A clean end of one direction (EOF) half-closes the other
// side; any other error aborts both sides.
func Join(a, b Conn) Result {
	var (
		res   Result
		once  sync.Once
		wg    sync.WaitGroup
		abort = func(err error) {
			once.Do(func() {
				res.Err = err
				Abort(a)
				Abort(b)
			})
		}
	)
	wg.Go(func() { res.AToB = copyHalf(b, a, abort) })
	res.BToA = copyHalf(a, b, abort)
	wg.Wait()
	once.Do(func() {
		a.Close()
		b.Close()
	})
	return res
}

// copyHalf copies src to dst; at EOF it half-closes dst, on error it calls
// abort.
func copyHalf(dst, src Conn, abort func(error)) int64 {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				abort(werr)
				return n
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				if err := dst.CloseWrite(); err != nil {
					abort(err)
				}
			} else {
				abort(rerr)
			}
			return n
		}
	}
}
