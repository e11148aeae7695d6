package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/skip2/go-qrcode"
	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/adminsock"
	"github.com/burrow-tunnel/burrow/relaylink"
)

func newDeviceCmd(g *globals) *cobra.Command {
	var configPath string
	var noDirect bool
	cmd := &cobra.Command{
		Use:   "device --config PATH",
		Short: "Run the device agent, serving local services to authorized clients",
		Long: `Run the device agent (the dispatcher). It dials out to the relay and stays
attached; for each tunnel a client opens it checks that client's rights to
the named service, dials the service's configured local address and
forwards bytes both ways. It never dials an address it was not configured
with, and it opens no port on the device.

The configuration is YAML; an unknown key is an error:

  name: front-door                    # what the device calls itself in invites
  relay: relay.example.com:443        # host:port of the relay
  relay_id: <relay ID>                # pinned; required unless relay_ca is true
  relay_ca: false                     # true: trust a CA-signed relay certificate instead
  enroll_token: <token>               # enrolls the device on a relay that does not know it;
                                      # sent until the relay admits the device, then
                                      # never: delete it then (the agent says so)
  identity: /var/lib/burrow/device.key  # created if missing; relative paths are
                                      # relative to this file
  state: /var/lib/burrow/state        # paired users and invites (default: beside identity)
  services:                           # the only addresses this device will ever dial
    http: 127.0.0.1:80
    rtsp: 127.0.0.1:554
  roles:                              # what paired clients may open, by role
    viewer: [rtsp]
    admin: ["*"]
  clients:                            # fixed clients: ID -> services ("*" = all)
    <client ID>: [rtsp]
  direct: true                        # false: keep every session on the relay
  direct_port: 0                      # UDP port for direct paths (0: any)
  direct_addrs: []                    # addresses offered to clients (default: the interfaces')
  tunnel_rate: 100                    # tunnels one client may open per second (bursts of
  tunnel_burst: 1000                  # tunnel_burst); more are refused as rate limited
  reattach_spread: 15s                # after a relay crash, return at a random moment
                                      # within this (so thousands of devices do not
                                      # all return in the same second); 0s: at once

Sessions start on the relay and move to a direct UDP path (hole punching)
when one works, and back when it stops working; tunnels never notice.
--no-direct (or direct: false) keeps all traffic on the relay.

Deny by default: a client that is neither listed nor paired reaches nothing.
A configuration that leaves the relay unpinned without relay_ca, or lets no
one in at all (no clients and no roles), is refused at start.
While it runs, "burrow device invite", "users", "revoke" and "status" (with
the same --config) talk to it through a Unix socket only its user can open.`,
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
			ds, err := readDeviceConfig(configPath)
			if err != nil {
				return err
			}
			if mode, ok := ds.tokenReadable(); ok {
				log.Warn(fmt.Sprintf("other users may read the enrollment token in %s: run chmod 600 %s, and once the device is enrolled delete enroll_token from it", configPath, configPath),
					"config", configPath, "mode", fmt.Sprintf("%04o", mode))
			}
			cfg, err := ds.deviceConfig(log)
			if err != nil {
				return err
			}
			if noDirect {
				cfg.Direct.Disable = true
			}
			d, err := device.New(cfg)
			if err != nil {
				if errors.Is(err, device.ErrStateBusy) {
					return err
				}
				return fmt.Errorf("config %s: %w", configPath, err)
			}
			defer d.Close()
			ln, err := adminsock.Listen(ds.adminSocket)
			if err != nil {
				return err
			}
			defer os.Remove(ds.adminSocket)
			adminDone := make(chan struct{})
			ctx, stopAdmin := context.WithCancel(cmd.Context())
			go func() {
				defer close(adminDone)
				adminsock.Serve(ctx, ln, d.AdminHandler())
			}()
			defer func() {
				stopAdmin()
				<-adminDone
			}()
			log.Info("device starting", "id", d.ID().String(), "relay", cfg.Relay.Addr,
				"services", len(cfg.Services), "roles", len(cfg.Roles), "clients", len(cfg.Clients), "admin", ds.adminSocket)
			// A mistake in this device's own configuration (a wrong relay
			// ID or an untrusted relay certificate) ends the command.
			// Anything else, a refusal by the relay included, may be fixed
			// elsewhere, so it is logged and retried for ever.
			wctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			err = d.WaitAttached(wctx)
			cancel()
			var untrusted *relaylink.UntrustedRelayError
			if errors.Is(err, identity.ErrKeyMismatch) || errors.As(err, &untrusted) {
				return err
			}
			<-cmd.Context().Done()
			log.Info("device stopping")
			return nil
		},
	}
	cmd.PersistentFlags().StringVar(&configPath, "config", "", "device configuration file (YAML)")
	cmd.Flags().BoolVar(&noDirect, "no-direct", false, "keep every session on the relay (no direct paths)")

	// admin returns a client of the running agent's admin socket.
	admin := func(cmd *cobra.Command) (*device.AdminClient, error) {
		if configPath == "" {
			return nil, usageError(cmd, "--config is required: the running device's configuration file")
		}
		ds, err := readDeviceConfig(configPath)
		if err != nil {
			return nil, err
		}
		return device.NewAdminClient(ds.adminSocket), nil
	}
	notRunning := func(err error) error {
		if errors.Is(err, adminsock.ErrNotRunning) {
			return fmt.Errorf("the device agent is not running (start it with burrow device --config %s): %w", configPath, err)
		}
		return err
	}

	var role, name string
	var ttl time.Duration
	invite := &cobra.Command{
		Use:   "invite [--role ROLE] [--ttl 15m] [--name LABEL]",
		Short: "Make a single-use invite for a new client",
		Long: `Make an invite: one string (a burrow://pair URI) that lets one client pair
with this device, with the given role, until it expires. On a terminal it is
also drawn as a QR code; otherwise it is printed alone on one line.

Give it to the person who should get access; they run "burrow pair" and
paste it.
The invite carries a one-time secret: treat it like a password until used.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := admin(cmd)
			if err != nil {
				return err
			}
			req := device.InviteRequest{Role: role, Name: name}
			if ttl != 0 {
				req.TTL = ttl.String()
			}
			ans, err := a.Invite(cmd.Context(), req)
			if err != nil {
				return notRunning(err)
			}
			if !isTerminal(g.stdout) {
				fmt.Fprintln(g.stdout, ans.Invite)
				return nil
			}
			if q, err := qrcode.New(ans.Invite, qrcode.Low); err == nil {
				fmt.Fprint(g.stdout, q.ToSmallString(false))
			}
			fmt.Fprintf(g.stdout, "%s\n\nSingle use; expires %s. Pair with: burrow pair --name NAME, then paste the invite.\n",
				ans.Invite, ans.Expires.Local().Format(time.DateTime))
			return nil
		},
	}
	invite.Flags().StringVar(&role, "role", "", "role the new client gets (from roles in the config; needed if there are several)")
	invite.Flags().DurationVar(&ttl, "ttl", device.DefaultInviteTTL, "how long the invite stays valid (at most 168h)")
	invite.Flags().StringVar(&name, "name", "", "the new user's name on this device (default: user-<ID>)")

	users := &cobra.Command{
		Use:   "users",
		Short: "List the clients this device lets in",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := admin(cmd)
			if err != nil {
				return err
			}
			us, err := a.Users(cmd.Context())
			if err != nil {
				return notRunning(err)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tROLE\tPAIRED\tLAST SEEN")
			for _, u := range us {
				r := u.Role
				if u.FromConfig {
					r = "config: " + strings.Join(u.Services, ",")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", u.Name, u.ID, r, when(u.Paired), when(u.LastSeen))
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke NAME|ID",
		Short: "Remove a paired client: its tunnels close at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := admin(cmd)
			if err != nil {
				return err
			}
			u, err := a.Revoke(cmd.Context(), args[0])
			if err != nil {
				return notRunning(err)
			}
			fmt.Fprintf(g.stdout, "revoked %s (%s)\n", u.Name, u.ID)
			return nil
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the relay attachment and open sessions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := admin(cmd)
			if err != nil {
				return err
			}
			st, err := a.Status(cmd.Context())
			if err != nil {
				return notRunning(err)
			}
			r := st.Relay
			if r.Attached {
				draining := ""
				if r.Draining {
					draining = "; the relay is shutting down and will close this session"
				}
				fmt.Fprintf(g.stdout, "relay: %s, attached since %s (relay ID %s, rtt %s%s)\n",
					r.Relay, r.Since.Local().Format(time.DateTime), r.RelayID.Short(), r.RTT.Round(time.Microsecond), draining)
			} else {
				fmt.Fprintf(g.stdout, "relay: %s, NOT attached since %s: %s\n", r.Relay, r.Since.Local().Format(time.DateTime), r.Error)
			}
			if st.StateError != "" {
				fmt.Fprintf(g.stdout, "state: NOT writable: %s\n", st.StateError)
			}
			if len(st.NotSaved) > 0 {
				fmt.Fprintf(g.stdout, "revoked but not saved (back in after a restart until saved): %s\n", strings.Join(st.NotSaved, ", "))
			}
			fmt.Fprintf(g.stdout, "sessions: %d\n", len(st.Sessions))
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			if len(st.Sessions) > 0 {
				fmt.Fprintln(tw, "CLIENT\tNAME\tSINCE\tPATH\tRTT\tTUNNELS\tTOTAL")
			}
			for _, s := range st.Sessions {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", s.Client.Short(), s.Name, s.Since.Local().Format(time.DateTime),
					s.Path, s.RTT.Round(time.Microsecond), s.Tunnels, s.Total)
			}
			return tw.Flush()
		},
	}
	cmd.AddCommand(invite, users, revoke, status)
	return cmd
}

// when formats a time for a table, "-" if unknown.
func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}
