package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/paths"
)

// pingOptions are the flags of "burrow ping".
type pingOptions struct {
	rf                relayFlags
	idPath            string
	count             int
	interval, timeout time.Duration
	noDirect          bool
}

func newPingCmd(g *globals) *cobra.Command {
	o := &pingOptions{}
	cmd := &cobra.Command{
		Use:   "ping DEVICE [--count N]",
		Short: "Measure the round trip to a device, and show the path it takes",
		Long: `Open an end-to-end session with DEVICE (a paired device's name, or an ID
with --relay and --relay-id) and ping it through the session, printing one
line per ping with its round-trip time and the path the session used:
"relay", or "direct ADDR" once hole punching found a direct path.

The first pings go over the relay: a session always starts there, and moves
to a direct path when one works.`,
		Example: `  burrow ping cam1
  burrow ping cam1 --count 10 --interval 200ms`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError(cmd, "want DEVICE, got %d arguments", len(args))
			}
			if o.count < 1 {
				return usageError(cmd, "--count must be at least 1")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPing(cmd, g, o, args[0])
		},
	}
	fl := cmd.Flags()
	fl.IntVarP(&o.count, "count", "c", 5, "how many pings")
	fl.DurationVarP(&o.interval, "interval", "i", time.Second, "time between pings")
	fl.DurationVar(&o.timeout, "timeout", 15*time.Second, "how long to wait for the relay, and for each answer (the first includes opening the session)")
	o.rf.register(fl)
	fl.StringVar(&o.idPath, "identity", "", "key file (default: identity.key in the client's home)")
	fl.BoolVar(&o.noDirect, "no-direct", false, "keep the session on the relay (no direct path)")
	return cmd
}

// runPing opens a session with dev and pings it (see ping).
func runPing(cmd *cobra.Command, g *globals, o *pingOptions, dev string) error {
	log, err := g.quietLogger()
	if err != nil {
		return err
	}
	dir, err := g.homeDir()
	if err != nil {
		return err
	}
	home := client.Home{Dir: dir}
	f, err := resolveForward(home, dev, "", "", o.rf)
	if err != nil {
		return err
	}
	id, err := clientIdentity(home, o.idPath, log)
	if err != nil {
		return err
	}
	c, err := client.New(client.Config{Identity: id, Relay: f.relay, Logger: log,
		Direct: paths.DirectOptions{Disable: o.noDirect}})
	if err != nil {
		return err
	}
	defer c.Close()
	return ping(cmd.Context(), g, c, f, o.count, o.interval, o.timeout)
}

// ping pings f's device count times and prints each answer and a summary.
func ping(ctx context.Context, g *globals, c *client.Client, f forward, count int, interval, timeout time.Duration) error {
	fmt.Fprintf(g.stdout, "PING %s (%s) via relay %s\n", f.name, f.device.Short(), f.relay.Addr)
	// Without the relay no ping can be answered: wait for it first, so
	// that a relay that is down or untrusted is reported as such.
	actx, cancel := context.WithTimeout(ctx, timeout)
	err := c.WaitAttached(actx)
	cancel()
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("no answer from %s: %w", f.name, err)
	}
	var (
		answered         int
		sum, least, most time.Duration
		lastErr          error
	)
	for seq := 1; seq <= count; seq++ {
		if seq > 1 {
			select {
			case <-time.After(interval):
			case <-ctx.Done():
				return nil
			}
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		res, err := c.Ping(pctx, f.device)
		cancel()
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			err = pingCause(c, f, err)
			lastErr = err
			if errors.Is(err, context.DeadlineExceeded) {
				fmt.Fprintf(g.stdout, "seq=%d no answer within %s\n", seq, timeout)
			} else {
				fmt.Fprintf(g.stdout, "seq=%d error: %v\n", seq, err)
			}
			continue
		}
		answered++
		sum += res.RTT
		if answered == 1 || res.RTT < least {
			least = res.RTT
		}
		most = max(most, res.RTT)
		fmt.Fprintf(g.stdout, "seq=%d rtt=%s path=%s\n", seq, fmtRTT(res.RTT), res.Path)
	}
	fmt.Fprintf(g.stdout, "--- %s: %d sent, %d answered", f.name, count, answered)
	if answered > 0 {
		fmt.Fprintf(g.stdout, ", rtt min/avg/max %s/%s/%s", fmtRTT(least), fmtRTT(sum/time.Duration(answered)), fmtRTT(most))
	}
	fmt.Fprintln(g.stdout)
	if answered == 0 && lastErr != nil {
		return fmt.Errorf("no answer from %s: %w", f.name, lastErr)
	}
	return nil
}

// pingCause explains a ping that failed: while the client is not attached
// to the relay, the relay's last attach error (refused, untrusted, …) is
// the cause, not the ping's timeout.
func pingCause(c *client.Client, f forward, err error) error {
	st := c.RelayStatus()
	if st.Attached || st.LastError == nil {
		return err
	}
	return fmt.Errorf("not attached to relay %s: %w", f.relay.Addr, st.LastError)
}

// fmtRTT prints a round trip in milliseconds with three decimals.
func fmtRTT(d time.Duration) string {
	return fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond))
}
