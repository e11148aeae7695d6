// Command httpdevice is a burrow device written in Go that serves its
// admin page in its own process: the page is an [http.Handler] given to
// the device as an in-process service ([device.ServeHTTP]), so clients
// reach it through burrow while the program opens no listening socket at
// all.
//
// Run it against a relay, pair a client with the invite it prints, and
// open the page through the tunnel:
//
//	httpdevice -relay relay.example.com:443 -relay-id RELAY-ID
//	burrow pair --name httpdevice        # paste the invite it printed
//	burrow connect httpdevice admin --listen 127.0.0.1:8080   # then browse http://127.0.0.1:8080
//
// It is an example: read it as documentation of the device package.
package main

import (
	"context"
	"flag"
	"fmt"
	"html"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relaylink"
)

func main() {
	relayAddr := flag.String("relay", "", "the relay's `host:port` (required)")
	relayID := flag.String("relay-id", "", "the relay's `ID`, pinned; empty: its certificate must chain to a trusted CA")
	keyPath := flag.String("key", "httpdevice.key", "the device's key `file`, created if missing")
	stateDir := flag.String("state", "httpdevice-state", "the `directory` of paired clients and invites")
	noLAN := flag.Bool("no-lan", false, "do not announce the device on the LAN, nor take sessions that start there")
	flag.Parse()
	if err := run(*relayAddr, *relayID, *keyPath, *stateDir, *noLAN); err != nil {
		fmt.Fprintln(os.Stderr, "httpdevice:", err)
		os.Exit(1)
	}
}

func run(relayAddr, relayID, keyPath, stateDir string, noLAN bool) error {
	if relayAddr == "" {
		return fmt.Errorf("-relay is required")
	}
	relay := relaylink.RelayConfig{Addr: relayAddr}
	if relayID != "" {
		id, err := identity.ParseID(relayID)
		if err != nil {
			return fmt.Errorf("-relay-id: %w", err)
		}
		relay.ID = id
	}
	key, _, err := identity.LoadOrCreate(keyPath)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	started := time.Now()
	page := http.NewServeMux()
	page.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		// The device has checked that this client may open "admin";
		// RequestClient says who it is.
		client, _ := device.RequestClient(r)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<h1>httpdevice %s</h1>\n<p>Up %s. Hello, client %s.</p>\n",
			html.EscapeString(key.ID().Short()), time.Since(started).Round(time.Second), html.EscapeString(client.Short()))
	})

	d, err := device.New(device.Config{
		Identity: key,
		Name:     "httpdevice",
		Relay:    relay,
		// The admin page is served here, in this process: no address, no
		// listening socket.
		Handlers: map[string]device.Handler{"admin": device.ServeHTTP(page)},
		Roles:    map[string][]string{"admin": {"admin"}},
		StateDir: stateDir,
		NoLAN:    noLAN,
		Logger:   log,
	})
	if err != nil {
		return err
	}
	defer d.Close()
	fmt.Println("device", d.ID())

	if len(d.Users()) == 0 {
		inv, err := d.Invite("admin", time.Hour, "")
		if err != nil {
			return err
		}
		fmt.Println("invite", inv.String())
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	log.Info("shutting down")
	return nil
}
