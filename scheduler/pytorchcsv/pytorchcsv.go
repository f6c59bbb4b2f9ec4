package pytorchcsv

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"stagecoach/scheduler"
)

// Dialect is a spelling of PyTorch's action tokens.
type Dialect uint8

// Dialects. DialectAuto, the zero value, asks the importer to detect the
// dialect; an export needs DialectNew or DialectOld.
const (
	DialectAuto Dialect = iota
	DialectNew          // F, I, W, B (full backward)
	DialectOld          // F, B (input gradient), W, BW (full backward)
)

func (d Dialect) String() string {
	switch d {
	case DialectAuto:
		return "auto"
	case DialectNew:
		return "new"
	case DialectOld:
		return "old"
	}
	return "Dialect(" + strconv.Itoa(int(d)) + ")"
}

// ParseDialect reads "new", "old" or "auto" (or "").
func ParseDialect(s string) (Dialect, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return DialectAuto, nil
	case "new":
		return DialectNew, nil
	case "old":
		return DialectOld, nil
	}
	return 0, fmt.Errorf("unknown dialect %q (want new, old or auto)", s)
}

// StageMapping says which rank of a PyTorch CSV holds which stage.
type StageMapping uint8

// Stage mappings. MappingLoop, the zero value, is PyTorch's default for
// interleaved schedules.
const (
	// MappingLoop puts stage s on rank s mod ranks.
	MappingLoop StageMapping = iota
	// MappingV folds the stages in a V (ZB-V, DualPipeV): stage s on rank
	// s mod ranks going down, ranks-1 - s mod ranks coming back up, so rank
	// 0 holds the first and the last stage.
	MappingV
	// MappingInfer takes each stage's rank from the row that runs it, as
	// PyTorch's own loader does.
	MappingInfer
)

func (m StageMapping) String() string {
	switch m {
	case MappingLoop:
		return "loop"
	case MappingV:
		return "v"
	case MappingInfer:
		return "infer"
	}
	return "StageMapping(" + strconv.Itoa(int(m)) + ")"
}

// ParseStageMapping reads "loop" (or ""), "v" or "infer".
func ParseStageMapping(s string) (StageMapping, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "loop":
		return MappingLoop, nil
	case "v":
		return MappingV, nil
	case "infer":
		return MappingInfer, nil
	}
	return 0, fmt.Errorf("unknown stage mapping %q (want loop, v or infer)", s)
}

// Options configures Import. The zero value detects the
// dialect, maps stages loop-style and gives every stage one layer.
type Options struct {
	Dialect Dialect
	Mapping StageMapping
	// Name is the plan's schedule name; "" gives "pytorch-csv".
	Name string
	// Layers is the model's layers spread over the stages (0: one each).
	Layers int
	// Samples is the sequences per microbatch (0: 1).
	Samples int
	// Memory is every worker's activation capacity (0: unbounded).
	Memory int
	// Recompute marks the plan as recomputing activations.
	Recompute bool
}

// Limits of the CSV reader, on top of the Plan's own.
const (
	MaxBytes    = 64 << 20
	maxTokenLen = 256
)

// pyTok is one compute action read from the CSV and where it stood.
type pyTok struct {
	row, col int // 1-based
	text     string
	kind     string // "F", "I", "W", "B", "BW" as written
	stage    int
	mb       int
	// group counts the compute actions of the OVERLAP_F_B group the
	// token stands in (0 outside a group).
	group int
}

func (t *pyTok) where() string {
	return fmt.Sprintf("row %d, column %d, token %q", t.row, t.col, t.text)
}

// Error is an import error tied to one cell of the CSV.
type Error struct {
	Row, Column int // 1-based; 0 when the error is not about one cell
	Token       string
	Detail      string
}

func (e *Error) Error() string {
	if e.Row == 0 {
		return "pytorch csv: " + e.Detail
	}
	return fmt.Sprintf("pytorch csv: row %d, column %d, token %q: %s", e.Row, e.Column, e.Token, e.Detail)
}

func tokErr(t *pyTok, format string, args ...any) error {
	return &Error{Row: t.row, Column: t.col, Token: t.text, Detail: fmt.Sprintf(format, args...)}
}

func csvErr(format string, args ...any) error {
	return &Error{Detail: fmt.Sprintf(format, args...)}
}

// Import reads a PyTorch per-rank action CSV and builds a
// validated Plan from it. Errors name the row, column and token at fault;
// a plan that parses but breaks a rule (a deadlock, a W before its I)
// returns the validator's error with the offending token's cell.
func Import(r io.Reader, opts Options) (*scheduler.Plan, error) {
	if opts.Layers < 0 || opts.Samples < 0 || opts.Memory < 0 {
		return nil, csvErr("layers, samples and memory must not be negative")
	}
	if opts.Mapping > MappingInfer || opts.Dialect > DialectOld {
		return nil, csvErr("unknown mapping %d or dialect %d", opts.Mapping, opts.Dialect)
	}
	rows, err := readRows(r)
	if err != nil {
		return nil, err
	}
	dialect := opts.Dialect
	if dialect == DialectAuto {
		if dialect, err = detectDialect(rows); err != nil {
			return nil, err
		}
	}
	p := len(rows)
	if p > scheduler.MaxWorkers {
		return nil, csvErr("%d rows (ranks), at most %d", p, scheduler.MaxWorkers)
	}
	// Kinds, stage and microbatch counts, duplicates.
	type key struct {
		kind      scheduler.ActionKind
		mb, stage int
	}
	seen := map[key]*pyTok{}
	hasW := map[[2]int]bool{}
	ns, m := 0, 0
	for _, row := range rows {
		for i := range row {
			t := &row[i]
			if dialect == DialectNew && t.kind == "BW" {
				return nil, tokErr(t, "BW is the old dialect's full backward; the new dialect writes B")
			}
			if dialect == DialectOld && t.kind == "I" {
				return nil, tokErr(t, "I is the new dialect's input gradient; the old dialect writes B")
			}
			if t.stage >= scheduler.MaxStages {
				return nil, tokErr(t, "stage %d, at most %d stages", t.stage, scheduler.MaxStages)
			}
			if t.mb >= scheduler.MaxMicrobatches {
				return nil, tokErr(t, "microbatch %d, at most %d microbatches", t.mb, scheduler.MaxMicrobatches)
			}
			ns, m = max(ns, t.stage+1), max(m, t.mb+1)
			if t.kind == "W" {
				hasW[[2]int{t.stage, t.mb}] = true
			}
		}
	}
	if ns == 0 {
		return nil, csvErr("no compute action in %d rows", p)
	}
	kindOf := func(t *pyTok) scheduler.ActionKind {
		switch t.kind {
		case "F":
			return scheduler.Forward
		case "I":
			return scheduler.BackwardInput
		case "W":
			return scheduler.BackwardWeight
		case "BW":
			return scheduler.Backward
		}
		// B: a full backward, except the old dialect's input gradient.
		if dialect == DialectOld && hasW[[2]int{t.stage, t.mb}] {
			return scheduler.BackwardInput
		}
		return scheduler.Backward
	}
	forwards := make([]int, ns)
	for _, row := range rows {
		for i := range row {
			t := &row[i]
			k := key{kindOf(t), t.mb, t.stage}
			if first, dup := seen[k]; dup {
				return nil, tokErr(t, "repeats the action of row %d, column %d", first.row, first.col)
			}
			seen[k] = t
			if k.kind == scheduler.Forward {
				forwards[t.stage]++
			}
		}
	}
	// Every stage runs every microbatch forward once; checking it here
	// keeps the plan's size proportional to the input's.
	for s, n := range forwards {
		if n == m {
			continue
		}
		for mb := range m {
			if seen[key{scheduler.Forward, mb, s}] == nil {
				return nil, csvErr("stage %d never runs the forward of microbatch %d (%d stages and %d microbatches named)", s, mb, ns, m)
			}
		}
	}
	if ns*m > scheduler.MaxStageMicrobatchCells {
		return nil, csvErr("%d stages x %d microbatches is too large", ns, m)
	}
	if opts.Layers > 0 && opts.Layers < ns {
		return nil, csvErr("layers is %d, fewer than the %d stages", opts.Layers, ns)
	}
	// Stage to rank.
	rankOf := make([]int, ns)
	switch opts.Mapping {
	case MappingLoop, MappingV:
		if ns%p != 0 {
			return nil, csvErr("%d stages do not divide over %d ranks for the %s mapping (use infer)", ns, p, opts.Mapping)
		}
		for s := range rankOf {
			rankOf[s] = s % p
			if opts.Mapping == MappingV && (s/p)%2 == 1 {
				rankOf[s] = p - 1 - s%p
			}
		}
		for r, row := range rows {
			for i := range row {
				if t := &row[i]; rankOf[t.stage] != r {
					return nil, tokErr(t, "stage %d belongs to rank %d (row %d) under the %s mapping", t.stage, rankOf[t.stage], rankOf[t.stage]+1, opts.Mapping)
				}
			}
		}
	case MappingInfer:
		for s := range rankOf {
			rankOf[s] = -1
		}
		where := make([]*pyTok, ns)
		for r, row := range rows {
			for i := range row {
				t := &row[i]
				switch rankOf[t.stage] {
				case -1:
					rankOf[t.stage], where[t.stage] = r, t
				case r:
				default:
					return nil, tokErr(t, "stage %d also runs on row %d (column %d)", t.stage, rankOf[t.stage]+1, where[t.stage].col)
				}
			}
		}
	}
	for r, row := range rows {
		if len(row) == 0 {
			return nil, &Error{Row: r + 1, Detail: "rank runs no compute action"}
		}
	}
	plan := buildPlan(rows, rankOf, m, opts, kindOf)
	if err := scheduler.Validate(plan); err != nil {
		return nil, locateValidationError(err, rows, plan, kindOf)
	}
	return plan, nil
}

// buildPlan builds the plan from checked tokens.
func buildPlan(rows [][]pyTok, rankOf []int, m int, opts Options, kindOf func(*pyTok) scheduler.ActionKind) *scheduler.Plan {
	ns, p := len(rankOf), len(rows)
	name := opts.Name
	if name == "" {
		name = "pytorch-csv"
	}
	layers := opts.Layers
	if layers < ns {
		layers = ns
	}
	samples := max(opts.Samples, 1)
	plan := &scheduler.Plan{Version: scheduler.FormatVersion, Schedule: name, HeadStage: ns - 1, Recompute: opts.Recompute}
	plan.Stages = scheduler.SplitLayers(layers, ns)
	plan.Workers = make([]scheduler.Worker, p)
	for r := range plan.Workers {
		plan.Workers[r] = scheduler.Worker{Node: fmt.Sprintf("node-%d", r), Memory: opts.Memory}
	}
	for s, r := range rankOf {
		plan.Workers[r].Stages = append(plan.Workers[r].Stages, s)
	}
	path := make([]scheduler.Hop, ns)
	for s, r := range rankOf {
		path[s] = scheduler.Hop{Worker: r, Stage: s}
	}
	plan.Microbatches = make([]scheduler.Microbatch, m)
	for mb := range plan.Microbatches {
		plan.Microbatches[mb] = scheduler.Microbatch{Samples: samples, Path: append([]scheduler.Hop(nil), path...), LossWorker: rankOf[ns-1]}
	}
	plan.Programs = make([][]scheduler.Action, p)
	for r, row := range rows {
		prog := make([]scheduler.Action, 0, len(row)+1)
		for i := 0; i < len(row); i++ {
			t := &row[i]
			a := scheduler.Action{Kind: kindOf(t), Microbatch: t.mb, Stage: t.stage}
			if b, ok := overlapPair(row, i, kindOf); ok {
				a = scheduler.FB(t.mb, t.stage, b)
				i++
			}
			prog = append(prog, a)
			if (a.Kind == scheduler.Forward || a.Kind == scheduler.Overlapped) && a.Stage == ns-1 {
				prog = append(prog, scheduler.L(a.Microbatch, ns-1))
			}
		}
		plan.Programs[r] = append(prog, scheduler.Step())
	}
	return plan
}

// overlapPair reports whether row[i] opens an OVERLAP_F_B group of a
// forward and a backward (B or I) of another microbatch, which is one
// Overlapped action; it returns the backward. Other groups (a
// microbatch's own forward and backward, more than two actions) run
// their actions in order.
func overlapPair(row []pyTok, i int, kindOf func(*pyTok) scheduler.ActionKind) (scheduler.Action, bool) {
	t := &row[i]
	if t.group != 2 || i+1 >= len(row) {
		return scheduler.Action{}, false
	}
	n := &row[i+1]
	if n.row != t.row || n.col != t.col || kindOf(t) != scheduler.Forward || n.mb == t.mb {
		return scheduler.Action{}, false
	}
	k := kindOf(n)
	if k != scheduler.Backward && k != scheduler.BackwardInput {
		return scheduler.Action{}, false
	}
	return scheduler.Action{Kind: k, Microbatch: n.mb, Stage: n.stage}, true
}

// locateValidationError adds the CSV cell of the action a validation error
// names, when there is one.
func locateValidationError(err error, rows [][]pyTok, plan *scheduler.Plan, kindOf func(*pyTok) scheduler.ActionKind) error {
	var ve *scheduler.ValidationError
	if !errors.As(err, &ve) || ve.Worker < 0 || ve.Worker >= len(rows) || ve.Action == "" {
		return fmt.Errorf("pytorch csv: %w", err)
	}
	row := rows[ve.Worker]
	for i := range row {
		t := &row[i]
		if (scheduler.Action{Kind: kindOf(t), Microbatch: t.mb, Stage: t.stage}).String() == ve.Action {
			return fmt.Errorf("pytorch csv: %s: %w", t.where(), err)
		}
	}
	// The validator named an action the CSV does not hold (a missing W,
	// a loss): point at the rank's row.
	return fmt.Errorf("pytorch csv: row %d: %w", ve.Worker+1, err)
}

// readRows reads the CSV into compute tokens per row, skipping idle
// cells and non-compute actions.
func readRows(r io.Reader) ([][]pyTok, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxBytes+1))
	if err != nil {
		return nil, csvErr("read: %v", err)
	}
	if len(data) > MaxBytes {
		return nil, csvErr("input is larger than %d bytes", MaxBytes)
	}
	cr := csv.NewReader(strings.NewReader(string(data)))
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	var rows [][]pyTok
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, csvErr("line %d, byte %d: %v", pe.Line, pe.Column, pe.Err)
			}
			return nil, csvErr("%v", err)
		}
		rowNum := len(rows) + 1
		var row []pyTok
		for i, cell := range rec {
			toks, err := parseCell(cell, rowNum, i+1)
			if err != nil {
				return nil, err
			}
			row = append(row, toks...)
		}
		rows = append(rows, row)
	}
	if len(rows) == 0 {
		return nil, csvErr("no rows")
	}
	return rows, nil
}

// pyKinds are the computation types in the order a prefix must be tried
// (longest first where one is a prefix of another).
var pyKinds = []string{"REDUCE_GRAD", "UNSHARD", "RESHARD", "SEND_F", "RECV_F", "SEND_B", "RECV_B", "BW", "F", "I", "B", "W"}

func isComputeKind(k string) bool {
	switch k {
	case "F", "I", "B", "W", "BW":
		return true
	}
	return false
}

// parseCell reads one cell: nothing (idle), one action, or an
// OVERLAP_F_B group. Rows and columns count records and cells from 1: row
// r+1 is rank r, column c its c-th step, idle steps included.
func parseCell(cell string, row, col int) ([]pyTok, error) {
	text := strings.TrimSpace(cell)
	if text == "" || text == "None" {
		return nil, nil
	}
	bad := func(format string, args ...any) error {
		return &Error{Row: row, Column: col, Token: text, Detail: fmt.Sprintf(format, args...)}
	}
	if len(text) > maxTokenLen {
		return nil, bad("token longer than %d bytes", maxTokenLen)
	}
	if strings.HasPrefix(text, "(") {
		end := strings.IndexByte(text, ')')
		if end < 0 || text[end+1:] != "OVERLAP_F_B" {
			return nil, bad("a group is written (action;action)OVERLAP_F_B")
		}
		var out []pyTok
		for _, sub := range strings.Split(text[1:end], ";") {
			sub = strings.TrimSpace(sub)
			if sub == "" {
				continue
			}
			t, compute, err := parseAction(sub)
			if err != nil {
				return nil, bad("%v", err)
			}
			if !compute {
				return nil, bad("%q in an overlap group is not a compute action", sub)
			}
			t.row, t.col, t.text = row, col, text
			out = append(out, t)
		}
		for i := range out {
			out[i].group = len(out)
		}
		return out, nil
	}
	t, compute, err := parseAction(text)
	if err != nil {
		return nil, bad("%v", err)
	}
	if !compute {
		return nil, nil
	}
	t.row, t.col, t.text = row, col, text
	return []pyTok{t}, nil
}

// parseAction reads [stage][type][microbatch]. compute is false for
// the communication and sharding actions the import skips.
func parseAction(s string) (t pyTok, compute bool, err error) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return t, false, errors.New("want [stage][type][microbatch], e.g. 2F0")
	}
	stage, err := smallInt(s[:i])
	if err != nil {
		return t, false, fmt.Errorf("stage: %v", err)
	}
	rest := s[i:]
	kind := ""
	for _, k := range pyKinds {
		if strings.HasPrefix(rest, k) {
			kind = k
			break
		}
	}
	if kind == "" {
		return t, false, fmt.Errorf("unknown computation type in %q (want F, I, W, B or BW)", s)
	}
	rest = rest[len(kind):]
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	digits, tail := rest[:j], rest[j:]
	if !isComputeKind(kind) {
		// Old batched communication: 1SEND_F0_2RECV_B1.
		if tail != "" && !batchedCommTail(tail) {
			return t, false, fmt.Errorf("unexpected %q after %s", tail, kind)
		}
		return t, false, nil
	}
	if tail != "" {
		return t, false, fmt.Errorf("unexpected %q after the microbatch", tail)
	}
	if digits == "" {
		return t, false, fmt.Errorf("%s names no microbatch", kind)
	}
	mb, err := smallInt(digits)
	if err != nil {
		return t, false, fmt.Errorf("microbatch: %v", err)
	}
	return pyTok{kind: kind, stage: stage, mb: mb}, true, nil
}

// batchedCommTail matches "_<stage>RECV_B<mb>" or "_<stage>RECV_F<mb>".
func batchedCommTail(s string) bool {
	if !strings.HasPrefix(s, "_") {
		return false
	}
	s = s[1:]
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return false
	}
	s = s[i:]
	if !strings.HasPrefix(s, "RECV_B") && !strings.HasPrefix(s, "RECV_F") {
		return false
	}
	s = s[len("RECV_B"):]
	if s == "" {
		return false
	}
	for k := 0; k < len(s); k++ {
		if s[k] < '0' || s[k] > '9' {
			return false
		}
	}
	return true
}

// smallInt parses a non-negative decimal that fits comfortably in an int.
func smallInt(s string) (int, error) {
	if len(s) > 9 {
		return 0, fmt.Errorf("%s is too large", s)
	}
	return strconv.Atoi(s)
}

// detectDialect decides between the dialects: I means new, BW means old;
// with neither, a B and a W on the same stage and microbatch mean old (B
// is then the input gradient), and anything else reads the same in both.
func detectDialect(rows [][]pyTok) (Dialect, error) {
	var firstI, firstBW *pyTok
	w := map[[2]int]bool{}
	for _, row := range rows {
		for i := range row {
			t := &row[i]
			switch t.kind {
			case "I":
				if firstI == nil {
					firstI = t
				}
			case "BW":
				if firstBW == nil {
					firstBW = t
				}
			case "W":
				w[[2]int{t.stage, t.mb}] = true
			}
		}
	}
	switch {
	case firstI != nil && firstBW != nil:
		later := firstBW
		if later.row < firstI.row || (later.row == firstI.row && later.col < firstI.col) {
			later = firstI
		}
		return 0, tokErr(later, "mixes the new dialect's I (%s) with the old dialect's BW (%s)", firstI.where(), firstBW.where())
	case firstI != nil:
		return DialectNew, nil
	case firstBW != nil:
		return DialectOld, nil
	}
	for _, row := range rows {
		for i := range row {
			if t := &row[i]; t.kind == "B" && w[[2]int{t.stage, t.mb}] {
				return DialectOld, nil
			}
		}
	}
	return DialectNew, nil
}

// Export writes p as PyTorch's per-rank action CSV in dialect d:
// one row per worker in worker order, its forwards and backwards in
// program order. Loss, all-reduce and optimizer step have no token and
// are left out; the rows are compact (no idle cells). An Overlapped pair
// is PyTorch's "(4F3;3I1)OVERLAP_F_B", which the import reads back as one
// overlapped action. The plan must be one
// pipeline without skips: every stage on exactly one worker and every
// microbatch through every stage in order.
func Export(w io.Writer, p *scheduler.Plan, d Dialect) error {
	if d != DialectNew && d != DialectOld {
		return fmt.Errorf("pytorch csv export: dialect %s, want new or old", d)
	}
	if p == nil {
		return errors.New("pytorch csv export: nil plan")
	}
	if p.Skip != nil || p.Skips() {
		return errors.New("pytorch csv export: the plan's paths skip or swap stages, which PyTorch's schedules cannot express")
	}
	if p.HeadStage != len(p.Stages)-1 {
		return fmt.Errorf("pytorch csv export: the head is on stage %d; PyTorch computes the loss on the last stage", p.HeadStage)
	}
	for s, ws := range p.StageWorkers() {
		if len(ws) != 1 {
			return fmt.Errorf("pytorch csv export: stage %d is held by %d workers; a PyTorch CSV describes one pipeline (export a plan without replicas)", s, len(ws))
		}
	}
	var b strings.Builder
	token := func(a scheduler.Action) {
		b.WriteString(strconv.Itoa(a.Stage))
		b.WriteString(tokenCode(a.Kind, d))
		b.WriteString(strconv.Itoa(a.Microbatch))
	}
	for wk, prog := range p.Programs {
		n := 0
		for _, a := range prog {
			f, bk, pair := a.Halves()
			if !pair && tokenCode(a.Kind, d) == "" {
				continue
			}
			if n > 0 {
				b.WriteByte(',')
			}
			if pair {
				b.WriteByte('(')
				token(f)
				b.WriteByte(';')
				token(bk)
				b.WriteString(")OVERLAP_F_B")
			} else {
				token(a)
			}
			n++
		}
		if n == 0 {
			return fmt.Errorf("pytorch csv export: worker %d runs no forward or backward", wk)
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// tokenCode spells an action kind in dialect d; "" for kinds PyTorch's
// CSV has no token for.
func tokenCode(k scheduler.ActionKind, d Dialect) string {
	switch k {
	case scheduler.Forward:
		return "F"
	case scheduler.BackwardWeight:
		return "W"
	case scheduler.BackwardInput:
		if d == DialectOld {
			return "B"
		}
		return "I"
	case scheduler.Backward:
		if d == DialectOld {
			return "BW"
		}
		return "B"
	}
	return ""
}

// StageRanks returns, for a plan Export accepts, the
// mapping that reads its export back: loop when stage s sits on worker
// s mod workers, v when it sits V-style, infer otherwise.
func StageRanks(p *scheduler.Plan) StageMapping {
	nw, ns := len(p.Workers), len(p.Stages)
	owner := make([]int, ns)
	for w, wk := range p.Workers {
		for _, s := range wk.Stages {
			if s >= 0 && s < ns {
				owner[s] = w
			}
		}
	}
	loop, v := ns%nw == 0, ns%nw == 0
	for s := range owner {
		if owner[s] != s%nw {
			loop = false
		}
		want := s % nw
		if (s/nw)%2 == 1 {
			want = nw - 1 - s%nw
		}
		if owner[s] != want {
			v = false
		}
	}
	switch {
	case loop:
		return MappingLoop
	case v:
		return MappingV
	}
	return MappingInfer
}
