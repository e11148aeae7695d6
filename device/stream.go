package device

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"golang.org/x/time/rate"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/pipe"
	"github.com/burrow-tunnel/burrow/session"
)

// The streams of a session: a client opens one per tunnel, one to pair
// (pair.go) and one control stream. The device reads the request that
// starts each, decides, and answers before anything else flows.

// authorize decides a tunnel request. On success it returns the service's
// address ("" for an in-process service); otherwise the refusal to send.
func (d *Device) authorize(client identity.ID, service string) (string, *session.Reply) {
	svcs, known := d.access(client)
	if !known {
		return "", &session.Reply{Code: session.CodeNotAuthorized, Detail: "unknown client"}
	}
	all := slices.Contains(svcs, AllServices)
	addr, defined := d.policy().Services[service]
	if !defined {
		_, defined = d.cfg.Handlers[service]
	}
	if !defined {
		allowed := svcs
		if all {
			allowed = d.serviceNames()
		}
		allowed = slices.DeleteFunc(slices.Clone(allowed), func(s string) bool { return s == AllServices })
		slices.Sort(allowed)
		return "", &session.Reply{Code: session.CodeUnknownService, Allowed: allowed}
	}
	if !all && !slices.Contains(svcs, service) {
		return "", &session.Reply{Code: session.CodeNotAuthorized, Detail: "service not granted to this client"}
	}
	return addr, nil
}

// serveStream answers one stream: a pairing or a tunnel.
func (d *Device) serveStream(s *session.Session, in *session.Incoming, log *slog.Logger) {
	req, err := in.Request()
	if err != nil {
		log.Warn("stream refused: bad request", "stream", in.ID(), "err", err)
		in.Refuse(session.Reply{Code: session.CodeBadRequest, Detail: err.Error()})
		return
	}
	switch req.Kind {
	case session.KindPair:
		d.pair(s, in, req, log)
	case session.KindControl:
		d.serveControl(s, in, log)
	default:
		if !d.allowTunnel(s.PeerID()) {
			log.Debug("tunnel refused: rate limited", "service", req.Service, "stream", in.ID())
			d.counters.tunnel(req.Service, TunnelRateLimited)
			in.Refuse(session.Reply{Code: session.CodeRateLimited,
				Detail: fmt.Sprintf("more than %g tunnels per second", d.cfg.TunnelRate)})
			return
		}
		d.serveTunnel(s, in, req, log)
	}
}

// maxLimits bounds the clients whose tunnel rates are tracked; past it the
// ones whose buckets are full again are forgotten.
const maxLimits = 4096

// allowTunnel takes a token from client's bucket of tunnel opens.
func (d *Device) allowTunnel(client identity.ID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.limits[client]
	if l == nil {
		if len(d.limits) >= maxLimits {
			now := time.Now()
			for id, l := range d.limits {
				if l.TokensAt(now) >= float64(d.cfg.TunnelBurst) {
					delete(d.limits, id)
				}
			}
		}
		l = rate.NewLimiter(rate.Limit(d.cfg.TunnelRate), d.cfg.TunnelBurst)
		d.limits[client] = l
	}
	return l.Allow()
}

// serveControl serves a session's control stream: pings, and the search
// for a direct path. Only clients the device knows get one: a direct path
// search makes the device send probes to addresses the client names.
func (d *Device) serveControl(s *session.Session, in *session.Incoming, log *slog.Logger) {
	if _, known := d.access(s.PeerID()); !known {
		in.Refuse(session.Reply{Code: session.CodeNotAuthorized, Detail: "unknown client"})
		return
	}
	d.mu.Lock()
	info := d.sessions[s]
	dup := info == nil || info.control
	if !dup {
		info.control = true
	}
	d.mu.Unlock()
	if dup {
		in.Refuse(session.Reply{Code: session.CodeBadRequest, Detail: "the session has a control stream already"})
		return
	}
	defer func() {
		d.mu.Lock()
		info.control = false
		d.mu.Unlock()
	}()
	ctl, err := in.AcceptControl()
	if err != nil {
		log.Debug("control stream failed", "err", err)
		return
	}
	d.agent.ServeControl(d.ctx, s, ctl, log)
}

func (d *Device) serveTunnel(s *session.Session, in *session.Incoming, req session.Request, log *slog.Logger) {
	log = log.With("service", req.Service, "stream", in.ID())
	addr, refusal := d.authorize(s.PeerID(), req.Service)
	if refusal != nil {
		log.Warn("tunnel refused", "reason", refusal.Code.String())
		r := TunnelNotAuthorized
		if refusal.Code == session.CodeUnknownService {
			r = TunnelUnknownService
		}
		d.counters.tunnel(req.Service, r)
		in.Refuse(*refusal)
		return
	}
	if h := d.handlers[req.Service]; h != nil {
		d.serveHandler(s, in, req.Service, h, log)
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, d.cfg.ServiceDialTimeout)
	conn, err := d.cfg.DialService(ctx, "tcp", addr)
	cancel()
	if err != nil {
		log.Warn("tunnel refused: service unreachable", "addr", addr, "err", err)
		d.counters.tunnel(req.Service, TunnelDialFailed)
		in.Refuse(session.Reply{Code: session.CodeServiceUnreachable, Detail: err.Error()})
		return
	}
	svc, ok := conn.(pipe.Conn)
	if !ok {
		conn.Close()
		log.Error("tunnel refused: service connection cannot half-close", "type", fmt.Sprintf("%T", conn))
		d.counters.tunnel(req.Service, TunnelDialFailed)
		in.Refuse(session.Reply{Code: session.CodeServiceUnreachable, Detail: "service connection cannot half-close"})
		return
	}
	tun, err := in.Accept()
	if err != nil {
		conn.Close()
		log.Warn("tunnel failed before it opened", "err", err)
		d.counters.tunnel(req.Service, TunnelAborted)
		return
	}
	info := d.tunnelOpened(s, req.Service)
	start := time.Now()
	log.Info("tunnel opened", "addr", addr)
	res := pipe.Join(tun, svc)
	d.tunnelClosed(info, res.AToB, res.BToA, start, res.Err, log)
}

// tunnelOpened counts a tunnel to service that opened in s; it returns
// what tunnelClosed needs.
func (d *Device) tunnelOpened(s *session.Session, service string) *sessionInfo {
	d.mu.Lock()
	info := d.sessions[s]
	if info != nil {
		info.tunnels++
		info.total++
	}
	d.mu.Unlock()
	d.counters.tunnel(service, TunnelOK)
	return info
}

// tunnelClosed counts and logs the end of a tunnel that carried toSvc
// bytes to its service and fromSvc back, and ended with err.
func (d *Device) tunnelClosed(info *sessionInfo, toSvc, fromSvc int64, start time.Time, err error, log *slog.Logger) {
	d.counters.bytesTo.Add(uint64(toSvc))
	d.counters.bytesFrom.Add(uint64(fromSvc))
	d.mu.Lock()
	if info != nil {
		info.tunnels--
	}
	d.mu.Unlock()
	attrs := []any{"bytes_in", toSvc, "bytes_out", fromSvc, "duration", time.Since(start).Round(time.Millisecond).String()}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	log.Info("tunnel closed", attrs...)
}

// serviceNames returns the names of every service, addresses and
// in-process ones, sorted.
func (d *Device) serviceNames() []string {
	names := slices.Collect(maps.Keys(d.policy().Services))
	for name := range d.cfg.Handlers {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}
