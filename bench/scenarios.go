package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"
)

// burrowSetup is the relay, the device and the connect processes.
type burrowSetup struct {
	relay, device         *proc
	relayAddr, relayID    string
	deviceID, clientKey   string
	source, greeter, echo *connect // on the TCP relay path (--no-direct --no-relay-udp)
	udp                   *connect // to source, on the UDP relay path (--no-direct)
	direct                *connect // to source, on a direct path over loopback
}

// A pathMode is the path a connect process's session keeps to.
type pathMode int

const (
	viaTCP      pathMode = iota // the relay's TCP sessions
	viaRelayUDP                 // the relay's UDP port
	viaDirect                   // a direct path over loopback
)

type connect struct {
	p    *proc
	addr string
}

// connect starts "burrow connect" to service and waits until it listens.
// Its session keeps to the path mode says.
func (b *bench) connect(s *burrowSetup, service string, mode pathMode) (*connect, error) {
	path := []string{"--no-direct", "--no-relay-udp"}
	switch mode {
	case viaRelayUDP:
		path = []string{"--no-direct"}
	case viaDirect:
		path = []string{"--direct-addr=127.0.0.1"}
	}
	p, err := b.start("connect "+service, b.burrow, append([]string{"connect", s.deviceID, service,
		"--relay", s.relayAddr, "--relay-id", s.relayID, "--identity", s.clientKey, "--no-lan"}, path...)...)
	if err != nil {
		return nil, err
	}
	m, err := p.waitFor(reListening, 15*time.Second)
	if err != nil {
		return nil, err
	}
	return &connect{p: p, addr: m[1]}, nil
}

var setup *burrowSetup

// startBurrow starts a relay admitting one device, that device serving the
// benchmark's services to one client, and a connect process per service.
func (b *bench) startBurrow(ctx context.Context) error {
	s, err := b.startAgents()
	if err != nil {
		return err
	}
	// Scenario 7: the device agent's idle footprint, attached and serving
	// no one yet.
	time.Sleep(b.o.settle)
	idle, err := rssSamples(s.device.pid(), 3, b.o.gap)
	if err != nil {
		return err
	}
	b.add(result{Scenario: "7. device agent idle RSS", Setup: "device", Unit: "MiB", Samples: mib(idle),
		Target: "< 16 MiB", check: below(16)})

	for _, svc := range []struct {
		name string
		to   **connect
	}{{"source", &s.source}, {"greeter", &s.greeter}, {"echo", &s.echo}} {
		if *svc.to, err = b.connect(s, svc.name, viaTCP); err != nil {
			return err
		}
	}
	if s.udp, err = b.connect(s, "source", viaRelayUDP); err != nil {
		return err
	}
	if s.direct, err = b.connect(s, "source", viaDirect); err != nil {
		return err
	}
	setup = s
	return nil
}

// startAgents starts a relay admitting one device, and that device serving
// the benchmark's services to one client, whose key it writes.
func (b *bench) startAgents() (*burrowSetup, error) {
	s := &burrowSetup{clientKey: filepath.Join(b.dir, "client.key")}
	relayData := filepath.Join(b.dir, "relay")
	var err error
	if s.relayID, err = b.idOf("relay", "id", "--data", relayData); err != nil {
		return nil, err
	}
	if s.deviceID, err = b.idOf("id", "--identity", filepath.Join(b.dir, "device.key")); err != nil {
		return nil, err
	}
	clientID, err := b.idOf("id", "--identity", s.clientKey)
	if err != nil {
		return nil, err
	}
	devices := filepath.Join(b.dir, "devices")
	if err := os.WriteFile(devices, []byte(s.deviceID+"\n"), 0o600); err != nil {
		return nil, err
	}
	if s.relayAddr, err = freePort(); err != nil {
		return nil, err
	}
	// --drain 0: stopped, the relay exits at once (and writes its CPU
	// profile) rather than draining past the benchmark's patience.
	if s.relay, err = b.start("relay", b.burrow, "relay", "--listen", s.relayAddr, "--data", relayData, "--devices", devices, "--drain", "0"); err != nil {
		return nil, err
	}
	if _, err := s.relay.waitFor(reRelayListening, 15*time.Second); err != nil {
		return nil, err
	}
	// The benchmark opens tunnels faster than the device's default limit
	// allows a client; it measures burrow, not the limiter.
	cfg := filepath.Join(b.dir, "device.yaml")
	err = os.WriteFile(cfg, fmt.Appendf(nil, `relay: %s
relay_id: %s
identity: device.key
services:
  source: %s
  greeter: %s
  echo: %s
clients:
  %s: ["*"]
direct_addrs: [127.0.0.1]
tunnel_rate: 1000000
`, s.relayAddr, s.relayID, b.svc.source, b.svc.greeter, b.svc.echo, clientID), 0o600)
	if err != nil {
		return nil, err
	}
	if s.device, err = b.start("device", b.burrow, "device", "--config", cfg, "--no-lan"); err != nil {
		return nil, err
	}
	if _, err := s.device.waitFor(reAttached, 15*time.Second); err != nil {
		return nil, err
	}
	return s, nil
}

// rssSamples reads the RSS of pid n times, gap apart.
func rssSamples(pid, n int, gap time.Duration) ([]float64, error) {
	var out []float64
	for i := range n {
		if i > 0 {
			time.Sleep(gap)
		}
		v, err := rss(pid)
		if err != nil {
			return nil, err
		}
		out = append(out, float64(v))
	}
	return out, nil
}

func mib(bs []float64) []float64 {
	out := make([]float64, len(bs))
	for i, v := range bs {
		out[i] = v / (1 << 20)
	}
	return out
}

// footprint builds stripped device binaries for small targets.
func (b *bench) footprint(ctx context.Context) error {
	if !b.o.sizes {
		fmt.Fprintln(os.Stderr, "bench:   (binary sizes are measured without -quick)")
		return nil
	}
	for _, t := range []struct{ goos, goarch, goarm, target string }{
		{"linux", "arm", "7", "< 12 MB"},
		{"linux", "arm64", "", ""},
		{"linux", "mipsle", "", ""},
	} {
		out := filepath.Join(b.dir, "burrow-"+t.goarch)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/burrow")
		cmd.Env = append(os.Environ(), "GOOS="+t.goos, "GOARCH="+t.goarch, "GOARM="+t.goarm, "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build for %s/%s: %v\n%s", t.goos, t.goarch, err, msg)
		}
		fi, err := os.Stat(out)
		if err != nil {
			return err
		}
		name := t.goos + "/" + t.goarch
		if t.goarm != "" {
			name += " (GOARM=" + t.goarm + ")"
		}
		r := result{Scenario: "7. stripped binary size", Setup: name, Unit: "MB", Samples: []float64{float64(fi.Size()) / 1e6}}
		if t.target != "" {
			r.Target, r.check = t.target, below(12)
		}
		b.add(r)
	}
	return nil
}

// idleMemory measures each process at rest after one tunnel has been used.
func (b *bench) idleMemory(ctx context.Context) error {
	if _, err := requestResponse(ctx, tcpDialer(setup.echo.addr), 10); err != nil {
		return err
	}
	return b.restingRSS(result{Scenario: "5. RSS at idle"})
}

// restingRSS waits for the processes to settle, then adds a row like
// row for the RSS of each of relay, device and client.
func (b *bench) restingRSS(row result) error {
	time.Sleep(b.o.settle)
	for _, p := range []struct {
		name string
		p    *proc
	}{{"relay", setup.relay}, {"device", setup.device}, {"client", setup.echo.p}} {
		s, err := rssSamples(p.p.pid(), 3, b.o.gap)
		if err != nil {
			return err
		}
		r := row
		r.Setup, r.Unit, r.Samples = p.name, "MiB", mib(s)
		b.add(r)
	}
	return nil
}

// connectLatency measures fresh connections: raw, through a warm session,
// and the first connection of a new client (cold: handshake included).
func (b *bench) connectLatency(ctx context.Context) error {
	type series struct {
		setup string
		dial  dialer
	}
	warm := tcpDialer(setup.greeter.addr)
	if _, err := connectLatency(ctx, warm, 20); err != nil {
		return err
	}
	for _, s := range []series{{"raw", tcpDialer(b.svc.greeter)}, {"burrow (warm)", warm}} {
		var p50, p99 []float64
		for range b.o.runs {
			ds, err := connectLatency(ctx, s.dial, b.o.conns)
			if err != nil {
				return fmt.Errorf("%s: %w", s.setup, err)
			}
			p50 = append(p50, micros(percentile(ds, 50)))
			p99 = append(p99, micros(percentile(ds, 99)))
		}
		r50 := result{Scenario: "2. connect latency p50", Setup: s.setup, Unit: "µs", Samples: p50, lowerBetter: true}
		if s.setup != "raw" {
			r50.Target, r50.check = "≤ 12 × raw", ratioAtMost(12)
		}
		b.add(r50)
		b.add(result{Scenario: "2. connect latency p99", Setup: s.setup, Unit: "µs", Samples: p99, lowerBetter: true})
	}
	cold, err := b.coldConnects(ctx)
	if err != nil {
		return err
	}
	b.add(result{Scenario: "2. connect latency, cold", Setup: "burrow (cold)", Unit: "µs", Samples: cold, lowerBetter: true})
	return nil
}

// coldConnects measures, b.o.cold times, the first connection of a new
// "burrow connect" process through the relay, in µs.
func (b *bench) coldConnects(ctx context.Context) ([]float64, error) {
	var cold []float64
	for range b.o.cold {
		c, err := b.connect(setup, "greeter", viaTCP)
		if err != nil {
			return nil, err
		}
		ds, err := connectLatency(ctx, tcpDialer(c.addr), 1)
		c.p.stop()
		if err != nil {
			return nil, fmt.Errorf("cold: %w", err)
		}
		cold = append(cold, micros(ds[0]))
	}
	return cold, nil
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// requestResponse measures 64-byte round trips on an open tunnel.
func (b *bench) requestResponse(ctx context.Context) error {
	for _, s := range []struct {
		setup string
		addr  string
	}{{"raw", b.svc.echo}, {"burrow", setup.echo.addr}} {
		var p50, p99 []float64
		for range b.o.runs {
			ds, err := requestResponse(ctx, tcpDialer(s.addr), b.o.rr)
			if err != nil {
				return fmt.Errorf("%s: %w", s.setup, err)
			}
			p50 = append(p50, micros(percentile(ds, 50)))
			p99 = append(p99, micros(percentile(ds, 99)))
		}
		b.add(result{Scenario: "3. 64-byte round trip p50", Setup: s.setup, Unit: "µs", Samples: p50, lowerBetter: true})
		b.add(result{Scenario: "3. 64-byte round trip p99", Setup: s.setup, Unit: "µs", Samples: p99, lowerBetter: true})
	}
	return nil
}

// idleTunnels opens many tunnels, each proven to work end to end, leaves
// them idle and measures every process.
func (b *bench) idleTunnels(ctx context.Context) error {
	conns := make([]net.Conn, 0, b.o.tunnels)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	one := make([]byte, 1)
	for range b.o.tunnels {
		c, err := net.Dial("tcp", setup.echo.addr)
		if err != nil {
			return err
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(one); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, one); err != nil {
			return fmt.Errorf("tunnel %d: %w", len(conns), err)
		}
	}
	return b.restingRSS(result{Scenario: "5. RSS with " + strconv.Itoa(b.o.tunnels) + " idle tunnels",
		Target: "< 60 MiB", check: below(60)})
}

// throughput measures one and four connections reading from a source, for
// raw, the two references and burrow, with the CPU each forwarding process
// spends per GB.
func (b *bench) throughput(ctx context.Context) error {
	hop2, hop2Addr, err := b.startHop("hop 2", "hop", b.svc.source)
	if err != nil {
		return err
	}
	hop1, twoHop, err := b.startHop("hop 1", "hop", hop2Addr)
	if err != nil {
		return err
	}
	tlsHop, tlsAddr, err := b.startHop("tls hop", "tlshop", b.svc.tlsSource)
	if err != nil {
		return err
	}
	// The same forwarder, leading to the paced source.
	tlsPacedHop, tlsPacedAddr, err := b.startHop("tls hop paced", "tlshop", b.svc.tlsPaced)
	if err != nil {
		return err
	}
	clientTLS := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}

	setups := []setupT{
		{"raw", tcpDialer(b.svc.source), b.o.refDur, nil},
		{"two-hop", tcpDialer(twoHop), b.o.refDur, []measured{{"hop 1", hop1}, {"hop 2", hop2}}},
		{"tls-hop", tlsDialer(tlsAddr, clientTLS), b.o.refDur, []measured{{"tls hop", tlsHop}}},
		{"burrow", tcpDialer(setup.source.addr), b.o.duration,
			[]measured{{"relay", setup.relay}, {"device", setup.device}, {"client", setup.source.p}}},
		{"burrow relay-udp", tcpDialer(setup.udp.addr), b.o.duration,
			[]measured{{"relay", setup.relay}, {"device", setup.device}, {"client", setup.udp.p}}},
		{"burrow direct", tcpDialer(setup.direct.addr), b.o.duration,
			[]measured{{"relay", setup.relay}, {"device", setup.device}, {"client", setup.direct.p}}},
	}
	// Scenario 8: the direct session must be direct, and the UDP relay
	// one on the relay's UDP port, before they are measured. A first
	// connection opens each; the path follows.
	if err := b.goPath(ctx, setup.direct, reDirect); err != nil {
		return err
	}
	if err := b.goPath(ctx, setup.udp, reRelayUDP); err != nil {
		return err
	}
	for _, conns := range []int{1, 4} {
		var burrowRate float64
		for _, s := range setups {
			rate, err := b.measureThroughput(ctx, conns, s.name, s.dial, s.d, s.cpu)
			if err != nil {
				return err
			}
			if s.name == "burrow" {
				burrowRate = rate
			}
		}
		if conns == 1 {
			if err := b.udpFloodThroughput(ctx, setups); err != nil {
				return err
			}
		}
		// The TLS forwarder again, carrying burrow's rate as burrow's
		// relay carries it: from a source that paces its bursts, to a
		// reader that takes each as it comes. The relay's agents are such
		// a source and such a reader; the like-for-like reference for the
		// relay's CPU per GB. (Slowing the reader instead, as this row
		// once did, keeps the forwarder's sockets full: the kernel then
		// sends its bytes when the reader's acknowledgements come, and
		// charges that work to the reader. On loopback that is the
		// receiving socket's work too, about a third of the forwarder's
		// CPU at this rate.)
		paced := pacedDialer(tlsDialer(tlsPacedAddr, clientTLS), burrowRate/float64(conns))
		if _, err := b.measureThroughput(ctx, conns, "tls-hop, paced at burrow's rate", paced, b.o.refDur, []measured{{"tls hop", tlsPacedHop}}); err != nil {
			return err
		}
	}
	return nil
}

// startHop starts a reference forwarder (mode hop or tlshop, a child of
// this program) to to, and returns it and the address it listens on.
func (b *bench) startHop(name, mode, to string) (*proc, string, error) {
	p, err := b.start(name, b.self, mode, "-to", to)
	if err != nil {
		return nil, "", err
	}
	m, err := p.waitFor(reHop, 10*time.Second)
	if err != nil {
		return nil, "", err
	}
	return p, m[1], nil
}

// A setupT is one setup of the throughput scenario.
type setupT struct {
	name string
	dial dialer
	d    time.Duration
	cpu  []measured
}

// udpFloodThroughput measures the UDP relay path's tunnel again under a
// flood of datagrams from an unbound address (see udpflood.go).
func (b *bench) udpFloodThroughput(ctx context.Context, setups []setupT) error {
	var s setupT
	for _, x := range setups {
		if x.name == "burrow relay-udp" {
			s = x
		}
	}
	f, err := startUDPFlood(ctx, setup.relayAddr)
	if err != nil {
		return err
	}
	defer f.stop()
	_, err = b.measureThroughput(ctx, 1, "burrow relay-udp, UDP flood", s.dial, s.d, s.cpu)
	return err
}

var (
	reDirect   = regexp.MustCompile(`msg="session path" .*path="direct `)
	reRelayUDP = regexp.MustCompile(`msg="session path" .*path="relay udp"`)
)

// goPath opens c's session with a first connection and waits until the
// session logs the path path matches.
func (b *bench) goPath(ctx context.Context, c *connect, path *regexp.Regexp) error {
	conn, err := net.DialTimeout("tcp", c.addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("first connection of the session of %s: %w", c.p.name, err)
	}
	if _, err := c.p.waitFor(path, 10*time.Second); err != nil {
		return fmt.Errorf("the session of %s did not take its path (%s): %w", c.p.name, path, err)
	}
	return nil
}

type measured struct {
	name string
	p    *proc
}

// measureThroughput runs one throughput setup b.o.runs times, adds its
// rows, and returns its median rate in bits per second.
func (b *bench) measureThroughput(ctx context.Context, conns int, name string, dial dialer, d time.Duration, procs []measured) (float64, error) {
	var rates []float64
	cpu := make([][]float64, len(procs))
	for range b.o.runs {
		used := make([]time.Duration, len(procs))
		window := func(start bool) {
			for i, m := range procs {
				t, _ := cpuTime(m.p.pid())
				if start {
					used[i] = t
				} else {
					used[i] = t - used[i]
				}
			}
		}
		bps, moved, err := throughput(ctx, dial, conns, b.o.warmup, d, window)
		if err != nil {
			return 0, fmt.Errorf("%s, %d connections: %w", name, conns, err)
		}
		rates = append(rates, bps/1e9)
		for i := range procs {
			cpu[i] = append(cpu[i], used[i].Seconds()/(float64(moved)/1e9))
		}
	}
	r := result{Scenario: fmt.Sprintf("1. throughput, %d connection%s", conns, plural(conns)), Setup: name, Unit: "Gbit/s", Samples: rates}
	switch {
	case name == "burrow" && conns == 1:
		r.Target, r.check = "≥ 0.08 × raw", ratioAtLeast(0.08)
	case name == "burrow relay-udp" && conns == 1:
		r.Target, r.check = "≥ 0.9 × direct", atLeastSetup("burrow direct", 0.9)
	case name == "burrow relay-udp, UDP flood":
		r.Target, r.check = "≥ 0.8 × relay-udp", atLeastSetup("burrow relay-udp", 0.8)
	}
	b.add(r)
	median := b.results[len(b.results)-1].Median * 1e9
	for i, m := range procs {
		cr := result{Scenario: fmt.Sprintf("4. CPU per GB, %d connection%s", conns, plural(conns)), Setup: name + ": " + m.name,
			Unit: "CPU s/GB", Samples: cpu[i], lowerBetter: true}
		switch {
		case m.name == "relay" && name == "burrow":
			cr.Target, cr.check = "≤ 1.5 × tls-hop", againstSetup("tls-hop: tls hop", 1.5)
		case m.name == "relay" && name == "burrow relay-udp":
			cr.Target, cr.check = "≤ 0.3 × tls-hop", againstSetup("tls-hop: tls hop", 0.3)
		}
		b.add(cr)
	}
	return median, nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// relayPerDevice measures the RSS a fresh relay gains per attached idle
// device, with simulated devices: each a real TCP+TLS relay session and a
// UDP binding at the relay's UDP port (the UDP relay path), which the
// relay's metrics must show for every device before RSS is read.
func (b *bench) relayPerDevice(ctx context.Context) error {
	addr, err := freePort()
	if err != nil {
		return err
	}
	metrics, err := freePort()
	if err != nil {
		return err
	}
	data := filepath.Join(b.dir, "relay-open")
	id, err := b.idOf("relay", "id", "--data", data)
	if err != nil {
		return err
	}
	var before, after []float64
	var n int
	for run := range b.o.devRuns {
		// A fresh relay each run, so that no run inherits another's heap.
		relay, err := b.start("open relay", b.burrow, "relay", "--listen", addr, "--data", data, "--open", "--log-level", "warn", "--drain", "0",
			"--metrics", metrics)
		if err != nil {
			return err
		}
		time.Sleep(b.o.settle)
		rss0, err := rss(relay.pid())
		if err != nil {
			return err
		}
		sims, attached, err := b.simDevices(addr, id, b.o.devices)
		if err != nil {
			return err
		}
		n = attached
		bound, err := waitGauge(ctx, metrics, "burrow_relay_udp_bindings", n, time.Minute)
		if err != nil {
			return err
		}
		time.Sleep(b.o.settle + time.Second)
		rss1, err := rss(relay.pid())
		if err != nil {
			return err
		}
		for _, sim := range sims {
			sim.stop()
		}
		relay.stop()
		before, after = append(before, float64(rss0)), append(after, float64(rss1))
		fmt.Fprintf(os.Stderr, "bench:   run %d: relay RSS %.1f → %.1f MiB with %d devices, %d UDP bindings\n",
			run+1, float64(rss0)/(1<<20), float64(rss1)/(1<<20), n, bound)
	}
	per := make([]float64, len(before))
	for i := range before {
		per[i] = (after[i] - before[i]) / float64(n) / 1024
	}
	b.add(result{Scenario: fmt.Sprintf("6. relay RSS per attached idle device (%d devices)", n), Setup: "relay", Unit: "KiB",
		Samples: per, lowerBetter: true, Target: "≤ 15.6 KiB", check: below(15.6)})
	return nil
}

// simDevicesPerProc bounds the simulated devices of one simdevices process:
// each holds two file descriptors (its TCP session and its UDP socket),
// and a process may have as few as 20,000.
const simDevicesPerProc = 5000

// simDevices attaches n simulated devices, each bound at the relay's UDP
// port too, to the relay at addr, from as many simdevices processes as
// their file descriptors need; it returns the processes, to be stopped,
// and how many devices attached.
func (b *bench) simDevices(addr, id string, n int) ([]*proc, int, error) {
	var sims []*proc
	for left := n; left > 0; left -= simDevicesPerProc {
		sim, err := b.start("simulated devices", b.self, "simdevices", "-n", strconv.Itoa(min(left, simDevicesPerProc)),
			"-relay", addr, "-relay-id", id, "-udp")
		if err != nil {
			return sims, 0, err
		}
		sims = append(sims, sim)
	}
	attached := 0
	for _, sim := range sims {
		m, err := sim.waitFor(reSim, 4*time.Minute)
		if err != nil {
			return sims, 0, err
		}
		k, _ := strconv.Atoi(m[1])
		attached += k
	}
	return sims, attached, nil
}

// waitGauge waits until the gauge name, scraped from the metrics at
// addr, reaches want, and returns its last value.
func waitGauge(ctx context.Context, addr, name string, want int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`)
	got := -1
	for {
		if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if m := re.FindSubmatch(body); m != nil {
				v, _ := strconv.ParseFloat(string(m[1]), 64)
				got = int(v)
			}
		}
		if got >= want {
			return got, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return got, fmt.Errorf("%s is %d after %v, want %d", name, got, timeout, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
