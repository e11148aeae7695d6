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
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/adminsock"
	"github.com/burrow-tunnel/burrow/internal/fileperm"
	"github.com/burrow-tunnel/burrow/relay"
)

// relayGCPercent is the relay's garbage-collection target (see GOGC).
const relayGCPercent = 25

// Files in the relay's data directory.
const (
	relayKeyFile    = "relay.key"
	relayStoreFile  = "relay.db"
	relayAdminsFile = "admin.sock"
)

// relayIdentity loads or creates the relay's identity in dataDir.
func relayIdentity(dataDir string) (*identity.Identity, bool, error) {
	if dataDir == "" {
		return nil, false, errors.New("--data is required: the directory where the relay keeps its identity and state")
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, false, fmt.Errorf("data directory: %w", err)
	}
	return identity.LoadOrCreate(filepath.Join(dataDir, relayKeyFile))
}

func newRelayCmd(g *globals) *cobra.Command {
	var (
		listen, dataDir, devicesFile string
		open                         bool
		tlsCert, tlsKey              string
		keepAlive                    time.Duration
		udpListen                    string
		noUDP                        bool
		drain, drainIdle             time.Duration
		limits                       relayLimits
		clientGrace                  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "relay --listen ADDR --data DIR [--devices FILE | --open]",
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
--devices FILE (one device ID per line, "#" comments; re-read when it
changes), or, with --open, any device.

The relay also listens on UDP, on the same port number as --listen unless
--udp-listen says otherwise: there it tells an attached agent the public
address of its UDP socket, which agents use to find a direct path to each
other (hole punching). Only agents attached over TCP get an answer, never
larger than their request. --no-udp turns this off; sessions then go direct
only between agents that reach each other's local addresses.

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
signal closes it at once, as does --drain 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			// The relay's forwarding path does not allocate, so collecting
			// garbage more often costs it little CPU, while the default
			// (100%) lets the heap, and so the memory of thousands of idle
			// sessions, grow to twice what is live. GOGC overrides this.
			if os.Getenv("GOGC") == "" {
				debug.SetGCPercent(relayGCPercent)
			}
			if open && devicesFile != "" {
				return usageError(cmd, "--open and --devices exclude each other: --open admits any device")
			}
			if (tlsCert == "") != (tlsKey == "") {
				return usageError(cmd, "--tls-cert and --tls-key go together")
			}
			if drain < 0 {
				return usageError(cmd, "--drain %v: want a duration of 0 or more", drain)
			}
			if drainIdle < 0 {
				return usageError(cmd, "--drain-idle %v: want a duration of 0 or more", drainIdle)
			}
			if clientGrace < 0 {
				return usageError(cmd, "--client-grace %v: want a duration of 0 or more", clientGrace)
			}
			files, err := raiseFileLimit()
			if err != nil {
				log.Warn("could not raise the open-file limit to its hard limit", "limit", files, "err", err)
			}
			if err := limits.budget(files); err != nil {
				return usageError(cmd, "%v", err)
			}
			// Watched from the start, so that a second signal during the
			// drain closes the relay rather than killing the process.
			hurry := hurryContext(cmd.Context())
			id, created, err := relayIdentity(dataDir)
			if err != nil {
				return err
			}
			if created {
				log.Info("created relay identity", "path", filepath.Join(dataDir, relayKeyFile))
			}
			st, err := relay.OpenStore(filepath.Join(dataDir, relayStoreFile))
			if err != nil {
				return err
			}
			defer st.Close()
			allow := st.Enrolled
			switch {
			case open:
				allow = func(identity.ID) bool { return true }
				log.Warn("relay is open: any device may attach")
			case devicesFile != "":
				l, err := relay.LoadDeviceList(devicesFile, log)
				if err != nil {
					return err
				}
				allow = func(id identity.ID) bool { return l.Allow(id) || st.Enrolled(id) }
				log.Info("device list loaded", "path", devicesFile, "devices", l.Len())
			default:
				if devs, _ := st.Devices(); len(devs) == 0 {
					log.Info("no device enrolled yet: make an enrollment token with burrow relay token create --data " + dataDir)
				}
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			defer ln.Close()
			var udp net.PacketConn
			if !noUDP {
				if udpListen == "" {
					udpListen = ln.Addr().String()
				}
				if udp, err = net.ListenPacket("udp", udpListen); err != nil {
					log.Warn("no UDP port: agents will find direct paths only through their local addresses", "err", err)
				} else {
					defer udp.Close()
				}
			}
			cfg := relay.Config{Identity: id, AllowDevice: allow, Enroll: st.Enroll, Logger: log, KeepAlive: keepAlive, DrainQuiet: drainIdle,
				MaxClients: limits.clients, MaxClientsPerIP: limits.clientsPerIP, MaxPending: limits.pending, MaxPendingPerIP: limits.pendingPerIP,
				ClientGrace: clientGrace}
			if drainIdle == 0 {
				cfg.DrainQuiet = -1 // only --drain, or the last client leaving, ends the drain
			}
			if clientGrace == 0 {
				cfg.ClientGrace = -1 // never close unused clients
			}
			if udp != nil {
				cfg.UDPPort = udp.LocalAddr().(*net.UDPAddr).Port
			}
			if tlsCert != "" {
				cfg.GetCertificate, err = relay.CertFile(tlsCert, tlsKey)
				if err != nil {
					return err
				}
			}
			srv, err := relay.New(cfg)
			if err != nil {
				return err
			}
			adminPath := filepath.Join(dataDir, relayAdminsFile)
			adminLn, err := adminsock.Listen(adminPath)
			if err != nil {
				return err
			}
			defer os.Remove(adminPath)
			// The admin socket serves until the relay has stopped, drain
			// included.
			ctx, stopAdmin := context.WithCancel(context.WithoutCancel(cmd.Context()))
			adminDone := make(chan struct{})
			go func() {
				defer close(adminDone)
				adminsock.Serve(ctx, adminLn, relay.AdminHandler(srv, st))
			}()
			defer func() {
				stopAdmin()
				<-adminDone
			}()
			udpAddr := "off"
			if udp != nil {
				udpAddr = udp.LocalAddr().String()
				go srv.ServeUDP(udp)
			}
			log.Info("relay listening", "addr", ln.Addr().String(), "id", id.ID().String(), "udp", udpAddr)
			log.Info("relay limits", "open_files", files, "clients", limits.clients, "clients_per_ip", limits.clientsPerIP,
				"pending", limits.pending, "pending_per_ip", limits.pendingPerIP, "client_grace", clientGrace.String())
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(ln) }()
			select {
			case <-cmd.Context().Done():
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
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", ":443", "TCP address to serve agents on")
	f.StringVar(&devicesFile, "devices", "", "file of device IDs allowed to attach, one per line")
	f.BoolVar(&open, "open", false, "allow any device to attach")
	f.StringVar(&tlsCert, "tls-cert", "", "PEM certificate chain to serve instead of the self-signed one")
	f.StringVar(&tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&udpListen, "udp-listen", "", "UDP address that tells agents their public address (default: --listen's)")
	f.BoolVar(&noUDP, "no-udp", false, "do not listen on UDP")
	f.DurationVar(&keepAlive, "keepalive", 15*time.Second, "how often agents must ping; silent sessions close after 3 intervals")
	f.DurationVar(&drain, "drain", 30*time.Second, "on SIGTERM or SIGINT, how long open tunnels may go on before the relay closes (0: close at once)")
	f.DurationVar(&drainIdle, "drain-idle", 5*time.Second, "end the drain early once nothing has been forwarded for this long (0: never early; idle tunnels, an SSH session say, then keep it to --drain)")
	f.IntVar(&limits.clients, "max-clients", 0, "client sessions the relay holds at once (0: a quarter of its open-file limit)")
	f.IntVar(&limits.clientsPerIP, "max-clients-per-ip", defaultClientsPerIP, "client sessions one address (an IPv6 /64) may hold; behind a load balancer that hides addresses, raise it")
	f.IntVar(&limits.pending, "max-pending", 0, "connections not authenticated yet (0: an eighth of the open-file limit, at most 10000)")
	f.IntVar(&limits.pendingPerIP, "max-pending-per-ip", defaultPendingPerIP, "connections not authenticated yet from one address")
	f.DurationVar(&clientGrace, "client-grace", 20*time.Second, "close a client session that no attached device allows after this long (0: never)")
	cmd.PersistentFlags().StringVar(&dataDir, "data", "", "the relay's data directory: identity and state (created if missing)")

	idCmd := &cobra.Command{
		Use:   "id --data DIR",
		Short: "Print the relay's ID, creating its identity if needed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, created, err := relayIdentity(dataDir)
			if err != nil {
				return err
			}
			if created {
				fmt.Fprintf(g.stderr, "created a new relay identity in %s\n", dataDir)
			}
			fmt.Fprintln(g.stdout, id.ID())
			return nil
		},
	}
	cmd.AddCommand(idCmd, newRelayTokenCmd(g, &dataDir), newRelayDevicesCmd(g, &dataDir))
	return cmd
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

// withRelayState runs online through the running relay's admin socket, or,
// if no relay runs on dataDir, offline on its store.
func withRelayState(ctx context.Context, dataDir string, online func(*relay.AdminClient) error, offline func(*relay.Store) error) error {
	if dataDir == "" {
		return errors.New("--data is required: the relay's data directory")
	}
	err := online(relay.NewAdminClient(filepath.Join(dataDir, relayAdminsFile)))
	if !errors.Is(err, adminsock.ErrNotRunning) {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	if err := fileperm.CheckDir(dataDir, "data directory"); err != nil {
		return err
	}
	st, err := relay.OpenStore(filepath.Join(dataDir, relayStoreFile))
	if err != nil {
		return err
	}
	defer st.Close()
	return offline(st)
}

func newRelayTokenCmd(g *globals, dataDir *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage enrollment tokens",
	}
	var uses int
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --data DIR [--uses N] [--ttl D]",
		Short: "Print a new enrollment token",
		Long: `Print a new enrollment token. A device whose configuration carries it
(enroll_token) is enrolled the first time it attaches, and needs no token
afterwards. The token works for --uses devices, until --ttl has passed.
The relay keeps only a hash of it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl <= 0 {
				return usageError(cmd, "--ttl %v: want a duration of more than 0 (a token for a production line can last long: --ttl 8760h)", ttl)
			}
			var tok string
			err := withRelayState(cmd.Context(), *dataDir,
				func(a *relay.AdminClient) (err error) {
					tok, err = a.CreateToken(cmd.Context(), uses, ttl)
					return err
				},
				func(st *relay.Store) (err error) {
					tok, err = st.CreateToken(uses, ttl)
					return err
				})
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, tok)
			return nil
		},
	}
	create.Flags().IntVar(&uses, "uses", 1, "how many devices may enroll with it")
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long it stays valid (more than 0)")
	cmd.AddCommand(create)
	return cmd
}

func newRelayDevicesCmd(g *globals, dataDir *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "devices --data DIR",
		Short: "List enrolled devices, with their online state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var devs []relay.EnrolledDevice
			running := true
			err := withRelayState(cmd.Context(), *dataDir,
				func(a *relay.AdminClient) (err error) {
					devs, err = a.Devices(cmd.Context())
					return err
				},
				func(st *relay.Store) (err error) {
					running = false
					devs, err = st.Devices()
					return err
				})
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tENROLLED\tONLINE\tLAST SEEN")
			for _, d := range devs {
				online := "no"
				switch {
				case !running:
					online = "? (relay not running)"
				case d.Online:
					online = "yes"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.ID, when(d.Enrolled), online, when(d.LastSeen))
			}
			return tw.Flush()
		},
	}
	remove := &cobra.Command{
		Use:   "remove ID --data DIR",
		Short: "Un-enroll a device (and disconnect it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := identity.ParseID(args[0])
			if err != nil {
				return err
			}
			err = withRelayState(cmd.Context(), *dataDir,
				func(a *relay.AdminClient) error { return a.Remove(cmd.Context(), id) },
				func(st *relay.Store) error { return st.Remove(id) })
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "removed %s\n", id)
			return nil
		},
	}
	cmd.AddCommand(remove)
	return cmd
}
