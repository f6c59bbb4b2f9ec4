package model

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
)

// Safetensors format (as the Python library reads it): an 8-byte
// little-endian header length N, N bytes of JSON, then the tensor bytes. The
// JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin,
// end]} with offsets relative to the first byte after the header, plus an
// optional "__metadata__" map of strings. We write F32 only, pad the header
// with spaces to a multiple of 8 (as the reference writer does), and lay the
// tensors out contiguously in the order given.

// MaxHeaderLen bounds the JSON header we accept, so a hostile length field
// cannot make us allocate without limit.
const MaxHeaderLen = 100 << 20

// STensor is one named float32 tensor as stored in a safetensors file.
type STensor struct {
	Name  string
	Shape []int
	Data  []float32
}

type stEntry struct {
	Dtype       string  `json:"dtype"`
	Shape       []int64 `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

// WriteSafetensors writes tensors and metadata in safetensors format.
func WriteSafetensors(w io.Writer, tensors []STensor, meta map[string]string) error {
	header := map[string]any{}
	if len(meta) > 0 {
		header["__metadata__"] = meta
	}
	var off int64
	for _, t := range tensors {
		if t.Name == "__metadata__" || t.Name == "" {
			return fmt.Errorf("safetensors: invalid tensor name %q", t.Name)
		}
		if _, dup := header[t.Name]; dup {
			return fmt.Errorf("safetensors: duplicate tensor %q", t.Name)
		}
		n := 1
		for _, d := range t.Shape {
			n *= d
		}
		if n != len(t.Data) {
			return fmt.Errorf("safetensors: tensor %q: shape %v holds %d values, data has %d", t.Name, t.Shape, n, len(t.Data))
		}
		shape := make([]int64, len(t.Shape))
		for i, d := range t.Shape {
			shape[i] = int64(d)
		}
		end := off + 4*int64(n)
		header[t.Name] = stEntry{Dtype: "F32", Shape: shape, DataOffsets: []int64{off, end}}
		off = end
	}
	hj, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for len(hj)%8 != 0 {
		hj = append(hj, ' ')
	}
	buf := make([]byte, 8, 8+len(hj)+int(off))
	binary.LittleEndian.PutUint64(buf, uint64(len(hj)))
	buf = append(buf, hj...)
	for _, t := range tensors {
		for _, v := range t.Data {
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
		}
	}
	_, err = w.Write(buf)
	return err
}

// knownDtypes are the safetensors dtype names; only F32 can be loaded here.
var knownDtypes = map[string]bool{
	"BOOL": true, "U8": true, "I8": true, "F8_E5M2": true, "F8_E4M3": true, "I16": true,
	"U16": true, "F16": true, "BF16": true, "I32": true, "U32": true, "F32": true,
	"F64": true, "I64": true, "U64": true,
}

// ReadSafetensors parses a whole safetensors file held in memory. It
// validates everything (header length, JSON, dtypes, shapes, offsets) and
// returns an error, never panics, on malformed input. Tensors come back in
// data-offset order.
func ReadSafetensors(b []byte) ([]STensor, map[string]string, error) {
	if len(b) < 8 {
		return nil, nil, fmt.Errorf("safetensors: file is %d bytes, shorter than the 8-byte header length", len(b))
	}
	hl := binary.LittleEndian.Uint64(b)
	if hl > MaxHeaderLen {
		return nil, nil, fmt.Errorf("safetensors: header length %d exceeds the %d limit", hl, MaxHeaderLen)
	}
	if hl > uint64(len(b)-8) {
		return nil, nil, fmt.Errorf("safetensors: truncated: header length %d but only %d bytes follow", hl, len(b)-8)
	}
	hj := b[8 : 8+hl]
	body := b[8+hl:]
	if len(bytes.TrimSpace(hj)) == 0 || bytes.TrimSpace(hj)[0] != '{' {
		return nil, nil, errors.New("safetensors: header is not a JSON object")
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(hj, &raw); err != nil {
		return nil, nil, fmt.Errorf("safetensors: bad header JSON: %w", err)
	}
	var meta map[string]string
	if m, ok := raw["__metadata__"]; ok {
		if err := json.Unmarshal(m, &meta); err != nil {
			return nil, nil, fmt.Errorf("safetensors: __metadata__ must map strings to strings: %w", err)
		}
		delete(raw, "__metadata__")
	}
	type span struct {
		name       string
		shape      []int
		begin, end int64
	}
	spans := make([]span, 0, len(raw))
	for name, r := range raw {
		if name == "" {
			return nil, nil, errors.New("safetensors: empty tensor name")
		}
		var e stEntry
		if err := json.Unmarshal(r, &e); err != nil {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: bad entry: %w", name, err)
		}
		if !knownDtypes[e.Dtype] {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: unknown dtype %q", name, e.Dtype)
		}
		if e.Dtype != "F32" {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: dtype %s not supported (only F32)", name, e.Dtype)
		}
		if len(e.DataOffsets) != 2 {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: data_offsets must have 2 entries, has %d", name, len(e.DataOffsets))
		}
		n := int64(1)
		shape := make([]int, len(e.Shape))
		for i, d := range e.Shape {
			if d < 0 {
				return nil, nil, fmt.Errorf("safetensors: tensor %q: negative dimension %d", name, d)
			}
			if d > 0 && n > (int64(len(body))/4+1)/d {
				return nil, nil, fmt.Errorf("safetensors: tensor %q: shape %v is larger than the file", name, e.Shape)
			}
			n *= d
			shape[i] = int(d)
		}
		begin, end := e.DataOffsets[0], e.DataOffsets[1]
		if begin < 0 || end < begin || end > int64(len(body)) {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: data_offsets [%d,%d] outside the %d data bytes (truncated file?)", name, begin, end, len(body))
		}
		if end-begin != 4*n {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: shape %v needs %d bytes, offsets span %d", name, e.Shape, 4*n, end-begin)
		}
		spans = append(spans, span{name, shape, begin, end})
	}
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].name < spans[j].name
	})
	for i := 1; i < len(spans); i++ {
		if spans[i].begin < spans[i-1].end {
			return nil, nil, fmt.Errorf("safetensors: tensors %q and %q overlap", spans[i-1].name, spans[i].name)
		}
	}
	out := make([]STensor, len(spans))
	for i, s := range spans {
		d := make([]float32, (s.end-s.begin)/4)
		src := body[s.begin:s.end]
		for j := range d {
			d[j] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*j:]))
		}
		out[i] = STensor{Name: s.name, Shape: s.shape, Data: d}
	}
	return out, meta, nil
}

// ReadSafetensorsFile reads and parses a safetensors file.
func ReadSafetensorsFile(path string) ([]STensor, map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	ts, meta, err := ReadSafetensors(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return ts, meta, nil
}

// WriteSafetensorsFile writes atomically (temp file + rename) so a crash
// never leaves a half-written checkpoint under the final name.
func WriteSafetensorsFile(path string, tensors []STensor, meta map[string]string) error {
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, tensors, meta); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
