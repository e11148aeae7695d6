package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/burrow-tunnel/burrow/internal/testing/tunneltest"
	"github.com/burrow-tunnel/burrow/pairing"
)

// pairingDevice runs a relay and a device that makes invites, and returns
// a function that makes one (role viewer) with the real binary.
func pairingDevice(t *testing.T) (invite func() string) {
	t.Helper()
	invite, _ = pairingDeviceConfig(t)
	return invite
}

// pairingDeviceConfig is pairingDevice, and also returns the device's
// configuration file, which its admin commands take.
func pairingDeviceConfig(t *testing.T) (invite func() string, cfg string) {
	t.Helper()
	dir := t.TempDir()
	relayData := filepath.Join(dir, "relay")
	relayIDOut, _, err := run(t, "relay", "id", "--data", relayData)
	if err != nil {
		t.Fatal(err)
	}
	relay := start(t, "relay", "relay", "--listen", "127.0.0.1:0", "--data", relayData, "--open", "--no-udp")
	m, _ := relay.waitFor(reRelayListening, 0, 10*time.Second)
	web := tunneltest.HTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "camera admin page")
	}))
	cfg = filepath.Join(dir, "cam.yaml")
	body := fmt.Sprintf("name: cam\nrelay: %s\nrelay_id: %s\nidentity: cam.key\nstate: cam-state\nservices:\n  http: %s\nroles:\n  viewer: [http]\ndirect: false\n",
		m[1], strings.TrimSpace(relayIDOut), web)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := start(t, "device", "device", "--config", cfg)
	dev.waitFor(reAttached, 0, 10*time.Second)
	return func() string {
		t.Helper()
		out, stderr, err := run(t, "device", "invite", "--config", cfg, "--role", "viewer")
		if err != nil || !strings.HasPrefix(out, "burrow://pair?") {
			t.Fatalf("invite: %q %q %v", out, stderr, err)
		}
		return strings.TrimSpace(out)
	}, cfg
}

// runPair runs burrow pair with args and stdin. While it runs, it reads
// the process's command line as any local user can (/proc/PID/cmdline,
// what ps shows) and returns it with the outputs.
func runPair(t *testing.T, stdin string, args ...string) (cmdline, stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), offLAN(append([]string{"pair"}, args...))...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	w, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The process waits for its standard input, so it keeps running; its
	// command line is the burrow binary's once the exec is done (read
	// sooner, it is empty).
	var b []byte
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		var rerr error
		b, rerr = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cmd.Process.Pid))
		if rerr != nil || bytes.Contains(b, []byte("pair")) || time.Now().After(deadline) {
			if rerr != nil {
				t.Logf("no command line to read: %v", rerr)
			}
			break
		}
	}
	io.WriteString(w, stdin)
	w.Close()
	err = cmd.Wait()
	return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})), out.String(), errOut.String(), err
}

// TestBinaryPairInvite: burrow pair takes the invite from standard input
// or from a file, so that it never appears on the command line, which any
// local user can read (ps, /proc/PID/cmdline) and race the owner to pair
// with. The argument form still works, with a warning that says so.
func TestBinaryPairInvite(t *testing.T) {
	if _, err := os.Stat("/proc/self/cmdline"); err != nil {
		t.Skip("no /proc to read command lines from")
	}
	invite := pairingDevice(t)
	home := filepath.Join(t.TempDir(), "home")
	secretOf := func(inv string) string {
		in, err := pairing.Parse(inv)
		if err != nil {
			t.Fatal(err)
		}
		return in.Secret.String()
	}
	reWarning := regexp.MustCompile(`(?s)warning: .*other users .* command line.*--invite-file`)

	t.Run("stdin", func(t *testing.T) {
		inv := invite()
		cmdline, out, stderr, err := runPair(t, inv+"\n", "--name", "cam1", "--home", home)
		if err != nil || !strings.Contains(out, "paired with cam1") {
			t.Fatalf("pair: %q %q %v", out, stderr, err)
		}
		if !strings.Contains(cmdline, "pair") || strings.Contains(cmdline, secretOf(inv)) {
			t.Fatalf("command line others can read: %q", cmdline)
		}
		if reWarning.MatchString(stderr) {
			t.Fatalf("warned about the stdin form: %q", stderr)
		}
	})
	t.Run("invite-file", func(t *testing.T) {
		inv := invite()
		file := filepath.Join(t.TempDir(), "invite")
		if err := os.WriteFile(file, []byte(inv+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cmdline, out, stderr, err := runPair(t, "", "--invite-file", file, "--name", "cam2", "--home", home)
		if err != nil || !strings.Contains(out, "paired with cam2") {
			t.Fatalf("pair: %q %q %v", out, stderr, err)
		}
		if strings.Contains(cmdline, secretOf(inv)) || reWarning.MatchString(stderr) {
			t.Fatalf("command line %q, stderr %q", cmdline, stderr)
		}
	})
	t.Run("invite-file -", func(t *testing.T) {
		inv := invite()
		_, out, stderr, err := runPair(t, inv, "--invite-file", "-", "--name", "cam3", "--home", home)
		if err != nil || !strings.Contains(out, "paired with cam3") {
			t.Fatalf("pair: %q %q %v", out, stderr, err)
		}
	})
	t.Run("argument", func(t *testing.T) {
		inv := invite()
		cmdline, out, stderr, err := runPair(t, "", inv, "--name", "cam4", "--home", home)
		if err != nil || !strings.Contains(out, "paired with cam4") {
			t.Fatalf("pair: %q %q %v", out, stderr, err)
		}
		if !reWarning.MatchString(stderr) {
			t.Fatalf("no warning about the invite on the command line: %q", stderr)
		}
		// What the warning is about: any user sees the secret (unless pair
		// was done before the test could look).
		switch {
		case cmdline == "":
			t.Logf("pair ended before its command line was read")
		case !strings.Contains(cmdline, secretOf(inv)):
			t.Fatalf("command line %q does not hold the invite's secret", cmdline)
		}
	})
	t.Run("errors", func(t *testing.T) {
		inv := invite()
		for _, tc := range []struct {
			name, stdin string
			args        []string
			want        string
		}{
			{"empty stdin", "", nil, "no invite on standard input"},
			{"not an invite", "hello\n", nil, "invalid invite"},
			{"both", "", []string{inv, "--invite-file", "-"}, "not both"},
			{"missing file", "", []string{"--invite-file", filepath.Join(t.TempDir(), "nope")}, "--invite-file"},
		} {
			_, out, stderr, err := runPair(t, tc.stdin, append(tc.args, "--home", home)...)
			if err == nil || !strings.Contains(stderr, tc.want) {
				t.Errorf("%s: %q %q %v, want an error saying %q", tc.name, out, stderr, err, tc.want)
			}
		}
	})
}
