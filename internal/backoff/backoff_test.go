package backoff

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := Backoff{Min: 250 * time.Millisecond, Max: 8 * time.Second}
	// With the lowest and highest draws, every wait lies in [d/2, d).
	for _, draw := range []func(int64) int64{
		func(int64) int64 { return 0 },
		func(n int64) int64 { return n - 1 },
	} {
		b.Rand = draw
		b.Reset()
		d := 250 * time.Millisecond
		for i := range 12 {
			got := b.Next()
			if got < d/2 || got >= d {
				t.Fatalf("wait %d = %v, want in [%v, %v)", i, got, d/2, d)
			}
			d = min(2*d, 8*time.Second)
		}
	}
	// Capped for ever, never zero, even after very many attempts.
	b.Rand = nil
	for range 1000 {
		if w := b.Next(); w < 4*time.Second || w >= 8*time.Second {
			t.Fatalf("wait %v outside the cap's range", w)
		}
	}
	b.Reset()
	if w := b.Next(); w >= 250*time.Millisecond {
		t.Fatalf("after reset: %v", w)
	}
	var zero Backoff
	if w := zero.Next(); w != 0 {
		t.Fatalf("zero Backoff waits %v", w)
	}
}

// TestBackoffSpreads checks that agents which lost the relay together do
// not retry together: at every attempt, their waits spread evenly over the
// jitter range (no tenth of it holds more than 15% of 1,000 agents).
func TestBackoffSpreads(t *testing.T) {
	const agents = 1000
	for attempt := range 8 {
		d := min(250*time.Millisecond<<attempt, 8*time.Second)
		var counts [10]int
		for range agents {
			b := Backoff{Min: 250 * time.Millisecond, Max: 8 * time.Second, N: attempt}
			w := b.Next()
			counts[int((w-d/2)*10/(d-d/2))]++
		}
		for slot, n := range counts {
			if n > agents*15/100 {
				t.Fatalf("attempt %d: %d of %d agents in tenth %d of the range: %v", attempt, n, agents, slot, counts)
			}
		}
	}
}
