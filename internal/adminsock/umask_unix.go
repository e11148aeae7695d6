//go:build unix

package adminsock

import "syscall"

// privateUmask makes new files private to their owner until restored.
func privateUmask() (restore func()) {
	old := syscall.Umask(0o077)
	return func() { syscall.Umask(old) }
}
