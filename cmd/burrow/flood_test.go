package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/identity"
	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
	"github.com/burrow-tunnel/burrow/relayproto"
)

// rawAttach attaches to the relay at addr from the loopback address local
// as id in role, speaking the relay protocol itself (a device sends an
// empty access list). It returns the connection, attached, or the relay's
// refusal.
func rawAttach(local, addr string, id *identity.Identity, role relayproto.Role) (*tls.Conn, *bufio.Reader, *relayproto.Refuse, error) {
	d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}})
	if err != nil {
		return nil, nil, nil, err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	st := conn.ConnectionState()
	exp, err := st.ExportKeyingMaterial(relayproto.ExporterLabel, nil, relayproto.ExporterLen)
	if err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	msg := fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", relayproto.UpgradePath, relayproto.UpgradeToken)
	hello := relayproto.AppendClientHello(nil, relayproto.ClientHello{MinVersion: 1, MaxVersion: 1, Role: role, Instance: 1, PublicKey: id.PublicKey()}, exp, id.Sign)
	msg = append(append(msg, relayproto.AppendHeader(nil, relayproto.FrameClientHello, len(hello))...), hello...)
	if role == relayproto.RoleDevice {
		acc := relayproto.AppendAccess(nil, relayproto.AccessFirst|relayproto.AccessLast, nil)
		msg = append(append(msg, relayproto.AppendHeader(nil, relayproto.FrameAccess, len(acc))...), acc...)
	}
	if _, err := conn.Write(msg); err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	resp.Body.Close()
	typ, n, err := relayproto.ReadHeader(br)
	if err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	switch typ {
	case relayproto.FrameServerHello:
		conn.SetDeadline(time.Time{})
		return conn, br, nil, nil
	case relayproto.FrameRefuse:
		conn.Close()
		f, err := relayproto.ParseRefuse(p)
		if err != nil {
			return nil, nil, nil, err
		}
		return nil, nil, &f, nil
	}
	conn.Close()
	return nil, nil, nil, fmt.Errorf("got %s", typ)
}

// procCPU returns the CPU time process pid has used.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command's closing parenthesis; utime and stime are
	// the 12th and 13th of them, in clock ticks (100 a second on Linux).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// procStatus returns a field of /proc/PID/status in KiB (VmRSS, VmHWM).
func procStatus(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + field + `:\s+(\d+) kB$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// floodHelperEnv, set to a relay's address, makes the test binary a
// flooder (see floodHelper) instead of running tests: the flood then runs
// in a process of its own, as an attacker's would, and does not share a
// Go scheduler with the test's own agents.
const floodHelperEnv = "BURROW_TEST_FLOOD"

// Parameters of the flood of TestBinaryRelayClientFlood.
const (
	floodSessions = 5000
	floodWorkers  = 32 // under the 64 connections one address may have pending
	floodFrom     = "127.0.0.3"
)

// floodHelper attaches floodSessions fresh-key clients to the relay at
// addr from floodFrom, floodWorkers at a time, keeping each session the
// relay takes. It prints "refused CODE" or "error ERR" for each one that
// fails and "held N" at the end, then holds its sessions until its
// standard input closes.
func floodHelper(addr string) int {
	next := make(chan struct{}, floodSessions)
	for range floodSessions {
		next <- struct{}{}
	}
	close(next)
	var (
		mu   sync.Mutex
		held []*tls.Conn
		wg   sync.WaitGroup
	)
	out := bufio.NewWriter(os.Stdout)
	for range floodWorkers {
		wg.Go(func() {
			for range next {
				id, err := identity.Generate()
				if err != nil {
					panic(err)
				}
				conn, _, refused, err := rawAttach(floodFrom, addr, id, relayproto.RoleClient)
				mu.Lock()
				switch {
				case err != nil:
					fmt.Fprintf(out, "error %v\n", err)
				case refused != nil:
					fmt.Fprintf(out, "refused %d\n", refused.Code)
				default:
					held = append(held, conn)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	fmt.Fprintf(out, "held %d\n", len(held))
	out.Flush()
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// TestBinaryRelayClientFlood: a client needs no enrollment, so anyone can
// attach fresh keys as clients. Against a relay held to 4,096 open files
// (soft limit 1,024, which the relay raises), a flood of 5,000 fresh-key
// client sessions from one address, in another process: the relay takes
// as many as its per-address bound and refuses the rest with a typed code,
// its memory stays bounded, enrolled devices attach all along, and in
// under 100 ms with the flood's sessions held. (That the sessions it took
// are closed once they have reached no device for the grace period is
// relay's TestUnusedClientsClosed.)
func TestBinaryRelayClientFlood(t *testing.T) {
	if _, err := os.Stat("/proc/self/limits"); err != nil {
		t.Skip("needs /proc")
	}
	const (
		perIP    = 256
		devices  = 40
		deviceIP = "127.0.0.1"
	)
	dir := t.TempDir()
	var devIDs []*identity.Identity
	var list strings.Builder
	for range devices {
		id := tunneltest.NewIdentity(t)
		devIDs = append(devIDs, id)
		list.WriteString(id.ID().String() + "\n")
	}
	devicesFile := filepath.Join(dir, "devices.txt")
	os.WriteFile(devicesFile, []byte(list.String()), 0o600)
	// The shell sets the limits and becomes the relay.
	cmd := exec.Command("bash", "-c", `ulimit -n 4096 && ulimit -Sn 1024 && exec "$0" "$@"`, binary(t),
		"relay", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "relay"), "--devices", devicesFile, "--no-udp",
		// Longer than the flood, however slow the machine: its sessions
		// reach no device and never ping, and must stay.
		"--client-grace", "10m", "--keepalive", "5m")
	relay := startCmd(t, "relay", cmd)
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	addr := m[1]
	pid := relay.cmd.Process.Pid
	relay.waitFor(regexp.MustCompile(`msg="relay limits" open_files=4096 clients=1024 clients_per_ip=256 pending=512`), 0, 5*time.Second)
	limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if !regexp.MustCompile(`(?m)^Max open files\s+4096\s+4096\s+files`).Match(limits) {
		t.Fatalf("the relay did not raise its soft limit to the hard one:\n%s", limits)
	}
	rssBefore := procStatus(t, pid, "VmRSS")

	flooder := exec.Command(os.Args[0])
	flooder.Env = append(os.Environ(), floodHelperEnv+"="+addr)
	stdin, _ := flooder.StdinPipe()
	defer stdin.Close()
	fl := startCmd(t, "flooder", flooder)
	floodStart, cpuStart := time.Now(), procCPU(t, pid)

	attach := func(i int) time.Duration {
		t.Helper()
		start := time.Now()
		conn, _, refused, err := rawAttach(deviceIP, addr, devIDs[i], relayproto.RoleDevice)
		took := time.Since(start)
		if err != nil || refused != nil {
			t.Fatalf("device %d: %v %+v", i, err, refused)
		}
		t.Cleanup(func() { conn.Close() })
		return took
	}
	// Devices attach while the flood's handshakes run.
	var during, after []time.Duration
	i := 0
	for ; i < devices/2; i++ {
		select {
		case <-fl.done:
			t.Fatal("the flooder exited")
		case <-time.After(100 * time.Millisecond):
		}
		fl.mu.Lock()
		finished := len(fl.lines) > 0 && strings.HasPrefix(fl.lines[len(fl.lines)-1], "held ")
		fl.mu.Unlock()
		if finished {
			break
		}
		during = append(during, attach(i))
	}
	hm, _ := fl.waitFor(regexp.MustCompile(`^held (\d+)$`), 0, 5*time.Minute)
	floodTook, cpu := time.Since(floodStart), procCPU(t, pid)-cpuStart
	// And with the flood's sessions held.
	for ; i < devices; i++ {
		after = append(after, attach(i))
	}
	held, _ := strconv.Atoi(hm[1])
	refused := map[string]int{}
	fl.mu.Lock()
	for _, l := range fl.lines {
		if code, ok := strings.CutPrefix(l, "refused "); ok {
			refused[code]++
		} else if !strings.HasPrefix(l, "held ") {
			t.Errorf("flooder: %s", l)
		}
	}
	fl.mu.Unlock()
	rss := procStatus(t, pid, "VmRSS")
	hwm := procStatus(t, pid, "VmHWM")
	slices.Sort(during)
	slices.Sort(after)
	t.Logf("flood of %d in %v (relay CPU %v): %d held, refused %v; relay RSS %d → %d KiB (peak %d)",
		floodSessions, floodTook.Round(time.Millisecond), cpu, held, refused, rssBefore, rss, hwm)
	t.Logf("devices attached during the flood's handshakes in %v; with its sessions held in %v", during, after)
	if too := refused[strconv.Itoa(int(relayproto.RefuseTooMany))]; held != perIP || too != floodSessions-perIP {
		t.Fatalf("%d sessions held and %v refused, want %d held and %d refused with code %d (%s)",
			held, refused, perIP, floodSessions-perIP, relayproto.RefuseTooMany, relayproto.RefuseTooMany)
	}
	if worst := after[len(after)-1]; worst > 100*time.Millisecond {
		t.Errorf("a device took %v to attach with the flood's sessions held, want under 100ms", worst)
	}
	// The handshakes of a flood from this machine compete with the device's
	// for both cores; the attach must still never stall.
	if len(during) > 0 && during[len(during)-1] > 2*time.Second {
		t.Errorf("a device took %v to attach during the flood, want it never to stall", during[len(during)-1])
	}
	// Before these bounds, the same flood grew the relay from 12 to 88 MiB.
	if hwm > 48<<10 {
		t.Errorf("the relay's peak RSS was %d KiB during the flood, want under 48 MiB", hwm)
	}
	relay.mu.Lock()
	outOfFiles := slices.ContainsFunc(relay.lines, func(l string) bool { return strings.Contains(l, "too many open files") })
	relay.mu.Unlock()
	if outOfFiles {
		t.Error("the relay ran out of file descriptors")
	}
}
