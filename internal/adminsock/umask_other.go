//go:build !unix

package adminsock

// privateUmask does nothing here; Listen still restricts the socket's mode
// once it exists.
func privateUmask() (restore func()) { return func() {} }
