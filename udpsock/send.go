package udpsock

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/internal/udpgso"
)

// Queued datagrams leave through one writer goroutine rather than one
// system call each: the writer takes every datagram queued, and sends each
// run of datagrams to one address with one system call, the kernel cutting
// it into datagrams (UDP generic segmentation offload, where the socket
// has it). QUIC, above, sends in bursts of full-size packets, so a burst of ten
// costs one call instead of ten.

// An outDatagram waits in the send queue: a datagram, or a flush marker.
type outDatagram struct {
	buf *[]byte // from bufPool; the datagram is (*buf)[:n]
	n   int
	to  netip.AddrPort
	// flushed, on a marker (buf nil), is closed once every datagram
	// queued before it is sent.
	flushed chan struct{}
}

// bufPool holds the buffers of queued datagrams.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// Enqueue queues a copy of p for addr, for the write loop to send, and
// reports whether it fit: it never blocks.
func (s *Socket) Enqueue(p []byte, addr netip.AddrPort) bool {
	bp := bufPool.Get().(*[]byte)
	*bp = append((*bp)[:0], p...)
	select {
	case s.sendq <- outDatagram{buf: bp, n: len(p), to: addr}:
		return true
	default:
		bufPool.Put(bp)
		return false
	}
}

// Flush waits until every datagram queued so far is sent, for up to d.
func (s *Socket) Flush(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	m := outDatagram{flushed: make(chan struct{})}
	select {
	case s.sendq <- m:
	case <-t.C:
		return
	case <-s.done:
		return
	}
	select {
	case <-m.flushed:
	case <-t.C:
	case <-s.done:
	}
}

// writeLoop sends the queued datagrams until the Socket is closed.
func (s *Socket) writeLoop() {
	batch := make([]outDatagram, 0, udpgso.MaxSegments)
	var markers []chan struct{}
	gather := make([]byte, 0, udpgso.MaxSendLen)
	defer func() {
		for {
			select {
			case d := <-s.sendq:
				if d.buf != nil {
					bufPool.Put(d.buf)
				}
			default:
				return
			}
		}
	}()
	take := func(d outDatagram) {
		if d.buf == nil {
			markers = append(markers, d.flushed)
		} else {
			batch = append(batch, d)
		}
	}
	for {
		select {
		case d := <-s.sendq:
			take(d)
		case <-s.done:
			return
		}
		// Let the producer run once before paying for a system call: in a
		// burst it queues the rest meanwhile; idle, this costs nothing.
		yielded := false
	more:
		for len(batch) < cap(batch) {
			select {
			case d := <-s.sendq:
				take(d)
				continue
			default:
			}
			if yielded {
				break more
			}
			yielded = true
			runtime.Gosched()
		}
		gather = s.sendBatch(batch, gather)
		for i := range batch {
			bufPool.Put(batch[i].buf)
			batch[i] = outDatagram{}
		}
		batch = batch[:0]
		for i, m := range markers {
			close(m)
			markers[i] = nil
		}
		markers = markers[:0]
	}
}

// sendBatch sends every datagram of batch, in order, each run of them to
// one address with one system call where the socket can segment it: all
// of a run but its last datagram have one size, the last no larger.
// gather is a buffer to assemble runs in; sendBatch returns it for reuse.
func (s *Socket) sendBatch(batch []outDatagram, gather []byte) []byte {
	s.ttlMu.RLock()
	defer s.ttlMu.RUnlock()
	for i := 0; i < len(batch); {
		first := batch[i]
		j := i + 1
		if s.gso.Load() {
			total := first.n
			for j < len(batch) && j-i < udpgso.MaxSegments {
				d := batch[j]
				if d.to != first.to || d.n > first.n || total+d.n > udpgso.MaxSendLen {
					break
				}
				total += d.n
				j++
				if d.n < first.n {
					break // a shorter datagram ends the run
				}
			}
		}
		if j-i == 1 {
			s.conn.WriteToUDPAddrPort((*first.buf)[:first.n], first.to)
			i = j
			continue
		}
		gather = gather[:0]
		for _, d := range batch[i:j] {
			gather = append(gather, (*d.buf)[:d.n]...)
		}
		switch err := writeSegmented(s.conn.(*net.UDPConn), gather, first.n, first.to); {
		case errors.Is(err, errNoSegmenting):
			// The socket or its route cannot segment after all (some
			// interfaces cannot): this run and all later ones go one by
			// one.
			s.gso.Store(false)
			for _, d := range batch[i:j] {
				s.conn.WriteToUDPAddrPort((*d.buf)[:d.n], d.to)
			}
		case err == nil:
			s.segmented.Add(uint64(j - i))
		}
		// Another error lost the run, as it would each of its datagrams.
		i = j
	}
	return gather
}
