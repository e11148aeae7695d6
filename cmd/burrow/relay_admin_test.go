package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRelayCommandsRefuseMissingDataDir: "relay token create" and "relay
// devices" with a --data that does not exist fail and say so, and create
// nothing: a mistyped directory used to become a new, empty relay state,
// with a token the running relay did not know and an empty device list.
func TestRelayCommandsRefuseMissingDataDir(t *testing.T) {
	typo := filepath.Join(t.TempDir(), "rleay")
	for _, args := range [][]string{
		{"relay", "token", "create", "--data", typo},
		{"relay", "devices", "--data", typo},
		{"relay", "devices", "remove", newID(t).String(), "--data", typo},
	} {
		runFails(t, "data directory "+typo+" does not exist", args...)
	}
	if _, err := os.Stat(typo); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the mistyped data directory exists after the commands: %v", err)
	}
	// A data directory that exists still works without a running relay.
	data := t.TempDir()
	mustRun(t, "relay", "id", "--data", data)
	if tok := mustRun(t, "relay", "token", "create", "--data", data); !strings.HasPrefix(tok, "enroll-") {
		t.Fatalf("token from an existing data directory: %q", tok)
	}
}
