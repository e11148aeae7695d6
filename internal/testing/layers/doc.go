// Package layers holds the architecture as a test: the rules of which
// burrow package may import which (see its test file), checked against the
// module's import graph by `go test`. It has no code of its own; nothing
// imports it.
package layers
