package data

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func manyFiles() map[string]string {
	files := map[string]string{}
	for i := 0; i < 40; i++ {
		files[filepath.Join("pkg", string(rune('a'+i%26))+strings.Repeat("x", i/26), "f.go")] = strings.Repeat("package x // file\n", 3+i)
	}
	files["bin.dat"] = "\x00\x01\x02"
	files[".hidden/secret.txt"] = "nope"
	return files
}

func TestLoadDeterministicSplit(t *testing.T) {
	dir := writeTree(t, manyFiles())
	a, err := Load(dir, Options{ValPct: 20})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Load(dir, Options{ValPct: 20})
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Train) != string(b.Train) || string(a.Val) != string(b.Val) {
		t.Fatal("two loads of the same tree differ")
	}
	if a.TrainFiles+a.ValFiles != 40 {
		t.Fatalf("loaded %d+%d files, want 40 (binary and hidden files skipped)", a.TrainFiles, a.ValFiles)
	}
	if strings.Contains(string(a.Train)+string(a.Val), "nope") {
		t.Fatal("hidden directory was read")
	}
	// the split is FNV-1a 32 of the slash path mod 100, fixed forever
	// (values computed independently): 24, 52, 99
	if IsVal("pkg/a/f.go", 24) || !IsVal("pkg/a/f.go", 25) || !IsVal("fmt/print.go", 53) || IsVal("net/http/server.go", 99) {
		t.Fatal("split hash changed")
	}
}

func TestLoadErrors(t *testing.T) {
	if _, err := Load(t.TempDir(), Options{}); err == nil || !strings.Contains(err.Error(), "no text files") {
		t.Fatalf("empty dir: %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing"), Options{}); err == nil {
		t.Fatal("missing dir: no error")
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, []byte("x"), 0o644)
	if _, err := Load(f, Options{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("file as dir: %v", err)
	}
	if os.Getuid() != 0 { // root reads anything
		d := writeTree(t, map[string]string{"a.txt": "hello"})
		os.Chmod(filepath.Join(d, "a.txt"), 0)
		if _, err := Load(d, Options{}); err == nil || !strings.Contains(err.Error(), "no readable") {
			t.Fatalf("unreadable: %v", err)
		}
	}
}

func TestMaxBytes(t *testing.T) {
	dir := writeTree(t, manyFiles())
	c, err := Load(dir, Options{MaxBytes: 2000, ValPct: 20})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Truncated || len(c.Train)+len(c.Val) > 2000+2*(c.TrainFiles+c.ValFiles) {
		t.Fatalf("cap not applied: truncated=%v, %d bytes", c.Truncated, len(c.Train)+len(c.Val))
	}
}

func TestSamplerResume(t *testing.T) {
	text := []byte(strings.Repeat("the quick brown fox jumps over the lazy dog. ", 50))
	a := NewSampler(text, 7)
	buf := make([]int32, 3*9)
	for i := 0; i < 5; i++ {
		if err := a.Fill(buf, 9); err != nil {
			t.Fatal(err)
		}
	}
	state := a.State()
	want := make([]int32, len(buf))
	a.Fill(want, 9)

	b := NewSampler(text, 999)
	if err := b.SetState(state); err != nil {
		t.Fatal(err)
	}
	if b.Drawn != 15 {
		t.Fatalf("drawn %d, want 15", b.Drawn)
	}
	got := make([]int32, len(buf))
	b.Fill(got, 9)
	for i := range got {
		if got[i] != want[i] {
			t.Fatal("restored sampler draws different windows")
		}
	}
	if err := b.SetState("zz/1"); err == nil {
		t.Fatal("bad state accepted")
	}
}

func TestEvalWindowsAndEntropy(t *testing.T) {
	w, err := EvalWindows([]byte("abcdefghij"), 3, 4)
	if err != nil {
		t.Fatal(err)
	}
	if string(rune(w[0])) != "a" || string(rune(w[len(w)-1])) != "j" || len(w) != 12 {
		t.Fatalf("windows %v", w)
	}
	if h := UnigramEntropy([]byte("abab")); h < 0.693 || h > 0.694 {
		t.Fatalf("entropy %v, want ln 2", h)
	}
}

// A file larger than the budget left is not loaded (nor read whole): the
// load stops there, truncated, with the files before it; a binary file
// past the budget is skipped as binary. An exactly spent budget stops at
// the next text file.
func TestBudgetStopsAtALargeFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 8 {
		write(fmt.Sprintf("a%d.txt", i), []byte(strings.Repeat("a", 25)))
	}
	write("b.bin", append(bytes.Repeat([]byte{'x'}, 10), make([]byte, 1<<20)...))
	write("c.txt", []byte(strings.Repeat("é", 1<<20))) // 2 MiB of text
	write("d.txt", []byte("never reached"))
	c, err := Load(dir, Options{MaxBytes: 1000, ValPct: 50})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Truncated || c.TrainFiles+c.ValFiles != 8 || len(c.Train)+len(c.Val) != 8*27 {
		t.Fatalf("truncated=%v files=%d bytes=%d, want the eight small files alone", c.Truncated, c.TrainFiles+c.ValFiles, len(c.Train)+len(c.Val))
	}
	c, err = Load(dir, Options{MaxBytes: 200, ValPct: 50})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Truncated || c.TrainFiles+c.ValFiles != 8 {
		t.Fatalf("spent budget: truncated=%v files=%d", c.Truncated, c.TrainFiles+c.ValFiles)
	}
}
