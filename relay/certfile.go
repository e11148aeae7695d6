package relay

import (
	"crypto/tls"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

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
// [Config.GetCertificate]: an agent that pins the relay's ID (it offers
// [relayproto.ALPNPinned]) accepts no key but the relay's identity key,
// whoever signed the certificate, so it gets the self-signed identity
// certificate; every other agent gets Config.GetCertificate's.
func (s *Server) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if slices.Contains(hello.SupportedProtos, relayproto.ALPNPinned) {
		return &s.cert, nil
	}
	return s.cfg.GetCertificate(hello)
}
