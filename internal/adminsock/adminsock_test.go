package adminsock

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestListen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "admin.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory mode %v, want 0700", di.Mode().Perm())
	}
	// A live socket is not taken over.
	if _, err := Listen(path); err == nil {
		t.Fatal("listened on a socket another listener serves")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		mux := http.NewServeMux()
		mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, map[string]string{"hi": "there"}) })
		mux.HandleFunc("POST /fail", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no such thing", http.StatusNotFound) })
		Serve(ctx, ln, mux)
	}()
	c := NewClient(path)
	var out map[string]string
	if err := c.Call(context.Background(), "GET", "/hello", nil, &out); err != nil || out["hi"] != "there" {
		t.Fatalf("call: %v %v", out, err)
	}
	var apiErr *Error
	if err := c.Call(context.Background(), "POST", "/fail", map[string]int{"x": 1}, nil); !errors.As(err, &apiErr) || apiErr.Message != "no such thing" {
		t.Fatalf("refusal: %v", err)
	}
	cancel()
	<-done
	// A stale socket (its server gone) is replaced; no server at all is
	// reported as not running.
	if err := c.Call(context.Background(), "GET", "/hello", nil, nil); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("after stop: %v", err)
	}
	ln2, err := Listen(path)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	ln2.Close()
}

// TestListenRefusesUnsafeDir: a socket directory others may write is
// refused: they could put a socket of theirs in the agent's place, and
// answer its admin commands.
func TestListenRefusesUnsafeDir(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix modes")
	}
	dir := filepath.Join(t.TempDir(), "shared")
	os.Mkdir(dir, 0o700)
	os.Chmod(dir, 0o777)
	ln, err := Listen(filepath.Join(dir, "admin.sock"))
	if err == nil {
		ln.Close()
		t.Fatal("listened in a directory others may write")
	}
	if !strings.Contains(err.Error(), "run chmod go-w "+dir) {
		t.Fatalf("err = %v, want it to say how to fix it", err)
	}
}
