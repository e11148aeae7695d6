package yamlstrict

import (
	"errors"
	"strings"
	"testing"
)

type conf struct {
	Relay    string              `yaml:"relay"`
	Services map[string]string   `yaml:"services"`
	Clients  map[string][]string `yaml:"clients"`
	Nested   struct {
		Port int `yaml:"port"`
	} `yaml:"nested"`
}

func TestDecode(t *testing.T) {
	var c conf
	err := Decode([]byte("relay: r:443\nservices:\n  http: 127.0.0.1:80\nclients:\n  abc: [http]\nnested:\n  port: 7\n"), &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Relay != "r:443" || c.Services["http"] != "127.0.0.1:80" || c.Clients["abc"][0] != "http" || c.Nested.Port != 7 {
		t.Fatalf("decoded %+v", c)
	}
}

func TestUnknownKey(t *testing.T) {
	tests := []struct {
		doc  string
		line int
		key  string
		path string
	}{
		{"relay: r:443\nrelya_id: x\n", 2, "relya_id", ""},
		{"relay: r:443\nnested:\n  port: 1\n  prot: 2\n", 4, "prot", "nested"},
	}
	for _, tc := range tests {
		var c conf
		err := Decode([]byte(tc.doc), &c)
		var uk *UnknownKeyError
		if !errors.As(err, &uk) {
			t.Fatalf("%q: err = %v, want UnknownKeyError", tc.doc, err)
		}
		if uk.Line != tc.line || uk.Key != tc.key || uk.Path != tc.path {
			t.Fatalf("%q: got line %d key %q path %q", tc.doc, uk.Line, uk.Key, uk.Path)
		}
		if !strings.Contains(err.Error(), "line ") || !strings.Contains(err.Error(), tc.key) {
			t.Fatalf("message %q does not name the line and key", err)
		}
	}
}

func TestRejects(t *testing.T) {
	for _, doc := range []string{"", "# only a comment\n", "relay: [1, 2\n", "relay: a\nrelay: b\n", "- a\n- b\n"} {
		var c conf
		if err := Decode([]byte(doc), &c); err == nil {
			t.Errorf("%q decoded without error", doc)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("relay: r:443\nservices:\n  http: 127.0.0.1:80\nclients:\n  abc: [http]\n"))
	f.Add([]byte("a: &x {b: *x}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c conf
		Decode(b, &c)
	})
}
