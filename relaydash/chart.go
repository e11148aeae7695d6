package relaydash

import (
	"fmt"
	"sync"
	"time"
)

// The traffic chart: the relay's forwarded bytes are sampled every
// sampleEvery into a ring of maxSamples (an hour), and shown as bytes per
// minute.
const (
	sampleEvery    = 10 * time.Second
	maxSamples     = 360
	samplesPerBar  = int(time.Minute / sampleEvery)
	chartBars      = maxSamples / samplesPerBar
	chartBarStep   = 10 // SVG units per bar, gap included
	chartBarWidth  = 8
	chartHeight    = 100
	chartViewWidth = chartBars * chartBarStep
)

// A sampler holds the last maxSamples values of a counter. It is safe for
// concurrent use.
type sampler struct {
	mu   sync.Mutex
	ring [maxSamples]uint64 // guarded by mu
	n    int                // samples held; guarded by mu
	next int                // where the next goes; guarded by mu
}

func newSampler() *sampler { return new(sampler) }

// add records v as the newest sample, forgetting the oldest if full.
func (s *sampler) add(v uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ring[s.next] = v
	s.next = (s.next + 1) % maxSamples
	s.n = min(s.n+1, maxSamples)
}

// values returns the samples held, oldest first.
func (s *sampler) values() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]uint64, 0, s.n)
	for i := range s.n {
		out = append(out, s.ring[(s.next-s.n+i+maxSamples)%maxSamples])
	}
	return out
}

// A chart is the traffic chart as the page draws it: an SVG of
// chartViewWidth × chartHeight, one bar a minute, the newest at the right.
type chart struct {
	Bars          []chartBar
	Width, Height int
	Peak, Total   string // bytes in the busiest minute, and in all shown
	Minutes       int    // minutes shown
}

// A chartBar is one minute's bar.
type chartBar struct {
	X, Y, W, H int
	Title      string
}

// newChart makes the chart of samples (of a growing counter, oldest first,
// sampleEvery apart).
func newChart(samples []uint64) chart {
	c := chart{Width: chartViewWidth, Height: chartHeight}
	// Per minute, from the newest back: the growth over samplesPerBar
	// intervals (fewer for the oldest).
	var sums []uint64
	var total uint64
	for end := len(samples) - 1; end > 0; end -= samplesPerBar {
		start := max(0, end-samplesPerBar)
		var d uint64
		if samples[end] > samples[start] {
			d = samples[end] - samples[start]
		}
		sums = append(sums, d)
		total += d
	}
	var peak uint64
	for _, v := range sums {
		peak = max(peak, v)
	}
	c.Minutes = len(sums)
	c.Peak, c.Total = formatBytes(peak), formatBytes(total)
	for k, v := range sums {
		h := 0
		if peak > 0 {
			h = int((v*chartHeight + peak/2) / peak)
		}
		if v > 0 && h == 0 {
			h = 1 // a minute with traffic shows
		}
		when := "the last minute"
		if k > 0 {
			when = fmt.Sprintf("%d–%d minutes ago", k, k+1)
		}
		c.Bars = append(c.Bars, chartBar{
			X: (chartBars - 1 - k) * chartBarStep, Y: chartHeight - h,
			W: chartBarWidth, H: h,
			Title: when + ": " + formatBytes(v),
		})
	}
	return c
}

// formatBytes writes n in bytes, KiB, MiB or GiB.
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, suffix := float64(n)/unit, "KiB"
	for _, s := range []string{"MiB", "GiB", "TiB"} {
		if v < unit {
			break
		}
		v, suffix = v/unit, s
	}
	return fmt.Sprintf("%.1f %s", v, suffix)
}
