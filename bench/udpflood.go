package main

import (
	"context"
	"crypto/rand"
	"net"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/relayproto"
)

// Scenario 1 and 4, under attack: the UDP relay path's tunnel measured
// again while a flooder that holds no binding sends full-size send
// datagrams with made-up tags and channels to the relay's UDP port, at
// udpFloodRate. The relay must drop them all (counted as unbound) and keep
// forwarding the tunnel's packets: the figures say what share of its rate
// the tunnel keeps, and what the relay's CPU per GB becomes. The rate is
// bounded so that on a small machine the flooder does not simply take the
// CPU the relay and the agents need.

// udpFloodRate is the flood's datagrams per second: some 140 MB/s.
const udpFloodRate = 100_000

// udpFlooder sends junk to a relay's UDP port until stopped.
type udpFlooder struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startUDPFlood floods addr (the relay's UDP port) from a socket of its
// own, which no bind ever bound.
func startUDPFlood(ctx context.Context, addr string) (*udpFlooder, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	f := &udpFlooder{cancel: cancel}
	f.wg.Go(func() {
		defer c.Close()
		var tag [relayproto.UDPTagLen]byte
		rand.Read(tag[:])
		junk := make([]byte, relayproto.MaxUDPPacket)
		rand.Read(junk)
		dgram := append(relayproto.AppendUDPData(nil, relayproto.UDPSend, tag, 1), junk...)
		const burst = 100 // datagrams between checks of the clock
		began, sent := time.Now(), 0
		for ctx.Err() == nil {
			for range burst {
				c.Write(dgram) // refused or dropped: the flood goes on
			}
			sent += burst
			if wait := time.Until(began.Add(time.Duration(sent) * time.Second / udpFloodRate)); wait > 0 {
				time.Sleep(wait)
			}
		}
	})
	return f, nil
}

func (f *udpFlooder) stop() {
	f.cancel()
	f.wg.Wait()
}
