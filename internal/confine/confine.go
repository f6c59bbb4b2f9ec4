// Package confine keeps file paths named by other processes (a checkpoint
// directory in a request or in an etcd listing) inside a root directory:
// lexically (absolute, clean, no "..") and through symlinks (the deepest
// existing ancestor of the path, resolved, must lie under the resolved
// root), so a planted link cannot lead a write, read or delete outside.
package confine

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrOutside means a path lies outside its root.
var ErrOutside = errors.New("outside the root")

// Root is an absolute, clean directory paths are confined to.
type Root struct {
	dir string
}

// New makes dir (made absolute and clean) a root.
func New(dir string) (Root, error) {
	if dir == "" {
		return Root{}, errors.New("confine: empty root")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Root{}, fmt.Errorf("confine: root %q: %w", dir, err)
	}
	return Root{dir: abs}, nil
}

// Dir is the root's absolute path.
func (r Root) Dir() string { return r.dir }

// Path resolves p (relative paths under the root) and checks that it lies
// under the root, the root itself included. It returns the clean absolute
// path. p need not exist.
func (r Root) Path(p string) (string, error) {
	if r.dir == "" {
		return "", errors.New("confine: no root")
	}
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("%w: path %q has a NUL byte", ErrOutside, p)
	}
	for _, part := range strings.Split(filepath.ToSlash(p), "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %s has a \"..\" element (root %s)", ErrOutside, p, r.dir)
		}
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(r.dir, p)
	}
	p = filepath.Clean(p)
	if !within(r.dir, p) {
		return "", fmt.Errorf("%w: %s is not under %s", ErrOutside, p, r.dir)
	}
	// Symlinks: the deepest existing ancestor (or p itself), resolved,
	// must stay under the resolved root.
	root, err := filepath.EvalSymlinks(r.dir)
	if errors.Is(err, fs.ErrNotExist) {
		// Nothing under a missing root exists yet: nothing to follow.
		return p, nil
	}
	if err != nil {
		return "", fmt.Errorf("confine: root %s: %w", r.dir, err)
	}
	q := p
	for {
		real, err := filepath.EvalSymlinks(q)
		if err == nil {
			if !within(root, real) {
				return "", fmt.Errorf("%w: %s resolves through a symlink to %s, not under %s", ErrOutside, p, real, root)
			}
			return p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("confine: %s: %w", q, err)
		}
		up := filepath.Dir(q)
		if up == q || !within(r.dir, up) {
			return p, nil
		}
		q = up
	}
}

// MkdirAll confines dir, creates it and checks it again once it exists
// (a link planted in between is caught).
func (r Root) MkdirAll(dir string) (string, error) {
	p, err := r.Path(dir)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(p, 0o755); err != nil {
		return "", err
	}
	return r.Path(p)
}

// Open opens the regular file at path for reading after confining it; a
// symlink as the last element is refused.
func (r Root) Open(path string) (*os.File, error) {
	p, err := r.Path(path)
	if err != nil {
		return nil, err
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file (%v)", ErrOutside, p, fi.Mode().Type())
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	if fi2, err := f.Stat(); err != nil || !os.SameFile(fi, fi2) {
		f.Close()
		return nil, fmt.Errorf("%w: %s changed while it was opened", ErrOutside, p)
	}
	return f, nil
}

// within reports whether p is root or lies under it (both clean and
// absolute).
func within(root, p string) bool {
	if p == root {
		return true
	}
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}
