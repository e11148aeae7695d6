package identity

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

func TestIDString(t *testing.T) {
	id, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	s := id.ID().String()
	if len(s) != 52 {
		t.Fatalf("ID %q has %d characters, want 52", s, len(s))
	}
	if strings.Trim(s, "abcdefghijklmnopqrstuvwxyz234567") != "" {
		t.Fatalf("ID %q has characters outside a-z, 2-7", s)
	}
	for _, in := range []string{s, strings.ToUpper(s), "  " + s + "\n"} {
		got, err := ParseID(in)
		if err != nil || got != id.ID() {
			t.Fatalf("ParseID(%q) = %v, %v", in, got, err)
		}
	}
	if short := id.ID().Short(); !strings.HasPrefix(s, short) || len(short) != 8 {
		t.Fatalf("Short() = %q", short)
	}
}

func TestParseIDRejects(t *testing.T) {
	id, _ := Generate()
	s := id.ID().String()
	// The last character carries one bit of the ID; another spelling of
	// it (its unused bits set) is not the ID.
	alias := s[:51] + string(s[51]+1)
	for _, in := range []string{"", s[:8], s[:51], s + "a", s[:51] + "1", s[:51] + "=", "x" + s[1:51] + "!", alias} {
		if _, err := ParseID(in); !errors.Is(err, ErrInvalidID) {
			t.Errorf("ParseID(%q): err = %v, want ErrInvalidID", in, err)
		}
	}
}

func TestLoadOrCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "id.key")
	a, created, err := LoadOrCreate(path)
	if err != nil || !created {
		t.Fatalf("first LoadOrCreate: created=%v err=%v", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	b, created, err := LoadOrCreate(path)
	if err != nil || created || b.ID() != a.ID() {
		t.Fatalf("second LoadOrCreate: created=%v err=%v same=%v", created, err, b.ID() == a.ID())
	}
	if err := a.Save(path); err == nil {
		t.Fatal("Save overwrote an existing key")
	}
}

func TestLoadOrCreateConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id.key")
	ids := make([]ID, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			id, _, err := LoadOrCreate(path)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = id.ID()
		})
	}
	wg.Wait()
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatal("concurrent creators ended up with different keys")
		}
	}
}

func TestLoadRejects(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.key")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	if _, err := Load(bad); err == nil {
		t.Fatal("loaded a file that is not a key")
	}
	if _, err := Load(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: err = %v", err)
	}
}

// TestLoadRejectsExposedKey: a key file other users may read or write is
// refused, with the command that fixes it; the same key at 0600 loads.
func TestLoadRejectsExposedKey(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix permission bits")
	}
	path := filepath.Join(t.TempDir(), "device.key")
	id, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Save(path); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o666} {
		os.Chmod(path, mode)
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), "chmod 600 "+path) {
			t.Fatalf("mode %04o: err = %v", mode, err)
		}
		if _, _, err := LoadOrCreate(path); err == nil {
			t.Fatalf("mode %04o: LoadOrCreate accepted the key", mode)
		}
	}
	os.Chmod(path, 0o600)
	if got, err := Load(path); err != nil || got.ID() != id.ID() {
		t.Fatalf("mode 0600: %v", err)
	}
}

// handshake runs a TLS 1.3 handshake between two identities, the client
// pinning want.
func handshake(t *testing.T, server, client *Identity, want ID) (serverSaw ID, clientErr, serverErr error) {
	t.Helper()
	sc, err := server.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := client.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	srv := tls.Server(a, &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{sc},
		ClientAuth:       tls.RequireAnyClientCert,
		VerifyConnection: VerifyAnyKey,
	})
	cli := tls.Client(b, &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{cc},
		InsecureSkipVerify: true,
		VerifyConnection:   VerifyPinned("device", want),
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		serverErr = srv.Handshake()
		if serverErr == nil {
			serverSaw, _ = PeerID(srv.ConnectionState())
		}
		a.Close()
	}()
	clientErr = cli.Handshake()
	b.Close()
	<-done
	return serverSaw, clientErr, serverErr
}

func TestPinnedTLS(t *testing.T) {
	dev, _ := Generate()
	cli, _ := Generate()
	other, _ := Generate()

	saw, cerr, serr := handshake(t, dev, cli, dev.ID())
	if cerr != nil || serr != nil {
		t.Fatalf("pinned handshake failed: client %v, server %v", cerr, serr)
	}
	if saw != cli.ID() {
		t.Fatal("server did not see the client's ID")
	}

	_, cerr, _ = handshake(t, dev, cli, other.ID())
	var km *KeyMismatchError
	if !errors.As(cerr, &km) || !errors.Is(cerr, ErrKeyMismatch) {
		t.Fatalf("wrong pin: err = %v, want a KeyMismatchError", cerr)
	}
	if km.Expected != other.ID() || km.Got != dev.ID() {
		t.Fatalf("mismatch reports expected %s got %s", km.Expected, km.Got)
	}
	if !strings.Contains(cerr.Error(), other.ID().String()) || !strings.Contains(cerr.Error(), dev.ID().String()) {
		t.Fatalf("message %q does not name both keys", cerr)
	}
}

// TestLoadRejectsUnsafeOwners: a key file that is 0600 but owned by
// another user, and a key in a directory others may write, are refused
// with the command that fixes it; Save writes no key into such a
// directory. (Giving a file to another user needs root.)
func TestLoadRejectsUnsafeOwners(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix owners")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root, to give the key to another user")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "device.key")
	id, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Save(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 65534, -1); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); !errors.Is(err, ErrUnsafePermissions) || !strings.Contains(err.Error(), "runuser -u ") {
		t.Fatalf("0600 key of uid 65534: err = %v, want it refused with the chown that fixes it", err)
	}
	if _, _, err := LoadOrCreate(path); err == nil {
		t.Fatal("LoadOrCreate accepted another user's key")
	}
	os.Chown(path, 0, -1)
	if _, err := Load(path); err != nil {
		t.Fatalf("root's key, running as root: %v", err)
	}

	os.Chmod(dir, 0o777)
	if _, err := Load(path); !errors.Is(err, ErrUnsafePermissions) || !strings.Contains(err.Error(), "run chmod go-w "+dir) {
		t.Fatalf("key in a directory others may write: err = %v", err)
	}
	other := filepath.Join(dir, "new.key")
	if err := id.Save(other); !errors.Is(err, ErrUnsafePermissions) {
		t.Fatalf("Save into a directory others may write: err = %v", err)
	}
	if _, err := os.Stat(other); err == nil {
		t.Fatal("Save wrote a key into a directory others may write")
	}
}
