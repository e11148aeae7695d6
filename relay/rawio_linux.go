package relay

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A rawIO reads and writes a non-blocking socket with raw system calls
// (see agentConn), waiting through the runtime's poller when the socket is
// not ready, so that deadlines and Close work as on any connection. One
// read and one write may run at once.
type rawIO struct {
	rc           syscall.RawConn
	laddr, raddr net.Addr
	r, w         rawOp
}

// A rawOp is the read or the write in progress. Its fn is made once, so
// that a call allocates nothing.
type rawOp struct {
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

// newRawIO returns the raw reads and writes of a TCP socket, or nil.
func newRawIO(c net.Conn) *rawIO {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawIO{rc: rc, laddr: tc.LocalAddr(), raddr: tc.RemoteAddr()}
	r.r.fn = r.r.readOnce
	r.w.fn = r.w.writeAll
	return r
}

// readOnce reads once into p; it reports false if the socket has nothing
// yet.
func (op *rawOp) readOnce(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&op.p[0])), uintptr(len(op.p)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case 0:
			op.n = int(n)
		default:
			op.errno = e
		}
		return true
	}
}

// writeAll writes what is left of p; it reports false if the socket has
// no room yet.
func (op *rawOp) writeAll(fd uintptr) bool {
	for op.n < len(op.p) {
		rest := op.p[op.n:]
		n, _, e := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch e {
		case 0:
			op.n += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			op.errno = e
			return true
		}
	}
	return true
}

func (r *rawIO) read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	op := &r.r
	op.p, op.n, op.errno = p, 0, 0
	err := r.rc.Read(op.fn)
	n, errno := op.n, op.errno
	op.p = nil
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, r.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (r *rawIO) write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	op := &r.w
	op.p, op.n, op.errno = p, 0, 0
	err := r.rc.Write(op.fn)
	n, errno := op.n, op.errno
	op.p = nil
	if err == nil && errno != 0 {
		err = r.opError("write", errno)
	}
	return n, err
}

func (r *rawIO) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: "tcp", Source: r.laddr, Addr: r.raddr, Err: os.NewSyscallError(op, errno)}
}
