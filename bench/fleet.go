package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/burrow-tunnel/burrow/fleetstate"
)

// The fleet scenario: relays that share their state in NATS JetStream
// (burrow relay --nats), all of them separate processes on loopback: a
// stock nats-server with JetStream, built from the module's own
// dependency, and three relays set up with "burrow fleet init" and
// "burrow fleet add" as an operator would.

// fleetRelays is how many relays a fleet of the benchmark has.
const fleetRelays = 3

var reNATSReady = regexp.MustCompile(`Server is ready`)

// fleetSetup is a NATS server and the relays of one fleet.
type fleetSetup struct {
	dir     string
	nats    *proc
	natsURL string
	key     string // the fleet key's file
	id      string // the fleet ID, which agents pin
	relays  []*fleetRelay
}

// fleetRelay is one relay of a fleet.
type fleetRelay struct {
	p          *proc
	addr, data string
	id         string // the relay's own ID, as "burrow relay id" prints it
}

// natsServer builds nats-server once and returns its path.
func (b *bench) natsServer() (string, error) {
	bin := filepath.Join(b.dir, "nats-server")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if out, err := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build nats-server: %v\n%s", err, out)
	}
	return bin, nil
}

// startFleet starts a NATS server with JetStream and a fleet of
// fleetRelays relays on it, in a directory of its own named name.
func (b *bench) startFleet(name string) (*fleetSetup, error) {
	bin, err := b.natsServer()
	if err != nil {
		return nil, err
	}
	f := &fleetSetup{dir: filepath.Join(b.dir, name)}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return nil, err
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(addr)
	if f.nats, err = b.start(name+" nats-server", bin, "-js", "-sd", filepath.Join(f.dir, "nats"), "-a", host, "-p", port); err != nil {
		return nil, err
	}
	if _, err := f.nats.waitFor(reNATSReady, 15*time.Second); err != nil {
		return nil, err
	}
	f.natsURL = "nats://" + addr
	f.key = filepath.Join(f.dir, "fleet.key")
	if f.id, err = b.idOf("fleet", "init", "--key", f.key); err != nil {
		return nil, err
	}
	for i := range fleetRelays {
		r := &fleetRelay{data: filepath.Join(f.dir, "relay-"+string(rune('a'+i)))}
		if r.id, err = b.idOf("relay", "id", "--data", r.data); err != nil {
			return nil, err
		}
		if r.addr, err = freePort(); err != nil {
			return nil, err
		}
		if _, err := b.idOf("fleet", "add", "--key", f.key, "--nats", f.natsURL, "--relay-id", r.id, "--addr", r.addr); err != nil {
			return nil, err
		}
		f.relays = append(f.relays, r)
	}
	for i, r := range f.relays {
		// --drain 0, as for the benchmark's other relays: stopped, a
		// relay exits at once.
		if r.p, err = b.start(fmt.Sprintf("%s relay %c", name, 'a'+i), b.burrow, "relay", "--listen", r.addr, "--data", r.data,
			"--nats", f.natsURL, "--drain", "0"); err != nil {
			return nil, err
		}
		if _, err := r.p.waitFor(reRelayListening, 15*time.Second); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// stop stops the fleet's relays, then its NATS server.
func (f *fleetSetup) stop() {
	for _, r := range f.relays {
		if r.p != nil {
			r.p.stop()
		}
	}
	if f.nats != nil {
		f.nats.stop()
	}
}

// js connects to the fleet's NATS server; close closes the connection.
func (f *fleetSetup) js() (js jetstream.JetStream, close func(), err error) {
	nc, err := nats.Connect(f.natsURL)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to the fleet's NATS: %w", err)
	}
	if js, err = jetstream.New(nc); err != nil {
		nc.Close()
		return nil, nil, err
	}
	return js, nc.Close, nil
}

// coldRedirect measures the first connection of a new client that names
// relay A of a fleet for a device attached to relay B: relay A redirects
// it to B. Each sample is a new "burrow connect" process with a home of
// its own, whose devices.yaml pins the fleet ID; the single-relay cold
// connect (the row "burrow (cold)") is the reference, measured here if
// the latency step did not run. The row "burrow (cold, fleet)" is the
// same client naming relay B: the fleet without the redirect.
func (b *bench) coldRedirect(ctx context.Context) error {
	if !slices.ContainsFunc(b.results, func(r result) bool { return r.Setup == "burrow (cold)" }) {
		cold, err := b.coldConnects(ctx)
		if err != nil {
			return err
		}
		b.add(result{Scenario: "2. connect latency, cold", Setup: "burrow (cold)", Unit: "µs", Samples: cold, lowerBetter: true})
	}
	f, err := b.startFleet("fleet-redirect")
	if err != nil {
		return err
	}
	defer f.stop()
	a, relayB := f.relays[0], f.relays[1]
	dev, err := b.fleetDevice(ctx, f, relayB)
	if err != nil {
		return err
	}
	defer dev.p.stop()
	// The same without the redirect, the client naming relay B: what
	// pinning the fleet costs apart from the redirect.
	for _, c := range []struct {
		setup string
		r     *fleetRelay
	}{{"burrow (cold, fleet)", relayB}, {"burrow (cold, redirect)", a}} {
		samples, err := b.coldFleetConnects(ctx, f, dev, c.r, c.setup)
		if err != nil {
			return err
		}
		r := result{Scenario: "2. connect latency, cold", Setup: c.setup, Unit: "µs", Samples: samples, lowerBetter: true}
		if c.r == a {
			r.Target, r.check = "≤ 2 × burrow (cold)", againstSetup("burrow (cold)", 2)
		}
		b.addBeside(r)
	}
	return nil
}

// coldFleetConnects measures, b.o.cold times, the first connection of a
// new "burrow connect" process with a home of its own that names relay r
// for the device dev, in µs.
func (b *bench) coldFleetConnects(ctx context.Context, f *fleetSetup, dev *fleetDev, r *fleetRelay, name string) ([]float64, error) {
	var samples []float64
	for i := range b.o.cold {
		home := filepath.Join(f.dir, fmt.Sprintf("client-%s-%d", r.id[:8], i))
		if err := newClientHome(home, dev.clientKey, dev.id, r.addr, f.id); err != nil {
			return nil, err
		}
		p, err := b.start("connect "+name, b.burrow, "connect", "cam", "greeter", "--home", home, "--no-direct", "--no-lan")
		if err != nil {
			return nil, err
		}
		m, err := p.waitFor(reListening, 15*time.Second)
		if err != nil {
			return nil, err
		}
		ds, err := connectLatency(ctx, tcpDialer(m[1]), 1)
		p.stop()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		samples = append(samples, micros(ds[0]))
	}
	return samples, nil
}

// fleetDev is a burrow device process attached to a fleet relay.
type fleetDev struct {
	p         *proc
	id        string
	clientKey string // the key of the client it lets in
}

// fleetDevice starts a device that pins the fleet ID, attached to relay r
// and enrolled with a token made through r, serving the greeter to one
// client; it returns once the fleet's presence records the device at r.
func (b *bench) fleetDevice(ctx context.Context, f *fleetSetup, r *fleetRelay) (*fleetDev, error) {
	d := &fleetDev{clientKey: filepath.Join(f.dir, "client.key")}
	key := filepath.Join(f.dir, "device.key")
	var err error
	if d.id, err = b.idOf("id", "--identity", key); err != nil {
		return nil, err
	}
	clientID, err := b.idOf("id", "--identity", d.clientKey)
	if err != nil {
		return nil, err
	}
	token, err := b.idOf("relay", "token", "create", "--data", r.data)
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(f.dir, "device.yaml")
	err = os.WriteFile(cfg, fmt.Appendf(nil, `relay: %s
relay_id: %s
enroll_token: %s
identity: %s
services:
  greeter: %s
clients:
  %s: ["*"]
tunnel_rate: 1000000
`, r.addr, f.id, token, key, b.svc.greeter, clientID), 0o600)
	if err != nil {
		return nil, err
	}
	if d.p, err = b.start("fleet device", b.burrow, "device", "--config", cfg, "--no-lan"); err != nil {
		return nil, err
	}
	if _, err := d.p.waitFor(reAttached, 15*time.Second); err != nil {
		return nil, err
	}
	js, closeJS, err := f.js()
	if err != nil {
		return nil, err
	}
	defer closeJS()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, fleetstate.PresenceBucket)
	if err != nil {
		return nil, fmt.Errorf("presence bucket: %w", err)
	}
	for {
		_, err := kv.Get(ctx, d.id)
		if err == nil {
			return d, nil
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, fmt.Errorf("the device's presence record: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the device's presence record: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// newClientHome writes a client home that knows one device, "cam", at
// relay addr pinning the fleet ID, with a copy of the client key.
func newClientHome(home, clientKey, device, addr, fleetID string) error {
	if err := os.MkdirAll(home, 0o700); err != nil {
		return err
	}
	key, err := os.ReadFile(clientKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(home, "identity.key"), key, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(home, "devices.yaml"), fmt.Appendf(nil, "cam:\n  id: %s\n  relay: %s\n  relay_id: %s\n", device, addr, fleetID), 0o600)
}
