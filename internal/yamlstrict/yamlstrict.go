// Package yamlstrict decodes YAML configuration strictly: a key that the
// target struct does not define is an error naming the key and its line,
// never a silently ignored setting.
package yamlstrict

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// An UnknownKeyError reports a key the configuration does not define.
type UnknownKeyError struct {
	Line  int
	Key   string
	Path  string   // dotted path of the mapping holding Key; "" at the top
	Known []string // keys that mapping accepts
}

func (e *UnknownKeyError) Error() string {
	where := ""
	if e.Path != "" {
		where = " under " + e.Path
	}
	return fmt.Sprintf("line %d: unknown key %q%s (known keys: %s)", e.Line, e.Key, where, strings.Join(e.Known, ", "))
}

// ErrEmpty is returned for a document with no content.
var ErrEmpty = errors.New("empty configuration")

// Decode decodes the YAML document data into v, a pointer to a struct
// whose fields carry `yaml:"name"` tags.
func Decode(data []byte, v any) error {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return err
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return ErrEmpty
	}
	if err := check(&root, reflect.TypeOf(v), ""); err != nil {
		return err
	}
	return root.Decode(v)
}

// check walks n beside the Go type t it will decode into.
func check(n *yaml.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if err := check(c, t, path); err != nil {
				return err
			}
		}
	case yaml.AliasNode:
		return check(n.Alias, t, path)
	case yaml.SequenceNode:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for _, c := range n.Content {
				if err := check(c, t.Elem(), path); err != nil {
					return err
				}
			}
		}
	case yaml.MappingNode:
		switch t.Kind() {
		case reflect.Map:
			for i := 1; i < len(n.Content); i += 2 {
				if err := check(n.Content[i], t.Elem(), join(path, n.Content[i-1].Value)); err != nil {
					return err
				}
			}
		case reflect.Struct:
			fields := fieldsOf(t)
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				ft, ok := fields[k.Value]
				if !ok {
					known := make([]string, 0, len(fields))
					for name := range fields {
						known = append(known, name)
					}
					slices.Sort(known)
					return &UnknownKeyError{Line: k.Line, Key: k.Value, Path: path, Known: known}
				}
				if err := check(n.Content[i+1], ft, join(path, k.Value)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// fieldsOf maps the YAML names of t's exported fields to their types.
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type)
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = f.Type
	}
	return fields
}
