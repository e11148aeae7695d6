package main

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The built-in load generator: the services the tunnels lead to and the
// clients that drive them, all in the benchmark's own process.

// services runs the benchmark's TCP services on loopback.
type services struct {
	source, greeter, echo string // plain TCP addresses
	tlsSource             string // a TLS source for the tls-hop reference
	tlsPaced              string // a TLS source that paces what it sends (see pacedSource)
	tlsConf               *tls.Config
	lns                   []net.Listener
	wg                    sync.WaitGroup
}

// chunk is what the source writes, over and over.
var chunk = func() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}()

func startServices(tlsConf *tls.Config) (*services, error) {
	s := &services{tlsConf: tlsConf}
	listen := func(handle func(net.Conn)) (string, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		s.lns = append(s.lns, ln)
		s.wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				s.wg.Go(func() {
					defer c.Close()
					handle(c)
				})
			}
		})
		return ln.Addr().String(), nil
	}
	var err error
	// source writes until the reader goes away: a camera stream.
	source := func(c net.Conn) {
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}
	if s.source, err = listen(source); err != nil {
		return nil, err
	}
	// greeter answers every new connection with one byte, then echoes.
	if s.greeter, err = listen(func(c net.Conn) {
		c.Write([]byte{'!'})
		io.Copy(c, c)
	}); err != nil {
		return nil, err
	}
	if s.echo, err = listen(func(c net.Conn) { io.Copy(c, c) }); err != nil {
		return nil, err
	}
	if s.tlsSource, err = listen(func(c net.Conn) { source(tls.Server(c, tlsConf)) }); err != nil {
		return nil, err
	}
	if s.tlsPaced, err = listen(func(c net.Conn) { pacedSource(tls.Server(c, tlsConf)) }); err != nil {
		return nil, err
	}
	return s, nil
}

// pacedBurst is what pacedSource writes at once: one TLS record's worth,
// about the ten to twelve packets a QUIC sender's pacer lets out at once.
const pacedBurst = 16 << 10

// pacedSource reads a rate (bits per second, 8 bytes big-endian) and then
// writes at that rate until the reader goes away, in bursts of pacedBurst
// with pauses between: the shape of what a paced sender (an agent's QUIC)
// hands a relay. A reader that reads flat out then gets each burst as it
// is sent, where a source writing flat out to a slowed reader would fill
// the sockets between them and have the kernel send on the reader's
// time (see bench.throughput).
func pacedSource(c net.Conn) {
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	rate := float64(binary.BigEndian.Uint64(hdr[:]))
	if rate <= 0 {
		return
	}
	began, sent := time.Now(), 0
	for {
		if _, err := c.Write(chunk[:pacedBurst]); err != nil {
			return
		}
		sent += pacedBurst
		due := began.Add(time.Duration(float64(sent) * 8 / rate * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
	}
}

// pacedDialer dials a pacedSource (through what addr leads to) and asks it
// for rate bits per second.
func pacedDialer(dial dialer, rate float64) dialer {
	return func(ctx context.Context) (net.Conn, error) {
		c, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		if _, err := c.Write(binary.BigEndian.AppendUint64(nil, uint64(rate))); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

func (s *services) close() {
	for _, ln := range s.lns {
		ln.Close()
	}
	// Handlers end when their peers hang up; the benchmark closes every
	// connection it opened.
}

// dialer opens a connection to what is being measured.
type dialer func(ctx context.Context) (net.Conn, error)

func tcpDialer(addr string) dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

func tlsDialer(addr string, conf *tls.Config) dialer {
	return func(ctx context.Context) (net.Conn, error) {
		d := tls.Dialer{Config: conf}
		return d.DialContext(ctx, "tcp", addr)
	}
}

// throughput reads from conns connections of dial, flat out, for
// warmup+d and returns the bytes read during d (after warmup), per second,
// in bits. window is called as the measured window opens (true) and
// closes (false).
func throughput(ctx context.Context, dial dialer, conns int, warmup, d time.Duration, window func(start bool)) (bitsPerSec float64, bytes int64, err error) {
	var total atomic.Int64
	var wg sync.WaitGroup
	cs := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
		wg.Wait()
	}()
	for range conns {
		c, err := dial(ctx)
		if err != nil {
			return 0, 0, err
		}
		cs = append(cs, c)
		wg.Go(func() {
			buf := make([]byte, 128<<10)
			for {
				n, err := c.Read(buf)
				total.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
	}
	select {
	case <-time.After(warmup):
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	window(true)
	start, startBytes := time.Now(), total.Load()
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	moved := total.Load() - startBytes
	window(false)
	if moved == 0 {
		return 0, 0, errors.New("no bytes moved")
	}
	return float64(moved) * 8 / time.Since(start).Seconds(), moved, nil
}

// connectLatency opens n fresh connections one after another and returns
// the time from dialling to the first byte of the service's reply, each.
func connectLatency(ctx context.Context, dial dialer, n int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	b := make([]byte, 1)
	for range n {
		start := time.Now()
		c, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, b); err != nil {
			c.Close()
			return nil, fmt.Errorf("first byte: %w", err)
		}
		out = append(out, time.Since(start))
		c.Close()
	}
	return out, nil
}

// requestResponse sends n 64-byte messages on one connection to an echo
// service, each after the previous one came back, and returns each round
// trip.
func requestResponse(ctx context.Context, dial dialer, n int) ([]time.Duration, error) {
	c, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	msg, back := make([]byte, 64), make([]byte, 64)
	out := make([]time.Duration, 0, n)
	c.SetDeadline(time.Now().Add(time.Minute))
	for i := range n + n/10 {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return nil, err
		}
		if i >= n/10 { // the first tenth warms up
			out = append(out, time.Since(start))
		}
	}
	return out, nil
}

// percentile returns the p-th percentile (0..100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}
