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
	noRelayUDP        bool
	noLAN             bool
	asJSON            bool
}

func newPingCmd(g *globals) *cobra.Command {
	o := &pingOptions{}
	cmd := &cobra.Command{
		Use:   "ping DEVICE [--count N]",
		Short: "Measure the round trip to a device, and show the path it takes",
		Long: `Open an end-to-end session with DEVICE (a paired device's name, or an ID
with --relay and --relay-id) and ping it through the session, printing one
line per ping with its round-trip time and the path the session used:
"relay" (the relay's TCP link), "relay udp" once the session moved to the
relay's UDP port, "direct ADDR" once hole punching found a direct path, or
"lan ADDR" for a session that started on the LAN.

The session is tried on the LAN and over the relay at once. On the LAN,
where the device answers the client's mDNS query, it goes direct from the
first ping, even with the relay down. Through the relay, the first pings go
over its TCP link, and the session moves to a direct path when one works,
else to the relay's UDP port where the relay forwards datagrams. --no-lan
looks for the device through the relay only.`,
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
		ValidArgsFunction: completeDeviceService(g, false),
	}
	fl := cmd.Flags()
	fl.IntVarP(&o.count, "count", "c", 5, "how many pings")
	fl.DurationVarP(&o.interval, "interval", "i", time.Second, "time between pings")
	fl.DurationVar(&o.timeout, "timeout", 15*time.Second, "how long to wait for the relay, and for each answer (the first includes opening the session)")
	o.rf.register(fl)
	fl.StringVar(&o.idPath, "identity", "", "key file (default: identity.key in the client's home)")
	fl.BoolVar(&o.noDirect, "no-direct", false, "keep the session on the relay (no direct path)")
	fl.BoolVar(&o.noRelayUDP, "no-relay-udp", false, "keep what goes through the relay on its TCP link (not its UDP port)")
	fl.BoolVar(&o.noLAN, "no-lan", false, "do not look for the device on the LAN (only through the relay)")
	fl.BoolVar(&o.asJSON, "json", false, "print one JSON object once done, instead of a line per ping (fields in docs/json.md)")
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
		Direct: paths.DirectOptions{Disable: o.noDirect, NoRelayUDP: o.noRelayUDP}, NoLAN: o.noLAN})
	if err != nil {
		return err
	}
	defer c.Close()
	return ping(cmd.Context(), g, c, f, o)
}

// jsonPing is the result of "burrow ping --json".
type jsonPing struct {
	Device   string        `json:"device"`    // as given: a name, or an ID
	DeviceID string        `json:"device_id"` // in full
	Relay    string        `json:"relay"`
	Sent     int           `json:"sent"`
	Answered int           `json:"answered"`
	Pings    []jsonPingSeq `json:"pings"`
	RTTMinMS *float64      `json:"rtt_min_ms"` // null if none answered
	RTTAvgMS *float64      `json:"rtt_avg_ms"`
	RTTMaxMS *float64      `json:"rtt_max_ms"`
}

// jsonPingSeq is one ping: answered (rtt_ms, path) or not (error).
type jsonPingSeq struct {
	Seq   int      `json:"seq"`
	RTTMS *float64 `json:"rtt_ms"` // null if not answered
	Path  string   `json:"path"`   // "relay", "relay udp" or "direct ADDR"; "" if not answered
	Error string   `json:"error"`  // "" if answered
}

// msPtr is ms(d), for a JSON field that may be null.
func msPtr(d time.Duration) *float64 {
	v := ms(d)
	return &v
}

// ping pings f's device o.count times and prints each answer and a
// summary, or with --json one object once done.
func ping(ctx context.Context, g *globals, c *client.Client, f forward, o *pingOptions) error {
	count, interval, timeout := o.count, o.interval, o.timeout
	say := func(format string, args ...any) {
		if !o.asJSON {
			fmt.Fprintf(g.stdout, format, args...)
		}
	}
	say("PING %s (%s) via relay %s\n", f.name, f.device.Short(), f.relay.Addr)
	// Without the LAN, no ping can be answered without the relay: wait for
	// it first, so that a relay that is down or untrusted is reported as
	// such. With the LAN, the first ping's session is tried there too.
	var err error
	if o.noLAN {
		actx, cancel := context.WithTimeout(ctx, timeout)
		err = c.WaitAttached(actx)
		cancel()
	}
	rep := jsonPing{Device: f.name, DeviceID: f.device.String(), Relay: f.relay.Addr, Pings: []jsonPingSeq{}}
	if ctx.Err() != nil { // interrupted before a ping was sent
		if o.asJSON {
			return writeJSON(g.stdout, rep)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("no answer from %s: %w", f.name, err)
	}
	var (
		sum, least, most time.Duration
		lastErr          error
	)
pings:
	for seq := 1; seq <= count; seq++ {
		if seq > 1 {
			select {
			case <-time.After(interval):
			case <-ctx.Done(): // interrupted: the summary of those sent
				break pings
			}
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		res, err := c.Ping(pctx, f.device)
		cancel()
		if ctx.Err() != nil {
			break
		}
		rep.Sent++
		if err != nil {
			err = pingCause(c, f, err)
			lastErr = err
			if errors.Is(err, context.DeadlineExceeded) {
				say("seq=%d no answer within %s\n", seq, timeout)
				rep.Pings = append(rep.Pings, jsonPingSeq{Seq: seq, Error: fmt.Sprintf("no answer within %s", timeout)})
			} else {
				say("seq=%d error: %v\n", seq, err)
				rep.Pings = append(rep.Pings, jsonPingSeq{Seq: seq, Error: err.Error()})
			}
			continue
		}
		rep.Answered++
		sum += res.RTT
		if rep.Answered == 1 || res.RTT < least {
			least = res.RTT
		}
		most = max(most, res.RTT)
		say("seq=%d rtt=%s path=%s\n", seq, fmtRTT(res.RTT), res.Path)
		rep.Pings = append(rep.Pings, jsonPingSeq{Seq: seq, RTTMS: msPtr(res.RTT), Path: res.Path.String()})
	}
	say("--- %s: %d sent, %d answered", f.name, rep.Sent, rep.Answered)
	if rep.Answered > 0 {
		avg := sum / time.Duration(rep.Answered)
		say(", rtt min/avg/max %s/%s/%s", fmtRTT(least), fmtRTT(avg), fmtRTT(most))
		rep.RTTMinMS, rep.RTTAvgMS, rep.RTTMaxMS = msPtr(least), msPtr(avg), msPtr(most)
	}
	say("\n")
	if o.asJSON {
		if err := writeJSON(g.stdout, rep); err != nil {
			return err
		}
	}
	if rep.Answered == 0 && lastErr != nil {
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
