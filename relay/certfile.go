package relay

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/burrow-tunnel/burrow/fleet"
	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// certRecheck is how often a [CertFile] looks for a renewed certificate.
const certRecheck = time.Minute

// CertFile returns a [Config.GetCertificate] function serving the PEM
// certificate chain and key in certPath and keyPath. The files are read
// again when they change (checked at most once a minute), so a renewed
// certificate is served without a restart. It fails at once if the files
// do not load.
func CertFile(certPath, keyPath string) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	load := func() (*tls.Certificate, time.Time, error) {
		fi, err := os.Stat(certPath)
		if err != nil {
			return nil, time.Time{}, err
		}
		c, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("load certificate %s, key %s: %w", certPath, keyPath, err)
		}
		return &c, fi.ModTime(), nil
	}
	cert, mod, err := load()
	if err != nil {
		return nil, err
	}
	var (
		mu      sync.Mutex
		checked = time.Now()
	)
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(checked) >= certRecheck {
			checked = time.Now()
			if fi, err := os.Stat(certPath); err == nil && !fi.ModTime().Equal(mod) {
				// A renewal half-written keeps the old certificate in use.
				if c, m, err := load(); err == nil {
					cert, mod = c, m
				}
			}
		}
		return cert, nil
	}, nil
}

// certificate is the TLS GetCertificate of a relay with a
// [Config.GetCertificate] or a [Config.FleetMap]: an agent that pins the
// relay's ID (it offers [relayproto.ALPNPinned]) accepts no key but the
// relay's identity key, whoever signed the certificate, so it gets the
// self-signed identity certificate, with the fleet map in a fleet; every
// other agent gets Config.GetCertificate's, if there is one.
func (s *Server) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if s.cfg.GetCertificate != nil && !slices.Contains(hello.SupportedProtos, relayproto.ALPNPinned) {
		return s.cfg.GetCertificate(hello)
	}
	if s.fleet != nil {
		return s.fleet.get(), nil
	}
	return &s.cert, nil
}

// A fleetCert is the relay's self-signed certificate carrying its fleet's
// current signed map, made again when the map changes. It is safe for
// concurrent use.
type fleetCert struct {
	id      *identity.Identity
	current func() []byte
	log     *slog.Logger
	fleetID identity.ID // of the first map; a map of another fleet is refused

	mu      sync.Mutex
	signed  []byte           // the map in cert; guarded by mu
	version uint64           // its version; guarded by mu
	m       fleet.Map        // the map in cert, parsed; guarded by mu
	cert    *tls.Certificate // guarded by mu
}

// newFleetCert checks the current map (it must list the relay) and makes
// its certificate.
func newFleetCert(id *identity.Identity, current func() []byte, log *slog.Logger) (*fleetCert, error) {
	signed := current()
	m, err := fleet.ParseMap(signed)
	if err != nil {
		return nil, fmt.Errorf("relay: fleet map: %w", err)
	}
	if _, ok := m.Relay(id.ID()); !ok {
		return nil, fmt.Errorf("relay: this relay (ID %s) is not in the map of fleet %s (version %d): add it first with \"burrow fleet add --relay-id %s --addr HOST:PORT\"",
			id.ID(), m.FleetID, m.Version, id.ID())
	}
	cert, err := id.Certificate(fleet.Extension(signed))
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	return &fleetCert{id: id, current: current, log: log, fleetID: m.FleetID, signed: signed, version: m.Version, m: m, cert: &cert}, nil
}

// currentMap returns the current map.
func (f *fleetCert) currentMap() fleet.Map {
	f.get()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m
}

// relay returns the relay id of the current map, if it lists it.
func (f *fleetCert) relay(id identity.ID) (fleet.Relay, bool) {
	f.get()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m.Relay(id)
}

// get returns the certificate of the current map. A map that does not
// check, belongs to another fleet or is older than the one served is
// logged and ignored: the last good one stays.
func (f *fleetCert) get() *tls.Certificate {
	signed := f.current()
	f.mu.Lock()
	defer f.mu.Unlock()
	if bytes.Equal(signed, f.signed) {
		return f.cert
	}
	m, err := fleet.ParseMap(signed)
	switch {
	case err != nil:
		f.log.Error("fleet map ignored", "err", err)
	case m.FleetID != f.fleetID:
		f.log.Error("fleet map ignored: signed by another fleet", "fleet", m.FleetID.String(), "want", f.fleetID.String())
	case m.Version < f.version:
		f.log.Error("fleet map ignored: older than the one served", "version", m.Version, "served", f.version)
	default:
		cert, err := f.id.Certificate(fleet.Extension(signed))
		if err != nil {
			f.log.Error("fleet map ignored", "err", err)
			break
		}
		if _, ok := m.Relay(f.id.ID()); !ok {
			f.log.Error("this relay is no longer in the fleet map: agents pinning the fleet refuse it", "version", m.Version)
		} else {
			f.log.Info("fleet map", "version", m.Version, "relays", len(m.Relays))
		}
		f.cert, f.version, f.m = &cert, m.Version, m
	}
	// Remember what was seen, good or not, so that it is judged once.
	f.signed = signed
	return f.cert
}
