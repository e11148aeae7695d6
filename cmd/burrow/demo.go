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
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "local address of the client agent")
	return cmd
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
	stop       func()
}

func startDemo(listen string, log *slog.Logger) (d *demo, err error) {
	d = &demo{}
	var cleanups []func()
	defer func() {
		if err != nil {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
		}
	}()
	ids := make([]*identity.Identity, 3)
	for i := range ids {
		if ids[i], err = identity.Generate(); err != nil {
			return nil, err
		}
	}
	relayID, deviceID, clientID := ids[0], ids[1], ids[2]

	// The service: a web page served on loopback, as a camera or router
	// would serve its own.
	webLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d.webAddr = webLn.Addr().String()
	d.web = &http.Server{Handler: http.HandlerFunc(d.page), ReadHeaderTimeout: 10 * time.Second}
	go d.web.Serve(webLn)
	cleanups = append(cleanups, func() { d.web.Close() })

	relayLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { relayLn.Close() })
	d.relayAddr = relayLn.Addr().String()
	relayUDP, err := net.ListenPacket("udp", d.relayAddr)
	if err != nil {
		if relayUDP, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			return nil, err
		}
	}
	cleanups = append(cleanups, func() { relayUDP.Close() })
	d.relay, err = relay.New(relay.Config{
		Identity:    relayID,
		AllowDevice: func(id identity.ID) bool { return id == deviceID.ID() },
		UDPPort:     relayUDP.LocalAddr().(*net.UDPAddr).Port,
		Logger:      log.With("role", "relay"),
	})
	if err != nil {
		return nil, err
	}
	go d.relay.Serve(relayLn)
	go d.relay.ServeUDP(relayUDP)
	cleanups = append(cleanups, func() { d.relay.Close() })
	pin := relaylink.RelayConfig{Addr: d.relayAddr, ID: relayID.ID()}
	// Both agents are on this machine: their direct path is on loopback.
	direct := paths.DirectOptions{Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}

	d.device, err = device.New(device.Config{
		Identity: deviceID,
		Relay:    pin,
		Services: map[string]string{"http": d.webAddr},
		Clients:  map[identity.ID][]string{clientID.ID(): {"http"}},
		Logger:   log.With("role", "device"),
		Direct:   direct,
	})
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { d.device.Close() })

	d.client, err = client.New(client.Config{Identity: clientID, Relay: pin, Logger: log.With("role", "client"), Direct: direct})
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { d.client.Close() })

	// The URL is printed once the page can be fetched: both agents attached.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.device.WaitAttached(ctx); err != nil {
		return nil, fmt.Errorf("device: %w", err)
	}
	if err := d.client.WaitAttached(ctx); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	d.clientAddr = ln.Addr().String()
	done := make(chan struct{})
	fwdCtx, stopForward := context.WithCancel(context.Background())
	go func() {
		defer close(done)
		if err := d.client.Forward(fwdCtx, ln, deviceID.ID(), "http"); err != nil {
			log.Error("forwarding stopped", "err", err)
		}
	}()
	cleanups = append(cleanups, func() { stopForward(); <-done })
	d.stop = func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	return d, nil
}

func (d *demo) close() { d.stop() }

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
