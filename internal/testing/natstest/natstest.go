// Package natstest runs a real NATS server with JetStream inside the test
// process, for the tests of burrow's relay fleet: no mock of NATS, but the
// server package of nats-server itself, listening on loopback with its
// storage in the test's temporary directory. It is for tests only.
package natstest

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// A Server is an in-process NATS server with JetStream. It is not safe for
// concurrent use: one test goroutine starts, stops and restarts it.
type Server struct {
	t    testing.TB
	opts server.Options
	srv  *server.Server // nil while stopped
}

// Start starts a JetStream server on a free loopback port; it is stopped
// when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, opts: server.Options{
		ServerName: "burrow-test",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   filepath.Join(t.TempDir(), "jetstream"),
		NoLog:      true,
		NoSigs:     true,
	}}
	s.start()
	// Restart listens on the same port, as a restarted server would, so
	// that clients find it again by themselves.
	s.opts.Port = s.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	srv, err := server.NewServer(&s.opts)
	if err != nil {
		s.t.Fatalf("nats server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		s.t.Fatal("nats server: not ready in 10s")
	}
	s.srv = srv
}

// URL is the server's client URL (nats://127.0.0.1:PORT).
func (s *Server) URL() string { return s.srv.ClientURL() }

// Server returns the running nats-server, for tests that need more of it;
// nil while stopped.
func (s *Server) Server() *server.Server { return s.srv }

// Stop shuts the server down and waits until it has; its JetStream data
// stays on disk for Restart. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.srv = nil
}

// Restart starts a stopped server again on the same port and storage.
func (s *Server) Restart() {
	s.t.Helper()
	if s.srv != nil {
		s.t.Fatal("natstest: Restart of a running server")
	}
	s.start()
}
