//go:build race

// Package israce tells tests whether the race detector is on. It slows the
// CPU work several times and makes sync.Pool drop items on purpose, so
// speed limits and allocation counts are checked only without it (.ci/run
// runs those tests both ways).
package israce

// Enabled reports whether the race detector is on.
const Enabled = true
