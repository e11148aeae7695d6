package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
)

// These tests build the real burrow binary and run relay, device and
// connect as separate processes on loopback.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary returns the path of a burrow binary built for this test run.
func binary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the burrow binary")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "burrow-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "burrow")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	if addr := os.Getenv(floodHelperEnv); addr != "" {
		os.Exit(floodHelper(addr))
	}
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// proc is a running burrow process whose output lines are collected.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	done chan struct{}

	mu    sync.Mutex
	lines []string      // stdout and stderr, in arrival order
	added chan struct{} // closed and replaced when a line arrives
}

// start runs burrow with args; the process is killed when the test ends.
func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startCmd(t, name, exec.Command(binary(t), offLAN(args)...))
}

// offLAN adds --no-lan to the commands of args that would otherwise
// announce a device on, or look for devices on, the LAN: the test's
// network is not the test's to announce on or ask. Tests of the LAN run
// the agents in network namespaces of their own, without it.
func offLAN(args []string) []string {
	if len(args) == 0 {
		return args
	}
	switch args[0] {
	case "device":
		if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
			return args // a subcommand: invite, status...
		}
	case "connect", "ping", "pair":
	default:
		return args
	}
	return append(slices.Clip(args), "--no-lan")
}

// startCmd runs cmd (burrow, perhaps through a wrapper that execs it); the
// process is killed when the test ends.
func startCmd(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{t: t, name: name, cmd: cmd, done: make(chan struct{}), added: make(chan struct{})}
	stdout, _ := p.cmd.StdoutPipe()
	stderr, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, r := range []io.Reader{stdout, stderr} {
		wg.Go(func() {
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				p.mu.Lock()
				p.lines = append(p.lines, sc.Text())
				close(p.added)
				p.added = make(chan struct{})
				p.mu.Unlock()
			}
		})
	}
	go func() {
		wg.Wait()
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			p.mu.Lock()
			t.Logf("output of %s:\n%s", p.name, strings.Join(p.lines, "\n"))
			p.mu.Unlock()
		}
	})
	return p
}

// waitFor waits for a line matching re (from line index from on) and
// returns the submatches and the index after the line.
func (p *proc) waitFor(re *regexp.Regexp, from int, timeout time.Duration) ([]string, int) {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		for i := from; i < len(p.lines); i++ {
			if m := re.FindStringSubmatch(p.lines[i]); m != nil {
				p.mu.Unlock()
				return m, i + 1
			}
		}
		added := p.added
		p.mu.Unlock()
		select {
		case <-added:
		case <-p.done:
			p.mu.Lock()
			n := len(p.lines)
			p.mu.Unlock()
			if n == from {
				p.t.Fatalf("%s exited (%v) without printing %q", p.name, p.cmd.ProcessState, re)
			}
		case <-deadline:
			p.t.Fatalf("%s did not print %q within %v", p.name, re, timeout)
		}
	}
}

// lineCount returns how many lines the process has printed so far.
func (p *proc) lineCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.t.Fatalf("%s did not exit within 10s of SIGTERM", p.name)
	}
	if !p.cmd.ProcessState.Success() {
		p.t.Fatalf("%s exited with %v", p.name, p.cmd.ProcessState)
	}
}

// run runs burrow to completion and returns its stdout, stderr and error.
func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), offLAN(args)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

var (
	reRelayListening = regexp.MustCompile(`msg="relay listening" addr=(\S+) id=(\S+)`)
	reAttached       = regexp.MustCompile(`msg="attached to relay"`)
	reListening      = regexp.MustCompile(`^listening on (\S+)$`)
	reOffline        = regexp.MustCompile(`tunnel failed.*is offline`)
)

func get(t *testing.T, addr string) (string, error) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestBinaryEndToEnd(t *testing.T) {
	dir := t.TempDir()
	web := tunneltest.HTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "camera admin page")
	}))

	relayIDOut, _, err := run(t, "relay", "id", "--data", filepath.Join(dir, "relay"))
	if err != nil {
		t.Fatal(err)
	}
	relayID := strings.TrimSpace(relayIDOut)
	clientIDOut, _, err := run(t, "id", "--identity", filepath.Join(dir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	clientID := strings.TrimSpace(clientIDOut)
	if fi, err := os.Stat(filepath.Join(dir, "client.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("client key: %v, mode %v", err, fi.Mode())
	}
	deviceIDOut, _, err := run(t, "id", "--identity", filepath.Join(dir, "device.key"))
	if err != nil {
		t.Fatal(err)
	}
	deviceID := strings.TrimSpace(deviceIDOut)
	devices := filepath.Join(dir, "devices.txt")
	os.WriteFile(devices, []byte("# the camera\n"+deviceID+"\n"), 0o600)

	relay := start(t, "relay", "relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "relay"), "--devices", devices, "--drain", "1s")
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	relayAddr := m[1]
	if m[2] != relayID {
		t.Fatalf("relay logged ID %s, 'relay id' printed %s", m[2], relayID)
	}

	cfg := filepath.Join(dir, "device.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`relay: %s
relay_id: %s
identity: device.key
services:
  http: %s
clients:
  %s: [http]
direct_addrs: [127.0.0.1]
`, relayAddr, relayID, web, clientID)), 0o600)
	dev := start(t, "device", "device", "--config", cfg)
	_, devAt := dev.waitFor(reAttached, 0, 10*time.Second)

	// (Without loopback candidates of its own, a client with direct
	// paths on would offer this machine's other addresses.)
	conn := start(t, "connect", "connect", deviceID, "http", "--relay", relayAddr, "--relay-id", relayID,
		"--identity", filepath.Join(dir, "client.key"), "--no-direct")
	m, connAt := conn.waitFor(reListening, 0, 10*time.Second)
	local := m[1]
	body, err := get(t, local)
	if err != nil || body != "camera admin page" {
		t.Fatalf("through the tunnel: %q, %v", body, err)
	}

	// The relay listened on UDP, on its TCP port's number.
	relay.waitFor(regexp.MustCompile(`msg="relay listening" .* udp=`+regexp.QuoteMeta(relayAddr)+`$`), 0, time.Second)

	// Relay restart: stop the relay process (it drains for up to its
	// --drain of 1s) and start it again on the same port (without UDP this
	// time); the device reattaches by itself and tunnels work within 10s.
	relay.stop()
	relay = start(t, "relay", "relay", "--listen", relayAddr, "--data", filepath.Join(dir, "relay"), "--devices", devices, "--no-udp")
	relay.waitFor(regexp.MustCompile(`msg="relay listening" .* udp=off$`), 0, 10*time.Second)
	restarted := time.Now()
	dev.waitFor(reAttached, devAt, 10*time.Second)
	for {
		body, err = get(t, local)
		if err == nil && body == "camera admin page" {
			break
		}
		if time.Since(restarted) > 10*time.Second {
			t.Fatalf("no tunnel 10s after the relay restarted: %q, %v", body, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("tunnel worked again %v after the relay restarted", time.Since(restarted).Round(time.Millisecond))

	// The device dies without a word: the next connection fails fast and
	// connect says the device is offline.
	dev.cmd.Process.Kill()
	<-dev.done
	time.Sleep(200 * time.Millisecond) // let the relay notice the dead connection
	asked := time.Now()
	if _, err := get(t, local); err == nil {
		t.Fatal("a tunnel worked with the device killed")
	}
	conn.waitFor(reOffline, connAt, 2*time.Second)
	t.Logf("offline reported %v after the connection", time.Since(asked).Round(time.Millisecond))

	conn.stop()
	relay.stop()
}

// TestBinaryRelayKilled: the relay process is killed (SIGKILL) while a
// device and a client are attached and a tunnel is in use: both notice at
// once, keep trying, and once a new relay process serves the same port
// and identity they are back (the device within its reattach spread) and
// tunnels work again.
func TestBinaryRelayKilled(t *testing.T) {
	dir := t.TempDir()
	web := tunneltest.HTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "camera admin page")
	}))
	ids := make(map[string]string)
	for _, name := range []string{"client", "device"} {
		out, _, err := run(t, "id", "--identity", filepath.Join(dir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = strings.TrimSpace(out)
	}
	relayArgs := []string{"relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "relay"), "--open", "--no-udp"}
	relay := start(t, "relay", relayArgs...)
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	relayAddr, relayID := m[1], m[2]
	const spread = 3 * time.Second
	cfg := filepath.Join(dir, "device.yaml")
	os.WriteFile(cfg, fmt.Appendf(nil, "relay: %s\nrelay_id: %s\nidentity: device.key\nservices:\n  http: %s\n"+
		"clients:\n  %s: [http]\ndirect: false\nreattach_spread: %v\n", relayAddr, relayID, web, ids["client"], spread), 0o600)
	dev := start(t, "device", "device", "--config", cfg)
	_, devAt := dev.waitFor(reAttached, 0, 10*time.Second)
	conn := start(t, "connect", "connect", ids["device"], "http", "--relay", relayAddr, "--relay-id", relayID,
		"--identity", filepath.Join(dir, "client.key"), "--no-direct")
	m, _ = conn.waitFor(reListening, 0, 10*time.Second)
	local := m[1]
	if body, err := get(t, local); err != nil || body != "camera admin page" {
		t.Fatalf("through the tunnel: %q, %v", body, err)
	}
	// (stdout and stderr are read apart: the log line may come first.)
	_, connAt := conn.waitFor(reAttached, 0, 10*time.Second)

	relay.cmd.Process.Kill()
	<-relay.done
	killed := time.Now()
	reDetached := regexp.MustCompile(`msg="detached from relay"`)
	_, devAt = dev.waitFor(reDetached, devAt, 5*time.Second)
	_, connAt = conn.waitFor(reDetached, connAt, 5*time.Second)
	t.Logf("both agents noticed within %v", time.Since(killed).Round(time.Millisecond))
	// Down for longer than the spread: they keep trying.
	time.Sleep(spread + time.Second)
	dev.waitFor(regexp.MustCompile(`msg="relay attach failed"`), devAt, time.Second)

	relayArgs[2] = relayAddr
	relay = start(t, "relay", relayArgs...)
	relay.waitFor(reRelayListening, 0, 10*time.Second)
	back := time.Now()
	// A capped wait at most (the spread, or the backoff's 8s cap).
	dev.waitFor(reAttached, devAt, 8*time.Second+2*time.Second)
	t.Logf("device back %v after the relay", time.Since(back).Round(time.Millisecond))
	for {
		body, err := get(t, local)
		if err == nil && body == "camera admin page" {
			break
		}
		if time.Since(back) > 15*time.Second {
			t.Fatalf("no tunnel 15s after the relay came back: %q, %v", body, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("tunnel worked again %v after the relay came back", time.Since(back).Round(time.Millisecond))
	conn.stop()
	dev.stop()
}

func TestBinaryDeviceConfigErrors(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "device.yaml")
	os.WriteFile(cfg, []byte("relay: r:443\nservics:\n  http: 127.0.0.1:80\n"), 0o600)
	_, stderr, err := run(t, "device", "--config", cfg)
	if err == nil || !strings.Contains(stderr, `line 2: unknown key "servics"`) {
		t.Fatalf("err %v, stderr %q", err, stderr)
	}
	_, stderr, err = run(t, "device")
	if err == nil || !strings.Contains(stderr, "--config is required") {
		t.Fatalf("err %v, stderr %q", err, stderr)
	}
}

// TestBinaryRefusesUnsafeConfigs: configurations that would leave an agent
// or a relay less protected than its owner meant (an unpinned relay, a
// device no one may reach, a key file others can read or another user
// owns, a state directory, relay data directory or client home others may
// write, profiles on the network, contradicting admission flags) stop the
// command at start with a message that names the problem and its fix.
func TestBinaryRefusesUnsafeConfigs(t *testing.T) {
	dir := t.TempDir()
	relayID := tunneltest.NewIdentity(t).ID().String()
	deviceID := tunneltest.NewIdentity(t).ID().String()
	clientID := tunneltest.NewIdentity(t).ID().String()
	file := func(name, body string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	services := "services:\n  http: 127.0.0.1:80\n"
	exposedKey := filepath.Join(dir, "exposed.key")
	if err := tunneltest.NewIdentity(t).Save(exposedKey); err != nil {
		t.Fatal(err)
	}
	os.Chmod(exposedKey, 0o644)
	// Directories others may write, and (as root) files of another user.
	shared := func(name string) string {
		path := filepath.Join(dir, name)
		if err := os.Mkdir(path, 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, 0o777)
		return path
	}
	sharedState, sharedData, sharedHome := shared("shared-state"), shared("shared-data"), shared("shared-home")
	root := os.Geteuid() == 0
	theirKey := filepath.Join(dir, "theirs.key")
	if err := tunneltest.NewIdentity(t).Save(theirKey); err != nil {
		t.Fatal(err)
	}
	theirState := shared("their-state")
	if root {
		os.Chown(theirKey, 65534, -1)
		os.Chown(theirState, 65534, -1)
	}
	deviceCfg := func(name, extra string) string {
		return file(name, "relay: 127.0.0.1:1\nrelay_id: "+relayID+"\n"+extra+services+"clients:\n  "+clientID+": [http]\n", 0o600)
	}
	tests := []struct {
		name string
		root bool   // needs root (to give files to another user)
		env  string // NAME=value, or empty
		args []string
		want string
	}{
		{"device key of another user", true, "", []string{"device", "--config", deviceCfg("their-key.yaml", "identity: "+theirKey+"\n")},
			"is owned by user nobody (uid 65534), who could change it, not by user root (uid 0), whom this agent runs as: run the command as its owner (runuser -u nobody -- burrow …)"},
		{"device state directory others may write", false, "", []string{"device", "--config", deviceCfg("shared-state.yaml", "identity: d.key\nstate: "+sharedState+"\n")},
			"state directory " + sharedState + " is writable by users other than its owner (mode 0777), who could change what it holds: run chmod go-w " + sharedState},
		{"device state directory of another user, writable by all", true, "", []string{"device", "--config", deviceCfg("their-state.yaml", "identity: d.key\nstate: "+theirState+"\n")},
			"state directory " + theirState + " is owned by user nobody (uid 65534)"},
		{"relay data directory others may write", false, "", []string{"relay", "--listen", "127.0.0.1:0", "--data", sharedData, "--open"},
			"directory " + sharedData + " is writable by users other than its owner (mode 0777), who could change what it holds: run chmod go-w " + sharedData},
		{"relay token made in a data directory others may write", false, "", []string{"relay", "token", "create", "--data", sharedData},
			"data directory " + sharedData + " is writable by users other than its owner (mode 0777)"},
		{"client home others may write", false, "", []string{"connect", deviceID, "http", "--relay", "127.0.0.1:1", "--relay-id", relayID, "--home", sharedHome},
			"client home " + sharedHome + " is writable by users other than its owner (mode 0777)"},
		{"device without relay_id", false, "", []string{"device", "--config", file("no-pin.yaml",
			"relay: 127.0.0.1:1\nidentity: d.key\n"+services+"clients:\n  "+clientID+": [http]\n", 0o600)},
			"relay_id is missing: pin the relay with its ID"},
		{"device no one may reach", false, "", []string{"device", "--config", file("closed.yaml",
			"relay: 127.0.0.1:1\nrelay_id: "+relayID+"\nidentity: d.key\n"+services+"clients: {}\n", 0o600)},
			"clients and roles are both empty: no one could ever reach this device"},
		{"device key readable by others", false, "", []string{"device", "--config", file("exposed.yaml",
			"relay: 127.0.0.1:1\nrelay_id: "+relayID+"\nidentity: "+exposedKey+"\n"+services+"clients:\n  "+clientID+": [http]\n", 0o600)},
			"other users may read or change this key (mode 0644): run chmod 600 " + exposedKey},
		{"connect without --relay-id", false, "", []string{"connect", deviceID, "http", "--relay", "127.0.0.1:1"},
			"--relay-id is missing: pin the relay with its ID"},
		{"ping without --relay-id", false, "", []string{"ping", deviceID, "--relay", "127.0.0.1:1"},
			"--relay-id is missing"},
		{"connect with a key readable by others", false, "", []string{"connect", deviceID, "http", "--relay", "127.0.0.1:1",
			"--relay-id", relayID, "--identity", exposedKey}, "run chmod 600 " + exposedKey},
		{"relay open and listed", false, "", []string{"relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "r1"),
			"--open", "--devices", file("devices.txt", deviceID+"\n", 0o600)}, "--open and --devices exclude each other"},
		{"relay device list missing", false, "", []string{"relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "r2"),
			"--devices", filepath.Join(dir, "missing.txt")}, "missing.txt: no such file"},
		{"relay UDP path on and off", false, "", []string{"relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "r7"),
			"--open", "--udp-relay", "--no-udp-relay"}, "--udp-relay and --no-udp-relay contradict each other"},
		{"relay certificate without key", false, "", []string{"relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "r3"),
			"--tls-cert", filepath.Join(dir, "cert.pem")}, "--tls-cert and --tls-key go together"},
		{"profiles on the network", false, "BURROW_PPROF=0.0.0.0:0", []string{"relay", "--listen", "127.0.0.1:0",
			"--data", filepath.Join(dir, "r4"), "--open"}, "want a loopback host:port"},
		{"token that never expires", false, "", []string{"relay", "token", "create", "--data", filepath.Join(dir, "r5"), "--ttl", "0"},
			"--ttl 0s: want a duration of more than 0"},
		{"token expired before it is made", false, "", []string{"relay", "token", "create", "--data", filepath.Join(dir, "r5"), "--ttl", "-1h"},
			"--ttl -1h0m0s: want a duration of more than 0"},
		{"invite that never expires", false, "", []string{"device", "invite", "--config", filepath.Join(dir, "none.yaml"), "--ttl", "0"},
			"--ttl 0s: want a duration of more than 0 and at most 168h0m0s"},
		{"invite expired before it is made", false, "", []string{"device", "invite", "--config", filepath.Join(dir, "none.yaml"), "--ttl", "-1m"},
			"--ttl -1m0s: want a duration of more than 0"},
		{"invite past a week", false, "", []string{"device", "invite", "--config", filepath.Join(dir, "none.yaml"), "--ttl", "169h"},
			"--ttl 169h0m0s: want a duration of more than 0 and at most 168h0m0s"},
		{"relay giving clients every file", false, "", []string{"relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "r6"),
			"--open", "--max-clients", "100000000"}, "would leave devices less than half of the"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && !root {
				t.Skip("needs root, to give files to another user")
			}
			if name, value, ok := strings.Cut(tc.env, "="); ok {
				t.Setenv(name, value)
			}
			_, stderr, err := run(t, tc.args...)
			if err == nil {
				t.Fatalf("started (or exited cleanly) with stderr %q", stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr %q, want it to contain %q", stderr, tc.want)
			}
		})
	}
}

func TestBinaryHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"--help"}, {"connect", "--help"}, {"relay", "--help"}, {"device", "--help"}, {"id", "--help"}, {"demo", "--help"}, {"fleet", "--help"}, {"fleet", "add", "--help"}} {
		out, _, err := run(t, args...)
		if err != nil || !strings.Contains(out, "Usage:") {
			t.Fatalf("burrow %v: err %v, output %q", args, err, out)
		}
	}
	out, _, _ := run(t, "connect", "--help")
	for _, flag := range []string{"--relay", "--relay-id", "--listen", "--identity"} {
		if !strings.Contains(out, flag) {
			t.Fatalf("connect --help does not mention %s", flag)
		}
	}
	_, stderr, err := run(t, "connect", "onlyone")
	if err == nil || !strings.Contains(stderr, "want DEVICE and SERVICE") {
		t.Fatalf("connect with one argument: err %v, stderr %q", err, stderr)
	}
}

func TestBinaryDemo(t *testing.T) {
	demo := start(t, "demo", "demo")
	m, _ := demo.waitFor(regexp.MustCompile(`Open (http://\S+/)`), 0, 15*time.Second)
	addr := strings.TrimSuffix(strings.TrimPrefix(m[1], "http://"), "/")
	body, err := get(t, addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"came through a burrow tunnel", "relay", "device agent"} {
		if !strings.Contains(body, want) {
			t.Fatalf("demo page does not say %q:\n%s", want, body)
		}
	}
	// The page names the path: relayed at first, direct on loopback soon.
	if !strings.Contains(body, "relayed") && !strings.Contains(body, "direct 127.0.0.1:") {
		t.Fatalf("demo page names no path:\n%s", body)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(body, "direct 127.0.0.1:"); {
		if time.Now().After(deadline) {
			t.Fatalf("the demo's session did not go direct:\n%s", body)
		}
		time.Sleep(200 * time.Millisecond)
		if body, err = get(t, addr); err != nil {
			t.Fatal(err)
		}
	}
	demo.cmd.Process.Signal(os.Interrupt)
	select {
	case <-demo.done:
	case <-time.After(10 * time.Second):
		t.Fatal("demo did not stop within 10s of Ctrl-C")
	}
	if !demo.cmd.ProcessState.Success() {
		t.Fatalf("demo exited with %v", demo.cmd.ProcessState)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("the demo's port still accepts after it stopped")
	}
}

// TestBinaryPairing runs enrollment, invites, pairing, connect by name,
// several forwards, users, status and revocation with the real binary.
func TestBinaryPairing(t *testing.T) {
	dir := t.TempDir()
	relayData := filepath.Join(dir, "relay")
	home := filepath.Join(dir, "home")
	web := tunneltest.HTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "camera admin page")
	}))
	rtsp := tunneltest.HTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "camera stream")
	}))

	// An enrollment token made before the relay runs (on its store, which
	// relay id makes), one while it runs (through its admin socket).
	relayIDOut, _, _ := run(t, "relay", "id", "--data", relayData)
	relayID := strings.TrimSpace(relayIDOut)
	tokenOut, _, err := run(t, "relay", "token", "create", "--data", relayData, "--uses", "1")
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(tokenOut)
	relay := start(t, "relay", "relay", "--listen", "127.0.0.1:0", "--data", relayData)
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	relayAddr := m[1]
	if out, stderr, err := run(t, "relay", "token", "create", "--data", relayData); err != nil || !strings.HasPrefix(out, "enroll-") {
		t.Fatalf("token while running: %q %q %v", out, stderr, err)
	}

	writeCfg := func(name, token string) string {
		cfg := filepath.Join(dir, name+".yaml")
		body := fmt.Sprintf("name: %s\nrelay: %s\nrelay_id: %s\nidentity: %s.key\nstate: %s-state\nservices:\n  http: %s\n  rtsp: %s\nroles:\n  viewer: [http, rtsp]\ndirect_addrs: [127.0.0.1]\n",
			name, relayAddr, relayID, name, name, web, rtsp)
		if token != "" {
			body += "enroll_token: " + token + "\n"
		}
		os.WriteFile(cfg, []byte(body), 0o600)
		return cfg
	}
	cfg := writeCfg("cam", token)
	dev := start(t, "device", "device", "--config", cfg)
	dev.waitFor(regexp.MustCompile(`msg="attached to relay"`), 0, 10*time.Second)
	devID, _, _ := run(t, "id", "--identity", filepath.Join(dir, "cam.key"))
	devID = strings.TrimSpace(devID)

	// The token had one use; a device without a token is not enrolled.
	other := start(t, "other device", "device", "--config", writeCfg("other", token))
	other.waitFor(regexp.MustCompile(`relay attach failed.*used up`), 0, 10*time.Second)
	none := start(t, "device without token", "device", "--config", writeCfg("none", ""))
	none.waitFor(regexp.MustCompile(`relay attach failed.*not enrolled on this relay.*burrow relay token create`), 0, 10*time.Second)
	devs, _, err := run(t, "relay", "devices", "--data", relayData)
	if err != nil || !strings.Contains(devs, devID) || !strings.Contains(devs, "yes") || strings.Count(devs, "\n") != 2 {
		t.Fatalf("relay devices: %q %v", devs, err)
	}

	// Invite (not on a terminal: the invite alone on one line), pair,
	// connect by name.
	invite, stderr, err := run(t, "device", "invite", "--config", cfg, "--role", "viewer", "--name", "alice")
	if err != nil || strings.Count(invite, "\n") != 1 || !strings.HasPrefix(invite, "burrow://pair?") {
		t.Fatalf("invite: %q %q %v", invite, stderr, err)
	}
	invite = strings.TrimSpace(invite)
	_, out, stderr, err := runPair(t, invite+"\n", "--name", "cam1", "--home", home)
	if err != nil || !strings.Contains(out, "paired with cam1") {
		t.Fatalf("pair: %q %q %v", out, stderr, err)
	}
	if _, _, stderr, err := runPair(t, invite+"\n", "--name", "again", "--home", home); err == nil || !strings.Contains(stderr, "already used") {
		t.Fatalf("second pair with the same invite: %q %v", stderr, err)
	}
	// Paired again, through an invite that names no one: the client keeps
	// its name and role, and is told so.
	again, _, err := run(t, "device", "invite", "--config", cfg, "--role", "viewer")
	if err != nil {
		t.Fatal(err)
	}
	_, out, stderr, err = runPair(t, again, "--name", "cam1", "--home", home)
	if err != nil || !strings.Contains(out, "\nnote: you were paired with this device already, as viewer: nothing changed\n") {
		t.Fatalf("pair again: %q %q %v", out, stderr, err)
	}
	out, _, err = run(t, "devices", "--home", home)
	if err != nil || !strings.Contains(out, "cam1") || !strings.Contains(out, devID) {
		t.Fatalf("devices: %q %v", out, err)
	}
	conn := start(t, "connect", "connect", "cam1", "http", "--home", home, "--no-direct")
	m, connAt := conn.waitFor(reListening, 0, 10*time.Second)
	if body, err := get(t, m[1]); err != nil || body != "camera admin page" {
		t.Fatalf("through the tunnel: %q, %v", body, err)
	}

	// Several forwards from one process.
	fwd := filepath.Join(dir, "forwards.yaml")
	os.WriteFile(fwd, []byte("forwards:\n  cam1/http: 127.0.0.1:0\n  cam1/rtsp: 127.0.0.1:0\ndirect_addrs: [127.0.0.1]\n"), 0o600)
	multi := start(t, "connect --config", "connect", "--config", fwd, "--home", home)
	mh, _ := multi.waitFor(regexp.MustCompile(`^listening on (\S+) for cam1/http$`), 0, 10*time.Second)
	mr, _ := multi.waitFor(regexp.MustCompile(`^listening on (\S+) for cam1/rtsp$`), 0, 10*time.Second)
	if body, err := get(t, mh[1]); err != nil || body != "camera admin page" {
		t.Fatalf("forward cam1/http: %q %v", body, err)
	}
	if body, err := get(t, mr[1]); err != nil || body != "camera stream" {
		t.Fatalf("forward cam1/rtsp: %q %v", body, err)
	}
	// This client offers loopback candidates: its session goes direct,
	// and both ends say so.
	multi.waitFor(regexp.MustCompile(`msg="session path" .*path="direct 127\.0\.0\.1:\d+" rtt=`), 0, 10*time.Second)
	out, _, err = run(t, "device", "status", "--config", cfg)
	if err != nil || !regexp.MustCompile(`(?m)^\S+\s+alice\s+.*direct 127\.0\.0\.1:\d+\s+\S+s\s+\d+\s+\d+$`).MatchString(out) {
		t.Fatalf("status with a direct session: %q %v", out, err)
	}
	multi.stop()

	// Ping through a session kept on the relay's TCP session, then one
	// that may take the relay's UDP port.
	out, stderr, err = run(t, "ping", "cam1", "--home", home, "--no-direct", "--no-relay-udp", "--count", "2", "--interval", "100ms")
	if err != nil || !regexp.MustCompile(`(?m)^seq=2 rtt=\d+\.\d{3}ms path=relay$`).MatchString(out) || !strings.Contains(out, "2 sent, 2 answered") {
		t.Fatalf("ping: %q %q %v", out, stderr, err)
	}
	out, stderr, err = run(t, "ping", "cam1", "--home", home, "--no-direct", "--count", "6", "--interval", "500ms")
	if err != nil || !regexp.MustCompile(`(?m)^seq=\d rtt=\d+\.\d{3}ms path=relay udp$`).MatchString(out) {
		t.Fatalf("ping with the UDP relay path on: %q %q %v; want it to say relay udp", out, stderr, err)
	}

	out, _, err = run(t, "device", "users", "--config", cfg)
	if err != nil || !strings.Contains(out, "alice") || !strings.Contains(out, "viewer") {
		t.Fatalf("users: %q %v", out, err)
	}
	out, _, err = run(t, "device", "status", "--config", cfg)
	if err != nil || !strings.Contains(out, "attached since") || !strings.Contains(out, "sessions: 1") {
		t.Fatalf("status: %q %v", out, err)
	}

	// Revocation: the next connection is refused.
	out, _, err = run(t, "device", "revoke", "alice", "--config", cfg)
	if err != nil || !strings.Contains(out, "revoked alice") {
		t.Fatalf("revoke: %q %v", out, err)
	}
	if _, err := get(t, m[1]); err == nil {
		t.Fatal("a tunnel worked after the revocation")
	}
	conn.waitFor(regexp.MustCompile(`not authorized`), connAt, 5*time.Second)

	// Un-enrolled, the device is disconnected and not let back in.
	if out, stderr, err := run(t, "relay", "devices", "remove", devID, "--data", relayData); err != nil {
		t.Fatalf("remove: %q %q %v", out, stderr, err)
	}
	dev.waitFor(regexp.MustCompile(`relay attach failed.*not enrolled`), 0, 15*time.Second)

	// With the agent stopped, its admin commands say so.
	dev.stop()
	if _, stderr, err := run(t, "device", "users", "--config", cfg); err == nil || !strings.Contains(stderr, "not running") {
		t.Fatalf("users with the agent stopped: %q %v", stderr, err)
	}
}

// TestBinaryEnrollToken: a device whose configuration holds an enrollment
// token that other users may read is warned about it at start; once the
// relay has enrolled it, it says the token can be deleted, and stops
// sending it: removed by the relay's operator, it is not enrolled again,
// though its token has uses left.
func TestBinaryEnrollToken(t *testing.T) {
	dir := t.TempDir()
	relayData := filepath.Join(dir, "relay")
	mustRun(t, "relay", "id", "--data", relayData) // makes the data directory
	tokenOut, _, err := run(t, "relay", "token", "create", "--data", relayData, "--uses", "5")
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(tokenOut)
	relay := start(t, "relay", "relay", "--listen", "127.0.0.1:0", "--data", relayData)
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	relayAddr, relayID := m[1], m[2]
	cfg := filepath.Join(dir, "device.yaml")
	body := fmt.Sprintf("relay: %s\nrelay_id: %s\nidentity: device.key\nenroll_token: %s\nservices:\n  http: 127.0.0.1:1\nclients:\n  %s: [http]\ndirect: false\n",
		relayAddr, relayID, token, tunneltest.NewIdentity(t).ID())
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(cfg, 0o644)
	dev := start(t, "device", "device", "--config", cfg)
	dev.waitFor(regexp.MustCompile(`level=WARN msg="other users may read the enrollment token in `+regexp.QuoteMeta(cfg)+
		`: run chmod 600 `+regexp.QuoteMeta(cfg)+`, and once the device is enrolled delete enroll_token from it".* mode=0644`), 0, 10*time.Second)
	_, at := dev.waitFor(reAttached, 0, 10*time.Second)
	dev.waitFor(regexp.MustCompile(`msg="admitted by the relay \(enrolled, or listed there\): enroll_token is no longer needed \(it is not sent again\); delete it from `+regexp.QuoteMeta(cfg)+`"`), 0, 5*time.Second)
	devID, _, _ := run(t, "id", "--identity", filepath.Join(dir, "device.key"))

	if out, stderr, err := run(t, "relay", "devices", "remove", strings.TrimSpace(devID), "--data", relayData); err != nil {
		t.Fatalf("remove: %q %q %v", out, stderr, err)
	}
	dev.waitFor(regexp.MustCompile(`relay attach failed.*is not enrolled on this relay: give it an enrollment token`), at, 15*time.Second)
	time.Sleep(2 * time.Second) // more attempts
	relay.mu.Lock()
	defer relay.mu.Unlock()
	enrolled := 0
	for _, l := range relay.lines {
		if strings.Contains(l, `msg="device enrolled"`) {
			enrolled++
		}
	}
	if enrolled != 1 {
		t.Fatalf("the relay enrolled the device %d times, want once: the removal did not stick", enrolled)
	}
}

// TestBinaryHome: client commands keep their files under --home, else
// $BURROW_HOME.
func TestBinaryHome(t *testing.T) {
	envHome, flagHome := filepath.Join(t.TempDir(), "env"), filepath.Join(t.TempDir(), "flag")
	cmd := exec.Command(binary(t), "id")
	cmd.Env = append(os.Environ(), "BURROW_HOME="+envHome)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(envHome, "identity.key")); err != nil {
		t.Fatalf("BURROW_HOME: %v", err)
	}
	cmd = exec.Command(binary(t), "id", "--home", flagHome)
	cmd.Env = append(os.Environ(), "BURROW_HOME="+envHome)
	out2, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(flagHome, "identity.key")); err != nil || string(out) == string(out2) {
		t.Fatalf("--home does not win over BURROW_HOME: %v", err)
	}
	if _, stderr, err := run(t, "connect", "nope", "http", "--home", flagHome); err == nil || !strings.Contains(stderr, "unknown device") {
		t.Fatalf("connect to an unknown name: %q %v", stderr, err)
	}
}

// echoTunnel runs a relay (with extra flags), a device serving an echo
// service to one client, and that client's connect, and returns them with
// the address connect listens on.
func echoTunnel(t *testing.T, relayFlags ...string) (relay, dev, conn *proc, relayAddr, local string) {
	t.Helper()
	dir := t.TempDir()
	echo := tunneltest.StartServer(t, tunneltest.Echo)
	id := func(name string) string {
		out, _, err := run(t, "id", "--identity", filepath.Join(dir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	clientID, deviceID := id("client"), id("device")
	devices := filepath.Join(dir, "devices.txt")
	os.WriteFile(devices, []byte(deviceID+"\n"), 0o600)
	relay = start(t, "relay", append([]string{"relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "relay"),
		"--devices", devices, "--no-udp"}, relayFlags...)...)
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	relayAddr, relayID := m[1], m[2]
	cfg := filepath.Join(dir, "device.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("relay: %s\nrelay_id: %s\nidentity: device.key\nservices:\n  echo: %s\nclients:\n  %s: [echo]\ndirect_addrs: [127.0.0.1]\n",
		relayAddr, relayID, echo.Addr, clientID)), 0o600)
	dev = start(t, "device", "device", "--config", cfg)
	dev.waitFor(reAttached, 0, 10*time.Second)
	conn = start(t, "connect", "connect", deviceID, "echo", "--relay", relayAddr, "--relay-id", relayID,
		"--identity", filepath.Join(dir, "client.key"), "--no-direct")
	m, _ = conn.waitFor(reListening, 0, 10*time.Second)
	return relay, dev, conn, relayAddr, m[1]
}

// echoStream sends a line through the tunnel at local every few
// milliseconds and reads it back, until stop is closed or a line fails. It
// reports each echoed line's time on echoed, and its end on the returned
// channel: nil if stopped, else the error.
func echoStream(t *testing.T, local string, stop <-chan struct{}, echoed chan<- time.Time) <-chan error {
	t.Helper()
	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	end := make(chan error, 1)
	go func() {
		br := bufio.NewReader(c)
		for i := 0; ; i++ {
			select {
			case <-stop:
				end <- nil
				return
			default:
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line := fmt.Sprintf("line %d\n", i)
			if _, err := io.WriteString(c, line); err != nil {
				end <- err
				return
			}
			got, err := br.ReadString('\n')
			if err != nil || got != line {
				end <- fmt.Errorf("line %d: echoed %q, %v", i, got, err)
				return
			}
			select {
			case echoed <- time.Now():
			default:
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return end
}

// TestBinaryRelayDrain: on SIGTERM the relay drains. A tunnel streaming
// through it goes on, the agents are told, no new connection reaches the
// relay, and the relay exits when its drain period (--drain) is over.
func TestBinaryRelayDrain(t *testing.T) {
	const drain = 3 * time.Second
	relay, dev, conn, relayAddr, local := echoTunnel(t, "--drain", drain.String())
	stop := make(chan struct{})
	echoed := make(chan time.Time, 1)
	end := echoStream(t, local, stop, echoed)
	<-echoed

	relay.cmd.Process.Signal(syscall.SIGTERM)
	signalled := time.Now()
	relay.waitFor(regexp.MustCompile(`msg="relay stopping: draining.*" sessions=2 up_to=`+drain.String()), 0, 10*time.Second)
	dev.waitFor(regexp.MustCompile(`msg="relay is draining`), 0, 10*time.Second)
	conn.waitFor(regexp.MustCompile(`msg="relay is draining`), 0, 10*time.Second)
	if c, err := net.DialTimeout("tcp", relayAddr, time.Second); err == nil {
		c.Close()
		t.Fatal("the draining relay accepted a TCP connection")
	}
	// The stream goes on until late in the drain period.
	for last := signalled; last.Sub(signalled) < drain-time.Second; {
		select {
		case last = <-echoed:
		case err := <-end:
			t.Fatalf("the tunnel failed %v after SIGTERM, during a drain of %v: %v", time.Since(signalled), drain, err)
		case <-relay.done:
			t.Fatalf("the relay exited %v after SIGTERM, with a tunnel busy, before its drain of %v", time.Since(signalled), drain)
		case <-time.After(10 * time.Second):
			t.Fatal("the tunnel stalled during the drain")
		}
	}
	select {
	case <-relay.done:
	case <-time.After(drain + 10*time.Second):
		t.Fatalf("the relay did not exit within %v of its drain period", 10*time.Second)
	}
	t.Logf("relay exited %v after SIGTERM (--drain %v)", time.Since(signalled).Round(time.Millisecond), drain)
	if !relay.cmd.ProcessState.Success() {
		t.Fatalf("relay exited with %v", relay.cmd.ProcessState)
	}
	relay.waitFor(regexp.MustCompile(`msg="relay stopped: drain period over"`), 0, time.Second)
	dev.waitFor(regexp.MustCompile(`msg="detached from draining relay"`), 0, 10*time.Second)
	close(stop)
	conn.stop()
	dev.stop()
}

// TestBinaryRelaySecondSignal: a second SIGTERM during the drain makes the
// relay exit at once.
func TestBinaryRelaySecondSignal(t *testing.T) {
	const drain = time.Minute
	relay, dev, conn, _, local := echoTunnel(t, "--drain", drain.String())
	stop := make(chan struct{})
	echoed := make(chan time.Time, 1)
	echoStream(t, local, stop, echoed)
	<-echoed

	relay.cmd.Process.Signal(syscall.SIGTERM)
	relay.waitFor(regexp.MustCompile(`msg="relay stopping: draining`), 0, 10*time.Second)
	dev.waitFor(regexp.MustCompile(`msg="relay is draining`), 0, 10*time.Second)
	relay.cmd.Process.Signal(syscall.SIGTERM)
	second := time.Now()
	select {
	case <-relay.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("the relay did not exit within 10s of a second SIGTERM (--drain %v)", drain)
	}
	t.Logf("relay exited %v after the second SIGTERM", time.Since(second).Round(time.Millisecond))
	if !relay.cmd.ProcessState.Success() {
		t.Fatalf("relay exited with %v", relay.cmd.ProcessState)
	}
	relay.waitFor(regexp.MustCompile(`msg="relay stopped at once \(second signal\)"`), 0, time.Second)
	close(stop)
	conn.stop()
	dev.stop()
}

// TestBinaryRelayDrainIdle: --drain-idle ends a drain early once its
// tunnels are idle; --drain-idle 0 keeps an idle tunnel's relay up to
// --drain.
func TestBinaryRelayDrainIdle(t *testing.T) {
	for _, tc := range []struct {
		idle, drain time.Duration
		early       bool
	}{
		{idle: time.Second, drain: time.Minute, early: true},
		{idle: 0, drain: 7 * time.Second},
	} {
		t.Run("drain-idle="+tc.idle.String(), func(t *testing.T) {
			t.Parallel()
			relay, dev, conn, _, local := echoTunnel(t, "--drain", tc.drain.String(), "--drain-idle", tc.idle.String())
			c, err := net.Dial("tcp", local)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			relay.cmd.Process.Signal(syscall.SIGTERM)
			signalled := time.Now()
			relay.waitFor(regexp.MustCompile(`msg="relay stopping: draining`), 0, 10*time.Second)
			select {
			case <-relay.done:
			case <-time.After(tc.drain + 10*time.Second):
				t.Fatalf("the relay did not exit within 10s of its drain period")
			}
			after := time.Since(signalled)
			t.Logf("relay exited %v after SIGTERM", after.Round(time.Millisecond))
			if tc.early {
				if after > 15*time.Second {
					t.Fatalf("an idle drain took %v with --drain-idle %v", after, tc.idle)
				}
				relay.waitFor(regexp.MustCompile(`msg="relay stopped: drained"`), 0, time.Second)
			} else {
				if after < tc.drain-time.Second {
					t.Fatalf("the relay exited %v after SIGTERM with an idle tunnel, --drain %v and --drain-idle 0", after, tc.drain)
				}
				relay.waitFor(regexp.MustCompile(`msg="relay stopped: drain period over"`), 0, time.Second)
			}
			conn.stop()
			dev.stop()
		})
	}
	if _, stderr, err := run(t, "relay", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--drain-idle", "-1s"); err == nil || !strings.Contains(stderr, "--drain-idle -1s: want a duration of 0 or more") {
		t.Fatalf("negative --drain-idle: err %v, stderr %q", err, stderr)
	}
}
