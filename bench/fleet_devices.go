package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/burrow-tunnel/burrow/fleetstate"
)

// fleet runs the fleet scenario: the cold connect through a redirect
// (scenario 2), then simulated devices attaching across the fleet's
// relays (scenario 6).
func (b *bench) fleet(ctx context.Context) error {
	if err := b.coldRedirect(ctx); err != nil {
		return err
	}
	var runs []fleetRun
	for run := range b.o.devRuns {
		r, err := b.fleetDevices(ctx, fmt.Sprintf("fleet-%d", run+1))
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "bench:   run %d: %d devices attached at %.0f/s; presence writes %.0f/s (p50 %.1f ms, p99 %.1f ms), "+
			"on leaving %.0f/s (p50 %.1f ms, p99 %.1f ms); relay RSS per device %s KiB (enrolled, none attached: %s KiB per device)\n",
			run+1, r.devices, r.attachRate, r.attach.rate, r.attach.p50, r.attach.p99, r.detach.rate, r.detach.p50, r.detach.p99,
			strings.Join(kibs(r.perDevice), ", "), strings.Join(kibs(r.enrolledKiB), ", "))
		runs = append(runs, r)
	}
	b.addFleetRuns(runs)
	return nil
}

func kibs(vs []float64) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = num(v)
	}
	return out
}

// fleetRun is what one run of simulated devices on a fleet measured.
type fleetRun struct {
	devices    int
	attachRate float64   // devices attached per second
	attach     wave      // their presence records written
	detach     wave      // their presence records deleted when they all left at once
	perDevice  []float64 // each relay's RSS gain per device it holds, KiB
	// enrolledKiB is each relay's RSS gain per enrolled device with the
	// devices enrolled and none attached yet.
	enrolledKiB []float64
	storage     map[string]float64
}

// wave is how a wave of presence writes went: how many records were
// stored per second, from the first to the last, and the percentiles of
// the time from each device's event to its record, in ms.
type wave struct {
	rate, p50, p99 float64
}

// waveOf returns the wave of the records stored at stored (by device
// ID), each device's event having happened at from(ID).
func waveOf(stored map[string]time.Time, from func(id string) (time.Time, bool)) wave {
	var lat []time.Duration
	var times []time.Time
	for id, t := range stored {
		times = append(times, t)
		if f, ok := from(id); ok {
			lat = append(lat, t.Sub(f))
		}
	}
	return wave{
		rate: float64(len(times)) / span(times).Seconds(),
		p50:  float64(percentile(lat, 50)) / float64(time.Millisecond),
		p99:  float64(percentile(lat, 99)) / float64(time.Millisecond),
	}
}

// span is the time from the earliest of ts to the latest.
func span(ts []time.Time) time.Duration {
	if len(ts) == 0 {
		return 0
	}
	lo, hi := ts[0], ts[0]
	for _, t := range ts {
		if t.Before(lo) {
			lo = t
		}
		if t.After(hi) {
			hi = t
		}
	}
	return hi.Sub(lo)
}

// fleetDevices starts a fleet, enrolls simulated devices in its NATS
// state, attaches them across its relays (a third each) from a simdevices
// child, and measures presence, the relays' memory and NATS's storage.
//
// The presence figures come from the records themselves: each record's
// stored time in JetStream (the server's clock, on the same machine)
// against the time its device saw its attach accepted. The write rate is
// the devices' over the span from the first record stored to the last; it
// is bounded by how fast the simulated devices attach, which the run also
// reports.
func (b *bench) fleetDevices(ctx context.Context, name string) (fleetRun, error) {
	var run fleetRun
	f, err := b.startFleet(name)
	if err != nil {
		return run, err
	}
	defer f.stop()
	time.Sleep(b.o.settle)
	before := make([]int64, len(f.relays))
	for i, r := range f.relays {
		if before[i], err = rss(r.p.pid()); err != nil {
			return run, err
		}
	}
	seed := strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := b.enrollSimulated(ctx, f, seed); err != nil {
		return run, err
	}
	// The relays' memory with the devices enrolled, none attached: the
	// share of the per-device figure that enrolled devices cost.
	time.Sleep(b.o.settle)
	for i, r := range f.relays {
		v, err := rss(r.p.pid())
		if err != nil {
			return run, err
		}
		run.enrolledKiB = append(run.enrolledKiB, float64(v-before[i])/float64(b.o.devices)/1024)
	}
	addrs := make([]string, len(f.relays))
	for i, r := range f.relays {
		addrs[i] = r.addr
	}
	timesFile := filepath.Join(f.dir, "attached")
	sim, err := b.start("simulated devices (fleet)", b.self, "simdevices", "-n", strconv.Itoa(b.o.devices),
		"-relay", strings.Join(addrs, ","), "-relay-id", f.id, "-seed", seed, "-times", timesFile)
	if err != nil {
		return run, err
	}
	defer sim.stop()
	if _, err := sim.waitFor(reSim, 4*time.Minute); err != nil {
		return run, err
	}
	attached, err := readAttachTimes(timesFile)
	if err != nil {
		return run, err
	}
	run.devices = len(attached)
	times := make([]time.Time, 0, len(attached))
	for _, t := range attached {
		times = append(times, t)
	}
	run.attachRate = float64(len(times)) / span(times).Seconds()
	stored, err := presenceTimes(ctx, f, len(attached))
	if err != nil {
		return run, err
	}
	run.attach = waveOf(stored, func(id string) (time.Time, bool) { t, ok := attached[id]; return t, ok })
	time.Sleep(b.o.settle + time.Second)
	for i, r := range f.relays {
		after, err := rss(r.p.pid())
		if err != nil {
			return run, err
		}
		held := run.devices / len(f.relays)
		if i < run.devices%len(f.relays) {
			held++
		}
		run.perDevice = append(run.perDevice, float64(after-before[i])/float64(held)/1024)
	}
	if run.storage, err = natsStorage(ctx, f, run.devices); err != nil {
		return run, err
	}
	run.detach, err = leaveAtOnce(ctx, f, sim, attached)
	return run, err
}

// enrollSimulated enrolls the simulated devices of seed in the fleet's
// state in NATS, as a token spend at a relay does, so that the attaches
// measured are those of known devices.
func (b *bench) enrollSimulated(ctx context.Context, f *fleetSetup, seed string) error {
	nc, err := nats.Connect(f.natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	st, err := fleetstate.Open(ctx, fleetstate.Config{Conn: nc})
	if err != nil {
		return err
	}
	defer st.Close()
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 16 {
		wg.Go(func() {
			for i := range next {
				if err := st.Add(simIdentity(seed, i).ID()); err != nil {
					mu.Lock()
					firstErr = firstOf(firstErr, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range b.o.devices {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("enroll the simulated devices: %w", firstErr)
	}
	// The relays learn of enrollments from a watch; a device they do not
	// know yet is refused and tries again, which would only slow the
	// attaches down.
	time.Sleep(time.Second)
	return nil
}

// firstOf returns the first of its errors that is not nil.
func firstOf(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// readAttachTimes reads the file simdevices -times writes.
func readAttachTimes(path string) (map[string]time.Time, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	out := make(map[string]time.Time)
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		id, ns, ok := strings.Cut(sc.Text(), " ")
		n, err := strconv.ParseInt(ns, 10, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("%s: bad line %q", path, sc.Text())
		}
		out[id] = time.Unix(0, n)
	}
	return out, sc.Err()
}

// presenceTimes waits until the fleet's presence bucket holds at least n
// records, then returns when each was stored, by device ID.
func presenceTimes(ctx context.Context, f *fleetSetup, n int) (map[string]time.Time, error) {
	js, closeJS, err := f.js()
	if err != nil {
		return nil, err
	}
	defer closeJS()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	kv, err := js.KeyValue(ctx, fleetstate.PresenceBucket)
	if err != nil {
		return nil, fmt.Errorf("presence bucket: %w", err)
	}
	for {
		st, err := kv.Status(ctx)
		if err != nil {
			return nil, fmt.Errorf("presence bucket: %w", err)
		}
		if st.Values() >= uint64(n) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%d of %d presence records: %w", st.Values(), n, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	out := make(map[string]time.Time, n)
	for e := range w.Updates() {
		if e == nil { // the end of the records stored so far
			return out, nil
		}
		out[e.Key()] = e.Created()
	}
	return nil, fmt.Errorf("presence watch: %w", ctx.Err())
}

// natsStorage returns the bytes per device of the streams behind the
// presence and devices buckets.
func natsStorage(ctx context.Context, f *fleetSetup, devices int) (map[string]float64, error) {
	js, closeJS, err := f.js()
	if err != nil {
		return nil, err
	}
	defer closeJS()
	out := make(map[string]float64)
	for _, bucket := range []string{fleetstate.PresenceBucket, fleetstate.DevicesBucket} {
		s, err := js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			return nil, fmt.Errorf("stream of %s: %w", bucket, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("stream of %s: %w", bucket, err)
		}
		out["KV_"+bucket] = float64(info.State.Bytes) / float64(devices)
	}
	return out, nil
}

// addFleetRuns adds the rows of the runs of simulated devices.
func (b *bench) addFleetRuns(runs []fleetRun) {
	n := runs[0].devices
	var attach, per []float64
	var waves [2][3][]float64 // attach, detach × rate, p50, p99
	storage := make(map[string][]float64)
	for _, r := range runs {
		attach, per = append(attach, r.attachRate), append(per, r.perDevice...)
		for i, w := range []wave{r.attach, r.detach} {
			waves[i][0] = append(waves[i][0], w.rate)
			waves[i][1] = append(waves[i][1], w.p50)
			waves[i][2] = append(waves[i][2], w.p99)
		}
		for k, v := range r.storage {
			storage[k] = append(storage[k], v)
		}
	}
	for i, name := range []string{
		fmt.Sprintf("6. fleet: %d devices attaching to %d relays", n, fleetRelays),
		fmt.Sprintf("6. fleet: %d devices leaving at once", n),
	} {
		if i == 0 {
			b.add(result{Scenario: name, Setup: "devices attached", Unit: "/s", Samples: attach})
		}
		b.add(result{Scenario: name, Setup: "presence writes", Unit: "/s", Samples: waves[i][0]})
		event := []string{"attached → record", "left → record deleted"}[i]
		b.add(result{Scenario: name, Setup: event + " p50", Unit: "ms", Samples: waves[i][1], lowerBetter: true})
		b.add(result{Scenario: name, Setup: event + " p99", Unit: "ms", Samples: waves[i][2], lowerBetter: true})
	}
	b.add(result{Scenario: fmt.Sprintf("6. fleet: relay RSS per attached idle device (%d devices, %d relays)", n, fleetRelays), Setup: "fleet relay",
		Unit: "KiB", Samples: per, lowerBetter: true, Target: "≤ 16 KiB", check: below(16)})
	for _, k := range []string{"KV_" + fleetstate.PresenceBucket, "KV_" + fleetstate.DevicesBucket} {
		b.add(result{Scenario: "6. fleet: NATS storage per device", Setup: k, Unit: "B", Samples: storage[k], lowerBetter: true})
	}
}

// leaveAtOnce stops the simulated devices' process, which closes all
// their connections at once, and measures the wave of presence deletes
// their relays write: from the process's exit to each record's delete
// marker stored in JetStream.
func leaveAtOnce(ctx context.Context, f *fleetSetup, sim *proc, attached map[string]time.Time) (wave, error) {
	js, closeJS, err := f.js()
	if err != nil {
		return wave{}, err
	}
	defer closeJS()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	kv, err := js.KeyValue(ctx, fleetstate.PresenceBucket)
	if err != nil {
		return wave{}, fmt.Errorf("presence bucket: %w", err)
	}
	w, err := kv.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return wave{}, err
	}
	defer w.Stop()
	left := time.Now()
	sim.stop()
	deleted := make(map[string]time.Time, len(attached))
	for len(deleted) < len(attached) {
		select {
		case e := <-w.Updates():
			if e == nil {
				continue
			}
			if _, ok := attached[e.Key()]; ok && e.Operation() != jetstream.KeyValuePut {
				deleted[e.Key()] = e.Created()
			}
		case <-ctx.Done():
			return wave{}, fmt.Errorf("%d of %d presence records deleted: %w", len(deleted), len(attached), ctx.Err())
		}
	}
	return waveOf(deleted, func(string) (time.Time, bool) { return left, true }), nil
}
