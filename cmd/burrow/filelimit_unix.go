//go:build unix

package main

import "syscall"

// raiseFileLimit raises the process's soft limit on open files to its hard
// limit, as a server that holds a connection per agent needs, and returns
// the limit in force: every connection of the relay costs a file
// descriptor, and its budgets are shares of this number. (The Go runtime
// raises the limit at start as well; this does not rely on it.)
func raiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
			return uint64(lim.Cur), err
		}
	}
	return uint64(lim.Cur), nil
}
