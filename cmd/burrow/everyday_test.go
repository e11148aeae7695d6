package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBinaryAdminOtherUser: an admin command run by a user who may not
// open the relay's admin socket says who may, not only "permission
// denied". It runs the command as nobody (uid 65534), so it needs root.
func TestBinaryAdminOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("runs a command as another user: needs root")
	}
	bin := binary(t)
	// The other user must reach the binary and the relay's data
	// directory (not its contents).
	if err := os.Chmod(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	base, err := os.MkdirTemp("", "burrow-admin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	relayData := filepath.Join(base, "relay")
	relay := start(t, "relay", "relay", "--listen", "127.0.0.1:0", "--data", relayData, "--open", "--no-udp")
	relay.waitFor(reRelayListening, 0, 10*time.Second)

	cmd := exec.Command(bin, "relay", "devices", "--data", relayData)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	want := "permission denied on the relay's admin socket " + filepath.Join(relayData, relayAdminsFile) +
		": run this as the relay's user (user root (uid 0)) or as root"
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("relay devices as uid 65534: %q %v, want %q", out, err, want)
	}
}
