package device

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestOpenStoreRefusesUnsafeDir: a state directory others may write, one
// another user owns (world-writable, as in the finding), or one below a
// directory others may write, is refused before anything in it is read,
// with the command that fixes it.
func TestOpenStoreRefusesUnsafeDir(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix owners and modes")
	}
	tests := []struct {
		name  string
		root  bool
		setup func(t *testing.T, base string) (dir, fix string)
	}{
		{"writable by others", false, func(t *testing.T, base string) (string, string) {
			dir := filepath.Join(base, "state")
			os.Mkdir(dir, 0o700)
			os.Chmod(dir, 0o777)
			return dir, "run chmod go-w " + dir
		}},
		{"below a directory others may write", false, func(t *testing.T, base string) (string, string) {
			os.Chmod(base, 0o777)
			return filepath.Join(base, "state"), "run chmod go-w " + base
		}},
		{"another user's, writable by all", true, func(t *testing.T, base string) (string, string) {
			dir := filepath.Join(base, "state")
			os.Mkdir(dir, 0o700)
			os.Chmod(dir, 0o777)
			if err := os.Chown(dir, 65534, -1); err != nil {
				t.Fatal(err)
			}
			return dir, "runuser -u "
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("needs root, to give the directory to another user")
			}
			dir, fix := tc.setup(t, t.TempDir())
			st, err := openStore(dir)
			if err == nil {
				st.close()
				t.Fatalf("opened state directory %s", dir)
			}
			if !strings.Contains(err.Error(), fix) {
				t.Fatalf("err = %v, want it to say %q", err, fix)
			}
			if _, err := os.Stat(filepath.Join(dir, "device.db")); err == nil {
				t.Fatal("the store was created in the unsafe directory")
			}
		})
	}
}
