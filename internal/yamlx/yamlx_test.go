package yamlx

import (
	"errors"
	"strings"
	"testing"
)

type cost struct {
	Bandwidth float64 `yaml:"bandwidth_gib_s"`
	LatencyMS float64 `yaml:"latency_ms,omitempty"`
}

type link struct {
	A    string `yaml:"a"`
	cost `yaml:",inline"`
}

type doc struct {
	Name    string          `yaml:"name"`
	Links   []link          `yaml:"links"`
	Default *link           `yaml:"default_link"`
	ByName  map[string]link `yaml:"by_name"`
	Skip    int             `yaml:"-"`
}

func TestStrictNamesLineKeyPlaceAndNearestKey(t *testing.T) {
	cases := []struct {
		name, in string
		want     []string
	}{
		{"typo in a list item", "name: x\nlinks:\n  - {a: e, bandwith_gib_s: 1}\n",
			[]string{`line 3: unknown key "bandwith_gib_s" in links[0] (did you mean "bandwidth_gib_s"?)`}},
		{"typo at the top", "nmae: x\n",
			[]string{`line 1: unknown key "nmae" at the top level (did you mean "name"?)`}},
		{"nothing near", "name: x\ndefault_link: {zzzzzzzz: 1}\n",
			[]string{`line 2: unknown key "zzzzzzzz" in default_link (valid keys: a, bandwidth_gib_s, latency_ms)`}},
		{"map values", "by_name:\n  k: {latency: 3}\n",
			[]string{`line 2: unknown key "latency" in by_name.k (did you mean "latency_ms"?)`}},
		{"wrong type", "links:\n  - {a: e, bandwidth_gib_s: fast}\n",
			[]string{`line 2: "fast" is not a number`}},
		{"two problems on one line", "nmae: x\nlinks:\n  - {latency_m: 1}\n",
			[]string{`line 1: unknown key "nmae"`, `; line 3: unknown key "latency_m" in links[0] (did you mean "latency_ms"?)`}},
		{"syntax", "name: [x\n", []string{"line 1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var d doc
			err := Strict([]byte(c.in), &d)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") || strings.Contains(msg, "yamlx.") || strings.Contains(msg, "not found in type") {
				t.Errorf("error is not one line in YAML terms: %q", msg)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
		})
	}
}

func TestStrictDecodesAndReportsEmpty(t *testing.T) {
	var d doc
	if err := Strict([]byte("name: x\nlinks: [{a: e, bandwidth_gib_s: 2}]\n"), &d); err != nil {
		t.Fatal(err)
	}
	if d.Name != "x" || len(d.Links) != 1 || d.Links[0].Bandwidth != 2 || d.Links[0].LatencyMS != 0 {
		t.Fatalf("decoded %+v", d)
	}
	if err := Strict(nil, &d); !errors.Is(err, ErrEmpty) {
		t.Fatalf("empty input: %v, want ErrEmpty", err)
	}
}

func TestEditDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"abc", "", 3}, {"kitten", "sitting", 3}, {"bandwith", "bandwidth", 1}, {"ab", "ba", 2}} {
		if got := editDistance(c.a, c.b); got != c.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, got, c.d)
		}
	}
}

func FuzzStrict(f *testing.F) {
	f.Add([]byte("name: x\nlinks:\n  - {a: e, bandwith_gib_s: 1}\n"))
	f.Add([]byte("by_name: {k: {latency: [1, 2]}}"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var d doc
		if err := Strict(in, &d); err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line error: %q", err)
		}
	})
}
