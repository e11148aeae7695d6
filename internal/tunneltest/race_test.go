//go:build race

package tunneltest

// raceEnabled reports whether the race detector is on: it slows the CPU
// work of a tunnel several times, so absolute speed limits are checked
// only without it (.ci/run runs those tests both ways).
const raceEnabled = true
