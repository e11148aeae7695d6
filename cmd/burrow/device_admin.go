package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/skip2/go-qrcode"
	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/internal/adminsock"
)

// The subcommands of "burrow device" talk to the running agent through
// its admin socket, which they find in the configuration file (--config).

// admin returns a client of the running agent's admin socket.
func (o *deviceOptions) admin(cmd *cobra.Command) (*device.AdminClient, error) {
	if o.configPath == "" {
		return nil, usageError(cmd, "--config is required: the running device's configuration file")
	}
	ds, err := readDeviceConfig(o.configPath)
	if err != nil {
		return nil, err
	}
	return device.NewAdminClient(ds.adminSocket), nil
}

// notRunning explains an admin call that failed because no agent runs,
// or because this user may not use its admin socket.
func (o *deviceOptions) notRunning(err error) error {
	if errors.Is(err, adminsock.ErrNotRunning) {
		return fmt.Errorf("the device agent is not running (start it with burrow device --config %s): %w", o.configPath, err)
	}
	return adminDenied(err, "device agent")
}

// adminDenied explains an admin call that failed because this user may
// not open the admin socket of agent ("relay", "device agent"): who may.
// Any other error is returned as it is.
func adminDenied(err error, agent string) error {
	pe, ok := errors.AsType[*adminsock.PermissionError](err)
	if !ok {
		return err
	}
	return fmt.Errorf("permission denied on the %s's admin socket %s: run this as the %s's user (%s) or as root",
		agent, pe.Path, agent, pe.Who())
}

// inviteOptions are the flags of "burrow device invite".
type inviteOptions struct {
	role, name string
	ttl        time.Duration
}

func newDeviceInviteCmd(g *globals, o *deviceOptions) *cobra.Command {
	inv := &inviteOptions{}
	cmd := &cobra.Command{
		Use:   "invite [--role ROLE] [--ttl 15m] [--name LABEL]",
		Short: "Make a single-use invite for a new client",
		Long: `Make an invite: one string (a burrow://pair URI) that lets one client pair
with this device, with the given role, until it expires. On a terminal it is
also drawn as a QR code; otherwise it is printed alone on one line.

Give it to the person who should get access; they run "burrow pair" and
paste it.
The invite carries a one-time secret: treat it like a password until used.

--ttl is more than 0 and at most 168h (a week): no invite lasts forever,
and 0 is refused, as it is by "burrow relay token create".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if inv.ttl <= 0 || inv.ttl > device.MaxInviteTTL {
				return usageError(cmd, "--ttl %v: want a duration of more than 0 and at most %v (an invite that lasts a week: --ttl 168h)", inv.ttl, device.MaxInviteTTL)
			}
			return runDeviceInvite(cmd, g, o, inv)
		},
	}
	cmd.Flags().StringVar(&inv.role, "role", "", "role the new client gets (from roles in the config; needed if there are several)")
	cmd.Flags().DurationVar(&inv.ttl, "ttl", device.DefaultInviteTTL, "how long the invite stays valid (more than 0, at most 168h)")
	cmd.Flags().StringVar(&inv.name, "name", "", "the new user's name on this device (default: user-<ID>)")
	return cmd
}

// runDeviceInvite asks the running agent for an invite and prints it: on
// a terminal with a QR code and its expiry, else alone on one line.
func runDeviceInvite(cmd *cobra.Command, g *globals, o *deviceOptions, inv *inviteOptions) error {
	a, err := o.admin(cmd)
	if err != nil {
		return err
	}
	req := device.InviteRequest{Role: inv.role, Name: inv.name, TTL: inv.ttl.String()}
	ans, err := a.Invite(cmd.Context(), req)
	if err != nil {
		return o.notRunning(err)
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
	if ans.ID != "" {
		fmt.Fprintf(g.stdout, "Its ID is %s: burrow device invites cancel %s withdraws it.\n", ans.ID, ans.ID)
	}
	return nil
}

// jsonUser is a user in "burrow device users --json".
type jsonUser struct {
	Name       string   `json:"name"`
	ID         string   `json:"id"`
	Role       string   `json:"role"`     // "" for a client of the config file
	Services   []string `json:"services"` // a config file client's services; [] for a paired user
	FromConfig bool     `json:"from_config"`
	Paired     *string  `json:"paired"`    // null for a client of the config file
	LastSeen   *string  `json:"last_seen"` // null if never seen
}

func newDeviceUsersCmd(g *globals, o *deviceOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "users",
		Short: "List the clients this device lets in",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDeviceUsers(cmd, g, o, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON array (fields in docs/json.md)")
	return cmd
}

// runDeviceUsers prints the running agent's users as a table, or as JSON.
func runDeviceUsers(cmd *cobra.Command, g *globals, o *deviceOptions, asJSON bool) error {
	a, err := o.admin(cmd)
	if err != nil {
		return err
	}
	us, err := a.Users(cmd.Context())
	if err != nil {
		return o.notRunning(err)
	}
	if asJSON {
		out := make([]jsonUser, 0, len(us))
		for _, u := range us {
			out = append(out, jsonUser{Name: u.Name, ID: u.ID.String(), Role: u.Role, Services: nonNil(u.Services),
				FromConfig: u.FromConfig, Paired: jsonTime(u.Paired), LastSeen: jsonTime(u.LastSeen)})
		}
		return writeJSON(g.stdout, out)
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
}

func newDeviceRevokeCmd(g *globals, o *deviceOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME|ID",
		Short: "Remove a paired client: its tunnels close at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := o.admin(cmd)
			if err != nil {
				return err
			}
			u, err := a.Revoke(cmd.Context(), args[0])
			if err != nil {
				return o.notRunning(err)
			}
			fmt.Fprintf(g.stdout, "revoked %s (%s)\n", u.Name, u.ID)
			return nil
		},
	}
}

func newDeviceStatusCmd(g *globals, o *deviceOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the relay attachment and open sessions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := o.admin(cmd)
			if err != nil {
				return err
			}
			st, err := a.Status(cmd.Context())
			if err != nil {
				return o.notRunning(err)
			}
			if asJSON {
				return writeJSON(g.stdout, deviceStatusJSON(st))
			}
			return printDeviceStatus(g, st)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object (fields in docs/json.md)")
	return cmd
}

// jsonDeviceStatus is "burrow device status --json".
type jsonDeviceStatus struct {
	Relay               jsonRelayLink     `json:"relay"`
	LAN                 string            `json:"lan"`                   // "announced on IFACES, port N", "not announced: why" or "off"
	StateError          string            `json:"state_error"`           // "" if the state directory is writable
	RevocationsNotSaved []string          `json:"revocations_not_saved"` // names
	Sessions            []jsonSessionInfo `json:"sessions"`
}

// jsonRelayLink is the device's link to its relay.
type jsonRelayLink struct {
	Address      string  `json:"address"`
	Attached     bool    `json:"attached"`
	Draining     bool    `json:"draining"`
	RelayID      string  `json:"relay_id"` // "" until a relay proved its key
	Since        *string `json:"since"`    // when it attached, or detached
	ObservedAddr string  `json:"observed_addr"`
	RTTMS        float64 `json:"rtt_ms"`
	Error        string  `json:"error"` // why it is not attached; "" while attached
}

// jsonSessionInfo is one client's session.
type jsonSessionInfo struct {
	Client       string  `json:"client"`
	Name         string  `json:"name"`
	Since        *string `json:"since"`
	Path         string  `json:"path"` // "relay", "relay udp", "direct ADDR" or "lan ADDR"
	RTTMS        float64 `json:"rtt_ms"`
	Tunnels      int     `json:"tunnels"`
	TunnelsTotal int     `json:"tunnels_total"`
}

// deviceStatusJSON is st as "burrow device status --json" prints it.
func deviceStatusJSON(st device.Status) jsonDeviceStatus {
	r := st.Relay
	out := jsonDeviceStatus{
		Relay: jsonRelayLink{Address: r.Relay, Attached: r.Attached, Draining: r.Draining, Since: jsonTime(r.Since),
			ObservedAddr: r.ObservedAddr, RTTMS: ms(r.RTT), Error: r.Error},
		LAN:                 st.LAN,
		StateError:          st.StateError,
		RevocationsNotSaved: nonNil(st.NotSaved),
		Sessions:            []jsonSessionInfo{},
	}
	if !r.RelayID.IsZero() {
		out.Relay.RelayID = r.RelayID.String()
	}
	for _, s := range st.Sessions {
		out.Sessions = append(out.Sessions, jsonSessionInfo{Client: s.Client.String(), Name: s.Name, Since: jsonTime(s.Since),
			Path: s.Path, RTTMS: ms(s.RTT), Tunnels: s.Tunnels, TunnelsTotal: s.Total})
	}
	return out
}

// printDeviceStatus prints the running agent's status: its relay
// attachment, the state of its state directory, then its sessions.
func printDeviceStatus(g *globals, st device.Status) error {
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
	if st.LAN != "" {
		fmt.Fprintf(g.stdout, "lan: %s\n", st.LAN)
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
}

// when formats a time for a table, "-" if unknown.
func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}
