package model

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sampleTensors() []STensor {
	return []STensor{
		{Name: "a", Shape: []int{2, 3}, Data: []float32{1, 2, 3, 4, 5, -6}},
		{Name: "b.c", Shape: []int{1}, Data: []float32{float32(math.Pi)}},
		{Name: "empty", Shape: []int{0, 4}, Data: []float32{}},
	}
}

func TestSafetensorsRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	meta := map[string]string{"step": "7", "note": "hé"}
	if err := WriteSafetensors(&buf, sampleTensors(), meta); err != nil {
		t.Fatal(err)
	}
	ts, m, err := ReadSafetensors(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if m["step"] != "7" || m["note"] != "hé" {
		t.Fatalf("metadata %v", m)
	}
	want := sampleTensors()
	if len(ts) != len(want) {
		t.Fatalf("%d tensors", len(ts))
	}
	for i := range want {
		if ts[i].Name != want[i].Name || !sameShape(ts[i].Shape, want[i].Shape) || len(ts[i].Data) != len(want[i].Data) {
			t.Fatalf("tensor %d: %+v", i, ts[i])
		}
		for j := range want[i].Data {
			if math.Float32bits(ts[i].Data[j]) != math.Float32bits(want[i].Data[j]) {
				t.Fatalf("%s[%d] differs", want[i].Name, j)
			}
		}
	}
}

// TestSafetensorsPythonLayout decodes the bytes the way the reference
// Python reader does: u64 LE header size, JSON with dtype/shape/data_offsets
// relative to the end of the header, "__metadata__" string map, and raw
// little-endian F32 data.
func TestSafetensorsPythonLayout(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, sampleTensors(), map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	n := binary.LittleEndian.Uint64(b[:8])
	if (8+n)%8 != 0 {
		t.Errorf("data does not start 8-byte aligned: header %d", n)
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatal(err)
	}
	var meta map[string]string
	json.Unmarshal(hdr["__metadata__"], &meta)
	if meta["k"] != "v" {
		t.Fatalf("__metadata__ = %s", hdr["__metadata__"])
	}
	var e struct {
		Dtype       string  `json:"dtype"`
		Shape       []int   `json:"shape"`
		DataOffsets []int64 `json:"data_offsets"`
	}
	json.Unmarshal(hdr["b.c"], &e)
	if e.Dtype != "F32" || len(e.Shape) != 1 || e.Shape[0] != 1 || e.DataOffsets[0] != 24 || e.DataOffsets[1] != 28 {
		t.Fatalf("entry for b.c: %+v", e)
	}
	data := b[8+n:]
	if len(data) != 28 {
		t.Fatalf("data section %d bytes, want 28", len(data))
	}
	if got := math.Float32frombits(binary.LittleEndian.Uint32(data[24:])); got != float32(math.Pi) {
		t.Fatalf("b.c = %v", got)
	}
	if got := math.Float32frombits(binary.LittleEndian.Uint32(data[20:])); got != -6 {
		t.Fatalf("a[1,2] = %v", got)
	}
}

func stFile(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(b, header...), data...)
}

func TestSafetensorsErrors(t *testing.T) {
	var buf bytes.Buffer
	WriteSafetensors(&buf, sampleTensors(), nil)
	good := buf.Bytes()
	huge := binary.LittleEndian.AppendUint64(nil, math.MaxUint64)
	cases := map[string]struct {
		in   []byte
		want string
	}{
		"empty":          {nil, "shorter than"},
		"truncated data": {good[:len(good)-3], "truncated"},
		"truncated hdr":  {good[:20], "truncated"},
		"hostile length": {huge, "exceeds"},
		"unknown dtype":  {stFile(`{"x":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), `unknown dtype "Q7"`},
		"f16":            {stFile(`{"x":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}`, make([]byte, 2)), "not supported"},
		"size mismatch":  {stFile(`{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 8)), "needs 8 bytes"},
		"negative dim":   {stFile(`{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, make([]byte, 4)), "negative"},
		"huge shape":     {stFile(`{"x":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}`, make([]byte, 4)), "larger than the file"},
		"overlap":        {stFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"y":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}`, make([]byte, 8)), "overlap"},
		"offsets":        {stFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, make([]byte, 8)), "2 entries"},
		"not json":       {stFile(`[1,2]`, nil), "not a JSON object"},
		"bad metadata":   {stFile(`{"__metadata__":{"a":1}}`, nil), "__metadata__"},
	}
	for name, c := range cases {
		_, _, err := ReadSafetensors(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to mention %q", name, err, c.want)
		}
	}
}

// TestCheckpointWrongShape: loading a checkpoint into a model of another
// shape names the tensor and both shapes.
func TestCheckpointWrongShape(t *testing.T) {
	tr, _ := NewTrainer(smallTrainConfig(2, "adamw"))
	dir := t.TempDir()
	if err := tr.Save(dir, nil); err != nil {
		t.Fatal(err)
	}
	cfg := smallTrainConfig(2, "adamw")
	cfg.Model.Dim = 8
	other, _ := NewTrainer(cfg)
	_, err := LoadStates(filepath.Join(dir, WholeModelFile), other.States(), true)
	if err == nil || !strings.Contains(err.Error(), "has shape") {
		t.Fatalf("wrong shape: %v", err)
	}
	// A truncated or bit-flipped file fails its SHA256SUMS entry before
	// it is parsed; without SHA256SUMS it is not loaded either.
	p := filepath.Join(dir, ShardFile(0))
	good, _ := os.ReadFile(p)
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)-5] ^= 0x10
	for name, b := range map[string][]byte{"truncated": good[:len(good)/2], "flipped": flipped} {
		os.WriteFile(p, b, 0o644)
		if _, _, err := LoadTrainer(p); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), SumsFile) {
			t.Errorf("%s: %v, want ErrCorrupt against %s", name, err, SumsFile)
		}
	}
	os.WriteFile(p, good, 0o644)
	if _, _, err := LoadTrainer(p); err != nil {
		t.Fatalf("intact file: %v", err)
	}
	os.Remove(filepath.Join(dir, SumsFile))
	if _, _, err := LoadPipeline(filepath.Join(dir, WholeModelFile), 1, HeadFirst); err == nil || !strings.Contains(err.Error(), "sha256sum") {
		t.Errorf("without %s: %v, want a refusal naming the fix", SumsFile, err)
	}
}

// TestResumeIsExact: 4 steps straight equal 2 steps, save, load, 2 steps.
func TestResumeIsExact(t *testing.T) {
	cfg := smallTrainConfig(2, "lamb")
	cfg.Stages = 2
	a, _ := NewTrainer(cfg)
	srcA := windowSource(5, 256)
	for i := 0; i < 4; i++ {
		if _, err := a.TrainStep(srcA); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := NewTrainer(cfg)
	srcB := windowSource(5, 256)
	for i := 0; i < 2; i++ {
		b.TrainStep(srcB)
	}
	dir := t.TempDir()
	if err := b.Save(dir, map[string]string{"data": "x"}); err != nil {
		t.Fatal(err)
	}
	c, meta, err := LoadTrainer(filepath.Join(dir, WholeModelFile))
	if err != nil {
		t.Fatal(err)
	}
	if meta["data"] != "x" || c.Step != 2 || c.Cfg.Stages != 2 {
		t.Fatalf("meta %v step %d", meta, c.Step)
	}
	for i := 0; i < 2; i++ {
		c.TrainStep(srcB) // srcB continues where b stopped: the data position
	}
	pa, pc := a.Pipe.Params(), c.Pipe.Params()
	for i := range pa {
		for j := range pa[i].W {
			if math.Float32bits(pa[i].W[j]) != math.Float32bits(pc[i].W[j]) {
				t.Fatalf("%s[%d] differs after resume", pa[i].Name, j)
			}
		}
	}
	// every shard file loads into the matching shard of a fresh split
	p, _, err := LoadPipeline(filepath.Join(dir, WholeModelFile), 2, HeadFirst)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range p.Shards {
		var st []ParamState
		for _, t := range s.Params() {
			st = append(st, ParamState{T: t})
		}
		if _, err := LoadStates(filepath.Join(dir, ShardFile(i)), st, false); err != nil {
			t.Fatal(err)
		}
	}
}

func FuzzReadSafetensors(f *testing.F) {
	var buf bytes.Buffer
	WriteSafetensors(&buf, sampleTensors(), map[string]string{"a": "b"})
	f.Add(buf.Bytes())
	f.Add(stFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)))
	f.Fuzz(func(t *testing.T, b []byte) {
		ts, _, err := ReadSafetensors(b)
		if err != nil {
			return
		}
		// anything accepted must survive a rewrite and read back equal
		var out bytes.Buffer
		if err := WriteSafetensors(&out, ts, nil); err != nil {
			t.Fatalf("accepted tensors do not rewrite: %v", err)
		}
		ts2, _, err := ReadSafetensors(out.Bytes())
		if err != nil || len(ts2) != len(ts) {
			t.Fatalf("rewrite does not read back: %v", err)
		}
	})
}

// FuzzOpenSafetensors checks the file reader (header checked against the
// file's size, tensors read by their spans) against the in-memory one:
// both accept or refuse the same bytes and read the same tensors.
func FuzzOpenSafetensors(f *testing.F) {
	var buf bytes.Buffer
	WriteSafetensors(&buf, sampleTensors(), map[string]string{"a": "b"})
	f.Add(buf.Bytes())
	f.Add(stFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)))
	f.Add(stFile(`{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 3)))
	f.Add(binary.LittleEndian.AppendUint64(nil, 1<<40))
	path := filepath.Join(f.TempDir(), "f.safetensors")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		want, wantMeta, errMem := ReadSafetensors(b)
		got, meta, errFile := ReadSafetensorsFile(path)
		if (errMem == nil) != (errFile == nil) {
			t.Fatalf("readers disagree: in memory %v, from the file %v", errMem, errFile)
		}
		if errMem != nil {
			return
		}
		if len(got) != len(want) || len(meta) != len(wantMeta) {
			t.Fatalf("readers disagree: %d vs %d tensors, %d vs %d metadata keys", len(got), len(want), len(meta), len(wantMeta))
		}
		for i := range got {
			if got[i].Name != want[i].Name || !sameShape(got[i].Shape, want[i].Shape) || len(got[i].Data) != len(want[i].Data) {
				t.Fatalf("tensor %d: %q %v vs %q %v", i, got[i].Name, got[i].Shape, want[i].Name, want[i].Shape)
			}
			for j := range got[i].Data {
				if math.Float32bits(got[i].Data[j]) != math.Float32bits(want[i].Data[j]) {
					t.Fatalf("tensor %q value %d differs", got[i].Name, j)
				}
			}
		}
	})
}
