package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
)

var (
	natsBuildOnce sync.Once
	natsBinPath   string
	natsBuildErr  error
)

// natsServerBinary returns the path of a stock nats-server, built from the
// module this one requires, beside the burrow binary (and removed with it).
func natsServerBinary(t *testing.T) string {
	t.Helper()
	dir := filepath.Dir(binary(t))
	natsBuildOnce.Do(func() {
		natsBinPath = filepath.Join(dir, "nats-server")
		out, err := exec.Command("go", "build", "-o", natsBinPath, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			natsBuildErr = fmt.Errorf("go build nats-server: %v\n%s", err, out)
		}
	})
	if natsBuildErr != nil {
		t.Fatal(natsBuildErr)
	}
	return natsBinPath
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// reNATSReady is nats-server's line once it serves.
var reNATSReady = regexp.MustCompile(`Server is ready`)

// startNATSServer runs nats-server with JetStream on addr, its store in
// dir, and waits until it is ready.
func startNATSServer(t *testing.T, addr, dir string) *proc {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	p := startCmd(t, "nats-server", exec.Command(natsServerBinary(t), "-js", "-sd", dir, "-a", host, "-p", port))
	p.waitFor(reNATSReady, 0, 10*time.Second)
	return p
}

// kill kills the process and waits for it.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// enrolledDevices runs "burrow relay devices" through the relay of
// dataDir and returns its devices, each as its ID and enrollment time.
func enrolledDevices(t *testing.T, dataDir string) []string {
	t.Helper()
	out := mustRun(t, "relay", "devices", "--data", dataDir)
	var devs []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		if f := strings.Fields(l); len(f) >= 3 {
			devs = append(devs, strings.Join(f[:3], " "))
		}
	}
	return devs
}

// TestBinaryFleetStockNATS: a stock "nats-server -js" process and three
// "burrow relay --nats" processes on loopback, in a fleet whose map lists
// the three (burrow fleet init, add); agents pin the fleet ID. A token
// made through relay A enrolls a device at relay C; a device removed
// through A is sent away from B; "burrow relay devices" agrees on all
// three. When the nats-server process is killed, the relays keep serving:
// an open tunnel through C streams on, the device that reconnects is
// admitted, and a token made through A is refused with NATS named as
// the cause, and so is a device that presents one. Once nats-server is
// back (same port, same store), without a restart of the relays: the
// refused device enrolls by itself, a token made through A enrolls a
// device at B, a device removed through C is sent away from A, the three
// agree again, and the tunnel still streams.
func TestBinaryFleetStockNATS(t *testing.T) {
	dir := t.TempDir()
	natsAddr, natsStore := freeAddr(t), filepath.Join(dir, "nats")
	natsURL := "nats://" + natsAddr
	ns := startNATSServer(t, natsAddr, natsStore)

	key := filepath.Join(dir, "fleet.key")
	fleetID := strings.TrimSpace(mustRun(t, "fleet", "init", "--key", key))
	names := []string{"A", "B", "C"}
	data, addrs := map[string]string{}, map[string]string{}
	relays := map[string]*proc{}
	for _, n := range names {
		data[n], addrs[n] = filepath.Join(dir, "relay"+n), freeAddr(t)
		id := strings.TrimSpace(mustRun(t, "relay", "id", "--data", data[n]))
		mustRun(t, "fleet", "add", "--key", key, "--nats", natsURL, "--relay-id", id, "--addr", addrs[n], "--region", "test")
	}
	for _, n := range names {
		relays[n] = start(t, "relay "+n, "relay", "--listen", addrs[n], "--data", data[n], "--nats", natsURL, "--no-udp")
		relays[n].waitFor(reRelayListening, 0, 10*time.Second)
	}
	if list := mustRun(t, "fleet", "list", "--nats", natsURL); strings.Count(list, "127.0.0.1:") != 3 {
		t.Fatalf("fleet list:\n%s", list)
	}

	echo := tunneltest.StartServer(t, tunneltest.Echo)
	clientKey := filepath.Join(dir, "client.key")
	clientID := strings.TrimSpace(mustRun(t, "id", "--identity", clientKey))
	// device writes the configuration of a device that attaches to relay
	// n with token, pinning the fleet ID, and returns its file and ID.
	device := func(name, n, token string) (cfg, id string) {
		cfg = filepath.Join(dir, name+".yaml")
		body := fmt.Sprintf("relay: %s\nrelay_id: %s\nidentity: %s.key\nstate: %s-state\nenroll_token: %s\nservices:\n  echo: %s\nclients:\n  %s: [echo]\ndirect: false\n",
			addrs[n], fleetID, name, name, token, echo.Addr, clientID)
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return cfg, strings.TrimSpace(mustRun(t, "id", "--identity", filepath.Join(dir, name+".key")))
	}
	token := func(n string) string {
		return strings.TrimSpace(mustRun(t, "relay", "token", "create", "--data", data[n]))
	}
	agree := func(want ...string) {
		t.Helper()
		slices.Sort(want)
		var first []string
		for _, n := range names {
			var devs []string
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				devs = enrolledDevices(t, data[n])
				if len(devs) == len(want) || time.Now().After(deadline) {
					break
				}
			}
			var ids []string
			for _, d := range devs {
				ids = append(ids, strings.Fields(d)[0])
			}
			slices.Sort(ids)
			if !slices.Equal(ids, want) {
				t.Fatalf("relay devices through %s: %q, want the IDs %q", n, devs, want)
			}
			if first == nil {
				first = devs
			} else if !slices.Equal(devs, first) {
				t.Fatalf("relay devices through %s: %q, through A: %q", n, devs, first)
			}
		}
	}

	// A token made through A enrolls a device at C.
	camCfg, camID := device("cam", "C", token("A"))
	cam := start(t, "cam", "device", "--config", camCfg)
	cam.waitFor(reAttached, 0, 10*time.Second)
	// A device enrolled at B, removed through A, is sent away from B.
	doomedCfg, doomedID := device("doomed", "B", token("A"))
	doomed := start(t, "doomed", "device", "--config", doomedCfg)
	_, at := doomed.waitFor(reAttached, 0, 10*time.Second)
	// A device enrolled at A, to reconnect while NATS is down.
	spareCfg, spareID := device("spare", "A", token("A"))
	spare := start(t, "spare", "device", "--config", spareCfg)
	spare.waitFor(reAttached, 0, 10*time.Second)
	agree(camID, doomedID, spareID)
	mustRun(t, "relay", "devices", "remove", doomedID, "--data", data["A"])
	doomed.waitFor(regexp.MustCompile(`relay attach failed.*is not enrolled on this relay`), at, 10*time.Second)
	doomed.stop()
	agree(camID, spareID)

	// A tunnel through C, pinning the fleet ID, streams across the outage.
	conn := start(t, "connect", "connect", camID, "echo", "--relay", addrs["C"], "--relay-id", fleetID,
		"--identity", clientKey, "--no-direct")
	m, _ := conn.waitFor(reListening, 0, 10*time.Second)
	stop, echoed := make(chan struct{}), make(chan time.Time, 1)
	streamEnd := echoStream(t, m[1], stop, echoed)
	flowing := func(when string) {
		t.Helper()
		select {
		case <-echoed:
		case <-time.After(2 * time.Second):
		}
		select {
		case <-echoed:
		case err := <-streamEnd:
			t.Fatalf("%s: the tunnel failed: %v", when, err)
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the tunnel stalled", when)
		}
	}
	flowing("before the outage")
	newToken := token("A")

	ns.kill()
	down := time.Now()
	flowing("nats-server killed")
	for _, n := range names {
		relays[n].waitFor(regexp.MustCompile(`lost the connection to NATS`), 0, 10*time.Second)
	}
	_, stderr, err := run(t, "relay", "token", "create", "--data", data["A"])
	if err == nil || !strings.Contains(stderr, "NATS is unreachable") {
		t.Fatalf("token through A while NATS is down: %v %q", err, stderr)
	}
	// A known device that reconnects is admitted.
	spare.stop()
	spare = start(t, "spare", "device", "--config", spareCfg)
	spare.waitFor(reAttached, 0, 10*time.Second)
	flowing("a known device reconnected while nats-server is down")
	agree(camID, spareID)
	// An unknown device, with a token made before, is refused and told
	// why; it keeps trying.
	newCfg, newID := device("newcomer", "B", newToken)
	newcomer := start(t, "newcomer", "device", "--config", newCfg)
	newcomer.waitFor(regexp.MustCompile(`relay attach failed.*is not enrolled on this relay.*NATS is unreachable`), 0, 10*time.Second)
	for time.Since(down) < 3*time.Second {
		flowing(fmt.Sprintf("%v into the outage", time.Since(down).Round(time.Second)))
	}

	startNATSServer(t, natsAddr, natsStore)
	back := time.Now()
	var tok string
	for deadline := time.Now().Add(10 * time.Second); tok == ""; time.Sleep(100 * time.Millisecond) {
		out, stderr, err := run(t, "relay", "token", "create", "--data", data["A"])
		if err == nil {
			tok = strings.TrimSpace(out)
		} else if time.Now().After(deadline) {
			t.Fatalf("token through A once nats-server is back: %v %s", err, stderr)
		}
	}
	t.Logf("relay A made tokens again %v after nats-server was back", time.Since(back).Round(time.Millisecond))
	lateCfg, lateID := device("late", "B", tok)
	late := start(t, "late", "device", "--config", lateCfg)
	late.waitFor(reAttached, 0, 10*time.Second)
	// The device refused while NATS was down enrolls by itself.
	newcomer.waitFor(reAttached, 0, 15*time.Second)
	t.Logf("the device refused while NATS was down enrolled %v after nats-server was back", time.Since(back).Round(time.Millisecond))
	agree(camID, spareID, newID, lateID)
	// Removals work again: one made through C sends the device away from A.
	_, at = spare.waitFor(reAttached, 0, time.Second)
	mustRun(t, "relay", "devices", "remove", spareID, "--data", data["C"])
	spare.waitFor(regexp.MustCompile(`relay attach failed.*is not enrolled on this relay`), at, 10*time.Second)
	agree(camID, newID, lateID)
	flowing("after nats-server was back")
	close(stop)
	if err := <-streamEnd; err != nil {
		t.Fatal(err)
	}
}
