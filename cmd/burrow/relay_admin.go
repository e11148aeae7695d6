package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/adminsock"
	"github.com/burrow-tunnel/burrow/internal/fileperm"
	"github.com/burrow-tunnel/burrow/relay"
)

// The subcommands of "burrow relay" work on its data directory (--data):
// through the running relay's admin socket, or on its store if no relay
// runs there.

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

func newRelayIDCmd(g *globals, dataDir *string) *cobra.Command {
	return &cobra.Command{
		Use:   "id --data DIR",
		Short: "Print the relay's ID, creating its identity if needed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, created, err := relayIdentity(*dataDir)
			if err != nil {
				return err
			}
			if created {
				fmt.Fprintf(g.stderr, "created a new relay identity in %s\n", *dataDir)
			}
			fmt.Fprintln(g.stdout, id.ID())
			return nil
		},
	}
}

// withRelayState runs online through the running relay's admin socket, or,
// if no relay runs on dataDir, offline on its store (unless that relay
// keeps its state in NATS).
func withRelayState(ctx context.Context, dataDir string, online func(*relay.AdminClient) error, offline func(*relay.Store) error) error {
	if dataDir == "" {
		return errors.New("--data is required: the relay's data directory")
	}
	// A mistyped directory must not become a new, empty relay state:
	// tokens made there would enroll no device at the running relay.
	fi, err := os.Stat(dataDir)
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("permission denied on the relay's data directory %s (%w): run this as the relay's user or as root", dataDir, err)
	}
	if err != nil || !fi.IsDir() {
		return fmt.Errorf("data directory %s does not exist: give the --data of your relay (burrow relay --data DIR, or burrow relay id --data DIR, creates one)", dataDir)
	}
	err = online(relay.NewAdminClient(filepath.Join(dataDir, relayAdminsFile)))
	if !errors.Is(err, adminsock.ErrNotRunning) {
		return adminDenied(err, "relay")
	}
	if err := fileperm.CheckDir(dataDir, "data directory"); err != nil {
		return err
	}
	if err := checkNotFleet(dataDir); err != nil {
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
	cmd.AddCommand(newRelayTokenCreateCmd(g, dataDir))
	return cmd
}

func newRelayTokenCreateCmd(g *globals, dataDir *string) *cobra.Command {
	var uses int
	var ttl time.Duration
	var name string
	cmd := &cobra.Command{
		Use:   "create --data DIR [--uses N] [--ttl D] [--name NAME]",
		Short: "Print a new enrollment token",
		Long: `Print a new enrollment token. A device whose configuration carries it
(enroll_token) is enrolled the first time it attaches, and needs no token
afterwards. The token works for --uses devices, until --ttl has passed.
The relay keeps only a hash of it.

--name gives the device that enrolls with the token its name at the relay
("burrow relay devices" shows it). A name is for one device, so --name
takes a single-use token (--uses 1); name the devices of a token for
several once they enrolled, with "burrow relay devices name ID NAME".

--ttl is more than 0: no token lasts forever, and 0 is refused, as it is
by "burrow device invite". A token for a production line can last long:
--ttl 8760h is a year.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl <= 0 {
				return usageError(cmd, "--ttl %v: want a duration of more than 0 (a token for a production line can last long: --ttl 8760h)", ttl)
			}
			if name != "" && uses != 1 {
				return usageError(cmd, "--name with --uses %d: a name is for one device, so a named token is single-use (name the devices of a token for several once enrolled: burrow relay devices name ID NAME)", uses)
			}
			if name != "" {
				if err := relay.CheckDeviceName(name); err != nil {
					return usageError(cmd, "--name: %v", err)
				}
			}
			var tok string
			err := withRelayState(cmd.Context(), *dataDir,
				func(a *relay.AdminClient) (err error) {
					tok, err = a.CreateToken(cmd.Context(), uses, ttl, name)
					return err
				},
				func(st *relay.Store) (err error) {
					if name != "" {
						tok, err = st.CreateNamedToken(name, ttl)
					} else {
						tok, err = st.CreateToken(uses, ttl)
					}
					return err
				})
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, tok)
			return nil
		},
	}
	cmd.Flags().IntVar(&uses, "uses", 1, "how many devices may enroll with it")
	cmd.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long it stays valid (more than 0; a year: 8760h)")
	cmd.Flags().StringVar(&name, "name", "", "the name of the device it enrolls (single-use tokens only)")
	return cmd
}

// jsonRelayDevice is a device in "burrow relay devices --json".
type jsonRelayDevice struct {
	ID       string  `json:"id"`
	Name     string  `json:"name"`     // "" if it has none
	Enrolled *string `json:"enrolled"` // null for a device only listed
	Listed   bool    `json:"listed"`
	Online   *bool   `json:"online"` // null if no relay runs on the data directory
	LastSeen *string `json:"last_seen"`
}

func newRelayDevicesCmd(g *globals, dataDir *string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "devices --data DIR",
		Short: "List enrolled devices, with their names and online state",
		Long: `List the devices the relay enrolled, with their names and whether they are
attached (known only while the relay runs). A running relay started with
--devices FILE also lists the devices of that file that are not enrolled
(ENROLLED "listed").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRelayDevices(cmd, g, *dataDir, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON array (fields in docs/json.md)")
	cmd.AddCommand(newRelayDevicesRemoveCmd(g, dataDir), newRelayDevicesNameCmd(g, dataDir))
	return cmd
}

// runRelayDevices prints the enrolled devices as a table, or as JSON;
// whether they are online is known only from a running relay.
func runRelayDevices(cmd *cobra.Command, g *globals, dataDir string, asJSON bool) error {
	var devs []relay.EnrolledDevice
	running := true
	err := withRelayState(cmd.Context(), dataDir,
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
	if asJSON {
		out := make([]jsonRelayDevice, 0, len(devs))
		for _, d := range devs {
			j := jsonRelayDevice{ID: d.ID.String(), Name: d.Name, Enrolled: jsonTime(d.Enrolled), Listed: d.Listed, LastSeen: jsonTime(d.LastSeen)}
			if running {
				j.Online = &d.Online
			}
			out = append(out, j)
		}
		return writeJSON(g.stdout, out)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tENROLLED\tONLINE\tLAST SEEN")
	for _, d := range devs {
		online := "no"
		switch {
		case !running:
			online = "? (relay not running)"
		case d.Online:
			online = "yes"
		}
		enrolled := when(d.Enrolled)
		if d.Listed {
			enrolled = "listed"
		}
		name := d.Name
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.ID, name, enrolled, online, when(d.LastSeen))
	}
	return tw.Flush()
}

func newRelayDevicesNameCmd(g *globals, dataDir *string) *cobra.Command {
	return &cobra.Command{
		Use:   "name ID NAME --data DIR",
		Short: "Name an enrolled device, or rename it ('' removes its name)",
		Long: `Give an enrolled device its name at the relay, replacing the one it had
(from its enrollment token or an earlier rename); an empty NAME ('')
removes it. A device admitted by the --devices file is named there: its
name follows its ID on its line, and the relay reads the file again when
it changes.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := identity.ParseID(args[0])
			if err != nil {
				return err
			}
			name := args[1]
			if name != "" {
				if err := relay.CheckDeviceName(name); err != nil {
					return err
				}
			}
			err = withRelayState(cmd.Context(), *dataDir,
				func(a *relay.AdminClient) error { return a.SetName(cmd.Context(), id, name) },
				func(st *relay.Store) error {
					err := st.SetName(id, name)
					if errors.Is(err, relay.ErrNotEnrolled) {
						err = fmt.Errorf("%w: burrow relay devices lists the enrolled devices", err)
					}
					return err
				})
			if err != nil {
				return fmt.Errorf("cannot name %s: %w", id, err)
			}
			if name == "" {
				fmt.Fprintf(g.stdout, "%s has no name now\n", id)
			} else {
				fmt.Fprintf(g.stdout, "%s is named %s\n", id, name)
			}
			return nil
		},
	}
}

func newRelayDevicesRemoveCmd(g *globals, dataDir *string) *cobra.Command {
	return &cobra.Command{
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
}
