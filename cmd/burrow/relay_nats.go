package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/burrow-tunnel/burrow/fleetstate"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
)

// relayFleetMark, in a relay's data directory, says that the relay keeps
// its devices and tokens in NATS (it holds the --nats URLs), so that the
// subcommands do not use the directory's own store, which the relay does
// not read, when it is not running.
const relayFleetMark = "nats-state"

// natsOptions are the flags of "burrow relay" that connect it to NATS.
type natsOptions struct {
	urls            string
	creds           string
	tlsCA           string
	tlsCert, tlsKey string
	replicas        int
	set             bool // --nats is given; filled in by check
}

func (n *natsOptions) flags(f *pflag.FlagSet) {
	n.connFlags(f, "NATS servers (URL[,URL…], with JetStream) that keep the devices and tokens a fleet of relays shares, instead of the data directory")
	f.IntVar(&n.replicas, "nats-replicas", 1, "copies of each state bucket NATS keeps, when this relay creates them (3 for a three-node NATS cluster)")
}

// connFlags adds the flags that say how to reach the NATS servers: --nats
// (with urlsHelp), its credentials and TLS.
func (n *natsOptions) connFlags(f *pflag.FlagSet, urlsHelp string) {
	f.StringVar(&n.urls, "nats", "", urlsHelp)
	f.StringVar(&n.creds, "nats-creds", "", "NATS credentials file (user JWT and NKey seed) to authenticate with")
	f.StringVar(&n.tlsCA, "nats-tls-ca", "", "PEM CA certificates to check the NATS servers' certificates against, instead of the system roots")
	f.StringVar(&n.tlsCert, "nats-tls-cert", "", "PEM client certificate for NATS servers that require TLS client authentication (with --nats-tls-key)")
	f.StringVar(&n.tlsKey, "nats-tls-key", "", "PEM private key of --nats-tls-cert")
}

// check reports NATS flags that contradict each other.
func (n *natsOptions) check(cmd *cobra.Command) error {
	n.set = n.urls != ""
	others := n.creds != "" || n.tlsCA != "" || n.tlsCert != "" || n.tlsKey != "" || cmd.Flags().Changed("nats-replicas")
	switch {
	case !n.set && others:
		return usageError(cmd, "--nats-creds, --nats-tls-* and --nats-replicas go with --nats")
	case (n.tlsCert == "") != (n.tlsKey == ""):
		return usageError(cmd, "--nats-tls-cert and --nats-tls-key go together")
	case n.replicas < 1 || n.replicas > 5:
		return usageError(cmd, "--nats-replicas %d: want 1 to 5", n.replicas)
	}
	return nil
}

// connect connects to the NATS servers, reconnecting without end once
// connected: the fleet state fails closed while it cannot reach them. It
// pings the server every 5s and gives the connection up after 2 pings
// unanswered, so that a NATS server gone silent (a network that drops
// everything rather than closing) is noticed in about 15s, not in the
// minutes of the client's defaults.
func (n *natsOptions) connect(name string, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("lost the connection to NATS; reconnecting", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("reconnected to NATS", "server", nc.ConnectedUrlRedacted()) }),
	}
	if n.creds != "" {
		opts = append(opts, nats.UserCredentials(n.creds))
	}
	if n.tlsCA != "" {
		opts = append(opts, nats.RootCAs(n.tlsCA))
	}
	if n.tlsCert != "" {
		opts = append(opts, nats.ClientCert(n.tlsCert, n.tlsKey))
	}
	nc, err := nats.Connect(n.urls, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w: check --nats and that a NATS server with JetStream runs there", redactURLs(n.urls), err)
	}
	return nc, nil
}

// relayState is where the relay keeps its devices and tokens, and, in a
// fleet, its map and presence.
type relayState struct {
	relay.State
	// fleetMap is the fleet map the relay shows agents that pin the fleet
	// ID (see fleetMapSource), or nil outside a fleet.
	fleetMap func() []byte
	// presence records the relay's devices in the fleet, or is nil.
	presence *fleetstate.Presence
	// attach, given the relay's server, lets the state disconnect removed
	// devices and drop those that attached to another relay.
	attach func(*relay.Server)
	// close closes it all.
	close func()
	// ready says why the state is not usable now, or returns nil.
	ready func() error
}

// configure sets what the state gives the relay's Config.
func (s *relayState) configure(cfg *relay.Config) {
	cfg.FleetMap = s.fleetMap
	if s.presence != nil {
		cfg.Presence = s.presence
	}
}

// openRelayState opens where the relay keeps its devices and tokens: the
// fleet's state in NATS with --nats, else the store in its data
// directory.
//
// With NATS, the relay must be in the fleet map, and records which relay
// holds each device in the fleet's presence (fleetstate.Presence). A NATS
// without a fleet map at all (no "burrow fleet add" yet) shares the state
// only: no map, and no presence, since agents then pin each relay by its
// own ID and could not be sent to another.
func (o *relayOptions) openRelayState(ctx context.Context, id *identity.Identity, log *slog.Logger) (*relayState, error) {
	mark := filepath.Join(o.dataDir, relayFleetMark)
	if !o.nats.set {
		if err := os.Remove(mark); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		s, err := relay.OpenStore(filepath.Join(o.dataDir, relayStoreFile))
		if err != nil {
			return nil, err
		}
		return &relayState{State: s, attach: func(*relay.Server) {}, close: func() { s.Close() }, ready: s.Check}, nil
	}
	nc, err := o.nats.connect("burrow relay "+id.ID().Short(), log)
	if err != nil {
		return nil, err
	}
	closers := []func(){nc.Close}
	closeAll := func() {
		for _, c := range slices.Backward(closers) {
			c()
		}
	}
	fs, err := fleetstate.Open(ctx, fleetstate.Config{Conn: nc, Replicas: o.nats.replicas, Logger: log})
	if err != nil {
		closeAll()
		return nil, err
	}
	closers = append(closers, func() { fs.Close() })
	if err := os.WriteFile(mark, []byte(redactURLs(o.nats.urls)+"\n"), 0o600); err != nil {
		closeAll()
		return nil, err
	}
	watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	closers = append(closers, stopWatch)
	rs := &relayState{State: fs, close: closeAll, ready: func() error {
		if !nc.IsConnected() {
			return fmt.Errorf("NATS is %s", strings.ToLower(nc.Status().String()))
		}
		return nil
	}}
	rs.fleetMap, err = fleetMapSource(watchCtx, nc, id.ID())
	switch {
	case errors.Is(err, fleetstate.ErrNoFleetMap):
		log.Info("no fleet map in NATS: agents pin this relay by its own ID, and it records no presence", "relay_id", id.ID().String())
	case err != nil:
		closeAll()
		return nil, err
	default:
		rs.presence, err = fleetstate.OpenPresence(ctx, fleetstate.PresenceConfig{Conn: nc, Relay: id.ID(), Replicas: o.nats.replicas, Logger: log})
		if err != nil {
			closeAll()
			return nil, err
		}
		closers = append(closers, func() { rs.presence.Close() })
	}
	rs.attach = func(srv *relay.Server) {
		fs.OnRemove(srv.Disconnect)
		if rs.presence != nil {
			rs.presence.OnTaken(srv.Moved)
		}
	}
	devs, _ := fs.Devices()
	log.Info("fleet state in NATS", "servers", redactURLs(o.nats.urls), "devices", len(devs), "fleet_map", rs.fleetMap != nil, "presence", rs.presence != nil)
	return rs, nil
}

// checkNotFleet fails if the relay of dataDir keeps its state in NATS:
// its data directory's store is not the relay's state.
func checkNotFleet(dataDir string) error {
	b, err := os.ReadFile(filepath.Join(dataDir, relayFleetMark))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("the relay of %s keeps its devices and tokens in NATS (%s), and it is not running: run this command while it runs, or with the --data of another relay of the fleet",
		dataDir, strings.TrimSpace(string(b)))
}

// redactURLs returns the comma-separated NATS URLs with their passwords
// (or tokens) replaced, for logs, errors and files.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			continue
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		} else {
			u.User = url.User("xxxxx") // a token
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}
