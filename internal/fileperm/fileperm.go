// Package fileperm refuses key files and state directories that another
// user could read or change, as ssh's StrictModes does: whoever can change
// an agent's key, or the directory it keeps its state in, can be the agent
// or decide whom it lets in. Every place burrow loads a key or opens a
// state directory checks it here, so that the rule is the same everywhere.
//
// The rules, on Unix (elsewhere nothing is checked):
//
//   - A key file, the directory holding it, a state directory, and every
//     directory above them must be owned by the user the agent runs as, or
//     by root. A file of root's adds no one who could change it (root can
//     change anything), but running as root exempts nothing: a root agent
//     whose key another user owns would let that user be the agent.
//   - A key file must not be readable or writable by group or others.
//   - The directory holding a key, and a state directory, must not be
//     writable by group or others, even if sticky: another user could
//     create in it the files the agent would then use.
//   - A directory above them may be writable by others only if it is
//     sticky, like /tmp: others may add entries to it, but not rename or
//     remove the agent's.
//
// A path that does not exist is no error here (the agent creates it, with
// modes of its own); the directories above it are checked all the same.
package fileperm

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
)

// ErrUnsafe is matched, with [errors.Is], by every [*Error].
var ErrUnsafe = errors.New("unsafe ownership or permissions")

// An Error says which file or directory another user could read or
// change, and how to fix that.
type Error struct {
	Path    string // the file or directory at fault
	Problem string // what is wrong with it, and why that matters
	Fix     string // the command that fixes it, or what to do
}

func (e *Error) Error() string { return e.Problem + ": " + e.Fix }

func (e *Error) Unwrap() error { return ErrUnsafe }

// CheckKey checks the key file at path, fi being the information of the
// open file, and the directories holding it. Its messages call the file
// "this key": callers name it.
func CheckKey(path string, fi fs.FileInfo) error {
	return checkKey(path, fi, os.Geteuid())
}

// CheckDir checks the directory dir, where an agent keeps its state, and
// the directories above it. what names it in messages ("state
// directory", "data directory", …).
func CheckDir(dir, what string) error {
	return checkDir(dir, what, os.Geteuid())
}

// unchecked reports whether this system has no Unix owners and modes.
var unchecked = runtime.GOOS == "windows" || runtime.GOOS == "plan9"

func checkKey(path string, fi fs.FileInfo, self int) error {
	if unchecked {
		return nil
	}
	if err := checkOwner(path, "this key", fi, self); err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		// Worded as before owners were checked: scripts may match it.
		return &Error{Path: path,
			Problem: fmt.Sprintf("other users may read or change this key (mode %04o)", unixMode(fi)),
			Fix:     "run chmod 600 " + path}
	}
	// The directory holding it, and the one holding its target if it is a
	// symbolic link: whoever can write either can replace the key.
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil
	}
	dirs := []string{filepath.Dir(abs)}
	if real, err := filepath.EvalSymlinks(abs); err == nil && filepath.Dir(real) != dirs[0] {
		dirs = append(dirs, filepath.Dir(real))
	}
	for _, d := range dirs {
		if err := checkDir(d, "directory", self); err != nil {
			return err
		}
	}
	return nil
}

func checkDir(dir, what string, self int) error {
	if unchecked {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil
	}
	if fi, err := os.Stat(abs); err == nil {
		name := what + " " + abs
		if err := checkOwner(abs, name, fi, self); err != nil {
			return err
		}
		if fi.Mode().Perm()&0o022 != 0 {
			e := &Error{Path: abs,
				Problem: fmt.Sprintf("%s is writable by users other than its owner (mode %04o), who could change what it holds", name, unixMode(fi)),
				Fix:     "run chmod go-w " + abs}
			if fi.Mode()&fs.ModeSticky != 0 {
				e.Fix = "keep it in a directory of its own, which only " + userName(self) + " can write, not in a shared one"
			}
			return e
		}
	}
	// The directories above it, as given and as resolved, from the root
	// down.
	var above []string
	for _, p := range []string{abs, resolved(abs)} {
		for d := filepath.Dir(p); ; d = filepath.Dir(d) {
			if !slices.Contains(above, d) {
				above = append(above, d)
			}
			if d == filepath.Dir(d) {
				break
			}
		}
	}
	slices.SortFunc(above, func(a, b string) int { return cmp.Compare(len(a), len(b)) })
	for _, d := range above {
		if d == abs {
			continue
		}
		fi, err := os.Stat(d)
		if err != nil || !fi.IsDir() {
			continue
		}
		name := fmt.Sprintf("directory %s (above %s %s)", d, what, abs)
		if err := checkOwner(d, name, fi, self); err != nil {
			return err
		}
		if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
			return &Error{Path: d,
				Problem: fmt.Sprintf("%s is writable by users other than its owner (mode %04o), who could replace what it holds", name, unixMode(fi)),
				Fix:     "run chmod go-w " + d}
		}
	}
	return nil
}

// resolved returns path with its symbolic links resolved, as far as it
// exists.
func resolved(path string) string {
	rest := ""
	for p := path; ; p = filepath.Dir(p) {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(r, rest)
		}
		if p == filepath.Dir(p) {
			return path
		}
		rest = filepath.Join(filepath.Base(p), rest)
	}
}

// checkOwner refuses fi, at path and called name in the message, unless
// self or root owns it.
func checkOwner(path, name string, fi fs.FileInfo, self int) error {
	uid, ok := owner(fi)
	if !ok || uid == self || uid == 0 {
		return nil
	}
	fix := fmt.Sprintf("run chown %s %s, or run the agent as its owner", chownName(self), path)
	if self == 0 {
		// Root meets a file of a service's user (an operator running a
		// relay command by hand): handing it to root would lock the
		// service out of it.
		fix = fmt.Sprintf("run the command as its owner (runuser -u %s -- burrow …), rather than chown it to root, which would lock its owner out", chownName(uid))
	}
	return &Error{Path: path,
		Problem: fmt.Sprintf("%s is owned by %s, who could change it, not by %s, whom this agent runs as", name, userName(uid), userName(self)),
		Fix:     fix}
}

// unixMode returns fi's permission bits with the sticky bit, as chmod
// takes them.
func unixMode(fi fs.FileInfo) uint32 {
	m := uint32(fi.Mode().Perm())
	if fi.Mode()&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return m
}

// OwnerName names the user who owns path for a message, as "user alice
// (uid 1000)", or returns false if this system has no Unix owners or path
// cannot be examined. A path that cannot be reached (its directory is
// closed to this user) is named by the owner of the nearest directory
// above it that can be examined: that is who holds it.
func OwnerName(path string) (string, bool) {
	for p := path; ; {
		if fi, err := os.Stat(p); err == nil {
			uid, ok := owner(fi)
			if !ok {
				return "", false
			}
			return userName(uid), true
		}
		up := filepath.Dir(p)
		if up == p {
			return "", false
		}
		p = up
	}
}

// userName names uid for a message: "user alice (uid 1000)".
func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil && u.Username != "" {
		return fmt.Sprintf("user %s (uid %d)", u.Username, uid)
	}
	return fmt.Sprintf("uid %d", uid)
}

// chownName names uid for chown: its user name, or the number.
func chownName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil && u.Username != "" {
		return u.Username
	}
	return strconv.Itoa(uid)
}
