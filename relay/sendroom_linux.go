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
// for more bytes (see sendRoom). Only the holder of its queue's writing
// turn calls it: its fields are that caller's.
type roomCheck struct {
	rc syscall.RawConn
	n  int  // the bytes asked about
	ok bool // the answer
	fn func(fd uintptr)
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
// false once the connection is closed (Control holds the descriptor, so
// it is never another socket's).
func (r *roomCheck) room(n int) bool {
	r.n, r.ok = n, false
	if r.rc.Control(r.fn) != nil {
		return false
	}
	return r.ok
}

func (r *roomCheck) check(fd uintptr) { r.ok = sendRoom(int(fd), r.n) }

// systemLowatUnlimited reports whether the system sets no TCP_NOTSENT_LOWAT
// limit for sockets that set none (the kernel's default).
var systemLowatUnlimited = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_notsent_lowat")
	return err == nil && strings.TrimSpace(string(b)) == "4294967295"
})

// sendRoom reports whether the socket fd has room in its send buffer for n
// more bytes written in TLS records, so that writing them cannot wait for
// the peer. It reads the socket's memory accounting (SO_MEMINFO): a write
// waits only when the bytes queued, counted with the kernel's overhead,
// reach the send buffer's size. Its margin covers that overhead (up to the
// size of the bytes themselves) and the TLS records' own. Only the
// socket's writer adds to what is queued, so the answer holds until it
// writes.
func sendRoom(fd, n int) bool {
	var mi [unix.SK_MEMINFO_VARS]uint32
	l := uint32(unsafe.Sizeof(mi))
	_, _, errno := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&mi[0])), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 || l < unix.SK_MEMINFO_WMEM_QUEUED*4+4 {
		return false
	}
	return int64(mi[unix.SK_MEMINFO_WMEM_QUEUED])+2*int64(n)+sendRoomMargin <= int64(mi[unix.SK_MEMINFO_SNDBUF])
}

// sendRoomMargin is room sendRoom keeps free beyond twice the bytes.
const sendRoomMargin = 16 << 10
