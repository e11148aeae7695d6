package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/pairing"
)

func newPairCmd(g *globals) *cobra.Command {
	var name, inviteFile string
	var noLAN bool
	cmd := &cobra.Command{
		Use:   "pair [--name NAME] [--invite-file FILE]",
		Short: "Pair with a device using an invite from its owner",
		Long: `Pair this client with a device, using an invite made on the device with
"burrow device invite". The invite is read from standard input (paste it when
asked, or redirect it from a file), or from the file --invite-file names ("-"
is standard input). Giving it as an argument works too, but every user of
this machine can read a command line (ps, /proc) while it runs, and pair with
the invite before you do: burrow warns when you do that.

The device's key is pinned from the invite: a device that proves another key
fails with a key mismatch, and the invite's secret is never sent to it. The
secret is proven inside the encrypted session; the relay only ever sees a
hash of it.

A device on the same LAN is paired with there, directly, even with the
relay down (--no-lan: only through the relay); the invite's key pin and
secret are checked the same way.

The device is then known by NAME (by default the name it gave itself, or its
short ID), so that "burrow connect NAME SERVICE" works with no other flags.`,
		Example: `  burrow pair --name cam1                       # then paste the invite, Enter
  burrow pair --name cam1 --invite-file invite.txt
  burrow connect cam1 rtsp --listen 127.0.0.1:8554`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageError(cmd, "want the invite on standard input or with --invite-file, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return pairFromInvite(cmd, g, name, inviteFile, noLAN, args)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the name to know the device by")
	cmd.Flags().StringVar(&inviteFile, "invite-file", "", `read the invite from FILE ("-": standard input, the default)`)
	cmd.Flags().BoolVar(&noLAN, "no-lan", false, "do not look for the device on the LAN (only through the relay)")
	return cmd
}

// pairFromInvite pairs with the device of the invite (args, else inviteFile,
// else standard input) and saves it in the client's home as name (default:
// the name the device gave itself, else its short ID).
func pairFromInvite(cmd *cobra.Command, g *globals, name, inviteFile string, noLAN bool, args []string) error {
	log, err := g.quietLogger()
	if err != nil {
		return err
	}
	raw, err := readInvite(cmd, args, inviteFile, g.stderr)
	if err != nil {
		return err
	}
	inv, err := pairing.Parse(raw)
	if err != nil {
		return err
	}
	if name, err = client.InviteName(inv, name); err != nil {
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
	c, err := client.New(client.Config{Identity: id, Relay: client.InviteRelay(inv), Logger: log, NoLAN: noLAN})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
	defer cancel()
	if noLAN {
		if err := c.WaitAttached(ctx); err != nil {
			return err
		}
	}
	p, err := c.Pair(ctx, inv)
	if err != nil {
		return err
	}
	if _, err := home.SavePaired(name, inv, p); err != nil {
		return fmt.Errorf("paired, but saving the device failed: %w", err)
	}
	fmt.Fprintf(g.stdout, "paired with %s as %s (role %s; services: %s)\n", name, inv.Device.Short(), p.Role, strings.Join(p.Services, ", "))
	for _, note := range p.Notes() {
		fmt.Fprintf(g.stdout, "note: %s\n", note)
	}
	if len(p.Services) > 0 {
		fmt.Fprintf(g.stdout, "try: burrow connect %s %s\n", name, p.Services[0])
	}
	return nil
}

// argInviteWarning is printed when the invite is given as an argument.
const argInviteWarning = "burrow: warning: other users of this machine can read an invite given on the command line " +
	"(ps, /proc) while pair runs, and pair with it first; next time pass it on standard input " +
	"(burrow pair --name NAME, then paste it) or with --invite-file FILE"

// readInvite returns the invite: the argument (with a warning), else the
// first line of --invite-file or of standard input that is not blank.
func readInvite(cmd *cobra.Command, args []string, file string, stderr io.Writer) (string, error) {
	switch {
	case len(args) == 1 && file != "":
		return "", usageError(cmd, "give the invite as an argument or with --invite-file, not both")
	case len(args) == 1:
		fmt.Fprintln(stderr, argInviteWarning)
		return args[0], nil
	case file != "" && file != "-":
		f, err := os.Open(file)
		if err != nil {
			return "", fmt.Errorf("--invite-file: %w", err)
		}
		defer f.Close()
		s, err := readInviteLine(f)
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("--invite-file %s: no invite in the file: it is empty", file)
		}
		if err != nil {
			return "", fmt.Errorf("--invite-file %s: %w", file, err)
		}
		return s, nil
	}
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && isTerminal(f) {
		fmt.Fprint(stderr, "Paste the invite (burrow://pair?…) and press Enter: ")
	}
	s, err := readInviteLine(in)
	if errors.Is(err, io.EOF) {
		return "", usageError(cmd, "no invite on standard input: paste it when asked, or pass --invite-file FILE")
	}
	if err != nil {
		return "", fmt.Errorf("read the invite from standard input: %w", err)
	}
	return s, nil
}

// readInviteLine returns the first line of r that is not blank, trimmed,
// or io.EOF if there is none. It reads no more than an invite needs.
func readInviteLine(r io.Reader) (string, error) {
	br := bufio.NewReader(io.LimitReader(r, 16*pairing.MaxLen))
	for {
		line, err := br.ReadString('\n')
		if s := strings.TrimSpace(line); s != "" {
			return s, nil
		}
		if err != nil {
			return "", err
		}
	}
}

// jsonKnownDevice is a device in "burrow devices --json".
type jsonKnownDevice struct {
	Name     string   `json:"name"`
	ID       string   `json:"id"`
	Relay    string   `json:"relay"`
	RelayID  string   `json:"relay_id"` // "" if not pinned by ID
	Role     string   `json:"role"`
	Services []string `json:"services"`
	Paired   *string  `json:"paired"` // null if unknown
}

func newDevicesCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
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
			if asJSON {
				out := make([]jsonKnownDevice, 0, len(devs))
				for _, d := range devs {
					j := jsonKnownDevice{Name: d.Name, ID: d.ID.String(), Relay: d.Relay, Role: d.Role,
						Services: nonNil(d.Services), Paired: jsonTime(d.Paired)}
					if !d.RelayID.IsZero() {
						j.RelayID = d.RelayID.String()
					}
					out = append(out, j)
				}
				return writeJSON(g.stdout, out)
			}
			if len(devs) == 0 {
				fmt.Fprintln(g.stderr, "no devices yet: pair with burrow pair (see burrow pair --help)")
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
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON array (fields in docs/json.md)")
	cmd.AddCommand(newDevicesForgetCmd(g))
	return cmd
}

func newDevicesForgetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "forget NAME",
		Short: "Forget a paired device: remove it from this client's known devices",
		Long: `Forget a paired device: remove it from this client's known devices
(devices.yaml in its home), by name or ID. The client can no longer reach
it until it pairs again. The device still lists this client as a user
until its owner revokes it (burrow device revoke).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := g.homeDir()
			if err != nil {
				return err
			}
			kd, err := client.Home{Dir: dir}.ForgetDevice(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "forgot %s (%s)\n", kd.Name, kd.ID)
			return nil
		},
	}
}
