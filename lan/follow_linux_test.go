//go:build linux

package lan

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// TestMain runs the device of TestFollow when the test binary is started
// as one.
func TestMain(m *testing.M) {
	if name := os.Getenv("LAN_FOLLOW_DEVICE"); name != "" {
		followChild(name)
		return
	}
	os.Exit(m.Run())
}

// followChild announces the device named name on eth0, following the
// interface, until its standard input closes.
func followChild(name string) {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	f, err := Follow(AnnounceConfig{Device: testID(name), Port: 4001, Interface: "eth0", Logger: log}, 100*time.Millisecond)
	if err != nil {
		log.Error("follow", "err", err)
		os.Exit(1)
	}
	io.Copy(io.Discard, os.Stdin)
	f.Close()
}

// TestFollow: a device whose interface has no address yet is announced
// once it gets one, and at its new address when that changes.
func TestFollow(t *testing.T) {
	n := lanNet(t)
	n.In("dev1", "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
	n.In("dev1", "ip", "addr", "flush", "dev", "eth0")
	cmd := exec.Command("ip", "netns", "exec", n.Name("dev1"), os.Args[0])
	cmd.Env = append(os.Environ(), "LAN_FOLLOW_DEVICE=cam1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = tlogWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("the announcing device: %v", err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Error("the announcing device did not stop")
		}
	})
	cam1 := testID("cam1")
	c := newClock(time.Now())
	// findAt waits until cam1 is found at exactly addr.
	findAt := func(addr string) {
		t.Helper()
		var got []Found
		for range 10 {
			got = find(t, n, c, cam1)
			if len(got) == 1 && slices.Equal(got[0].Addrs, want(cam1, 0, addr).Addrs) {
				return
			}
		}
		t.Fatalf("cam1 not found at %s alone: found %+v", addr, got)
	}
	if got := find(t, n, c, cam1); len(got) != 0 {
		t.Fatalf("found %+v on an interface with no address", got)
	}
	n.In("dev1", "ip", "addr", "add", "10.9.0.1/24", "dev", "eth0")
	findAt("10.9.0.1:4001")
	n.In("dev1", "ip", "addr", "del", "10.9.0.1/24", "dev", "eth0")
	n.In("dev1", "ip", "addr", "add", "10.9.0.7/24", "dev", "eth0")
	findAt("10.9.0.7:4001")
}
