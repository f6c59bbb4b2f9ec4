package policy

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the expected actions in testdata")

// TestScenarios runs every file in testdata: lines set the state, an
// "event" line calls Decide and the "->" line after it is the action
// expected (see testdata/README).
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios in testdata (%v)", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out, errs := runScenario(string(b))
			if *update {
				if err := os.WriteFile(f, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			for _, e := range errs {
				t.Errorf("%s:%s", f, e)
			}
		})
	}
}

// runScenario plays a scenario; it returns the text with the actions
// Decide took and the mismatches (and bad lines) found.
func runScenario(text string) (string, []string) {
	var s State
	s.Suspects = map[string]bool{}
	epoch := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.Now = epoch
	var out []string
	var errs []string
	var got string
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for i, line := range lines {
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Sprintf("%d: %s: %s", i+1, line, fmt.Sprintf(format, args...)))
		}
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			out = append(out, line)
			continue
		}
		if f[0] == "->" {
			want := strings.TrimSpace(strings.TrimPrefix(line, "->"))
			if got == "" {
				bad("no event before")
			} else if want != got {
				bad("got %s", got)
			}
			out = append(out, "-> "+got)
			got = ""
			continue
		}
		out = append(out, line)
		args := f[1:]
		arg := func(k int) string {
			if k < len(args) {
				return args[k]
			}
			bad("missing argument %d", k+1)
			return ""
		}
		num := func(k int) int64 {
			n, err := strconv.ParseInt(arg(k), 10, 64)
			if err != nil {
				bad("%v", err)
			}
			return n
		}
		dur := func(k int) time.Duration {
			d, err := time.ParseDuration(arg(k))
			if err != nil {
				bad("%v", err)
			}
			return d
		}
		flag := func(k int) bool { return arg(k) == "true" }
		switch f[0] {
		case "family":
			switch arg(0) {
			case "classic":
				s.Family = Classic
			case "skippipe":
				s.Family = SkipPipe
			case "skippipe-full":
				s.Family = SkipPipeFull
			default:
				bad("unknown family")
			}
		case "plan":
			s.Placement = Placement{}
			for _, a := range args {
				name, stages, ok := strings.Cut(a, ":")
				if !ok {
					bad("want worker:stage[,stage]")
					continue
				}
				s.Workers = append(s.Workers, name)
				for _, st := range strings.Split(stages, ",") {
					n, err := strconv.Atoi(st)
					if err != nil || n < 0 {
						bad("bad stage %q", st)
						continue
					}
					for len(s.StageWorkers) <= n {
						s.StageWorkers = append(s.StageWorkers, nil)
					}
					s.StageWorkers[n] = append(s.StageWorkers[n], len(s.Workers)-1)
				}
			}
		case "want":
			s.Want = int(num(0))
		case "stages":
			s.Stages = int(num(0))
		case "step":
			s.Step = num(0)
		case "steps":
			s.Steps = num(0)
		case "stepping":
			s.Stepping = flag(0)
		case "boundary":
			s.AtBoundary = flag(0)
		case "committed":
			s.Committed = num(0)
		case "checkpoints":
			s.Checkpoints = nil
			for k := range args {
				s.Checkpoints = append(s.Checkpoints, num(k))
			}
		case "failures":
			s.Failures = int(num(0))
		case "max":
			s.MaxFailures = int(num(0))
		case "live":
			s.Probed, s.Live = true, nil
			for _, a := range args {
				name, step, ok := strings.Cut(a, "=")
				n, err := strconv.ParseInt(step, 10, 64)
				if !ok || err != nil {
					bad("want worker=applied-step")
				}
				s.Live = append(s.Live, Member{Name: name, Applied: n})
			}
		case "unprobed":
			s.Probed, s.Live = false, nil
		case "suspects":
			s.Suspects = map[string]bool{}
			for _, a := range args {
				s.Suspects[a] = true
			}
		case "repathing":
			s.Repathing = flag(0)
		case "restoring":
			s.Restoring = flag(0)
		case "now":
			s.Now = epoch.Add(dur(0))
		case "replace-by":
			s.ReplaceBy = epoch.Add(dur(0))
		case "poll":
			s.Poll = dur(0)
		case "replan-drift":
			v, err := strconv.ParseFloat(arg(0), 64)
			if err != nil {
				bad("%v", err)
			}
			s.ReplanDrift = v
		case "recampaign":
			s.Recampaign = flag(0)
		case "event":
			e, err := parseEvent(args)
			if err != nil {
				bad("%v", err)
				continue
			}
			got = format(Decide(s, e), epoch)
			if i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "->") {
				out = append(out, "-> "+got)
				if !*update {
					bad("no expected action (->) after the event; got %s", got)
				}
				got = ""
			}
		default:
			bad("unknown directive")
		}
	}
	return strings.Join(out, "\n") + "\n", errs
}

func parseEvent(args []string) (Event, error) {
	if len(args) == 0 {
		return Event{}, fmt.Errorf("event needs a kind")
	}
	var e Event
	found := false
	for k, n := range eventNames {
		if n == args[0] {
			e.Kind, found = EventKind(k), true
		}
	}
	if !found {
		return e, fmt.Errorf("unknown event %q", args[0])
	}
	for _, a := range args[1:] {
		switch {
		case a == "fatal":
			e.Fatal = true
		case a == "nobody-leads":
			e.NobodyLeads = true
		case strings.HasPrefix(a, "drift="):
			v, err := strconv.ParseFloat(strings.TrimPrefix(a, "drift="), 64)
			if err != nil {
				return e, err
			}
			e.Drift = v
		default:
			e.Workers = append(e.Workers, a)
		}
	}
	return e, nil
}

// format prints an action on one line: its kind, then the fields set.
func format(a Action, epoch time.Time) string {
	parts := []string{a.Kind.String()}
	add := func(k string, v []string) {
		if len(v) > 0 {
			parts = append(parts, k+"="+strings.Join(v, ","))
		}
	}
	add("workers", a.Workers)
	if a.Parts != nil {
		var ps []string
		for _, p := range a.Parts {
			if len(p) == 0 {
				ps = append(ps, "-")
			} else {
				ps = append(ps, strings.Join(p, ","))
			}
		}
		parts = append(parts, "parts="+strings.Join(ps, "|"))
	}
	var vac []string
	for _, v := range a.Vacant {
		vac = append(vac, strconv.Itoa(v))
	}
	add("vacant", vac)
	add("lost", a.Lost)
	add("joined", a.Joined)
	if a.Kind == Restore {
		parts = append(parts, fmt.Sprintf("from=%d replay=%d", a.From, a.Replay))
	}
	if a.Kind == Wait {
		parts = append(parts, "until="+a.Until.Sub(epoch).String())
	}
	if a.Why != "" {
		parts = append(parts, strconv.Quote(a.Why))
	}
	return strings.Join(parts, " ")
}

// A placement naming a worker it does not have is refused with a reason,
// never a panic.
func TestDecideBadPlacement(t *testing.T) {
	s := State{Family: SkipPipe, Placement: Placement{Workers: []string{"a"}, StageWorkers: [][]int{{0}, {3}}}, Probed: true, Live: []Member{{Name: "a"}}}
	a := Decide(s, Event{Kind: WorkerLost})
	if a.Kind != GiveUp || !strings.Contains(a.Why, "stage 1 names worker 3 of 1") {
		t.Fatalf("got %s", format(a, s.Now))
	}
}
