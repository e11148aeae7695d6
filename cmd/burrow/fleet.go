package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"text/tabwriter"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/fleetstate"
	"github.com/burrow-tunnel/burrow/identity"
)

// fleetOptions are the flags of "burrow fleet" and its subcommands.
type fleetOptions struct {
	key           string
	nats          natsOptions // --nats and its credentials and TLS, as burrow relay takes them
	relayID, addr string
	region        string
}

func newFleetCmd(g *globals) *cobra.Command {
	o := &fleetOptions{nats: natsOptions{replicas: 1}}
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Manage a fleet of relays: its key and its signed map",
		Long: `Manage a fleet of relays that agents trust through one pin, the fleet ID.

The fleet key signs the fleet map: the relays of the fleet (ID, address,
region), with a version that increases at every change. The map lives in
NATS JetStream, where the fleet's relays read it and watch it; each relay
shows it, in its certificate, to the agents that attach. Agents pin the fleet
ID where they would pin a relay's ID (relay_id, --relay-id) and accept a
relay only if the map signed by the fleet key lists it. A relay removed from
the map is refused by every agent that has seen the new map.

Keep the fleet key offline: whoever holds it decides which relays agents
trust. Only "init", "add" and "remove" need it.`,
		Args: cobra.NoArgs,
	}
	keyFlag := func(c *cobra.Command) {
		c.Flags().StringVar(&o.key, "key", "", "the fleet key's file")
	}
	natsFlag := func(c *cobra.Command) {
		o.nats.connFlags(c.Flags(), "NATS servers of the fleet (URL[,URL…], with JetStream)")
	}
	initCmd := &cobra.Command{
		Use:   "init --key FILE",
		Short: "Create the fleet key and print the fleet ID",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runFleetInit(cmd, g, o) },
	}
	keyFlag(initCmd)
	addCmd := &cobra.Command{
		Use:   "add --key FILE --nats URL --relay-id ID --addr HOST:PORT [--region NAME]",
		Short: "Add a relay to the fleet map, or change its address or region",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runFleetAdd(cmd, g, o) },
	}
	keyFlag(addCmd)
	natsFlag(addCmd)
	addCmd.Flags().StringVar(&o.relayID, "relay-id", "", `the relay's ID ("burrow relay id --data DIR" prints it)`)
	addCmd.Flags().StringVar(&o.addr, "addr", "", "the relay's address as agents dial it, host:port")
	addCmd.Flags().StringVar(&o.region, "region", "", "the relay's region")
	removeCmd := &cobra.Command{
		Use:   "remove --key FILE --nats URL --relay-id ID",
		Short: "Remove a relay from the fleet map: agents that see the new map refuse it",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runFleetRemove(cmd, g, o) },
	}
	keyFlag(removeCmd)
	natsFlag(removeCmd)
	removeCmd.Flags().StringVar(&o.relayID, "relay-id", "", "the relay's ID")
	listCmd := &cobra.Command{
		Use:   "list --nats URL",
		Short: "Print the fleet map",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runFleetList(cmd, g, o) },
	}
	natsFlag(listCmd)
	cmd.AddCommand(initCmd, addCmd, removeCmd, listCmd)
	return cmd
}

func runFleetInit(cmd *cobra.Command, g *globals, o *fleetOptions) error {
	if o.key == "" {
		return usageError(cmd, "--key is required: the file to create the fleet key in")
	}
	key, err := fleet.CreateKey(o.key)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stderr, "created the fleet key in %s: keep it offline; agents pin the fleet by the ID below (relay_id, --relay-id)\n", o.key)
	fmt.Fprintln(g.stdout, key.ID())
	return nil
}

func runFleetAdd(cmd *cobra.Command, g *globals, o *fleetOptions) error {
	id, err := o.needRelayID(cmd)
	if err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(o.addr); err != nil || o.addr == "" {
		return usageError(cmd, "--addr %q: want the relay's host:port, as agents dial it", o.addr)
	}
	r := fleet.Relay{ID: id, Addr: o.addr, Region: o.region}
	return o.change(cmd, g, func(m fleet.Map) (fleet.Map, error) { return m.With(r), nil })
}

func runFleetRemove(cmd *cobra.Command, g *globals, o *fleetOptions) error {
	id, err := o.needRelayID(cmd)
	if err != nil {
		return err
	}
	return o.change(cmd, g, func(m fleet.Map) (fleet.Map, error) {
		if _, ok := m.Relay(id); !ok {
			return m, fmt.Errorf("relay %s is not in the fleet map (version %d): nothing to remove (\"burrow fleet list\" shows the map)", id, m.Version)
		}
		return m.Without(id), nil
	})
}

func runFleetList(cmd *cobra.Command, g *globals, o *fleetOptions) error {
	fm, closeNATS, err := o.openMap(cmd)
	if err != nil {
		return err
	}
	defer closeNATS()
	_, m, _, err := fm.Get(cmd.Context())
	if err != nil {
		return err
	}
	printMap(g, m)
	return nil
}

func (o *fleetOptions) needRelayID(cmd *cobra.Command) (identity.ID, error) {
	if o.relayID == "" {
		return identity.ID{}, usageError(cmd, `--relay-id is required: the relay's ID ("burrow relay id --data DIR" prints it)`)
	}
	id, err := identity.ParseID(o.relayID)
	if err != nil {
		return identity.ID{}, usageError(cmd, "--relay-id: %v", err)
	}
	return id, nil
}

// change applies f to the fleet map in NATS, signed with --key's key.
func (o *fleetOptions) change(cmd *cobra.Command, g *globals, f func(fleet.Map) (fleet.Map, error)) error {
	if o.key == "" {
		return usageError(cmd, "--key is required: the fleet key's file (\"burrow fleet init\" creates it)")
	}
	key, err := fleet.LoadKey(o.key)
	if err != nil {
		return err
	}
	fm, closeNATS, err := o.openMap(cmd)
	if err != nil {
		return err
	}
	defer closeNATS()
	m, err := fm.Change(cmd.Context(), key, f)
	if err != nil {
		return err
	}
	printMap(g, m)
	return nil
}

// openMap connects to --nats and opens the fleet map's bucket.
func (o *fleetOptions) openMap(cmd *cobra.Command) (*fleetstate.FleetMap, func(), error) {
	if o.nats.urls == "" {
		return nil, nil, usageError(cmd, "--nats is required: the URL of a NATS server of the fleet")
	}
	if err := o.nats.check(cmd); err != nil {
		return nil, nil, err
	}
	nc, err := o.nats.connect("burrow fleet", slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, nil, err
	}
	fm, err := openFleetMap(cmd.Context(), nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return fm, nc.Close, nil
}

func openFleetMap(ctx context.Context, nc *nats.Conn) (*fleetstate.FleetMap, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("NATS JetStream: %w", err)
	}
	fm, err := fleetstate.OpenFleetMap(ctx, js)
	if err != nil {
		return nil, fmt.Errorf("%w: does the NATS server run with JetStream (nats-server -js)?", err)
	}
	return fm, nil
}

func printMap(g *globals, m fleet.Map) {
	fmt.Fprintf(g.stdout, "fleet %s, map version %d, %d relays\n", m.FleetID, m.Version, len(m.Relays))
	if len(m.Relays) == 0 {
		return
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RELAY ID\tADDRESS\tREGION")
	for _, r := range m.Relays {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.ID, r.Addr, r.Region)
	}
	tw.Flush()
}

// fleetMapSource returns the fleet map for a relay that joins the fleet
// (relay.Config.FleetMap): the map in NATS now, which must list relayID,
// and then every newer map of the same fleet, watched until ctx is done.
// A map that does not check, or is of another fleet, is left out (the
// relay keeps the one it has).
func fleetMapSource(ctx context.Context, nc *nats.Conn, relayID identity.ID) (func() []byte, error) {
	fm, err := openFleetMap(ctx, nc)
	if err != nil {
		return nil, err
	}
	signed, m, _, err := fm.Get(ctx)
	if errors.Is(err, fleetstate.ErrNoFleetMap) {
		return nil, fmt.Errorf("%w: add this relay first with \"burrow fleet add --key FILE --nats URL --relay-id %s --addr HOST:PORT\"", err, relayID)
	}
	if err != nil {
		return nil, err
	}
	if _, ok := m.Relay(relayID); !ok {
		return nil, fmt.Errorf("this relay (ID %s) is not in the map of fleet %s (version %d): add it first with \"burrow fleet add --key FILE --nats URL --relay-id %s --addr HOST:PORT\"",
			relayID, m.FleetID, m.Version, relayID)
	}
	var cur atomic.Pointer[[]byte]
	cur.Store(&signed)
	err = fm.Watch(ctx, func(b []byte) {
		if n, err := fleet.Verify(b, m.FleetID); err == nil && n.Version >= m.Version {
			cur.Store(&b)
		}
	})
	if err != nil {
		return nil, err
	}
	return func() []byte { return *cur.Load() }, nil
}
