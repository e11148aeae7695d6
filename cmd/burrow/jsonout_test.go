package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// A jsonShape names the keys a --json object must have and the JSON type
// of each: "string", "number", "bool", "array", "object", "time" (an RFC
// 3339 string); a type ending in "?" may also be null.
type jsonShape map[string]string

// parseJSON parses out as one JSON document and returns it.
func parseJSON(t *testing.T, what, out string) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: stdout is not JSON (%v): %q", what, err, out)
	}
	if dec.More() {
		t.Fatalf("%s: more than one JSON document on stdout: %q", what, out)
	}
	return v
}

// checkShape checks that object v has every key of shape, of its type.
func checkShape(t *testing.T, what string, v any, shape jsonShape) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: %T, want a JSON object", what, v)
	}
	for key, typ := range shape {
		val, ok := m[key]
		if !ok {
			t.Errorf("%s: no key %q in %v", what, key, m)
			continue
		}
		nullable := strings.HasSuffix(typ, "?")
		typ = strings.TrimSuffix(typ, "?")
		if val == nil {
			if !nullable {
				t.Errorf("%s: %s is null, want a %s", what, key, typ)
			}
			continue
		}
		var good bool
		switch typ {
		case "string":
			_, good = val.(string)
		case "time":
			s, _ := val.(string)
			_, err := time.Parse(time.RFC3339Nano, s)
			good = err == nil
		case "number":
			_, good = val.(float64)
		case "bool":
			_, good = val.(bool)
		case "array":
			_, good = val.([]any)
		case "object":
			_, good = val.(map[string]any)
		default:
			t.Fatalf("bad shape type %q", typ)
		}
		if !good {
			t.Errorf("%s: %s = %#v, want a %s", what, key, val, typ)
		}
	}
	return m
}

// checkArray checks that v is an array of n objects of shape.
func checkArray(t *testing.T, what string, v any, n int, shape jsonShape) []map[string]any {
	t.Helper()
	a, ok := v.([]any)
	if !ok || len(a) != n {
		t.Fatalf("%s: %#v, want an array of %d", what, v, n)
	}
	var out []map[string]any
	for _, e := range a {
		out = append(out, checkShape(t, what, e, shape))
	}
	return out
}
