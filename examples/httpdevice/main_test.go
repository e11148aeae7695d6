package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
	"github.com/burrow-tunnel/burrow/pairing"
)

// TestPageThroughTunnel builds the example and runs it as a process of
// its own against a relay; a client pairs with the invite it prints and
// fetches the admin page through the tunnel with a plain net/http client.
// The process must hold no listening TCP socket.
func TestPageThroughTunnel(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "httpdevice")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	r := tunneltest.StartRelay(t)
	cmd := exec.Command(bin, "-relay", r.Addr, "-relay-id", r.Identity.ID().String(),
		"-key", filepath.Join(dir, "key"), "-state", filepath.Join(dir, "state"),
		"-no-lan") // the relay is on loopback: nothing to announce on the test's network
	cmd.Stderr = testLog{t}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The example's output, line by line (it prints two); Wait once it
	// is all read.
	lines := make(chan string, 8)
	exited := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
	})

	inv := readInvite(t, lines)
	c := tunneltest.StartClient(t, r, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Pair(ctx, inv); err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return c.Dial(ctx, inv.Device, "admin")
		},
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://httpdevice/")
	if err != nil {
		t.Fatal(err)
	}
	page, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "Hello, client "+c.ID().Short()) {
		t.Fatalf("GET /: %s, %q, %v", resp.Status, page, err)
	}

	listening, tcp := tcpSockets(t, cmd.Process.Pid)
	if tcp == 0 {
		t.Fatal("the device holds no TCP socket: the /proc check found not even its connection to the relay")
	}
	if len(listening) > 0 {
		t.Fatalf("the device listens on TCP: %v", listening)
	}

	cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Fatalf("the device exited with %v after an interrupt", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the device did not exit after an interrupt")
	}
}

// readInvite reads the example's output up to its invite.
func readInvite(t *testing.T, lines <-chan string) pairing.Invite {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatal("the example exited without printing an invite")
			}
			if s, found := strings.CutPrefix(line, "invite "); found {
				inv, err := pairing.Parse(s)
				if err != nil {
					t.Fatal(err)
				}
				return inv
			}
		case <-timeout:
			t.Fatal("the example printed no invite in 30s")
		}
	}
}

// tcpSockets returns the local addresses of the TCP sockets in LISTEN
// state that process pid holds, and how many TCP sockets it holds in all.
// /proc/PID/net/tcp{,6} list every socket of the process's network
// namespace; those whose inode is among the process's descriptors are
// its own.
func tcpSockets(t *testing.T, pid int) (listening []string, all int) {
	t.Helper()
	fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	inodes := make(map[string]bool)
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue // closed since
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "net", table))
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
			f := strings.Fields(line)
			if i == 0 || len(f) < 10 || !inodes[f[9]] {
				continue
			}
			all++
			if f[3] == "0A" { // TCP_LISTEN
				listening = append(listening, table+" "+f[1])
			}
		}
	}
	return listening, all
}

// testLog writes the example's log to the test's.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
