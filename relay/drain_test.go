package relay

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/relayproto"
)

// readUntil reads frames until one of type want and returns its payload.
func (a *agent) readUntil(want relayproto.FrameType) []byte {
	a.t.Helper()
	for {
		if typ, p := a.read(); typ == want {
			return p
		}
	}
}

// pair attaches a device and a client it allows.
func pair(t *testing.T, addr string) (dev, cli *agent) {
	t.Helper()
	devID, cliID := newIdentity(t), newIdentity(t)
	dev = attach(t, addr, devID, relayproto.RoleDevice)
	cli = attach(t, addr, cliID, relayproto.RoleClient)
	dev.allow(cliID)
	return dev, cli
}

// exchange sends one packet each way between dev and cli and fails the
// test unless both arrive.
func exchange(t *testing.T, dev, cli *agent, what string) {
	t.Helper()
	cli.write(relayproto.FrameSendPacket, append(relayproto.AppendAddr(nil, relayproto.Addr{ID: dev.id.ID()}), what...))
	_, got, err := relayproto.ParsePacket(dev.readUntil(relayproto.FrameRecvPacket))
	if err != nil || string(got) != what {
		t.Fatalf("device got %q, %v; want %q", got, err, what)
	}
	dev.write(relayproto.FrameSendPacket, append(relayproto.AppendAddr(nil, relayproto.Addr{ID: cli.id.ID(), Instance: 7}), what...))
	_, got, err = relayproto.ParsePacket(cli.readUntil(relayproto.FrameRecvPacket))
	if err != nil || string(got) != what {
		t.Fatalf("client got %q, %v; want %q", got, err, what)
	}
}

// shutdown runs srv.Shutdown(ctx) and returns a channel that receives its
// result.
func shutdown(ctx context.Context, srv *Server) <-chan error {
	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(ctx) }()
	return done
}

// TestShutdownDrains: during a drain the relay accepts no connection and
// admits no agent, tells the agents it has that it is draining, and goes
// on forwarding between them until the drain period is over, even with
// packets flowing; then every agent gets a go-away.
func TestShutdownDrains(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll, DrainQuiet: -1})
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpDone := make(chan error, 1)
	go func() { udpDone <- srv.ServeUDP(udp) }()
	dev, cli := pair(t, addr)
	exchange(t, dev, cli, "before")
	late := connect(t, addr) // upgraded, but no hello yet

	const period = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), period)
	defer cancel()
	start := time.Now()
	done := shutdown(ctx, srv)

	for _, a := range []*agent{dev, cli} {
		f, err := relayproto.ParseDrain(a.readUntil(relayproto.FrameDrain))
		if err != nil || f.WithinMillis == 0 || f.WithinMillis > uint32(period/time.Millisecond) {
			t.Fatalf("drain frame %+v, %v: want one that says the relay closes within %v", f, err, period)
		}
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("a draining relay accepted a TCP connection")
	}
	select {
	case err := <-udpDone:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ServeUDP returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeUDP still runs during the drain")
	}
	late.hello(newIdentity(t), relayproto.RoleClient, 1, 1, late.exporter())
	if f := late.refusal(); f.Code != relayproto.RefuseShuttingDown {
		t.Fatalf("an agent attaching during the drain: %+v, want refused (shutting down)", f)
	}

	// Traffic keeps flowing, and does not end the drain early.
	for time.Since(start) < period/2 {
		exchange(t, dev, cli, "during")
		time.Sleep(50 * time.Millisecond)
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned %v after %v, with packets flowing, before its %v", err, time.Since(start), period)
		default:
		}
	}

	// Devices are asked back first, clients after them.
	for i, a := range []*agent{dev, cli} {
		f, err := relayproto.ParseGoAway(a.readUntil(relayproto.FrameGoAway))
		retry := time.Duration(f.RetryAfterMillis) * time.Millisecond
		from := closeRetryAfter + time.Duration(i)*(minRetrySpread+clientRetryLag)
		if err != nil || f.Reason != relayproto.GoAwayShutdown || retry < from || retry >= from+minRetrySpread {
			t.Fatalf("go-away %+v, %v: want a retry after in [%v, %v)", f, err, from, from+minRetrySpread)
		}
	}
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown returned %v, want the drain period's end", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the drain period")
	}
	if took := time.Since(start); took < period {
		t.Fatalf("Shutdown returned after %v, before the drain period of %v", took, period)
	}
	if st := srv.Stats(); st.Devices+st.Clients != 0 {
		t.Fatalf("agents left attached after Shutdown: %+v", st)
	}
}

// TestShutdownEndsEarly: a drain ends before its deadline once the last
// client has left, or once nothing has been forwarded for DrainQuiet.
func TestShutdownEndsEarly(t *testing.T) {
	t.Run("no client", func(t *testing.T) {
		srv, addr := serve(t, Config{AllowDevice: allowAll, DrainQuiet: -1})
		dev, cli := pair(t, addr)
		done := shutdown(context.Background(), srv)
		cli.readUntil(relayproto.FrameDrain)
		exchange(t, dev, cli, "during")
		cli.conn.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Shutdown returned %v, want nil (drained)", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the drain went on with no client attached")
		}
		if f, err := relayproto.ParseGoAway(dev.readUntil(relayproto.FrameGoAway)); err != nil || f.Reason != relayproto.GoAwayShutdown {
			t.Fatalf("device got go-away %+v, %v", f, err)
		}
	})
	t.Run("only devices", func(t *testing.T) {
		srv, addr := serve(t, Config{AllowDevice: allowAll, DrainQuiet: -1})
		attach(t, addr, newIdentity(t), relayproto.RoleDevice)
		select {
		case err := <-shutdown(context.Background(), srv):
			if err != nil {
				t.Fatalf("Shutdown returned %v, want nil (drained)", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the drain went on with no client attached")
		}
	})
	t.Run("quiet", func(t *testing.T) {
		srv, addr := serve(t, Config{AllowDevice: allowAll, DrainQuiet: 300 * time.Millisecond})
		pair(t, addr)
		select {
		case err := <-shutdown(context.Background(), srv):
			if err != nil {
				t.Fatalf("Shutdown returned %v, want nil (drained)", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the drain went on with nothing forwarded")
		}
	})
}

// TestCloseDuringShutdown: Close ends a drain at once.
func TestCloseDuringShutdown(t *testing.T) {
	srv, addr := serve(t, Config{AllowDevice: allowAll, DrainQuiet: -1})
	_, cli := pair(t, addr)
	done := shutdown(context.Background(), srv)
	cli.readUntil(relayproto.FrameDrain)
	srv.Close()
	select {
	case err := <-done:
		if !errors.Is(err, http.ErrServerClosed) {
			t.Fatalf("Shutdown returned %v, want ErrServerClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown went on after Close")
	}
	if f, err := relayproto.ParseGoAway(cli.readUntil(relayproto.FrameGoAway)); err != nil || f.Reason != relayproto.GoAwayShutdown {
		t.Fatalf("client got go-away %+v, %v", f, err)
	}
	if err := srv.Shutdown(context.Background()); !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Shutdown after Close: %v", err)
	}
}

// TestCloseSpreadsRetries: agents told to go away at once are told to come
// back at different times, over a spread that grows with their number.
func TestCloseSpreadsRetries(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{0, minRetrySpread},
		{1, minRetrySpread},
		{5000, 5 * time.Second},
		{1 << 20, maxRetrySpread},
	} {
		if got := retrySpread(tc.n); got != tc.want {
			t.Errorf("retrySpread(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}

	srv, addr := serve(t, Config{AllowDevice: allowAll})
	var agents []*agent
	for range 8 {
		agents = append(agents, attach(t, addr, newIdentity(t), relayproto.RoleDevice))
	}
	go srv.Close()
	waits := make(map[uint32]bool)
	for _, a := range agents {
		f, err := relayproto.ParseGoAway(a.readUntil(relayproto.FrameGoAway))
		if err != nil {
			t.Fatal(err)
		}
		waits[f.RetryAfterMillis] = true
	}
	if len(waits) < 2 {
		t.Fatalf("8 agents were all told to wait %v ms", waits)
	}
}

// TestClosingRelaySaysNothingOfPeers: while the relay closes, a packet
// whose peer's attachment is already gone is dropped without a peer-gone: the
// peer did not leave, the relay is closing it, and an agent told otherwise
// would give up on a peer that comes back with the relay.
func TestClosingRelaySaysNothingOfPeers(t *testing.T) {
	srv, err := New(Config{Identity: newIdentity(t)})
	if err != nil {
		t.Fatal(err)
	}
	src := &attachment{srv: srv, role: relayproto.RoleClient}
	dst := relayproto.Addr{ID: newIdentity(t).ID()}
	if _, gone := srv.route(src, dst); gone.Reason != relayproto.GoneUnreachable {
		t.Fatalf("open relay, absent device: %+v, want unreachable", gone)
	}
	srv.Close()
	if to, gone := srv.route(src, dst); to != nil || gone != (relayproto.PeerGone{}) {
		t.Fatalf("closing relay: %v %+v, want nothing to say", to, gone)
	}
}
