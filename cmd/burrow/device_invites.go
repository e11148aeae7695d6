package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/device"
)

// jsonInvite is a pending invite in "burrow device invites --json".
type jsonInvite struct {
	ID       string  `json:"id"`
	Role     string  `json:"role"`
	Name     string  `json:"name"` // "" if the invite names no one
	Created  *string `json:"created"`
	Expires  *string `json:"expires"`
	UsesLeft int     `json:"uses_left"`
}

func newDeviceInvitesCmd(g *globals, o *deviceOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "invites",
		Short: "List the invites not used yet; cancel one with invites cancel ID",
		Long: `List the running device's pending invites: those not used and not expired
yet. Each has an ID (also printed by "burrow device invite" on a terminal),
its role, the name it was made for if any, its expiry and how many clients
may still pair with it (an invite is single-use).

"burrow device invites cancel ID" cancels one: no one can pair with it any
more, and the relay stops admitting clients that present it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := o.admin(cmd)
			if err != nil {
				return err
			}
			ins, err := a.Invites(cmd.Context())
			if err != nil {
				return o.notRunning(err)
			}
			if asJSON {
				out := make([]jsonInvite, 0, len(ins))
				for _, in := range ins {
					out = append(out, jsonInvite{ID: in.ID, Role: in.Role, Name: in.Name,
						Created: jsonTime(in.Created), Expires: jsonTime(in.Expires), UsesLeft: in.UsesLeft})
				}
				return writeJSON(g.stdout, out)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tROLE\tNAME\tEXPIRES\tUSES LEFT")
			for _, in := range ins {
				name := in.Name
				if name == "" {
					name = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s (in %s)\t%d\n", in.ID, in.Role, name, when(in.Expires),
					time.Until(in.Expires).Round(time.Second), in.UsesLeft)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON array (fields in docs/json.md)")
	cmd.AddCommand(&cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a pending invite: no one can pair with it any more",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := o.admin(cmd)
			if err != nil {
				return err
			}
			in, err := a.CancelInvite(cmd.Context(), args[0])
			if err != nil {
				return o.notRunning(err)
			}
			fmt.Fprintf(g.stdout, "cancelled invite %s (role %s%s)\n", in.ID, in.Role, nameNote(in))
			return nil
		},
	})
	return cmd
}

// nameNote is ", for NAME" if the invite names its user.
func nameNote(in device.PendingInvite) string {
	if in.Name == "" {
		return ""
	}
	return ", for " + in.Name
}
