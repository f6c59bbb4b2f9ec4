package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteReplacesWholeAndLeavesNoTemporary(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "shard.safetensors")
	if err := os.WriteFile(path, []byte("old contents"), 0o644); err != nil {
		t.Fatal(err)
	}
	var seen string
	err := Write(path, []byte("new"), Options{BeforeWrite: func(f *os.File, data []byte) {
		seen = filepath.Base(f.Name())
		// Until the rename the old file is what readers see.
		if b, _ := os.ReadFile(path); string(b) != "old contents" {
			t.Errorf("before the rename %s holds %q", path, b)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Errorf("%s holds %q, want %q", path, b, "new")
	}
	if seen == "" || seen[0] != '.' {
		t.Errorf("temporary file %q, want a hidden name beside the target", seen)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the target", len(entries))
	}
	if err := SyncDir(dir); err != nil {
		t.Error(err)
	}
}

func TestWriteIntoMissingDirectoryFails(t *testing.T) {
	if err := Write(filepath.Join(t.TempDir(), "no", "such", "file"), []byte("x"), Options{}); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}
