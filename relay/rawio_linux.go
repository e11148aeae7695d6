package relay

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A rawIO reads and writes a non-blocking socket with raw system calls
// that never wait (MSG_DONTWAIT, whatever the descriptor's mode), waiting
// through the runtime's poller when the socket is not ready, so that
// deadlines and Close work as on any connection (see agentConn). The zero
// rawIO does nothing: rc is nil.
type rawIO struct {
	rc syscall.RawConn
}

// A rawOp is a read or a write in progress. Ops come from rawOps, with
// their functions made once, so that a call allocates nothing and an
// idle connection holds none.
type rawOp struct {
	p       []byte
	n       int
	errno   syscall.Errno
	short   bool // a write took no bytes
	readFn  func(fd uintptr) bool
	writeFn func(fd uintptr) bool
}

var rawOps = sync.Pool{New: func() any {
	op := new(rawOp)
	op.readFn, op.writeFn = op.readOnce, op.writeAll
	return op
}}

// newRawIO returns the raw reads and writes of a TCP socket, or the zero
// rawIO.
func newRawIO(c net.Conn) rawIO {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return rawIO{}
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return rawIO{}
	}
	return rawIO{rc: rc}
}

// on reports whether the rawIO reads and writes.
func (r rawIO) on() bool { return r.rc != nil }

// rawCall makes the system call trap raw, again while it is interrupted;
// ready is false if the socket was not ready (EAGAIN). The call must be
// one that never waits (MSG_DONTWAIT).
func rawCall(trap, a1, a2, a3, a4 uintptr) (r uintptr, errno syscall.Errno, ready bool) {
	for {
		r, _, e := unix.RawSyscall6(trap, a1, a2, a3, a4, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, 0, false
		}
		return r, e, true
	}
}

// readOnce reads once into p; it reports false if the socket has nothing
// yet.
func (op *rawOp) readOnce(fd uintptr) bool {
	n, e, ready := rawCall(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&op.p[0])), uintptr(len(op.p)), unix.MSG_DONTWAIT)
	switch {
	case !ready:
		return false
	case e != 0:
		op.errno = e
	default:
		op.n = int(n)
	}
	return true
}

// writeAll writes what is left of p; it reports false if the socket has
// no room yet.
func (op *rawOp) writeAll(fd uintptr) bool {
	for op.n < len(op.p) {
		rest := op.p[op.n:]
		n, e, ready := rawCall(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		switch {
		case !ready:
			return false
		case e != 0:
			op.errno = e
			return true
		case n == 0:
			op.short = true // as the runtime's own writes report it
			return true
		}
		op.n += int(n)
	}
	return true
}

// read reads into p from c's socket.
func (r rawIO) read(c net.Conn, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	op := rawOps.Get().(*rawOp)
	op.p, op.n, op.errno = p, 0, 0
	err := r.rc.Read(op.readFn)
	n, errno := op.n, op.errno
	op.p = nil
	rawOps.Put(op)
	switch {
	case err != nil:
		return 0, renamed(err, "read")
	case errno != 0:
		return 0, opError(c, "read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// write writes all of p to c's socket, or fails.
func (r rawIO) write(c net.Conn, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	op := rawOps.Get().(*rawOp)
	op.p, op.n, op.errno, op.short = p, 0, 0, false
	err := r.rc.Write(op.writeFn)
	n, errno, short := op.n, op.errno, op.short
	op.p = nil
	rawOps.Put(op)
	switch {
	case err != nil:
		err = renamed(err, "write")
	case errno != 0:
		err = opError(c, "write", errno)
	case short:
		err = &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: io.ErrUnexpectedEOF}
	}
	return n, err
}

// renamed names the operation of an error of the runtime's poller (a
// deadline, a closed connection) as the connection's own reads and writes
// do, rather than "raw-read" or "raw-write".
func renamed(err error, op string) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
	}
	return err
}

// opError is the error of a failed call, naming c as net's errors do.
func opError(c net.Conn, op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}
