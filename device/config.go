package device

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/session"
)

// AllServices, in a list of services, grants every service.
const AllServices = "*"

// Config configures a [Device].
type Config struct {
	// Identity is the device's key; clients pin its ID. Required.
	Identity *identity.Identity
	// Name is what the device calls itself in invites. Optional.
	Name string
	// Relay is the relay the device attaches to. Required.
	Relay paths.RelayConfig
	// EnrollToken is presented to a relay that has not enrolled this
	// device yet, until the relay first admits the device (see
	// [paths.Config.EnrollToken]). Optional.
	EnrollToken string
	// OnEnrolled, if set, is called once when the relay first admits the
	// device while it has an EnrollToken: the token is no longer needed.
	// It must not block. Nil logs that the token can be deleted.
	OnEnrolled func()
	// Services maps a service name to the host:port it is served on. These
	// are the only addresses the device ever dials. Required, non-empty.
	Services map[string]string
	// Roles maps a role name to the services it grants ([AllServices] for
	// all). Paired clients have a role. Nil: no roles, so no invites.
	Roles map[string][]string
	// Clients maps a client ID to the services it may open ([AllServices]
	// for all): users fixed by the configuration. Nil or empty: none.
	Clients map[identity.ID][]string
	// StateDir holds the paired users and pending invites. Empty disables
	// pairing: only Clients get in. [New] refuses a directory that a user
	// other than the agent's or root owns, or that others may write (or
	// one below such a directory): that user could decide who gets in.
	StateDir string
	// Logger receives one line per significant event. Nil discards logs.
	Logger *slog.Logger
	// DialRelay opens the TCP connection to the relay. Nil uses net.Dialer.
	DialRelay func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialService dials a service's configured address. Nil uses
	// net.Dialer. The connection must support CloseWrite (a TCP connection
	// does), so that half-closes pass through.
	DialService func(ctx context.Context, network, addr string) (net.Conn, error)
	// ServiceDialTimeout bounds dialing a service. Zero means 5s.
	ServiceDialTimeout time.Duration
	// Direct configures direct paths to clients (on unless disabled).
	Direct paths.DirectOptions
	// TunnelRate bounds how many tunnels per second one client may open,
	// with bursts of TunnelBurst; past it, opens are refused as rate
	// limited. Zero means 100 per second, bursts of 1,000.
	TunnelRate  float64
	TunnelBurst int
	// ReattachSpread spreads this device's return to a relay that dropped
	// every agent at once (see [paths.Config.ReattachSpread]): a relay
	// serving thousands of devices must not get them all back in the same
	// second. Zero means 15s; negative means none.
	ReattachSpread time.Duration
}

// DefaultReattachSpread is a device's ReattachSpread unless configured.
const DefaultReattachSpread = 15 * time.Second

// setDefaults fills in the fields whose zero value means a default.
func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ServiceDialTimeout == 0 {
		c.ServiceDialTimeout = 5 * time.Second
	}
	if c.TunnelRate == 0 {
		c.TunnelRate = 100
	}
	if c.TunnelBurst == 0 {
		c.TunnelBurst = 1000
	}
	switch {
	case c.ReattachSpread == 0:
		c.ReattachSpread = DefaultReattachSpread
	case c.ReattachSpread < 0:
		c.ReattachSpread = 0
	}
	if c.DialService == nil {
		d := &net.Dialer{}
		c.DialService = d.DialContext
	}
}

func (c *Config) validate() error {
	if c.Identity == nil {
		return errors.New("device: Config.Identity is required")
	}
	if c.Name != "" {
		if err := pairing.ValidName(c.Name); err != nil {
			return fmt.Errorf("device: name: %w", err)
		}
	}
	if len(c.Services) == 0 {
		return errors.New("device: no services configured: list at least one under services")
	}
	for name, addr := range c.Services {
		if err := session.ValidService(name); err != nil {
			return fmt.Errorf("device: services: %w", err)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("device: service %s: address %q: want host:port", name, addr)
		}
	}
	check := func(who string, svcs []string) error {
		for _, s := range svcs {
			if s == AllServices {
				continue
			}
			if _, ok := c.Services[s]; !ok {
				return fmt.Errorf("device: %s: service %q is not defined under services (defined: %s)",
					who, s, joinSorted(slices.Collect(maps.Keys(c.Services))))
			}
		}
		return nil
	}
	for role, svcs := range c.Roles {
		if err := pairing.ValidName(role); err != nil {
			return fmt.Errorf("device: roles: %w", err)
		}
		if err := check("role "+role, svcs); err != nil {
			return err
		}
	}
	for id, svcs := range c.Clients {
		if id.IsZero() {
			return errors.New("device: clients: zero client ID")
		}
		if err := check("client "+id.String(), svcs); err != nil {
			return err
		}
	}
	return nil
}

func joinSorted(names []string) string {
	slices.Sort(names)
	return strings.Join(names, ", ")
}
