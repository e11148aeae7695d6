// Command bench measures burrow against the limits of the machine it runs
// on. It builds the burrow binary, starts relay, device and client agents
// as separate processes on loopback, drives them with a built-in load
// generator, and measures, in the same run, three references that make the
// figures comparable across machines:
//
//	raw      the same load straight over loopback TCP
//	two-hop  through two plain io.Copy forwarders (client → hop → hop → server)
//	tls-hop  through a forwarder that takes TLS 1.3 in and sends TLS 1.3 out
//
// burrow itself is measured on each of its paths: through the relay's TCP
// sessions ("burrow"), through its UDP port ("burrow relay-udp", also
// under a flood of datagrams from an unbound address), and direct.
//
// Every scenario runs at least three times; the table gives min / median /
// max and the ratio to raw, and a JSON file keeps every sample.
//
//	go run ./bench              # about 7 minutes
//	go run ./bench -quick       # under a minute: shorter runs, fewer
//	                            # samples, no cross-compiled binary sizes
//	go run ./bench -soak 10m    # the soak test instead (scripts/soak;
//	                            # see soak.go)
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"
)

type options struct {
	quick    bool
	runs     int
	out      string
	duration time.Duration // one throughput run of burrow
	refDur   time.Duration // one throughput run of a reference
	warmup   time.Duration
	conns    int           // sequential connections for connect latency
	cold     int           // cold connects
	rr       int           // request/response round trips
	tunnels  int           // concurrent idle tunnels
	devices  int           // simulated idle devices
	devRuns  int           // runs of the simulated-device scenario
	settle   time.Duration // wait before measuring memory at rest
	gap      time.Duration // between memory samples
	sizes    bool          // build for small targets (slow on a cold cache)
	only     string        // comma-separated steps to run; empty runs all
	profile  string        // directory for CPU profiles of the burrow processes
	soak     time.Duration // run the soak test this long instead (scripts/soak)
	direct   bool          // the soak's session goes direct rather than staying on the relay
}

func main() {
	if runChild(os.Args[1:]) {
		return
	}
	var o options
	flag.BoolVar(&o.quick, "quick", false, "shorter runs and fewer samples: under a minute")
	flag.IntVar(&o.runs, "runs", 3, "runs of each throughput scenario")
	flag.StringVar(&o.out, "out", "bench-results.json", "where to write every sample as JSON")
	flag.StringVar(&o.only, "only", "", "run only these steps (comma-separated: footprint, idle, latency, rr, tunnels, throughput, devices, flood, fleet)")
	flag.StringVar(&o.profile, "profile", "", "write a CPU profile of each burrow process into this directory")
	flag.DurationVar(&o.soak, "soak", 0, "run the soak test for this long instead of the benchmark (scripts/soak)")
	flag.BoolVar(&o.direct, "soak-direct", false, "the soak's session goes direct (over loopback) rather than staying on the relay")
	flag.Parse()
	if o.soak > 0 {
		if err := soak(o); err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			os.Exit(1)
		}
		return
	}
	o.duration, o.refDur, o.warmup = 10*time.Second, 3*time.Second, time.Second
	o.conns, o.cold, o.rr, o.tunnels, o.devices, o.devRuns = 1000, 10, 5000, 1000, 10000, o.runs
	o.settle, o.gap, o.sizes = 2*time.Second, time.Second, true
	if o.quick {
		o.duration, o.refDur, o.warmup = time.Second, 500*time.Millisecond, 300*time.Millisecond
		o.conns, o.cold, o.rr, o.tunnels, o.devices, o.devRuns = 300, 3, 1000, 1000, 1000, 1
		o.settle, o.gap, o.sizes = time.Second, 300*time.Millisecond, false
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// bench holds what a run has set up.
type bench struct {
	o       options
	dir     string
	burrow  string // path of the built binary
	self    string // path of this program, for child modes
	svc     *services
	results []result
	procs   []*proc
}

func run(o options) error {
	start := time.Now()
	b, err := newBench(o)
	if err != nil {
		return err
	}
	defer b.close()

	ctx := context.Background()
	steps := []struct {
		key, name string
		f         func(context.Context) error
	}{
		{"footprint", "footprint (scenario 7)", b.footprint},
		{"", "burrow agents", b.startBurrow},
		{"idle", "idle memory (scenario 5)", b.idleMemory},
		{"latency", "connect latency (scenario 2)", b.connectLatency},
		{"rr", "request/response latency (scenario 3)", b.requestResponse},
		{"tunnels", "1,000 idle tunnels (scenario 5)", b.idleTunnels},
		{"throughput", "throughput and CPU per GB (scenarios 1, 4)", b.throughput},
		{"devices", "relay cost per idle device (scenario 6)", b.relayPerDevice},
		{"flood", "round trips beside a flood of tunnel opens (scenario 9)", b.flood},
		{"fleet", "a fleet of three relays on NATS JetStream (scenarios 2, 6)", b.fleet},
	}
	for _, s := range steps {
		if o.only != "" && s.key != "" && !slices.Contains(strings.Split(o.only, ","), s.key) {
			continue
		}
		step(s.name)
		if err := s.f(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	b.report(os.Stdout, time.Since(start))
	return b.writeJSON()
}

// newBench builds burrow into a temporary directory and starts the
// services the tunnels lead to; close undoes it all.
func newBench(o options) (*bench, error) {
	if _, err := os.Stat("cmd/burrow"); err != nil {
		return nil, fmt.Errorf("run the benchmark from the repository root (go run ./bench): %w", err)
	}
	dir, err := os.MkdirTemp("", "burrow-bench-")
	if err != nil {
		return nil, err
	}
	b := &bench{o: o, dir: dir, burrow: filepath.Join(dir, "burrow")}
	if err := b.setUp(); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

// setUp builds burrow and starts the services.
func (b *bench) setUp() error {
	var err error
	if b.self, err = os.Executable(); err != nil {
		return err
	}
	step("building burrow")
	if out, err := exec.Command("go", "build", "-trimpath", "-o", b.burrow, "./cmd/burrow").CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	cert, err := selfSigned()
	if err != nil {
		return err
	}
	b.svc, err = startServices(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})
	return err
}

// close stops every process the run started and removes its directory.
func (b *bench) close() {
	if b.svc != nil {
		b.svc.close()
	}
	b.stopAll()
	os.RemoveAll(b.dir)
}

func step(s string) { fmt.Fprintf(os.Stderr, "bench: %s\n", s) }

func (b *bench) start(name string, path string, args ...string) (*proc, error) {
	var env []string
	if b.o.profile != "" && path == b.burrow {
		env = append(env, "BURROW_CPUPROFILE="+filepath.Join(b.o.profile, strings.ReplaceAll(name, " ", "-")+".pprof"))
	}
	var pprofAddr string
	if b.o.soak > 0 && path == b.burrow {
		var err error
		if pprofAddr, err = freePort(); err != nil {
			return nil, err
		}
		env = append(env, "BURROW_PPROF="+pprofAddr)
	}
	p, err := startProc(name, path, env, args...)
	if err != nil {
		return nil, err
	}
	p.pprof = pprofAddr
	b.procs = append(b.procs, p)
	return p, nil
}

func (b *bench) stopAll() {
	for _, p := range b.procs {
		p.stop()
	}
	b.procs = nil
}

// freePort returns a loopback address that was free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

var (
	reListening      = regexp.MustCompile(`^listening on (\S+)$`)
	reRelayListening = regexp.MustCompile(`msg="relay listening"`)
	reHop            = regexp.MustCompile(`^listening (\S+)$`)
	reAttached       = regexp.MustCompile(`msg="attached to relay"`)
	reSim            = regexp.MustCompile(`^attached (\d+)$`)
)

// idOf runs a burrow command that prints an ID.
func (b *bench) idOf(args ...string) (string, error) {
	out, err := exec.Command(b.burrow, args...).Output()
	if err != nil {
		return "", fmt.Errorf("burrow %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// writeJSON writes every result with its samples.
func (b *bench) writeJSON() error {
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	doc := map[string]any{
		"date":    time.Now().UTC().Format(time.RFC3339),
		"commit":  strings.TrimSpace(string(commit)),
		"go":      runtime.Version(),
		"cpus":    runtime.NumCPU(),
		"quick":   b.o.quick,
		"results": b.results,
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(b.o.out, append(data, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bench: every sample is in %s\n", b.o.out)
	return nil
}
