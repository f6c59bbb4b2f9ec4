// Package atomicfile writes files so that a crash never leaves a
// half-written file under the final name: the bytes go to a unique
// temporary file in the same directory, which is synced and then renamed
// into place. Checkpoint shards and stored plans are written this way.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Options tune Write.
type Options struct {
	// BeforeWrite, when set, is called with the open temporary file and
	// the bytes about to be written; fault tests use it to crash midway.
	BeforeWrite func(f *os.File, data []byte)
}

// Write writes data to path through a synced temporary file and a
// rename. A failed write leaves no temporary file behind.
func Write(path string, data []byte, opt Options) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if opt.BeforeWrite != nil {
		opt.BeforeWrite(f, data)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}

// SyncDir syncs a directory, so that the renames into it survive a
// power cut.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
