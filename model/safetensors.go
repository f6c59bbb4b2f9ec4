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

// MaxTensorDataBytes bounds the tensor bytes ReadSafetensorsFile loads
// into memory (4 GiB: the weights and moments of a model at
// DefaultMaxParams); readers that know the shapes they want read only
// those, through OpenSafetensors.
const MaxTensorDataBytes = 4 << 30

// stSpan is one tensor's place in the data section.
type stSpan struct {
	name       string
	shape      []int
	begin, end int64
}

// parseHeader validates a safetensors JSON header against the size of
// the data section that follows it (dataLen bytes): known dtypes, F32
// only, shapes whose byte size equals their offsets' span, offsets inside
// the data, no overlaps. Spans come back in data-offset order. Nothing it
// allocates is larger than the header itself.
func parseHeader(hj []byte, dataLen int64) ([]stSpan, map[string]string, error) {
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
	spans := make([]stSpan, 0, len(raw))
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
			if d > 0 && n > (dataLen/4+1)/d {
				return nil, nil, fmt.Errorf("safetensors: tensor %q: shape %v is larger than the file", name, e.Shape)
			}
			n *= d
			shape[i] = int(d)
		}
		begin, end := e.DataOffsets[0], e.DataOffsets[1]
		if begin < 0 || end < begin || end > dataLen {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: data_offsets [%d,%d] outside the %d data bytes (truncated file?)", name, begin, end, dataLen)
		}
		if end-begin != 4*n {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: shape %v needs %d bytes, offsets span %d", name, e.Shape, 4*n, end-begin)
		}
		spans = append(spans, stSpan{name, shape, begin, end})
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
	return spans, meta, nil
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
	body := b[8+hl:]
	spans, meta, err := parseHeader(b[8:8+hl], int64(len(body)))
	if err != nil {
		return nil, nil, err
	}
	out := make([]STensor, len(spans))
	for i, s := range spans {
		d := make([]float32, (s.end-s.begin)/4)
		decodeF32(d, body[s.begin:s.end])
		out[i] = STensor{Name: s.name, Shape: s.shape, Data: d}
	}
	return out, meta, nil
}

func decodeF32(dst []float32, src []byte) {
	for j := range dst {
		dst[j] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*j:]))
	}
}

// SafetensorsFile is an open safetensors file whose header has been read
// and checked against the file's size (os.Stat), without reading any
// tensor: a hostile header cannot make it allocate more than the header's
// own bytes, and a large (even sparse) file costs nothing until a tensor
// of it is read, by exactly its span.
type SafetensorsFile struct {
	path   string
	f      *os.File
	data   *io.SectionReader
	spans  []stSpan
	byName map[string]int
	// Meta is the header's __metadata__ (nil when absent).
	Meta map[string]string
}

// OpenSafetensors opens path and validates its header. Close it.
func OpenSafetensors(path string) (*SafetensorsFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := parseFile(path, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return st, nil
}

func parseFile(path string, f *os.File) (*SafetensorsFile, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: safetensors: not a regular file", path)
	}
	size := fi.Size()
	var lb [8]byte
	if _, err := f.ReadAt(lb[:], 0); err != nil || size < 8 {
		return nil, fmt.Errorf("%s: safetensors: file is %d bytes, shorter than the 8-byte header length", path, size)
	}
	hl := binary.LittleEndian.Uint64(lb[:])
	if hl > MaxHeaderLen {
		return nil, fmt.Errorf("%s: safetensors: header length %d exceeds the %d limit", path, hl, MaxHeaderLen)
	}
	if hl > uint64(size-8) {
		return nil, fmt.Errorf("%s: safetensors: truncated: header length %d but only %d bytes follow", path, hl, size-8)
	}
	hj := make([]byte, hl)
	if _, err := f.ReadAt(hj, 8); err != nil {
		return nil, fmt.Errorf("%s: safetensors: reading the header: %w", path, err)
	}
	dataLen := size - 8 - int64(hl)
	spans, meta, err := parseHeader(hj, dataLen)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s := &SafetensorsFile{path: path, f: f, data: io.NewSectionReader(f, 8+int64(hl), dataLen), spans: spans,
		byName: make(map[string]int, len(spans)), Meta: meta}
	for i, sp := range spans {
		s.byName[sp.name] = i
	}
	return s, nil
}

// Close closes the file.
func (s *SafetensorsFile) Close() error { return s.f.Close() }

// Names lists the tensors in data-offset order.
func (s *SafetensorsFile) Names() []string {
	out := make([]string, len(s.spans))
	for i, sp := range s.spans {
		out[i] = sp.name
	}
	return out
}

// Shape is a tensor's shape; ok is false when the file has no such tensor.
func (s *SafetensorsFile) Shape(name string) (shape []int, ok bool) {
	i, ok := s.byName[name]
	if !ok {
		return nil, false
	}
	return s.spans[i].shape, true
}

// DataBytes is the total size of the tensors the header lists.
func (s *SafetensorsFile) DataBytes() int64 {
	var n int64
	for _, sp := range s.spans {
		n += sp.end - sp.begin
	}
	return n
}

// Read decodes tensor name into dst, whose length must be its element
// count: the caller, which knows the shape it wants, allocates.
func (s *SafetensorsFile) Read(name string, dst []float32) error {
	i, ok := s.byName[name]
	if !ok {
		return fmt.Errorf("%s: tensor %q missing", s.path, name)
	}
	sp := s.spans[i]
	if int64(len(dst))*4 != sp.end-sp.begin {
		return fmt.Errorf("%s: tensor %q holds %d values, %d asked", s.path, name, (sp.end-sp.begin)/4, len(dst))
	}
	// Decode in pieces: no copy of the whole tensor's bytes.
	const piece = 1 << 20
	buf := make([]byte, min(piece, sp.end-sp.begin))
	for off := sp.begin; off < sp.end; {
		n := min(int64(len(buf)), sp.end-off)
		if _, err := s.data.ReadAt(buf[:n], off); err != nil {
			return fmt.Errorf("%s: tensor %q: %w", s.path, name, err)
		}
		decodeF32(dst[(off-sp.begin)/4:], buf[:n])
		off += n
	}
	return nil
}

// ReadAll reads every tensor, refusing files whose tensors exceed
// maxBytes before reading any.
func (s *SafetensorsFile) ReadAll(maxBytes int64) ([]STensor, error) {
	if n := s.DataBytes(); n > maxBytes {
		return nil, fmt.Errorf("%s: safetensors: tensors of %d bytes exceed the %d-byte limit", s.path, n, maxBytes)
	}
	out := make([]STensor, len(s.spans))
	for i, sp := range s.spans {
		d := make([]float32, (sp.end-sp.begin)/4)
		if err := s.Read(sp.name, d); err != nil {
			return nil, err
		}
		out[i] = STensor{Name: sp.name, Shape: sp.shape, Data: d}
	}
	return out, nil
}

// ReadSafetensorsFile reads and parses a safetensors file: the header
// checked against the file's size, then every tensor, at most
// MaxTensorDataBytes of them.
func ReadSafetensorsFile(path string) ([]STensor, map[string]string, error) {
	s, err := OpenSafetensors(path)
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	ts, err := s.ReadAll(MaxTensorDataBytes)
	if err != nil {
		return nil, nil, err
	}
	return ts, s.Meta, nil
}

// ReadSafetensorsMeta reads only a file's header and returns its
// metadata.
func ReadSafetensorsMeta(path string) (map[string]string, error) {
	s, err := OpenSafetensors(path)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Meta, nil
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
