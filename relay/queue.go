package relay

import (
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/relayproto"
)

// packetBufLen holds the largest packet frame, header included.
const packetBufLen = relayproto.HeaderLen + relayproto.AddrLen + relayproto.MaxPacketLen

// packetPool holds the buffers that packets are read into and queued in:
// a packet is read once, rewritten in place and written from the same
// buffer, which goes back to the pool when it has been written or dropped.
var packetPool = sync.Pool{New: func() any { b := make([]byte, packetBufLen); return &b }}

// An outFrame waits in an agent's send queue. A packet frame carries its
// whole encoding in a pooled buffer (header included); a notice
// carries its own bytes.
type outFrame struct {
	buf *[]byte // pooled; nil for a notice
	n   int     // valid bytes of *buf
	ctl []byte
}

// release returns f's pooled buffer, if it has one.
func (f outFrame) release() {
	if f.buf != nil {
		packetPool.Put(f.buf)
	}
}

// A sendQueue holds the frames waiting for one agent. Producers push
// without blocking (a full queue refuses the frame) and kick once they have
// pushed a batch; a kick hands the queue to a writer unless one is on it.
// The writer takes everything queued, writes it with one flush, and lets
// go of the queue when it is empty, so an idle agent has no writer and no
// buffers. A read loop may write a batch itself instead, when the write
// cannot wait (kickInline). It is safe for concurrent use.
type sendQueue struct {
	limit   int
	writers *writers
	// write writes a batch and releases every frame of it, even on error.
	// One writer calls it at a time.
	write func([]outFrame) error
	// fail is called with a write error; the queue is closed then.
	fail func(error)
	// room reports whether the connection can take n more bytes without
	// the write waiting (see kickInline); nil if it cannot tell. Set
	// before the queue is used.
	room func(n int) bool

	mu      sync.Mutex
	frames  []outFrame // guarded by mu
	spare   []outFrame // the last batch's slice, for reuse; guarded by mu
	writing bool       // a writer goroutine is running; guarded by mu
	closed  bool       // guarded by mu
	idle    sync.Cond  // signalled when writing becomes false; L is &mu
}

func newSendQueue(limit int, w *writers, write func([]outFrame) error, fail func(error)) *sendQueue {
	q := &sendQueue{limit: limit, writers: w, write: write, fail: fail}
	q.idle.L = &q.mu
	return q
}

// push queues f and reports whether it fit. It never blocks.
func (q *sendQueue) push(f outFrame) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || len(q.frames) >= q.limit {
		return false
	}
	q.frames = append(q.frames, f)
	return true
}

// kick hands the queue to a writer if frames are waiting and no writer is
// on it.
func (q *sendQueue) kick() {
	q.mu.Lock()
	if q.writing || q.closed || len(q.frames) == 0 {
		q.mu.Unlock()
		return
	}
	q.writing = true
	q.mu.Unlock()
	q.writers.take(q)
}

// kickInline writes the queued frames on the calling goroutine, if no
// writer is on the queue and the connection has room for them all (room),
// so that the write cannot wait for the agent; frames queued meanwhile, or
// frames there is no room for, go to a writer as kick sends them. A read
// loop calls it before a read that may block: the burst it has just read
// goes out without waking a writer goroutine, the costliest step of a
// relayed packet's path after the TLS and socket work.
func (q *sendQueue) kickInline() {
	q.mu.Lock()
	if q.writing || q.closed || len(q.frames) == 0 {
		q.mu.Unlock()
		return
	}
	q.writing = true
	// The frames counted are the frames taken, in one hold of the lock:
	// frames pushed after the count, which the room was not checked for,
	// go to a writer.
	var batch []outFrame
	if q.room != nil {
		n := 0
		for _, f := range q.frames {
			n += f.len()
		}
		if q.room(n) {
			batch, q.frames, q.spare = q.frames, q.spare[:0], nil
		}
	}
	q.mu.Unlock()
	if batch != nil && !q.writeTaken(batch) {
		return
	}
	q.mu.Lock()
	if len(q.frames) == 0 || q.closed {
		q.letGoLocked()
		q.mu.Unlock()
		return
	}
	q.mu.Unlock()
	q.writers.take(q)
}

// len is the number of bytes f puts on the wire.
func (f outFrame) len() int {
	if f.buf == nil {
		return len(f.ctl)
	}
	return f.n
}

// maxIdleCap is the largest frame slice an idle queue keeps for reuse.
const maxIdleCap = 64

// run writes batches until the queue is empty.
func (q *sendQueue) run() {
	for {
		batch, ok := q.next()
		if !ok || !q.writeTaken(batch) {
			return
		}
	}
}

// next takes every queued frame for the writer. If there is none, or the
// queue is closed, it lets go of the queue and reports false.
func (q *sendQueue) next() ([]outFrame, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	batch := q.frames
	if len(batch) == 0 || q.closed {
		q.letGoLocked()
		return nil, false
	}
	q.frames = q.spare[:0]
	q.spare = nil
	return batch, true
}

// letGoLocked ends the writer's hold on the queue, which keeps small
// slices only.
func (q *sendQueue) letGoLocked() {
	q.writing = false
	if cap(q.frames) > maxIdleCap {
		q.frames = nil
	}
	if cap(q.spare) > maxIdleCap {
		q.spare = nil
	}
	q.idle.Broadcast()
}

// writeTaken writes a batch that next took. On a write error it closes the
// queue, lets go of it and reports false.
func (q *sendQueue) writeTaken(batch []outFrame) bool {
	err := q.write(batch)
	clear(batch)
	q.mu.Lock()
	q.spare = batch[:0]
	q.mu.Unlock()
	if err != nil {
		q.fail(err)
		q.mu.Lock()
		q.closed, q.writing = true, false
		q.releaseLocked()
		q.idle.Broadcast()
		q.mu.Unlock()
		return false
	}
	return true
}

// close refuses further frames, waits for a running writer to finish its
// batch, and releases what is still queued. It is idempotent.
func (q *sendQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for q.writing {
		q.idle.Wait()
	}
	q.releaseLocked()
}

func (q *sendQueue) releaseLocked() {
	for _, f := range q.frames {
		f.release()
	}
	q.frames, q.spare = nil, nil
}

// writers are the goroutines that write send queues, shared by every
// attachment of a server. A writer that finds no queue to take for a while
// exits; at most as many run as queues are being written at once. Handing
// a queue to a waiting writer allocates nothing, where starting a goroutine
// per batch would.
type writers struct {
	work chan *sendQueue // unbuffered: a send succeeds only if a writer waits
	done chan struct{}   // closed when the server closes
	wg   *sync.WaitGroup // the server's
}

// writerIdle is how long a writer waits for another queue before it exits.
const writerIdle = time.Second

func newWriters(wg *sync.WaitGroup) *writers {
	return &writers{work: make(chan *sendQueue), done: make(chan struct{}), wg: wg}
}

// take has q written by a waiting writer, or by a new one.
func (w *writers) take(q *sendQueue) {
	select {
	case w.work <- q:
	default:
		w.wg.Add(1)
		go w.loop(q)
	}
}

// loop writes q, then every queue it is handed, until none comes for
// writerIdle or the server closes.
func (w *writers) loop(q *sendQueue) {
	defer w.wg.Done()
	idle := time.NewTimer(writerIdle)
	defer idle.Stop()
	for {
		q.run()
		idle.Reset(writerIdle)
		select {
		case q = <-w.work:
		case <-idle.C:
			return
		case <-w.done:
			return
		}
	}
}

// close makes idle writers exit; busy ones exit when their queue is done.
func (w *writers) close() { close(w.done) }
