package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relaylink"
)

// deviceOptions are the flags of "burrow device"; --config is shared with
// its subcommands, which find the running agent through it.
type deviceOptions struct {
	configPath string
	noDirect   bool
	noRelayUDP bool
	noLAN      bool
	metrics    string
}

func newDeviceCmd(g *globals) *cobra.Command {
	o := &deviceOptions{}
	cmd := &cobra.Command{
		Use:   "device --config PATH",
		Short: "Run the device agent, serving local services to authorized clients",
		Long: `Run the device agent (the dispatcher). It dials out to the relay and stays
attached; for each tunnel a client opens it checks that client's rights to
the named service, dials the service's configured local address and
forwards bytes both ways. It never dials an address it was not configured
with, and it opens no port on the device.

The configuration is YAML; an unknown key is an error. For example:

` + deviceConfigExample + `
Its keys (as in the README's "Device configuration keys"):

` + deviceKeysHelp + `
Sessions start on the relay and move to a direct UDP path (hole punching)
when one works, and back when it stops working; tunnels never notice.
Without a direct path, where the relay forwards datagrams on its UDP port,
a session moves there ("relay udp"), and back to the relay's TCP link if
that stops working. --no-direct (or direct: false) keeps sessions off
direct paths, --no-relay-udp (or relay_udp: false) off the relay's UDP
port; both keep all traffic on the relay's TCP link.

On the LAN, the device answers its paired clients' mDNS queries with its
UDP port, under a tag that changes every 10 minutes and that only those
who know its ID can compute, so that they reach it there even with the
relay down; --no-lan (or lan: false) turns that off.

--metrics ADDR (or metrics: ADDR) serves Prometheus metrics on
http://ADDR/metrics (sessions by path, tunnels by service and result,
tunnel bytes, relay attachment, pairings), /healthz (200 while the agent
runs) and /readyz (200 while attached to the relay, 503 and the reason
otherwise).

Deny by default: a client that is neither listed nor paired reaches nothing.
A configuration that leaves the relay unpinned without relay_ca, or lets no
one in at all (no clients and no roles), is refused at start.
While it runs, "burrow device invite", "invites", "users", "revoke" and "status" (with
the same --config) talk to it through a Unix socket only its user can open.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDevice(cmd, g, o)
		},
	}
	cmd.PersistentFlags().StringVar(&o.configPath, "config", "", "device configuration file (YAML)")
	cmd.Flags().BoolVar(&o.noDirect, "no-direct", false, "keep every session on the relay (no direct paths)")
	cmd.Flags().BoolVar(&o.noRelayUDP, "no-relay-udp", false, "keep what goes through the relay on its TCP link (not its UDP port)")
	cmd.Flags().BoolVar(&o.noLAN, "no-lan", false, "do not announce the device on the LAN, nor take sessions that start there")
	cmd.Flags().StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics, /healthz and /readyz on this address (a bare port: 127.0.0.1:PORT); overrides metrics: in the config file")
	cmd.AddCommand(
		newDeviceInviteCmd(g, o),
		newDeviceInvitesCmd(g, o),
		newDeviceUsersCmd(g, o),
		newDeviceRevokeCmd(g, o),
		newDeviceStatusCmd(g, o),
	)
	return cmd
}

// deviceConfigExample is the configuration "burrow device --help" shows;
// its keys are described in [deviceFile] (TestDeviceConfigExample checks
// that the device accepts it).
const deviceConfigExample = `  name: front-door
  relay: relay.example.com:443
  relay_id: <relay ID>
  enroll_token: <token>
  identity: /var/lib/burrow/device.key
  state: /var/lib/burrow/state
  services:
    http: 127.0.0.1:80
    rtsp: 127.0.0.1:554
  roles:
    viewer: [rtsp]
    admin: ["*"]
`

// runDevice runs the device agent until the command's context is done.
func runDevice(cmd *cobra.Command, g *globals, o *deviceOptions) error {
	agentProcs()
	if o.configPath == "" {
		return usageError(cmd, "--config is required")
	}
	log, err := g.logger()
	if err != nil {
		return err
	}
	// From the start: SIGHUP's default would end the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ds, err := readDeviceConfig(o.configPath)
	if err != nil {
		return err
	}
	if mode, ok := ds.tokenReadable(); ok {
		log.Warn(fmt.Sprintf("other users may read the enrollment token in %s: run chmod 600 %s, and once the device is enrolled delete enroll_token from it", o.configPath, o.configPath),
			"config", o.configPath, "mode", fmt.Sprintf("%04o", mode))
	}
	cfg, err := ds.deviceConfig(log)
	if err != nil {
		return err
	}
	if o.noDirect {
		cfg.Direct.Disable = true
	}
	if o.noRelayUDP {
		cfg.Direct.NoRelayUDP = true
	}
	if o.noLAN {
		cfg.NoLAN = true
	}
	d, err := device.New(cfg)
	if err != nil {
		if errors.Is(err, device.ErrStateBusy) {
			return err
		}
		return fmt.Errorf("config %s: %w", o.configPath, err)
	}
	defer d.Close()
	stopAdmin, err := serveAdmin(cmd.Context(), ds.adminSocket, d.AdminHandler())
	if err != nil {
		return err
	}
	defer stopAdmin()
	metrics, err := deviceMetricsAddr(o, ds)
	if err != nil {
		return err
	}
	if metrics != "" {
		stopMetrics, err := serveDeviceMetrics(metrics, d, log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	log.Info("device starting", "id", d.ID().String(), "relay", cfg.Relay.Addr,
		"services", len(cfg.Services), "roles", len(cfg.Roles), "clients", len(cfg.Clients), "admin", ds.adminSocket)
	if err := waitDeviceAttached(cmd.Context(), d); err != nil {
		return err
	}
	for {
		select {
		case <-hup:
			reloadDevice(o, cfg, metrics, d, log)
		case <-cmd.Context().Done():
			log.Info("device stopping")
			return nil
		}
	}
}

// waitDeviceAttached waits up to 15s for d to attach to its relay. A
// mistake in this device's own configuration (a wrong relay ID or an
// untrusted relay certificate) is returned: it ends the command. Anything
// else, a refusal by the relay included, may be fixed elsewhere, so the
// device logs it and retries for ever, and this returns nil.
func waitDeviceAttached(ctx context.Context, d *device.Device) error {
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err := d.WaitAttached(wctx)
	cancel()
	var untrusted *relaylink.UntrustedRelayError
	if errors.Is(err, identity.ErrKeyMismatch) || errors.As(err, &untrusted) {
		return err
	}
	return nil
}
