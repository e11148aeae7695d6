package main

import (
	"encoding/json"
	"io"
	"time"
)

// Machine-readable output (--json): each command prints one JSON document
// on stdout, indented by two spaces: an object, or an array of objects.
// Field names are snake_case and stable (docs/json.md lists them); times
// are RFC 3339 strings in UTC, durations numbers whose name carries the
// unit (rtt_ms), IDs full ID strings. The types below are that contract:
// they are filled from the packages' own types, so that a change there
// does not change the output by accident.

// writeJSON writes v to w as the command's one JSON document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// jsonTime is a time in JSON: RFC 3339 in UTC, or null when unknown.
func jsonTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339Nano)
	return &s
}

// ms is a duration in milliseconds, to the microsecond.
func ms(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}

// nonNil is s, or an empty slice for nil: a JSON array, never null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
