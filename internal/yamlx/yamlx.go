// Package yamlx decodes YAML strictly, with errors a person can act on.
//
// The YAML library reports an unknown key as "field X not found in type
// pkg.T", over several lines, naming Go types the user never wrote. Strict
// turns each problem into one line that names the YAML line, the key, the
// place in the document where it stands, the keys allowed there and the
// nearest one, so a typo is fixed at a glance.
package yamlx

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ErrEmpty is returned for a document with no content.
var ErrEmpty = errors.New("the file is empty")

// Strict decodes the first YAML document in data into v (a pointer),
// refusing keys that v's type does not declare. Errors are single lines
// such as
//
//	line 7: unknown key "bandwith_gib_s" in links[] (did you mean "bandwidth_gib_s"?)
func Strict(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(v)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, io.EOF):
		return ErrEmpty
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		// Syntax errors already name their line: "yaml: line 3: ...".
		return errors.New(oneLine(strings.TrimPrefix(err.Error(), "yaml: ")))
	}
	places := placesOf(reflect.TypeOf(v))
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root) // it decoded once already; a failure leaves paths unknown
	msgs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		msgs = append(msgs, explain(m, places, &root))
	}
	return errors.New(strings.Join(msgs, "; "))
}

// place is where a struct type stands in the document and the keys it has.
type place struct {
	path string
	keys []string
}

// placesOf maps every struct type reachable from t (by its Go name, as the
// YAML library prints it) to the first path where it appears.
func placesOf(t reflect.Type) map[string]place {
	out := map[string]place{}
	var walk func(t reflect.Type, path string)
	walk = func(t reflect.Type, path string) {
		t = deref(t)
		switch t.Kind() {
		case reflect.Slice, reflect.Array:
			walk(t.Elem(), path+"[]")
			return
		case reflect.Map:
			walk(t.Elem(), path+".*")
			return
		case reflect.Struct:
		default:
			return
		}
		if _, seen := out[t.String()]; seen {
			return
		}
		out[t.String()] = place{path: path} // before the fields: types may recur
		var keys []string
		for _, f := range fieldsOf(t) {
			keys = append(keys, f.key)
			child := f.key
			if path != "" {
				child = path + "." + f.key
			}
			walk(f.typ, child)
		}
		sort.Strings(keys)
		out[t.String()] = place{path: path, keys: keys}
	}
	walk(t, "")
	return out
}

type field struct {
	key string
	typ reflect.Type
}

// fieldsOf lists the YAML keys of struct type t, inline fields flattened.
func fieldsOf(t reflect.Type) []field {
	var out []field
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if inline := strings.Contains(","+opts+",", ",inline,"); inline && deref(f.Type).Kind() == reflect.Struct {
			out = append(out, fieldsOf(deref(f.Type))...)
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out = append(out, field{key: name, typ: f.Type})
	}
	return out
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

var (
	unknownField = regexp.MustCompile(`^line (\d+): field (.+) not found in type (\S+)$`)
	cannotDecode = regexp.MustCompile(`^line (\d+): cannot unmarshal !!(\w+) ` + "`" + `(.*)` + "`" + ` into (\S+)$`)
)

// explain rewrites one of the YAML library's type errors.
func explain(msg string, places map[string]place, root *yaml.Node) string {
	if m := unknownField.FindStringSubmatch(msg); m != nil {
		line, key, typ := m[1], m[2], m[3]
		p, ok := places[typ]
		if !ok {
			return fmt.Sprintf("line %s: unknown key %q", line, key)
		}
		path := p.path
		if n, err := strconv.Atoi(line); err == nil {
			if found, ok := pathOf(root, n, key, ""); ok {
				path = found
			}
		}
		where := "at the top level"
		if path != "" {
			where = "in " + path
		}
		s := fmt.Sprintf("line %s: unknown key %q %s", line, key, where)
		if near := nearest(key, p.keys); near != "" {
			return s + fmt.Sprintf(" (did you mean %q?)", near)
		}
		return s + " (valid keys: " + strings.Join(p.keys, ", ") + ")"
	}
	if m := cannotDecode.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("line %s: %q is not %s", m[1], m[3], goTypeWords(m[4]))
	}
	return oneLine(msg)
}

// pathOf finds the mapping key named key on the given line and returns
// the path of the mapping that holds it ("links[2]", "compute").
func pathOf(n *yaml.Node, line int, key, path string) (string, bool) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if p, ok := pathOf(c, line, key, path); ok {
				return p, true
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if p, ok := pathOf(c, line, key, fmt.Sprintf("%s[%d]", path, i)); ok {
				return p, true
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Line == line && k.Value == key {
				return path, true
			}
			child := k.Value
			if path != "" {
				child = path + "." + k.Value
			}
			if p, ok := pathOf(v, line, key, child); ok {
				return p, true
			}
		}
	}
	return "", false
}

// goTypeWords names a Go type the way a YAML author thinks of it.
func goTypeWords(t string) string {
	switch {
	case strings.HasPrefix(t, "float"):
		return "a number"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "a whole number"
	case t == "bool":
		return "true or false"
	case t == "string":
		return "a string"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["):
		return "a mapping"
	default:
		return "a mapping of keys"
	}
}

// nearest returns the key closest to s by edit distance, if it is close
// enough to be a likely typo.
func nearest(s string, keys []string) string {
	best, bestD := "", len(s)/3+2
	for _, k := range keys {
		if d := editDistance(s, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
