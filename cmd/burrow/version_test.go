package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// reVersion is the line burrow version prints.
var reVersion = regexp.MustCompile(`^burrow version (\S+)(, commit ([0-9a-f]{40})( \(with changes not committed\))?(, committed \S+)?)?, (go\S+)\n$`)

// TestBinaryVersion: burrow version and burrow --version print the same
// line, with the Go version; if the test binary carries VCS information
// (built from a git checkout without -buildvcs=false), its commit is the
// checkout's.
func TestBinaryVersion(t *testing.T) {
	out := mustRun(t, "version")
	m := reVersion.FindStringSubmatch(out)
	if m == nil || m[6] != runtime.Version() {
		t.Fatalf("burrow version: %q", out)
	}
	if alt := mustRun(t, "--version"); alt != out {
		t.Fatalf("burrow --version: %q, burrow version: %q", alt, out)
	}
	if m[3] == "" {
		t.Logf("the test binary has no VCS information (GOFLAGS=%q; a git worktree is not stamped): the commit is checked by TestBinaryVersionCommit", os.Getenv("GOFLAGS"))
		return
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("git rev-parse HEAD: %v", err)
	}
	if m[3] != strings.TrimSpace(string(head)) {
		t.Fatalf("burrow version says commit %s, git rev-parse HEAD %s", m[3], head)
	}
}

// TestBinaryVersionCommit: a burrow built in a clone of this repository's
// HEAD (a plain git checkout) prints that commit, and says its tree has no
// changes. It builds the committed code of HEAD, not the files changed
// since.
func TestBinaryVersionCommit(t *testing.T) {
	binary(t) // skips with -short
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	headOut, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not in a git checkout: %v", err)
	}
	head := strings.TrimSpace(string(headOut))
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatal(err)
	}
	clone := filepath.Join(t.TempDir(), "burrow")
	for _, args := range [][]string{
		{"clone", "-q", "--no-checkout", strings.TrimSpace(string(top)), clone},
		{"-C", clone, "checkout", "-q", "--detach", head},
	} {
		if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	bin := filepath.Join(t.TempDir(), "burrow")
	build := exec.Command("go", "build", "-buildvcs=true", "-o", bin, "./cmd/burrow")
	build.Dir = clone
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build in the clone: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	m := reVersion.FindStringSubmatch(string(out))
	// The version is the pseudo-version go build derives from the commit
	// (Go 1.24 and later), or (devel).
	if m == nil || m[1] != "(devel)" && !strings.HasSuffix(m[1], "-"+head[:12]) || m[3] != head || m[4] != "" || m[5] == "" {
		t.Fatalf("burrow version built at %s: %q, want that commit, no changes, and its time", head, out)
	}
}
