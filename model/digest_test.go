package model_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"stagecoach/model"
)

// shardBytes encodes a checkpoint file of n float32 values.
func shardBytes(t testing.TB, n int) []byte {
	t.Helper()
	data := make([]float32, n)
	for i := range data {
		data[i] = float32(i) * 0.5
	}
	var b bytes.Buffer
	if err := model.WriteSafetensors(&b, []model.STensor{{Name: "w", Shape: []int{n}, Data: data}}, map[string]string{model.MetaFormat: model.FormatV1}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestReadVerified(t *testing.T) {
	good := shardBytes(t, 1000)
	d := model.DigestOf(good)
	path := filepath.Join(t.TempDir(), "shard.safetensors")
	read := func(b []byte, want model.Digest, limit int64) error {
		t.Helper()
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		got, err := model.ReadVerified(f, path, want, limit)
		if err == nil {
			if _, _, err = model.ParseVerified(got, path); err == nil && !bytes.Equal(got, b) {
				t.Fatal("verified bytes differ from the file's")
			}
		}
		return err
	}
	if err := read(good, d, 1<<20); err != nil {
		t.Fatalf("intact file: %v", err)
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)-3] ^= 1
	for _, tt := range []struct {
		name  string
		b     []byte
		want  model.Digest
		limit int64
		msg   string
	}{
		{"one bit flipped", flipped, d, 1 << 20, "SHA-256"},
		{"truncated", good[:len(good)-4], d, 1 << 20, "bytes, its listing says"},
		{"longer", append(bytes.Clone(good), 0), d, 1 << 20, "bytes, its listing says"},
		{"listed size beyond the limit", good, d, int64(len(good)) - 1, "exceeds"},
		{"matching junk", []byte("junk"), model.DigestOf([]byte("junk")), 1 << 20, "safetensors"},
	} {
		err := read(tt.b, tt.want, tt.limit)
		if !errors.Is(err, model.ErrCorrupt) || !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v, want ErrCorrupt naming the file and %q", tt.name, err, tt.msg)
		}
	}
}

// BenchmarkReadShard reads a 64 MiB shard plainly and through
// ReadVerified (size check and SHA-256 while reading), then parses it.
func BenchmarkReadShard(b *testing.B) {
	data := shardBytes(b, 16<<20)
	path := filepath.Join(b.TempDir(), "shard.safetensors")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Fatal(err)
	}
	d := model.DigestOf(data)
	b.Run("plain", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, _, err := model.ReadSafetensorsFile(path); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("verified", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			buf, err := model.ReadVerified(f, path, d, int64(len(data)))
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
			if _, _, err := model.ParseVerified(buf, path); err != nil {
				b.Fatal(err)
			}
		}
	})
}
