//go:build linux

package netns

import (
	"bytes"
	"container/heap"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// An Impairment is what a [Net.LossyLink] does to every packet it
// carries, in each direction: tc netem's delay and loss, done in the test
// process. netem needs the kernel's sch_netem, which many kernels (the
// virtual machines tests run on among them) are built without; the TUN
// driver a lossy link uses instead is nearly everywhere.
type Impairment struct {
	// Delay and Jitter: each packet is held Delay ± Jitter, drawn
	// uniformly for each packet (netem's "delay 50ms 10ms"). As with
	// netem, packets whose delays cross leave out of order.
	Delay, Jitter time.Duration
	// Loss is the fraction of packets dropped at random (netem's
	// "loss 1%" is 0.01).
	Loss float64
	// Limit bounds the packets held in each direction; more are dropped.
	// Zero means netem's default, 1000.
	Limit int
}

// A Lossy is a running lossy link. Its counters cover both directions.
type Lossy struct {
	Passed  atomic.Int64 // packets delivered
	Dropped atomic.Int64 // packets lost on purpose or over the limit

	imp  Impairment
	done chan struct{}
	wg   sync.WaitGroup
}

// LossyLink connects namespaces a and b with a point-to-point link: a TUN
// device in each (a's named ifA with address addrA, in CIDR form; b's
// likewise), and the test process carrying the packets between them as
// imp says. It skips the test if the system has no TUN driver. The link
// stops when the test ends.
func (n *Net) LossyLink(a, ifA, addrA, b, ifB, addrB string, imp Impairment) *Lossy {
	n.t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		n.t.Skipf("skipped: a lossy link needs the TUN driver (%v)", err)
	}
	if imp.Limit == 0 {
		imp.Limit = 1000
	}
	l := &Lossy{imp: imp, done: make(chan struct{})}
	fa := n.openTUN(a, ifA)
	fb := n.openTUN(b, ifB)
	n.t.Cleanup(func() {
		close(l.done)
		fa.Close()
		fb.Close()
		l.wg.Wait()
	})
	// Fixed seeds: a run loses the same packets of each direction.
	l.wg.Go(func() { l.carry(fa, fb, rand.New(rand.NewPCG(1, 1))) })
	l.wg.Go(func() { l.carry(fb, fa, rand.New(rand.NewPCG(2, 2))) })
	for _, end := range []struct{ ns, name, addr string }{{a, ifA, addrA}, {b, ifB, addrB}} {
		n.In(end.ns, "ip", "addr", "add", end.addr, "dev", end.name)
		n.In(end.ns, "ip", "link", "set", end.name, "up")
	}
	return l
}

// openTUN creates TUN device name in namespace ns; the device lives as
// long as the returned file is open.
func (n *Net) openTUN(ns, name string) *os.File {
	n.t.Helper()
	var f *os.File
	// The device is made in the namespace of the thread that opens
	// /dev/net/tun.
	err := n.Do(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("create TUN device %s: %w", name, err)
		}
		// Non-blocking, so the runtime's poller serves it and Close
		// ends a pending Read.
		f = os.NewFile(uintptr(fd), "tun "+name)
		return nil
	})
	if err != nil {
		n.t.Fatalf("in %s: %v", ns, err)
	}
	return f
}

// carry moves packets from one end to the other until the link stops:
// this goroutine reads and decides each packet's fate, another delivers
// the held packets when they are due.
func (l *Lossy) carry(from, to *os.File, rng *rand.Rand) {
	var (
		mu   sync.Mutex
		held heldPackets // guarded by mu
		seq  uint64
	)
	wake := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		timer := time.NewTimer(time.Hour)
		defer timer.Stop()
		for {
			mu.Lock()
			wait := time.Duration(-1)
			for held.Len() > 0 {
				if wait = time.Until(held[0].due); wait > 0 {
					break
				}
				p := heap.Pop(&held).(packet)
				mu.Unlock()
				to.Write(p.b) // a failed write is one more lost packet
				l.Passed.Add(1)
				mu.Lock()
			}
			mu.Unlock()
			if wait > 0 {
				timer.Reset(wait)
			} else {
				timer.Stop()
			}
			select {
			case <-wake:
			case <-timer.C:
			case <-l.done:
				return
			}
		}
	})
	buf := make([]byte, 1<<16)
	for {
		k, err := from.Read(buf)
		if err != nil {
			return // closed when the link stops
		}
		if rng.Float64() < l.imp.Loss {
			l.Dropped.Add(1)
			continue
		}
		delay := l.imp.Delay
		if l.imp.Jitter > 0 {
			delay += time.Duration(rng.Int64N(int64(2*l.imp.Jitter)+1)) - l.imp.Jitter
		}
		mu.Lock()
		if held.Len() >= l.imp.Limit {
			mu.Unlock()
			l.Dropped.Add(1)
			continue
		}
		seq++
		heap.Push(&held, packet{due: time.Now().Add(delay), seq: seq, b: bytes.Clone(buf[:k])})
		mu.Unlock()
		select {
		case wake <- struct{}{}:
		default:
		}
	}
}

// A packet waits in a heldPackets until it is due.
type packet struct {
	due time.Time
	seq uint64 // arrival order, among packets due at once
	b   []byte
}

// heldPackets is a heap of packets, the next due first.
type heldPackets []packet

func (h heldPackets) Len() int { return len(h) }
func (h heldPackets) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}
func (h heldPackets) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *heldPackets) Push(x any)   { *h = append(*h, x.(packet)) }
func (h *heldPackets) Pop() any {
	old := *h
	p := old[len(old)-1]
	*h = old[:len(old)-1]
	return p
}
