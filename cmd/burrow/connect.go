package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/yamlstrict"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/session"
)

// connectFile is the YAML configuration of "burrow connect --config".
type connectFile struct {
	// Forwards maps "device/service" to the local address to listen on;
	// device is a known device's name or ID.
	Forwards map[string]string `yaml:"forwards"`
	// Direct, DirectPort and DirectAddrs configure direct paths, and
	// RelayUDP the UDP relay path, as in a device's file.
	Direct      *bool    `yaml:"direct"`
	DirectPort  int      `yaml:"direct_port"`
	DirectAddrs []string `yaml:"direct_addrs"`
	RelayUDP    *bool    `yaml:"relay_udp"`
	// LAN: false keeps the client from looking for devices on the LAN.
	LAN *bool `yaml:"lan"`
}

// clientPaths is how a client's sessions may travel: its UDP options, and
// whether it looks for devices on the LAN too.
type clientPaths struct {
	direct paths.DirectOptions
	noLAN  bool
}

// forward is one local listener leading to a service on a device.
type forward struct {
	device  identity.ID
	name    string // as the user wrote it
	service string
	listen  string
	relay   relaylink.RelayConfig
}

// connectOptions are the flags of "burrow connect".
type connectOptions struct {
	rf                          relayFlags
	listen, idPath, configPath  string
	noDirect, noRelayUDP, noLAN bool
	directAddrs                 []string
}

func newConnectCmd(g *globals) *cobra.Command {
	o := &connectOptions{}
	cmd := &cobra.Command{
		Use:   "connect DEVICE SERVICE [--listen ADDR] | connect --config FILE",
		Short: "Forward local ports to services on devices",
		Long: `Listen on a local TCP port and forward every connection to it, end-to-end
encrypted through the relay, to SERVICE on DEVICE. DEVICE is the name of a
device this client paired with (burrow devices), or a device ID together
with --relay and --relay-id (or --relay-ca). The device's key is pinned: a
device proving another key is never spoken to.

Once it is ready to accept, connect prints one line on stdout per forward:

  listening on 127.0.0.1:41234

A bare port (--listen 8554) listens on loopback (127.0.0.1:8554); to
accept connections from other machines, name an address (0.0.0.0:8554).
A paired device's services are checked against the pairing before
anything listens: a service the pairing does not grant is refused at once.

With --config, one process serves several forwards, each
"device/service: local address":

  forwards:
    cam1/rtsp: 127.0.0.1:8554
    cam1/http: 127.0.0.1:8080
  direct: true          # false: keep every session on the relay
  direct_port: 0        # UDP port for direct paths (0: any)
  direct_addrs: []      # addresses offered to devices (default: the interfaces')
  relay_udp: true       # false: keep what goes through the relay on its TCP link
  lan: true             # false: do not look for devices on the LAN

A session with a device starts on the relay and moves to a direct UDP path
(hole punching) once one works, and back if it stops working; connections
never notice. Without a direct path, where the relay forwards datagrams on
its UDP port, the session moves there ("relay udp"), and back to the
relay's TCP link if that stops working. Each change is logged ("session
path"). --no-direct (or direct: false) keeps the session off direct paths;
--no-relay-udp (or relay_udp: false) keeps it off the relay's UDP port;
both keep all traffic on the relay's TCP link.

Each session is also tried on the LAN at the same time as over the relay:
a device there answers the client's mDNS query under a tag only those who
know its ID can compute, and a session on the LAN wins ("lan ADDR"). With
the relay down, devices on the LAN are still reached. --no-lan (or
lan: false) looks for devices through the relay only.`,
		Example: `  burrow connect cam1 rtsp --listen 127.0.0.1:8554
  vlc rtsp://127.0.0.1:8554/stream`,
		Args: func(cmd *cobra.Command, args []string) error {
			if o.configPath != "" {
				if len(args) != 0 {
					return usageError(cmd, "with --config, give no DEVICE or SERVICE")
				}
				return nil
			}
			if len(args) != 2 {
				return usageError(cmd, "want DEVICE and SERVICE, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runConnect(cmd, g, o, args)
		},
		ValidArgsFunction: completeDeviceService(g, true),
	}
	f := cmd.Flags()
	o.rf.register(f)
	f.StringVar(&o.listen, "listen", "127.0.0.1:0", "local address to accept connections on (a bare port: 127.0.0.1:PORT)")
	f.StringVar(&o.idPath, "identity", "", "key file (default: identity.key in the client's home)")
	f.StringVar(&o.configPath, "config", "", "a file of several forwards (YAML)")
	f.BoolVar(&o.noDirect, "no-direct", false, "keep every session on the relay (no direct paths)")
	f.BoolVar(&o.noRelayUDP, "no-relay-udp", false, "keep what goes through the relay on its TCP link (not its UDP port)")
	f.BoolVar(&o.noLAN, "no-lan", false, "do not look for devices on the LAN (only through the relay)")
	f.StringSliceVar(&o.directAddrs, "direct-addr", nil, "address to offer devices for direct paths, instead of the interfaces' (repeatable)")
	return cmd
}

// runConnect serves the forwards of the command line or of --config
// until the command's context is done.
func runConnect(cmd *cobra.Command, g *globals, o *connectOptions, args []string) error {
	agentProcs()
	log, err := g.logger()
	if err != nil {
		return err
	}
	dir, err := g.homeDir()
	if err != nil {
		return err
	}
	home := client.Home{Dir: dir}
	var fwds []forward
	var cp clientPaths
	if o.configPath != "" {
		fwds, cp, err = readConnectConfig(o.configPath, home)
	} else {
		var f forward
		f, err = resolveForward(home, args[0], args[1], o.listen, o.rf)
		fwds = []forward{f}
	}
	if err != nil {
		return err
	}
	id, err := clientIdentity(home, o.idPath, log)
	if err != nil {
		return err
	}
	if o.noDirect {
		cp.direct.Disable = true
	}
	if o.noRelayUDP {
		cp.direct.NoRelayUDP = true
	}
	if o.noLAN {
		cp.noLAN = true
	}
	if len(o.directAddrs) > 0 {
		flagged, err := directOptions(nil, nil, 0, o.directAddrs, false)
		if err != nil {
			return usageError(cmd, "--direct-addr: %v", err)
		}
		cp.direct.Addrs = flagged.Addrs
	}
	return serveForwards(cmd.Context(), g, log, id, cp, fwds)
}

// clientIdentity loads the client's key from idPath (default: the one in
// home), creating it if there is none.
func clientIdentity(home client.Home, idPath string, log *slog.Logger) (*identity.Identity, error) {
	var id *identity.Identity
	var created bool
	var err error
	if idPath == "" {
		idPath = home.IdentityPath()
		id, created, err = home.Identity()
	} else {
		id, created, err = identity.LoadOrCreate(idPath)
	}
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created client identity", "path", idPath, "id", id.ID().String())
	}
	return id, nil
}

// relayFlags name the relay of a device the client did not pair with.
type relayFlags struct {
	addr, id string
	ca       bool
}

func (rf *relayFlags) register(f *pflag.FlagSet) {
	f.StringVar(&rf.addr, "relay", "", "the relay's host:port (for a device ID not paired with)")
	f.StringVar(&rf.id, "relay-id", "", "the relay's ID (pinned); required with --relay unless --relay-ca")
	f.BoolVar(&rf.ca, "relay-ca", false, "trust the relay's CA-signed certificate (system roots) instead of pinning its ID")
}

// resolveForward finds the device and relay of one forward. A device this
// client paired with must grant service (see checkGranted); service ""
// (a ping) names none.
func resolveForward(home client.Home, dev, service, listen string, rf relayFlags) (forward, error) {
	if service != "" {
		if err := session.ValidService(service); err != nil {
			return forward{}, err
		}
	}
	f := forward{name: dev, service: service, listen: loopbackPort(listen)}
	if rf.addr == "" {
		if rf.id != "" || rf.ca {
			return forward{}, errors.New("--relay-id and --relay-ca go with --relay")
		}
		kd, err := home.Device(dev)
		if err != nil {
			if _, idErr := identity.ParseID(dev); idErr == nil && errors.Is(err, client.ErrUnknownDevice) {
				return forward{}, fmt.Errorf("device %s is not one this client paired with: pass --relay and --relay-id, or pair first", dev)
			}
			return forward{}, err
		}
		if service != "" {
			if err := checkGranted(kd, service); err != nil {
				return forward{}, err
			}
		}
		f.device, f.relay = kd.ID, kd.RelayConfig()
		return f, nil
	}
	var err error
	if f.device, err = identity.ParseID(dev); err != nil {
		return forward{}, fmt.Errorf("device: %w", err)
	}
	f.relay.Addr = rf.addr
	switch {
	case rf.id != "":
		if f.relay.ID, err = identity.ParseID(rf.id); err != nil {
			return forward{}, fmt.Errorf("--relay-id: %w", err)
		}
	case !rf.ca:
		return forward{}, errors.New("--relay-id is missing: pin the relay with its ID (\"burrow relay id\" on the relay prints it), " +
			"or pass --relay-ca if the relay serves a CA-signed certificate")
	}
	return f, nil
}

// readConnectConfig reads a file of forwards.
func readConnectConfig(path string, home client.Home) ([]forward, clientPaths, error) {
	var cp clientPaths
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, cp, fmt.Errorf("config: %w", err)
	}
	var cf connectFile
	if err := yamlstrict.Decode(data, &cf); err != nil {
		return nil, cp, fmt.Errorf("config %s: %w", path, err)
	}
	if cp.direct, err = directOptions(cf.Direct, cf.RelayUDP, cf.DirectPort, cf.DirectAddrs, false); err != nil {
		return nil, cp, fmt.Errorf("config %s: %w", path, err)
	}
	cp.noLAN = cf.LAN != nil && !*cf.LAN
	if len(cf.Forwards) == 0 {
		return nil, cp, fmt.Errorf("config %s: forwards is empty: add \"device/service: 127.0.0.1:PORT\" lines", path)
	}
	var out []forward
	for _, key := range slices.Sorted(maps.Keys(cf.Forwards)) {
		dev, svc, ok := strings.Cut(key, "/")
		if !ok {
			return nil, cp, fmt.Errorf("config %s: forward %q: want device/service", path, key)
		}
		f, err := resolveForward(home, dev, svc, cf.Forwards[key], relayFlags{})
		if err != nil {
			return nil, cp, fmt.Errorf("config %s: forward %s: %w", path, key, err)
		}
		out = append(out, f)
	}
	return out, cp, nil
}

// serveForwards runs one client per relay and every forward until ctx is
// done or a listener fails.
func serveForwards(ctx context.Context, g *globals, log *slog.Logger, id *identity.Identity, cp clientPaths, fwds []forward) error {
	clients := make(map[relaylink.RelayConfig]*client.Client)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for _, f := range fwds {
		if clients[f.relay] != nil {
			continue
		}
		c, err := client.New(client.Config{Identity: id, Relay: f.relay, Logger: log, Direct: cp.direct, NoLAN: cp.noLAN})
		if err != nil {
			return err
		}
		clients[f.relay] = c
		if cp.noLAN {
			// Without the LAN nothing works until the relay does:
			// report a relay that is down or refuses before listening.
			if err := waitRelay(ctx, log, c, f.relay); err != nil || ctx.Err() != nil {
				return err
			}
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if !cp.noLAN {
		// Devices on the LAN are reached without the relay: listen at
		// once, and stop if the relay refuses this client.
		for rc, c := range clients {
			wg.Go(func() {
				if err := waitRelay(ctx, log, c, rc); err != nil {
					cancel(err)
				}
			})
		}
	}
	lns := make([]net.Listener, len(fwds))
	for i, f := range fwds {
		ln, err := net.Listen("tcp", f.listen)
		if err != nil {
			for _, l := range lns[:i] {
				l.Close()
			}
			return fmt.Errorf("listen for %s/%s: %w", f.name, f.service, err)
		}
		lns[i] = ln
		if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
			log.Warn("listening beyond loopback: anyone who can reach this address can use the tunnel", "addr", tcp.String())
		}
	}
	for i, f := range fwds {
		if len(fwds) == 1 {
			fmt.Fprintf(g.stdout, "listening on %s\n", lns[i].Addr())
		} else {
			fmt.Fprintf(g.stdout, "listening on %s for %s/%s\n", lns[i].Addr(), f.name, f.service)
		}
		log.Info("forwarding", "listen", lns[i].Addr().String(), "device", f.device.String(), "service", f.service, "client_id", id.ID().String())
		wg.Go(func() {
			if err := clients[f.relay].Forward(ctx, lns[i], f.device, f.service); err != nil && !errors.Is(err, net.ErrClosed) {
				cancel(err)
			}
		})
	}
	<-ctx.Done()
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// waitRelay waits up to 10s for c to attach to its relay rc. It fails if
// the relay refused the client or proved another key (retrying will not
// help), and logs a warning if the relay did not answer in time.
func waitRelay(ctx context.Context, log *slog.Logger, c *client.Client, rc relaylink.RelayConfig) error {
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := c.WaitAttached(wctx)
	cancel()
	switch {
	case ctx.Err() != nil:
		return nil
	case err != nil && wctx.Err() == nil:
		return err
	case err != nil:
		log.Warn("relay not reachable yet; still trying, tunnels through it will fail until it is", "relay", rc.Addr, "err", err)
	}
	return nil
}
