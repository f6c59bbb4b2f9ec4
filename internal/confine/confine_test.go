package confine_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"stagecoach/internal/confine"
)

func TestPath(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(root, "in"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(root, "out-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "in"), filepath.Join(root, "in-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "f"), filepath.Join(root, "in", "file-link")); err != nil {
		t.Fatal(err)
	}
	r, err := confine.New(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		p    string
		want string // "" means refused
	}{
		{root, root},
		{"in", filepath.Join(root, "in")},
		{filepath.Join(root, "in", "not", "yet"), filepath.Join(root, "in", "not", "yet")},
		{"in-link/x", filepath.Join(root, "in-link", "x")},
		{outside, ""},
		{base, ""},
		{filepath.Join(root, "..", "outside"), ""},
		{"in/../in", ""}, // ".." is refused even when it stays inside
		{"out-link", ""},
		{"out-link/new/deeper", ""},
		{root + "-sibling", ""},
		{"in/\x00", ""},
	} {
		got, err := r.Path(tt.p)
		switch {
		case tt.want == "" && !errors.Is(err, confine.ErrOutside):
			t.Errorf("Path(%q) = %q, %v; want ErrOutside", tt.p, got, err)
		case tt.want != "" && (err != nil || got != tt.want):
			t.Errorf("Path(%q) = %q, %v; want %q", tt.p, got, err, tt.want)
		}
	}
	if _, err := r.MkdirAll("out-link/made"); !errors.Is(err, confine.ErrOutside) {
		t.Errorf("MkdirAll through a link out: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "made")); !os.IsNotExist(err) {
		t.Errorf("MkdirAll created a directory outside the root (%v)", err)
	}
	if _, err := r.Open(filepath.Join(root, "in", "file-link")); !errors.Is(err, confine.ErrOutside) {
		t.Errorf("Open of a link to a file outside: %v", err)
	}
}
