package fileperm

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// nobody is another user's ID, for the tests that need one (as root).
const nobody = 65534

// needRoot skips a test that must chown files to another user.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root, to give files to another user")
	}
}

func skipUnchecked(t *testing.T) {
	t.Helper()
	if unchecked {
		t.Skipf("no Unix owners and modes on %s", runtime.GOOS)
	}
}

// mkdir makes dir with mode (chmod, so the umask does not matter).
func mkdir(t *testing.T, dir string, mode os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	return dir
}

func chown(t *testing.T, path string, uid int) {
	t.Helper()
	if err := os.Lchown(path, uid, -1); err != nil {
		t.Fatal(err)
	}
}

// wantUnsafe checks err is an ErrUnsafe whose message contains each of
// words.
func wantUnsafe(t *testing.T, err error, words ...string) {
	t.Helper()
	var e *Error
	if !errors.Is(err, ErrUnsafe) || !errors.As(err, &e) {
		t.Fatalf("err = %v, want an ErrUnsafe", err)
	}
	t.Logf("refused: %v", err)
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("err = %q, want it to say %q", err, w)
		}
	}
}

// TestCheckDir: a state directory another user owns or may write, or one
// below such a directory, is refused with the command that fixes it; a
// sticky directory above it (like /tmp) is fine, a sticky one as the
// state directory itself is not.
func TestCheckDir(t *testing.T) {
	skipUnchecked(t)
	tests := []struct {
		name  string
		root  bool                                   // needs root
		setup func(t *testing.T, base string) string // returns the state directory
		words []string                               // nil: accepted
	}{
		{"own, 0700", false, func(t *testing.T, base string) string {
			return mkdir(t, filepath.Join(base, "state"), 0o700)
		}, nil},
		{"readable by others, 0755", false, func(t *testing.T, base string) string {
			return mkdir(t, filepath.Join(base, "state"), 0o755)
		}, nil},
		{"writable by others, 0777", false, func(t *testing.T, base string) string {
			return mkdir(t, filepath.Join(base, "state"), 0o777)
		}, []string{"is writable by users other than its owner (mode 0777)", "run chmod go-w " + filepath.Join("BASE", "state")}},
		{"writable by the group, 0770", false, func(t *testing.T, base string) string {
			return mkdir(t, filepath.Join(base, "state"), 0o770)
		}, []string{"(mode 0770)", "chmod go-w"}},
		{"shared and sticky, 1777", false, func(t *testing.T, base string) string {
			return mkdir(t, filepath.Join(base, "state"), os.ModeSticky|0o777)
		}, []string{"(mode 1777)", "keep it in a directory of its own"}},
		{"below a directory others may write", false, func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "shared"), 0o777)
			return mkdir(t, filepath.Join(base, "shared", "state"), 0o700)
		}, []string{"directory " + filepath.Join("BASE", "shared") + " (above state directory", "run chmod go-w " + filepath.Join("BASE", "shared")}},
		{"not made yet, below a directory others may write", false, func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "shared"), 0o777)
			return filepath.Join(base, "shared", "new", "state")
		}, []string{"run chmod go-w " + filepath.Join("BASE", "shared")}},
		{"below a sticky directory, like /tmp", false, func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "tmp"), os.ModeSticky|0o777)
			return mkdir(t, filepath.Join(base, "tmp", "state"), 0o700)
		}, nil},
		{"a link, in a safe place, to a directory in an unsafe one", false, func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "shared"), 0o777)
			target := mkdir(t, filepath.Join(base, "shared", "state"), 0o700)
			link := filepath.Join(mkdir(t, filepath.Join(base, "safe"), 0o700), "state")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, []string{"run chmod go-w " + filepath.Join("BASE", "shared")}},
		{"owned by another user", true, func(t *testing.T, base string) string {
			dir := mkdir(t, filepath.Join(base, "state"), 0o700)
			chown(t, dir, nobody)
			return dir
		}, []string{"is owned by ", "uid 65534", "runuser -u ", "rather than chown it to root"}},
		{"below another user's directory", true, func(t *testing.T, base string) string {
			chown(t, mkdir(t, filepath.Join(base, "theirs"), 0o755), nobody)
			return mkdir(t, filepath.Join(base, "theirs", "state"), 0o700)
		}, []string{"directory " + filepath.Join("BASE", "theirs") + " (above", "uid 65534", "runuser -u "}},
		{"below another user's sticky directory", true, func(t *testing.T, base string) string {
			chown(t, mkdir(t, filepath.Join(base, "theirs"), os.ModeSticky|0o777), nobody)
			return mkdir(t, filepath.Join(base, "theirs", "state"), 0o700)
		}, []string{"uid 65534"}},
		{"below root's directory", true, func(t *testing.T, base string) string {
			// Root owns base here: the test runs as root.
			return mkdir(t, filepath.Join(base, "state"), 0o700)
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root {
				needRoot(t)
			}
			base := t.TempDir()
			dir := tc.setup(t, base)
			err := CheckDir(dir, "state directory")
			if tc.words == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			for i, w := range tc.words {
				tc.words[i] = strings.ReplaceAll(w, "BASE", base)
			}
			wantUnsafe(t, err, tc.words...)
		})
	}
}

// TestCheckKey: a key file others may read, or that another user owns, or
// in a directory others may write, is refused with its fix.
func TestCheckKey(t *testing.T) {
	skipUnchecked(t)
	key := func(t *testing.T, dir string, mode os.FileMode) string {
		t.Helper()
		path := filepath.Join(dir, "device.key")
		if err := os.WriteFile(path, []byte("key"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	check := func(path string) error {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return CheckKey(path, fi)
	}
	dir := t.TempDir()
	if err := check(key(t, dir, 0o600)); err != nil {
		t.Fatalf("own key, 0600: %v", err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o666} {
		path := key(t, t.TempDir(), mode)
		wantUnsafe(t, check(path), "other users may read or change this key", "run chmod 600 "+path)
	}
	shared := mkdir(t, filepath.Join(t.TempDir(), "shared"), 0o777)
	wantUnsafe(t, check(key(t, shared, 0o600)), "directory "+shared+" is writable by users other than its owner (mode 0777)", "run chmod go-w "+shared)
	sticky := mkdir(t, filepath.Join(t.TempDir(), "tmp"), os.ModeSticky|0o777)
	wantUnsafe(t, check(key(t, sticky, 0o600)), "keep it in a directory of its own")

	t.Run("owned by another user", func(t *testing.T) {
		needRoot(t)
		path := key(t, t.TempDir(), 0o600)
		chown(t, path, nobody)
		wantUnsafe(t, check(path), "this key is owned by ", "uid 65534", "runuser -u ", "rather than chown it to root")
	})
}

// TestRootOwned: to an agent running as another user, what root owns is
// fine (root could change anything anyway), what a third user owns is
// not; to an agent running as root, only root's own files are.
func TestRootOwned(t *testing.T) {
	skipUnchecked(t)
	needRoot(t)
	const agent = 1000
	dir := t.TempDir() // root's
	path := filepath.Join(dir, "k")
	os.WriteFile(path, nil, 0o600)
	fi, _ := os.Stat(path)
	if err := checkKey(path, fi, agent); err != nil {
		t.Fatalf("root's key, agent uid %d: %v", agent, err)
	}
	if err := checkDir(dir, "state directory", agent); err != nil {
		t.Fatalf("root's directory, agent uid %d: %v", agent, err)
	}
	chown(t, path, agent)
	fi, _ = os.Stat(path)
	if err := checkKey(path, fi, agent); err != nil {
		t.Fatalf("the agent's own key: %v", err)
	}
	if err := checkKey(path, fi, 0); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("uid %d's key, agent running as root: err = %v, want it refused", agent, err)
	}
	chown(t, path, nobody)
	fi, _ = os.Stat(path)
	if err := checkKey(path, fi, agent); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("a third user's key: err = %v, want it refused", err)
	}
}
