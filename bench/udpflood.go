package main

import (
	"context"
	"crypto/rand"
	"net"
	"sync"
	"time"

	"golang.org/x/net/ipv4"

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
// own, which no bind ever bound. It sends a burst of datagrams with one
// system call (sendmmsg where the system has it), as flooding tools do: the
// flooder shares this machine's cores with the relay and the agents, and
// its own sends should take as little of them as it can. (Each datagram
// still costs the kernel a send, and on loopback the relay socket's
// receive, in the flooder's call.)
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
		msgs := make([]ipv4.Message, burst)
		for i := range msgs {
			msgs[i].Buffers = [][]byte{dgram}
		}
		pc := ipv4.NewPacketConn(c.(*net.UDPConn))
		began, sent := time.Now(), 0
		for ctx.Err() == nil {
			for k := 0; k < len(msgs); {
				n, err := pc.WriteBatch(msgs[k:], 0)
				if err != nil {
					// Refused or dropped: the flood goes on.
					k++
					continue
				}
				k += n
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
