package main

import (
	"context"
	"crypto/tls"
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
	return s, nil
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

// throughput reads from conns connections of dial for warmup+d and returns
// the bytes read during d (after warmup), per second, in bits. window is
// called as the measured window opens (true) and closes (false). A
// non-zero limit caps the rate of all connections together, in bits per
// second.
func throughput(ctx context.Context, dial dialer, conns int, warmup, d time.Duration, limit float64, window func(start bool)) (bitsPerSec float64, bytes int64, err error) {
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
			began := time.Now()
			for {
				n, err := c.Read(buf)
				moved := total.Add(int64(n))
				if err != nil {
					return
				}
				if limit > 0 {
					// Sleep off any lead over the allowed rate.
					due := began.Add(time.Duration(float64(moved) * 8 / limit * float64(time.Second)))
					if wait := time.Until(due); wait > 0 {
						time.Sleep(wait)
					}
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
