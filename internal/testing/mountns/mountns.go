//go:build linux

// Package mountns gives tests real storage failures: it runs a test in a
// private mount namespace, where the test mounts small file systems that
// fill up or turn read-only under a running agent. Chmod cannot do that for
// a test running as root; a full or read-only mount does.
//
// Mounts made in the namespace are invisible to the rest of the machine
// and vanish with the test process, whatever way it ends. The package
// needs root (CI runs the tests as root); [Enter] skips the test otherwise.
package mountns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// envChild names, in a child process, the test it runs in the namespace.
const envChild = "BURROW_MOUNTNS_TEST"

// Enter runs the calling test in a private mount namespace. The parent
// process re-runs the test binary with only this test, in a new mount
// namespace whose mounts are all private, and reports the child's result
// as the test's own. Enter returns true in the child, where the test goes
// on, and false in the parent, which must return at once:
//
//	if !mountns.Enter(t) {
//		return
//	}
func Enter(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envChild) == t.Name() {
		self, err1 := os.Readlink("/proc/self/ns/mnt")
		parent, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
		if err := errors.Join(err1, err2); err != nil || self == parent {
			t.Fatalf("not in a mount namespace of its own (%s, parent %s): %v", self, parent, err)
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("skipped: mounting file systems needs root (CI runs these tests as root)")
	}
	var run []string
	for part := range strings.SplitSeq(t.Name(), "/") {
		run = append(run, "^"+regexp.QuoteMeta(part)+"$")
	}
	args := []string{"-test.run=" + strings.Join(run, "/"), "-test.v=true", "-test.count=1"}
	if d, ok := t.Deadline(); ok {
		// Time out before the parent does, so that the child's report
		// (the stacks of a hang) makes it out.
		left := time.Until(d)
		args = append(args, "-test.timeout="+(left-min(left/10, 30*time.Second)).String())
	}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), envChild+"="+t.Name())
	// Go makes every mount of the new namespace private (MS_REC|MS_PRIVATE
	// on /) before it runs the child, so nothing it mounts leaks out.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	before := testMounts()
	err := cmd.Run()
	t.Logf("in a private mount namespace:\n%s", out.Bytes())
	for m := range testMounts() {
		if !before[m] {
			t.Errorf("a mount leaked out of the test's namespace: %s", m)
		}
	}
	switch {
	case errors.Is(err, syscall.EPERM):
		t.Skipf("skipped: cannot make a mount namespace (no CAP_SYS_ADMIN?): %v", err)
	case err != nil:
		t.Fatalf("the test failed in its mount namespace: %v", err)
	case bytes.Contains(out.Bytes(), []byte("--- SKIP: "+t.Name())):
		t.Skip("skipped in its mount namespace (see above)")
	case !bytes.Contains(out.Bytes(), []byte("--- PASS: "+t.Name())):
		t.Fatal("the test did not run in its mount namespace")
	}
	return false
}

// Tmpfs mounts a tmpfs of size bytes on a new directory and returns it; it
// is unmounted when the test ends.
func Tmpfs(t testing.TB, size int64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size))
	if errors.Is(err, unix.EPERM) {
		t.Skipf("skipped: cannot mount a tmpfs: %v", err)
	}
	if err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() { unmount(t, dir) })
	return dir
}

// Remount makes the file system mounted on dir read-only or writable
// again. Linux refuses to make a file system read-only while a file on it
// is open for writing; see [Ext4.Fail] for that.
func Remount(t testing.TB, dir string, readOnly bool) {
	t.Helper()
	flags := uintptr(unix.MS_REMOUNT | unix.MS_NOSUID | unix.MS_NODEV)
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("", dir, "", flags, ""); err != nil {
		t.Fatalf("remount %s (read-only %v): %v", dir, readOnly, err)
	}
}

// Fill fills the file system holding dir to the last byte with a file in
// dir, and returns the file's path and size. Removing the file frees the
// space again.
func Fill(t testing.TB, dir string) (string, int64) {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var size int64
	buf := make([]byte, 64<<10)
	for chunk := len(buf); chunk > 0; {
		n, err := f.Write(buf[:chunk])
		size += int64(n)
		switch {
		case errors.Is(err, unix.ENOSPC):
			chunk /= 2
		case err != nil:
			t.Fatalf("fill %s: %v", dir, err)
		}
	}
	if err := f.Sync(); err != nil && !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("fill %s: %v", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bavail != 0 {
		t.Fatalf("fill %s: %d blocks still free", dir, st.Bavail)
	}
	return path, size
}

// Ext4 is an ext4 file system in an image on a loop device, mounted with
// errors=remount-ro, as the storage of many devices is.
type Ext4 struct {
	// Dir is where the file system is mounted.
	Dir string
	t   testing.TB
	img string
}

// NewExt4 makes and mounts an ext4 file system of size bytes; it is
// unmounted (and its loop device freed) when the test ends. The image lives
// in a tmpfs, so that the test writes nothing to the machine's disk. The
// test is skipped if mkfs.ext4 or loop devices are missing.
func NewExt4(t testing.TB, size int64) *Ext4 {
	t.Helper()
	for _, cmd := range []string{"mkfs.ext4", "e2fsck", "mount", "umount"} {
		if _, err := exec.LookPath(cmd); err != nil {
			t.Skipf("skipped: %s not found (install e2fsprogs and mount)", cmd)
		}
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("skipped: no loop devices: %v", err)
	}
	img := filepath.Join(Tmpfs(t, size+1<<20), "ext4.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-m", "0", img)
	e := &Ext4{Dir: filepath.Join(t.TempDir(), "ext4"), t: t, img: img}
	if err := os.Mkdir(e.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	e.mount()
	t.Cleanup(func() {
		if mounted(e.Dir) {
			unmount(t, e.Dir)
		}
	})
	return e
}

func (e *Ext4) mount() {
	e.t.Helper()
	// The loop device is set to clear itself once unmounted.
	run(e.t, "mount", "-t", "ext4", "-o", "loop,errors=remount-ro", e.img, e.Dir)
	if err := os.Chmod(e.Dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
}

// Fail makes the kernel see an error in the file system, as a failing SD
// card or disk makes it see one: the kernel remounts it read-only at once,
// under the files open on it, and every write after that fails with EROFS.
func (e *Ext4) Fail() {
	e.t.Helper()
	dev := source(e.t, e.Dir)
	trigger := filepath.Join("/sys/fs/ext4", filepath.Base(dev), "trigger_fs_error")
	if err := os.WriteFile(trigger, []byte("1"), 0o200); err != nil {
		e.t.Skipf("skipped: cannot make ext4 fail: %v", err)
	}
	// Recent kernels mark the file system read-only internally (shown as
	// emergency_ro), not in the mount flags statfs reports: try a write.
	probe := filepath.Join(e.Dir, ".probe")
	if err := os.WriteFile(probe, nil, 0o600); !errors.Is(err, unix.EROFS) {
		os.Remove(probe)
		e.t.Fatalf("%s after an error: creating a file: %v, want EROFS", e.Dir, err)
	}
}

// Repair unmounts the file system, checks and repairs it (e2fsck, as a
// device does at boot) and mounts it writable again. Nothing may have a
// file open on it.
func (e *Ext4) Repair() {
	e.t.Helper()
	unmount(e.t, e.Dir)
	cmd := exec.Command("e2fsck", "-f", "-y", e.img)
	out, err := cmd.CombinedOutput()
	// Exit status 1: errors were found and corrected.
	if ee, ok := errors.AsType[*exec.ExitError](err); err != nil && !(ok && ee.ExitCode() == 1) {
		e.t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	e.mount()
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func unmount(t testing.TB, dir string) {
	t.Helper()
	if err := unix.Unmount(dir, 0); err != nil {
		t.Errorf("unmount %s: %v", dir, err)
		unix.Unmount(dir, unix.MNT_DETACH)
	}
}

// source returns the device mounted on dir.
func source(t testing.TB, dir string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[1] == dir {
			return f[0]
		}
	}
	t.Fatalf("nothing is mounted on %s", dir)
	return ""
}

// testMounts returns the tmpfs and ext4 mounts under the temporary
// directory, where tests mount theirs.
func testMounts() map[string]bool {
	b, _ := os.ReadFile("/proc/self/mounts")
	ms := make(map[string]bool)
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && (f[2] == "tmpfs" || f[2] == "ext4") && strings.HasPrefix(f[1], os.TempDir()) {
			ms[line] = true
		}
	}
	return ms
}

func mounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mounts")
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[1] == dir {
			return true
		}
	}
	return false
}
