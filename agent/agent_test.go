package agent_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/burrow-tunnel/burrow/agent"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
	"github.com/burrow-tunnel/burrow/paths"
	"github.com/burrow-tunnel/burrow/relayproto"
	"github.com/burrow-tunnel/burrow/session"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logBuffer collects an agent's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer // guarded by mu
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor waits until the log holds a line with every one of parts.
func (l *logBuffer) waitFor(t *testing.T, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for line := range strings.Lines(l.String()) {
			n := 0
			for _, p := range parts {
				if strings.Contains(line, p) {
					n++
				}
			}
			if n == len(parts) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q in:\n%s", parts, l.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// start starts an agent on r with role and direct, logging to a buffer.
func start(t *testing.T, r *tunneltest.Relay, id *identity.Identity, role relayproto.Role, direct paths.DirectOptions,
	access func() ([]identity.ID, [][32]byte)) (*agent.Agent, *logBuffer) {
	t.Helper()
	logs := new(logBuffer)
	a, err := agent.Start(paths.Config{
		Identity: id,
		Role:     role,
		Relay:    r.Pin(),
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Access:   access,
		Direct:   direct,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := a.Paths().WaitAttached(ctx); err != nil {
		t.Fatal(err)
	}
	return a, logs
}

// TestDialAndServeControl: a client agent dials a device agent through the
// relay; the device serves the control stream, pings cross it, the path
// moves to a direct one (the endpoint got the path layer), and the opening,
// the path change and the end of the session are logged.
func TestDialAndServeControl(t *testing.T) {
	r := tunneltest.StartRelay(t)
	did, cid := tunneltest.NewIdentity(t), tunneltest.NewIdentity(t)
	dev, devLogs := start(t, r, did, relayproto.RoleDevice, tunneltest.Loopback,
		func() ([]identity.ID, [][32]byte) { return []identity.ID{cid.ID()}, nil })
	cli, cliLogs := start(t, r, cid, relayproto.RoleClient, tunneltest.Loopback, nil)

	ln, err := dev.Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var served sync.WaitGroup
	t.Cleanup(served.Wait)
	served.Go(func() {
		s, err := ln.Accept(t.Context())
		if err != nil {
			t.Error(err)
			return
		}
		defer s.Close(session.CloseNormal, "")
		in, err := s.AcceptTunnel(t.Context())
		if err != nil {
			t.Error(err)
			return
		}
		if req, err := in.Request(); err != nil || req.Kind != session.KindControl {
			t.Errorf("request %+v, %v; want a control stream", req, err)
			return
		}
		ctl, err := in.AcceptControl()
		if err != nil {
			t.Error(err)
			return
		}
		dev.ServeControl(t.Context(), s, ctl, slog.New(slog.NewTextHandler(devLogs, nil)))
	})

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := cli.Dial(ctx, did.ID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(session.CloseNormal, "") })
	cliLogs.waitFor(t, `msg="session opened"`, "device="+did.ID().String(), "path=relay")
	log := slog.New(slog.NewTextHandler(cliLogs, nil)).With("device", did.ID().String())
	ctl, err := cli.OpenControl(s, log)
	if err != nil {
		t.Fatal(err)
	}
	served.Go(func() { cli.ServeControl(t.Context(), s, ctl, log) })
	if rtt, err := ctl.Ping(ctx); err != nil || rtt <= 0 {
		t.Fatalf("ping: %v, %v", rtt, err)
	}
	cliLogs.waitFor(t, `msg="session path"`, `path="direct 127.0.0.1:`)
	if p := s.Path(); !p.Direct {
		t.Fatalf("path %v after the direct path was logged", p)
	}

	s.Close(session.CloseNormal, "done here")
	cliLogs.waitFor(t, `msg="session closed"`, "device="+did.ID().String(), "reason=", "bytes_sent=")
	if strings.Contains(devLogs.String(), "level=ERROR") {
		t.Fatalf("device errors:\n%s", devLogs)
	}
}

// TestDialCause: a dial that cannot finish fails with the cause of its
// context, and says so in the log.
func TestDialCause(t *testing.T) {
	r := tunneltest.StartRelay(t)
	cli, logs := start(t, r, tunneltest.NewIdentity(t), relayproto.RoleClient, paths.DirectOptions{Disable: true}, nil)
	absent := tunneltest.NewIdentity(t).ID()
	why := errors.New("gave up on it")
	ctx, cancel := context.WithTimeoutCause(t.Context(), 300*time.Millisecond, why)
	defer cancel()
	if _, err := cli.Dial(ctx, absent); !errors.Is(err, why) {
		t.Fatalf("dial: %v, want %v", err, why)
	}
	logs.waitFor(t, `msg="session failed"`, "device="+absent.String(), "gave up on it")
}
