package device

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/session"
)

// In-process services: a service served by Go code in the device's own
// process ([Config.Handlers]) rather than at an address the device dials.
// Firmware written in Go serves its admin page this way with no listening
// socket at all: each tunnel a client opens to the service is handed to
// the handler as a [net.Conn].

// A Handler serves an in-process service: make it with [ServeConn] or
// [ServeHTTP]. The zero Handler serves nothing, and [New] refuses it.
type Handler struct {
	conn func(net.Conn)
	http http.Handler
}

// ServeConn returns a Handler that calls f with every tunnel to its
// service, each on a goroutine of its own. f owns the connection until it
// returns; the device then closes it, if f has not.
//
// The connection is the tunnel itself: its Close ends the tunnel
// gracefully (what was written is still delivered, and the client reads
// EOF), and it has a CloseWrite method (assert
// interface{ CloseWrite() error }) that ends only the direction to the
// client, as a TCP half-close does; a Read returns [io.EOF] once the
// client has half-closed its side. Its RemoteAddr names the client;
// [TunnelClient] returns the client's ID. Deadlines work as on a TCP
// connection.
//
// f must return once a Read or Write fails: [Device.Close] ends every
// tunnel and waits for f to return. If f panics, the device logs the
// panic, aborts the tunnel and goes on serving.
func ServeConn(f func(net.Conn)) Handler { return Handler{conn: f} }

// ServeHTTP returns a Handler that serves h over every tunnel to its
// service: the device runs an [http.Server] for it whose listener accepts
// the tunnels, so keep-alive, pipelining, timeouts and panics in h are
// handled as net/http handles them on TCP connections. The server waits at
// most 10s for a request's header and closes a connection idle for 2
// minutes; its errors go to the device's logger. [RequestClient] returns
// the ID of the client a request came from.
//
// h must return once its request's context is done: [Device.Close] shuts
// the server down and waits for every request in progress. A connection h
// hijacks ([http.Hijacker]) is the tunnel, as [ServeConn] describes it; h
// must close it.
func ServeHTTP(h http.Handler) Handler { return Handler{http: h} }

func (h Handler) valid() bool { return (h.conn == nil) != (h.http == nil) }

// validateHandlers checks the names and handlers of c.Handlers.
func (c *Config) validateHandlers() error {
	for name, h := range c.Handlers {
		if err := session.ValidService(name); err != nil {
			return fmt.Errorf("device: handlers: %w", err)
		}
		if !h.valid() {
			return fmt.Errorf("device: handler of service %s is empty: make it with device.ServeConn or device.ServeHTTP", name)
		}
		if addr, dup := c.Services[name]; dup {
			return fmt.Errorf("device: service %s is both at address %s (Services) and served in-process (Handlers): keep it in one of them", name, addr)
		}
	}
	return nil
}

// HTTP server timeouts of a ServeHTTP handler.
const (
	handlerReadHeaderTimeout = 10 * time.Second
	handlerIdleTimeout       = 2 * time.Minute
)

// A handlerService is a running in-process service.
type handlerService struct {
	conn func(net.Conn) // or:
	srv  *http.Server
	ln   *tunnelListener
}

// startHandlers starts an HTTP server for every ServeHTTP handler. The
// servers run until stopHandlers.
func (d *Device) startHandlers() {
	d.handlers = make(map[string]*handlerService, len(d.cfg.Handlers))
	for name, h := range d.cfg.Handlers {
		if h.conn != nil {
			d.handlers[name] = &handlerService{conn: h.conn}
			continue
		}
		ln := &tunnelListener{
			conns: make(chan net.Conn),
			done:  make(chan struct{}),
			addr:  serviceAddr(name),
		}
		srv := &http.Server{
			Handler:           h.http,
			ReadHeaderTimeout: handlerReadHeaderTimeout,
			IdleTimeout:       handlerIdleTimeout,
			ErrorLog:          slog.NewLogLogger(d.log.With("service", name).Handler(), slog.LevelWarn),
			ConnContext: func(ctx context.Context, c net.Conn) context.Context {
				if tc, ok := c.(*tunnelConn); ok {
					ctx = context.WithValue(ctx, clientKey{}, tc.client)
				}
				return ctx
			},
		}
		d.handlers[name] = &handlerService{srv: srv, ln: ln}
		d.wg.Go(func() { srv.Serve(ln) })
	}
}

// stopHandlers shuts the HTTP servers down, once the sessions are closed:
// it waits for the requests in progress to end.
func (d *Device) stopHandlers() {
	var wg sync.WaitGroup
	for _, h := range d.handlers {
		if h.srv != nil {
			wg.Go(func() { h.srv.Shutdown(context.Background()) })
		}
	}
	wg.Wait()
}

// serveHandler accepts a tunnel to an in-process service and serves it
// until the tunnel is closed.
func (d *Device) serveHandler(s *session.Session, in *session.Incoming, service string, h *handlerService, log *slog.Logger) {
	tun, err := in.Accept()
	if err != nil {
		log.Warn("tunnel failed before it opened", "err", err)
		d.counters.tunnel(service, TunnelAborted)
		return
	}
	info := d.tunnelOpened(s, service)
	start := time.Now()
	log.Info("tunnel opened", "handler", true)
	tc := &tunnelConn{Tunnel: tun, client: s.PeerID(), done: make(chan struct{})}
	var perr error
	if h.conn != nil {
		perr = runConn(h.conn, tc, log)
	} else if !h.ln.hand(tc) {
		tc.Abort()
		tc.Close()
	}
	<-tc.done
	d.tunnelClosed(info, tc.in.Load(), tc.out.Load(), start, perr, log)
}

// runConn calls f with c and closes c when f returns; a panic in f aborts
// c and is returned as an error.
func runConn(f func(net.Conn), c *tunnelConn, log *slog.Logger) (err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("service handler panicked: tunnel aborted", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = fmt.Errorf("handler panicked: %v", p)
			c.Abort()
		}
		c.Close()
	}()
	f(c)
	return nil
}

// A tunnelConn is a tunnel handed to an in-process service: it counts
// the bytes it carries and tells when it is closed.
type tunnelConn struct {
	*session.Tunnel
	client  identity.ID
	in, out atomic.Int64 // bytes read from the client, written to it
	once    sync.Once
	done    chan struct{} // closed by the first Close
}

func (c *tunnelConn) Read(p []byte) (int, error) {
	n, err := c.Tunnel.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *tunnelConn) Write(p []byte) (int, error) {
	n, err := c.Tunnel.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// Close ends the tunnel gracefully; closing it again does nothing.
func (c *tunnelConn) Close() error {
	err := net.ErrClosed
	c.once.Do(func() {
		err = c.Tunnel.Close()
		close(c.done)
	})
	return err
}

// TunnelClient returns the ID of the client at the other end of c, when c
// is a tunnel a [ServeConn] handler was given.
func TunnelClient(c net.Conn) (identity.ID, bool) {
	tc, ok := c.(*tunnelConn)
	if !ok {
		return identity.ID{}, false
	}
	return tc.client, true
}

type clientKey struct{}

// RequestClient returns the ID of the client that sent r, when r came to
// a [ServeHTTP] handler through a tunnel.
func RequestClient(r *http.Request) (identity.ID, bool) {
	id, ok := r.Context().Value(clientKey{}).(identity.ID)
	return id, ok
}

// A tunnelListener is the [net.Listener] of a ServeHTTP handler's server:
// Accept returns the tunnels opened to the service. It holds no socket.
type tunnelListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{} // closed by Close
	addr  net.Addr
}

// hand gives c to the server; it reports false if the listener is closed.
func (l *tunnelListener) hand(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *tunnelListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *tunnelListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *tunnelListener) Addr() net.Addr { return l.addr }

// A serviceAddr is the address of an in-process service's listener.
type serviceAddr string

func (a serviceAddr) Network() string { return "burrow" }
func (a serviceAddr) String() string  { return "service " + string(a) }
