package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/burrow-tunnel/burrow/client"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/pipe"
	"github.com/burrow-tunnel/burrow/pairing"
	"github.com/burrow-tunnel/burrow/relaylink"
	"github.com/burrow-tunnel/burrow/session"
)

// Time limits of the calls that talk to a relay or a device.
const (
	attachTimeout = 10 * time.Second // a relay attachment, as burrow connect waits
	callTimeout   = 30 * time.Second // a pairing or a dial, attachment included
)

// A libClient is what a client handle holds: the home's key, and one
// [client.Client] per relay its devices are attached to, started when
// first needed (as burrow connect runs one per relay).
type libClient struct {
	home client.Home
	id   *identity.Identity
	log  *slog.Logger

	ctx    context.Context // cancelled by close
	cancel context.CancelFunc
	joins  sync.WaitGroup // the joins of burrow_dial's sockets

	mu       sync.Mutex
	relays   map[relaylink.RelayConfig]*client.Client // guarded by mu
	forwards map[int32]*libForward                    // guarded by mu
	closed   bool                                     // guarded by mu
	noLAN    bool                                     // guarded by mu; set before the first relay starts
	// locals are the Go ends of the socket pairs of open tunnels, which
	// close aborts: a tunnel whose service has finished still waits for
	// the app's end, which the app may close later, or never.
	locals map[*net.UnixConn]struct{} // guarded by mu
}

// setLAN turns the LAN on or off for the client, before it started.
func (lc *libClient) setLAN(on bool) error {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if len(lc.relays) > 0 {
		return errors.New("the client has started (a pair or dial was made): call burrow_client_lan right after burrow_client_new")
	}
	lc.noLAN = !on
	return nil
}

// newClient loads the client of home (the default home if "").
func newClient(dir string) (*libClient, error) {
	if dir == "" {
		var err error
		if dir, err = client.DefaultHomeDir(); err != nil {
			return nil, err
		}
	}
	home := client.Home{Dir: dir}
	id, _, err := home.Identity()
	if err != nil {
		return nil, fmt.Errorf("client home %s: %w", dir, err)
	}
	if _, err := home.Devices(); err != nil {
		return nil, fmt.Errorf("client home %s: %w", dir, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &libClient{home: home, id: id, log: slog.New(slog.DiscardHandler), ctx: ctx, cancel: cancel,
		relays: make(map[relaylink.RelayConfig]*client.Client), forwards: make(map[int32]*libForward),
		locals: make(map[*net.UnixConn]struct{})}, nil
}

// relay returns the client attached (or attaching) to rc, starting it if
// there is none. Off the LAN, it waits until the client is attached, as
// burrow connect does: a refusal fails at once, an unreachable relay
// after attachTimeout. On the LAN it does not wait: a device there is
// reached with the relay down.
func (lc *libClient) relay(ctx context.Context, rc relaylink.RelayConfig) (*client.Client, error) {
	lc.mu.Lock()
	if lc.closed {
		lc.mu.Unlock()
		return nil, errors.New("the client is closed")
	}
	c := lc.relays[rc]
	if c == nil {
		var err error
		c, err = client.New(client.Config{Identity: lc.id, Relay: rc, Logger: lc.log, NoLAN: lc.noLAN})
		if err != nil {
			lc.mu.Unlock()
			return nil, err
		}
		lc.relays[rc] = c
	}
	noLAN := lc.noLAN
	lc.mu.Unlock()
	if !noLAN {
		return c, nil
	}
	wctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	if err := c.WaitAttached(wctx); err != nil {
		if wctx.Err() != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("relay %s is not reachable (not attached within %s): check the network and that the relay runs; try again", rc.Addr, attachTimeout)
		}
		return nil, fmt.Errorf("relay %s: %w", rc.Addr, err)
	}
	return c, nil
}

// callContext bounds a call that talks to a relay or a device; closing
// the client ends it too.
func (lc *libClient) callContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(lc.ctx, callTimeout)
}

// pair pairs with the device of the invite raw and saves it as name.
func (lc *libClient) pair(raw, name string) error {
	inv, err := pairing.Parse(raw)
	if err != nil {
		return err
	}
	if name, err = client.InviteName(inv, name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	ctx, cancel := lc.callContext()
	defer cancel()
	c, err := lc.relay(ctx, client.InviteRelay(inv))
	if err != nil {
		return err
	}
	p, err := c.Pair(ctx, inv)
	if err != nil {
		return err
	}
	if _, err := lc.home.SavePaired(name, inv, p); err != nil {
		return fmt.Errorf("paired, but saving the device in %s failed: %w", lc.home.Dir, err)
	}
	lc.log.Info("paired", "name", name, "device", inv.Device.String())
	return nil
}

// device returns the known device named (or with the ID) dev and the
// client attached to its relay.
func (lc *libClient) device(ctx context.Context, dev, service string) (client.KnownDevice, *client.Client, error) {
	if err := session.ValidService(service); err != nil {
		return client.KnownDevice{}, nil, err
	}
	kd, err := lc.home.Device(dev)
	if err != nil {
		if errors.Is(err, client.ErrUnknownDevice) {
			return client.KnownDevice{}, nil, fmt.Errorf("%w: pair with it first (burrow_pair with an invite from its owner)", err)
		}
		return client.KnownDevice{}, nil, err
	}
	c, err := lc.relay(ctx, kd.RelayConfig())
	return kd, c, err
}

// dial opens a tunnel to service on dev and returns the C end of a
// socket pair whose other end is joined with it.
func (lc *libClient) dial(dev, service string) (int, error) {
	ctx, cancel := lc.callContext()
	defer cancel()
	kd, c, err := lc.device(ctx, dev, service)
	if err != nil {
		return -1, err
	}
	t, err := c.Dial(ctx, kd.ID, service)
	if err != nil {
		return -1, fmt.Errorf("dial %s/%s: %w", dev, service, err)
	}
	fd, local, err := socketPair()
	if err != nil {
		t.Close()
		return -1, err
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.closed {
		// close is waiting for the joins, or is done with them.
		t.Close()
		local.Close()
		syscall.Close(fd)
		return -1, errors.New("the client is closed")
	}
	lc.locals[local] = struct{}{}
	lc.joins.Go(func() {
		pipe.Join(local, t)
		lc.mu.Lock()
		delete(lc.locals, local)
		lc.mu.Unlock()
	})
	return fd, nil
}

// socketPair returns a connected pair of Unix stream sockets, both
// close-on-exec: a file descriptor for C, and the other end as a
// connection for Go. (SOCK_CLOEXEC is Linux's, not Darwin's: the flag is
// set after, under the lock that keeps a fork out meanwhile.)
func socketPair() (int, *net.UnixConn, error) {
	syscall.ForkLock.RLock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return -1, nil, fmt.Errorf("socketpair: %w (too many open files? close the sockets of finished tunnels)", err)
	}
	f := os.NewFile(uintptr(fds[1]), "burrow tunnel")
	conn, err := net.FileConn(f) // a duplicate of fds[1]
	f.Close()
	if err != nil {
		syscall.Close(fds[0])
		return -1, nil, fmt.Errorf("socketpair: %w", err)
	}
	return fds[0], conn.(*net.UnixConn), nil
}

// A libForward is what a forward handle holds: a running client.Forward.
type libForward struct {
	lc     *libClient
	cancel context.CancelFunc
	done   chan struct{} // closed when Forward has returned
}

// forward listens on listen and serves Forward to service on dev there,
// and returns the forward's handle and the address it is bound to, which
// must fit in room bytes with a NUL. It calls register with the forward
// (under the client's lock, so that closing the client finds it) before
// it starts serving.
func (lc *libClient) forward(dev, service, listen string, room int, register func(*libForward) (int32, error)) (int32, string, error) {
	ctx, cancel := lc.callContext()
	defer cancel()
	kd, c, err := lc.device(ctx, dev, service)
	if err != nil {
		return -1, "", err
	}
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return -1, "", fmt.Errorf("listen for %s/%s: %w", dev, service, err)
	}
	addr := ln.Addr().String()
	if len(addr)+1 > room {
		ln.Close()
		return -1, "", fmt.Errorf("addr_len %d cannot hold the bound address %s and its NUL (%d bytes): pass a larger buffer", room, addr, len(addr)+1)
	}
	f := &libForward{lc: lc, done: make(chan struct{})}
	fctx, fcancel := context.WithCancel(lc.ctx)
	f.cancel = fcancel
	lc.mu.Lock()
	if lc.closed {
		lc.mu.Unlock()
		ln.Close()
		fcancel()
		return -1, "", errors.New("the client is closed")
	}
	h, err := register(f)
	if err != nil {
		lc.mu.Unlock()
		ln.Close()
		fcancel()
		return -1, "", err
	}
	lc.forwards[h] = f
	lc.mu.Unlock()
	go func() {
		defer close(f.done)
		if err := c.Forward(fctx, ln, kd.ID, service); err != nil {
			lc.log.Error("forward ended", "listen", ln.Addr().String(), "err", err)
		}
	}()
	return h, addr, nil
}

// stop stops the forward and waits for it; the caller has unregistered
// its handle.
func (f *libForward) stop(h int32) {
	f.cancel()
	<-f.done
	f.lc.mu.Lock()
	delete(f.lc.forwards, h)
	f.lc.mu.Unlock()
}

// close closes the client's forwards, relay clients and tunnels, and
// waits for all of them. The caller has unregistered the client's handle
// and calls forget for each forward handle so that it is unregistered too.
func (lc *libClient) close(forget func(int32)) {
	lc.mu.Lock()
	lc.closed = true
	forwards := lc.forwards
	lc.forwards = nil
	relays := lc.relays
	lc.relays = nil
	for local := range lc.locals {
		pipe.Abort(local)
	}
	lc.mu.Unlock()
	for h, f := range forwards {
		forget(h)
		f.cancel()
		<-f.done
	}
	lc.cancel()
	for _, c := range relays {
		c.Close()
	}
	lc.joins.Wait()
}
