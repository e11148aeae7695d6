package paths

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
	"time"
)

// The end-to-end packets of direct paths leave through a queue and one
// writer goroutine rather than one system call each: the writer takes
// every packet queued, and sends each run of packets to one address with
// one system call, the kernel cutting it into datagrams (UDP generic
// segmentation offload, where the socket has it). QUIC sends in bursts of
// full-size packets, so a burst of ten costs one call instead of ten.
// Probes and other path messages are few and go straight out.

// An outDatagram waits in the direct send queue: a packet, or a flush
// marker.
type outDatagram struct {
	buf *[]byte // pooled; the packet is (*buf)[:n]
	n   int
	to  netip.AddrPort
	// flushed, on a marker (buf nil), is closed once every packet queued
	// before it is sent.
	flushed chan struct{}
}

// Bounds of one segmented send: the kernel's limit on segments, and the
// largest UDP payload.
const (
	maxSegments = 64
	maxSendLen  = 65507
)

// enqueue queues p for addr and reports whether it fit.
func (ds *directSocket) enqueue(p []byte, addr netip.AddrPort) bool {
	bp := packetPool.Get().(*[]byte)
	*bp = append((*bp)[:0], p...)
	select {
	case ds.sendq <- outDatagram{buf: bp, n: len(p), to: addr}:
		return true
	default:
		packetPool.Put(bp)
		return false
	}
}

// flush waits until every packet queued so far is sent, for up to d.
func (ds *directSocket) flush(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	m := outDatagram{flushed: make(chan struct{})}
	select {
	case ds.sendq <- m:
	case <-t.C:
		return
	}
	select {
	case <-m.flushed:
	case <-t.C:
	}
}

// directWriteLoop sends the queued packets until the Conn is closed.
func (c *Conn) directWriteLoop() {
	ds := c.ds
	batch := make([]outDatagram, 0, maxSegments)
	var markers []chan struct{}
	gather := make([]byte, 0, maxSendLen)
	defer func() {
		for {
			select {
			case d := <-ds.sendq:
				if d.buf != nil {
					packetPool.Put(d.buf)
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
		case d := <-ds.sendq:
			take(d)
		case <-c.ctx.Done():
			return
		}
		// Let the producer run once before paying for a system call: in a
		// burst it queues the rest meanwhile; idle, this costs nothing.
		yielded := false
	more:
		for len(batch) < cap(batch) {
			select {
			case d := <-ds.sendq:
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
		gather = ds.sendBatch(batch, gather)
		for i := range batch {
			packetPool.Put(batch[i].buf)
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

// sendBatch sends every packet of batch, in order, each run of packets to
// one address with one system call where the socket can segment it: all
// of a run but its last packet have one size, the last no larger. gather
// is a buffer to assemble runs in; sendBatch returns it for reuse.
func (ds *directSocket) sendBatch(batch []outDatagram, gather []byte) []byte {
	ds.ttlMu.RLock()
	defer ds.ttlMu.RUnlock()
	for i := 0; i < len(batch); {
		first := batch[i]
		j := i + 1
		if ds.gso.Load() {
			total := first.n
			for j < len(batch) && j-i < maxSegments {
				d := batch[j]
				if d.to != first.to || d.n > first.n || total+d.n > maxSendLen {
					break
				}
				total += d.n
				j++
				if d.n < first.n {
					break // a shorter packet ends the run
				}
			}
		}
		if j-i == 1 {
			ds.udp.WriteToUDPAddrPort((*first.buf)[:first.n], first.to)
			i = j
			continue
		}
		gather = gather[:0]
		for _, d := range batch[i:j] {
			gather = append(gather, (*d.buf)[:d.n]...)
		}
		switch err := writeSegmented(ds.udp.(*net.UDPConn), gather, first.n, first.to); {
		case errors.Is(err, errNoSegmenting):
			// The socket or its route cannot segment after all (some
			// interfaces cannot): this run and all later ones go one by
			// one.
			ds.gso.Store(false)
			for _, d := range batch[i:j] {
				ds.udp.WriteToUDPAddrPort((*d.buf)[:d.n], d.to)
			}
		case err == nil:
			ds.segmented.Add(uint64(j - i))
		}
		// Another error lost the run, as it would each of its packets.
		i = j
	}
	return gather
}
