package tunneltest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/device"
	"github.com/burrow-tunnel/burrow/identity"
)

// drainSetup starts a relay (with DrainQuiet quiet), a device serving
// echo to a client, the client, and a forward of echo.
func drainSetup(t *testing.T, quiet time.Duration) (r *Relay, d *device.Device, c *client.Client, fwd string) {
	t.Helper()
	r = NewRelay(t)
	r.DrainQuiet = quiet
	r.Start()
	echo := StartServer(t, Echo)
	cid := NewIdentity(t)
	d = StartDevice(t, r, device.Config{
		Services: map[string]string{"echo": echo.Addr},
		Clients:  map[identity.ID][]string{cid.ID(): {"echo"}},
	})
	c = StartClient(t, r, cid)
	return r, d, c, Forward(t, c, d.ID(), "echo")
}

// echoLine sends a line through the tunnel conn and reads it back.
func echoLine(conn net.Conn, br *bufio.Reader, line string) error {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(conn, line); err != nil {
		return err
	}
	got, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return fmt.Errorf("echoed %q, want %q", got, line)
	}
	return nil
}

// TestRelayDrain: while the relay drains, tunnels open before it keep
// carrying their streams and finish normally, new tunnels on the sessions
// it has still open, no new connection reaches the relay, and both agents
// know the relay is draining; the relay closes when the drain period is
// over even though a tunnel is still busy, and the agents come back to
// the relay once it runs again, where the busy tunnel goes on.
func TestRelayDrain(t *testing.T) {
	r, d, c, fwd := drainSetup(t, -1)

	finishing, err := net.Dial("tcp", fwd) // finishes during the drain
	if err != nil {
		t.Fatal(err)
	}
	defer finishing.Close()
	busy, err := net.Dial("tcp", fwd) // still busy when the drain is over
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	fbr, bbr := bufio.NewReader(finishing), bufio.NewReader(busy)
	for _, tc := range []struct {
		conn net.Conn
		br   *bufio.Reader
	}{{finishing, fbr}, {busy, bbr}} {
		if err := echoLine(tc.conn, tc.br, "before the drain"); err != nil {
			t.Fatal(err)
		}
	}

	const period = 4 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), period)
	defer cancel()
	start := time.Now()
	drained := make(chan error, 1)
	go func() { drained <- r.Shutdown(ctx) }()

	// The busy tunnel streams through the drain, and on.
	var busyLines atomic.Int64
	busyErr := make(chan error, 1)
	stopBusy := make(chan struct{})
	busyDone := make(chan struct{})
	go func() {
		defer close(busyDone)
		for i := 0; ; i++ {
			select {
			case <-stopBusy:
				return
			default:
			}
			if err := echoLine(busy, bbr, fmt.Sprintf("busy %d", i)); err != nil {
				busyErr <- fmt.Errorf("line %d, %v into the drain: %w", i, time.Since(start), err)
				return
			}
			busyLines.Add(1)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	defer func() {
		close(stopBusy)
		busy.Close()
		<-busyDone
	}()

	for deadline := time.Now().Add(10 * time.Second); !d.Status().Relay.Draining || !c.RelayStatus().Draining; {
		if time.Now().After(deadline) {
			t.Fatalf("the agents were not told the relay drains: device %+v, client %+v", d.Status().Relay, c.RelayStatus())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if conn, err := net.DialTimeout("tcp", r.Addr, time.Second); err == nil {
		conn.Close()
		t.Fatal("the draining relay accepted a TCP connection")
	}

	// A tunnel open before the drain goes on and finishes: both halves
	// close cleanly.
	for i := range 20 {
		if err := echoLine(finishing, fbr, fmt.Sprintf("during the drain %d", i)); err != nil {
			t.Fatalf("tunnel open before the drain, %v into it: %v", time.Since(start), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	finishing.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(fbr); err != nil || len(rest) != 0 {
		t.Fatalf("finishing the tunnel: %q, %v", rest, err)
	}
	// A new tunnel, on the session the client already has.
	late, err := net.Dial("tcp", fwd)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	if err := echoLine(late, bufio.NewReader(late), "a tunnel opened during the drain"); err != nil {
		t.Fatalf("new tunnel during the drain: %v", err)
	}
	late.Close()

	select {
	case err := <-busyErr:
		t.Fatalf("the busy tunnel failed before the drain period was over: %v", err)
	case err := <-drained:
		t.Fatalf("the drain ended after %v (%v), with a tunnel busy, before its period of %v", time.Since(start), err, period)
	case <-time.After(time.Until(start.Add(period - 500*time.Millisecond))):
	}
	select {
	case err := <-drained:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown returned %v, want the end of the drain period", err)
		}
	case <-time.After(period + 10*time.Second):
		t.Fatal("the relay did not close after its drain period")
	}
	t.Logf("drain over after %v", time.Since(start).Round(time.Millisecond))

	// The agents reattach to the relay when it runs again, the device
	// first: the client finds it there, and its session with it, which
	// outlived the relay, carries a new tunnel at once, and the busy one
	// goes on.
	r.Start()
	if err := c.WaitAttached(t.Context()); err != nil {
		t.Fatal(err)
	}
	if st := d.Status().Relay; !st.Attached {
		t.Fatalf("the client came back before the device: %+v", st)
	}
	again, err := net.Dial("tcp", fwd)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := echoLine(again, bufio.NewReader(again), "after the restart"); err != nil {
		t.Fatalf("tunnel after the relay restarted: %v", err)
	}
	for n, deadline := busyLines.Load(), time.Now().Add(15*time.Second); busyLines.Load() < n+5; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-busyErr:
			t.Fatalf("the tunnel busy through the drain failed across the restart: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the tunnel busy through the drain stalled after the restart")
		}
	}
}

// TestRelayDrainEndsEarly: with no tunnel busy, a drain ends long before
// its period: once nothing has been forwarded for DrainQuiet, or once the
// last client has left.
func TestRelayDrainEndsEarly(t *testing.T) {
	const period = time.Minute
	t.Run("quiet", func(t *testing.T) {
		r, _, _, fwd := drainSetup(t, 500*time.Millisecond)
		conn, err := net.Dial("tcp", fwd)
		if err != nil {
			t.Fatal(err)
		}
		if err := echoLine(conn, bufio.NewReader(conn), "done before the drain"); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), period)
		defer cancel()
		start := time.Now()
		if err := r.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown returned %v after %v, want nil (drained)", err, time.Since(start))
		}
		t.Logf("drain over after %v", time.Since(start).Round(time.Millisecond))
	})
	t.Run("no client", func(t *testing.T) {
		r, _, c, _ := drainSetup(t, -1)
		ctx, cancel := context.WithTimeout(context.Background(), period)
		defer cancel()
		start := time.Now()
		drained := make(chan error, 1)
		go func() { drained <- r.Shutdown(ctx) }()
		for deadline := time.Now().Add(10 * time.Second); !c.RelayStatus().Draining; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the client was not told the relay drains")
			}
		}
		c.Close()
		if err := <-drained; err != nil {
			t.Fatalf("Shutdown returned %v after %v, want nil (drained)", err, time.Since(start))
		}
		t.Logf("drain over after %v", time.Since(start).Round(time.Millisecond))
	})
}
