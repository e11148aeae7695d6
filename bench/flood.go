package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/session"
)

// Scenario 9: one client floods a second device with tunnel opens, as
// fast as it can, while the benchmark's client keeps a tunnel to the first
// device busy with 64-byte round trips. The second device has the default
// per-client limit (tunnel_rate), so it refuses most of the flood as rate
// limited; the figures say what the flood costs everyone else's latency.
// The flooder runs in this process (a client of the client package), as a
// hostile client would run its own code rather than burrow connect.

// floodWorkers open tunnels at once, each as soon as its last one is
// answered.
const floodWorkers = 8

// flood measures round trips at rest and during a flood, runs times.
func (b *bench) flood(ctx context.Context) error {
	dev2Key, flooderKey := filepath.Join(b.dir, "device2.key"), filepath.Join(b.dir, "flooder.key")
	dev2ID, err := b.idOf("id", "--identity", dev2Key)
	if err != nil {
		return err
	}
	flooderID, err := b.idOf("id", "--identity", flooderKey)
	if err != nil {
		return err
	}
	// The relay rereads its device list when the file changes.
	devices := filepath.Join(b.dir, "devices")
	if err := os.WriteFile(devices, []byte(setup.deviceID+"\n"+dev2ID+"\n"), 0o600); err != nil {
		return err
	}
	cfg := filepath.Join(b.dir, "device2.yaml")
	err = os.WriteFile(cfg, fmt.Appendf(nil, "relay: %s\nrelay_id: %s\nidentity: device2.key\nstate: state2\nservices:\n  echo: %s\nclients:\n  %s: [echo]\n",
		setup.relayAddr, setup.relayID, b.svc.echo, flooderID), 0o600)
	if err != nil {
		return err
	}
	dev2, err := b.start("device 2", b.burrow, "device", "--config", cfg, "--no-lan")
	if err != nil {
		return err
	}
	if _, err := dev2.waitFor(reAttached, 15*time.Second); err != nil {
		return err
	}
	fid, err := identity.Load(flooderKey)
	if err != nil {
		return err
	}
	relayID, err := identity.ParseID(setup.relayID)
	if err != nil {
		return err
	}
	dev2Ident, err := identity.ParseID(dev2ID)
	if err != nil {
		return err
	}
	fc, err := client.New(client.Config{Identity: fid, Relay: relaylink.RelayConfig{Addr: setup.relayAddr, ID: relayID},
		Direct: paths.DirectOptions{Disable: true}, NoLAN: true})
	if err != nil {
		return err
	}
	defer fc.Close()

	var rest50, rest99, flood50, flood99, refused, passed, relayCPU, devCPU []float64
	for range b.o.runs {
		ds, err := requestResponse(ctx, tcpDialer(setup.echo.addr), b.o.rr)
		if err != nil {
			return fmt.Errorf("at rest: %w", err)
		}
		rest50 = append(rest50, micros(percentile(ds, 50)))
		rest99 = append(rest99, micros(percentile(ds, 99)))

		f := startFlood(ctx, fc, dev2Ident)
		// Past the device's burst (1,000 tunnels at once), into the
		// steady state of refusals.
		time.Sleep(2 * time.Second)
		f.window(true)
		cpu0, err := cpuTimes(setup.relay, dev2)
		if err != nil {
			return err
		}
		ds, err = requestResponse(ctx, tcpDialer(setup.echo.addr), b.o.rr)
		ok, limited, took := f.window(false)
		cpu1, cerr := cpuTimes(setup.relay, dev2)
		if err == nil {
			err = cerr
		}
		if ferr := f.stop(); err == nil {
			err = ferr
		}
		if err != nil {
			return fmt.Errorf("during the flood: %w", err)
		}
		if limited == 0 {
			return errors.New("the device refused none of the flood")
		}
		flood50 = append(flood50, micros(percentile(ds, 50)))
		flood99 = append(flood99, micros(percentile(ds, 99)))
		refused = append(refused, float64(limited)/took.Seconds())
		passed = append(passed, float64(ok)/took.Seconds())
		relayCPU = append(relayCPU, 100*(cpu1[0]-cpu0[0]).Seconds()/took.Seconds())
		devCPU = append(devCPU, 100*(cpu1[1]-cpu0[1]).Seconds()/took.Seconds())
	}
	const rr = "9. 64-byte round trip beside a flood"
	b.add(result{Scenario: rr + " p50", Setup: "at rest", Unit: "µs", Samples: rest50, lowerBetter: true})
	b.add(result{Scenario: rr + " p50", Setup: "other client flooding", Unit: "µs", Samples: flood50, lowerBetter: true})
	b.add(result{Scenario: rr + " p99", Setup: "at rest", Unit: "µs", Samples: rest99, lowerBetter: true})
	b.add(result{Scenario: rr + " p99", Setup: "other client flooding", Unit: "µs", Samples: flood99, lowerBetter: true})
	b.add(result{Scenario: "9. flood of tunnel opens", Setup: "refused (rate limited)", Unit: "/s", Samples: refused})
	b.add(result{Scenario: "9. flood of tunnel opens", Setup: "let through", Unit: "/s", Samples: passed})
	b.add(result{Scenario: "9. CPU during the flood", Setup: "relay", Unit: "% core", Samples: relayCPU})
	b.add(result{Scenario: "9. CPU during the flood", Setup: "flooded device", Unit: "% core", Samples: devCPU})
	return nil
}

// cpuTimes returns the CPU time each process has used.
func cpuTimes(ps ...*proc) ([]time.Duration, error) {
	out := make([]time.Duration, len(ps))
	for i, p := range ps {
		var err error
		if out[i], err = cpuTime(p.pid()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// A flooder opens tunnels to a device as fast as it can, with
// floodWorkers at once, and counts the answers.
type flooder struct {
	cancel          context.CancelFunc
	wg              sync.WaitGroup
	ok, limited     atomic.Int64
	errMu           sync.Mutex
	err             error
	okAt, limitedAt int64
	at              time.Time
}

func startFlood(ctx context.Context, c *client.Client, dev identity.ID) *flooder {
	ctx, cancel := context.WithCancel(ctx)
	f := &flooder{cancel: cancel}
	for range floodWorkers {
		f.wg.Go(func() {
			for ctx.Err() == nil {
				tun, err := c.Dial(ctx, dev, "echo")
				switch {
				case err == nil:
					f.ok.Add(1)
					tun.Close()
				case errors.Is(err, session.ErrRateLimited):
					f.limited.Add(1)
				case ctx.Err() != nil:
				default:
					f.errMu.Lock()
					f.err = err
					f.errMu.Unlock()
					return
				}
			}
		})
	}
	return f
}

// window starts a measurement window, or ends it and returns what the
// flood got in it.
func (f *flooder) window(start bool) (ok, limited int64, took time.Duration) {
	if start {
		f.okAt, f.limitedAt, f.at = f.ok.Load(), f.limited.Load(), time.Now()
		return 0, 0, 0
	}
	return f.ok.Load() - f.okAt, f.limited.Load() - f.limitedAt, time.Since(f.at)
}

// stop ends the flood and returns its first unexpected error.
func (f *flooder) stop() error {
	f.cancel()
	f.wg.Wait()
	f.errMu.Lock()
	defer f.errMu.Unlock()
	if f.err != nil {
		return fmt.Errorf("flooder: %w", f.err)
	}
	return nil
}
