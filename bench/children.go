package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// The benchmark runs its reference forwarders and its simulated devices as
// child processes of its own binary, so that their CPU and memory are
// measured apart from the load generator's.

// runChild runs a child mode named by args[0] and reports whether it did.
func runChild(args []string) bool {
	if len(args) == 0 {
		return false
	}
	var err error
	switch args[0] {
	case "hop":
		err = hopMain(args[1:], false)
	case "tlshop":
		err = hopMain(args[1:], true)
	case "simdevices":
		err = simDevicesMain(args[1:])
	default:
		return false
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, args[0]+":", err)
		os.Exit(1)
	}
	return true
}

// selfSigned returns a throwaway TLS certificate.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "bench"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// hopMain forwards every connection accepted on -listen to -to, io.Copy
// both ways: plain TCP, or (tlsHop) TLS 1.3 in and TLS 1.3 out, the least
// per-byte work of any relay with encrypted hops.
func hopMain(args []string, tlsHop bool) error {
	fs := flag.NewFlagSet("hop", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "")
	to := fs.String("to", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	var serverConf, clientConf *tls.Config
	if tlsHop {
		cert, err := selfSigned()
		if err != nil {
			return err
		}
		serverConf = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}
		clientConf = &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
	}
	fmt.Printf("listening %s\n", ln.Addr())
	go exitOnSignal()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			var in net.Conn = c
			var out net.Conn
			var err error
			if tlsHop {
				in = tls.Server(c, serverConf)
				out, err = tls.Dial("tcp", *to, clientConf)
			} else {
				out, err = net.Dial("tcp", *to)
			}
			if err != nil {
				return
			}
			defer out.Close()
			done := make(chan struct{})
			go func() {
				io.Copy(out, in)
				close(done)
			}()
			io.Copy(in, out)
			<-done
		}()
	}
}

func exitOnSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	<-ch
	os.Exit(0)
}

// simDevicesMain attaches -n device identities to relays from this one
// process, each over its own TCP+TLS relay session, -concurrency at a time,
// and holds them until stopped. With -udp each also binds a UDP socket of
// its own at the relay's UDP port, as a real device does for the UDP relay
// path (two file descriptors a device: the benchmark splits large numbers
// of devices across processes). -relay is one address or several
// (comma-separated): device i attaches to the i-th modulo their number.
// With -seed the identities are simIdentity's, which the benchmark can
// enroll beforehand; with -times, once all are attached, it writes for
// each device its ID and when its attach finished (Unix nanoseconds).
func simDevicesMain(args []string) error {
	fs := flag.NewFlagSet("simdevices", flag.ContinueOnError)
	n := fs.Int("n", 1000, "")
	relayAddrs := fs.String("relay", "", "")
	relayID := fs.String("relay-id", "", "")
	concurrency := fs.Int("concurrency", 64, "")
	seed := fs.String("seed", "", "")
	times := fs.String("times", "", "")
	udp := fs.Bool("udp", false, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rid, err := identity.ParseID(*relayID)
	if err != nil {
		return err
	}
	relays := strings.Split(*relayAddrs, ",")
	go exitOnSignal()
	sem := make(chan struct{}, *concurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	conns := make([]*paths.Conn, 0, *n)
	var log bytes.Buffer
	for i := range *n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var id *identity.Identity
			var err error
			if *seed != "" {
				id = simIdentity(*seed, i)
			} else {
				id, err = identity.Generate()
			}
			if err == nil {
				var c *paths.Conn
				c, err = paths.Listen(paths.Config{
					Identity:   id,
					Role:       relayproto.RoleDevice,
					Relay:      relaylink.RelayConfig{Addr: relays[i%len(relays)], ID: rid},
					QueueLen:   4,
					MaxBackoff: time.Second,
					// A relay session each, as a real device's; a UDP
					// socket only with -udp.
					Direct: paths.DirectOptions{Disable: true, NoRelayUDP: !*udp},
				})
				if err == nil {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					err = c.WaitAttached(ctx)
					done := time.Now()
					cancel()
					mu.Lock()
					conns = append(conns, c)
					if err == nil {
						fmt.Fprintf(&log, "%s %d\n", id.ID(), done.UnixNano())
					}
					mu.Unlock()
				}
			}
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if *times != "" {
		if err := os.WriteFile(*times, log.Bytes(), 0o600); err != nil {
			return err
		}
	}
	fmt.Printf("attached %d\n", len(conns))
	select {}
}

// simIdentity is the i-th simulated device's identity for seed: the same
// in the benchmark and in its simdevices child, so that the benchmark can
// enroll the devices before they attach.
func simIdentity(seed string, i int) *identity.Identity {
	h := sha256.Sum256(fmt.Appendf(nil, "%s/%d", seed, i))
	return identity.FromPrivateKey(ed25519.NewKeyFromSeed(h[:]))
}
