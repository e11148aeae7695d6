package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
)

func newDeviceCmd(g *globals) *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "device --config PATH",
		Short: "Run the device agent, serving local services to authorized clients",
		Long: `Run the device agent (the dispatcher). It dials out to the relay and stays
attached; for each tunnel a client opens it checks that client's rights to
the named service, dials the service's configured local address and
forwards bytes both ways. It never dials an address it was not configured
with, and it opens no port on the device.

The configuration is YAML; an unknown key is an error:

  relay: relay.example.com:443        # host:port of the relay
  relay_id: <relay ID>                # pinned; omit only with a CA-signed relay certificate
  identity: /var/lib/burrow/device.key  # created if missing; relative paths are
                                      # relative to this file
  services:                           # the only addresses this device will ever dial
    http: 127.0.0.1:80
    rtsp: 127.0.0.1:554
  clients:                            # client ID -> services it may open ("*" = all)
    <client ID>: [rtsp]

Deny by default: a client that is not listed reaches nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			agentProcs()
			if configPath == "" {
				return usageError(cmd, "--config is required")
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			cfg, err := loadDeviceConfig(configPath, log)
			if err != nil {
				return err
			}
			d, err := device.New(cfg)
			if err != nil {
				return fmt.Errorf("config %s: %w", configPath, err)
			}
			defer d.Close()
			log.Info("device starting", "id", d.ID().String(), "relay", cfg.Relay.Addr, "services", len(cfg.Services), "clients", len(cfg.Clients))
			// A mistake in this device's own configuration (a wrong relay
			// ID or an untrusted relay certificate) ends the command.
			// Anything else, a refusal by the relay included, may be fixed
			// elsewhere, so it is logged and retried for ever.
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			err = d.WaitAttached(ctx)
			cancel()
			var untrusted *paths.UntrustedRelayError
			if errors.Is(err, identity.ErrKeyMismatch) || errors.As(err, &untrusted) {
				return err
			}
			<-cmd.Context().Done()
			log.Info("device stopping")
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "device configuration file (YAML)")
	return cmd
}
