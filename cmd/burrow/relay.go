package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
	"github.com/burrow-tunnel/burrow/relaydash"
)

// relayGCPercent is the relay's garbage-collection target (see GOGC).
const relayGCPercent = 25

// Files in the relay's data directory.
const (
	relayKeyFile    = "relay.key"
	relayStoreFile  = "relay.db"
	relayAdminsFile = "admin.sock"
)

// relayOptions are the flags of "burrow relay"; --data is shared with its
// subcommands.
type relayOptions struct {
	listen, dataDir, devicesFile string
	open                         bool
	tlsCert, tlsKey              string
	keepAlive                    time.Duration
	udpListen                    string
	noUDP                        bool
	noUDPRelay, udpRelay         bool
	drain, drainIdle             time.Duration
	limits                       relayLimits
	clientGrace                  time.Duration
	nats                         natsOptions
	metrics                      string
	dashboardTokenFile           string
}

func newRelayCmd(g *globals) *cobra.Command {
	o := &relayOptions{}
	cmd := &cobra.Command{
		Use:   "relay --listen ADDR --data DIR [--devices FILE | --open] [--nats URL[,URL…]]",
		Short: "Run a relay that devices and clients attach to",
		Long: `Run a burrow relay: the public server that devices and clients attach to.

Agents attach over TLS through an HTTP upgrade on one port (443 in
production). The relay pairs clients with devices and forwards their
packets, which are end-to-end encrypted: it cannot read them. It routes to a
device only the clients that device allows (the device tells it), and drops
the rest.

On first start the relay creates its identity in the data directory and
logs its ID; agents pin the relay by that ID (relay_id, --relay-id). Print it
with "burrow relay id --data DIR". With --tls-cert and --tls-key the relay
serves a CA-signed certificate instead, which agents check against their
trusted roots.

Deny by default: the relay admits only devices it enrolled, which present an
enrollment token once ("burrow relay token create"), devices listed in
--devices FILE (one device ID per line, optionally followed by its name;
"#" comments; re-read when it changes), or, with --open, any device.

A relay keeps the devices it enrolled and the tokens it issued in its data
directory. Relays of a fleet share them in NATS instead (--nats, a server
or cluster with JetStream): a token made through one relay enrolls a device
at any other, once per use, and a device removed through one relay is
disconnected by all of them within a second. Each relay keeps a copy of the
enrolled devices: while NATS is unreachable it admits those it knows and
no other, refuses enrollment tokens (saying why), and catches up with the
removals made meanwhile once NATS is back. A relay listed in the fleet
map also records in NATS which of its devices are attached to it (on
attach and detach only) and keeps a liveness key there, refreshed every 2s
and deleted when it stops; if a device attaches to another relay of the
fleet, the relay drops its older session. The data directory still holds
the relay's key; "burrow relay token create" and "burrow relay devices" work
through any running relay of the fleet.

The relay also listens on UDP, on the same port number as --listen unless
--udp-listen says otherwise: there it tells an attached agent the public
address of its UDP socket, which agents use to find a direct path to each
other (hole punching). Only agents attached over TCP get an answer, never
larger than their request. There it also relays agents' packets as
datagrams, without TLS (the UDP relay path). --no-udp turns both off;
sessions then go direct only between agents that reach each other's local
addresses.

Clients need no enrollment, so anyone can attach as one: the relay holds at
most --max-clients client sessions (by default a quarter of its open-file
limit, which it raises to the hard limit at start), at most
--max-clients-per-ip from one address (an IPv6 /64), and closes a client
session that no attached device allows after --client-grace. Connections
that have not authenticated yet are bounded by --max-pending and
--max-pending-per-ip. Devices are never counted against these: however many
clients come, at least half the relay's file descriptors stay for devices.

On SIGTERM or SIGINT the relay drains: it stops accepting connections and
tells the agents, but goes on forwarding for those attached, so that open
tunnels can finish. It closes when nothing has been forwarded for
--drain-idle, when no client is left, or after --drain at the latest; agents then
reattach (to the relay restarted, or another at the address). A second
signal closes it at once, as does --drain 0.

--metrics ADDR serves Prometheus metrics at /metrics, /healthz (200 while
the process serves) and /readyz (503 while the relay drains or cannot use
its state) on ADDR, in plain HTTP without credentials: keep it on loopback
or a private network. A bare port (--metrics 9090) means 127.0.0.1:9090.
The same listener serves a read-only dashboard at /, to loopback addresses
only, or with --dashboard-token-file to whoever brings the token.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRelay(cmd, g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", ":443", "TCP address to serve agents on")
	f.StringVar(&o.devicesFile, "devices", "", "file of device IDs allowed to attach, one per line (ID [NAME])")
	f.BoolVar(&o.open, "open", false, "allow any device to attach")
	f.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate chain to serve instead of the self-signed one")
	f.StringVar(&o.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&o.udpListen, "udp-listen", "", "UDP address that tells agents their public address (default: --listen's)")
	f.BoolVar(&o.noUDP, "no-udp", false, "do not listen on UDP")
	f.BoolVar(&o.noUDPRelay, "no-udp-relay", false, "answer binding requests on the UDP port, but forward no agent's packets there (the UDP relay path): agents relay over TCP alone")
	f.BoolVar(&o.udpRelay, "udp-relay", false, "")
	f.MarkDeprecated("udp-relay", "the UDP relay path is on by default (--no-udp-relay turns it off)")
	f.DurationVar(&o.keepAlive, "keepalive", 15*time.Second, "how often agents must ping; silent sessions close after 3 intervals (with --nats: 5s, so that an idle device leaves a dead relay within 15s)")
	f.DurationVar(&o.drain, "drain", 30*time.Second, "on SIGTERM or SIGINT, how long open tunnels may go on before the relay closes (0: close at once)")
	f.DurationVar(&o.drainIdle, "drain-idle", 5*time.Second, "end the drain early once nothing has been forwarded for this long (0: never early; idle tunnels, an SSH session say, then keep it to --drain)")
	f.IntVar(&o.limits.clients, "max-clients", 0, "client sessions the relay holds at once (0: a quarter of its open-file limit)")
	f.IntVar(&o.limits.clientsPerIP, "max-clients-per-ip", defaultClientsPerIP, "client sessions one address (an IPv6 /64) may hold; behind a load balancer that hides addresses, raise it")
	f.IntVar(&o.limits.pending, "max-pending", 0, "connections not authenticated yet (0: an eighth of the open-file limit, at most 10000)")
	f.IntVar(&o.limits.pendingPerIP, "max-pending-per-ip", defaultPendingPerIP, "connections not authenticated yet from one address")
	f.DurationVar(&o.clientGrace, "client-grace", 20*time.Second, "close a client session that no attached device allows after this long (0: never)")
	f.StringVar(&o.dashboardTokenFile, "dashboard-token-file", "", "a file holding a token (16 characters or more) that opens the dashboard at / of --metrics to other addresses than loopback")
	f.StringVar(&o.metrics, "metrics", "", "serve /metrics, /healthz and /readyz on this address, in plain HTTP (a bare port: 127.0.0.1:PORT; default: off)")
	o.nats.flags(f)
	cmd.PersistentFlags().StringVar(&o.dataDir, "data", "", "the relay's data directory: identity and state (created if missing)")
	cmd.AddCommand(
		newRelayIDCmd(g, &o.dataDir),
		newRelayTokenCmd(g, &o.dataDir),
		newRelayDevicesCmd(g, &o.dataDir),
	)
	return cmd
}

// check reports flags that contradict each other or are out of range.
func (o *relayOptions) check(cmd *cobra.Command) error {
	switch {
	case o.open && o.devicesFile != "":
		return usageError(cmd, "--open and --devices exclude each other: --open admits any device")
	case (o.tlsCert == "") != (o.tlsKey == ""):
		return usageError(cmd, "--tls-cert and --tls-key go together")
	case o.drain < 0:
		return usageError(cmd, "--drain %v: want a duration of 0 or more", o.drain)
	case o.drainIdle < 0:
		return usageError(cmd, "--drain-idle %v: want a duration of 0 or more", o.drainIdle)
	case o.udpRelay && o.noUDPRelay:
		return usageError(cmd, "--udp-relay and --no-udp-relay contradict each other: give one of them")
	case o.dashboardTokenFile != "" && o.metrics == "":
		return usageError(cmd, "--dashboard-token-file opens the dashboard of --metrics: give --metrics too")
	case o.clientGrace < 0:
		return usageError(cmd, "--client-grace %v: want a duration of 0 or more", o.clientGrace)
	}
	return o.nats.check(cmd)
}

// fleetKeepAlive is the keepalive of a relay with --nats: its agents must
// notice that it died, even idle, in time to move to another relay of the
// fleet (a link carrying packets notices in seconds whatever the
// keepalive: see package relaylink).
const fleetKeepAlive = 5 * time.Second

// runRelay runs the relay until the command's context is done, then
// drains it (see stopRelay).
func runRelay(cmd *cobra.Command, g *globals, o *relayOptions) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	// The relay's forwarding path does not allocate, so collecting
	// garbage more often costs it little CPU, while the default (100%)
	// lets the heap, and so the memory of thousands of idle sessions, grow
	// to twice what is live. GOGC overrides this.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(relayGCPercent)
	}
	if err := o.check(cmd); err != nil {
		return err
	}
	files, err := raiseFileLimit()
	if err != nil {
		log.Warn("could not raise the open-file limit to its hard limit", "limit", files, "err", err)
	}
	if err := o.limits.budget(files); err != nil {
		return usageError(cmd, "%v", err)
	}
	// Watched from the start, so that a second signal during the drain
	// closes the relay rather than killing the process.
	hurry := hurryContext(cmd.Context())
	id, created, err := relayIdentity(o.dataDir)
	if err != nil {
		return err
	}
	if created {
		log.Info("created relay identity", "path", filepath.Join(o.dataDir, relayKeyFile))
	}
	st, err := o.openRelayState(cmd.Context(), id, log)
	if err != nil {
		return err
	}
	defer st.close()
	allow, list, err := o.admission(st, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	udp := o.listenUDP(ln.Addr(), log)
	if udp != nil {
		defer udp.Close()
	}
	if o.nats.urls != "" && !cmd.Flags().Changed("keepalive") {
		o.keepAlive = fleetKeepAlive
	}
	cfg := o.relayConfig(id, allow, st, udp, log)
	st.configure(&cfg)
	if o.tlsCert != "" {
		if cfg.GetCertificate, err = relay.CertFile(o.tlsCert, o.tlsKey); err != nil {
			return err
		}
	}
	srv, err := relay.New(cfg)
	if err != nil {
		return err
	}
	st.attach(srv)
	// The admin socket serves until the relay has stopped, drain included.
	stopAdmin, err := serveAdmin(context.WithoutCancel(cmd.Context()), filepath.Join(o.dataDir, relayAdminsFile), relay.AdminHandler(srv, st, list))
	if err != nil {
		return err
	}
	defer stopAdmin()
	if o.metrics != "" {
		// Stopped after the relay, drain included (defers run last first).
		dash := relaydash.Config{Names: func() map[identity.ID]string { return relay.DeviceNames(st, list) }}
		if o.dashboardTokenFile != "" {
			if dash.Token, err = readDashboardToken(o.dashboardTokenFile); err != nil {
				return err
			}
		}
		stopMetrics, err := serveRelayMetrics(o.metrics, srv, st.ready, dash, log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	udpAddr := "off"
	if udp != nil {
		udpAddr = udp.LocalAddr().String()
		go srv.ServeUDP(udp)
	}
	log.Info("relay listening", "addr", ln.Addr().String(), "id", id.ID().String(), "udp", udpAddr)
	log.Info("relay limits", "open_files", files, "clients", o.limits.clients, "clients_per_ip", o.limits.clientsPerIP,
		"pending", o.limits.pending, "pending_per_ip", o.limits.pendingPerIP, "client_grace", o.clientGrace.String())
	return serveRelay(cmd.Context(), hurry, srv, ln, o.drain, log)
}

// admission returns the relay's AllowDevice: enrolled devices, and those
// of --devices (the list, nil without --devices), or any device with
// --open.
func (o *relayOptions) admission(st relay.State, log *slog.Logger) (func(identity.ID) bool, *relay.DeviceList, error) {
	switch {
	case o.open:
		log.Warn("relay is open: any device may attach")
		return func(identity.ID) bool { return true }, nil, nil
	case o.devicesFile != "":
		l, err := relay.LoadDeviceList(o.devicesFile, log)
		if err != nil {
			return nil, nil, err
		}
		log.Info("device list loaded", "path", o.devicesFile, "devices", l.Len())
		return func(id identity.ID) bool { return l.Allow(id) || st.Enrolled(id) }, l, nil
	}
	if devs, _ := st.Devices(); len(devs) == 0 {
		log.Info("no device enrolled yet: make an enrollment token with burrow relay token create --data " + o.dataDir)
	}
	return st.Enrolled, nil, nil
}

// listenUDP opens the relay's UDP socket (--udp-listen, by default the
// address tcp listens on), or returns nil with --no-udp or if it cannot:
// agents then find direct paths only through their local addresses.
func (o *relayOptions) listenUDP(tcp net.Addr, log *slog.Logger) net.PacketConn {
	if o.noUDP {
		return nil
	}
	addr := o.udpListen
	if addr == "" {
		addr = tcp.String()
	}
	udp, err := net.ListenPacket("udp", addr)
	if err != nil {
		log.Warn("no UDP port: agents will find direct paths only through their local addresses", "err", err)
		return nil
	}
	return udp
}

// relayConfig returns the relay's Config for the flags.
func (o *relayOptions) relayConfig(id *identity.Identity, allow func(identity.ID) bool, st relay.State, udp net.PacketConn, log *slog.Logger) relay.Config {
	cfg := relay.Config{Identity: id, AllowDevice: allow, Enroll: st.Enroll, Logger: log, KeepAlive: o.keepAlive, DrainQuiet: o.drainIdle,
		MaxClients: o.limits.clients, MaxClientsPerIP: o.limits.clientsPerIP, MaxPending: o.limits.pending, MaxPendingPerIP: o.limits.pendingPerIP,
		ClientGrace: o.clientGrace, NoUDPRelay: o.noUDPRelay}
	if o.drainIdle == 0 {
		cfg.DrainQuiet = -1 // only --drain, or the last client leaving, ends the drain
	}
	if o.clientGrace == 0 {
		cfg.ClientGrace = -1 // never close unused clients
	}
	if udp != nil {
		cfg.UDPPort = udp.LocalAddr().(*net.UDPAddr).Port
	}
	return cfg
}

// serveRelay serves agents on ln until ctx is done, then stops srv (see
// stopRelay), or until serving fails.
func serveRelay(ctx, hurry context.Context, srv *relay.Server, ln net.Listener, drain time.Duration, log *slog.Logger) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		stopRelay(hurry, srv, drain, log)
		<-errc
		return nil
	case err := <-errc:
		srv.Close()
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve: %w", err)
	}
}

// Defaults of the relay's per-address limits.
const (
	defaultClientsPerIP = 256
	defaultPendingPerIP = 64
)

// relayLimits are the relay's bounds on connections (see relay.Config);
// zero means a share of the open-file limit.
type relayLimits struct {
	clients, clientsPerIP, pending, pendingPerIP int
}

// budget fills in the limits left at zero from files, the open-file limit
// (0: unknown, which leaves them to the relay's defaults), and checks that
// clients and unauthenticated connections together leave devices at least
// half of it: a flood of clients must never keep a device out.
func (l *relayLimits) budget(files uint64) error {
	if l.clients < 0 || l.clientsPerIP < 1 || l.pending < 0 || l.pendingPerIP < 1 {
		return fmt.Errorf("--max-clients and --max-pending want 0 (automatic) or more, --max-clients-per-ip and --max-pending-per-ip 1 or more")
	}
	if files == 0 {
		return nil
	}
	if l.clients == 0 {
		l.clients = max(1, int(files/4))
	}
	if l.pending == 0 {
		l.pending = max(1, min(10_000, int(files/8)))
	}
	if uint64(l.clients)+uint64(l.pending) > files/2 {
		return fmt.Errorf("--max-clients %d and --max-pending %d would leave devices less than half of the %d files the relay may open: lower them, or raise the limit (ulimit -n; LimitNOFILE= in a systemd unit)",
			l.clients, l.pending, files)
	}
	return nil
}

// stopRelay stops srv once the command's context is done: it drains for
// up to drain, or until hurry is done (a second signal), then closes.
func stopRelay(hurry context.Context, srv *relay.Server, drain time.Duration, log *slog.Logger) {
	if drain == 0 {
		log.Info("relay stopping")
		srv.Close()
		return
	}
	st := srv.Stats()
	log.Info("relay stopping: draining; signal again to stop at once", "sessions", st.Devices+st.Clients, "up_to", drain.String())
	ctx, cancel := context.WithTimeout(hurry, drain)
	defer cancel()
	start := time.Now()
	err := srv.Shutdown(ctx)
	switch {
	case hurry.Err() != nil:
		log.Info("relay stopped at once (second signal)", "after", time.Since(start).Round(time.Millisecond).String())
	case err == nil:
		log.Info("relay stopped: drained", "after", time.Since(start).Round(time.Millisecond).String())
	default:
		log.Info("relay stopped: drain period over", "after", time.Since(start).Round(time.Millisecond).String())
	}
}
