package relay

import (
	"errors"
	"net"
	"sync"
	"syscall"
)

// An agentConn is the TCP connection under an agent's TLS. It does two
// things for the relay's hot path:
//
//   - While a writer holds it (hold), the records TLS writes are gathered
//     and go out with one system call at release, rather than one call per
//     16 KiB record: a batch of frames for an agent costs one write, and
//     wakes the agent once. Writes made while no batch is held go straight
//     through.
//   - Where the system allows (rawIO), it reads and writes its socket with
//     raw system calls that never wait for the peer (the socket is
//     non-blocking, and each call says so too). A call through the
//     runtime's usual path wakes the runtime's monitor thread, which then
//     takes the processor back from a call that lasts some 20 µs, as a
//     loopback send does, and hands it to another thread: on the thousands
//     of calls a second a busy agent takes, that cost the relay more than
//     the calls themselves (go run ./bench -profile).
//
// A write that fails fails every later one: after a batch whose release
// failed part way, the agent's stream ends within a TLS record, and no
// record may follow it. Close must not race a held batch's release (the
// attachment closes its connection only once its writer is done).
type agentConn struct {
	net.Conn
	raw rawIO // off: the plain connection's Read and Write

	mu   sync.Mutex
	held bool
	buf  *[]byte // gathered records, from heldPool while held
	err  error   // the first write error
}

func newAgentConn(c net.Conn) *agentConn {
	return &agentConn{Conn: c, raw: newRawIO(c)}
}

// heldPool holds the buffers of batches being gathered.
var heldPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// maxHeld is how many bytes a held batch gathers before it writes them out
// anyway; maxKeptHeld the largest buffer that goes back to heldPool.
const (
	maxHeld     = 256 << 10
	maxKeptHeld = 1 << 20
)

func (c *agentConn) Read(p []byte) (int, error) {
	if c.raw.on() {
		return c.raw.read(c.Conn, p)
	}
	return c.Conn.Read(p)
}

func (c *agentConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if !c.held {
		return c.write(p)
	}
	if c.buf == nil {
		c.buf = heldPool.Get().(*[]byte)
	}
	*c.buf = append(*c.buf, p...)
	if len(*c.buf) >= maxHeld {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// write writes p now, and keeps its error. c.mu is held.
func (c *agentConn) write(p []byte) (n int, err error) {
	if c.raw.on() {
		n, err = c.raw.write(c.Conn, p)
	} else {
		n, err = c.Conn.Write(p)
	}
	if err != nil {
		c.err = err
	}
	return n, err
}

// hold gathers writes until release: the records of the holder's batch,
// and any that other goroutines write meanwhile (crypto/tls answers some
// messages of the agent's from the read loop), in the order written. One
// writer holds the connection at a time (the agent's send queue has one).
func (c *agentConn) hold() {
	c.mu.Lock()
	c.held = true
	c.mu.Unlock()
}

// release writes what was gathered and lets writes through again.
func (c *agentConn) release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held = false
	return c.flushLocked()
}

func (c *agentConn) flushLocked() error {
	if c.buf == nil {
		return c.err
	}
	_, err := c.write(*c.buf)
	*c.buf = (*c.buf)[:0]
	if cap(*c.buf) <= maxKeptHeld {
		heldPool.Put(c.buf)
	}
	c.buf = nil
	return err
}

// SyscallConn returns the socket's raw connection, if it has one.
func (c *agentConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("not a socket")
	}
	return sc.SyscallConn()
}

// agentListener makes the connections it accepts agentConns.
type agentListener struct{ net.Listener }

func (l agentListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newAgentConn(c), nil
}
