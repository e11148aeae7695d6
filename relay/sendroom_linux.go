package relay

import (
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A roomCheck tells whether the TCP socket under a TLS connection has room
// for more bytes (see sendRoom). It asks the socket only when the room it
// last learned of is spent: the room a socket has only grows while nobody
// writes (its peer's acknowledgements free it, and the kernel grows the
// buffer), so a busy agent's writes cost no extra system call each. (A
// system short of memory may shrink a buffer meanwhile; a write may then
// wait, as a writer goroutine's would.) Only the holder of its queue's
// writing turn calls it: its fields are that caller's.
type roomCheck struct {
	rc     syscall.RawConn
	credit int // bytes, counted as spent does, the socket had room for when last asked, less those spent since
	free   int // what the last question learned
	ok     bool
	fn     func(fd uintptr)
}

// newRoomCheck returns the room check of the socket under conn, or nil:
// if conn is not TLS over a socket, or if the socket has a
// TCP_NOTSENT_LOWAT limit, which can make a write wait even when the send
// buffer has room.
func newRoomCheck(conn net.Conn) *roomCheck {
	rc := rawConnOf(conn)
	if rc == nil {
		return nil
	}
	usable := false
	rc.Control(func(s uintptr) {
		// 0 leaves the system's setting in force; unlimited reads as -1
		// (the kernel's UINT_MAX).
		lowat, err := unix.GetsockoptInt(int(s), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
		usable = err == nil && (lowat == -1 || lowat == 0 && systemLowatUnlimited())
	})
	if !usable {
		return nil
	}
	r := &roomCheck{rc: rc}
	r.fn = r.check // made once: a check allocates nothing
	return r
}

// room reports whether the socket can take n more bytes without waiting;
// false once the connection is closed and its known room spent (Control
// holds the descriptor, so it is never another socket's).
func (r *roomCheck) room(n int) bool {
	if 2*n <= r.credit {
		return true
	}
	r.ok = false
	if r.rc.Control(r.fn) != nil || !r.ok {
		r.credit = 0
		return false
	}
	r.credit = r.free
	return 2*n <= r.credit
}

// spent notes that n bytes were written: each counts twice, for the
// kernel's overhead and the TLS records' (see sendRoom).
func (r *roomCheck) spent(n int) { r.credit -= 2 * n }

func (r *roomCheck) check(fd uintptr) { r.free, r.ok = sendRoom(int(fd)) }

// systemLowatUnlimited reports whether the system sets no TCP_NOTSENT_LOWAT
// limit for sockets that set none (the kernel's default).
var systemLowatUnlimited = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_notsent_lowat")
	return err == nil && strings.TrimSpace(string(b)) == "4294967295"
})

// sendRoom returns the room the socket fd has in its send buffer, less a
// margin, and whether it could tell. It reads the socket's memory
// accounting (SO_MEMINFO): a write waits only when the bytes queued,
// counted with the kernel's overhead, reach the send buffer's size. The
// kernel's overhead is up to the size of the bytes themselves, so n bytes
// written in TLS records fit without waiting in twice n of room plus
// sendRoomMargin (the records' own). Only the socket's writer adds to what
// is queued, so the answer holds until it writes.
func sendRoom(fd int) (int, bool) {
	var mi [unix.SK_MEMINFO_VARS]uint32
	l := uint32(unsafe.Sizeof(mi))
	_, _, errno := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&mi[0])), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 || l < unix.SK_MEMINFO_WMEM_QUEUED*4+4 {
		return 0, false
	}
	return int(int64(mi[unix.SK_MEMINFO_SNDBUF]) - int64(mi[unix.SK_MEMINFO_WMEM_QUEUED]) - sendRoomMargin), true
}

// sendRoomMargin is room sendRoom keeps free beyond twice the bytes.
const sendRoomMargin = 16 << 10
