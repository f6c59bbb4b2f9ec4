// Package data turns a directory of text files into byte-level training
// data: files are read in sorted order, each file goes to train or
// validation by a stable hash of its relative path, and training windows are
// drawn by a seeded generator whose state can be saved in a checkpoint so a
// resumed run sees exactly the windows it would have seen.
package data

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"
)

// DefaultMaxBytes caps how much text is loaded, so starting on a huge tree
// (the Go source tree is ~150 MB) stays fast.
const DefaultMaxBytes = 32 << 20

// DefaultCorpusDir is $(go env GOROOT)/src, present wherever Go is
// installed: $GOROOT if set, else what the go command on PATH reports.
func DefaultCorpusDir() (string, error) {
	root := os.Getenv("GOROOT")
	if root == "" {
		out, err := exec.Command("go", "env", "GOROOT").Output()
		if err != nil {
			return "", fmt.Errorf("data: cannot find GOROOT for the default corpus (is go on PATH?): %w", err)
		}
		root = strings.TrimSpace(string(out))
	}
	if root == "" {
		return "", errors.New("data: go env GOROOT is empty; give a corpus directory")
	}
	return filepath.Join(root, "src"), nil
}

// Options controls loading.
type Options struct {
	MaxBytes int64 // stop after this many bytes of text (≤ 0: DefaultMaxBytes)
	ValPct   int   // percent of files (by path hash) held out for validation; 0 means 10
}

// Corpus is the loaded text, concatenated per split, each file followed by
// a blank line.
type Corpus struct {
	Dir        string
	Train, Val []byte
	TrainFiles int
	ValFiles   int
	Truncated  bool // MaxBytes was reached before the end of the tree
}

// IsVal reports whether relPath (slash-separated, relative to the corpus
// root) belongs to the validation split: FNV-1a 32 of the path mod 100 is
// below valPct. Stable across machines and runs.
func IsVal(relPath string, valPct int) bool {
	h := fnv.New32a()
	h.Write([]byte(relPath))
	return int(h.Sum32()%100) < valPct
}

// Load reads every text file under dir in lexical path order. Hidden
// directories and files, testdata directories, and files that are not
// valid UTF-8 or contain NUL bytes are skipped.
func Load(dir string, opt Options) (*Corpus, error) {
	if opt.MaxBytes <= 0 {
		opt.MaxBytes = DefaultMaxBytes
	}
	if opt.ValPct == 0 {
		opt.ValPct = 10
	}
	if opt.ValPct < 0 || opt.ValPct >= 100 {
		return nil, fmt.Errorf("data: validation percent %d outside 1..99", opt.ValPct)
	}
	if dir == "" {
		return nil, errors.New("data: no corpus directory (GOROOT not found: is the go command on PATH?); pass one explicitly")
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("data: corpus directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("data: corpus %s is not a directory", dir)
	}
	c := &Corpus{Dir: dir}
	var total int64
	var firstErr error
	// WalkDir visits entries in lexical order, which makes the load order
	// deterministic.
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == dir {
				return err
			}
			if firstErr == nil {
				firstErr = err
			}
			return nil // skip unreadable entries, report if nothing loads
		}
		name := d.Name()
		if path != dir && (strings.HasPrefix(name, ".") || (d.IsDir() && name == "testdata")) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		// Read no more than the budget left (plus one byte, to know the
		// file is larger): a huge file never lands in memory whole.
		b, over, err := readUpTo(path, opt.MaxBytes-total)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			return nil
		}
		if (len(b) == 0 && !over) || bytes.IndexByte(b, 0) >= 0 || !validPrefix(b, over) {
			return nil
		}
		if over {
			c.Truncated = true
			return filepath.SkipAll
		}
		total += int64(len(b))
		rel, _ := filepath.Rel(dir, path)
		if IsVal(filepath.ToSlash(rel), opt.ValPct) {
			c.Val = append(append(c.Val, b...), '\n', '\n')
			c.ValFiles++
		} else {
			c.Train = append(append(c.Train, b...), '\n', '\n')
			c.TrainFiles++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("data: reading corpus %s: %w", dir, err)
	}
	if c.TrainFiles == 0 && c.ValFiles == 0 {
		if firstErr != nil {
			return nil, fmt.Errorf("data: no readable text files in %s: %w", dir, firstErr)
		}
		return nil, fmt.Errorf("data: no text files in %s", dir)
	}
	if c.TrainFiles == 0 || c.ValFiles == 0 {
		return nil, fmt.Errorf("data: %s has %d training and %d validation files; need at least one of each", dir, c.TrainFiles, c.ValFiles)
	}
	return c, nil
}

// UnigramEntropy is the entropy in nats of the byte distribution of b: the
// loss of the best model that ignores context, the baseline to beat.
func UnigramEntropy(b []byte) float64 {
	var counts [256]float64
	for _, c := range b {
		counts[c]++
	}
	return entropy(counts[:], float64(len(b)))
}

// Sampler draws random windows from a text with a PCG generator seeded
// explicitly (never a global source). Its State can be saved and restored.
type Sampler struct {
	text  []byte
	pcg   *rand.PCG
	rng   *rand.Rand
	Drawn uint64 // windows drawn so far
}

// NewSampler draws windows from text with generator seed.
func NewSampler(text []byte, seed uint64) *Sampler {
	pcg := rand.NewPCG(seed, 0x5354414745434f41) // "STAGECOA": separates data from init streams
	return &Sampler{text: text, pcg: pcg, rng: rand.New(pcg)}
}

// Fill writes len(dst)/win windows of win consecutive bytes each into dst.
func (s *Sampler) Fill(dst []int32, win int) error {
	if win < 1 || len(dst)%win != 0 {
		return fmt.Errorf("data: %d tokens is not a whole number of %d-token windows", len(dst), win)
	}
	if len(s.text) < win {
		return fmt.Errorf("data: text of %d bytes is shorter than one %d-byte window", len(s.text), win)
	}
	for o := 0; o < len(dst); o += win {
		start := s.rng.IntN(len(s.text) - win + 1)
		for i, c := range s.text[start : start+win] {
			dst[o+i] = int32(c)
		}
		s.Drawn++
	}
	return nil
}

// State is the data position for checkpoint metadata: the hex-encoded
// generator state and the window count, as "<hex>/<drawn>".
func (s *Sampler) State() string {
	b, _ := s.pcg.MarshalBinary()
	return hex.EncodeToString(b) + "/" + strconv.FormatUint(s.Drawn, 10)
}

// SetState restores a position saved by State.
func (s *Sampler) SetState(state string) error {
	hx, drawn, ok := strings.Cut(state, "/")
	n, err := strconv.ParseUint(drawn, 10, 64)
	if !ok || err != nil {
		return fmt.Errorf("data: bad sampler state %q", state)
	}
	b, err := hex.DecodeString(hx)
	if err != nil {
		return fmt.Errorf("data: bad sampler state: %w", err)
	}
	if err := s.pcg.UnmarshalBinary(b); err != nil {
		return fmt.Errorf("data: bad sampler state: %w", err)
	}
	s.Drawn = n
	return nil
}

// EvalWindows returns n windows of win bytes spread evenly over text: a
// fixed validation set that does not depend on any generator.
func EvalWindows(text []byte, n, win int) ([]int32, error) {
	if n < 1 || win < 1 {
		return nil, errors.New("data: need at least one window of at least one byte")
	}
	if len(text) < win {
		return nil, fmt.Errorf("data: validation text of %d bytes is shorter than one %d-byte window", len(text), win)
	}
	out := make([]int32, 0, n*win)
	span := len(text) - win
	for i := 0; i < n; i++ {
		start := 0
		if n > 1 {
			start = int(int64(span) * int64(i) / int64(n-1))
		}
		for _, c := range text[start : start+win] {
			out = append(out, int32(c))
		}
	}
	return out, nil
}

// readUpTo reads at most limit bytes of the file; over reports that the
// file holds more (then the bytes read are only its start).
func readUpTo(path string, limit int64) (b []byte, over bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	b, err = io.ReadAll(io.LimitReader(f, max(limit, 0)+1))
	if err != nil {
		return nil, false, err
	}
	if int64(len(b)) > limit {
		return b[:max(limit, 0)], true, nil
	}
	return b, false, nil
}

// validPrefix reports whether b is UTF-8, allowing an incomplete last rune
// when b is only the start of the file.
func validPrefix(b []byte, cut bool) bool {
	if utf8.Valid(b) {
		return true
	}
	if !cut {
		return false
	}
	for i := 1; i < utf8.UTFMax && i <= len(b); i++ {
		if utf8.Valid(b[:len(b)-i]) {
			return true
		}
	}
	return false
}
