//go:build !unix

package main

// raiseFileLimit does nothing where there is no open-file limit to raise:
// the relay's budgets keep their fixed defaults.
func raiseFileLimit() (uint64, error) { return 0, nil }
