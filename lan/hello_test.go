package lan

import (
	"strings"
	"testing"
	"time"
)

// TestHello: a hello made for the device opens once, in its window and
// the ones beside it; one made for another device, a copy, a hello of
// two windows before, and anything malformed do not.
func TestHello(t *testing.T) {
	cam1, cam2 := testID("cam1"), testID("cam2")
	c := newClock(t0)
	check := NewHelloChecker(cam1, c.now)

	h := Hello(cam1, t0)
	if !strings.HasSuffix(h, ".lan.burrow") || len(h) > 253 || strings.Contains(h, cam1.String()) {
		t.Fatalf("hello %q", h)
	}
	if err := check.Check(h); err != nil {
		t.Fatalf("a hello for the device: %v", err)
	}
	if err := check.Check(h); err == nil {
		t.Fatal("a hello taken twice")
	}
	if err := check.Check(Hello(cam2, t0)); err == nil {
		t.Fatal("a hello for another device")
	}
	for _, d := range []time.Duration{-WindowLength, WindowLength} {
		if err := check.Check(Hello(cam1, t0.Add(d))); err != nil {
			t.Errorf("a hello of the window %v away: %v", d, err)
		}
	}
	if err := check.Check(Hello(cam1, t0.Add(-2*WindowLength))); err == nil {
		t.Error("a hello of two windows before")
	}
	other := Hello(cam1, t0)
	for _, bad := range []string{"", "burrow", "x.lan.burrow", strings.Replace(other, "-", "", 1),
		strings.TrimSuffix(other, ".lan.burrow"), other[:10] + other[11:], "zz" + other[2:]} {
		if err := check.Check(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	// A hello kept back and sent once the device's clock has moved two
	// windows on is refused, as is its copy afterwards.
	late := Hello(cam1, t0)
	c.add(2 * WindowLength)
	if err := check.Check(late); err == nil {
		t.Error("a hello of two windows before the device's clock")
	}
	if err := check.Check(Hello(cam1, c.now())); err != nil {
		t.Errorf("a fresh hello after the clock moved: %v", err)
	}
}
