package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/identity"
)

func newIDCmd(g *globals) *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "id [--identity PATH]",
		Short: "Print this agent's ID, creating its key if there is none",
		Long: `Print this agent's ID on stdout, alone on one line.

The ID is derived from the agent's Ed25519 public key (the SHA-256 of the
key, in lowercase base32): it names the agent and lets anyone check its key,
and it is safe to paste into a shell or a YAML file.

Without --identity it is the client's key, in its home directory (--home,
$BURROW_HOME, or burrow/ in the user's config directory). If there is no key
at the path, a new one is created there (mode 0600).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printID(g, path)
		},
	}
	cmd.Flags().StringVar(&path, "identity", "", "key file (default: identity.key in the client's home)")
	return cmd
}

// printID prints the ID of the key at path (default: the client's, in its
// home), creating the key if there is none.
func printID(g *globals, path string) error {
	var id *identity.Identity
	var created bool
	var err error
	if path == "" {
		var dir string
		if dir, err = g.homeDir(); err != nil {
			return err
		}
		home := client.Home{Dir: dir}
		path = home.IdentityPath()
		id, created, err = home.Identity()
	} else {
		id, created, err = identity.LoadOrCreate(path)
	}
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(g.stderr, "created a new identity at %s\n", path)
	}
	fmt.Fprintln(g.stdout, id.ID())
	return nil
}
