package fleetstate

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// TestOpenWaitsForPlacement: a relay that starts with a NATS cluster whose
// third server has not joined yet waits for it, rather than giving up on
// "no suitable peers for placement" when it creates its buckets with three
// replicas (as the README's cluster does).
func TestOpenWaitsForPlacement(t *testing.T) {
	// Three servers of one cluster, on ports chosen now; the third starts
	// late.
	var routePorts [3]int
	for i := range routePorts {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		routePorts[i] = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
	}
	var routes []*url.URL
	for _, p := range routePorts {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	dir := t.TempDir()
	start := func(i int) *server.Server {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprint(i)),
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "burrow", Host: "127.0.0.1", Port: routePorts[i]},
			Routes:     routes,
		}
		srv, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		srv.Start()
		if !srv.ReadyForConnections(10 * time.Second) {
			t.Fatal("nats server not ready")
		}
		t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
		return srv
	}
	first := start(0)
	start(1)
	nc := connectNATS(t, first.ClientURL())

	opened := make(chan error, 1)
	go func() {
		s, err := Open(context.Background(), Config{Conn: nc, Replicas: 3, Logger: testLogger(t)})
		if err == nil {
			s.Close()
		}
		opened <- err
	}()
	// Two of three servers hold no bucket of three replicas: Open must
	// still be waiting when the third joins.
	select {
	case err := <-opened:
		t.Fatalf("Open returned before the cluster could place its buckets: %v", err)
	case <-time.After(3 * time.Second):
	}
	start(2)
	select {
	case err := <-opened:
		if err != nil {
			t.Fatalf("Open, once the third server joined: %v", err)
		}
	case <-time.After(placementWait):
		t.Fatal("Open did not return after the third server joined")
	}
}
