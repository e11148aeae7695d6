package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relay"
)

// relayGCPercent is the relay's garbage-collection target (see GOGC).
const relayGCPercent = 25

// relayKeyFile is the relay's identity inside its data directory.
const relayKeyFile = "relay.key"

// relayIdentity loads or creates the relay's identity in dataDir.
func relayIdentity(dataDir string) (*identity.Identity, bool, error) {
	if dataDir == "" {
		return nil, false, errors.New("--data is required: the directory where the relay keeps its identity")
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, false, fmt.Errorf("data directory: %w", err)
	}
	return identity.LoadOrCreate(filepath.Join(dataDir, relayKeyFile))
}

func newRelayCmd(g *globals) *cobra.Command {
	var (
		listen, dataDir, devicesFile string
		open                         bool
		tlsCert, tlsKey              string
		keepAlive                    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "relay --listen ADDR --data DIR (--devices FILE | --open)",
		Short: "Run a relay that devices and clients attach to",
		Long: `Run a burrow relay: the public server that devices and clients attach to.

Agents attach over TLS through an HTTP upgrade on one port (443 in
production). The relay pairs clients with devices and forwards their
packets, which are end-to-end encrypted: it cannot read them.

On first start the relay creates its identity in the data directory and
logs its ID; agents pin the relay by that ID (relay_id, --relay-id). Print it
with "burrow relay id --data DIR". With --tls-cert and --tls-key the relay
serves a CA-signed certificate instead, which agents check against their
trusted roots.

Deny by default: the relay admits only devices listed in --devices FILE (one
device ID per line, "#" comments; re-read when it changes), or any device
with --open. With neither it refuses to start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			// The relay's forwarding path does not allocate, so collecting
			// garbage more often costs it little CPU, while the default
			// (100%) lets the heap, and so the memory of thousands of idle
			// sessions, grow to twice what is live. GOGC overrides this.
			if os.Getenv("GOGC") == "" {
				debug.SetGCPercent(relayGCPercent)
			}
			var allow func(identity.ID) bool
			switch {
			case open && devicesFile != "":
				return usageError(cmd, "--open and --devices exclude each other: --open admits any device")
			case open:
				allow = func(identity.ID) bool { return true }
			case devicesFile != "":
				l, err := relay.LoadDeviceList(devicesFile, log)
				if err != nil {
					return err
				}
				allow = l.Allow
				log.Info("device list loaded", "path", devicesFile, "devices", l.Len())
			default:
				return usageError(cmd, "refusing to start a relay no device may attach to: pass --devices FILE (device IDs allowed, one per line) or --open (any device)")
			}
			if (tlsCert == "") != (tlsKey == "") {
				return usageError(cmd, "--tls-cert and --tls-key go together")
			}
			id, created, err := relayIdentity(dataDir)
			if err != nil {
				return err
			}
			if created {
				log.Info("created relay identity", "path", filepath.Join(dataDir, relayKeyFile))
			}
			cfg := relay.Config{Identity: id, AllowDevice: allow, Logger: log, KeepAlive: keepAlive}
			if tlsCert != "" {
				cfg.GetCertificate, err = relay.CertFile(tlsCert, tlsKey)
				if err != nil {
					return err
				}
			}
			srv, err := relay.New(cfg)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			if open {
				log.Warn("relay is open: any device may attach")
			}
			log.Info("relay listening", "addr", ln.Addr().String(), "id", id.ID().String())
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(ln) }()
			select {
			case <-cmd.Context().Done():
				log.Info("relay stopping")
				srv.Close()
				<-errc
				return nil
			case err := <-errc:
				srv.Close()
				if errors.Is(err, http.ErrServerClosed) {
					return nil
				}
				return fmt.Errorf("serve: %w", err)
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", ":443", "TCP address to serve agents on")
	f.StringVar(&dataDir, "data", "", "directory for the relay's identity (created if missing)")
	f.StringVar(&devicesFile, "devices", "", "file of device IDs allowed to attach, one per line")
	f.BoolVar(&open, "open", false, "allow any device to attach")
	f.StringVar(&tlsCert, "tls-cert", "", "PEM certificate chain to serve instead of the self-signed one")
	f.StringVar(&tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	f.DurationVar(&keepAlive, "keepalive", 15*time.Second, "how often agents must ping; silent sessions close after 3 intervals")

	idCmd := &cobra.Command{
		Use:   "id --data DIR",
		Short: "Print the relay's ID, creating its identity if needed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, created, err := relayIdentity(dataDir)
			if err != nil {
				return err
			}
			if created {
				fmt.Fprintf(g.stderr, "created a new relay identity in %s\n", dataDir)
			}
			fmt.Fprintln(g.stdout, id.ID())
			return nil
		},
	}
	idCmd.Flags().StringVar(&dataDir, "data", "", "the relay's data directory")
	cmd.AddCommand(idCmd)
	return cmd
}
