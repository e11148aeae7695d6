package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"
)

// The soak test (scripts/soak, or go run ./bench -soak 10m): a relay, a
// device and a connect process, on loopback with the session on the
// relay, under a steady load for the whole duration: workers opening
// short tunnels of several kinds, and one long stream. Every interval it
// samples each process's goroutines (from its BURROW_PPROF endpoint), open
// file descriptors and RSS, and at the end it prints them as a table and
// checks that each stayed flat.
//
// Each sample is taken at rest: the short tunnels pause (those open are
// let finish) and the agents get soakSettle to close them, while the long
// stream keeps flowing. A leak then shows as growth from one sample to
// the next, not hidden in how many tunnels happened to be open. What
// still moves: the relay's writers are a pool that grows and shrinks with
// the send queues being written (relay/queue.go), a goroutine or so
// either way out of a dozen; and RSS follows the garbage collector's
// cycles by a few percent.

const (
	soakWorkers   = 4                      // each opens short tunnels one after another
	soakGap       = 200 * time.Millisecond // pause of a worker between its tunnels
	soakStreamBPS = 4 << 20                // bytes per second of the long stream
	soakSettle    = 2 * time.Second
	soakFrom      = 2 * time.Minute // where the flat window starts
	soakTolerance = 0.10            // flat: max ≤ (1 + soakTolerance) × min in the window
)

// A soakSample is one row of the table.
type soakSample struct {
	at       time.Duration // since the load started
	tunnels  int64         // short tunnels opened so far
	streamed int64         // bytes the long stream carried so far
	procs    []procStats   // in the order of soakRun.procs
}

type procStats struct {
	goroutines, fds int
	rss             int64
	kinds           map[string]int // goroutines by kind (see parseGoroutines)
}

type soakRun struct {
	procs   []*proc
	samples []soakSample
	load    *soakLoad
}

func soak(o options) error {
	// Stopped by a signal, the run still stops what it started and prints
	// what it sampled.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := newBench(o)
	if err != nil {
		return err
	}
	defer b.close()

	path, mode := "the session stays on the relay's TCP sessions", viaTCP
	if o.direct {
		path, mode = "the session goes direct over loopback", viaDirect
	}
	step("relay, device and connect (" + path + ")")
	s, err := b.startAgents()
	if err != nil {
		return err
	}
	c, err := b.connect(s, "echo", mode)
	if err != nil {
		return err
	}
	run := &soakRun{procs: []*proc{s.relay, s.device, c.p}}
	interval := 30 * time.Second
	if o.soak < 5*time.Minute {
		interval = max(5*time.Second, (o.soak / 10).Round(time.Second))
	}
	from := min(soakFrom, o.soak/2)
	step(fmt.Sprintf("load for %v, a sample every %v; flat from %s to the end means within %.0f %%",
		o.soak, interval, clock(from), 100*soakTolerance))

	run.load = startLoad(c.addr)
	start := time.Now()
	if o.direct {
		if _, err := c.p.waitFor(reDirect, 15*time.Second); err != nil {
			run.load.stop()
			return fmt.Errorf("the session did not go direct: %w", err)
		}
	}
	var sampleErr error
	run.header(os.Stderr)
	for i := 0; ; i++ {
		at := time.Duration(i) * interval
		if at > o.soak {
			break
		}
		select {
		case <-time.After(time.Until(start.Add(at))):
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		if err := run.sample(time.Since(start)); err != nil {
			sampleErr = err
			break
		}
		run.row(os.Stderr, run.samples[len(run.samples)-1])
	}
	loadErr := run.load.stop()

	fmt.Printf("\nburrow soak, %s, %v (sampled every %v; %s)\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), o.soak, interval, path)
	run.header(os.Stdout)
	for _, sm := range run.samples {
		run.row(os.Stdout, sm)
	}
	fmt.Printf("\n(RSS in MiB; goroutines less those serving the profile, starting or ending, or pooled. Each\nsample is taken with the short tunnels paused for %v; the long stream flows.)\n", soakSettle)
	fmt.Printf("load: %d short tunnels, %d of them failed; the long stream carried %.0f MiB\n",
		run.load.tunnels.Load(), run.load.failures.Load(), float64(run.load.streamed.Load())/(1<<20))

	flat := run.verdict(os.Stdout, from)
	switch {
	case sampleErr != nil:
		return fmt.Errorf("sampling: %w", sampleErr)
	case ctx.Err() != nil:
		return errors.New("interrupted")
	case loadErr != nil:
		return loadErr
	case !flat:
		return errors.New("not flat")
	}
	return nil
}

// sample pauses the short tunnels, lets the agents settle and measures
// every process.
func (r *soakRun) sample(at time.Duration) error {
	r.load.gate.Lock()
	defer r.load.gate.Unlock()
	time.Sleep(soakSettle)
	sm := soakSample{at: at, tunnels: r.load.tunnels.Load(), streamed: r.load.streamed.Load()}
	for _, p := range r.procs {
		var st procStats
		var err error
		if st.rss, err = rss(p.pid()); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid()))
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		st.fds = len(fds)
		// Read last: the profile's HTTP connection is closed by then
		// and counts in no sample's fds.
		if st.goroutines, st.kinds, err = goroutines(p.pprof); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		sm.procs = append(sm.procs, st)
	}
	r.samples = append(r.samples, sm)
	return nil
}

// profileClient fetches profiles on a fresh connection each time, so that
// no idle connection stays open in the measured process.
var profileClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

// goroutines returns the number of goroutines of the process serving its
// profiles at addr, not counting those serving the request, and how many
// there are of each kind (see parseGoroutines).
func goroutines(addr string) (int, map[string]int, error) {
	resp, err := profileClient.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("goroutine profile: %w", err)
	}
	return parseGoroutines(string(body))
}

// parseGoroutines parses a goroutine profile in its debug=1 form: a
// total, then blocks of "N @ addresses" followed by one "#" line per
// frame, innermost first. It returns the number of goroutines, leaving
// out those serving the profile and the transient ones, and how many
// there are of each kind: a
// goroutine's kind is the outermost function of this module on its stack
// (where it was started, whatever it is doing now), else its outermost
// function.
func parseGoroutines(text string) (int, map[string]int, error) {
	head, rest, _ := strings.Cut(text, "\n")
	total, ok := strings.CutPrefix(head, "goroutine profile: total ")
	if !ok {
		return 0, nil, fmt.Errorf("goroutine profile starts with %q", head)
	}
	n, err := strconv.Atoi(total)
	if err != nil {
		return 0, nil, fmt.Errorf("goroutine profile: %w", err)
	}
	kinds := make(map[string]int)
	for _, block := range strings.Split(rest, "\n\n") {
		lines := strings.Split(strings.TrimSpace(block), "\n")
		count, _, ok := strings.Cut(lines[0], " @ ")
		k, err := strconv.Atoi(count)
		if !ok || err != nil {
			continue
		}
		var funcs []string
		for _, l := range lines[1:] {
			// "#\t0x4fde67\tinternal/poll.(*FD).Read+0x25\t\tfile:line"
			if f := strings.Split(l, "\t"); len(f) >= 3 && f[0] == "#" {
				name, _, _ := strings.Cut(f[2], "+")
				funcs = append(funcs, name)
			}
		}
		if slices.ContainsFunc(funcs, servesProfile) {
			n -= k
			continue
		}
		kind := noFrames
		if len(funcs) > 0 {
			kind = funcs[len(funcs)-1]
		}
		for _, f := range slices.Backward(funcs) {
			if strings.HasPrefix(f, module) {
				kind = f
				break
			}
		}
		kinds[kind] += k
		if transient[kind] {
			n -= k
		}
	}
	return n, kinds, nil
}

const module = "github.com/burrow-tunnel/burrow/"

// transient are the kinds of goroutines that come and go by design, and
// are left out of the count (not out of the kinds): those starting or
// ending as the profile is taken (a leaked goroutine waits somewhere, with
// frames), and the relay's writers (relay/queue.go), one for each send
// queue being written, each gone after a second without work. Whether one
// of them is alive at a sample depends on when an idle agent's keepalive
// last passed.
var transient = map[string]bool{noFrames: true, module + "relay.(*writers).loop": true}

const noFrames = "(no frames: starting or ending)"

// servesProfile reports whether a goroutine running function f serves the
// profile's request: the handler, or its connection's background read.
func servesProfile(f string) bool {
	return strings.HasPrefix(f, "net/http/pprof.") || f == "net/http.(*connReader).backgroundRead"
}

// The table's columns: time, load, then goroutines, fds and RSS of each
// process. Fixed widths, so that rows printed one at a time line up.
func (r *soakRun) header(w io.Writer) {
	fmt.Fprintf(w, "%5s %8s %7s", "", "short", "stream")
	for _, p := range r.procs {
		fmt.Fprintf(w, "   %-21s", p.name)
	}
	fmt.Fprintf(w, "\n%5s %8s %7s", "time", "tunnels", "MiB")
	for range r.procs {
		fmt.Fprintf(w, "   %10s %4s %5s", "goroutines", "fds", "RSS")
	}
	fmt.Fprintln(w)
}

func (r *soakRun) row(w io.Writer, sm soakSample) {
	fmt.Fprintf(w, "%5s %8d %7.0f", clock(sm.at), sm.tunnels, float64(sm.streamed)/(1<<20))
	for _, st := range sm.procs {
		fmt.Fprintf(w, "   %10d %4d %5.1f", st.goroutines, st.fds, float64(st.rss)/(1<<20))
	}
	fmt.Fprintln(w)
}

// verdict prints, for each process and metric, its range over the samples
// taken from from on, and whether that range is flat: max ≤ (1 +
// soakTolerance) × min. It reports whether all are.
func (r *soakRun) verdict(w io.Writer, from time.Duration) bool {
	var window []soakSample
	for _, sm := range r.samples {
		if sm.at >= from {
			window = append(window, sm)
		}
	}
	if len(window) < 2 {
		fmt.Fprintf(w, "\nfewer than two samples from %s on: no verdict\n", clock(from))
		return false
	}
	fmt.Fprintf(w, "\nfrom %s to the end (%d samples), flat means max ≤ %.2f × min:\n\n", clock(from), len(window), 1+soakTolerance)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  process\tmetric\tmin\tmax\t\t\t")
	all := true
	for i, p := range r.procs {
		for _, m := range []struct {
			name   string
			get    func(procStats) float64
			format string // of a value
		}{
			{"goroutines", func(s procStats) float64 { return float64(s.goroutines) }, "%.0f"},
			{"fds", func(s procStats) float64 { return float64(s.fds) }, "%.0f"},
			{"RSS", func(s procStats) float64 { return float64(s.rss) / (1 << 20) }, "%.1f MiB"},
		} {
			lo, hi := m.get(window[0].procs[i]), m.get(window[0].procs[i])
			for _, sm := range window[1:] {
				v := m.get(sm.procs[i])
				lo, hi = min(lo, v), max(hi, v)
			}
			ok := hi <= (1+soakTolerance)*lo
			all = all && ok
			first, last := m.get(window[0].procs[i]), m.get(window[len(window)-1].procs[i])
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\tspread %.1f %%\tlast vs first %+.1f %%\t%s\n", p.name, m.name,
				fmt.Sprintf(m.format, lo), fmt.Sprintf(m.format, hi), 100*(hi-lo)/lo, 100*(last-first)/first,
				map[bool]string{true: "flat", false: "NOT FLAT"}[ok])
		}
	}
	tw.Flush()
	// Where a count changed, say which goroutines.
	first, last := window[0], window[len(window)-1]
	for i, p := range r.procs {
		if first.procs[i].goroutines == last.procs[i].goroutines {
			continue
		}
		fmt.Fprintf(w, "\n%s: goroutines by where they started, %s → %s:\n", p.name, clock(first.at), clock(last.at))
		for _, l := range kindChanges(first.procs[i].kinds, last.procs[i].kinds) {
			fmt.Fprintln(w, "  "+l)
		}
	}
	return all
}

// kindChanges lists the kinds of goroutines whose number differs between
// two samples.
func kindChanges(before, after map[string]int) []string {
	var out []string
	for st, k := range after {
		if before[st] != k {
			out = append(out, fmt.Sprintf("%d → %d  %s", before[st], k, st))
		}
	}
	for st, k := range before {
		if _, ok := after[st]; !ok {
			out = append(out, fmt.Sprintf("%d → 0  %s", k, st))
		}
	}
	slices.Sort(out)
	return out
}

// clock formats d as m:ss.
func clock(d time.Duration) string {
	d = d.Round(time.Second)
	return fmt.Sprintf("%d:%02d", int(d.Minutes()), int(d.Seconds())%60)
}

// soakLoad drives the connect process's local port.
type soakLoad struct {
	addr string
	// gate is held for reading by each short tunnel, and for writing by a
	// sample, to pause them.
	gate     sync.RWMutex
	tunnels  atomic.Int64
	failures atomic.Int64
	streamed atomic.Int64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []string // the first few failures, guarded by mu
	stream error    // why the long stream ended early, guarded by mu
}

// startLoad starts the workers and the long stream on addr.
func startLoad(addr string) *soakLoad {
	l := &soakLoad{addr: addr}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	for w := range soakWorkers {
		l.wg.Go(func() { l.worker(w) })
	}
	l.wg.Go(l.longStream)
	return l
}

// stop ends the load and returns an error if any tunnel failed.
func (l *soakLoad) stop() error {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stream != nil {
		return fmt.Errorf("the long stream failed after %d bytes: %w", l.streamed.Load(), l.stream)
	}
	if len(l.errs) > 0 {
		return fmt.Errorf("%d short tunnels failed, the first: %s", l.failures.Load(), strings.Join(l.errs, "; "))
	}
	return nil
}

func (l *soakLoad) worker(w int) {
	for i := w; l.ctx.Err() == nil; i += soakWorkers {
		l.gate.RLock()
		err := l.shortTunnel(i % 4)
		l.gate.RUnlock()
		if err != nil && l.ctx.Err() == nil {
			l.failures.Add(1)
			l.mu.Lock()
			if len(l.errs) < 3 {
				l.errs = append(l.errs, err.Error())
			}
			l.mu.Unlock()
		}
		select {
		case <-time.After(soakGap):
		case <-l.ctx.Done():
		}
	}
}

// shortTunnel opens one tunnel to the echo service and uses it as kind
// says.
func (l *soakLoad) shortTunnel(kind int) error {
	var d net.Dialer
	c, err := d.DialContext(l.ctx, "tcp", l.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	l.tunnels.Add(1)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	switch kind {
	case 0: // 256 KiB there and back, ended by a half-close
		msg := bytes.Repeat(chunk, 4)
		var wg sync.WaitGroup
		defer func() {
			c.Close() // ends the write, if the read failed first
			wg.Wait()
		}()
		wg.Go(func() {
			c.Write(msg)
			c.(*net.TCPConn).CloseWrite()
		})
		back, err := io.ReadAll(c)
		if err != nil {
			return fmt.Errorf("echo: %w", err)
		}
		if !bytes.Equal(back, msg) {
			return fmt.Errorf("echo: %d bytes came back, not the %d sent", len(back), len(msg))
		}
	case 1: // 20 small requests, each answered
		msg, back := make([]byte, 64), make([]byte, 64)
		for range 20 {
			if _, err := c.Write(msg); err != nil {
				return err
			}
			if _, err := io.ReadFull(c, back); err != nil {
				return fmt.Errorf("request/response: %w", err)
			}
		}
	case 2: // opened and closed unused
	case 3: // closed with bytes in flight both ways
		if _, err := c.Write(chunk); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, make([]byte, 1024)); err != nil {
			return fmt.Errorf("abort: %w", err)
		}
		c.(*net.TCPConn).SetLinger(0) // a reset, not a close
	}
	return nil
}

// longStream sends chunk over and over at soakStreamBPS through one tunnel
// and checks that it comes back.
func (l *soakLoad) longStream() {
	fail := func(err error) {
		l.mu.Lock()
		if l.ctx.Err() == nil && l.stream == nil {
			l.stream = err
		}
		l.mu.Unlock()
	}
	var d net.Dialer
	c, err := d.DialContext(l.ctx, "tcp", l.addr)
	if err != nil {
		fail(err)
		return
	}
	stop := context.AfterFunc(l.ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		began := time.Now()
		for sent := 0; ; {
			if _, err := c.Write(chunk); err != nil {
				fail(err)
				return
			}
			sent += len(chunk)
			time.Sleep(time.Until(began.Add(time.Duration(float64(sent) / soakStreamBPS * float64(time.Second)))))
		}
	})
	buf := make([]byte, len(chunk))
	for {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			fail(err)
			c.Close()
			return
		}
		if !bytes.Equal(buf, chunk) {
			fail(errors.New("the bytes that came back differ"))
			c.Close()
			return
		}
		l.streamed.Add(int64(len(buf)))
	}
}
