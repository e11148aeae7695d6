//go:build !race

package tunneltest

// raceEnabled: see race_test.go.
const raceEnabled = false
