package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// A result is one row of the table: the samples of one measurement of one
// setup.
type result struct {
	Scenario string    `json:"scenario"`
	Setup    string    `json:"setup"`
	Unit     string    `json:"unit"`
	Samples  []float64 `json:"samples"`
	Min      float64   `json:"min"`
	Median   float64   `json:"median"`
	Max      float64   `json:"max"`
	// Ratio is the median over the median of raw in the same scenario,
	// where there is one.
	Ratio  float64 `json:"ratio_to_raw,omitempty"`
	Target string  `json:"target,omitempty"`
	Met    *bool   `json:"met,omitempty"`

	lowerBetter bool
	check       func(r result, all []result) bool
}

func (b *bench) add(r result) {
	s := slices.Clone(r.Samples)
	slices.Sort(s)
	r.Min, r.Max = s[0], s[len(s)-1]
	r.Median = s[len(s)/2]
	if len(s)%2 == 0 {
		r.Median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	b.results = append(b.results, r)
}

// addBeside adds r after the last row of its scenario, where there is
// one, so that a scenario measured in two steps shows as one block.
func (b *bench) addBeside(r result) {
	at := len(b.results)
	for i, o := range b.results {
		if o.Scenario == r.Scenario {
			at = i + 1
		}
	}
	b.add(r)
	added := b.results[len(b.results)-1]
	b.results = slices.Insert(b.results[:len(b.results)-1], at, added)
}

// raw returns the raw result of r's scenario.
func raw(r result, all []result) (result, bool) {
	for _, o := range all {
		if o.Scenario == r.Scenario && o.Setup == "raw" {
			return o, true
		}
	}
	return result{}, false
}

func below(limit float64) func(result, []result) bool {
	return func(r result, _ []result) bool { return r.Max < limit }
}

func ratioAtLeast(x float64) func(result, []result) bool {
	return func(r result, all []result) bool { return r.Ratio >= x }
}

func ratioAtMost(x float64) func(result, []result) bool {
	return func(r result, all []result) bool { return r.Ratio <= x }
}

// atLeastSetup checks that r's median is at least x times that of setup
// b in the same scenario (measured after r: the check runs on the whole
// report).
func atLeastSetup(b string, x float64) func(result, []result) bool {
	return func(r result, all []result) bool {
		for _, o := range all {
			if o.Scenario == r.Scenario && o.Setup == b {
				return r.Median >= x*o.Median
			}
		}
		return false
	}
}

// againstSetup checks r's median against x times that of setup b in the
// same scenario.
func againstSetup(b string, x float64) func(result, []result) bool {
	return func(r result, all []result) bool {
		for _, o := range all {
			if o.Scenario == r.Scenario && o.Setup == b {
				return r.Median <= x*o.Median
			}
		}
		return false
	}
}

func (b *bench) report(w io.Writer, took time.Duration) {
	for i := range b.results {
		r := &b.results[i]
		if rr, ok := raw(*r, b.results); ok && r.Setup != "raw" && rr.Median > 0 {
			r.Ratio = r.Median / rr.Median
		}
	}
	for i := range b.results {
		r := &b.results[i]
		if r.check != nil {
			met := r.check(*r, b.results)
			r.Met = &met
		}
	}
	fmt.Fprintf(w, "\nburrow benchmark, %s, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), mode(b.o))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tsetup\tunit\tmin\tmedian\tmax\t× raw\ttarget\t\t")
	last := ""
	for _, r := range b.results {
		name := r.Scenario
		if name == last {
			name = ""
		}
		last = r.Scenario
		ratio := ""
		if r.Ratio != 0 {
			ratio = fmt.Sprintf("%.3g", r.Ratio)
		}
		met := ""
		if r.Met != nil {
			met = map[bool]string{true: "met", false: "NOT MET"}[*r.Met]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name, r.Setup, r.Unit,
			num(r.Min), num(r.Median), num(r.Max), ratio, r.Target, met)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n(%d samples in %s; CPU per GB counts each process's user+system time per 10⁹ payload bytes)\n",
		count(b.results), took.Round(time.Second))
}

func mode(o options) string {
	if o.quick {
		return "quick mode"
	}
	return fmt.Sprintf("%d runs", o.runs)
}

func num(v float64) string {
	switch {
	case v < 0:
		return "-" + num(-v)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")
	}
}

func count(rs []result) int {
	n := 0
	for _, r := range rs {
		n += len(r.Samples)
	}
	return n
}
