package main

import (
	"context"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaylink"
)

func newDemoCmd(g *globals) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a relay, a device and a client in one process and show a page through them",
		Long: `Run the whole of burrow on this machine, on loopback: a relay, a device
agent serving a small built-in web page as service "http", and a client
agent forwarding a local port to it. Open the printed URL: the page comes
through the tunnel and shows the path it took. Ctrl-C stops everything.

Every identity is made up for this run and nothing is written to disk.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd, g, listen)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "local address of the client agent")
	return cmd
}

// runDemo runs the demo until the command's context is done.
func runDemo(cmd *cobra.Command, g *globals, listen string) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	d, err := startDemo(listen, log)
	if err != nil {
		return err
	}
	defer d.close()
	fmt.Fprintf(g.stdout, `burrow demo is running on loopback:
  relay   %s  id %s
  device  id %s  serving "http" from %s
  client  id %s  listening on %s

Open http://%s/ in a browser (or curl it): the page comes through the tunnel.
Press Ctrl-C to stop.
`, d.relayAddr, d.relay.ID(), d.device.ID(), d.webAddr, d.client.ID(), d.clientAddr, d.clientAddr)
	<-cmd.Context().Done()
	fmt.Fprintln(g.stdout, "stopping")
	return nil
}

// demo is a relay, a device, a client and a web page, all in one process.
type demo struct {
	relay      *relay.Server
	device     *device.Device
	client     *client.Client
	web        *http.Server
	relayAddr  string
	webAddr    string
	clientAddr string
	cleanups   []func() // run in reverse order by close
}

// startDemo starts the demo's web page, relay and agents on loopback,
// waits for both agents to attach, and forwards listen to the page.
func startDemo(listen string, log *slog.Logger) (_ *demo, err error) {
	d := &demo{}
	defer func() {
		// d, not the result: a failure returns a nil demo, and what was
		// started before it must still stop.
		if err != nil {
			d.close()
		}
	}()
	ids := make([]*identity.Identity, 3)
	for i := range ids {
		if ids[i], err = identity.Generate(); err != nil {
			return nil, err
		}
	}
	relayID, deviceID, clientID := ids[0], ids[1], ids[2]
	if err := d.startWeb(); err != nil {
		return nil, err
	}
	if err := d.startRelay(relayID, deviceID.ID(), log); err != nil {
		return nil, err
	}
	if err := d.startAgents(relayID.ID(), deviceID, clientID, log); err != nil {
		return nil, err
	}
	if err := d.forward(listen, deviceID.ID(), log); err != nil {
		return nil, err
	}
	return d, nil
}

// onClose has close run f, before what was registered earlier.
func (d *demo) onClose(f func()) { d.cleanups = append(d.cleanups, f) }

// close stops everything the demo started, in reverse order.
func (d *demo) close() {
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
	d.cleanups = nil
}

// startWeb serves the demo's page on loopback, as a camera or router
// would serve its own.
func (d *demo) startWeb() error {
	webLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	d.webAddr = webLn.Addr().String()
	d.web = &http.Server{Handler: http.HandlerFunc(d.page), ReadHeaderTimeout: 10 * time.Second}
	go d.web.Serve(webLn)
	d.onClose(func() { d.web.Close() })
	return nil
}

// startRelay runs a relay on loopback, TCP and UDP on the same port if it
// is free, that admits only the device.
func (d *demo) startRelay(id *identity.Identity, dev identity.ID, log *slog.Logger) error {
	relayLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	d.onClose(func() { relayLn.Close() })
	d.relayAddr = relayLn.Addr().String()
	relayUDP, err := net.ListenPacket("udp", d.relayAddr)
	if err != nil {
		if relayUDP, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			return err
		}
	}
	d.onClose(func() { relayUDP.Close() })
	d.relay, err = relay.New(relay.Config{
		Identity:    id,
		AllowDevice: func(id identity.ID) bool { return id == dev },
		UDPPort:     relayUDP.LocalAddr().(*net.UDPAddr).Port,
		Logger:      log.With("role", "relay"),
	})
	if err != nil {
		return err
	}
	go d.relay.Serve(relayLn)
	go d.relay.ServeUDP(relayUDP)
	d.onClose(func() { d.relay.Close() })
	return nil
}

// startAgents starts the device, serving the page to the client alone, and
// the client, and waits until both are attached to the relay: the URL is
// printed once the page can be fetched.
func (d *demo) startAgents(relayID identity.ID, deviceID, clientID *identity.Identity, log *slog.Logger) (err error) {
	pin := relaylink.RelayConfig{Addr: d.relayAddr, ID: relayID}
	// Both agents are on this machine: their direct path is on loopback.
	direct := paths.DirectOptions{Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	d.device, err = device.New(device.Config{
		Identity: deviceID,
		Relay:    pin,
		Services: map[string]string{"http": d.webAddr},
		Clients:  map[identity.ID][]string{clientID.ID(): {"http"}},
		Logger:   log.With("role", "device"),
		Direct:   direct,
		NoLAN:    true, // everything is on this machine
	})
	if err != nil {
		return err
	}
	d.onClose(func() { d.device.Close() })
	d.client, err = client.New(client.Config{Identity: clientID, Relay: pin, Logger: log.With("role", "client"), Direct: direct, NoLAN: true})
	if err != nil {
		return err
	}
	d.onClose(func() { d.client.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.device.WaitAttached(ctx); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	if err := d.client.WaitAttached(ctx); err != nil {
		return fmt.Errorf("client: %w", err)
	}
	return nil
}

// forward has the client forward connections to listen to the device's
// page until the demo closes.
func (d *demo) forward(listen string, dev identity.ID, log *slog.Logger) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w: give another address with --listen (127.0.0.1:0 picks a free port)", listen, err)
	}
	d.clientAddr = ln.Addr().String()
	done := make(chan struct{})
	ctx, stopForward := context.WithCancel(context.Background())
	go func() {
		defer close(done)
		if err := d.client.Forward(ctx, ln, dev, "http"); err != nil {
			log.Error("forwarding stopped", "err", err)
		}
	}()
	d.onClose(func() { stopForward(); <-done })
	return nil
}

// pageHTML is the demo's page: page replaces each {Name} with its value,
// HTML-escaped. (html/template would do the same, but the reflection it
// runs on makes the linker keep every exported method of the whole binary,
// unused or not: 2.2 MB of it on linux/arm.)
const pageHTML = `<!doctype html>
<html><head><meta charset="utf-8"><title>burrow demo</title>
<style>body{font-family:system-ui,sans-serif;max-width:46em;margin:2em auto;line-height:1.5;padding:0 1em}
code{background:#f2f2f2;padding:0 .2em}li{margin:.4em 0}</style></head>
<body>
<h1>It works: this page came through a burrow tunnel</h1>
<p>Your browser asked the <b>client agent</b> for this page. The page itself is
served by a web server on the "device", which has no open port: the device
agent dialed out to the relay, and the page travelled back the same way.</p>
<h2>The path it took</h2>
<ol>
<li>browser → <b>client agent</b> at <code>{ClientAddr}</code> (client {ClientID})</li>
<li>client agent → <b>relay</b> at <code>{RelayAddr}</code> (relay {RelayID}), over TLS.
Inside it, client and device run one end-to-end QUIC session (TLS 1.3, both keys pinned);
the relay forwards its packets without the keys to read them. Within moments the two agents
find a direct UDP path (hole punching) and the session's packets move onto it, skipping the
relay, without the tunnel noticing.</li>
<li>→ <b>device agent</b> (device {DeviceID}), which checked that client {ClientID} may open service
<code>http</code> and dialed the address configured for it</li>
<li>device agent → this <b>web server</b> at <code>{WebAddr}</code>, which sees the tunnel as a local
connection from <code>{SeenFrom}</code></li>
</ol>
<h2>Right now</h2>
<ul>
<li>path: <b>{Path}</b>{RTT}</li>
<li>open tunnels on the device: {Tunnels}</li>
<li>the relay has forwarded {Packets} packets ({Bytes} bytes) it could not decrypt</li>
</ul>
</body></html>
`

// page serves the demo's web page, describing the path the request took.
func (d *demo) page(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	st := d.device.Status()
	rs := d.relay.Stats()
	path, rtt := "relayed (TLS over TCP, via the relay)", ""
	tunnels := 0
	for _, s := range st.Sessions {
		tunnels += s.Tunnels
		if s.Client != d.client.ID() {
			continue
		}
		if s.RTT > 0 {
			rtt = ", session round trip " + s.RTT.Round(10*time.Microsecond).String()
		}
		if s.Path != "relay" {
			path = s.Path + " (UDP, end to end; the relay no longer carries it)"
		}
	}
	vals := []string{
		"ClientAddr", d.clientAddr,
		"ClientID", d.client.ID().Short(),
		"RelayAddr", d.relayAddr,
		"RelayID", d.relay.ID().Short(),
		"DeviceID", d.device.ID().Short(),
		"WebAddr", d.webAddr,
		"SeenFrom", r.RemoteAddr,
		"Path", path,
		"RTT", rtt,
		"Tunnels", strconv.Itoa(tunnels),
		"Packets", strconv.FormatUint(rs.PacketsForwarded, 10),
		"Bytes", strconv.FormatUint(rs.BytesForwarded, 10),
	}
	for i := 0; i < len(vals); i += 2 {
		vals[i], vals[i+1] = "{"+vals[i]+"}", html.EscapeString(vals[i+1])
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	io.WriteString(w, strings.NewReplacer(vals...).Replace(pageHTML))
}
