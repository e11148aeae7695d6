package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/paths"
)

func newPairCmd(g *globals) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "pair INVITE [--name NAME]",
		Short: "Pair with a device using an invite from its owner",
		Long: `Pair this client with a device, using an invite made on the device with
"burrow device invite". The device's key is pinned from the invite: a device
that proves another key fails with a key mismatch, and the invite's secret
is never sent to it. The secret is proven inside the encrypted session; the
relay only ever sees a hash of it.

The device is then known by NAME (by default the name it gave itself, or its
short ID), so that "burrow connect NAME SERVICE" works with no other flags.`,
		Example: `  burrow pair 'burrow://pair?device=…&relay=relay.example.com%3A443&…' --name cam1
  burrow connect cam1 rtsp --listen 127.0.0.1:8554`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError(cmd, "want one INVITE (quote it: it contains & characters), got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			inv, err := pairing.Parse(args[0])
			if err != nil {
				return err
			}
			if name == "" {
				name = inv.Name
			}
			if name == "" {
				name = inv.Device.Short()
			}
			if err := pairing.ValidName(name); err != nil {
				return fmt.Errorf("--name: %w", err)
			}
			dir, err := g.homeDir()
			if err != nil {
				return err
			}
			home := client.Home{Dir: dir}
			id, created, err := home.Identity()
			if err != nil {
				return err
			}
			if created {
				log.Info("created client identity", "path", home.IdentityPath(), "id", id.ID().String())
			}
			c, err := client.New(client.Config{Identity: id, Relay: paths.RelayConfig{Addr: inv.Relay, ID: inv.RelayID}, Logger: log})
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			if err := c.WaitAttached(ctx); err != nil {
				return err
			}
			p, err := c.Pair(ctx, inv)
			if err != nil {
				return err
			}
			kd := client.KnownDevice{Name: name, ID: inv.Device, Relay: inv.Relay, RelayID: inv.RelayID,
				Role: p.Role, Services: p.Services, Paired: time.Now().UTC().Truncate(time.Second)}
			if err := home.SaveDevice(kd); err != nil {
				return fmt.Errorf("paired, but saving the device failed: %w", err)
			}
			fmt.Fprintf(g.stdout, "paired with %s as %s (role %s; services: %s)\n", name, inv.Device.Short(), p.Role, strings.Join(p.Services, ", "))
			if len(p.Services) > 0 {
				fmt.Fprintf(g.stdout, "try: burrow connect %s %s\n", name, p.Services[0])
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the name to know the device by")
	return cmd
}

func newDevicesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "devices",
		Short: "List the devices this client has paired with",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := g.homeDir()
			if err != nil {
				return err
			}
			devs, err := client.Home{Dir: dir}.Devices()
			if err != nil {
				return err
			}
			if len(devs) == 0 {
				fmt.Fprintln(g.stderr, "no devices yet: pair with burrow pair INVITE")
				return nil
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tRELAY\tROLE\tSERVICES")
			for _, d := range devs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.Name, d.ID, d.Relay, d.Role, strings.Join(d.Services, ","))
			}
			return tw.Flush()
		},
	}
}
