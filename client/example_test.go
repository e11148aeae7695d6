package client_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
)

// Dial opens one tunnel: a net.Conn to a service on a device, with
// half-close.
func ExampleClient_Dial() {
	demo := startDemo() // a relay, and a device serving "greet" to demo.Key
	defer demo.Close()

	// An app keeps its key and its devices in a client.Home; pairing
	// (Client.Pair) gives it the device's ID.
	c, err := client.New(client.Config{Identity: demo.Key, Relay: demo.Relay,
		NoLAN: true}) // the demo is on loopback: no LAN to look for the device on
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.Dial(ctx, demo.Device, "greet")
	if err != nil {
		log.Fatal(err) // offline, not authorized, unknown service…
	}
	defer conn.Close()
	io.WriteString(conn, "burrow")
	conn.CloseWrite() // the device reads EOF; the answer still comes back
	answer, err := io.ReadAll(conn)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(answer))
	// Output: hello, burrow
}

// Forward serves a local listener: every connection to it is a tunnel,
// so an unchanged app (here net/http) reaches the device's service at a
// local address.
func ExampleClient_Forward() {
	demo := startDemo() // a relay, and a device serving "web" to demo.Key
	defer demo.Close()

	c, err := client.New(client.Config{Identity: demo.Key, Relay: demo.Relay,
		NoLAN: true}) // the demo is on loopback: no LAN to look for the device on
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Forward(ctx, ln, demo.Device, "web") }()

	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		log.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.Status, string(page))

	stop()              // Forward closes the listener and its connections
	fmt.Println(<-done) // and returns nil once ctx is done
	// Output:
	// 200 OK it works
	// <nil>
}

// A demo is a relay and a device on loopback, for the examples.
type demo struct {
	Relay  relaylink.RelayConfig // how clients reach the relay
	Device identity.ID
	Key    *identity.Identity // a client key the device lets in
	close  func()
}

func (d *demo) Close() { d.close() }

// startDemo starts a relay and a device that serves "greet" (a
// func(net.Conn): it answers "hello, " and what the client sent) and
// "web" (an http.Handler) to one client key.
func startDemo() *demo {
	must := func(err error) {
		if err != nil {
			log.Fatal(err)
		}
	}
	relayKey, err := identity.Generate()
	must(err)
	srv, err := relay.New(relay.Config{Identity: relayKey, AllowDevice: func(identity.ID) bool { return true }})
	must(err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	go srv.Serve(ln)

	deviceKey, err := identity.Generate()
	must(err)
	clientKey, err := identity.Generate()
	must(err)
	pin := relaylink.RelayConfig{Addr: ln.Addr().String(), ID: relayKey.ID()}
	dev, err := device.New(device.Config{
		Identity: deviceKey,
		Relay:    pin,
		Handlers: map[string]device.Handler{
			"greet": device.ServeConn(func(conn net.Conn) {
				name, _ := io.ReadAll(conn)
				fmt.Fprintf(conn, "hello, %s", name)
			}),
			"web": device.ServeHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "it works")
			})),
		},
		Clients: map[identity.ID][]string{clientKey.ID(): {device.AllServices}},
		Direct:  paths.DirectOptions{Disable: true, NoRelayUDP: true}, // loopback only
	})
	must(err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	must(dev.WaitAttached(ctx))
	return &demo{Relay: pin, Device: deviceKey.ID(), Key: clientKey, close: func() {
		dev.Close()
		srv.Close()
		ln.Close()
	}}
}
