package main

import (
	"log/slog"
	"net"
	"strings"
	"testing"
)

// TestDemoListenInUse: a demo whose --listen address is taken fails with
// an error that says what to do, and stops what it had started (it used
// to panic on a nil demo in its cleanup).
func TestDemoListenInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d, err := startDemo(ln.Addr().String(), slog.New(slog.DiscardHandler))
	if err == nil {
		d.close()
		t.Fatal("the demo started on an address in use")
	}
	if d != nil || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("demo on an address in use: %v (demo %v), want an error naming --listen", err, d)
	}
	t.Log(err)
}
