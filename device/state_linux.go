package device

import "golang.org/x/sys/unix"

// fsCause returns ErrStateReadOnly if the file system holding dir is
// mounted read-only, ErrStateFull if it has no space left for the agent,
// nil otherwise.
func fsCause(dir string) error {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return nil
	}
	switch {
	case st.Flags&unix.ST_RDONLY != 0:
		return ErrStateReadOnly
	case st.Bavail == 0:
		return ErrStateFull
	}
	return nil
}
