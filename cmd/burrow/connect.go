package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
)

func newConnectCmd(g *globals) *cobra.Command {
	var (
		relayAddr, relayID, listen, idPath string
	)
	cmd := &cobra.Command{
		Use:   "connect DEVICE SERVICE --relay ADDR --relay-id ID [--listen ADDR]",
		Short: "Forward a local port to a service on a device",
		Long: `Listen on a local TCP port and forward every connection to it, end-to-end
encrypted through the relay, to SERVICE on DEVICE. DEVICE is the device's ID
(printed by "burrow id" on the device, or logged by "burrow device"); its key
is pinned: a device proving another key is never spoken to.

Once it is ready to accept, connect prints one line on stdout:

  listening on 127.0.0.1:41234

Point the application (VLC, a browser, ssh) at that address. Your ID, which
the device owner must grant access to, is printed by "burrow id".`,
		Example: `  burrow connect 4xq…7ma rtsp --relay relay.example.com:443 --relay-id k2m…v4a --listen 127.0.0.1:8554
  vlc rtsp://127.0.0.1:8554/stream`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError(cmd, "want DEVICE and SERVICE, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			agentProcs()
			log, err := g.logger()
			if err != nil {
				return err
			}
			dev, err := identity.ParseID(args[0])
			if err != nil {
				return fmt.Errorf("device: %w", err)
			}
			service := args[1]
			if relayAddr == "" {
				return usageError(cmd, "--relay is required: the relay's host:port")
			}
			rcfg := paths.RelayConfig{Addr: relayAddr}
			if relayID != "" {
				if rcfg.ID, err = identity.ParseID(relayID); err != nil {
					return fmt.Errorf("--relay-id: %w", err)
				}
			}
			if idPath == "" {
				if idPath, err = defaultIdentityPath(); err != nil {
					return err
				}
			}
			id, created, err := identity.LoadOrCreate(idPath)
			if err != nil {
				return err
			}
			if created {
				log.Info("created client identity", "path", idPath, "id", id.ID().String())
			}
			c, err := client.New(client.Config{Identity: id, Relay: rcfg, Logger: log})
			if err != nil {
				return err
			}
			defer c.Close()

			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			err = c.WaitAttached(ctx)
			cancel()
			switch {
			case cmd.Context().Err() != nil:
				return nil
			case err != nil && ctx.Err() == nil:
				return err // a wrong relay ID, a refusal: retrying will not help
			case err != nil:
				log.Warn("relay not reachable yet; still trying, tunnels will fail until it is", "err", err)
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
				log.Warn("listening beyond loopback: anyone who can reach this address can use the tunnel", "addr", tcp.String())
			}
			fmt.Fprintf(g.stdout, "listening on %s\n", ln.Addr())
			log.Info("forwarding", "listen", ln.Addr().String(), "device", dev.String(), "service", service, "client_id", id.ID().String())
			if err := c.Forward(cmd.Context(), ln, dev, service); err != nil && !errors.Is(err, net.ErrClosed) {
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&relayAddr, "relay", "", "the relay's host:port")
	f.StringVar(&relayID, "relay-id", "", "the relay's ID (pinned); omit only if the relay has a CA-signed certificate")
	f.StringVar(&listen, "listen", "127.0.0.1:0", "local address to accept connections on")
	f.StringVar(&idPath, "identity", "", "key file (default: identity.key in the user's config directory, under burrow/)")
	return cmd
}
