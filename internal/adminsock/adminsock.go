// Package adminsock serves and calls a local admin API over a Unix socket:
// HTTP with JSON bodies, reachable only by who may open the socket (mode
// 0600, in a directory only its owner can enter). The device and relay
// agents serve one, so that commands change their state through the one
// process that owns it. It must not listen on anything but a Unix socket.
package adminsock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/burrow-tunnel/burrow/internal/fileperm"
)

// Listen listens on a Unix socket at path, readable and writable by its
// owner only. A socket left behind by a process that died is replaced; one
// that a live process answers on is an error. A directory that another
// user owns or may write is refused (see [fileperm]): that user could put
// a socket of theirs in the agent's place.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := fileperm.CheckDir(filepath.Dir(path), "admin socket directory"); err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("admin socket %s: another process is serving it", path)
	}
	os.Remove(path)
	// Create the socket with no permissions for group and others from the
	// start, so that there is no moment when it is open to them.
	restore := privateUmask()
	ln, err := net.Listen("unix", path)
	restore()
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return ln, nil
}

// Serve serves h on ln until ctx is done; it returns when the server has
// stopped.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() { hs.Close() })
	defer stop()
	hs.Serve(ln)
}

// An Error is the API's answer to a request it refused; its message is
// meant for the user.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return e.Message }

// ErrNotRunning is returned by a Client when nothing answers on the socket.
var ErrNotRunning = errors.New("not running")

// A PermissionError reports that this user may not open the socket: only
// the user the agent runs as, and root, may (see [Listen]).
type PermissionError struct {
	Path  string // the socket
	Owner string // who owns it, as "user alice (uid 1000)"; "" if unknown
	Err   error  // the error of the connect
}

func (e *PermissionError) Error() string {
	return fmt.Sprintf("permission denied on the admin socket %s: run this as %s or as root", e.Path, e.Who())
}

// Who names who may open the socket besides root: its owner, or "the user
// the agent runs as" if the owner is unknown.
func (e *PermissionError) Who() string {
	if e.Owner == "" {
		return "the user the agent runs as"
	}
	return e.Owner
}

func (e *PermissionError) Unwrap() error { return e.Err }

// A Client calls the API on one socket.
type Client struct {
	Path string
	hc   *http.Client
}

// NewClient returns a client of the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{Path: path, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Call sends a request with body in (if not nil) as JSON and decodes the
// answer into out (if not nil).
func (c *Client) Call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://admin"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w (no one answers on %s)", ErrNotRunning, c.Path)
		}
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			owner, _ := fileperm.OwnerName(c.Path)
			return &PermissionError{Path: c.Path, Owner: owner, Err: err}
		}
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return &Error{Status: resp.StatusCode, Message: strings.TrimSpace(string(data))}
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// WriteJSON writes v as the JSON answer.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// ParseTTL parses a request's optional duration field: "" is zero.
func ParseTTL(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	return time.ParseDuration(s)
}

// ReadJSON decodes a request body into v, strictly.
func ReadJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
